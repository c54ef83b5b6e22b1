//! Leases: what this worker holds, keeping those leases alive, and rescuing
//! jobs whose leases ran out. The [`crate::worker::lease::keeper`] thread runs these.
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
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson};

use crate::error::Error;
use crate::queue::Queue;
use crate::schema::{cancelled_update, fields, push_error, unset_lease, Status};
use crate::sync::lock;

/// Which job, under which claim.
#[derive(Debug, Clone)]
pub(crate) struct JobKey {
    pub(crate) id: Bson,
    pub(crate) token: ObjectId,
    /// The limited queue whose concurrency slot the job holds; freed when
    /// its outcome is written (or lost).
    pub(crate) slot: Option<Arc<str>>,
    /// The (queue, group) whose group concurrency slot the job holds;
    /// freed like `slot`.
    pub(crate) group_slot: Option<Arc<(String, String)>>,
    /// The claimed copy carried `has_dependents`: the outcome settles them
    /// ([`crate::flow`]). When false, an outcome that ends the job is
    /// fenced against the flag too, so a flag set after the claim is seen.
    pub(crate) dependents: bool,
}

impl crate::job::Job {
    /// The key its outcome is written under.
    pub(crate) fn key(&self) -> JobKey {
        JobKey {
            id: self.id.clone(),
            token: self.lease_token,
            slot: self.slot.clone(),
            group_slot: self.group_slot.clone(),
            dependents: self.has_dependents,
        }
    }
}

/// Jobs this worker holds, by claim token.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<ObjectId, usize>>,
    released: Condvar,
    /// Releases so far, so a waiter can tell one happened since it looked.
    generation: std::sync::atomic::AtomicU64,
}

impl Leases {
    /// Records `count` jobs claimed under `token`.
    pub(crate) fn add(&self, token: ObjectId, count: usize) {
        if count > 0 {
            *lock(&self.held).entry(token).or_insert(0) += count;
        }
    }

    /// Records that one job of `token` was written back (or lost).
    pub(crate) fn release(&self, token: ObjectId) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(&token) {
            *count -= 1;
            if *count == 0 {
                held.remove(&token);
            }
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.released.notify_all();
    }

    /// The count of releases so far (see [`Leases::wait_for_release_since`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until a job was released after `generation` was read, or
    /// `timeout` passes; returns at once if one already was.
    pub(crate) fn wait_for_release_since(&self, generation: u64, timeout: Duration) {
        let guard = lock(&self.held);
        let _ = self
            .released
            .wait_timeout_while(guard, timeout, |_| self.generation() == generation);
    }

    /// How many jobs this worker holds.
    pub(crate) fn held(&self) -> usize {
        lock(&self.held).values().sum()
    }

    /// Tokens with jobs still held.
    pub(crate) fn tokens(&self) -> Vec<ObjectId> {
        lock(&self.held).keys().copied().collect()
    }

    /// Waits until a job is released or `timeout` passes.
    pub(crate) fn wait_for_release(&self, timeout: Duration) {
        let guard = lock(&self.held);
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
                fields::STATUS: Status::Running,
                fields::LEASE_OWNER: owner,
            },
            doc! {"$set": {fields::LEASE_UNTIL: queue.clock().after(lease)}},
        )
        .run()
        .map_err(|e| queue.db_error("lease extension", &e))?;
    Ok(result.matched_count)
}

/// Puts every running job whose lease has expired back to `pending`, now
/// (or, when an operator had asked to cancel it, to `cancelled`).
/// Returns how many were rescued.
pub(crate) fn rescue_expired(queue: &Queue, rescuer: &str) -> Result<u64, Error> {
    // Expired by the latest reading of the clock that has certainly passed.
    let expired_before = queue.clock().passed();
    let at = queue.clock().now();
    queue
        .collection()
        .update_many(
            doc! {fields::STATUS: Status::Running, fields::LEASE_UNTIL: {"$lt": expired_before}, fields::CANCEL_REQUESTED: true},
            cancelled_update("cancelled by an operator; its worker stopped before dropping it", at),
        )
        .run()
        .map_err(|e| queue.db_error("lease rescue", &e))?;
    let message = format!(
        "lease expired before the job finished (its worker crashed, stalled or lost the database); rescued by {rescuer}"
    );
    let result = queue
        .collection()
        .update_many(
            doc! {fields::STATUS: Status::Running, fields::LEASE_UNTIL: {"$lt": expired_before}, fields::CANCEL_REQUESTED: {"$ne": true}},
            doc! {
                "$set": {fields::STATUS: Status::Pending, fields::RUN_AT: at, fields::LAST_ERROR: &message},
                "$unset": unset_lease(),
                "$push": push_error(doc! {"at": at, "error": &message, "worker": rescuer}),
                "$rename": crate::schema::recount(),
            },
        )
        .run()
        .map_err(|e| queue.db_error("lease rescue", &e))?;
    Ok(result.modified_count)
}
