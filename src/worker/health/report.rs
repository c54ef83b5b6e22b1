//! What a worker did: one set of counters that every thread adds to, and
//! its snapshot, the [`Report`] that `run` returns and the metrics show.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
    /// Attempts whose handler said "not now" (snoozed; attempt not charged).
    pub snoozed: u64,
    /// Jobs that expired before they started (claimed ones this worker
    /// ended, and those its sweep cancelled).
    pub expired: u64,
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
    /// Claim batches that won jobs.
    pub claim_batches: u64,
    /// Claims made (batches, and claims that found nothing).
    pub claim_attempts: u64,
    /// Jobs the claims asked for; those not won (`claim_candidates -
    /// claimed`) had been taken by another worker since the read-ahead.
    pub claim_candidates: u64,
    /// Round trips taking concurrency slots and rate starts for claims.
    pub limit_round_trips: u64,
    /// Round trips of the control thread (controls, heartbeat, slots).
    pub control_round_trips: u64,
    /// Concurrency slots taken back from dead workers.
    pub rescued_slots: u64,
    /// Waiting jobs this worker's outcomes released (made pending).
    pub dependents_released: u64,
    /// Waiting jobs cancelled because a dependency failed or was cancelled.
    pub dependents_cancelled: u64,
    /// Whether the grace period ran out with jobs still running.
    pub grace_exceeded: bool,
}

/// The worker's counters. Each thread adds to its own few; a snapshot
/// reads them all without stopping anyone.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) claimed: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) snoozed: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) rescued: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) lease_extensions: AtomicU64,
    pub(crate) claim_round_trips: AtomicU64,
    pub(crate) outcome_writes: AtomicU64,
    pub(crate) claim_batches: AtomicU64,
    pub(crate) claim_attempts: AtomicU64,
    pub(crate) claim_candidates: AtomicU64,
    pub(crate) limit_round_trips: AtomicU64,
    pub(crate) control_round_trips: AtomicU64,
    pub(crate) rescued_slots: AtomicU64,
    pub(crate) dependents_released: AtomicU64,
    pub(crate) dependents_cancelled: AtomicU64,
    /// The latest `run_at` (ms since the epoch, server clock) of a retry
    /// this worker wrote: a `--drain` worker is not done before it.
    pub(crate) own_retry_due_ms: AtomicI64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The counters as a report.
    pub(crate) fn snapshot(&self, grace_exceeded: bool) -> Report {
        let read = |counter: &AtomicU64| counter.load(Relaxed);
        Report {
            claimed: read(&self.claimed),
            completed: read(&self.completed),
            retried: read(&self.retried),
            failed: read(&self.failed),
            snoozed: read(&self.snoozed),
            expired: read(&self.expired),
            released: read(&self.released),
            lost: read(&self.lost),
            rescued: read(&self.rescued),
            cancelled: read(&self.cancelled),
            lease_extensions: read(&self.lease_extensions),
            claim_round_trips: read(&self.claim_round_trips),
            outcome_writes: read(&self.outcome_writes),
            claim_batches: read(&self.claim_batches),
            claim_attempts: read(&self.claim_attempts),
            claim_candidates: read(&self.claim_candidates),
            limit_round_trips: read(&self.limit_round_trips),
            control_round_trips: read(&self.control_round_trips),
            rescued_slots: read(&self.rescued_slots),
            dependents_released: read(&self.dependents_released),
            dependents_cancelled: read(&self.dependents_cancelled),
            grace_exceeded,
        }
    }
}
