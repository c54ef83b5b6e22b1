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

mod process;
pub mod protocol;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mongodb::bson::Bson;
use nix::sys::signal::Signal;
use serde_json::Value;

use self::process::{Line, Process};
use self::protocol::{parse, Message, Violation};
use super::child::{resolve, signal_group, TERM_GRACE};
use super::exec::job_json;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::handlers::{Handler, HandlerError, HandlerHealth, HandlerResult};
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

/// Why a running job's process group was signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancel,
    Abort,
}

/// A job running in a slot's process, as the watchdog sees it.
struct Busy {
    id: Bson,
    pgid: i32,
    deadline: Option<Instant>,
    /// Why and when its group got TERM; KILL follows after [`TERM_GRACE`].
    stop: Option<(Stop, Instant)>,
    killed: bool,
}

/// What the pool's threads share.
struct Pool {
    config: PipeConfig,
    program: PathBuf,
    idle: Mutex<Vec<Process>>,
    returned: Condvar,
    /// Processes that passed the handshake and are not yet replaced.
    live: AtomicUsize,
    busy: Mutex<HashMap<usize, Busy>>,
    /// Each slot's restart back-off.
    backoff: Vec<Mutex<Backoff>>,
    /// The latest start failure, for `/healthz` and the unstarted error.
    problem: Mutex<Option<String>>,
    restarters: Mutex<Vec<JoinHandle<()>>>,
    stopping: Shutdown,
    me: Weak<Pool>,
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
        for entry in busy.values_mut() {
            entry.stop = Some((Stop::Abort, Instant::now()));
            entry.killed = true;
            signal_group(entry.pgid, Signal::SIGKILL);
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
        let restarters: Vec<_> = lock(&self.pool.restarters).drain(..).collect();
        for restarter in restarters {
            let _ = restarter.join();
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

/// How a job's conversation with its process ended.
enum Ending {
    /// The process answered: it can take the next job.
    Answered(HandlerResult),
    /// The process broke (died, or broke the protocol): replace it.
    Broken(Broken),
}

enum Broken {
    Closed,
    Violation(Violation),
}

impl Pool {
    fn handle(&self, job: &Job) -> HandlerResult {
        let json = job_json(job, self.config.timeout);
        let line = protocol::job_line(&json);
        let expected = json["id"].clone();
        // A process found dead between jobs is replaced and another tried;
        // that is no fault of this job's, so it costs no attempt.
        for _ in 0..=self.config.processes {
            let mut process = self.checkout()?;
            if let Some(stray) = process.stray() {
                let why = match stray {
                    Line::Closed => format!("it {} between jobs", process.death()),
                    Line::Text(text) | Line::TooLong(text) => format!(
                        "it wrote on stdout between jobs (stdout carries only answers): {}",
                        protocol::quote(&text)
                    ),
                };
                self.replace(process, &why, true);
                continue;
            }
            process.set_job(Some(&job.id_text()));
            let deadline = self.config.timeout.map(|t| Instant::now() + t);
            lock(&self.busy).insert(
                process.slot,
                Busy {
                    id: job.id.clone(),
                    pgid: process.pgid(),
                    deadline,
                    stop: None,
                    killed: false,
                },
            );
            if let Err(error) = process.send(&line) {
                lock(&self.busy).remove(&process.slot);
                let why = format!(
                    "it could not be given the job ({error}); it {}",
                    process.death()
                );
                self.replace(process, &why, true);
                continue;
            }
            let ending = Self::converse(&process, job, &expected);
            // Off the watchdog's list before the process is reaped below.
            let stop = lock(&self.busy)
                .remove(&process.slot)
                .and_then(|b| b.stop.map(|(why, _)| why));
            process.set_job(None);
            return match ending {
                Ending::Answered(result) => {
                    process.jobs += 1;
                    lock(&self.backoff[process.slot]).reset();
                    self.give_back(process);
                    result
                }
                Ending::Broken(broken) => Err(self.broken(process, broken, stop)),
            };
        }
        Err(HandlerError::unstarted(format!(
            "no `{}` process could take the job: each was found dead",
            self.program.display()
        )))
    }

    /// Reads the process's lines for `job` until its answer, or until it
    /// breaks. Progress lines go onto the job.
    fn converse(process: &Process, job: &Job, expected: &Value) -> Ending {
        loop {
            let line = match process.recv() {
                Line::Text(line) => line,
                Line::TooLong(head) => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        "a line is over the 16 MiB limit",
                        &head,
                    )))
                }
                Line::Closed => return Ending::Broken(Broken::Closed),
            };
            let message = match parse(&line) {
                Ok(message) => message,
                Err(violation) => return Ending::Broken(Broken::Violation(violation)),
            };
            match message.id() {
                None => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        "the handshake is said once, at start, not while a job runs",
                        &line,
                    )))
                }
                Some(id) if id != expected => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        format!("the line is about job {id}, but the job running is {expected}"),
                        &line,
                    )))
                }
                Some(_) => {}
            }
            match message {
                Message::Progress { fraction, note, .. } => {
                    job.set_progress(fraction, note.as_deref());
                }
                Message::Done { result, .. } => {
                    return Ending::Answered(Ok(Some(result_bson(result))));
                }
                Message::Failed { error, retry, .. } => {
                    return Ending::Answered(Err(if retry {
                        HandlerError::retry(error)
                    } else {
                        HandlerError::permanent(error)
                    }));
                }
                Message::Ready => unreachable!("the handshake has no id"),
            }
        }
    }

    /// The error of an attempt whose process broke, and its replacement.
    fn broken(&self, mut process: Process, broken: Broken, stop: Option<Stop>) -> HandlerError {
        let program = self.program.display().to_string();
        let message = match (stop, broken) {
            (Some(Stop::Timeout), _) => format!(
                "`{program}` timed out after {} (--timeout): TERM went to its process group, KILL {} later; the process is replaced",
                crate::duration::format_duration(self.config.timeout.unwrap_or_default()),
                crate::duration::format_duration(TERM_GRACE)
            ),
            (Some(Stop::Cancel), _) => "cancelled by an operator while running; its process was stopped".to_string(),
            (Some(Stop::Abort), _) => "stopped: the worker shut down before the job finished".to_string(),
            (None, Broken::Closed) => format!(
                "`{program}` {} while running the job; the process is replaced",
                process.death()
            ),
            (None, Broken::Violation(violation)) => {
                format!("`{program}` broke the --pipe protocol ({violation}); the process is replaced")
            }
        };
        // A timed-out or cancelled process was stopped on purpose: it is
        // replaced at once. A crash or a violation backs off.
        let failed = stop.is_none();
        self.replace(process, &message, failed);
        HandlerError::retry(message)
    }

    /// An idle live process, waiting while others are busy; an unstarted
    /// error when none is live (the job goes back, its attempt not counted).
    fn checkout(&self) -> Result<Process, HandlerError> {
        let mut idle = lock(&self.idle);
        loop {
            if let Some(process) = idle.pop() {
                return Ok(process);
            }
            if self.stopping.is_requested() {
                return Err(HandlerError::unstarted("the worker is stopping"));
            }
            if self.live.load(Ordering::SeqCst) == 0 {
                let problem = lock(&self.problem).clone();
                return Err(HandlerError::unstarted(format!(
                    "no `{}` process is running{}",
                    self.program.display(),
                    problem.map_or(String::new(), |p| format!(" ({p})"))
                )));
            }
            idle = self
                .returned
                .wait_timeout(idle, Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Puts a process that answered back, or recycles it after
    /// `--pipe-max-jobs` jobs.
    fn give_back(&self, process: Process) {
        if self.config.max_jobs.is_some_and(|max| process.jobs >= max) {
            log::debug!(
                "pipe[{}]: replacing the process after {} jobs (--pipe-max-jobs)",
                process.slot,
                process.jobs
            );
            self.live.fetch_sub(1, Ordering::SeqCst);
            let pool = self.self_arc();
            Pool::restart(&pool, process.slot, Duration::ZERO, Some((process, false)));
            return;
        }
        lock(&self.idle).push(process);
        self.returned.notify_one();
    }

    /// Takes a broken (or dead) process out of the pool and starts another
    /// in its slot, after the slot's back-off when it `failed`.
    fn replace(&self, process: Process, why: &str, failed: bool) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        let slot = process.slot;
        let delay = if failed {
            lock(&self.backoff[slot]).advance()
        } else {
            Duration::ZERO
        };
        log::warn!(
            "pipe[{slot}]: replacing `{}`: {why}; a new process starts in {}",
            self.program.display(),
            crate::duration::format_duration(delay)
        );
        let pool = self.self_arc();
        Pool::restart(&pool, slot, delay, Some((process, true)));
    }

    /// This pool's `Arc`, for the threads it starts. The pool lives only
    /// in an `Arc` (built cyclic, see [`PipeHandler::new`]), and whoever
    /// calls this holds one, so the upgrade cannot fail.
    fn self_arc(&self) -> Arc<Pool> {
        self.me
            .upgrade()
            .expect("a pool is only used through its Arc")
    }

    /// Starts (after `delay`) a process for `slot`, ending `old` first
    /// (killed when it broke, else let exit on EOF), and keeps trying with
    /// the slot's back-off until one says it is ready or the pool stops.
    fn restart(pool: &Arc<Pool>, slot: usize, delay: Duration, old: Option<(Process, bool)>) {
        let shared = Arc::clone(pool);
        let handle = std::thread::Builder::new()
            .name(format!("mongoq-pipe-start-{slot}"))
            .spawn(move || {
                match old {
                    Some((process, true)) => process.kill(),
                    Some((process, false)) => {
                        process.end(EXIT_GRACE);
                    }
                    None => {}
                }
                shared.start_slot(slot, delay);
            })
            .expect("the OS can start a thread");
        let mut restarters = lock(&pool.restarters);
        restarters.retain(|h| !h.is_finished());
        restarters.push(handle);
    }

    fn start_slot(&self, slot: usize, mut delay: Duration) {
        loop {
            if self.stopping.sleep(delay) {
                return;
            }
            match self.start_one(slot) {
                Ok(process) => {
                    if self.stopping.is_requested() {
                        process.kill();
                        return;
                    }
                    *lock(&self.problem) = None;
                    self.live.fetch_add(1, Ordering::SeqCst);
                    lock(&self.idle).push(process);
                    self.returned.notify_one();
                    return;
                }
                Err(problem) => {
                    delay = lock(&self.backoff[slot]).advance();
                    log::warn!(
                        "pipe[{slot}]: `{}` could not start: {problem}; no jobs are claimed for this slot; next try in {}",
                        self.program.display(),
                        crate::duration::format_duration(delay)
                    );
                    *lock(&self.problem) = Some(problem);
                }
            }
        }
    }

    fn start_one(&self, slot: usize) -> Result<Process, String> {
        let mut process = Process::spawn(&self.program, &self.config.args, slot)
            .map_err(|e| format!("cannot run it: {e}"))?;
        match process.await_ready(self.config.start_timeout, &self.stopping) {
            Ok(()) => Ok(process),
            Err(problem) => {
                process.kill();
                Err(problem)
            }
        }
    }

    /// The watchdog: stops jobs past their deadline, and KILLs groups that
    /// outlived the TERM grace.
    fn watch(&self) {
        while !self.stopping.sleep(WATCH_EVERY) {
            let now = Instant::now();
            for entry in lock(&self.busy).values_mut() {
                match entry.stop {
                    None if entry.deadline.is_some_and(|d| now >= d) => {
                        entry.stop = Some((Stop::Timeout, now));
                        signal_group(entry.pgid, Signal::SIGTERM);
                    }
                    Some((_, at)) if !entry.killed && now.duration_since(at) >= TERM_GRACE => {
                        entry.killed = true;
                        signal_group(entry.pgid, Signal::SIGKILL);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A handler's `result` JSON as stored: extended JSON is read as BSON
/// (`{"$date": …}` becomes a date), anything else is kept as it is.
fn result_bson(result: Value) -> Bson {
    Bson::try_from(result.clone()).unwrap_or_else(|_| Bson::String(result.to_string()))
}
