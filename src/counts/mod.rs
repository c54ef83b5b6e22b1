//! Counts that do not count: how many jobs each queue has in each status,
//! exact, at the cost of one index seek however many jobs there are.
//!
//! # How a job is counted
//!
//! `<collection>_counts` holds one document, the *ledger* ([`ledger`]):
//! counters by queue and key (the key is the status; see [`key`]). Each
//! job says on itself what it is counted under (`counted`), so a job is
//! counted once, and only the jobs not counted yet are ever read:
//!
//! - A job **inserted** by anyone (mongoq, `mongosh`, a shell script) has
//!   no `counted`: it is not counted yet.
//! - A write that **changes a job's status** renames `counted` to
//!   `was_counted` in the same update ([`crate::schema::recount`]): every
//!   mongoq writer does. The job is then "not counted yet", and says what
//!   it was counted under until now.
//! - The **reconciler** ([`reconcile`]), which every worker runs about once
//!   a second (one at a time, under the ledger's lock), reads the jobs
//!   with no `counted` (an index equality), moves their counts in the
//!   ledger, and marks them `counted: <key>`, through a journal that a
//!   process killed half-way leaves for the next to finish.
//! - **Reads** ([`stats`]) take the ledger and add the jobs not counted
//!   yet (the same index equality), so they are exact whether or not the
//!   reconciler has caught up; it only keeps that second read short.
//! - **Deletes** by mongoq (`purge`, the dashboard, a flow's rollback) go
//!   through the journal too ([`delete`]). MongoDB's TTL deletes no one
//!   sees: a status with a retention TTL is counted directly instead.
//!
//! A status changed by hand in `mongosh` without renaming `counted` (or a
//! job deleted by hand) is not seen: `mongoq stats --recount` rebuilds the
//! counters from the jobs (DESIGN.md, "Counts").
//!
//! # What it costs
//!
//! One write per job per status it is seen in by the reconciler: a
//! pending job is left to reads for its first minute ([`ADOPT_AFTER`]), so
//! in a queue that drains as fast as it fills a job is first read when it
//! is already finished: one write per job. A job that waits longer in a
//! backlog is written twice (pending, then its end).

pub mod delete;
pub mod key;
pub mod ledger;
pub mod oldest;
pub mod reconcile;
pub mod stats;

pub use reconcile::Reconciled;
pub use stats::Stats;

use std::time::Duration;

use mongodb::bson::Document;
use mongodb::sync::Collection;

use crate::queue::indexes::COUNTED_INDEX;
use crate::queue::Queue;

/// The ledger's `_id` in `<collection>_counts`.
pub(crate) const LEDGER: &str = "counts";
/// How long the ledger's lock holds without being taken again: a round
/// of the reconciler takes about a second, and renews it after each write.
pub const LOCK_LEASE: Duration = Duration::from_secs(20);
/// Jobs a round of the reconciler counts at most: a round's read returns
/// them all at once, and a large one stalls the claims beside it.
pub const BATCH: usize = 20_000;
/// How long a worker waits after it starts before its first round: its
/// first claims come first.
pub const FIRST_ROUND_AFTER: Duration = Duration::from_secs(10);
/// How long a pending job waits before a round counts it (see
/// [`reconcile`]).
pub const ADOPT_AFTER: Duration = Duration::from_secs(60);
/// How often a worker runs a round while there is nothing to count.
pub const EVERY: Duration = Duration::from_secs(1);

/// The counts of a queue's collection.
pub struct Counts {
    queue: Queue,
    ledger: Collection<Document>,
    /// Who this process is to the lock.
    me: String,
}

impl Counts {
    /// The counts kept beside `queue`'s collection.
    pub fn new(queue: &Queue) -> Counts {
        let ledger = queue
            .database()
            .collection(&format!("{}_counts", queue.collection().name()));
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Counts {
            queue: queue.clone(),
            ledger,
            me: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
        }
    }

    /// The ledger's collection (`<collection>_counts`).
    pub fn collection(&self) -> &Collection<Document> {
        &self.ledger
    }
}
