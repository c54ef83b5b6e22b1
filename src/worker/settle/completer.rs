//! The completer thread: gathers the outcomes the handler threads send,
//! writes them back fenced and batched (see [`crate::worker::settle::outcome`]), and
//! releases the leases they held.
//!
//! Under load outcomes pile up while a write is in flight, so batches grow
//! by themselves; when idle, an outcome is written at once. A database
//! outage is ridden out: the batch is retried until it lands or the hard
//! stop fires, and what is left unwritten then runs again after its lease
//! expires (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use mongodb::bson::{oid::ObjectId, Bson};

use crate::fleet::limits::Slots;
use crate::flow::settle as flow;
use crate::history::{Event, Recorder};
use crate::queue::Queue;
use crate::schema::id_text;
use crate::shutdown::Shutdown;
use crate::worker::health::liveness::{Beat, Health};
use crate::worker::health::report::Counters;
use crate::worker::lease::held::Leases;
use crate::worker::outage::retry_until_stopped;
use crate::worker::settle::outcome::{write, Kind, Outcome, MAX_STATEMENTS};
use crate::worker::wake::Doorbell;

/// The completer thread and what it owns.
pub(crate) struct Completer {
    pub(crate) queue: Queue,
    /// This worker's id, recorded in error history entries.
    pub(crate) worker: String,
    pub(crate) leases: Arc<Leases>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) health: Arc<Health>,
    /// Concurrency slots held by the jobs whose outcomes are written.
    pub(crate) slots: Arc<Slots>,
    /// Group slots held by the jobs whose outcomes are written.
    pub(crate) group_slots: Arc<crate::groups::limits::GroupSlots>,
    /// Rung when an outcome released waiting jobs, so this worker's
    /// fetcher looks for them at once.
    pub(crate) doorbell: Arc<Doorbell>,
    /// Told the queue whose handler's pause it wrote (the worker's
    /// controls then let the next read stand for it).
    pub(crate) pause_written: Box<dyn Fn(&str) + Send>,
    /// Where written outcomes are counted for the queue's history (`None`
    /// with `--no-history`).
    pub(crate) history: Option<Arc<Recorder>>,
}

impl Completer {
    /// The completer thread's loop: gather what is waiting, write it, release
    /// the leases. Ends when every sender is gone and all is written, or when
    /// `stop` fires (then what is unwritten is left to lease expiry).
    pub(crate) fn run(&self, outcomes: &Receiver<Outcome>, stop: &Shutdown) {
        let mut pending: Vec<Outcome> = Vec::new();
        loop {
            self.health.beat(Beat::Completer);
            match outcomes.recv_timeout(Duration::from_millis(100)) {
                Ok(outcome) => pending.push(outcome),
                Err(RecvTimeoutError::Timeout) => {
                    if stop.is_requested() {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while pending.len() < MAX_STATEMENTS {
                match outcomes.try_recv() {
                    Ok(outcome) => pending.push(outcome),
                    Err(_) => break,
                }
            }
            self.flush(&mut pending, stop);
            if stop.is_requested() && pending.is_empty() && outcomes.is_empty() {
                break;
            }
        }
        pending.extend(outcomes.try_iter());
        self.flush(&mut pending, stop);
        if !pending.is_empty() {
            log::warn!(
                "{} job outcomes could not be written before exit; those jobs run again after their leases expire",
                pending.len()
            );
        }
    }

    fn flush(&self, pending: &mut Vec<Outcome>, stop: &Shutdown) {
        let Completer {
            queue,
            worker,
            leases,
            counters,
            health,
            slots,
            group_slots,
            doorbell: _,
            pause_written,
            history,
        } = self;
        if pending.is_empty() {
            return;
        }
        // A handler's pause goes out before its job's snooze: the peers
        // stop starting the queue's jobs as soon as they can read it.
        for (name, until, reason) in pauses(queue, pending) {
            let written = retry_until_stopped(stop, "writing a handler's pause", || {
                health.track(queue.pause_until(&name, until, &reason))
            });
            if written.is_none() {
                return;
            }
            pause_written(&name);
            log::info!(
                "queue {name} paused until {} by a handler: {reason}",
                until.try_to_rfc3339_string().unwrap_or_default()
            );
        }
        let Some(matched) = retry_until_stopped(stop, "writing job outcomes", || {
            self.health.beat(Beat::Completer);
            health.track(write(queue, worker, pending))
        }) else {
            return;
        };
        // Outcomes a handler's transaction already wrote need no round trip.
        if pending.iter().any(|o| !o.is_settled()) {
            Counters::add(&counters.outcome_writes, 1);
        }
        let mut lost = (pending.len() as u64).saturating_sub(matched);
        // Settled before the leases go: `--drain` sees a released job
        // pending before it sees this worker holding nothing.
        lost = lost.saturating_sub(self.settle_dependents(pending, lost, stop));
        if lost > 0 {
            Counters::add(&counters.lost, lost);
            let ids: Vec<String> = pending
                .iter()
                .take(20)
                .map(|o| id_text(&o.key.id))
                .collect();
            log::warn!(
                "{lost} of {} outcomes were not written: their leases were lost (another worker took those jobs over after the lease expired) or an operator cancelled them; batch: {}",
                pending.len(),
                ids.join(", ")
            );
        }
        let at = queue.clock().now();
        let mut group_slots_freed = false;
        for outcome in pending.drain(..) {
            record(queue, counters, &outcome);
            if let (Some(history), Some(timing)) = (history, &outcome.timing) {
                let event = if timing.cancelled {
                    Some(Event::Cancelled)
                } else {
                    event_of(&outcome.kind)
                };
                if let Some(event) = event {
                    history.record(&timing.queue, at, event, timing.wait, timing.run);
                }
            }
            leases.release(outcome.key.token);
            if let Some(queue) = &outcome.key.slot {
                slots.free(queue, 1);
            }
            if let Some(group) = &outcome.key.group_slot {
                group_slots.free(&group.0, &group.1, 1);
                group_slots_freed = true;
            }
        }
        // A group's slot goes back at once, now that its job's outcome is
        // written: the group's next job (an ordered group's, say) may be
        // another worker's to start. If this fails, the control thread
        // gives it back within half a second.
        if group_slots_freed {
            match crate::groups::limits::give_back(queue, worker, group_slots) {
                Ok(trips) => Counters::add(&counters.outcome_writes, trips),
                Err(error) => {
                    log::debug!(
                        "giving back group slots failed ({error}); the control thread does"
                    );
                }
            }
        }
    }

    /// Releases or cancels the dependents of the jobs these outcomes ended
    /// (see [`crate::flow`]); returns how many of the `lost` outcomes were
    /// only held back by a `has_dependents` flag set after the claim, and
    /// are now written.
    fn settle_dependents(&self, pending: &mut [Outcome], lost: u64, stop: &Shutdown) -> u64 {
        let queue = &self.queue;
        let mut recovered = 0;
        if lost > 0 {
            let candidates: Vec<(Bson, ObjectId)> = pending
                .iter()
                .filter(|o| o.ends_job() && !o.key.dependents && !o.is_settled())
                .map(|o| (o.key.id.clone(), o.key.token))
                .collect();
            let held = if candidates.is_empty() {
                Ok(Vec::new())
            } else {
                flow::held_back(queue, &candidates)
            };
            match held {
                Ok(held) if !held.is_empty() => {
                    let mut again = Vec::new();
                    for outcome in pending.iter_mut() {
                        let terminal = outcome.ends_job() && !outcome.is_settled();
                        if terminal && held.contains(&outcome.key.id) {
                            outcome.key.dependents = true;
                            again.push(outcome.clone());
                        }
                    }
                    recovered = retry_until_stopped(stop, "writing job outcomes", || {
                        write(queue, &self.worker, &again)
                    })
                    .unwrap_or(0);
                }
                Ok(_) => {}
                Err(error) => log::warn!("checking lost outcomes for dependents failed: {error}"),
            }
        }
        let ended: Vec<Bson> = pending
            .iter()
            .filter(|o| o.ends_job() && o.key.dependents)
            .map(|o| o.key.id.clone())
            .collect();
        if ended.is_empty() {
            return recovered;
        }
        match flow::settle_ids(queue, &ended) {
            Ok(settled) => {
                Counters::add(&self.counters.dependents_released, settled.released);
                Counters::add(&self.counters.dependents_cancelled, settled.cancelled);
                if settled.released > 0 {
                    self.doorbell.ring();
                }
            }
            Err(error) => log::warn!(
                "releasing the dependents of {} finished jobs failed ({error}); the flow sweep settles them within seconds",
                ended.len()
            ),
        }
        recovered
    }
}

/// Counts and logs what became of one attempt, once its outcome is written.
fn record(queue: &Queue, counters: &Counters, outcome: &Outcome) {
    let key = &outcome.key;
    match &outcome.kind {
        Kind::Completed { .. } => {
            Counters::add(&counters.completed, 1);
            log::debug!("job {} completed", id_text(&key.id));
        }
        Kind::Retry {
            attempt,
            error,
            run_at,
        } => {
            Counters::add(&counters.retried, 1);
            counters.own_retry_due_ms.fetch_max(
                run_at.timestamp_millis(),
                std::sync::atomic::Ordering::Relaxed,
            );
            log::info!(
                "job {} attempt {attempt} failed, retry at {}: {error}",
                id_text(&key.id),
                run_at.try_to_rfc3339_string().unwrap_or_default()
            );
        }
        Kind::Snoozed { delay, .. } => {
            Counters::add(&counters.snoozed, 1);
            // Now is after the write's instant: a `--drain` worker
            // waits at least until the snooze it wrote is due.
            let due = crate::clock::shift_by(queue.clock().now(), *delay);
            counters
                .own_retry_due_ms
                .fetch_max(due.timestamp_millis(), std::sync::atomic::Ordering::Relaxed);
            log::debug!(
                "job {} snoozed for {}",
                id_text(&key.id),
                crate::duration::format_duration(*delay)
            );
        }
        Kind::Failed { attempt, error } => {
            Counters::add(&counters.failed, 1);
            log::warn!(
                "job {} failed for good after attempt {attempt}: {error}",
                id_text(&key.id)
            );
        }
        Kind::Settled => {
            Counters::add(&counters.completed, 1);
            log::debug!(
                "job {} completed in its handler's transaction",
                id_text(&key.id)
            );
        }
        Kind::Released => {
            Counters::add(&counters.released, 1);
        }
        Kind::Expired { expires_at } => {
            Counters::add(&counters.expired, 1);
            log::info!(
                "job {} {}",
                id_text(&key.id),
                crate::expiry::reason(*expires_at)
            );
        }
        Kind::Interrupted { .. } => {
            log::warn!(
                "job {} was interrupted by shutdown and is pending again",
                id_text(&key.id)
            );
        }
    }
}

/// What the history counts an outcome as (nothing for a job handed back
/// or interrupted by shutdown: it runs again, and is counted then).
fn event_of(kind: &Kind) -> Option<Event> {
    match kind {
        Kind::Completed { .. } | Kind::Settled => Some(Event::Completed),
        Kind::Retry { .. } => Some(Event::Retried),
        Kind::Failed { .. } => Some(Event::Failed),
        Kind::Snoozed { .. } => Some(Event::Snoozed),
        Kind::Expired { .. } => Some(Event::Cancelled),
        Kind::Released | Kind::Interrupted { .. } => None,
    }
}

/// The pauses handlers asked for among `pending`: one per queue, the
/// latest end (the write's instant plus the delay, as the snooze's).
fn pauses(queue: &Queue, pending: &[Outcome]) -> Vec<(String, mongodb::bson::DateTime, String)> {
    let mut by_queue: Vec<(String, mongodb::bson::DateTime, String)> = Vec::new();
    let now = queue.clock().now();
    for outcome in pending {
        if let Kind::Snoozed {
            delay,
            pause: Some((name, reason)),
        } = &outcome.kind
        {
            let until = crate::clock::shift_by(now, *delay);
            match by_queue.iter_mut().find(|(known, ..)| known == name) {
                Some(entry) if entry.1 < until => *entry = (name.clone(), until, reason.clone()),
                Some(_) => {}
                None => by_queue.push((name.clone(), until, reason.clone())),
            }
        }
    }
    by_queue
}
