//! The fetcher thread: claims batches while there is room, hands the jobs
//! to the handler threads over the bounded channel, and backs off when the
//! queue is idle (woken early by the change-stream watcher's doorbell).
//!
//! It is the only thread that claims, so the read-ahead window needs no
//! lock. Shutdown is its flag: it stops claiming and, by returning, drops
//! the channel's last sender, so the handler threads drain what is left and
//! stop (crossbeam's disconnection protocol).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mongodb::bson::{doc, Bson};

use super::claim::{Claimed, Claimer};
use super::config::WorkerConfig;
use super::health::{Beat, Health};
use super::lease::Leases;
use super::metrics::Histogram;
use super::outage::retry_until_stopped;
use super::outcome::{JobKey, Outcome};
use super::pacing::{Decision, PaceMeter, Pacing};
use super::report::Counters;
use super::wake::Doorbell;
use crate::backoff::Backoff;
use crate::job::Job;
use crate::queue::filters::{eligible_in, queue_condition};
use crate::queue::Queue;
use crate::schema::{fields, integer, Status};
use crate::shutdown::Shutdown;

/// The fetcher thread and what it owns.
pub(crate) struct Fetcher {
    pub(crate) queue: Queue,
    pub(crate) config: WorkerConfig,
    pub(crate) leases: Arc<Leases>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) health: Arc<Health>,
    pub(crate) claim_seconds: Arc<Histogram>,
    pub(crate) pace: Arc<PaceMeter>,
    pub(crate) doorbell: Arc<Doorbell>,
    pub(crate) jobs: Sender<Job>,
    pub(crate) outcomes: Sender<Outcome>,
}

impl Fetcher {
    /// Claims until `shutdown` (or, with `drain`, until nothing is left).
    pub(crate) fn run(self, shutdown: &Shutdown) {
        let config = &self.config;
        // The read-ahead window is re-read at least this often, so a new
        // urgent job waits no longer than this behind older ones.
        let window_age = config.poll_interval.min(Duration::from_secs(1));
        let mut claimer = Claimer::new(
            self.queue.clone(),
            config.worker_id.clone(),
            config.lease,
            config.queues.clone(),
            window_age,
        );
        let pacing = Pacing {
            threads: config.threads,
            batch_size: config.batch_size,
        };
        let shortest_idle = (config.poll_interval / 16).max(Duration::from_millis(5));
        let mut idle = Backoff::new(shortest_idle, config.poll_interval);
        while !shutdown.is_requested() {
            self.health.beat(Beat::Fetcher);
            let want = match pacing.decide(self.leases.held(), self.pace.average()) {
                Decision::Wait => {
                    self.leases.wait_for_release(Duration::from_millis(50));
                    continue;
                }
                Decision::Claim(want) => want,
            };
            let before = claimer.round_trips;
            let claimed = retry_until_stopped(shutdown, "claiming jobs", || {
                self.health.beat(Beat::Fetcher);
                let started = Instant::now();
                let claimed = self.health.track(claimer.claim(want, config.batch_size));
                self.claim_seconds.observe(started.elapsed());
                claimed
            });
            Counters::add(
                &self.counters.claim_round_trips,
                claimer.round_trips - before,
            );
            match claimed {
                None => break,
                Some(Some(claimed)) => {
                    idle.reset();
                    self.dispatch(claimed);
                }
                Some(None) => {
                    if config.drain && self.drained(shutdown) {
                        log::info!("--drain: no job is eligible and none is running; stopping");
                        shutdown.request();
                        break;
                    }
                    if self.doorbell.wait(idle.peek()) {
                        idle.reset();
                    } else {
                        idle.advance();
                    }
                }
            }
        }
    }

    /// True when this worker holds nothing and no job anywhere is running.
    fn drained(&self, shutdown: &Shutdown) -> bool {
        if self.leases.held() > 0 {
            return false;
        }
        // An empty claim alone does not prove it: the claim may have lost
        // its whole window to other workers, or failed a job it could not take.
        let queues = &self.config.queues;
        let eligible_or_running = doc! {"$or": [
            eligible_in(queues, self.queue.clock().passed()),
            {fields::STATUS: Status::Running, fields::QUEUE: queue_condition(queues)},
        ]};
        let left = retry_until_stopped(shutdown, "counting jobs left", || {
            self.queue
                .collection()
                .count_documents(eligible_or_running.clone())
                .limit(1)
                .run()
                .map_err(|e| self.queue.db_error("count", &e))
        });
        left == Some(0)
    }

    /// Turns claimed documents into jobs for the threads; malformed ones and
    /// ones out of attempts go straight to the completer as `failed`.
    fn dispatch(&self, claimed: Claimed) {
        let Claimed { token, documents } = claimed;
        self.leases.add(token, documents.len());
        Counters::add(&self.counters.claimed, documents.len() as u64);
        log::debug!("claimed {} jobs under {token}", documents.len());
        for document in documents {
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            let key = JobKey { id, token };
            let attempt = document
                .get(fields::ATTEMPTS)
                .and_then(integer)
                .map_or(1, |n| n as u32);
            match Job::from_document(&document, token, self.config.max_attempts) {
                Err(malformed) => {
                    let _ = self.outcomes.send(Outcome::Failed {
                        key,
                        attempt,
                        error: malformed.to_string(),
                    });
                }
                Ok(job) if job.attempt > job.max_attempts => {
                    let error = format!(
                        "attempts exhausted: attempt {} of at most {} was claimed after the previous attempt's lease expired (its worker crashed or stalled; see `errors`)",
                        job.attempt, job.max_attempts
                    );
                    let _ = self.outcomes.send(Outcome::Failed {
                        key,
                        attempt: job.attempt,
                        error,
                    });
                }
                Ok(job) => {
                    if let Err(returned) = self.jobs.send(job) {
                        // Every handler thread is gone (cannot happen while
                        // the fetcher runs); hand the job back.
                        let _ = self.outcomes.send(Outcome::Released {
                            key: JobKey {
                                id: returned.0.id,
                                token,
                            },
                        });
                    }
                }
            }
        }
    }
}
