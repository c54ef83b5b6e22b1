//! Liveness, readiness and database reachability, as the worker's threads
//! see them: what `/healthz` answers and what feeds systemd's watchdog.
//!
//! Each bookkeeping thread beats as it makes progress; a thread that stops
//! beating (a driver call hung on a dead connection) makes the worker not
//! live. A database outage does not: the worker rides it out, and a
//! restart would not help.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The threads whose progress proves the worker alive.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Beat {
    Fetcher = 0,
    Keeper = 1,
    Completer = 2,
    Control = 3,
}

const BEAT_NAMES: [&str; 4] = ["fetcher", "keeper", "completer", "control"];

/// Liveness and database reachability, as the threads see them.
pub(crate) struct Health {
    started: Instant,
    /// Milliseconds since `started` of each thread's last sign of progress.
    beats: [AtomicU64; 4],
    /// Indexes are in place and the threads are running.
    pub(crate) ready: AtomicBool,
    /// Set by the shutdown sequence.
    pub(crate) stopping: AtomicBool,
    /// The last database error and when it began, cleared by a success.
    db_error: Mutex<Option<(Instant, String)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            beats: std::array::from_fn(|_| AtomicU64::new(0)),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            db_error: Mutex::new(None),
        }
    }
}

impl Health {
    /// Indexes are in place and the threads run.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    /// The shutdown sequence began.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Whether the worker is ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub(crate) fn beat(&self, thread: Beat) {
        self.beats[thread as usize].store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    pub(crate) fn db_ok(&self) {
        let mut error = lock(&self.db_error);
        if error.is_some() {
            *error = None;
        }
    }

    pub(crate) fn db_failed(&self, message: &str) {
        let mut error = lock(&self.db_error);
        match error.as_mut() {
            Some((_, text)) => message.clone_into(text),
            None => *error = Some((Instant::now(), message.to_string())),
        }
    }

    /// Records the outcome of a database call and passes it on.
    pub(crate) fn track<T>(&self, result: Result<T, crate::Error>) -> Result<T, crate::Error> {
        match &result {
            Ok(_) => self.db_ok(),
            Err(error) => self.db_failed(&error.to_string()),
        }
        result
    }

    /// The current state; a thread is stalled when it showed no progress
    /// for `stall_after`.
    pub(crate) fn report(&self, stall_after: Duration) -> HealthReport {
        let now = self.started.elapsed().as_millis() as u64;
        let ready = self.ready.load(Relaxed);
        let stopping = self.stopping.load(Relaxed);
        // While stopping, threads end one by one and stop beating; the
        // shutdown sequence bounds itself, so nothing counts as stalled.
        let stalled = if ready && !stopping {
            self.beats
                .iter()
                .zip(BEAT_NAMES)
                .filter(|(beat, _)| {
                    now.saturating_sub(beat.load(Relaxed)) > stall_after.as_millis() as u64
                })
                .map(|(_, name)| name.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let database_error = lock(&self.db_error)
            .as_ref()
            .map(|(since, text)| DatabaseError {
                for_seconds: since.elapsed().as_secs_f64(),
                error: text.clone(),
            });
        HealthReport {
            ready,
            stopping,
            stalled,
            database_error,
            handler: None,
        }
    }
}

/// A worker's health, as `/healthz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthReport {
    /// Indexes are in place and the threads are running.
    pub ready: bool,
    /// A stop signal was received.
    pub stopping: bool,
    /// Threads that showed no progress for too long (a hung driver call).
    pub stalled: Vec<String>,
    /// The database error the worker is riding out, if any.
    pub database_error: Option<DatabaseError>,
    /// The handler's own health, when it reports one (a pipe handler's
    /// live processes, and why the others are down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<crate::handlers::HandlerHealth>,
}

/// A database error and how long it has lasted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatabaseError {
    /// Seconds since the first failure of this outage.
    pub for_seconds: f64,
    /// The latest error (password redacted).
    pub error: String,
}

impl HealthReport {
    /// Alive: every thread makes progress. This is what feeds systemd's
    /// watchdog; a database outage does not make a worker dead (it rides
    /// outages out, and a restart would not help).
    pub fn live(&self) -> bool {
        self.stalled.is_empty()
    }

    /// Healthy: ready, alive, reaching the database, not stopping, and
    /// with something to run jobs on (a handler that reports its health has
    /// at least one live process).
    pub fn healthy(&self) -> bool {
        self.ready
            && self.live()
            && self.database_error.is_none()
            && !self.stopping
            && self.handler.as_ref().is_none_or(|h| h.live > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_without_progress_is_stalled_only_once_ready() {
        let health = Health::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(health.report(Duration::from_millis(5)).live());
        health.ready.store(true, Relaxed);
        health.beat(Beat::Fetcher);
        health.beat(Beat::Keeper);
        health.beat(Beat::Control);
        let report = health.report(Duration::from_millis(5));
        assert_eq!(report.stalled, vec!["completer".to_string()]);
        assert!(!report.healthy());
    }
}
