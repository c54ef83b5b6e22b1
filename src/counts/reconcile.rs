//! The reconciler: counts the jobs not counted yet (a producer's plain
//! insert, a job whose status changed) and marks them counted, a batch at
//! a time, through the ledger's journal.
//!
//! Every worker runs [`Counts::reconcile`] about once a second; the lock
//! lets one of them at a time do a round, and is let go after each round
//! so that `mongoq purge` and the other workers get their turn. The jobs it
//! reads are exactly those with no `counted` (an index equality on
//! `mongoq_counted`), so a steady queue costs a round one index seek and,
//! per job, one write: the mark.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};

use super::key::{key_of, queue_of};
use super::ledger::{id_key, moves_of, Deltas, Group};
use super::oldest::Floors;
use super::{Counts, COUNTED_INDEX};
use crate::error::Error;
use crate::queue::Documents;
use crate::schema::fields;

/// After a round that stopped at its batch, the counting thread pauses this
/// many times as long as the round took (see [`Counts::run`]): at a
/// million pending jobs on the test server, pausing as long as the round
/// (half the time) made a fleet's longest gap with no completion 2.2 times
/// the bare loop's batch interval.
const ROUND_PAUSE: u32 = 3;

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// Another process holds the lock.
    Busy,
    /// It counted this many jobs; `more` when it stopped at its batch.
    Counted { jobs: u64, more: bool },
}

impl Counts {
    /// One round: finishes a change a dead process left, then counts up to
    /// `batch` jobs not counted yet.
    pub fn reconcile(&self, batch: usize) -> Result<Reconciled, Error> {
        self.reconcile_with(batch, super::ADOPT_AFTER)
    }

    /// [`Counts::reconcile`], counting pending jobs once they have waited
    /// `adopt_after` (zero: all of them, as a test or a bench wants).
    pub fn reconcile_with(&self, batch: usize, adopt_after: Duration) -> Result<Reconciled, Error> {
        if !self.lock()? {
            return Ok(Reconciled::Busy);
        }
        let round = self.reconcile_locked(batch, adopt_after, None);
        self.unlock();
        round
    }

    /// The worker's counting thread: a round about every [`super::EVERY`]
    /// (while a round stops at its batch, again after [`ROUND_PAUSE`]
    /// times as long as it took) until `stop`.
    /// Errors are logged and the round tried again: the counts are exact
    /// without it, only slower to read.
    pub fn run(&self, stop: &crate::shutdown::Shutdown) {
        if stop.sleep(super::FIRST_ROUND_AFTER) {
            return;
        }
        let mut failing = false;
        loop {
            let started = Instant::now();
            let pause = match self.reconcile_until(super::BATCH, super::ADOPT_AFTER, stop) {
                Ok(Reconciled::Counted { jobs, more }) => {
                    failing = false;
                    if jobs > 0 {
                        log::debug!("counted {jobs} jobs");
                    }
                    if more {
                        // Paced as a whole (its read too): a round's read
                        // of a big backlog costs what the backlog holds on
                        // some servers, as the claims' reads do, so
                        // counting takes at most a quarter of the time it
                        // shares with them.
                        started.elapsed() * ROUND_PAUSE
                    } else {
                        super::EVERY
                    }
                }
                Ok(Reconciled::Busy) => super::EVERY,
                Err(error) => {
                    if !failing {
                        log::warn!("counting jobs failed (stats stay exact, only slower): {error}");
                    }
                    failing = true;
                    super::EVERY * 5
                }
            };
            if stop.sleep(pause) {
                return;
            }
        }
    }

    /// A round that ends early (after the thousand under way) on `stop`.
    fn reconcile_until(
        &self,
        batch: usize,
        adopt_after: Duration,
        stop: &crate::shutdown::Shutdown,
    ) -> Result<Reconciled, Error> {
        if !self.lock()? {
            return Ok(Reconciled::Busy);
        }
        let round = self.reconcile_locked(batch, adopt_after, Some(stop));
        self.unlock();
        round
    }

    fn reconcile_locked(
        &self,
        batch: usize,
        adopt_after: Duration,
        stop: Option<&crate::shutdown::Shutdown>,
    ) -> Result<Reconciled, Error> {
        let ledger = self.read_ledger()?;
        if !ledger.journal.is_empty() {
            log::info!("finishing a change of the counts that a stopped process left");
            self.settle(&ledger.journal)?;
        }
        // A pending job is counted once it has waited ADOPT_AFTER: one
        // that drains sooner is then counted once, when it ends, and reads
        // count the young ones meanwhile (a minute of inserts at most).
        let young = super::oldest::id_at(
            self.queue.now().timestamp_millis() - adopt_after.as_millis() as i64 + 1_000,
        );
        let jobs = self
            .queue
            .collection()
            .find(doc! {
                fields::COUNTED: Bson::Null,
                "$or": [
                    {fields::STATUS: {"$ne": crate::schema::Status::Pending}},
                    {"_id": {"$lt": young}},
                ],
            })
            .projection(doc! {
                fields::QUEUE: 1,
                fields::STATUS: 1,
                fields::EXPIRED: 1,
                fields::WAS_COUNTED: 1,
                fields::RUN_AT: 1,
            })
            .hint(mongodb::options::Hint::Name(COUNTED_INDEX.to_string()))
            .limit(i64::try_from(batch).unwrap_or(i64::MAX))
            .run()
            .documents(&self.queue, "find (jobs to count)")?;
        if jobs.is_empty() {
            return Ok(Reconciled::Counted {
                jobs: 0,
                more: false,
            });
        }
        // A journal per thousand jobs: a read waits for the one under way
        // (see stats), so each is short; and the round is paced, writing
        // at most half the time, so the claims it shares the server with
        // keep going.
        let mut jobs_counted = 0;
        for chunk in jobs.chunks(super::ledger::ID_CHUNK) {
            let started = Instant::now();
            let (deltas, journal) = plan(chunk);
            let pending: Vec<&mongodb::bson::Document> = chunk
                .iter()
                .filter(|job| key_of(job) == crate::schema::Status::Pending.as_str())
                .collect();
            if !self.begin(&deltas, &journal, Floors::lowered_by(&pending))? {
                // The lock expired under a slow round; the next holder counts.
                return Ok(Reconciled::Busy);
            }
            jobs_counted += self.settle(&journal)?;
            if stop.is_some_and(|stop| stop.sleep(started.elapsed())) {
                break;
            }
            if stop.is_none() {
                std::thread::sleep(started.elapsed());
            }
        }
        Ok(Reconciled::Counted {
            jobs: jobs_counted,
            more: jobs.len() >= batch,
        })
    }
}

/// The moves and the journal that count `jobs` (as read: not counted).
pub(super) fn plan(jobs: &[mongodb::bson::Document]) -> (Deltas, Vec<Group>) {
    let mut groups: BTreeMap<(String, Option<String>, String, String), Group> = BTreeMap::new();
    for job in jobs {
        let queue = queue_of(job);
        let from = job.get_str(fields::WAS_COUNTED).ok().map(str::to_string);
        let to = key_of(job);
        let status = job.get(fields::STATUS).cloned().unwrap_or(Bson::Null);
        groups
            .entry((
                queue.clone(),
                from.clone(),
                to.clone(),
                id_key(Some(&status)),
            ))
            .or_insert_with(|| Group {
                queue,
                from,
                to: Some(to),
                status,
                filter: None,
                ids: Vec::new(),
            })
            .ids
            .push(job.get("_id").cloned().unwrap_or(Bson::Null));
    }
    let journal: Vec<Group> = groups.into_values().collect();
    (moves_of(&journal), journal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn a_plan_groups_by_queue_and_move_and_counts_each_job_once() {
        let jobs = vec![
            doc! {"_id": 1, "status": "pending"},
            doc! {"_id": 2, "status": "pending", "queue": "mail"},
            doc! {"_id": 3, "status": "completed", "was_counted": "pending"},
            doc! {"_id": 4, "status": "completed", "was_counted": "pending"},
            doc! {"_id": 5, "status": "cancelled", "expired": true, "was_counted": "pending"},
            doc! {"_id": 6, "status": "pending", "was_counted": "pending"},
        ];
        let (deltas, journal) = plan(&jobs);
        let get = |q: &str, k: &str| deltas.get(&(q.to_string(), k.to_string())).copied();
        assert_eq!(get("default", "pending"), Some(1 - 2 - 1));
        assert_eq!(get("default", "completed"), Some(2));
        assert_eq!(get("default", "expired"), Some(1));
        assert_eq!(get("mail", "pending"), Some(1));
        let ids: usize = journal.iter().map(|g| g.ids.len()).sum();
        assert_eq!(ids, 6, "every job is marked, even one whose key came back");
    }
}
