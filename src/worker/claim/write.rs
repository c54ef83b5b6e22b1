//! The claim's writes: the `updateMany` that takes a batch, the read back
//! of what it took, and the jobs no claim can take (failed with the reason).

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::options::Hint;

use super::Claimer;
use crate::clock::Clock;
use crate::error::{server_code_is, Error};
use crate::fleet::window::Key;
use crate::queue::filters::{eligible_filter, queue_condition, queue_order};
use crate::queue::Queue;
use crate::schema::{fields, id_text, Status};
use crate::worker::settle::oversized::{fail_oversized, too_large};

/// The server's code for an update operator meeting the wrong type (`$inc`
/// on an `attempts` that is not a number).
const TYPE_MISMATCH: i32 = 14;

impl Claimer {
    /// Claims the candidates that are still eligible: one `updateMany`.
    /// Returns how many it won, and whether it fell back to one job at a
    /// time (then what the token holds must be read back however many
    /// that won: the `updateMany` may have stopped half-way).
    pub(super) fn claim_documents(
        &mut self,
        candidates: &[Key],
        token: ObjectId,
    ) -> Result<(usize, bool), Error> {
        if candidates.is_empty() {
            return Ok((0, false));
        }
        let ids: Vec<Bson> = candidates.iter().map(|k| k.id.clone()).collect();
        let filter = self.claim_filter(doc! {"$in": &ids});
        let result = self
            .queue
            .collection()
            .update_many(
                filter,
                claim_update(token, &self.owner, self.lease, self.queue.clock()),
            )
            .hint(by_id())
            .run();
        self.round_trips += 1;
        match result {
            Ok(result) => Ok((result.modified_count as usize, false)),
            Err(error) if too_large(&error) || type_mismatch(&error) => {
                // One job is so close to 16 MB that the claim's fields do
                // not fit, or a producer set its `attempts` to something
                // `$inc` refuses since the read-ahead. updateMany stops at
                // it, maybe half-way, so claim one by one and fail that job;
                // the read back returns what this token holds.
                Ok((self.claim_one_by_one(&ids, token)?, true))
            }
            Err(error) => Err(self.queue.db_error("update (claim)", &error)),
        }
    }

    pub(super) fn claim_one_by_one(
        &mut self,
        ids: &[Bson],
        token: ObjectId,
    ) -> Result<usize, Error> {
        let mut won = 0;
        for id in ids {
            let result = self
                .queue
                .collection()
                .update_one(
                    self.claim_filter(id.clone()),
                    claim_update(token, &self.owner, self.lease, self.queue.clock()),
                )
                .run();
            self.round_trips += 1;
            match result {
                Ok(result) => won += result.modified_count as usize,
                Err(error) if too_large(&error) => fail_oversized(&self.queue, id)?,
                Err(error) if type_mismatch(&error) => self.fail_unclaimable(id.clone(), None)?,
                Err(error) => return Err(self.queue.db_error("update (claim)", &error)),
            }
        }
        Ok(won)
    }

    /// Which documents a claim may take: eligible jobs of this worker's
    /// queues with `_id` matching `id` (one id or an `$in`). `_id` comes
    /// first and the claim hints the `_id` index: the ids bound the claim
    /// to a batch, where a plan on the claim index would examine every
    /// pending job. The queues are repeated because a shared window only
    /// proposes.
    pub(super) fn claim_filter(&self, id: impl Into<Bson>) -> Document {
        let mut filter = doc! {"_id": id.into()};
        filter.extend(eligible_filter(self.queue.clock().passed()));
        filter.insert(fields::QUEUE, queue_condition(&self.queues));
        // An expired job is never claimed (see crate::expiry).
        filter.insert(
            fields::EXPIRES_AT,
            crate::expiry::alive_condition(self.queue.clock().latest()),
        );
        filter
    }

    /// Fails a job no claim can take (see [`fail_unclaimable`]).
    pub(super) fn fail_unclaimable(
        &mut self,
        id: Bson,
        attempts: Option<&Bson>,
    ) -> Result<(), Error> {
        self.round_trips += 1;
        fail_unclaimable(&self.queue, id, attempts)
    }

    /// The jobs this claim's token holds, as they are now, in queue order.
    pub(super) fn read_claimed(
        &mut self,
        token: ObjectId,
        asked: usize,
    ) -> Result<Vec<Document>, Error> {
        // All of them in the first reply: the server's default first
        // batch (101 documents) would cost a `getMore` for a bigger claim,
        // and a batch of exactly what it holds leaves the cursor open for
        // an empty one.
        let batch = u32::try_from(asked.saturating_add(1)).unwrap_or(u32::MAX);
        let cursor = self
            .queue
            .collection()
            .find(doc! {fields::LEASE_TOKEN: token, fields::STATUS: Status::Running})
            .sort(queue_order())
            .batch_size(batch)
            .run()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))?;
        self.round_trips += 1;
        cursor
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))
    }
}

/// Fails, with the reason, a pending job whose `attempts` is not a number
/// (`attempts` as read, or `None` when a claim's `$inc` met it): every
/// claim's `$inc` would fail on it. One write.
pub(super) fn fail_unclaimable(
    queue: &Queue,
    id: Bson,
    attempts: Option<&Bson>,
) -> Result<(), Error> {
    let (error, matches) = match attempts {
        Some(attempts) => (
            format!(
                "malformed job: `attempts` is owned by the worker and must be a number, but it is {}",
                attempts.clone().into_relaxed_extjson()
            ),
            attempts.clone(),
        ),
        None => (
            "malformed job: `attempts` is owned by the worker and must be a number".to_string(),
            Bson::Document(doc! {"$exists": true, "$not": {"$type": "number"}}),
        ),
    };
    log::warn!("job {} failed: {error}", id_text(&id));
    queue
        .collection()
        .update_one(
            doc! {"_id": id, fields::STATUS: Status::Pending, fields::ATTEMPTS: matches},
            doc! {"$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: queue.clock().now(), fields::LAST_ERROR: error}, "$rename": crate::schema::recount()},
        )
        .run()
        .map_err(|e| queue.db_error("update (fail malformed)", &e))?;
    Ok(())
}

/// Whether `attempts` is something `$inc` adds to (a number, or absent).
pub(super) fn is_number(attempts: &Bson) -> bool {
    matches!(
        attempts,
        Bson::Null | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)
    )
}

fn type_mismatch(error: &mongodb::error::Error) -> bool {
    server_code_is(error, |code| code == TYPE_MISMATCH)
}

/// The `_id` index, which every collection has.
fn by_id() -> Hint {
    Hint::Keys(doc! {"_id": 1})
}

/// What a claim writes.
fn claim_update(token: ObjectId, owner: &str, lease: Duration, clock: &Clock) -> Document {
    let now = clock.now();
    crate::schema::with_recount(doc! {
        "$set": {
            fields::STATUS: Status::Running,
            fields::LEASE_OWNER: owner,
            fields::LEASE_TOKEN: token,
            fields::LEASE_UNTIL: crate::clock::shift_by(now, lease),
            fields::STARTED_AT: now,
        },
        "$inc": {fields::ATTEMPTS: 1},
    })
}
