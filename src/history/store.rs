//! `<collection>_metrics`: one document per queue and minute, which every
//! worker of the fleet adds its tally to (`$inc`, upserted), kept for the
//! retention `mongoq init --retain-metrics` sets (a TTL index on `at`).
//!
//! ```text
//! { _id: {q: "mail", m: ISODate("…T10:04:00Z")}, q: "mail", at: ISODate("…T10:04:00Z"),
//!   completed: 1180, failed: 2, retried: 9, cancelled: 0, snoozed: 3,
//!   wait: {b4: 1000, b5: 190, ms: 21410},   // counts per bucket (see tally::BOUNDS_MS), sum
//!   run:  {b6: 1189, ms: 95030} }
//! ```
//!
//! A worker writes all its queues' minutes in one `update` command every
//! [`super::FLUSH_EVERY`], so the writes per worker do not grow with its
//! throughput; the documents per day do not grow with the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::sync::Collection;
use mongodb::IndexModel;

use super::recorder::Minute;
use super::tally::{Distribution, Tally, BUCKETS, EVENTS};
use crate::error::Error;
use crate::queue::indexes::{create_missing, present_indexes};
use crate::queue::Queue;
use crate::schema::integer;

/// How long history is kept unless `init --retain-metrics` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The TTL index that deletes old minutes.
const TTL_INDEX: &str = "mongoq_metrics_ttl";
/// A queue's minutes in time order, for its charts.
const QUEUE_INDEX: &str = "mongoq_metrics_queue";

/// One step of a series read back: its start and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub at: DateTime,
    pub tally: Tally,
}

/// The history collection of a queue's collection.
pub struct History<'a> {
    queue: &'a Queue,
    collection: Collection<Document>,
}

impl<'a> History<'a> {
    /// The history kept beside `queue`'s collection.
    pub fn new(queue: &'a Queue) -> History<'a> {
        let collection = queue
            .database()
            .collection(&format!("{}_metrics", queue.collection().name()));
        History { queue, collection }
    }

    /// Its collection (`<collection>_metrics`).
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// Creates its indexes if missing: the TTL index (with the default
    /// retention; `init --retain-metrics` changes it) and the per-queue one.
    pub fn ensure_indexes(&self) -> Result<(), Error> {
        create_missing(
            self.queue,
            &self.collection,
            vec![
                ttl_index(DEFAULT_RETENTION),
                IndexModel::builder()
                    .keys(doc! {"q": 1, "at": 1})
                    .options(
                        IndexOptions::builder()
                            .name(QUEUE_INDEX.to_string())
                            .build(),
                    )
                    .build(),
            ],
        )
    }

    /// Keeps each minute for `keep` after it, then the server deletes it.
    pub fn set_retention(&self, keep: Duration) -> Result<(), Error> {
        self.ensure_indexes()?;
        if self.retention()? == Some(keep) {
            return Ok(());
        }
        self.queue
            .database()
            .run_command(doc! {
                "collMod": self.collection.name(),
                "index": {"name": TTL_INDEX, "expireAfterSeconds": keep.as_secs() as i64},
            })
            .run()
            .map(|_| ())
            .map_err(|e| self.queue.db_error("collMod (history retention)", &e))
    }

    /// How long minutes are kept (`None` before any index exists).
    pub fn retention(&self) -> Result<Option<Duration>, Error> {
        Ok(present_indexes(self.queue, &self.collection)?
            .iter()
            .filter_map(|index| index.options.as_ref())
            .find(|options| options.name.as_deref() == Some(TTL_INDEX))
            .and_then(|options| options.expire_after))
    }

    /// Adds `tallies` to the fleet's minutes in one command; returns the
    /// minutes the server refused (to be tried again), if any.
    pub fn write(&self, tallies: &BTreeMap<Minute, Tally>) -> Result<Vec<Minute>, Error> {
        let minutes: Vec<(&Minute, &Tally)> =
            tallies.iter().filter(|(_, t)| !t.is_empty()).collect();
        if minutes.is_empty() {
            return Ok(Vec::new());
        }
        let updates: Vec<Document> = minutes
            .iter()
            .map(|((queue, minute), tally)| {
                let at = DateTime::from_millis(*minute);
                doc! {
                    "q": {"_id": {"q": queue, "m": at}},
                    "u": {"$inc": increments(tally), "$setOnInsert": {"q": queue, "at": at}},
                    "upsert": true,
                }
            })
            .collect();
        let reply = self
            .queue
            .database()
            .run_command(doc! {
                "update": self.collection.name(),
                "updates": updates,
                "ordered": false,
            })
            .run()
            .map_err(|e| self.queue.db_error("update (history)", &e))?;
        // Two workers upserting one new minute at once: one of them may be
        // refused with a duplicate key; its tally goes in the next flush.
        let refused = reply
            .get_array("writeErrors")
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.as_document()?.get("index").and_then(integer))
                    .filter_map(|index| usize::try_from(index).ok())
                    .filter_map(|index| minutes.get(index).map(|(m, _)| (*m).clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(refused)
    }

    /// The history from `from` to `to` in steps of `step`, of one queue or
    /// of all (`None`), oldest first, one point per step (empty ones too).
    pub fn read(
        &self,
        from: DateTime,
        to: DateTime,
        step: Duration,
        queue: Option<&str>,
    ) -> Result<Vec<Point>, Error> {
        let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
        let steps =
            usize::try_from((to.timestamp_millis() - from.timestamp_millis()).max(0) / step_ms)
                .unwrap_or(0)
                .max(1);
        let mut filter = doc! {"at": {"$gte": from, "$lt": to}};
        if let Some(queue) = queue {
            filter.insert("q", queue);
        }
        // The server merges the queues' documents of each minute (a plain
        // `$group`, no date arithmetic); the minutes fold into steps here.
        let mut group = doc! {"_id": "$at"};
        for event in EVENTS {
            group.insert(event.name(), doc! {"$sum": format!("${}", event.name())});
        }
        for part in ["wait", "run"] {
            for bucket in 0..BUCKETS {
                group.insert(
                    format!("{part}_b{bucket}"),
                    doc! {"$sum": format!("${part}.b{bucket}")},
                );
            }
            group.insert(format!("{part}_ms"), doc! {"$sum": format!("${part}.ms")});
        }
        let mut points: Vec<Point> = (0..steps)
            .map(|n| Point {
                at: DateTime::from_millis(from.timestamp_millis() + n as i64 * step_ms),
                tally: Tally::default(),
            })
            .collect();
        let groups = self
            .collection
            .aggregate(vec![doc! {"$match": filter}, doc! {"$group": group}])
            .run()
            .and_then(Iterator::collect::<Result<Vec<Document>, _>>)
            .map_err(|e| self.queue.db_error("aggregate (history)", &e))?;
        for group in groups {
            let Some(Bson::DateTime(at)) = group.get("_id") else {
                continue;
            };
            let Ok(index) =
                usize::try_from((at.timestamp_millis() - from.timestamp_millis()) / step_ms)
            else {
                continue;
            };
            if let Some(point) = points.get_mut(index) {
                point.tally.merge(&tally_of(&group));
            }
        }
        Ok(points)
    }

    /// The queues with history since `from`, by name.
    pub fn queues(&self, from: DateTime) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = self
            .collection
            .distinct("q", doc! {"at": {"$gte": from}})
            .run()
            .map_err(|e| self.queue.db_error("distinct (history)", &e))?
            .into_iter()
            .filter_map(|name| match name {
                Bson::String(name) => Some(name),
                _ => None,
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The TTL index, keeping minutes for `keep`.
fn ttl_index(keep: Duration) -> IndexModel {
    IndexModel::builder()
        .keys(doc! {"at": 1})
        .options(
            IndexOptions::builder()
                .name(TTL_INDEX.to_string())
                .expire_after(keep)
                .build(),
        )
        .build()
}

/// The `$inc` of a tally: only what it counted.
fn increments(tally: &Tally) -> Document {
    let mut inc = Document::new();
    for event in EVENTS {
        let n = tally.count(event);
        if n > 0 {
            inc.insert(event.name(), n as i64);
        }
    }
    for (part, distribution) in [("wait", &tally.wait), ("run", &tally.run)] {
        for (bucket, n) in distribution.counts.iter().enumerate() {
            if *n > 0 {
                inc.insert(format!("{part}.b{bucket}"), *n as i64);
            }
        }
        if distribution.count() > 0 {
            inc.insert(format!("{part}.ms"), distribution.sum_ms as i64);
        }
    }
    inc
}

/// A tally from one `$group` result of [`History::read`].
fn tally_of(group: &Document) -> Tally {
    let count = |name: &str| crate::schema::count(group.get(name));
    let distribution = |part: &str| {
        let mut d = Distribution::default();
        for (bucket, n) in d.counts.iter_mut().enumerate() {
            *n = count(&format!("{part}_b{bucket}"));
        }
        d.sum_ms = count(&format!("{part}_ms"));
        d
    };
    Tally {
        completed: count("completed"),
        failed: count("failed"),
        retried: count("retried"),
        cancelled: count("cancelled"),
        snoozed: count("snoozed"),
        wait: distribution("wait"),
        run: distribution("run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tally::Event;

    #[test]
    fn a_tally_goes_out_as_increments_and_comes_back_whole() {
        let mut tally = Tally::default();
        tally.add(
            Event::Completed,
            Some(Duration::from_millis(4)),
            Some(Duration::from_millis(40)),
        );
        tally.add(Event::Retried, Some(Duration::from_millis(700)), None);
        let inc = increments(&tally);
        assert_eq!(inc.get_i64("completed").unwrap(), 1);
        assert!(!inc.contains_key("failed"), "only what it counted: {inc}");
        assert_eq!(inc.get_i64("wait.b2").unwrap(), 1);
        assert_eq!(inc.get_i64("wait.ms").unwrap(), 704);
        // What `$group` gives back for it.
        let mut group = Document::new();
        for (key, value) in &inc {
            group.insert(key.replace('.', "_"), value.clone());
        }
        assert_eq!(tally_of(&group), tally);
    }
}
