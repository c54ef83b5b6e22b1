//! Upkeep of producers' documents that the claim could never take: a
//! pending job whose `queue` is not a string matches no worker's queues
//! and would wait forever, so it is marked `failed` with the reason. The
//! filter names the wrong types one by one (a `$type` list, whose bounds
//! are exact ranges of the claim index: a `$not` would range over every
//! pending job), so when there is nothing to fix it costs index seeks. The
//! claimer's reader thread runs it every [`MALFORMED_CHECK`] and when the
//! claimer is idle, at most that often, never on the claim path.
//!
//! A job with no `priority` (a shell producer's) needs no upkeep: the
//! read-ahead ranks it as 0 without writing to it.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};

use crate::error::Error;
use crate::queue::Queue;
use crate::schema::{fields, Status};

/// How often pending jobs with a `queue` of the wrong type are looked for.
pub(crate) const MALFORMED_CHECK: Duration = Duration::from_secs(30);

/// Every BSON type but a string and `null` (what a job's `queue` may be).
const NOT_A_QUEUE_NAME: [&str; 17] = [
    "double",
    "int",
    "long",
    "decimal",
    "object",
    "array",
    "binData",
    "objectId",
    "bool",
    "date",
    "timestamp",
    "regex",
    "javascript",
    "symbol",
    "undefined",
    "minKey",
    "maxKey",
];

/// When the check last ran.
#[derive(Default)]
pub(crate) struct Upkeep {
    last_check: Option<Instant>,
}

impl Upkeep {
    /// Fails the malformed pending jobs, at most every [`MALFORMED_CHECK`].
    /// Returns the round trips it made.
    pub(crate) fn run(&mut self, queue: &Queue) -> Result<u64, Error> {
        if self
            .last_check
            .is_some_and(|at| at.elapsed() < MALFORMED_CHECK)
        {
            return Ok(0);
        }
        let round_trips = fail_malformed(
            queue,
            doc! {fields::QUEUE: {"$type": NOT_A_QUEUE_NAME.to_vec()}},
            "malformed job: `queue` must be a string naming the queue (or absent for the default queue)",
        )?;
        self.last_check = Some(Instant::now());
        Ok(round_trips)
    }
}

/// Marks `failed`, with `reason`, the pending jobs that also match `bad`.
/// Returns the round trips made.
fn fail_malformed(queue: &Queue, bad: Document, reason: &str) -> Result<u64, Error> {
    let mut filter = doc! {fields::STATUS: Status::Pending};
    filter.extend(bad);
    let result = queue
        .collection()
        .update_many(
            filter,
            doc! {"$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: queue.clock().now(), fields::LAST_ERROR: reason}, "$rename": crate::schema::recount()},
        )
        .run()
        .map_err(|e| queue.db_error("update (fail malformed jobs)", &e))?;
    if result.modified_count > 0 {
        log::warn!("{} jobs failed: {reason}", result.modified_count);
    }
    Ok(1)
}
