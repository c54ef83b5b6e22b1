//! The pool of a pipe handler's processes: the slots, the idle list the
//! handler threads take processes from, the restarters that bring a slot
//! back after its back-off, and the watchdog that stops a job past its
//! deadline. See the parent module for the whole picture.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mongodb::bson::Bson;
use nix::sys::signal::Signal;

use super::process::Process;
use super::{PipeConfig, EXIT_GRACE, WATCH_EVERY};

/// How long after KILL a handler thread still waits for its process's
/// stdout to close.
const ABANDON_AFTER: Duration = Duration::from_secs(1);
use crate::backoff::Backoff;
use crate::handlers::child::{signal_group, TERM_GRACE};
use crate::handlers::HandlerError;
use crate::shutdown::Shutdown;
use crate::sync::lock;

/// Why a running job's process group was signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Timeout,
    Cancel,
    Abort,
}

/// A job running in a slot's process, as the watchdog sees it.
pub(super) struct Busy {
    pub(super) id: Bson,
    pub(super) pgid: i32,
    pub(super) deadline: Option<Instant>,
    /// Why and when its group got TERM; KILL follows after [`TERM_GRACE`].
    pub(super) stop: Option<(Stop, Instant)>,
    /// When its group got KILL.
    pub(super) killed: Option<Instant>,
}

impl Busy {
    /// KILLs its group (once).
    pub(super) fn kill(&mut self, now: Instant) {
        if self.killed.is_none() {
            self.killed = Some(now);
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// What the pool's threads share.
pub(super) struct Pool {
    pub(super) config: PipeConfig,
    pub(super) program: PathBuf,
    pub(super) idle: Mutex<Vec<Process>>,
    pub(super) returned: Condvar,
    /// Processes that passed the handshake and are not yet replaced.
    pub(super) live: AtomicUsize,
    pub(super) busy: Mutex<HashMap<usize, Busy>>,
    /// Each slot's restart back-off.
    pub(super) backoff: Vec<Mutex<Backoff>>,
    /// The latest start failure, for `/healthz` and the unstarted error.
    pub(super) problem: Mutex<Option<String>>,
    pub(super) restarters: Mutex<Vec<JoinHandle<()>>>,
    pub(super) stopping: Shutdown,
    pub(super) me: Weak<Pool>,
}

impl Pool {
    /// Whether the handler thread on `slot` should stop waiting for its
    /// process's stdout: its group was KILLed [`ABANDON_AFTER`] ago and the
    /// pipe is still open (held by something that left the group).
    pub(super) fn abandoned(&self, slot: usize) -> bool {
        lock(&self.busy)
            .get(&slot)
            .and_then(|busy| busy.killed)
            .is_some_and(|at| at.elapsed() >= ABANDON_AFTER)
    }

    /// An idle live process, waiting while others are busy; an unstarted
    /// error when none is live (the job goes back, its attempt not counted).
    pub(super) fn checkout(&self) -> Result<Process, HandlerError> {
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
    pub(super) fn give_back(&self, process: Process) {
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
    pub(super) fn replace(&self, process: Process, why: &str, failed: bool) {
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
    pub(super) fn self_arc(&self) -> Arc<Pool> {
        self.me
            .upgrade()
            .expect("a pool is only used through its Arc")
    }

    /// Starts (after `delay`) a process for `slot`, ending `old` first
    /// (killed when it broke, else let exit on EOF), and keeps trying with
    /// the slot's back-off until one says it is ready or the pool stops.
    pub(super) fn restart(
        pool: &Arc<Pool>,
        slot: usize,
        delay: Duration,
        old: Option<(Process, bool)>,
    ) {
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

    pub(super) fn start_slot(&self, slot: usize, mut delay: Duration) {
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
                Err(_) if self.stopping.is_requested() => return,
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

    pub(super) fn start_one(&self, slot: usize) -> Result<Process, String> {
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

    /// The watchdog: stops jobs past their deadline, KILLs groups that
    /// outlived the TERM grace, and ends the group of a process that
    /// exited mid-job while something it started holds its stdout open
    /// (the handler thread's read would otherwise wait for that one).
    pub(super) fn watch(&self) {
        let mut tick = 0u32;
        while !self.stopping.sleep(WATCH_EVERY) {
            let now = Instant::now();
            tick = tick.wrapping_add(1);
            for entry in lock(&self.busy).values_mut() {
                if tick.is_multiple_of(10)
                    && entry.stop.is_none()
                    && entry.killed.is_none()
                    && exited(entry.pgid)
                {
                    entry.kill(now);
                    continue;
                }
                match entry.stop {
                    None if entry.deadline.is_some_and(|d| now >= d) => {
                        entry.stop = Some((Stop::Timeout, now));
                        signal_group(entry.pgid, Signal::SIGTERM);
                    }
                    Some((_, at)) if now.duration_since(at) >= TERM_GRACE => entry.kill(now),
                    _ => {}
                }
            }
        }
    }
}

/// Whether the process `pid` (held unreaped by its handler thread) has
/// exited: a zombie, in `/proc/PID/stat`'s third field.
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The command name (field 2) is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}
