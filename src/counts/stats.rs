//! What is in the queue, exactly, without counting it: the ledger's
//! counters plus the jobs not counted yet, and for the rest (eligible,
//! scheduled, the oldest eligible job) reads that only touch the jobs
//! they are about.
//!
//! The reads and what bounds each (on MongoDB's planner):
//! - the ledger: one `_id` lookup;
//! - the jobs not counted yet: `mongoq_counted`, equality on `null`;
//! - statuses with a retention TTL (whose deletes no one sees): counted
//!   directly, so their cost is the number of such jobs;
//! - scheduled jobs: `mongoq_due` (partial on `pending`), `run_at` after now;
//! - the oldest eligible job: `mongoq_due`, two `limit(1)` reads in index
//!   order (jobs without a `run_at` by `_id`, then by `run_at`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::Hint;
use serde::Serialize;

use super::key::{key_of, key_of_parts, queue_of, status_of_key, EXPIRED};
use super::ledger::{id_key, Ledger, Tallies};
use super::{Counts, COUNTED_INDEX, DUE_INDEX};
use crate::error::Error;
use crate::queue::filters::queue_condition;
use crate::queue::indexes::present_indexes;
use crate::queue::{Documents, Queue};
use crate::schema::{count, fields, Status};

/// A snapshot of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Jobs by `status`; always has `waiting`, `pending`, `running`,
    /// `completed` and `failed`, plus any other status present.
    pub counts: BTreeMap<String, u64>,
    /// Pending jobs whose `run_at` has come, of queues not paused: what
    /// workers may claim now.
    pub eligible: u64,
    /// Pending jobs whose `run_at` has come but whose queue is paused.
    pub paused: u64,
    /// Pending jobs whose `run_at` is in the future.
    pub scheduled: u64,
    /// How long the oldest eligible job has been eligible, in seconds.
    pub oldest_eligible_age_seconds: Option<f64>,
    /// Cancelled jobs that expired before they started (`expired: true`).
    pub expired: u64,
}

impl Counts {
    /// Exact counts by queue and key (see [`super::key`]): the ledger's,
    /// corrected by the jobs not counted yet. Read again when a round of
    /// the reconciler changed the ledger meanwhile.
    pub fn by_queue_and_key(&self) -> Result<Tallies, Error> {
        let mut tries = 0;
        loop {
            let ledger = self.read_ledger()?;
            let tallies = self.corrected(&ledger)?;
            tries += 1;
            if tries >= 3 || self.read_ledger()?.version == ledger.version {
                return Ok(tallies);
            }
        }
    }

    fn corrected(&self, ledger: &Ledger) -> Result<Tallies, Error> {
        let mut tallies = ledger.counters.clone();
        let mut add = |queue: &str, key: &str, n: i64| {
            *tallies
                .entry(queue.to_string())
                .or_default()
                .entry(key.to_string())
                .or_insert(0) += n;
        };
        let journal_ids: Vec<&Bson> = ledger.journal.iter().flat_map(|g| &g.ids).collect();
        let mut uncounted = doc! {fields::COUNTED: Bson::Null};
        if !journal_ids.is_empty() {
            uncounted.insert("_id", doc! {"$nin": &journal_ids});
        }
        let pipeline = vec![
            doc! {"$match": uncounted},
            doc! {"$group": {
                "_id": {
                    "q": format!("${}", fields::QUEUE),
                    "w": format!("${}", fields::WAS_COUNTED),
                    "s": format!("${}", fields::STATUS),
                    "e": format!("${}", fields::EXPIRED),
                },
                "n": {"$sum": 1},
            }},
        ];
        let mut read = self.queue.collection().aggregate(pipeline);
        if let Some(hint) = hint_if_present(&self.queue, COUNTED_INDEX)? {
            read = read.hint(hint);
        }
        for group in read
            .run()
            .documents(&self.queue, "aggregate (jobs not counted yet)")?
        {
            let id = group.get_document("_id").cloned().unwrap_or_default();
            let queue = queue_of(&doc! {fields::QUEUE: id.get("q").cloned().unwrap_or(Bson::Null)});
            let n = count(group.get("n")) as i64;
            if let Ok(was) = id.get_str("w") {
                add(&queue, was, -n);
            }
            add(&queue, &key_of_parts(id.get("s"), id.get("e")), n);
        }
        // Jobs of a change under way: the counters already count them
        // under `to` (or not at all, for a delete).
        if !journal_ids.is_empty() {
            let present: BTreeMap<String, Document> = self
                .queue
                .collection()
                .find(doc! {"_id": {"$in": &journal_ids}})
                .projection(doc! {fields::QUEUE: 1, fields::STATUS: 1, fields::EXPIRED: 1, fields::COUNTED: 1})
                .run()
                .documents(&self.queue, "find (counts)")?
                .into_iter()
                .map(|d| (id_key(d.get("_id")), d))
                .collect();
            for group in &ledger.journal {
                for id in &group.ids {
                    let job = present.get(&id_key(Some(id)));
                    if let Some(to) = &group.to {
                        add(&group.queue, to, -1);
                    }
                    if let Some(job) = job {
                        add(&queue_of(job), &key_of(job), 1);
                    }
                }
            }
        }
        Ok(tallies)
    }
}

/// A hint to the index `name` if the collection has it (a collection no
/// worker or `init` has prepared is read without, as it was before).
fn hint_if_present(queue: &Queue, name: &str) -> Result<Option<Hint>, Error> {
    let present = present_indexes(queue, queue.collection())?;
    Ok(present
        .iter()
        .any(|index| index.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
        .then(|| Hint::Name(name.to_string())))
}

/// Whether `status` has a retention TTL index: MongoDB deletes its jobs
/// without telling anyone, so they are counted, not kept.
fn counted_directly(queue: &Queue) -> Result<BTreeSet<&'static str>, Error> {
    Ok(queue
        .retention()?
        .into_iter()
        .filter(|r| r.keep.is_some())
        .map(|r| r.status.as_str())
        .collect())
}

impl Queue {
    /// Jobs by queue and status (`default` for jobs that name none), as
    /// the dashboard's Queues page shows them: exact, from the counters.
    pub fn counts_by_queue(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, Error> {
        let tallies = self.counts_by_queue_and_key()?;
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (queue, keys) in tallies {
            for (key, n) in keys {
                if n > 0 {
                    *counts
                        .entry(queue.clone())
                        .or_default()
                        .entry(status_of_key(&key).to_string())
                        .or_insert(0) += n as u64;
                }
            }
        }
        Ok(counts)
    }

    /// [`Counts::by_queue_and_key`], with the statuses that have a
    /// retention TTL counted directly.
    fn counts_by_queue_and_key(&self) -> Result<Tallies, Error> {
        let mut tallies = Counts::new(self).by_queue_and_key()?;
        let direct = counted_directly(self)?;
        if direct.is_empty() {
            return Ok(tallies);
        }
        for keys in tallies.values_mut() {
            keys.retain(|key, _| !direct.contains(status_of_key(key)));
        }
        let statuses: Vec<&str> = direct.into_iter().collect();
        let pipeline = vec![
            doc! {"$match": {fields::STATUS: {"$in": &statuses}}},
            doc! {"$group": {
                "_id": {"q": format!("${}", fields::QUEUE), "s": format!("${}", fields::STATUS), "e": format!("${}", fields::EXPIRED)},
                "n": {"$sum": 1},
            }},
        ];
        for group in self
            .collection()
            .aggregate(pipeline)
            .run()
            .documents(self, "aggregate (counts)")?
        {
            let id = group.get_document("_id").cloned().unwrap_or_default();
            let queue = queue_of(&doc! {fields::QUEUE: id.get("q").cloned().unwrap_or(Bson::Null)});
            *tallies
                .entry(queue)
                .or_default()
                .entry(key_of_parts(id.get("s"), id.get("e")))
                .or_insert(0) += count(group.get("n")) as i64;
        }
        Ok(tallies)
    }

    /// Counts the queue's jobs (exactly, without counting them: see
    /// [`crate::counts`]).
    pub fn stats(&self) -> Result<Stats, Error> {
        let tallies = self.counts_by_queue_and_key()?;
        let mut counts: BTreeMap<String, u64> = [
            Status::Waiting,
            Status::Pending,
            Status::Running,
            Status::Completed,
            Status::Failed,
        ]
        .iter()
        .map(|status| (status.as_str().to_string(), 0))
        .collect();
        let mut expired = 0;
        for keys in tallies.values() {
            for (key, n) in keys {
                let n = (*n).max(0) as u64;
                if n == 0 && !counts.contains_key(status_of_key(key)) {
                    continue;
                }
                *counts.entry(status_of_key(key).to_string()).or_insert(0) += n;
                if key == EXPIRED {
                    expired += n;
                }
            }
        }
        let now = self.now();
        let paused_queues: BTreeSet<String> = self
            .controls()?
            .into_iter()
            .filter(|control| control.is_paused_at(now.timestamp_millis()))
            .map(|control| control.queue)
            .collect();
        let scheduled_by_queue = self.scheduled_by_queue(now)?;
        let (mut eligible, mut paused, mut scheduled) = (0, 0, 0);
        for (queue, keys) in &tallies {
            let pending = keys
                .get(Status::Pending.as_str())
                .copied()
                .unwrap_or(0)
                .max(0) as u64;
            let later = scheduled_by_queue.get(queue).copied().unwrap_or(0);
            scheduled += later;
            let due = pending.saturating_sub(later);
            if paused_queues.contains(queue) {
                paused += due;
            } else {
                eligible += due;
            }
        }
        let paused_list: Vec<String> = paused_queues.into_iter().collect();
        Ok(Stats {
            counts,
            eligible,
            paused,
            scheduled,
            oldest_eligible_age_seconds: self.oldest_eligible_age(now, &paused_list)?,
            expired,
        })
    }

    /// Pending jobs whose `run_at` is still to come, by queue.
    fn scheduled_by_queue(&self, now: DateTime) -> Result<BTreeMap<String, u64>, Error> {
        let pipeline = vec![
            doc! {"$match": {fields::STATUS: Status::Pending, fields::RUN_AT: {"$gt": now}}},
            doc! {"$group": {"_id": format!("${}", fields::QUEUE), "n": {"$sum": 1}}},
        ];
        let mut scheduled = BTreeMap::new();
        let mut read = self.collection().aggregate(pipeline);
        if let Some(hint) = hint_if_present(self, DUE_INDEX)? {
            read = read.hint(hint);
        }
        for group in read.run().documents(self, "aggregate (scheduled jobs)")? {
            let queue =
                queue_of(&doc! {fields::QUEUE: group.get("_id").cloned().unwrap_or(Bson::Null)});
            *scheduled.entry(queue).or_insert(0) += count(group.get("n"));
        }
        Ok(scheduled)
    }

    /// How long the oldest eligible job (of a queue not paused) has been
    /// eligible: since its `run_at`, or for a job inserted without one,
    /// since its `_id` was made.
    fn oldest_eligible_age(&self, now: DateTime, paused: &[String]) -> Result<Option<f64>, Error> {
        let hint = hint_if_present(self, DUE_INDEX)?;
        let oldest = |run_at: Bson| -> Result<Option<Document>, Error> {
            let mut filter = doc! {fields::STATUS: Status::Pending, fields::RUN_AT: run_at};
            if !paused.is_empty() {
                filter.insert(fields::QUEUE, doc! {"$not": queue_condition(paused)});
            }
            let mut read = self
                .collection()
                .find_one(filter)
                .sort(doc! {fields::RUN_AT: 1, "_id": 1})
                .projection(doc! {fields::RUN_AT: 1});
            if let Some(hint) = hint.clone() {
                read = read.hint(hint);
            }
            read.run()
                .map_err(|e| self.db_error("find (oldest eligible job)", &e))
        };
        let since = |job: &Document| match job.get(fields::RUN_AT) {
            Some(Bson::DateTime(at)) => *at,
            _ => match job.get("_id") {
                Some(Bson::ObjectId(id)) => id.timestamp(),
                _ => now,
            },
        };
        let undated = oldest(Bson::Null)?;
        let dated = oldest(Bson::Document(doc! {"$lte": now}))?;
        let earliest = [undated, dated]
            .iter()
            .flatten()
            .map(since)
            .min_by_key(|at| at.timestamp_millis());
        Ok(earliest.map(|since| {
            let millis = (now.timestamp_millis() - since.timestamp_millis()).max(0);
            Duration::from_millis(millis as u64).as_secs_f64()
        }))
    }
}
