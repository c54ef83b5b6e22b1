//! The worker: a fetcher thread, N handler threads, a completer thread and
//! a lease keeper, and the shutdown sequence that ties them together.
//!
//! One file per thread, each thread a struct owning only what it uses
//! (`Arc`s of the pieces below), so what a thread can touch is visible in
//! its type:
//!
//! | thread | file | owns |
//! |---|---|---|
//! | fetcher | [`claim::fetcher`] | the [`claim`] window, leases, pacing, doorbell, the job sender |
//! | reader (one per claimer) | `claim::reader` | the read-ahead's reads (off the claim path), the shared window's turns, the unroutable upkeep |
//! | handler ×N | [`runner`] | the handler, the retry policy, the running-jobs registry |
//! | completer | [`settle::completer`] | the outcome receiver, leases, counters |
//! | keeper | [`lease::keeper`] | leases, the running-jobs registry ([`lease::running`]), counters |
//! | control | [`control`] | queue controls, the registry heartbeat, concurrency slots |
//! | watcher | [`wake`] | the doorbell |
//! | ticker | [`crate::schedule::Ticker`] (started by `mongoq work`) | the due schedules of its queues |
//! | flows | [`crate::flow::sweep`] | the doorbell (links, settles what a crash left) |
//!
//! The stages of a job's life are folders: [`claim`] (finding work: the
//! read-ahead, the batch claim, the fetcher thread, pacing, unroutable
//! jobs), [`settle`] (outcomes and their writes, the completer thread,
//! retries), [`lease`] (what this worker holds, the keeper thread,
//! extension, rescue, the running-jobs registry) and [`health`] (beats,
//! counters, metrics). What peers share through the server (the shared
//! window, the division of a queue, limits) is [`crate::fleet`]'s.
//!
//! ```text
//! fetcher ──claims a batch──▶ bounded channel ──▶ N worker threads ──outcomes──▶ completer
//!    ▲                                                                   │ (fenced, batched writes)
//!    └──────────────── leases released as outcomes are written ◀─────────┘
//! keeper: extends held leases, rescues expired ones (any worker's)
//! completer: an outcome of a job with dependents releases them (crate::flow)
//! ```
//!
//! **How much to claim** is decided by [`claim::pacing`]: at most what the threads
//! can start within about [`PREFETCH_HORIZON`].
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

// The stages of a job's life, each a folder; imports between them run one
// way: claim → settle → lease → health (tests/structure.rs checks it).
mod claim;
mod health;
mod lease;
mod settle;
// The threads and pieces that serve every stage.
mod config;
mod control;
mod monitor;
mod outage;
mod runner;
mod wake;

/// The retry policy (back-off between attempts), as data.
pub use settle::retry;

use crate::groups::limits::GroupSlots;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

pub use claim::pacing::PREFETCH_HORIZON;
pub use config::{default_worker_id, WorkerConfig, DEFAULT_MAX_SNOOZES, MIN_LEASE};
pub use health::liveness::{DatabaseError, HealthReport};
pub use health::metrics::{HANDLER_BUCKETS, ROUND_TRIP_BUCKETS};
pub use health::report::Report;
pub use monitor::{Monitor, STALL_AFTER};
pub use settle::retry::RetryPolicy;

use claim::fetcher::Fetcher;
use claim::pacing::PaceMeter;
use control::{Control, Controls};
use health::liveness::{Beat, Health};
use health::metrics::Histogram;
use health::report::Counters;
use lease::held::Leases;
use lease::keeper::Keeper;
use lease::running::Running;
use outage::retry_until_stopped;
use runner::Runner;
use settle::completer::Completer;
use settle::outcome::Outcome;
use wake::{watch, Doorbell};

use crate::duration::format_duration;
use crate::error::Error;
use crate::fleet::limits::{Banked, Slots};
use crate::fleet::share::Share;
use crate::flow::Sweeper;
use crate::handlers::Handler;
use crate::history::Recorder;
use crate::job::Job;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::sync::{join_or_leave, spawn, wait_until};
use crate::trace::Tracing;

/// A queue worker. See the module docs for its threads and shutdown.
pub struct Worker {
    queue: Queue,
    config: WorkerConfig,
    handler: Arc<dyn Handler>,
    parts: Parts,
}

/// The duty of the flow sweep, which one worker of the peers does for all
/// (see [`Share::leads`]).
const FLOW_SWEEP: &str = "flow sweep";

/// The pieces the threads share, each behind its own `Arc` so that a
/// thread holds only those it uses, and the [`Monitor`] reads them all.
struct Parts {
    leases: Arc<Leases>,
    counters: Arc<Counters>,
    health: Arc<Health>,
    running: Arc<Running>,
    pace: Arc<PaceMeter>,
    doorbell: Arc<Doorbell>,
    controls: Arc<Controls>,
    share: Arc<Share>,
    slots: Arc<Slots>,
    /// Slots of groups (see [`crate::groups::limits`]).
    group_slots: Arc<GroupSlots>,
    handler_seconds: Arc<Histogram>,
    claim_seconds: Arc<Histogram>,
    /// The last queue depth sample, for metrics.
    depth: Arc<Mutex<Option<health::metrics::Depth>>>,
    /// Outcomes counted for the queue's history and not yet written
    /// (`None` with `--no-history`).
    history: Option<Arc<Recorder>>,
    /// Attempt spans' exporter (see [`crate::trace`]), when configured.
    tracing: Option<Arc<Tracing>>,
}

impl Parts {
    fn new(config: &WorkerConfig) -> Parts {
        Parts {
            leases: Arc::default(),
            counters: Arc::default(),
            health: Arc::default(),
            running: Arc::default(),
            pace: Arc::default(),
            doorbell: Arc::default(),
            controls: Arc::default(),
            share: Arc::new(Share::new(&config.worker_id, &config.queues)),
            slots: Arc::default(),
            group_slots: Arc::default(),
            handler_seconds: Arc::new(Histogram::new(&HANDLER_BUCKETS)),
            claim_seconds: Arc::new(Histogram::new(&ROUND_TRIP_BUCKETS)),
            depth: Arc::default(),
            history: config.history.then(Arc::default),
            tracing: None,
        }
    }
}

/// Says how far this host's clock is from the server's, loudly when it is
/// far enough that trusting it would have broken leases.
fn log_clock(worker: &str, reading: crate::clock::Reading) {
    let offset = Duration::from_millis(reading.offset_millis.unsigned_abs());
    let direction = if reading.offset_millis > 0 {
        "behind"
    } else {
        "ahead of"
    };
    if offset > Duration::from_secs(1) {
        log::warn!(
            "worker {worker}: this host's clock is {} {direction} the database server's; mongoq times leases and run_at by the server's clock (±{}), but check NTP on this host",
            format_duration(offset),
            format_duration(reading.uncertainty)
        );
    } else {
        log::debug!(
            "worker {worker}: server clock offset {}ms (±{})",
            reading.offset_millis,
            format_duration(reading.uncertainty)
        );
    }
}

/// The threads of a running worker and the handles that stop them.
struct Threads {
    /// The flow sweep ([`crate::flow::sweep`]); stops with the keeper.
    flows: JoinHandle<()>,
    /// The counts' reconciler ([`crate::counts`]); stops with the keeper.
    counting: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
    control: JoinHandle<()>,
    control_stop: Shutdown,
    keeper: JoinHandle<()>,
    completer: JoinHandle<()>,
    /// The handler threads and the fetcher.
    handlers: Vec<JoinHandle<()>>,
    keeper_stop: Shutdown,
    hard_stop: Shutdown,
    outcomes: Sender<Outcome>,
}

impl Worker {
    /// A worker for `queue` running `handler`; refuses an invalid `config`
    /// ([`WorkerConfig::validate`]).
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
        config.validate()?;
        let mut parts = Parts::new(&config);
        parts.tracing = Tracing::from_env()?.map(Arc::new);
        Ok(Worker {
            queue,
            config,
            handler,
            parts,
        })
    }

    /// Exports attempt spans with `tracing` (or none), whatever the
    /// `OTEL_*` environment says (see [`crate::trace`]).
    #[must_use]
    pub fn with_tracing(mut self, tracing: Option<Tracing>) -> Worker {
        self.parts.tracing = tracing.map(Arc::new);
        self
    }

    /// A handle for metrics, health and readiness that stays valid while
    /// (and after) [`Worker::run`] runs on another thread.
    pub fn monitor(&self) -> Monitor {
        let parts = &self.parts;
        Monitor {
            queue: self.queue.clone(),
            threads: self.config.threads,
            health: Arc::clone(&parts.health),
            counters: Arc::clone(&parts.counters),
            running: Arc::clone(&parts.running),
            leases: Arc::clone(&parts.leases),
            handler_seconds: Arc::clone(&parts.handler_seconds),
            claim_seconds: Arc::clone(&parts.claim_seconds),
            depth: Arc::clone(&parts.depth),
            controls: Arc::clone(&parts.controls),
            handler: Arc::clone(&self.handler),
        }
    }

    /// Runs until `shutdown` is requested (or, with `drain`, until the queue
    /// is empty), then stops as the module docs describe. Outages never end
    /// it: they are logged and retried. The handler's [`Handler::stop`] is
    /// called last.
    pub fn run(&self, shutdown: &Shutdown) -> Report {
        let report = self.run_until_stopped(shutdown);
        self.handler.stop();
        report
    }

    fn run_until_stopped(&self, shutdown: &Shutdown) -> Report {
        let config = &self.config;
        let health = &self.parts.health;
        log::info!(
            "worker {} starting: {} threads, batch {}, lease {}, queues {}, on {} ({}.{})",
            config.worker_id,
            config.threads,
            config.batch_size,
            format_duration(config.lease),
            config.queues.join(","),
            self.queue.redacted_uri(),
            self.queue.database().name(),
            self.queue.collection().name(),
        );
        let Some(indexes) = retry_until_stopped(shutdown, "creating indexes", || {
            health.track(self.queue.ensure_indexes().and_then(|indexes| {
                if config.history {
                    crate::history::History::new(&self.queue).ensure_indexes()?;
                }
                Ok(indexes)
            }))
        }) else {
            return self.parts.counters.snapshot(false);
        };
        log::debug!("indexes: {}", indexes.join(", "));
        // Leases, rescue and `run_at` are judged on the server's clock; read
        // it before the first claim (see crate::clock).
        let Some(reading) = retry_until_stopped(shutdown, "reading the server's clock", || {
            health.track(self.queue.measure_clock())
        }) else {
            return self.parts.counters.snapshot(false);
        };
        log_clock(&config.worker_id, reading);
        // Seen by the fleet, and in step with its controls (pause, limits),
        // before the first claim.
        let control = self.control();
        let registered = retry_until_stopped(shutdown, "registering the worker", || {
            health.track(
                self.queue
                    .ensure_registry_index()
                    .and_then(|()| control.heartbeat())
                    .and_then(|()| control.refresh()),
            )
        });
        if registered.is_none() {
            return self.parts.counters.snapshot(false);
        }
        let threads = self.start(shutdown, control);
        health.set_ready();
        while !shutdown.sleep(Duration::from_secs(3600)) {}
        health.set_stopping();
        self.parts.doorbell.ring();
        let grace_exceeded = self.stop(threads);
        if let Some(tracing) = &self.parts.tracing {
            tracing.shutdown();
        }
        let report = self.parts.counters.snapshot(grace_exceeded);
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
    /// The control thread's state.
    fn control(&self) -> Control {
        let parts = &self.parts;
        Control {
            queue: self.queue.clone(),
            config: self.config.clone(),
            controls: Arc::clone(&parts.controls),
            share: Arc::clone(&parts.share),
            slots: Arc::clone(&parts.slots),
            group_slots: Arc::clone(&parts.group_slots),
            counters: Arc::clone(&parts.counters),
            health: Arc::clone(&parts.health),
            running: Arc::clone(&parts.running),
            leases: Arc::clone(&parts.leases),
            doorbell: Arc::clone(&parts.doorbell),
            history: parts.history.clone(),
        }
    }

    /// The flow sweep's thread (only the peer that leads the duty sweeps); it rings the doorbell when it released jobs.
    fn start_flows(&self, stop: &Shutdown) -> JoinHandle<()> {
        let counters = Arc::clone(&self.parts.counters);
        let sweeper = Sweeper::new(self.queue.clone())
            .on_expired(move |n| Counters::add(&counters.expired, n));
        let doorbell = Arc::clone(&self.parts.doorbell);
        let share = Arc::clone(&self.parts.share);
        let stop = stop.clone();
        spawn("mongoq-flows", move || {
            sweeper.run(&stop, || doorbell.ring(), || share.leads(FLOW_SWEEP));
        })
    }

    /// The completer thread's state.
    fn completer(&self) -> Completer {
        let parts = &self.parts;
        Completer {
            queue: self.queue.clone(),
            worker: self.config.worker_id.clone(),
            leases: Arc::clone(&parts.leases),
            counters: Arc::clone(&parts.counters),
            health: Arc::clone(&parts.health),
            slots: Arc::clone(&parts.slots),
            group_slots: Arc::clone(&parts.group_slots),
            doorbell: Arc::clone(&parts.doorbell),
            pause_written: {
                let controls = Arc::clone(&parts.controls);
                Box::new(move |queue: &str| controls.pause_written(queue))
            },
            history: parts.history.clone(),
        }
    }

    fn start(&self, shutdown: &Shutdown, control: Control) -> Threads {
        let config = &self.config;
        let parts = &self.parts;
        let keeper_stop = Shutdown::new();
        let hard_stop = Shutdown::new();
        let (job_tx, job_rx) =
            crossbeam_channel::bounded::<Job>(config.threads + 2 * config.batch_size);
        let (outcome_tx, outcome_rx) = crossbeam_channel::unbounded::<Outcome>();
        for beat in [Beat::Fetcher, Beat::Keeper, Beat::Completer, Beat::Control] {
            parts.health.beat(beat);
        }

        let keeper = Keeper {
            queue: self.queue.clone(),
            owner: config.worker_id.clone(),
            lease: config.lease,
            leases: Arc::clone(&parts.leases),
            running: Arc::clone(&parts.running),
            handler: Arc::clone(&self.handler),
            counters: Arc::clone(&parts.counters),
            health: Arc::clone(&parts.health),
            share: Arc::clone(&parts.share),
        };
        let stop = keeper_stop.clone();
        let keeper = spawn("mongoq-keeper", move || keeper.run(&stop));

        let completer = self.completer();
        let stop = hard_stop.clone();
        let completer = spawn("mongoq-completer", move || {
            completer.run(&outcome_rx, &stop);
        });

        let mut handlers: Vec<JoinHandle<()>> = (0..config.threads)
            .map(|index| {
                let runner = Runner {
                    index,
                    handler: Arc::clone(&self.handler),
                    retry: config.retry,
                    max_snoozes: config.max_snoozes,
                    clock: self.queue.clock_handle(),
                    running: Arc::clone(&parts.running),
                    controls: Arc::clone(&parts.controls),
                    pace: Arc::clone(&parts.pace),
                    handler_seconds: Arc::clone(&parts.handler_seconds),
                    jobs: job_rx.clone(),
                    outcomes: outcome_tx.clone(),
                    tracing: parts.tracing.clone(),
                };
                let shutdown = shutdown.clone();
                spawn(&format!("mongoq-worker-{index}"), move || {
                    runner.run(&shutdown);
                })
            })
            .collect();
        drop(job_rx);

        let fetcher = Fetcher {
            queue: self.queue.clone(),
            config: config.clone(),
            leases: Arc::clone(&parts.leases),
            counters: Arc::clone(&parts.counters),
            health: Arc::clone(&parts.health),
            claim_seconds: Arc::clone(&parts.claim_seconds),
            pace: Arc::clone(&parts.pace),
            doorbell: Arc::clone(&parts.doorbell),
            controls: Arc::clone(&parts.controls),
            share: Arc::clone(&parts.share),
            slots: Arc::clone(&parts.slots),
            group_slots: Arc::clone(&parts.group_slots),
            handler: Arc::clone(&self.handler),
            jobs: job_tx,
            outcomes: outcome_tx.clone(),
            banked: Banked::default(),
        };
        let fetch_stop = shutdown.clone();
        handlers.push(spawn("mongoq-fetcher", move || fetcher.run(&fetch_stop)));

        // A draining worker stops at its first empty look once its own jobs
        // are done, so it has no use for a stream.
        let watcher = (config.change_streams && !config.drain).then(|| {
            let queue = self.queue.clone();
            let doorbell = Arc::clone(&parts.doorbell);
            let shutdown = shutdown.clone();
            spawn("mongoq-watcher", move || {
                watch(&queue, &doorbell, &shutdown);
            })
        });
        let control_stop = Shutdown::new();
        let stop = control_stop.clone();
        let control = spawn("mongoq-control", move || control.run(&stop));
        Threads {
            flows: self.start_flows(&keeper_stop),
            counting: {
                let counts = crate::counts::Counts::new(&self.queue);
                let stop = keeper_stop.clone();
                spawn("mongoq-counts", move || counts.run(&stop))
            },
            watcher,
            control,
            control_stop,
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
        let config = &self.config;
        let parts = &self.parts;
        log::info!(
            "worker {} stopping: no new claims; {} running jobs get up to {} to finish",
            config.worker_id,
            parts.running.count(),
            format_duration(config.shutdown_grace)
        );
        let Threads {
            flows,
            counting,
            watcher,
            control,
            control_stop,
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
            completer.is_finished() || (grace_exceeded && parts.leases.held() == 0)
        }) {
            log::warn!("could not write every outcome in time; unwritten jobs run again after their leases expire");
        }
        hard_stop.request();
        keeper_stop.request();
        // The control thread goes last: it gives back the slots the last
        // outcomes freed and removes this worker from the registry.
        control_stop.request();
        // A thread blocked inside a driver call on a dead connection (the
        // driver has no socket timeout) would hold shutdown forever; give
        // the bookkeeping threads a few seconds to notice the stop, then
        // leave behind any that did not. Their leases expire and the jobs
        // are rescued, as after a crash. Handler threads stuck past the
        // grace period are left behind too.
        let last_call = Instant::now() + Duration::from_secs(5);
        // The watcher ends with its `getMore` (at most `wake::AWAIT`); the
        // process need not wait for it.
        drop(watcher);
        for handle in [
            Some(completer),
            Some(keeper),
            Some(control),
            Some(flows),
            Some(counting),
        ]
        .into_iter()
        .flatten()
        .chain(handlers)
        {
            join_or_leave(handle, last_call);
        }
        grace_exceeded
    }

    /// The grace period ran out: ask the handler to stop, and hand the jobs
    /// still running back to `pending` so they need not wait for lease expiry.
    fn interrupt_running(&self, outcomes: &Sender<Outcome>) {
        let running = self.parts.running.keys();
        log::warn!(
            "shutdown grace period ({}) ran out with {} jobs running; handing them back",
            format_duration(self.config.shutdown_grace),
            running.len()
        );
        // Queued before the handler is told: the attempt a killed handler
        // then reports lands second, and its fenced write finds the job
        // already handed back.
        for key in running {
            let _ = outcomes.send(Outcome::new(
                key,
                settle::outcome::Kind::Interrupted {
                    error: "interrupted: the worker shut down before the job finished (--shutdown-grace ran out)".into(),
                },
            ));
        }
        self.handler.abort();
    }
}
