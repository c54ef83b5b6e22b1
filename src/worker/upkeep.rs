//! Upkeep of producers' documents, so that the claim can order and route
//! them: a job without `priority` gets the default `0` (else it would sort
//! after every negative priority), and a job whose `queue` is not a string
//! (it matches no worker's queues and would wait forever) is marked
//! `failed` with the reason. Both filters are exact ranges of the claim
//! index, so when there is nothing to fix each costs one index seek; the
//! fetcher runs them before a read-ahead, at most once a second.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};

use crate::error::Error;
use crate::queue::filters::queue_condition;
use crate::queue::Queue;
use crate::schema::{fields, Status};

/// How often pending jobs with a `queue` of the wrong type are looked for.
const MALFORMED_QUEUE_CHECK: Duration = Duration::from_secs(10);

/// When each fix last ran.
#[derive(Default)]
pub(crate) struct Upkeep {
    last_normalized: Option<Instant>,
    last_unroutable_check: Option<Instant>,
}

impl Upkeep {
    /// Gives `priority: 0` to pending documents that have none (producers
    /// such as `mongosh` scripts may omit it), so they sort as DESIGN.md
    /// says instead of after every negative priority. An equality on `null`
    /// is an exact range of the claim index, so when there is nothing to fix
    /// this costs one index seek. Runs at most once a second.
    /// Returns the round trips it made.
    pub(crate) fn run(&mut self, queue: &Queue, queues: &[String]) -> Result<u64, Error> {
        let mut round_trips = 0;
        if self
            .last_normalized
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Ok(0);
        }
        let mut mine = doc! {fields::STATUS: Status::Pending, fields::PRIORITY: Bson::Null};
        mine.insert(fields::QUEUE, queue_condition(queues));
        queue
            .collection()
            .update_many(mine, doc! {"$set": {fields::PRIORITY: 0}})
            .run()
            .map_err(|e| queue.db_error("update (priority defaults)", &e))?;
        round_trips += 1;
        if self
            .last_unroutable_check
            .is_none_or(|at| at.elapsed() >= MALFORMED_QUEUE_CHECK)
        {
            round_trips += fail_unroutable(queue)?;
            self.last_unroutable_check = Some(Instant::now());
        }
        self.last_normalized = Some(Instant::now());
        Ok(round_trips)
    }
}

/// A pending job whose `queue` is not a string matches no worker's
/// queues and would wait forever; mark it failed with the reason. The
/// `$type` bounds are a range of the claim index, so this is one seek
/// when there is nothing to fix.
fn fail_unroutable(queue: &Queue) -> Result<u64, Error> {
    let error = "malformed job: `queue` must be a string naming the queue (or absent for the default queue)";
    let result = queue
        .collection()
        .update_many(
            doc! {
                fields::STATUS: Status::Pending,
                fields::QUEUE: {"$exists": true, "$not": {"$type": ["string", "null"]}},
            },
            doc! {"$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: queue.clock().now(), fields::LAST_ERROR: error}},
        )
        .run()
        .map_err(|e| queue.db_error("update (fail malformed queue)", &e))?;
    if result.modified_count > 0 {
        log::warn!(
            "{} jobs failed: their `queue` field is not a string",
            result.modified_count
        );
    }
    Ok(1)
}
