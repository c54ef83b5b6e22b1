//! How a worker runs, and the one place that decides whether a setting is
//! usable. The CLI builds a [`WorkerConfig`] from its flags and calls
//! [`WorkerConfig::validate`]; a library user gets the same check from
//! [`crate::Worker::new`], so both refuse the same mistakes with the same
//! message, naming the flag.

use std::time::Duration;

use crate::error::Error;
use crate::queue::validate_queue_name;
use crate::schema::fields;
use crate::worker::settle::retry::RetryPolicy;

/// The shortest lease a worker accepts: leases are renewed every third of
/// it, and below a second a renewal's round trip and a loaded server's
/// pauses eat most of the margin.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// Snoozes a job may take by default: enough for a handler that waits on
/// a resource for hours at a sensible snooze, few enough that a handler
/// that snoozes every job forever by mistake shows up as failed jobs.
pub const DEFAULT_MAX_SNOOZES: u32 = 100;

/// How a worker runs. Build with [`WorkerConfig::default`] and adjust.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Handler threads.
    pub threads: usize,
    /// Record the queue's history (see [`crate::history`]); `--no-history` turns it off.
    pub history: bool,
    /// Most jobs claimed in one round trip.
    pub batch_size: usize,
    /// How long a claim holds a job without extension.
    pub lease: Duration,
    /// Longest wait between claims when the queue is idle.
    pub poll_interval: Duration,
    /// Attempts before `failed`, for jobs that set none.
    pub max_attempts: u32,
    /// Snoozes a job may take ("not now" from its handler, no attempt
    /// charged); one more fails it, with the reason.
    pub max_snoozes: u32,
    /// How long running jobs get to finish after a stop signal.
    pub shutdown_grace: Duration,
    /// This worker's name in `lease_owner` and logs.
    pub worker_id: String,
    /// Stop once nothing is eligible and nothing is running.
    pub drain: bool,
    /// Delay before retries.
    pub retry: RetryPolicy,
    /// Wake up on new jobs through a change stream where the deployment
    /// supports one (polling continues either way).
    pub change_streams: bool,
    /// The named queues to take jobs from (`default` holds jobs that name
    /// none).
    pub queues: Vec<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            threads: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            history: true,
            batch_size: 500,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
            max_snoozes: DEFAULT_MAX_SNOOZES,
            shutdown_grace: Duration::from_secs(30),
            worker_id: default_worker_id(),
            drain: false,
            retry: RetryPolicy::default(),
            change_streams: true,
            queues: vec![fields::DEFAULT_QUEUE.to_string()],
        }
    }
}

/// `host:pid`, unique among live workers.
pub fn default_worker_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}:{}", std::process::id())
}

impl WorkerConfig {
    /// Checks every setting; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), Error> {
        let at_least_one = |setting, value: u64| {
            if value == 0 {
                Err(Error::config(setting, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_one("--threads", self.threads as u64)?;
        at_least_one("--batch-size", self.batch_size as u64)?;
        at_least_one("--max-attempts", u64::from(self.max_attempts))?;
        if self.lease < MIN_LEASE {
            return Err(Error::config(
                "--lease",
                "must be at least 1s: leases are renewed every third of it",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config("--poll-interval", "must be more than 0s"));
        }
        if self.retry.base > self.retry.max {
            return Err(Error::config(
                "--backoff-base",
                format!(
                    "{} is longer than --backoff-max {}; the first retry delay cannot exceed the longest",
                    crate::duration::format_duration(self.retry.base),
                    crate::duration::format_duration(self.retry.max)
                ),
            ));
        }
        if self.worker_id.trim().is_empty() {
            return Err(Error::config(
                "--worker-id",
                "must not be empty (it names the worker in lease_owner)",
            ));
        }
        if self.queues.is_empty() {
            return Err(Error::config(
                "--queue",
                "a worker needs at least one queue",
            ));
        }
        for name in &self.queues {
            validate_queue_name(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(change: impl FnOnce(&mut WorkerConfig)) -> String {
        let mut config = WorkerConfig::default();
        change(&mut config);
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_defaults_are_valid() {
        WorkerConfig::default().validate().unwrap();
    }

    #[test]
    fn each_mistake_names_its_flag() {
        assert!(refused(|c| c.threads = 0).starts_with("--threads"));
        assert!(refused(|c| c.batch_size = 0).starts_with("--batch-size"));
        assert!(refused(|c| c.max_attempts = 0).starts_with("--max-attempts"));
        assert!(refused(|c| c.lease = Duration::from_millis(999)).starts_with("--lease"));
        assert!(refused(|c| c.poll_interval = Duration::ZERO).starts_with("--poll-interval"));
        assert!(refused(|c| c.retry.base = Duration::from_secs(7200)).starts_with("--backoff-base"));
        assert!(refused(|c| c.worker_id = " ".into()).starts_with("--worker-id"));
        assert!(refused(|c| c.queues.clear()).starts_with("--queue"));
        assert!(refused(|c| c.queues = vec![String::new()]).contains("not a valid queue name"));
    }
}
