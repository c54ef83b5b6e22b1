//! The claim: how a worker takes a batch of jobs, atomically, in few round
//! trips.
//!
//! MongoDB has no "update N documents and return them" (findAndModify takes
//! one), so a batch claim is built from three documented operations:
//!
//! 1. **Read ahead** the `_id`s of the next eligible jobs, in queue order
//!    (`priority` desc, `run_at`, `_id`), several batches at once, through
//!    the `mongoq_claim` index. Only `_id`s travel.
//! 2. **Claim** a batch of those ids with one `updateMany` whose filter
//!    repeats `status: "pending"` and the `run_at` bound. Each document's
//!    update is atomic, so a job another worker took in between simply does
//!    not match: two workers never hold the same job. All jobs claimed get
//!    this claim's fresh `lease_token` and `attempts + 1`.
//! 3. **Read** the claimed documents back by `lease_token`, so the worker
//!    sees exactly what it won, as it is now (not as the read-ahead saw it).
//!
//! Steps 2–3 cost two round trips per batch and step 1 one per several
//! batches. Workers that read the same window claim runs starting at random
//! places within the head's priority, so they seldom collide; when claims
//! keep winning less than half of what they ask for, the window is stale and
//! is read again rather than fought over. The read-ahead is also re-read after
//! `max_window_age`, so a new high-priority job waits at most that long.
//!
//! Retrying a claim after a lost reply is safe: the same token is reused,
//! the documents it already took no longer match `pending`, and step 3
//! finds them by token.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use rand::Rng;

use crate::error::Error;
use crate::job::{fields, now};
use crate::lease::lease_end;
use crate::queue::Queue;
use crate::stats::eligible_filter;

/// How many ids one read-ahead fetches: twenty batches, at least 2,000 and
/// at most 5,000 (or one batch, if that is larger).
///
/// A read-ahead costs one query whose price grows with the backlog on some
/// servers (everything the filter matches is examined) and is cheap on
/// others (the index scan stops at the limit); reading many batches' ids
/// at once makes either cheap per job, even with small batches. Ids are
/// ~20 bytes, so 5,000 is ~100 KB.
fn read_ahead_size(batch_size: usize) -> usize {
    (batch_size * 20).clamp(2_000, 5_000).max(batch_size)
}

/// The sort of the queue: priority first, then age.
pub(crate) fn queue_order() -> Document {
    doc! {fields::PRIORITY: -1, fields::RUN_AT: 1, "_id": 1}
}

/// A claim that won some jobs.
pub(crate) struct Claimed {
    pub(crate) token: ObjectId,
    pub(crate) documents: Vec<Document>,
}

/// Claims batches for one worker; owns the read-ahead window.
pub(crate) struct Claimer {
    queue: Queue,
    owner: String,
    lease: Duration,
    /// `(_id, priority)` of eligible jobs, in queue order.
    window: VecDeque<(Bson, Bson)>,
    /// Claims in a row that won less than half of what they asked for.
    contended: u32,
    window_read_at: Instant,
    max_window_age: Duration,
    last_normalized: Option<Instant>,
    /// Round trips made, for `bench` and stats.
    pub(crate) round_trips: u64,
}

impl Claimer {
    pub(crate) fn new(
        queue: Queue,
        owner: String,
        lease: Duration,
        max_window_age: Duration,
    ) -> Claimer {
        Claimer {
            queue,
            owner,
            lease,
            window: VecDeque::new(),
            contended: 0,
            window_read_at: Instant::now(),
            max_window_age,
            last_normalized: None,
            round_trips: 0,
        }
    }

    /// Claims up to `count` jobs. An empty result means nothing is eligible
    /// right now.
    pub(crate) fn claim(
        &mut self,
        count: usize,
        batch_size: usize,
    ) -> Result<Option<Claimed>, Error> {
        if count == 0 {
            return Ok(None);
        }
        let token = ObjectId::new();
        // Two passes at most: the second only after a stale or contended
        // window was dropped.
        for _ in 0..2 {
            let fresh =
                if self.window.is_empty() || self.window_read_at.elapsed() > self.max_window_age {
                    self.read_window(read_ahead_size(batch_size))?;
                    true
                } else {
                    false
                };
            if self.window.is_empty() {
                return Ok(None);
            }
            let ids = self.take_ids(count);
            let won = self.claim_ids(&ids, token)?;
            if won * 2 < ids.len() {
                self.contended += 1;
                if self.contended >= 2 {
                    // Other workers keep beating us to this window: it is
                    // stale, read a fresh one.
                    self.window.clear();
                    self.contended = 0;
                }
            } else {
                self.contended = 0;
            }
            if won > 0 {
                let documents = self.read_claimed(token)?;
                return Ok(Some(Claimed { token, documents }));
            }
            if fresh {
                // A window read just now was entirely taken by others;
                // let the caller come back rather than spin.
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Takes `count` ids from the window: a run starting at a random place
    /// among the ids that share the head's priority, so workers reading the
    /// same window mostly claim different ids, and lower priorities still
    /// wait for higher ones.
    fn take_ids(&mut self, count: usize) -> Vec<Bson> {
        let head = self.window[0].1.clone();
        let same = self.window.iter().take_while(|(_, p)| *p == head).count();
        let take = count.min(self.window.len());
        let start = if same > take {
            rand::rng().random_range(0..=same - take)
        } else {
            0
        };
        self.window
            .drain(start..start + take)
            .map(|(id, _)| id)
            .collect()
    }

    fn read_window(&mut self, limit: usize) -> Result<(), Error> {
        self.normalize_priorities()?;
        let cursor = self
            .queue
            .collection()
            .find(eligible_filter(now()))
            .sort(queue_order())
            .projection(doc! {"_id": 1, fields::PRIORITY: 1})
            .limit(limit as i64)
            .batch_size(limit as u32)
            .run()
            .map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
        self.round_trips += 1;
        self.window.clear();
        for document in cursor {
            let document =
                document.map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
            if let Some(id) = document.get("_id") {
                let priority = document
                    .get(fields::PRIORITY)
                    .cloned()
                    .unwrap_or(Bson::Null);
                self.window.push_back((id.clone(), priority));
            }
        }
        self.window_read_at = Instant::now();
        Ok(())
    }

    fn claim_ids(&mut self, ids: &[Bson], token: ObjectId) -> Result<usize, Error> {
        let mut filter = eligible_filter(now());
        filter.insert("_id", doc! {"$in": ids});
        let result = self
            .queue
            .collection()
            .update_many(
                filter,
                doc! {
                    "$set": {
                        fields::STATUS: fields::RUNNING,
                        fields::LEASE_OWNER: &self.owner,
                        fields::LEASE_TOKEN: token,
                        fields::LEASE_UNTIL: lease_end(self.lease),
                        fields::STARTED_AT: now(),
                    },
                    "$inc": {fields::ATTEMPTS: 1},
                },
            )
            .run()
            .map_err(|e| self.queue.db_error("update (claim)", &e))?;
        self.round_trips += 1;
        Ok(result.modified_count as usize)
    }

    fn read_claimed(&mut self, token: ObjectId) -> Result<Vec<Document>, Error> {
        let cursor = self
            .queue
            .collection()
            .find(doc! {fields::LEASE_TOKEN: token})
            .sort(queue_order())
            .run()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))?;
        self.round_trips += 1;
        cursor
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))
    }

    /// Gives `priority: 0` to pending documents that have none (producers
    /// such as `mongosh` scripts may omit it), so they sort as DESIGN.md
    /// says instead of after every negative priority. An equality on `null`
    /// is an exact range of the claim index, so when there is nothing to fix
    /// this costs one index seek. Runs at most once a second.
    fn normalize_priorities(&mut self) -> Result<(), Error> {
        if self
            .last_normalized
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        self.queue
            .collection()
            .update_many(
                doc! {fields::STATUS: fields::PENDING, fields::PRIORITY: Bson::Null},
                doc! {"$set": {fields::PRIORITY: 0}},
            )
            .run()
            .map_err(|e| self.queue.db_error("update (priority defaults)", &e))?;
        self.round_trips += 1;
        self.last_normalized = Some(Instant::now());
        Ok(())
    }
}
