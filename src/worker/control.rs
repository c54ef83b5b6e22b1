//! The control thread: keeps this worker in step with the fleet.
//!
//! Twice a second (every few seconds while the worker is idle) it reads
//! the controls of this worker's queues (pause, limits) into [`Controls`],
//! which the fetcher consults before claiming and the handler threads
//! before starting a job; gives back concurrency slots that finished jobs freed and no claim netted; takes back slots of
//! dead workers; and every few seconds writes this worker's registry
//! document (its heartbeat). It costs a few round trips per second per
//! worker, never any per job. On stop it gives back what it still owes and
//! removes the registry document.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, DateTime};

use crate::error::Error;
use crate::fleet::limits::{extend_slots, forget, give_back, reclaim_dead, Slots};
use crate::groups::limits as group_limits;

/// How often one worker of the fleet removes the slot documents of groups
/// whose holders all died (see [`group_limits::sweep`]).
const GROUP_SLOT_SWEEP: Duration = Duration::from_secs(30);
const GROUP_SLOT_SWEEP_DUTY: &str = "group slot sweep";
use crate::fleet::share::Share;
use crate::history::{self, Recorder};
use crate::queue::registry::HEARTBEAT;
use crate::queue::{Queue, QueueControl};
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::worker::config::WorkerConfig;
use crate::worker::health::liveness::{Beat, Health};
use crate::worker::health::report::Counters;
use crate::worker::lease::held::Leases;
use crate::worker::lease::running::Running;

use crate::worker::wake::Doorbell;

/// How often the controls (and the peers) are read.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Between refreshes, a busy worker reads its queues' controls alone this
/// often (one `_id` lookup), so a pause a peer's handler asked for stops
/// its starts within about this long.
pub const PAUSE_LOOK: Duration = Duration::from_millis(100);

/// While the worker is idle (it found nothing to claim within the last few
/// seconds) the controls and peers are read this seldom, and the heartbeat
/// written at [`IDLE_HEARTBEAT`]: an idle fleet then costs the server little.
/// A worker that finds a job again reads the controls before it claims
/// (see `Fetcher`), so a pause still holds within a second.
pub const IDLE_REFRESH: Duration = Duration::from_secs(5);
/// The heartbeat of an idle worker: within the 5 s in which peers count a
/// worker, so idle peers still agree who they are and which of them leads
/// each fleet duty (the sweep, the rescue), instead of each doing it alone.
pub const IDLE_HEARTBEAT: Duration = Duration::from_secs(4);

/// The controls of this worker's queues, as last read.
#[derive(Default)]
pub(crate) struct Controls {
    by_queue: RwLock<HashMap<String, QueueControl>>,
    /// The controls were read at least once.
    loaded: AtomicBool,
    /// When they were last read.
    read_at: Mutex<Option<Instant>>,
    /// Pauses this worker's handlers asked for (queue → until, in server
    /// ms, and when the completer wrote it), held until a read that began
    /// after the write brings it back.
    local: Mutex<HashMap<String, (i64, Option<Instant>)>>,
}

/// What the fetcher may claim now.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Queues without limits, not paused: claimed together.
    pub(crate) open: Vec<String>,
    /// Limited queues, not paused: claimed one by one, under their limits.
    pub(crate) limited: Vec<QueueControl>,
}

impl Controls {
    /// The controls as read by a read that began at `read_started`: a
    /// handler's pause written before then is in them, and no longer held
    /// locally.
    fn set(&self, controls: Vec<QueueControl>, read_started: Instant) {
        lock(&self.local).retain(|_, (_, written)| written.is_none_or(|at| at >= read_started));
        let by_queue = controls.into_iter().map(|c| (c.queue.clone(), c)).collect();
        *self
            .by_queue
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = by_queue;
        self.loaded.store(true, Relaxed);
        *lock(&self.read_at) = Some(Instant::now());
    }

    /// Whether they were read within `within`.
    pub(crate) fn fresh_within(&self, within: Duration) -> bool {
        lock(&self.read_at).is_some_and(|at| at.elapsed() < within)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, QueueControl>> {
        self.by_queue
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether jobs of `queue` may not start at `now` (server time).
    pub(crate) fn is_paused(&self, queue: &str, now: DateTime) -> bool {
        self.holds(queue, self.read().get(queue), now.timestamp_millis())
    }

    /// A handler of this worker paused `queue` until `until`: this worker
    /// starts none of its jobs from now on, before the write reaches the
    /// peers (and until its own reads bring the pause back).
    pub(crate) fn pause_locally(&self, queue: &str, until: DateTime) {
        let mut local = lock(&self.local);
        let until = until.timestamp_millis();
        let entry = local.entry(queue.to_string()).or_insert((until, None));
        if entry.0 <= until {
            *entry = (until, None);
        }
    }

    /// The completer wrote the pause of `queue`: the next read that begins
    /// from now on has it.
    pub(crate) fn pause_written(&self, queue: &str) {
        if let Some(entry) = lock(&self.local).get_mut(queue) {
            entry.1 = Some(Instant::now());
        }
    }

    /// Until when this worker's own handlers paused `queue`, as far as it
    /// knows before its write is read back.
    fn local_until(&self, queue: &str) -> Option<i64> {
        lock(&self.local).get(queue).map(|(until, _)| *until)
    }

    /// Whether `control` (or this worker's own pause of `queue`) holds at
    /// `now_ms`.
    fn holds(&self, queue: &str, control: Option<&QueueControl>, now_ms: i64) -> bool {
        control.is_some_and(|c| c.is_paused_at(now_ms))
            || self.local_until(queue).is_some_and(|until| until > now_ms)
    }

    /// How long a handler's pause of `queue` has left at `now_ms` (the one
    /// read or this worker's own, whichever ends later), if one holds.
    fn handler_pause_left(
        &self,
        by_queue: &HashMap<String, QueueControl>,
        queue: &str,
        now_ms: i64,
    ) -> Option<Duration> {
        let read = by_queue
            .get(queue)
            .and_then(|c| c.handler_pause_at(now_ms))
            .map(|(until, _)| until);
        read.max(self.local_until(queue))
            .filter(|until| *until > now_ms)
            .map(|until| Duration::from_millis((until - now_ms).unsigned_abs()))
    }

    /// How long a handler's pause of `queue` has left at `now` (server
    /// time), when one holds and no operator's pause does.
    pub(crate) fn short_pause_left(&self, queue: &str, now: DateTime) -> Option<Duration> {
        let by_queue = self.read();
        if by_queue.get(queue).is_some_and(|c| c.paused) {
            return None;
        }
        self.handler_pause_left(&by_queue, queue, now.timestamp_millis())
    }

    /// How long until the first handler's pause of `queues` ends (after
    /// `now`, server time), if one holds: an idle fetcher looks then.
    pub(crate) fn resumes_in(&self, queues: &[String], now: DateTime) -> Option<Duration> {
        let by_queue = self.read();
        queues
            .iter()
            .filter_map(|q| self.handler_pause_left(&by_queue, q, now.timestamp_millis()))
            .min()
    }

    /// Which of `queues` to claim from at `now` (server time), and how.
    pub(crate) fn plan(&self, queues: &[String], now: DateTime) -> Plan {
        let now = now.timestamp_millis();
        let by_queue = self.read();
        let mut plan = Plan::default();
        for name in queues {
            match by_queue.get(name) {
                _ if self.holds(name, by_queue.get(name), now) => {}
                Some(control) if control.is_limited() => plan.limited.push(control.clone()),
                _ => plan.open.push(name.clone()),
            }
        }
        plan
    }

    /// Every control as this worker knows it (its handlers' own pauses
    /// included), for its metrics.
    pub(crate) fn all(&self) -> Vec<QueueControl> {
        let mut all: HashMap<String, QueueControl> = self.read().clone();
        for (queue, (until, _)) in lock(&self.local).iter() {
            let control = all.entry(queue.clone()).or_insert_with(|| QueueControl {
                queue: queue.clone(),
                ..QueueControl::default()
            });
            if control.paused_until.is_none_or(|known| known < *until) {
                control.paused_until = Some(*until);
            }
        }
        all.into_values().collect()
    }
}

/// The control thread and what it owns.
pub(crate) struct Control {
    pub(crate) queue: Queue,
    pub(crate) config: WorkerConfig,
    pub(crate) controls: Arc<Controls>,
    /// This worker's part of its queues, from the registry.
    pub(crate) share: Arc<Share>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) group_slots: Arc<group_limits::GroupSlots>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) health: Arc<Health>,
    pub(crate) running: Arc<Running>,
    pub(crate) leases: Arc<Leases>,
    /// Says whether the worker is idle.
    pub(crate) doorbell: Arc<Doorbell>,
    /// Outcomes counted for the queue's history, which this thread writes
    /// every [`history::FLUSH_EVERY`] and when the worker stops.
    pub(crate) history: Option<Arc<Recorder>>,
}

impl Control {
    /// Reads the controls, and the live peers that divide the queues with
    /// this worker (see [`crate::fleet::share`]). A queue resumed (or a limit changed) wakes an idle fetcher, which may
    /// be waiting long with nothing pending in the queues it could claim.
    pub(crate) fn refresh(&self) -> Result<(), Error> {
        let before = self.controls.plan(&self.config.queues, self.queue.now());
        refresh(
            &self.queue,
            &self.config.queues,
            &self.controls,
            &self.share,
            &self.counters,
        )?;
        if self.controls.plan(&self.config.queues, self.queue.now()) != before {
            self.doorbell.ring();
        }
        Ok(())
    }

    /// Writes this worker's registry document.
    pub(crate) fn heartbeat(&self) -> Result<(), Error> {
        let report = self.counters.snapshot(false);
        let fields = doc! {
            "host": gethostname::gethostname().to_string_lossy().into_owned(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
            "threads": self.config.threads as i64,
            "queues": &self.config.queues,
            "running": self.running.count() as i64,
            "held": self.leases.held() as i64,
            "completed": report.completed as i64,
            "retried": report.retried as i64,
            "failed": report.failed as i64,
        };
        Counters::add(&self.counters.control_round_trips, 1);
        self.queue.heartbeat(&self.config.worker_id, fields)
    }

    /// Until `stop`: refresh, give back, reclaim, extend, heartbeat.
    pub(crate) fn run(&self, stop: &Shutdown) {
        let extend_every = (self.config.lease / 3).max(Duration::from_millis(50));
        let mut next_extend = Instant::now() + extend_every;
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        let mut next_history = Instant::now() + history::FLUSH_EVERY;
        let mut next_sweep = Instant::now() + GROUP_SLOT_SWEEP;
        loop {
            self.health.beat(Beat::Control);
            let idle = self.doorbell.wanted();
            if !(idle && self.controls.fresh_within(IDLE_REFRESH)) {
                if let Err(error) = self.health.track(self.refresh()) {
                    log::warn!("could not read the queue controls (will retry): {error}");
                }
            }
            self.settle();
            for control in self.controls.all() {
                if control.concurrency.is_some() {
                    match reclaim_dead(&self.queue, &control, &self.config.worker_id) {
                        Ok(0) => {}
                        Ok(n) => Counters::add(&self.counters.rescued_slots, n),
                        Err(error) => log::warn!("could not take back slots (will retry): {error}"),
                    }
                }
            }
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + GROUP_SLOT_SWEEP;
                if self
                    .controls
                    .all()
                    .iter()
                    .any(QueueControl::has_group_limits)
                    && self.share.leads(GROUP_SLOT_SWEEP_DUTY)
                {
                    match group_limits::sweep(&self.queue) {
                        Ok(0) => {}
                        Ok(n) => log::warn!("removed the slots of {n} groups whose workers all stopped before giving them back"),
                        Err(error) => log::warn!("could not sweep group slots (will retry): {error}"),
                    }
                }
            }
            if Instant::now() >= next_extend {
                if self.group_slots.holding() {
                    if let Err(error) =
                        group_limits::extend(&self.queue, &self.config.worker_id, self.config.lease)
                    {
                        log::warn!("could not extend group slots (will retry): {error}");
                    }
                }
                for name in self.slots.holding() {
                    if let Err(error) = extend_slots(
                        &self.queue,
                        &name,
                        &self.config.worker_id,
                        self.config.lease,
                    ) {
                        log::warn!("could not extend concurrency slots (will retry): {error}");
                    }
                }
                next_extend = Instant::now() + extend_every;
            }
            if Instant::now() >= next_heartbeat {
                if let Err(error) = self.heartbeat() {
                    log::warn!("could not write the worker registry (will retry): {error}");
                }
                next_heartbeat = Instant::now() + if idle { IDLE_HEARTBEAT } else { HEARTBEAT };
            }
            if !idle {
                next_heartbeat = next_heartbeat.min(Instant::now() + HEARTBEAT);
            }
            if Instant::now() >= next_history {
                self.write_history();
                next_history = Instant::now() + history::FLUSH_EVERY;
            }
            if self.wait_looking(stop) {
                break;
            }
        }
        self.settle();
        // The completer has written its last outcomes: the last tallies.
        self.write_history();
        for control in self.controls.all() {
            if control.concurrency.is_some() {
                if let Err(error) = forget(&self.queue, &control.queue, &self.config.worker_id) {
                    log::warn!("could not remove this worker's slot entry (it is taken back when it expires): {error}");
                }
            }
        }
        if let Err(error) = self.queue.deregister(&self.config.worker_id) {
            log::warn!(
                "could not remove this worker from the registry (its entry expires): {error}"
            );
        }
    }

    /// Waits [`REFRESH`]; a worker that holds jobs (it has some to start)
    /// reads its controls every [`PAUSE_LOOK`] meanwhile. Holding, not the
    /// fetcher's idleness, decides: a fetcher that found nothing a moment
    /// ago counts as idle for seconds while its threads still start what
    /// it holds. True when stopping.
    fn wait_looking(&self, stop: &Shutdown) -> bool {
        let until = Instant::now() + REFRESH;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if stop.sleep(left.min(PAUSE_LOOK)) {
                return true;
            }
            if self.leases.held() == 0 || Instant::now() >= until {
                continue;
            }
            let before = self.controls.plan(&self.config.queues, self.queue.now());
            let read_started = Instant::now();
            match self.queue.controls_of(&self.config.queues) {
                Ok(controls) => {
                    self.controls.set(controls, read_started);
                    Counters::add(&self.counters.control_round_trips, 1);
                    if self.controls.plan(&self.config.queues, self.queue.now()) != before {
                        self.doorbell.ring();
                    }
                }
                Err(error) => log::debug!("could not read the queue controls: {error}"),
            }
        }
    }

    /// Adds this worker's tallies to the queue's history.
    fn write_history(&self) {
        let Some(recorder) = &self.history else {
            return;
        };
        match history::flush(&self.queue, recorder) {
            Ok(true) => Counters::add(&self.counters.control_round_trips, 1),
            Ok(false) => {}
            Err(error) => log::warn!("could not write the queue's history (will retry): {error}"),
        }
    }

    /// Gives back the slots finished jobs freed.
    fn settle(&self) {
        match group_limits::give_back(&self.queue, &self.config.worker_id, &self.group_slots) {
            Ok(trips) => Counters::add(&self.counters.control_round_trips, trips),
            Err(error) => log::warn!("could not give back group slots (will retry): {error}"),
        }
        for name in self.slots.with_freed() {
            match give_back(&self.queue, &name, &self.config.worker_id, &self.slots) {
                Ok(trips) => Counters::add(&self.counters.control_round_trips, trips),
                Err(error) => {
                    log::warn!("could not give back concurrency slots (will retry): {error}");
                }
            }
        }
    }
}

/// Reads the controls of `queues` and the peers that share them (two round
/// trips): the control thread's refresh, and the fetcher's when it finds
/// work after idling.
pub(crate) fn refresh(
    queue: &Queue,
    queues: &[String],
    controls: &Controls,
    share: &Share,
    counters: &Counters,
) -> Result<(), Error> {
    let read_started = Instant::now();
    controls.set(queue.controls_of(queues)?, read_started);
    Counters::add(&counters.control_round_trips, 1);
    let trips = share.refresh(queue)?;
    Counters::add(&counters.control_round_trips, trips);
    Ok(())
}
