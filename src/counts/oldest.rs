//! How long the oldest eligible job has waited, without reading every
//! pending job to find it.
//!
//! A sorted `limit(1)` read is an index seek on MongoDB, but a server that
//! costs what a query matches (the test server does) pays for every pending
//! job. So the ledger keeps two *floors*, lower bounds the reconciler
//! lowers (`$min`) as it counts jobs into `pending`: `floor_id` (the
//! smallest `_id` of a pending job with no `run_at`) and `floor_run_at`
//! (the smallest `run_at` of one with a date). A read looks forward from a
//! floor in windows that double (1 s, 2 s, 4 s … of `_id` time or
//! `run_at`), so it matches only the pending jobs of the windows it reads
//! (`mongoq_due` bounds them; a hint to it made the test server slower,
//! not faster), and
//! raises the floor to what it found (only if no round lowered it
//! meanwhile). The jobs not counted yet, which no floor covers, are in the
//! same pass that corrects the counts (their `$min`).

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};

use super::{Counts, LEDGER};
use crate::error::Error;
use crate::queue::filters::queue_condition;
use crate::schema::{fields, Status};

/// The first window a read looks at, in milliseconds; each next is
/// [`GROWTH`] times as long.
const FIRST_WINDOW_MS: i64 = 1_000;

/// How much longer each window is than the one before. The window that
/// finds the first pending job also matches every pending job after it up
/// to its end, and that part is at most as long as the windows before it
/// together (twice as long with a growth of 4: a floor 6 s of backfill
/// behind the first pending job read 15 s of pending jobs, 2.3 s at a
/// million on the test server).
const GROWTH: i64 = 2;

/// Where the oldest pending jobs may start (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Floors {
    pub id: Option<ObjectId>,
    pub run_at: Option<DateTime>,
}

impl Floors {
    pub(super) fn read(ledger: &Document) -> Floors {
        Floors {
            id: ledger.get_object_id("floor_id").ok(),
            run_at: ledger.get_datetime("floor_run_at").ok().copied(),
        }
    }

    /// The `$min` that lowers the floors to the pending jobs of `jobs`
    /// (as counted by a round: pending ones only).
    pub(super) fn lowered_by(jobs: &[&Document]) -> Document {
        let mut lower = Floors::default();
        for job in jobs {
            match (job.get(fields::RUN_AT), job.get("_id")) {
                (Some(Bson::DateTime(at)), _) => {
                    lower.run_at = Some(lower.run_at.map_or(*at, |f| f.min(*at)));
                }
                (None | Some(Bson::Null), Some(Bson::ObjectId(id))) => {
                    lower.id = Some(lower.id.map_or(*id, |f| f.min(*id)));
                }
                _ => {}
            }
        }
        let mut min = Document::new();
        if let Some(id) = lower.id {
            min.insert("floor_id", id);
        }
        if let Some(at) = lower.run_at {
            min.insert("floor_run_at", at);
        }
        min
    }
}

/// An `_id` made at `millis` (its first four bytes; the rest zero), the
/// smallest of that second.
pub(super) fn id_at(millis: i64) -> ObjectId {
    let secs = u32::try_from((millis / 1000).max(0)).unwrap_or(u32::MAX);
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

impl Counts {
    /// When the oldest eligible pending job of the queues not `paused`
    /// became eligible, as far as the floors lead: the earliest of an
    /// undated job's `_id` time and a dated job's `run_at` (up to `now`).
    pub(super) fn oldest_from_floors(
        &self,
        floors: Floors,
        now: DateTime,
        paused: &[String],
    ) -> Result<Option<DateTime>, Error> {
        let mut found: Vec<DateTime> = Vec::new();
        if let Some(floor) = floors.id {
            let job = self.probe(floor.timestamp().timestamp_millis(), now, paused, Field::Id)?;
            let to = job.as_ref().and_then(|j| j.get_object_id("_id").ok());
            if to != Some(floor) {
                self.raise(
                    "floor_id",
                    Bson::ObjectId(floor),
                    to.map_or_else(
                        || Bson::ObjectId(id_at(now.timestamp_millis())),
                        Bson::ObjectId,
                    ),
                );
            }
            found.extend(to.map(|id| id.timestamp()));
        }
        if let Some(floor) = floors.run_at {
            let job = self.probe(floor.timestamp_millis(), now, paused, Field::RunAt)?;
            let to = job
                .as_ref()
                .and_then(|j| j.get_datetime(fields::RUN_AT).ok().copied());
            if to != Some(floor) {
                // Nothing due up to now: the floor may rise to now (a job
                // due later is not eligible yet, and is still above it).
                self.raise(
                    "floor_run_at",
                    Bson::DateTime(floor),
                    Bson::DateTime(to.unwrap_or(now)),
                );
            }
            found.extend(to);
        }
        Ok(found.into_iter().min())
    }

    /// The first pending job of `field`'s windows from `from` up to `now`.
    fn probe(
        &self,
        from: i64,
        now: DateTime,
        paused: &[String],
        field: Field,
    ) -> Result<Option<Document>, Error> {
        let end = now.timestamp_millis();
        let (mut lo, mut width) = (from, FIRST_WINDOW_MS);
        while lo <= end {
            let hi = lo.saturating_add(width).min(end + 1);
            let mut filter = match field {
                Field::Id => doc! {
                    "_id": {"$gte": id_at(lo), "$lt": id_at(hi + 999)},
                    fields::STATUS: Status::Pending,
                    fields::RUN_AT: Bson::Null,
                },
                Field::RunAt => doc! {
                    fields::STATUS: Status::Pending,
                    fields::RUN_AT: {"$gte": DateTime::from_millis(lo), "$lt": DateTime::from_millis(hi)},
                },
            };
            if !paused.is_empty() {
                filter.insert(fields::QUEUE, doc! {"$not": queue_condition(paused)});
            }
            let sort = match field {
                Field::Id => doc! {"_id": 1},
                Field::RunAt => doc! {fields::RUN_AT: 1},
            };
            if let Some(job) = self
                .queue
                .collection()
                .find_one(filter)
                .sort(sort)
                .projection(doc! {fields::RUN_AT: 1})
                .run()
                .map_err(|e| self.queue.db_error("find (oldest eligible job)", &e))?
            {
                return Ok(Some(job));
            }
            lo = hi;
            width = width.saturating_mul(GROWTH);
        }
        Ok(None)
    }

    /// Raises a floor from `from` to `to`, unless a round lowered it since
    /// it was read (best effort: a floor that stays low only costs reads).
    fn raise(&self, floor: &str, from: Bson, to: Bson) {
        let _ = self
            .ledger
            .update_one(
                doc! {"_id": LEDGER, floor: from},
                doc! {"$set": {floor: to}},
            )
            .run();
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Id,
    RunAt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_go_to_the_smallest_pending_id_and_run_at() {
        let a = ObjectId::from_bytes([0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1]);
        let b = ObjectId::from_bytes([0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1]);
        let jobs = [
            doc! {"_id": a},
            doc! {"_id": b, "run_at": null},
            doc! {"_id": 3, "run_at": DateTime::from_millis(7_000)},
            doc! {"_id": 4, "run_at": DateTime::from_millis(2_000)},
            doc! {"_id": "text"},
        ];
        let refs: Vec<&Document> = jobs.iter().collect();
        let min = Floors::lowered_by(&refs);
        assert_eq!(min.get_object_id("floor_id").unwrap(), b);
        assert_eq!(
            min.get_datetime("floor_run_at").unwrap().timestamp_millis(),
            2_000
        );
        assert_eq!(Floors::read(&min).id, Some(b));
        assert_eq!(id_at(5_999).timestamp().timestamp_millis(), 5_000);
    }
}
