//! What a worker does with a job: the [`Handler`] trait.
//!
//! Library users implement it (or pass a closure); the binary offers three
//! that live here: [`exec::ExecHandler`] (a program per job),
//! [`pipe::PipeHandler`] (long-lived programs fed one job at a time) and
//! [`simulate::SimulateHandler`] (the original demo's random sleep).
//! Handlers run on several threads at once, so they are `Send + Sync` and
//! take `&self`. A handler that panics fails that attempt only: the worker
//! catches the panic and keeps its thread.
//!
//! It may import `job` and the shared helpers, never `queue` or `worker`:
//! a handler sees a job, not the database.

use mongodb::bson::Bson;

use crate::job::Job;

mod child;
pub mod exec;
pub mod pipe;
pub mod simulate;

pub use exec::ExecHandler;
pub use pipe::{PipeConfig, PipeHandler};
pub use simulate::SimulateHandler;

/// Why an attempt did not complete: a failure, or "not now".
///
/// Besides the message, a handler may say how long to wait: a
/// [`HandlerError::snooze`] runs the job again after a while without
/// charging the attempt (a resource is not ready yet); a failure with
/// [`HandlerError::after`] waits that long instead of the exponential
/// back-off (an HTTP `Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Becomes `last_error` and an entry of `errors`.
    pub message: String,
    /// When true the job fails for good now instead of being retried.
    pub permanent: bool,
    /// When true the job was never started (the handler had nothing to run
    /// it with): it goes back to `pending` and the attempt is not counted.
    pub unstarted: bool,
    /// A failure's next attempt waits this long instead of the back-off.
    pub retry_after: Option<std::time::Duration>,
    /// Not a failure: run the job again this long from now (on the
    /// server's clock), the attempt not charged, `snoozes` counted.
    pub snooze: Option<std::time::Duration>,
    /// With a snooze: pause the job's whole queue fleet-wide as long (a
    /// remote API said "back off"); the job runs again when it ends.
    pub pause_queue: bool,
}

impl HandlerError {
    fn new(message: String) -> HandlerError {
        HandlerError {
            message,
            permanent: false,
            unstarted: false,
            retry_after: None,
            snooze: None,
            pause_queue: false,
        }
    }

    /// A failure worth retrying (the usual case).
    pub fn retry(message: impl Into<String>) -> HandlerError {
        HandlerError::new(message.into())
    }

    /// A failure that no retry can fix (bad input, say).
    pub fn permanent(message: impl Into<String>) -> HandlerError {
        HandlerError {
            permanent: true,
            ..HandlerError::new(message.into())
        }
    }

    /// The job was not started, through no fault of its own (no handler
    /// process is alive): it is handed back, its attempt not counted.
    pub fn unstarted(message: impl Into<String>) -> HandlerError {
        HandlerError {
            unstarted: true,
            ..HandlerError::new(message.into())
        }
    }

    /// "Not now": the job goes back to `pending` until `delay` from now,
    /// its attempt not charged and its `snoozes` counted. A job snoozed
    /// more often than the worker's `--max-snoozes` fails, with the reason.
    pub fn snooze(delay: std::time::Duration) -> HandlerError {
        HandlerError {
            snooze: Some(delay),
            ..HandlerError::new(format!(
                "snoozed for {}",
                crate::duration::format_duration(delay)
            ))
        }
    }

    /// "Back off": no worker starts another job of this job's queue for
    /// `delay` (fleet-wide, on the server's clock), and this job runs again
    /// when the pause ends, its attempt not charged (a snooze, counted as
    /// one). `reason` is shown by `stats`, the dashboard and `/metrics`.
    pub fn pause_queue(delay: std::time::Duration, reason: impl Into<String>) -> HandlerError {
        HandlerError {
            snooze: Some(delay),
            pause_queue: true,
            ..HandlerError::new(reason.into())
        }
    }

    /// This failure's next attempt waits `delay` (say, from an HTTP
    /// `Retry-After`) instead of the exponential back-off:
    /// `HandlerError::retry("429 from the API").after(wait)`.
    #[must_use]
    pub fn after(mut self, delay: std::time::Duration) -> HandlerError {
        self.retry_after = Some(delay);
        self
    }
}

impl<E: std::fmt::Display> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error.to_string())
    }
}

/// What an attempt produced: a `result` to store (or none), or an error.
pub type HandlerResult = Result<Option<Bson>, HandlerError>;

/// Runs jobs. Must be idempotent: after a crash a job may run again.
pub trait Handler: Send + Sync {
    /// Runs one attempt of `job`.
    fn handle(&self, job: &Job) -> HandlerResult;

    /// Called when the shutdown grace period runs out with jobs still
    /// running: stop them if you can (the process is about to exit).
    fn abort(&self) {}

    /// Called when an operator cancelled the job with this `_id` while it
    /// runs (`mongoq cancel`): stop it if you can. The job's
    /// [`Job::is_cancelled`] is already true, and whatever the attempt
    /// returns is not written.
    fn cancel(&self, _job_id: &Bson) {}

    /// How many jobs the handler could start now, when that can be fewer
    /// than the worker's threads (`None`: one per thread, always). The
    /// fetcher claims for this many threads, and nothing at 0: a pipe
    /// handler whose programs are down claims no jobs it cannot run.
    fn ready(&self) -> Option<usize> {
        None
    }

    /// The handler's own health, for `/healthz` (`None`: nothing to say).
    fn health(&self) -> Option<HandlerHealth> {
        None
    }

    /// Called once when the worker has stopped: release what the handler
    /// holds (a pipe handler ends its programs).
    fn stop(&self) {}
}

/// A handler's health as `/healthz` shows it: how many of its processes
/// (or other means of running jobs) are alive, and why the others are not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandlerHealth {
    /// What runs jobs now (live processes).
    pub live: usize,
    /// How many there should be (one per handler thread).
    pub slots: usize,
    /// Why some are not alive, when they are not: the latest start failure.
    pub problem: Option<String>,
}

impl<F> Handler for F
where
    F: Fn(&Job) -> HandlerResult + Send + Sync,
{
    fn handle(&self, job: &Job) -> HandlerResult {
        self(job)
    }
}
