//! What is in the queue: counts by status, eligible vs scheduled, and how
//! long the oldest eligible job has waited.
//!
//! Counting is done by the server (`$group`, `countDocuments`), never by
//! loading jobs, so `stats` stays cheap on a large backlog.

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{doc, Bson};
use serde::Serialize;

use super::filters::{eligible_filter, queue_condition};
use super::Documents;
use super::Queue;
use crate::error::Error;
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

impl Queue {
    /// Counts the queue's jobs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let collection = self.collection();
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
        // Expired jobs are counted in the same pass over the documents.
        let pipeline = vec![doc! {"$group": {
            "_id": format!("${}", fields::STATUS),
            "n": {"$sum": 1},
            "expired": {"$sum": {"$cond": [{"$eq": [format!("${}", fields::EXPIRED), true]}, 1, 0]}},
        }}];
        let mut expired = 0;
        for group in collection
            .aggregate(pipeline)
            .run()
            .documents(self, "aggregate")?
        {
            let status = match group.get("_id") {
                Some(Bson::String(status)) => status.clone(),
                Some(Bson::Null) | None => "(no status)".to_string(),
                Some(other) => format!("(status {other})"),
            };
            let n = count(group.get("n"));
            *counts.entry(status).or_insert(0) += n;
            expired += count(group.get("expired"));
        }
        let now = self.now();
        // A paused queue's jobs are not eligible: no worker takes them.
        let paused_queues: Vec<String> = self
            .controls()?
            .into_iter()
            .filter(|control| control.is_paused_at(now.timestamp_millis()))
            .map(|control| control.queue)
            .collect();
        let mut eligible_now = eligible_filter(now);
        let mut paused = 0;
        if !paused_queues.is_empty() {
            let held = queue_condition(&paused_queues);
            let mut in_paused = eligible_filter(now);
            in_paused.insert(fields::QUEUE, held.clone());
            paused = collection
                .count_documents(in_paused)
                .run()
                .map_err(|e| self.db_error("count", &e))?;
            eligible_now.insert(fields::QUEUE, doc! {"$not": held});
        }
        let eligible = collection
            .count_documents(eligible_now.clone())
            .run()
            .map_err(|e| self.db_error("count", &e))?;
        let pending = counts.get(Status::Pending.as_str()).copied().unwrap_or(0);
        let oldest = collection
            .find_one(eligible_now)
            .sort(doc! {fields::RUN_AT: 1, "_id": 1})
            .projection(doc! {fields::RUN_AT: 1})
            .run()
            .map_err(|e| self.db_error("find", &e))?;
        let oldest_eligible_age_seconds = oldest.map(|job| {
            let since = match job.get(fields::RUN_AT) {
                Some(Bson::DateTime(at)) => *at,
                _ => match job.get("_id") {
                    Some(Bson::ObjectId(id)) => id.timestamp(),
                    _ => now,
                },
            };
            let millis = (now.timestamp_millis() - since.timestamp_millis()).max(0);
            Duration::from_millis(millis as u64).as_secs_f64()
        });
        Ok(Stats {
            counts,
            eligible,
            paused,
            scheduled: pending.saturating_sub(eligible + paused),
            oldest_eligible_age_seconds,
            expired,
        })
    }
}

impl Queue {
    /// Jobs by queue and status (`default` for jobs that name none),
    /// counted by the server: what the dashboard's Queues page shows.
    pub fn counts_by_queue(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, Error> {
        let pipeline = vec![doc! {"$group": {
            "_id": {"q": format!("${}", fields::QUEUE), "s": format!("${}", fields::STATUS)},
            "n": {"$sum": 1},
        }}];
        let documents = self
            .collection()
            .aggregate(pipeline)
            .run()
            .documents(self, "aggregate")?;
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for group in documents {
            let key = group.get_document("_id").ok();
            let queue = key
                .and_then(|k| k.get_str("q").ok())
                .unwrap_or(fields::DEFAULT_QUEUE)
                .to_string();
            let status = key
                .and_then(|k| k.get_str("s").ok())
                .unwrap_or("(no status)")
                .to_string();
            *counts.entry(queue).or_default().entry(status).or_insert(0) += count(group.get("n"));
        }
        Ok(counts)
    }
}
