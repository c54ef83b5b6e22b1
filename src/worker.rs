//! The worker: a fetcher thread, N handler threads, a completer thread and
//! a lease keeper, and the shutdown sequence that ties them together.
//!
//! ```text
//! fetcher ──claims a batch──▶ bounded channel ──▶ N worker threads ──outcomes──▶ completer
//!    ▲                                                                   │ (fenced, batched writes)
//!    └──────────────── leases released as outcomes are written ◀─────────┘
//! keeper: extends held leases, rescues expired ones (any worker's)
//! ```
//!
//! **How much to claim.** Claimed jobs hold leases while they wait, so the
//! fetcher keeps at most `threads + 2 × prefetch` jobs, where `prefetch` is what
//! the threads can start within about [`PREFETCH_HORIZON`] at the measured
//! handler speed (capped at `--batch-size`). Fast jobs get full batches and
//! few round trips; slow jobs are not hoarded away from other workers.
//!
//! **Shutdown** (SIGTERM/SIGINT, or `--drain` finding nothing to do):
//! 1. the fetcher stops claiming and drops the channel's sender;
//! 2. worker threads drain the channel, handing back each job they did not
//!    start (`Released`: pending again, attempt not counted), and finish
//!    the job they are running;
//! 3. the completer writes every outcome, then sees all senders gone and
//!    stops; the keeper keeps leases alive until then;
//! 4. if the grace period runs out first, the handler is asked to abort,
//!    still-running jobs are handed back (`Interrupted`, attempt counted),
//!    and the worker returns; anything it could not write is rescued after
//!    its lease expires.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mongodb::bson::{doc, Bson};

use crate::claim::{Claimed, Claimer};
use crate::error::Error;
use crate::handler::{Handler, HandlerError};
use crate::job::{after, fields, Job};
use crate::lease::{Keeper, Leases};
use crate::metrics::{Beat, Health, HealthReport, Histogram, HANDLER_BUCKETS, ROUND_TRIP_BUCKETS};
use crate::outage::retry_until_stopped;
use crate::outcome::{bounded_error, run_completer, JobKey, Outcome, Tally};
use crate::queue::Queue;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::wake::{watch, Doorbell};

/// Claimed jobs should be startable within about this long.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(200);

/// How a worker runs. Build with [`WorkerConfig::default`] and adjust.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Handler threads.
    pub threads: usize,
    /// Most jobs claimed in one round trip.
    pub batch_size: usize,
    /// How long a claim holds a job without extension.
    pub lease: Duration,
    /// Longest wait between claims when the queue is idle.
    pub poll_interval: Duration,
    /// Attempts before `failed`, for jobs that set none.
    pub max_attempts: u32,
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
            batch_size: 500,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
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

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Jobs that failed for good (including malformed ones).
    pub failed: u64,
    /// Jobs handed back unstarted at shutdown.
    pub released: u64,
    /// Outcomes not written because the lease had been lost.
    pub lost: u64,
    /// Expired leases (of any worker) this worker rescued.
    pub rescued: u64,
    /// Running jobs dropped because an operator cancelled them.
    pub cancelled: u64,
    /// Job leases extended (one per job per extension).
    pub lease_extensions: u64,
    /// Claim round trips (read-ahead, claim, read-back, defaults).
    pub claim_round_trips: u64,
    /// Outcome write round trips.
    pub outcome_writes: u64,
    /// Whether the grace period ran out with jobs still running.
    pub grace_exceeded: bool,
}

/// A queue worker. See the module docs for its threads and shutdown.
pub struct Worker {
    shared: Arc<Shared>,
}

/// The threads of a running worker and the handles that stop them.
struct Threads {
    watcher: Option<JoinHandle<()>>,
    keeper: JoinHandle<()>,
    completer: JoinHandle<()>,
    /// The handler threads and the fetcher.
    handlers: Vec<JoinHandle<()>>,
    keeper_stop: Shutdown,
    hard_stop: Shutdown,
    outcomes: Sender<Outcome>,
}

struct Shared {
    queue: Queue,
    config: WorkerConfig,
    handler: Arc<dyn Handler>,
    leases: Leases,
    tally: Tally,
    claimed: AtomicU64,
    rescued: AtomicU64,
    extended: AtomicU64,
    claim_round_trips: AtomicU64,
    cancelled: AtomicU64,
    health: Health,
    handler_seconds: Histogram,
    claim_seconds: Histogram,
    /// The last queue depth sample, for metrics.
    depth: Mutex<Option<(Instant, crate::Stats)>>,
    /// Average handler duration in µs (0: none measured yet).
    pace_micros: AtomicU64,
    /// The job each handler thread is running, and its cancel flag.
    running: Mutex<HashMap<usize, (JobKey, Arc<AtomicBool>)>>,
    /// Rung by the change-stream watcher (and at shutdown) to wake the fetcher.
    doorbell: Doorbell,
}

impl Worker {
    /// A worker for `queue` running `handler`.
    pub fn new(
        queue: Queue,
        config: WorkerConfig,
        handler: impl Handler + 'static,
    ) -> Result<Worker, Error> {
        Worker::with_shared_handler(queue, config, Arc::new(handler))
    }

    /// Like [`Worker::new`] with a handler already behind an `Arc`.
    pub fn with_shared_handler(
        queue: Queue,
        config: WorkerConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<Worker, Error> {
        if config.queues.is_empty() {
            return Err(Error::Invalid(
                "a worker needs at least one queue (--queue)".into(),
            ));
        }
        for name in &config.queues {
            crate::job::validate_queue_name(name).map_err(Error::Invalid)?;
        }
        if config.threads == 0 || config.batch_size == 0 || config.max_attempts == 0 {
            return Err(Error::Invalid(
                "threads, batch size and max attempts must each be at least 1".into(),
            ));
        }
        if config.lease < Duration::from_millis(300) {
            return Err(Error::Invalid(
                "the lease must be at least 300ms (--lease)".into(),
            ));
        }
        Ok(Worker {
            shared: Arc::new(Shared {
                queue,
                config,
                handler,
                leases: Leases::default(),
                tally: Tally::default(),
                claimed: AtomicU64::new(0),
                rescued: AtomicU64::new(0),
                extended: AtomicU64::new(0),
                claim_round_trips: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                health: Health::default(),
                handler_seconds: Histogram::new(&HANDLER_BUCKETS),
                claim_seconds: Histogram::new(&ROUND_TRIP_BUCKETS),
                depth: Mutex::new(None),
                pace_micros: AtomicU64::new(0),
                running: Mutex::new(HashMap::new()),
                doorbell: Doorbell::default(),
            }),
        })
    }

    /// A handle for metrics, health and readiness that stays valid while
    /// (and after) [`Worker::run`] runs on another thread.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs until `shutdown` is requested (or, with `drain`, until the queue
    /// is empty), then stops as the module docs describe. Outages never end
    /// it: they are logged and retried.
    pub fn run(&self, shutdown: &Shutdown) -> Report {
        let shared = &self.shared;
        let config = &shared.config;
        log::info!(
            "worker {} starting: {} threads, batch {}, lease {}, queues {}, on {} ({}.{})",
            config.worker_id,
            config.threads,
            config.batch_size,
            crate::duration::format_duration(config.lease),
            config.queues.join(","),
            shared.queue.redacted_uri(),
            shared.queue.database().name(),
            shared.queue.collection().name(),
        );
        let Some(indexes) = retry_until_stopped(shutdown, "creating indexes", || {
            shared.health.track(shared.queue.ensure_indexes())
        }) else {
            return self.report(false);
        };
        log::debug!("indexes: {}", indexes.join(", "));
        let threads = self.start(shutdown);
        shared.health.ready.store(true, Relaxed);
        while !shutdown.sleep(Duration::from_secs(3600)) {}
        shared.health.stopping.store(true, Relaxed);
        shared.doorbell.ring();
        let grace_exceeded = self.stop(threads);
        let report = self.report(grace_exceeded);
        log::info!(
            "worker {} stopped: {} completed, {} retried, {} failed, {} handed back, {} lost leases",
            config.worker_id,
            report.completed,
            report.retried,
            report.failed,
            report.released,
            report.lost
        );
        report
    }

    /// Starts the keeper, the completer, the handler threads and the fetcher.
    fn start(&self, shutdown: &Shutdown) -> Threads {
        let shared = &self.shared;
        let config = &shared.config;
        let keeper_stop = Shutdown::new();
        let hard_stop = Shutdown::new();
        let (job_tx, job_rx) =
            crossbeam_channel::bounded::<Job>(config.threads + 2 * config.batch_size);
        let (outcome_tx, outcome_rx) = crossbeam_channel::unbounded::<Outcome>();
        for beat in [Beat::Fetcher, Beat::Keeper, Beat::Completer] {
            shared.health.beat(beat);
        }

        let keeper = {
            let shared = Arc::clone(shared);
            let stop = keeper_stop.clone();
            spawn("mongoq-keeper", move || {
                Keeper {
                    queue: &shared.queue,
                    owner: &shared.config.worker_id,
                    lease: shared.config.lease,
                    leases: &shared.leases,
                    rescued: &shared.rescued,
                    extended: &shared.extended,
                    health: &shared.health,
                    on_cancel: &|ids: &[Bson]| shared.cancel_running(ids),
                }
                .run(&stop);
            })
        };
        let completer = {
            let shared = Arc::clone(shared);
            let stop = hard_stop.clone();
            spawn("mongoq-completer", move || {
                run_completer(
                    &shared.queue,
                    &shared.config.worker_id,
                    &outcome_rx,
                    &shared.leases,
                    &shared.tally,
                    &shared.health,
                    &stop,
                );
            })
        };
        let mut handlers: Vec<JoinHandle<()>> = (0..config.threads)
            .map(|index| {
                let shared = Arc::clone(shared);
                let jobs = job_rx.clone();
                let outcomes = outcome_tx.clone();
                let shutdown = shutdown.clone();
                spawn(&format!("mongoq-worker-{index}"), move || {
                    shared.work(index, &jobs, &outcomes, &shutdown);
                })
            })
            .collect();
        drop(job_rx);
        let fetcher = {
            let shared = Arc::clone(shared);
            let outcomes = outcome_tx.clone();
            let shutdown = shutdown.clone();
            spawn("mongoq-fetcher", move || {
                shared.fetch(&job_tx, &outcomes, &shutdown);
            })
        };
        handlers.push(fetcher);
        let watcher = config.change_streams.then(|| {
            let shared = Arc::clone(shared);
            let shutdown = shutdown.clone();
            spawn("mongoq-watcher", move || {
                watch(&shared.queue, &shared.doorbell, &shutdown);
            })
        });
        Threads {
            watcher,
            keeper,
            completer,
            handlers,
            keeper_stop,
            hard_stop,
            outcomes: outcome_tx,
        }
    }

    /// The shutdown sequence after the fetcher was told to stop; returns
    /// whether the grace period ran out.
    fn stop(&self, threads: Threads) -> bool {
        let shared = &self.shared;
        let config = &shared.config;
        log::info!(
            "worker {} stopping: no new claims; {} running jobs get up to {} to finish",
            config.worker_id,
            lock(&shared.running).len(),
            crate::duration::format_duration(config.shutdown_grace)
        );
        let Threads {
            watcher,
            keeper,
            completer,
            handlers,
            keeper_stop,
            hard_stop,
            outcomes,
        } = threads;
        let deadline = Instant::now() + config.shutdown_grace;
        let grace_exceeded = !wait_until(deadline, || handlers.iter().all(JoinHandle::is_finished));
        if grace_exceeded {
            self.interrupt_running(&outcomes);
        }
        drop(outcomes);
        // The completer gets the rest of the grace period (at least a few
        // seconds, so the last outcomes are written) to flush.
        let flush_deadline = deadline.max(Instant::now() + Duration::from_secs(5));
        if !wait_until(flush_deadline, || {
            completer.is_finished() || (grace_exceeded && shared.leases.held() == 0)
        }) {
            log::warn!("could not write every outcome in time; unwritten jobs run again after their leases expire");
        }
        hard_stop.request();
        keeper_stop.request();
        // A thread blocked inside a driver call on a dead connection (the
        // driver has no socket timeout) would hold shutdown forever; give
        // the bookkeeping threads a few seconds to notice the stop, then
        // leave behind any that did not. Their leases expire and the jobs
        // are rescued, as after a crash.
        let bookkeeping = [Some(completer), Some(keeper), watcher];
        let last_call = Instant::now() + Duration::from_secs(5);
        wait_until(last_call, || {
            bookkeeping.iter().flatten().all(JoinHandle::is_finished)
        });
        // Handler threads stuck past the grace period are left behind too.
        for handle in bookkeeping.into_iter().flatten().chain(handlers) {
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                log::warn!(
                    "thread {} did not stop in time and is left behind",
                    handle.thread().name().unwrap_or("?")
                );
            }
        }
        grace_exceeded
    }

    /// The grace period ran out: ask the handler to stop, and hand the jobs
    /// still running back to `pending` so they need not wait for lease expiry.
    fn interrupt_running(&self, outcomes: &Sender<Outcome>) {
        let running: Vec<JobKey> = lock(&self.shared.running)
            .values()
            .map(|(key, _)| key.clone())
            .collect();
        log::warn!(
            "shutdown grace period ({}) ran out with {} jobs running; handing them back",
            crate::duration::format_duration(self.shared.config.shutdown_grace),
            running.len()
        );
        self.shared.handler.abort();
        for key in running {
            let _ = outcomes.send(Outcome::Interrupted {
                key,
                error: "interrupted: the worker shut down before the job finished (--shutdown-grace ran out)".into(),
            });
        }
    }

    fn report(&self, grace_exceeded: bool) -> Report {
        self.shared.report(grace_exceeded)
    }
}

impl Shared {
    fn report(&self, grace_exceeded: bool) -> Report {
        let shared = self;
        Report {
            claimed: shared.claimed.load(Relaxed),
            completed: shared.tally.completed.load(Relaxed),
            retried: shared.tally.retried.load(Relaxed),
            failed: shared.tally.failed.load(Relaxed),
            released: shared.tally.released.load(Relaxed),
            lost: shared.tally.lost.load(Relaxed),
            rescued: shared.rescued.load(Relaxed),
            cancelled: shared.cancelled.load(Relaxed),
            lease_extensions: shared.extended.load(Relaxed),
            claim_round_trips: shared.claim_round_trips.load(Relaxed),
            outcome_writes: shared.tally.writes.load(Relaxed),
            grace_exceeded,
        }
    }
}

impl Shared {
    /// The fetcher thread: claim while there is room, hand jobs to the
    /// threads, back off when idle.
    fn fetch(&self, jobs: &Sender<Job>, outcomes: &Sender<Outcome>, shutdown: &Shutdown) {
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
        let shortest_idle = (config.poll_interval / 16).max(Duration::from_millis(5));
        let mut idle = shortest_idle;
        while !shutdown.is_requested() {
            self.health.beat(Beat::Fetcher);
            let prefetch = self.prefetch();
            let held = self.leases.held();
            // Two prefetches may be held: one being run while the next
            // claim is already on its way, so claiming overlaps running.
            let room = (config.threads + 2 * prefetch).saturating_sub(held);
            // While every thread is busy, wait until a claim is worth its
            // round trips rather than claiming one job at a time.
            if room == 0 || (held >= config.threads && room < prefetch) {
                self.leases.wait_for_release(Duration::from_millis(50));
                continue;
            }
            let want = room.min(config.batch_size);
            let before = claimer.round_trips;
            let claimed = retry_until_stopped(shutdown, "claiming jobs", || {
                self.health.beat(Beat::Fetcher);
                let started = Instant::now();
                let claimed = self.health.track(claimer.claim(want, config.batch_size));
                self.claim_seconds.observe(started.elapsed());
                claimed
            });
            self.claim_round_trips
                .fetch_add(claimer.round_trips - before, Relaxed);
            match claimed {
                None => break,
                Some(Some(claimed)) => {
                    idle = shortest_idle;
                    self.dispatch(claimed, jobs, outcomes);
                }
                Some(None) => {
                    if config.drain && self.drained(shutdown) {
                        log::info!("--drain: no job is eligible and none is running; stopping");
                        shutdown.request();
                        break;
                    }
                    if self.doorbell.wait(idle) {
                        idle = shortest_idle;
                    } else {
                        idle = (idle * 2).min(config.poll_interval);
                    }
                }
            }
        }
    }

    /// How many jobs beyond one per thread to keep claimed.
    fn prefetch(&self) -> usize {
        let threads = self.config.threads;
        let micros = self.pace_micros.load(Relaxed);
        if micros == 0 {
            return threads.min(self.config.batch_size);
        }
        let startable = (threads as u64).saturating_mul(PREFETCH_HORIZON.as_micros() as u64);
        startable
            .div_ceil(micros)
            .clamp(1, self.config.batch_size as u64) as usize
    }

    fn record_duration(&self, elapsed: Duration) {
        let sample = (elapsed.as_micros() as u64).max(1);
        let _ = self.pace_micros.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                sample
            } else {
                (old * 7 + sample) / 8
            })
        });
    }

    /// True when this worker holds nothing and no job anywhere is running.
    fn drained(&self, shutdown: &Shutdown) -> bool {
        if self.leases.held() > 0 {
            return false;
        }
        // An empty claim alone does not prove it: the claim may have lost
        // its whole window to other workers, or failed a job it could not take.
        let eligible_or_running = doc! {"$or": [
            crate::stats::eligible_in(&self.config.queues, crate::job::now()),
            {fields::STATUS: fields::RUNNING, fields::QUEUE: crate::job::queue_condition(&self.config.queues)},
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
    fn dispatch(&self, claimed: Claimed, jobs: &Sender<Job>, outcomes: &Sender<Outcome>) {
        let Claimed { token, documents } = claimed;
        self.leases.add(token, documents.len());
        self.claimed.fetch_add(documents.len() as u64, Relaxed);
        log::debug!("claimed {} jobs under {token}", documents.len());
        for document in documents {
            let id = document
                .get("_id")
                .cloned()
                .unwrap_or(mongodb::bson::Bson::Null);
            let key = JobKey { id, token };
            let attempt = document.get_i32(fields::ATTEMPTS).map_or_else(
                |_| document.get_i64(fields::ATTEMPTS).unwrap_or(1) as u32,
                |n| n as u32,
            );
            match Job::from_document(&document, token, self.config.max_attempts) {
                Err(malformed) => {
                    let _ = outcomes.send(Outcome::Failed {
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
                    let _ = outcomes.send(Outcome::Failed {
                        key,
                        attempt: job.attempt,
                        error,
                    });
                }
                Ok(job) => {
                    if let Err(returned) = jobs.send(job) {
                        // Every handler thread is gone (cannot happen while
                        // the fetcher runs); hand the job back.
                        let _ = outcomes.send(Outcome::Released {
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

    /// A handler thread: run jobs until the channel is closed and empty.
    fn work(
        &self,
        index: usize,
        jobs: &Receiver<Job>,
        outcomes: &Sender<Outcome>,
        shutdown: &Shutdown,
    ) {
        for job in jobs {
            let key = JobKey {
                id: job.id.clone(),
                token: job.lease_token,
            };
            if shutdown.is_requested() {
                let _ = outcomes.send(Outcome::Released { key });
                continue;
            }
            lock(&self.running).insert(index, (key.clone(), Arc::clone(&job.cancelled)));
            let started = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| self.handler.handle(&job)));
            let took = started.elapsed();
            self.record_duration(took);
            self.handler_seconds.observe(took);
            lock(&self.running).remove(&index);
            let outcome = match result {
                Ok(Ok(result)) => Outcome::Completed { key, result },
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
            let _ = outcomes.send(outcome);
        }
    }

    /// The keeper found these running jobs cancelled by an operator and
    /// marked them so: tell the handlers running them to stop.
    fn cancel_running(&self, ids: &[Bson]) {
        self.cancelled.fetch_add(ids.len() as u64, Relaxed);
        for (key, flag) in lock(&self.running).values() {
            if ids.contains(&key.id) {
                flag.store(true, Relaxed);
                self.handler.cancel(&key.id);
                log::info!(
                    "job {} was cancelled while running; its handler was told to stop",
                    crate::job::id_text(&key.id)
                );
            }
        }
    }

    fn failure(&self, job: &Job, key: JobKey, error: HandlerError) -> Outcome {
        let message = bounded_error(error.message);
        if error.permanent || job.attempt >= job.max_attempts {
            Outcome::Failed {
                key,
                attempt: job.attempt,
                error: message,
            }
        } else {
            let delay = self.config.retry.delay_for(job.attempt, &mut rand::rng());
            let run_at = after(delay);
            Outcome::Retry {
                key,
                attempt: job.attempt,
                error: message,
                run_at,
            }
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .expect("the OS refused to start a thread")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `done` until it holds or `deadline` passes; returns whether it held.
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Metrics, health and readiness of a [`Worker`], from any thread.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

/// A thread that showed no progress for this long is stalled (a driver
/// call hung on a dead connection, say). Every wait in the worker's loops
/// is far shorter; a database outage is not a stall.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

impl Monitor {
    /// Liveness, readiness and database reachability.
    pub fn health(&self) -> HealthReport {
        self.shared.health.report(STALL_AFTER)
    }

    /// Indexes are in place and the threads are running.
    pub fn is_ready(&self) -> bool {
        self.shared.health.ready.load(Relaxed)
    }

    /// What the worker did so far.
    pub fn report(&self) -> Report {
        self.shared.report(false)
    }

    /// Samples the queue's depth (counts by status) for the metrics; call
    /// it every few seconds from a thread of your own.
    pub fn sample_depth(&self) -> Result<(), Error> {
        let stats = self.shared.queue.stats()?;
        *lock(&self.shared.depth) = Some((Instant::now(), stats));
        Ok(())
    }

    /// Jobs running now and jobs held (running or waiting for a thread).
    pub fn load(&self) -> (usize, usize) {
        (lock(&self.shared.running).len(), self.shared.leases.held())
    }

    /// The Prometheus text exposition of this worker's metrics.
    pub fn metrics_text(&self) -> String {
        let shared = &self.shared;
        let (running, held) = self.load();
        let load = crate::metrics::Load {
            running: running as u64,
            held: held as u64,
            threads: shared.config.threads as u64,
        };
        let depth = lock(&shared.depth).clone();
        crate::metrics::render(
            &self.report(),
            &load,
            &shared.handler_seconds,
            &shared.claim_seconds,
            &self.health(),
            depth.as_ref(),
        )
    }
}
