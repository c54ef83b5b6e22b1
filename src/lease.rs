//! Leases: what this worker holds, keeping those leases alive, and rescuing
//! jobs whose leases ran out.
//!
//! Every claim gets a fresh `lease_token` (an `ObjectId`); all jobs of one
//! claim share it. [`Leases`] counts, per token, the jobs this worker still
//! holds (claimed and not yet written back). The keeper thread extends all
//! held tokens with one `updateMany` every third of the lease, so a healthy
//! worker never loses a long job, and it rescues expired leases of any
//! worker with one more `updateMany`, so a crashed worker's jobs run again.
//!
//! Rescue only puts a job back to `pending`; the attempt it used stays
//! counted. A job that keeps killing its workers therefore runs out of
//! attempts and ends `failed` instead of crashing workers forever (the
//! claim checks `attempts` against `max_attempts`).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use crate::error::Error;
use crate::job::{after, fields, now};
use crate::metrics::{Beat, Health};
use crate::queue::Queue;
use crate::shutdown::Shutdown;

/// Jobs this worker holds, by claim token.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<ObjectId, usize>>,
    released: Condvar,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, usize>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `count` jobs claimed under `token`.
    pub(crate) fn add(&self, token: ObjectId, count: usize) {
        if count > 0 {
            *self.lock().entry(token).or_insert(0) += count;
        }
    }

    /// Records that one job of `token` was written back (or lost).
    pub(crate) fn release(&self, token: ObjectId) {
        let mut held = self.lock();
        if let Some(count) = held.get_mut(&token) {
            *count -= 1;
            if *count == 0 {
                held.remove(&token);
            }
        }
        self.released.notify_all();
    }

    /// How many jobs this worker holds.
    pub(crate) fn held(&self) -> usize {
        self.lock().values().sum()
    }

    /// Tokens with jobs still held.
    pub(crate) fn tokens(&self) -> Vec<ObjectId> {
        self.lock().keys().copied().collect()
    }

    /// Waits until a job is released or `timeout` passes.
    pub(crate) fn wait_for_release(&self, timeout: Duration) {
        let guard = self.lock();
        let _ = self.released.wait_timeout(guard, timeout);
    }
}

/// Pushes `lease_until` forward for every running job held under `tokens`
/// by `owner`. Returns how many jobs matched.
pub(crate) fn extend(
    queue: &Queue,
    owner: &str,
    tokens: &[ObjectId],
    lease: Duration,
) -> Result<u64, Error> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let result = queue
        .collection()
        .update_many(
            doc! {
                fields::LEASE_TOKEN: {"$in": tokens},
                fields::STATUS: fields::RUNNING,
                fields::LEASE_OWNER: owner,
            },
            doc! {"$set": {fields::LEASE_UNTIL: after(lease)}},
        )
        .run()
        .map_err(|e| queue.db_error("lease extension", &e))?;
    Ok(result.matched_count)
}

/// Finds this worker's running jobs that an operator cancelled (`mongoq
/// cancel` sets `cancel_requested`) and marks them `cancelled`, fenced by
/// owner and status. Returns their ids, so their handlers can be stopped.
/// Running jobs are few (the workers' holdings), so the scan is small.
pub(crate) fn drop_cancelled(queue: &Queue, owner: &str) -> Result<Vec<Bson>, Error> {
    let requested = doc! {
        fields::STATUS: fields::RUNNING,
        fields::LEASE_OWNER: owner,
        fields::CANCEL_REQUESTED: true,
    };
    let ids = queue.find_ids(requested.clone(), "find (cancelled jobs)")?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let mut filter = requested;
    filter.insert("_id", doc! {"$in": &ids});
    queue
        .collection()
        .update_many(
            filter,
            cancelled_update(&format!(
                "cancelled by an operator while running on {owner}"
            )),
        )
        .run()
        .map_err(|e| queue.db_error("update (cancel running jobs)", &e))?;
    Ok(ids)
}

/// The update that ends a job as `cancelled`.
pub(crate) fn cancelled_update(reason: &str) -> Document {
    doc! {
        "$set": {fields::STATUS: fields::CANCELLED, fields::CANCELLED_AT: now(), fields::LAST_ERROR: reason},
        "$unset": {fields::LEASE_OWNER: "", fields::LEASE_TOKEN: "", fields::LEASE_UNTIL: "", fields::CANCEL_REQUESTED: ""},
    }
}

/// Puts every running job whose lease has expired back to `pending`, now
/// (or, when an operator had asked to cancel it, to `cancelled`).
/// Returns how many were rescued.
pub(crate) fn rescue_expired(queue: &Queue, rescuer: &str) -> Result<u64, Error> {
    let at = now();
    queue
        .collection()
        .update_many(
            doc! {fields::STATUS: fields::RUNNING, fields::LEASE_UNTIL: {"$lt": at}, fields::CANCEL_REQUESTED: true},
            cancelled_update("cancelled by an operator; its worker stopped before dropping it"),
        )
        .run()
        .map_err(|e| queue.db_error("lease rescue", &e))?;
    let message = format!(
        "lease expired before the job finished (its worker crashed, stalled or lost the database); rescued by {rescuer}"
    );
    let result = queue
        .collection()
        .update_many(
            doc! {fields::STATUS: fields::RUNNING, fields::LEASE_UNTIL: {"$lt": at}, fields::CANCEL_REQUESTED: {"$ne": true}},
            doc! {
                "$set": {fields::STATUS: fields::PENDING, fields::RUN_AT: at, fields::LAST_ERROR: &message},
                "$unset": {fields::LEASE_OWNER: "", fields::LEASE_TOKEN: "", fields::LEASE_UNTIL: ""},
                "$push": {fields::ERRORS: {"$each": [{"at": at, "error": &message, "worker": rescuer}], "$slice": -crate::outcome::ERROR_HISTORY}},
            },
        )
        .run()
        .map_err(|e| queue.db_error("lease rescue", &e))?;
    Ok(result.modified_count)
}

/// Settings of the keeper thread.
pub(crate) struct Keeper<'a> {
    pub(crate) queue: &'a Queue,
    pub(crate) owner: &'a str,
    pub(crate) lease: Duration,
    pub(crate) leases: &'a Leases,
    pub(crate) rescued: &'a std::sync::atomic::AtomicU64,
    pub(crate) extended: &'a std::sync::atomic::AtomicU64,
    pub(crate) health: &'a Health,
    /// Told the ids of running jobs the keeper found cancelled.
    pub(crate) on_cancel: &'a dyn Fn(&[Bson]),
}

impl Keeper<'_> {
    /// Extends and rescues until `stop` fires. Failures are logged and
    /// retried at the next tick: a missed extension is harmless while the
    /// lease has time left, and the tick is a third of the lease.
    pub(crate) fn run(&self, stop: &Shutdown) {
        let extend_every = (self.lease / 3).max(Duration::from_millis(50));
        let rescue_every =
            (self.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut next_rescue = Instant::now();
        loop {
            self.health.beat(Beat::Keeper);
            let tokens = self.leases.tokens();
            if !tokens.is_empty() {
                match self
                    .health
                    .track(extend(self.queue, self.owner, &tokens, self.lease))
                {
                    Ok(matched) => {
                        self.extended
                            .fetch_add(matched, std::sync::atomic::Ordering::Relaxed);
                        log::debug!("extended {matched} leases under {} claims", tokens.len());
                    }
                    Err(error) => log::warn!("could not extend leases (will retry): {error}"),
                }
                self.health.beat(Beat::Keeper);
                match self.health.track(drop_cancelled(self.queue, self.owner)) {
                    Ok(ids) if !ids.is_empty() => (self.on_cancel)(&ids),
                    Ok(_) => {}
                    Err(error) => {
                        log::warn!("could not check for cancelled jobs (will retry): {error}");
                    }
                }
            }
            if Instant::now() >= next_rescue {
                self.health.beat(Beat::Keeper);
                match self.health.track(rescue_expired(self.queue, self.owner)) {
                    Ok(0) => {}
                    Ok(n) => {
                        self.rescued
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        log::warn!(
                            "rescued {n} jobs whose leases had expired; they will run again"
                        );
                    }
                    Err(error) => {
                        log::warn!("could not rescue expired leases (will retry): {error}");
                    }
                }
                next_rescue = Instant::now() + rescue_every;
            }
            if stop.sleep(extend_every.min(rescue_every)) {
                return;
            }
        }
    }
}
