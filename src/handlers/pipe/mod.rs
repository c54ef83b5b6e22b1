//! `--pipe PROGRAM [ARGS…]`: long-lived handler processes, one per handler
//! thread, each fed one job at a time as a line of JSON on stdin and
//! answering on stdout ([`protocol`] has the lines). A Python handler pays
//! its interpreter start and imports once, not once per job.
//!
//! The pieces:
//! - a **pool** of started processes: a handler thread takes an idle one
//!   for each job and gives it back after the answer. A process counts as
//!   live only once it said `{"ready": true}`, and [`Handler::ready`]
//!   reports the live count, so the fetcher claims nothing for a slot
//!   whose process is down: a program that never starts runs no job's
//!   attempts out.
//! - a **restarter** per slot that is down: it starts the program again
//!   after the slot's back-off (doubling from [`FIRST_RESTART`] to
//!   [`MAX_RESTART`], reset by an answered job), as git's long-running
//!   filters do: a process that died on a job is replaced for the next
//!   job, and that job's attempt fails with the reason.
//! - a **watchdog** thread that ends the process group of a job that
//!   outlived `--timeout` (TERM, then KILL after [`TERM_GRACE`]), and of a
//!   job an operator cancelled.
//!
//! Every fault fails the attempt with a reason a person can act on (exit
//! status or signal and the stderr tail, the timeout, the offending line),
//! and the process is replaced. `--pipe-max-jobs N` recycles a process
//! after N jobs, between jobs. Stopping closes each process's stdin (its
//! cue to exit), then ends what is left of its group.
//!
//! It is part of [`crate::handlers`] and imports what that room may.

mod conversation;
mod pool;
mod process;
pub mod protocol;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mongodb::bson::Bson;
use nix::sys::signal::Signal;

use self::pool::{Pool, Stop};
use self::process::Process;
use super::child::{resolve, signal_group};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::handlers::{Handler, HandlerHealth, HandlerResult};
use crate::job::Job;
use crate::shutdown::Shutdown;
use crate::sync::lock;

pub use process::STDERR_TAIL;

/// The first wait before restarting a process that failed.
pub const FIRST_RESTART: Duration = Duration::from_millis(100);
/// The longest wait between restarts of a process that keeps failing.
pub const MAX_RESTART: Duration = Duration::from_secs(30);
/// How long a process may take to say `{"ready": true}`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to exit after its stdin closed, at shutdown
/// or when recycled, before its group gets TERM.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How often the watchdog looks at the running jobs' deadlines.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// What `--pipe` runs, and how.
#[derive(Debug, Clone)]
pub struct PipeConfig {
    /// The program, as a path or a name on `PATH`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// How many processes to keep: one per handler thread.
    pub processes: usize,
    /// A job running longer than this is stopped (`--timeout`).
    pub timeout: Option<Duration>,
    /// Replace a process after this many jobs (`--pipe-max-jobs`).
    pub max_jobs: Option<u64>,
    /// How long a process may take to say `{"ready": true}`.
    pub start_timeout: Duration,
}

impl PipeConfig {
    /// `program` with `args`, `processes` of it, no timeout or recycling.
    pub fn new(program: impl Into<String>, args: Vec<String>, processes: usize) -> PipeConfig {
        PipeConfig {
            program: program.into(),
            args,
            processes,
            timeout: None,
            max_jobs: None,
            start_timeout: START_TIMEOUT,
        }
    }
}

/// Runs jobs on long-lived processes; see the module docs.
pub struct PipeHandler {
    pool: Arc<Pool>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

impl PipeHandler {
    /// Checks that the program can be found (a typo is a start-up error,
    /// not every job failing) and starts its processes in the background.
    pub fn new(config: PipeConfig) -> Result<PipeHandler, Error> {
        if config.processes == 0 {
            return Err(Error::config(
                "--threads",
                "a pipe handler needs at least one process",
            ));
        }
        let program = resolve(&config.program).ok_or_else(|| {
            Error::config(
                "--pipe",
                format!(
                    "program `{}` not found (give a path, or a name on PATH) or not executable",
                    config.program
                ),
            )
        })?;
        let pool = Arc::new_cyclic(|me| Pool {
            me: me.clone(),
            program,
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            live: AtomicUsize::new(0),
            busy: Mutex::new(HashMap::new()),
            backoff: (0..config.processes)
                .map(|_| Mutex::new(Backoff::new(FIRST_RESTART, MAX_RESTART)))
                .collect(),
            problem: Mutex::new(None),
            restarters: Mutex::new(Vec::new()),
            stopping: Shutdown::new(),
            config,
        });
        for slot in 0..pool.config.processes {
            Pool::restart(&pool, slot, Duration::ZERO, None);
        }
        let watched = Arc::clone(&pool);
        let watchdog = crate::sync::spawn("mongoq-pipe-watchdog", move || watched.watch());
        Ok(PipeHandler {
            pool,
            watchdog: Mutex::new(Some(watchdog)),
        })
    }

    /// Processes that said `{"ready": true}` and were not replaced since.
    pub fn live(&self) -> usize {
        self.pool.live.load(Ordering::SeqCst)
    }
}

impl Handler for PipeHandler {
    fn handle(&self, job: &Job) -> HandlerResult {
        self.pool.handle(job)
    }

    fn abort(&self) {
        let mut busy = lock(&self.pool.busy);
        let now = Instant::now();
        for entry in busy.values_mut() {
            entry.stop = Some((Stop::Abort, now));
            entry.kill(now);
        }
    }

    fn cancel(&self, job_id: &Bson) {
        let mut busy = lock(&self.pool.busy);
        for entry in busy.values_mut() {
            if &entry.id == job_id && entry.stop.is_none() {
                entry.stop = Some((Stop::Cancel, Instant::now()));
                signal_group(entry.pgid, Signal::SIGTERM);
            }
        }
    }

    fn ready(&self) -> Option<usize> {
        Some(self.live())
    }

    fn health(&self) -> Option<HandlerHealth> {
        let live = self.live();
        let slots = self.pool.config.processes;
        Some(HandlerHealth {
            live,
            slots,
            problem: if live < slots {
                lock(&self.pool.problem).clone()
            } else {
                None
            },
        })
    }

    fn stop(&self) {
        self.pool.stopping.request();
        // A restarter waits at most 100 ms at a time for a handshake; one
        // stuck reading a half-written first line is left behind (its
        // process is killed with the rest below or when it gives up).
        let restarters: Vec<_> = lock(&self.pool.restarters).drain(..).collect();
        let deadline = Instant::now() + EXIT_GRACE;
        for restarter in restarters {
            crate::sync::join_or_leave(restarter, deadline);
        }
        if let Some(watchdog) = lock(&self.watchdog).take() {
            let _ = watchdog.join();
        }
        // Busy ones belong to handler threads left behind past the grace
        // period: their groups are ended; the threads see their pipes close.
        for entry in lock(&self.pool.busy).values() {
            signal_group(entry.pgid, Signal::SIGKILL);
        }
        let idle: Vec<Process> = lock(&self.pool.idle).drain(..).collect();
        self.pool.live.store(0, Ordering::SeqCst);
        // Each gets EOF at once, and they exit side by side.
        let enders: Vec<_> = idle
            .into_iter()
            .map(|process| std::thread::spawn(move || process.end(EXIT_GRACE)))
            .collect();
        for ender in enders {
            let _ = ender.join();
        }
    }
}

impl Drop for PipeHandler {
    fn drop(&mut self) {
        if !self.pool.stopping.is_requested() {
            self.stop();
        }
    }
}
