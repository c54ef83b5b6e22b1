//! What a worker does with a job: the [`Handler`] trait.
//!
//! Library users implement it (or pass a closure); the binary offers two
//! that live here: [`exec::ExecHandler`] (a program per job) and
//! [`simulate::SimulateHandler`] (the original demo's random sleep).
//! Handlers run on several threads at once, so they are `Send + Sync` and
//! take `&self`. A handler that panics fails that attempt only: the worker
//! catches the panic and keeps its thread.

use mongodb::bson::Bson;

use crate::job::Job;

pub mod exec;
pub mod simulate;

pub use exec::ExecHandler;
pub use simulate::SimulateHandler;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Becomes `last_error` and an entry of `errors`.
    pub message: String,
    /// When true the job fails for good now instead of being retried.
    pub permanent: bool,
}

impl HandlerError {
    /// A failure worth retrying (the usual case).
    pub fn retry(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that no retry can fix (bad input, say).
    pub fn permanent(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            permanent: true,
        }
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
}

impl<F> Handler for F
where
    F: Fn(&Job) -> HandlerResult + Send + Sync,
{
    fn handle(&self, job: &Job) -> HandlerResult {
        self(job)
    }
}
