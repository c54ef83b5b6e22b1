//! A handler thread: takes jobs from the channel, runs the handler, and
//! sends each attempt's outcome to the completer.
//!
//! A panicking handler fails that attempt only (the panic is caught and the
//! thread keeps going). After a stop signal, jobs still waiting in the
//! channel are handed back unstarted (`Released`, attempt not counted); the
//! thread ends when the channel is closed and empty.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::clock::Clock;
use crate::fleet::limits::START_SLACK;
use crate::handlers::{Handler, HandlerError};
use crate::job::Job;
use crate::shutdown::Shutdown;
use crate::trace::Tracing;
use crate::worker::claim::pacing::PaceMeter;
use crate::worker::control::Controls;
use crate::worker::health::metrics::Histogram;
use crate::worker::lease::held::JobKey;
use crate::worker::lease::running::Running;
use crate::worker::settle::outcome::{bounded_error, Kind, Outcome, Timing};
use crate::worker::settle::retry::RetryPolicy;

/// A claimed job waits out a handler's pause of its queue that ends within
/// this (a 429's few seconds), keeping its lease; a longer pause hands it
/// back.
const HOLD_THROUGH: std::time::Duration = std::time::Duration::from_secs(10);

/// One handler thread and what it owns.
pub(crate) struct Runner {
    /// This thread's index, its key in [`Running`].
    pub(crate) index: usize,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) retry: RetryPolicy,
    /// Snoozes a job may take; one more fails it.
    pub(crate) max_snoozes: u32,
    pub(crate) clock: Arc<Clock>,
    pub(crate) running: Arc<Running>,
    pub(crate) controls: Arc<Controls>,
    pub(crate) pace: Arc<PaceMeter>,
    pub(crate) handler_seconds: Arc<Histogram>,
    pub(crate) jobs: Receiver<Job>,
    pub(crate) outcomes: Sender<Outcome>,
    /// Exports a span per attempt, when tracing is configured.
    pub(crate) tracing: Option<Arc<Tracing>>,
}

impl Runner {
    /// Runs jobs until the channel is closed and empty.
    pub(crate) fn run(self, shutdown: &Shutdown) {
        for mut job in &self.jobs {
            let key = job.key();
            if let Some(wait) = job
                .start_at
                .and_then(|at| at.checked_duration_since(Instant::now()))
            {
                // A reserved start (rate limit): not before its instant.
                shutdown.sleep(wait);
            }
            if job.start_at.is_none() {
                self.wait_out_a_short_pause(&job.queue, shutdown);
            }
            // Stopping, its queue paused since the claim, or its reserved
            // start (rate limit) missed: back to pending, attempt not counted.
            if shutdown.is_requested()
                || self.controls.is_paused(&job.queue, self.clock.now())
                || job
                    .start_at
                    .is_some_and(|at| Instant::now() > at + START_SLACK)
            {
                let _ = self.outcomes.send(Outcome::new(key, Kind::Released));
                continue;
            }
            // Expired while it waited in the channel: it never starts.
            if let Some(expires_at) = job.expires_at.filter(|at| *at <= self.clock.latest()) {
                let timing = self.timing(&job);
                let _ = self
                    .outcomes
                    .send(Outcome::new(key, Kind::Expired { expires_at }).timed(timing));
                continue;
            }
            let waited = self.timing(&job);
            let span = self.tracing.as_ref().map(|tracing| {
                tracing.start_attempt(
                    &job.queue,
                    &job.id_text(),
                    job.attempt,
                    waited.wait,
                    job.producer_trace.as_deref(),
                )
            });
            job.attempt_trace = span.as_ref().and_then(|s| s.traceparent.clone());
            self.running.start(self.index, key.clone(), &job);
            let started = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&job)));
            let took = started.elapsed();
            self.pace.record(took);
            self.handler_seconds.observe(took);
            self.running.finish(self.index);
            let timing = Timing {
                run: Some(took),
                cancelled: job.is_cancelled(),
                ..waited
            };
            let outcome = match result {
                Ok(Ok(_)) if job.is_settled() => Outcome::new(key, Kind::Settled),
                Ok(Ok(result)) => Outcome::new(key, Kind::Completed { result }),
                // The handler had nothing to run it with: back to pending,
                // attempt not counted.
                Ok(Err(error)) if error.unstarted => {
                    log::debug!(
                        "job {} handed back unstarted: {}",
                        job.id_text(),
                        error.message
                    );
                    Outcome::new(key, Kind::Released)
                }
                Ok(Err(error)) if error.snooze.is_some() => self.snoozed(&job, key, &error),
                Ok(Err(error)) => self.failure(&job, key, error),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(ToString::to_string)
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic payload".into());
                    self.failure(
                        &job,
                        key,
                        HandlerError::retry(format!("handler panicked: {message}")),
                    )
                }
            };
            if let Some(span) = span {
                let (name, error) = describe(&outcome.kind);
                span.end(name, error);
            }
            // A job handed back unstarted ran nothing the history counts.
            let outcome = if matches!(outcome.kind, Kind::Released) {
                outcome
            } else {
                outcome.timed(timing)
            };
            let _ = self.outcomes.send(outcome);
        }
    }

    /// What the history counts of `job` as it starts now: its queue and
    /// how long it waited since it was eligible (on the server's clock).
    fn timing(&self, job: &Job) -> Timing {
        let wait = job.eligible_at.map(|at| {
            let ms = self.clock.now().timestamp_millis() - at.timestamp_millis();
            std::time::Duration::from_millis(ms.max(0).unsigned_abs())
        });
        Timing {
            queue: job.queue.clone(),
            wait,
            run: None,
            cancelled: false,
        }
    }

    /// A handler's pause of `queue` that ends within [`HOLD_THROUGH`]: the
    /// job this thread holds waits for its end (its lease is kept) and
    /// starts then, instead of going back and being claimed again after
    /// it. An operator's pause, or a longer one, hands it back.
    fn wait_out_a_short_pause(&self, queue: &str, shutdown: &Shutdown) {
        while let Some(left) = self.controls.short_pause_left(queue, self.clock.now()) {
            if left > HOLD_THROUGH || shutdown.sleep(left.min(HOLD_THROUGH)) {
                return;
            }
        }
    }

    /// "Not now": pending again after the snooze on the server's clock,
    /// the attempt not charged; failed once the job is out of snoozes.
    fn snoozed(&self, job: &Job, key: JobKey, error: &HandlerError) -> Outcome {
        let delay = error.snooze.unwrap_or_default();
        if job.snoozes >= self.max_snoozes {
            return Outcome::new(
                key,
                Kind::Failed {
                    attempt: job.attempt,
                    error: format!(
                        "snoozed {} times, the most this worker allows (--max-snoozes {}); its handler asked for {} more",
                        job.snoozes,
                        self.max_snoozes,
                        crate::duration::format_duration(delay)
                    ),
                },
            );
        }
        let pause = error.pause_queue.then(|| {
            // This worker starts none of the queue's jobs from now on; the
            // completer writes the pause for the peers.
            self.controls
                .pause_locally(&job.queue, self.clock.after(delay));
            (job.queue.clone(), error.message.clone())
        });
        Outcome::new(key, Kind::Snoozed { delay, pause })
    }

    /// A failed attempt: retried later (after the back-off, or after the
    /// wait the handler asked for), or failed for good.
    fn failure(&self, job: &Job, key: JobKey, error: HandlerError) -> Outcome {
        let message = bounded_error(error.message);
        if error.permanent || job.attempt >= job.max_attempts {
            Outcome::new(
                key,
                Kind::Failed {
                    attempt: job.attempt,
                    error: message,
                },
            )
        } else {
            let delay = error
                .retry_after
                .unwrap_or_else(|| self.retry.delay_for(job.attempt, &mut rand::rng()));
            Outcome::new(
                key,
                Kind::Retry {
                    attempt: job.attempt,
                    error: message,
                    run_at: self.clock.after(delay),
                },
            )
        }
    }
}

/// An outcome as an attempt's span says it: its name, and the error of a
/// failed attempt.
fn describe(kind: &Kind) -> (&'static str, Option<&str>) {
    match kind {
        Kind::Completed { .. } | Kind::Settled => ("completed", None),
        Kind::Retry { error, .. } => ("retried", Some(error)),
        Kind::Failed { error, .. } => ("failed", Some(error)),
        Kind::Snoozed { .. } => ("snoozed", None),
        Kind::Released => ("handed back", None),
        Kind::Expired { .. } => ("expired", None),
        Kind::Interrupted { error } => ("interrupted", Some(error)),
    }
}
