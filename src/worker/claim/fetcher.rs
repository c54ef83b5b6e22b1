//! The fetcher thread: claims batches while there is room, hands the jobs
//! to the handler threads over the bounded channel, and backs off when the
//! queue is idle (woken early by the change-stream watcher's doorbell).
//!
//! It is the only thread that claims, so the read-ahead window needs no
//! lock. Shutdown is its flag: it stops claiming and, by returning, drops
//! the channel's last sender, so the handler threads drain what is left and
//! stop (crossbeam's disconnection protocol).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mongodb::bson::Bson;

use crate::backoff::Backoff;
use crate::clock::shift_by;
use crate::fleet::limits::{take_slots, take_starts, Banked, Slots, START_LEAD, START_SLACK};
use crate::fleet::share::Share;
use crate::groups::gate::Gate;
use crate::groups::limits::Starts;
use crate::handlers::Handler;
use crate::job::Job;
use crate::queue::{Queue, QueueControl};
use crate::schema::{fields, integer};
use crate::shutdown::Shutdown;
use crate::worker::claim::pacing::{Decision, PaceMeter, Pacing};
use crate::worker::claim::{Claimed, Claimer, WINDOW_LIFETIME};
use crate::worker::config::WorkerConfig;
use crate::worker::control::{refresh, Controls, REFRESH};
use crate::worker::health::liveness::{Beat, Health};
use crate::worker::health::metrics::Histogram;
use crate::worker::health::report::Counters;
use crate::worker::lease::held::JobKey;
use crate::worker::lease::held::Leases;
use crate::worker::outage::retry_until_stopped;
use crate::worker::settle::outcome::{Kind, Outcome};
use crate::worker::wake::Doorbell;

/// What a claim's jobs hold and when they start: the limited queue whose
/// slot each holds, the instant a rate reserved, and the gate of group
/// limits its candidates pass.
#[derive(Default)]
struct Terms<'a> {
    slot: Option<&'a str>,
    start_at: Option<Instant>,
    gate: Option<Gate>,
}

/// The longest a claim under a group's rate reserves its jobs' start
/// ahead (see `claim_limited`).
const MAX_GROUP_RATE_LEAD: Duration = Duration::from_secs(2);

/// How long a fetcher that found only jobs of groups at their limit waits
/// before looking again (a job of its own ending wakes it sooner).
const AT_GROUP_PAUSE: Duration = Duration::from_millis(50);

/// How long a fetcher held back by a limit waits before looking again.
const AT_LIMIT_PAUSE: Duration = Duration::from_millis(20);

/// A draining worker that holds jobs and found nothing eligible looks again
/// when one of its outcomes lands, or after this long.
const DRAIN_TAIL_WAIT: Duration = Duration::from_secs(1);

/// With no job pending and a change stream open, an idle worker looks once
/// per this many poll intervals.
const QUIET_POLLS: u32 = 10;

/// How long a fetcher whose handler can run nothing waits before looking again.
const NO_HANDLER_PAUSE: Duration = Duration::from_millis(100);

/// What a claim of a limited queue came to.
enum Limited {
    /// This many jobs were claimed (0: none eligible).
    Claimed(usize),
    /// The limit allowed none now.
    AtLimit,
    /// Only jobs of groups at their limit (or, ordered, not yet their
    /// turn) were in reach: each look costs the server round trips, so
    /// look a little less often than at a queue's limit.
    AtGroupLimit,
}

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
    pub(crate) controls: Arc<Controls>,
    pub(crate) share: Arc<Share>,
    pub(crate) slots: Arc<Slots>,
    pub(crate) group_slots: Arc<crate::groups::limits::GroupSlots>,
    /// Asked how many jobs it can start now ([`Handler::ready`]).
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) jobs: Sender<Job>,
    pub(crate) outcomes: Sender<Outcome>,
    /// Rate-limited starts reserved and not yet filled.
    pub(crate) banked: Banked,
}

impl Fetcher {
    /// How much to claim, for the threads that can run a job now (the
    /// handler may have fewer: a pipe handler's programs restarting) and
    /// this worker's batch size.
    fn pacing(&self) -> Pacing {
        Pacing {
            threads: self.ready_threads(),
            batch_size: self.config.batch_size,
        }
    }

    /// The threads the handler can start jobs on now.
    fn ready_threads(&self) -> usize {
        self.handler
            .ready()
            .map_or(self.config.threads, |ready| ready.min(self.config.threads))
    }

    /// Claims until `shutdown` (or, with `drain`, until nothing is left).
    pub(crate) fn run(self, shutdown: &Shutdown) {
        let config = &self.config;
        let shortest_idle = (config.poll_interval / 16).max(Duration::from_millis(5));
        let mut idle = Backoff::new(shortest_idle, config.poll_interval);
        // One claimer (and read-ahead window) per set of queues claimed
        // together: the open queues, and each limited queue on its own.
        let mut claimers: HashMap<Vec<String>, Claimer> = HashMap::new();
        while !shutdown.is_requested() {
            self.health.beat(Beat::Fetcher);
            let pacing = self.pacing();
            if pacing.threads == 0 {
                // Nothing could run a job now: claim none, so no job waits
                // under a lease (or burns an attempt) for a handler that is
                // down. The handler logs why and restarts itself.
                shutdown.sleep(NO_HANDLER_PAUSE);
                continue;
            }
            let want = match pacing.decide(self.leases.held(), self.pace.average()) {
                Decision::Wait => {
                    self.leases.wait_for_release(Duration::from_millis(50));
                    continue;
                }
                Decision::Claim(want) => want,
            };
            let plan = self.controls.plan(&config.queues, self.queue.now());
            let generation = self.leases.generation();
            let mut won = 0;
            let mut stopped = false;
            let mut blocked: Option<Duration> = None; // by a limit: the pause
            if !plan.open.is_empty() {
                match self.claim(&mut claimers, &plan.open, want, Terms::default(), shutdown) {
                    Some(n) => won += n,
                    None => stopped = true,
                }
            }
            for control in &plan.limited {
                if stopped || won >= want {
                    break;
                }
                match self.claim_limited(&mut claimers, control, want - won, shutdown) {
                    Some(Limited::Claimed(n)) => won += n,
                    Some(Limited::AtLimit) => blocked = Some(AT_LIMIT_PAUSE),
                    Some(Limited::AtGroupLimit) => blocked = blocked.or(Some(AT_GROUP_PAUSE)),
                    None => stopped = true,
                }
            }
            if stopped {
                break;
            }
            if won > 0 {
                idle.reset();
                continue;
            }
            // Every claimer is asked (no short cut), so none keeps its flag.
            let woke = claimers
                .values_mut()
                .fold(false, |woke, claimer| claimer.take_woke() | woke);
            if woke {
                // An idle poll found work: the controls may be seconds old
                // (an idle worker reads them seldom), so read them before
                // claiming; a pause holds within a second.
                idle.reset();
                if !self.controls.fresh_within(REFRESH) {
                    let refreshed =
                        retry_until_stopped(shutdown, "reading the queue controls", || {
                            self.health.track(refresh(
                                &self.queue,
                                &config.queues,
                                &self.controls,
                                &self.share,
                                &self.counters,
                            ))
                        });
                    if refreshed.is_none() {
                        break;
                    }
                }
                continue;
            }
            if let Some(pause) = blocked {
                // A limit, not a lack of jobs: slots free up as jobs finish
                // (here or elsewhere) and starts as the window moves, so
                // look again soon rather than backing off as when idle.
                self.leases.wait_for_release_since(generation, pause);
                continue;
            }
            if config.drain && self.drained(shutdown) {
                // The last look of a drain: jobs no worker can take (a
                // `queue` of the wrong type) are failed with the reason,
                // not left pending (the readers do it as they stop).
                for claimer in claimers.values() {
                    claimer.upkeep_now();
                }
                log::info!("--drain: no job is eligible and none is running; stopping");
                shutdown.request();
                break;
            }
            if config.drain && self.leases.held() > 0 {
                // Draining, nothing eligible, and jobs of its own still
                // running: what they lead to (a retry, a dependent) comes
                // with their outcomes, so look again when one lands (or
                // after a second), not every poll interval.
                self.leases
                    .wait_for_release_since(generation, DRAIN_TAIL_WAIT);
                continue;
            }
            // No job pending at all and a change stream open: a write that
            // makes one pending rings, and nothing becomes due as time
            // passes, so look only now and then (a safety net).
            let quiet = self.doorbell.watching()
                && !claimers.is_empty()
                && claimers.values().all(Claimer::nothing_pending);
            let wait = self.until_resumed(if quiet {
                config.poll_interval * QUIET_POLLS
            } else {
                idle.peek()
            });
            if self.doorbell.wait(wait) {
                idle.reset();
            } else {
                idle.advance();
            }
        }
    }

    /// `wait`, or less when a handler's pause of one of its queues ends
    /// sooner (it ends by itself: look again the moment it does).
    fn until_resumed(&self, wait: Duration) -> Duration {
        self.controls
            .resumes_in(&self.config.queues, self.queue.now())
            .map_or(wait, |resume| wait.min(resume + Duration::from_millis(1)))
    }

    /// How many jobs the threads can start by a reserved instant (or
    /// within [`START_SLACK`] after it) at the measured pace, after the
    /// jobs they hold: at most what a claim under a rate takes.
    fn startable_on_time(&self) -> u32 {
        let startable = self
            .pacing()
            .startable_within(START_LEAD + START_SLACK, self.pace.average())
            .saturating_sub(self.leases.held());
        u32::try_from(startable).unwrap_or(u32::MAX)
    }

    /// Under a group's rate, the claim's jobs start at one reserved instant
    /// (`start_at`: the queue rate's, if it has one, else set here), as
    /// under the queue's: what the groups' starts are recorded as.
    fn group_starts(&self, claimer: Option<&Claimer>, start_at: &mut Option<Instant>) -> Starts {
        let clock = self.queue.clock();
        // Time to take the slots, claim and read back before the instant
        // (twice what the last such claim took: a slow server needs more
        // than the queue rate's lead), else the jobs miss it and go back
        // unstarted.
        let took = claimer.map_or(Duration::ZERO, Claimer::gated_took);
        let lead = START_LEAD.max(took * 2).min(MAX_GROUP_RATE_LEAD);
        let instant = *start_at.get_or_insert_with(|| Instant::now() + lead);
        let lead = instant.saturating_duration_since(Instant::now());
        Starts {
            at: shift_by(clock.now(), clock.uncertainty() + lead),
            margin: START_SLACK + clock.uncertainty() * 2,
        }
    }

    /// Claims up to `want` jobs of `queues` on `terms` and dispatches them;
    /// `None` when stopping interrupted it.
    fn claim(
        &self,
        claimers: &mut HashMap<Vec<String>, Claimer>,
        queues: &[String],
        want: usize,
        terms: Terms,
        shutdown: &Shutdown,
    ) -> Option<usize> {
        let Terms {
            slot,
            start_at,
            gate,
        } = terms;
        let config = &self.config;
        // The read-ahead window is re-read at least this often, so a new
        // urgent job waits no longer than this behind older ones.
        let window_age = config.poll_interval.min(Duration::from_secs(1));
        let claimer = claimers.entry(queues.to_vec()).or_insert_with(|| {
            Claimer::new(
                self.queue.clone(),
                config.worker_id.clone(),
                config.lease,
                queues.to_vec(),
                window_age,
                Arc::clone(&self.share),
            )
        });
        claimer.gate = gate;
        // What the threads can start while a window stays fresh (before
        // any job was timed: ten batches); at least a batch.
        let window = match self.pace.average() {
            Some(average) => self
                .pacing()
                .startable_within(WINDOW_LIFETIME, Some(average)),
            None => config.batch_size.saturating_mul(10),
        }
        .max(config.batch_size);
        let before = (claimer.round_trips, claimer.candidates);
        let claimed = retry_until_stopped(shutdown, "claiming jobs", || {
            self.health.beat(Beat::Fetcher);
            let started = Instant::now();
            let claimed = self.health.track(claimer.claim(want, window));
            self.claim_seconds.observe(started.elapsed());
            claimed
        });
        Counters::add(
            &self.counters.claim_round_trips,
            claimer.round_trips - before.0,
        );
        Counters::add(
            &self.counters.claim_candidates,
            claimer.candidates - before.1,
        );
        let claimed = claimed?;
        Counters::add(&self.counters.claim_attempts, 1);
        let won = claimed.as_ref().map_or(0, |c| c.documents.len());
        if let Some(claimed) = claimed {
            Counters::add(&self.counters.claim_batches, 1);
            self.dispatch(claimed, slot.map(Arc::<str>::from), start_at);
        }
        Some(won)
    }

    /// Claims jobs of one limited queue: takes slots (concurrency) and
    /// starts (rate) first, claims at most that many, and frees the slots
    /// the claim did not fill. `None` when stopping interrupted it.
    fn claim_limited(
        &self,
        claimers: &mut HashMap<Vec<String>, Claimer>,
        control: &QueueControl,
        want: usize,
        shutdown: &Shutdown,
    ) -> Option<Limited> {
        let config = &self.config;
        let mut grant = u32::try_from(want).unwrap_or(u32::MAX);
        let mut start_at = None;
        if let Some(rate) = control.rate {
            // Reserved starts happen at the reserved instant, or within
            // START_SLACK after it: only as many as the threads can start
            // by then at the measured pace, after the jobs they hold.
            grant = grant.min(self.startable_on_time());
            if grant == 0 {
                return Some(Limited::AtLimit);
            }
            let (at, jobs) = if let Some(banked) = self.banked.take(&control.queue, grant) {
                banked
            } else {
                let (taken, at) =
                    retry_until_stopped(shutdown, "taking rate-limited starts", || {
                        self.health.track(take_starts(
                            &self.queue,
                            &control.queue,
                            rate,
                            grant,
                            self.queue.clock(),
                        ))
                    })?;
                Counters::add(&self.counters.limit_round_trips, taken.round_trips);
                (at, taken.jobs)
            };
            grant = jobs;
            start_at = Some((at, jobs));
            if grant == 0 {
                return Some(Limited::AtLimit);
            }
        }
        let mut slots = 0;
        if let Some(limit) = control.concurrency {
            // This worker alone fills the limit: no need to ask the server.
            if self.slots.unreturned(&control.queue) >= limit {
                return Some(Limited::AtLimit);
            }
            if grant > 0 {
                let taken = retry_until_stopped(shutdown, "taking concurrency slots", || {
                    self.health.track(take_slots(
                        &self.queue,
                        control,
                        limit,
                        &config.worker_id,
                        grant,
                        &self.slots,
                        config.lease,
                    ))
                })?;
                Counters::add(&self.counters.limit_round_trips, taken.round_trips);
                grant = taken.jobs;
                slots = taken.jobs;
            }
        }
        if grant == 0 {
            return Some(Limited::AtLimit);
        }
        let queues = vec![control.queue.clone()];
        let mut terms = Terms {
            slot: control.concurrency.map(|_| control.queue.as_str()),
            start_at: start_at.map(|(at, _)| at),
            gate: None,
        };
        let mut starts = None;
        if control.has_group_rates() {
            grant = grant.min(self.startable_on_time());
            if grant == 0 {
                self.slots.free(&control.queue, slots);
                return Some(Limited::AtLimit);
            }
            starts = Some(self.group_starts(claimers.get(&queues), &mut terms.start_at));
        }
        terms.gate = control.has_group_limits().then(|| Gate {
            control: control.clone(),
            worker: config.worker_id.clone(),
            lease: config.lease,
            slots: Arc::clone(&self.group_slots),
            starts,
        });
        let won = self.claim(claimers, &queues, grant as usize, terms, shutdown);
        let won_jobs = u32::try_from(won.unwrap_or(0)).unwrap_or(u32::MAX);
        let at_group_limit = claimers.get(&queues).is_some_and(Claimer::at_group_limit);
        // Slots the claim did not fill go back (netted into the next take);
        // starts it did not fill are banked for the next claim.
        let unfilled = slots.saturating_sub(won_jobs);
        if unfilled > 0 {
            self.slots.free(&control.queue, unfilled);
        }
        if let Some((at, starts)) = start_at {
            self.banked
                .put(&control.queue, at, starts.saturating_sub(won_jobs));
        }
        if won == Some(0) && at_group_limit {
            return Some(Limited::AtGroupLimit);
        }
        won.map(Limited::Claimed)
    }

    /// Turns claimed documents into jobs for the threads; malformed ones and
    /// ones out of attempts go straight to the completer as `failed`.
    fn dispatch(&self, claimed: Claimed, slot: Option<Arc<str>>, start_at: Option<Instant>) {
        let Claimed {
            token,
            documents,
            group_slots,
        } = claimed;
        let mut group_slots = group_slots.into_iter();
        self.leases.add(token, documents.len());
        Counters::add(&self.counters.claimed, documents.len() as u64);
        log::debug!("claimed {} jobs under {token}", documents.len());
        let mut ready = Vec::with_capacity(documents.len());
        for document in documents {
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            let group_slot = group_slots.next().flatten();
            let key = JobKey {
                id,
                token,
                slot: slot.clone(),
                group_slot: group_slot.clone(),
                dependents: document.get_bool(fields::HAS_DEPENDENTS) == Ok(true),
            };
            let attempt = document
                .get(fields::ATTEMPTS)
                .and_then(integer)
                .map_or(1, |n| n as u32);
            match Job::from_document(&document, token, self.config.max_attempts) {
                Err(malformed) => {
                    let _ = self.outcomes.send(Outcome::new(
                        key,
                        Kind::Failed {
                            attempt,
                            error: malformed.to_string(),
                        },
                    ));
                }
                Ok(job) if job.attempt > job.max_attempts => {
                    let error = format!(
                        "attempts exhausted: attempt {} of at most {} was claimed after the previous attempt's lease expired (its worker crashed or stalled; see `errors`)",
                        job.attempt, job.max_attempts
                    );
                    let _ = self.outcomes.send(Outcome::new(
                        key,
                        Kind::Failed {
                            attempt: job.attempt,
                            error,
                        },
                    ));
                }
                Ok(mut job) => {
                    job.slot.clone_from(&slot);
                    job.group_slot = group_slot;
                    job.start_at = start_at;
                    ready.push(job);
                }
            }
        }
        // Jobs that waited for others get their dependencies' results (one
        // read for the whole claim); if that read fails they go back.
        if let Err(error) = self.attach_deps(&mut ready) {
            log::warn!("reading the results of claimed jobs' dependencies failed ({error}); those jobs go back to pending");
            for job in ready.extract_if(.., |job| !job.after.is_empty()) {
                let _ = self.outcomes.send(Outcome::new(job.key(), Kind::Released));
            }
        }
        for job in ready {
            if let Err(returned) = self.jobs.send(job) {
                // Every handler thread is gone (cannot happen while
                // the fetcher runs); hand the job back.
                let _ = self
                    .outcomes
                    .send(Outcome::new(returned.0.key(), Kind::Released));
            }
        }
    }

    /// Fills [`Job::deps`] of the jobs that waited for others, with one
    /// read for the whole claim (see [`crate::flow::results`]).
    fn attach_deps(&self, jobs: &mut [Job]) -> Result<(), crate::Error> {
        if jobs.iter().all(|job| job.after.is_empty()) {
            return Ok(());
        }
        let loaded = crate::flow::results::load(&self.queue, jobs)?;
        for (job, deps) in jobs.iter_mut().zip(loaded) {
            job.deps = deps;
        }
        Ok(())
    }
}
