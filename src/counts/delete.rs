//! Deleting jobs without losing count: `purge`, the dashboard's delete and
//! a flow's rollback delete through the ledger's journal, under its lock,
//! so the counters lose exactly the jobs that went. A recount rebuilds the
//! counters from the jobs themselves (after deletes no one told us of).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use super::key::{queue_named, queue_of};
use super::ledger::{contribution, moves_of, Group, Tallies};
use super::Counts;
use crate::error::Error;
use crate::queue::indexes::finished_status;
use crate::queue::{Documents, Queue};
use crate::schema::{fields, Status};

/// How long a delete or a recount waits for the lock (a reconciler's
/// round holds it for about a second).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Jobs deleted per journal.
const DELETE_BATCH: i64 = 1_000;

impl Counts {
    /// Takes the lock, waiting for a reconciler's round to end.
    fn wait_for_lock(&self) -> Result<(), Error> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            if self.lock()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "the counts' lock (in {}) stayed taken for {}s: a worker may be stuck counting; try again, or wait for its lease to expire",
                    self.ledger.name(),
                    LOCK_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes the jobs matching `filter` and takes them off the counters:
    /// how many went.
    pub fn delete(&self, filter: &Document) -> Result<u64, Error> {
        let mut deleted = 0;
        loop {
            self.wait_for_lock()?;
            let round = self.delete_batch(filter);
            self.unlock();
            match round? {
                (n, true) => deleted += n,
                (n, false) => return Ok(deleted + n),
            }
        }
    }

    /// One batch of [`Counts::delete`]: how many went, and whether there
    /// may be more.
    fn delete_batch(&self, filter: &Document) -> Result<(u64, bool), Error> {
        let ledger = self.read_ledger()?;
        if !ledger.journal.is_empty() {
            self.settle(&ledger.journal)?;
        }
        let jobs = self
            .queue
            .collection()
            .find(filter.clone())
            .projection(doc! {fields::QUEUE: 1, fields::COUNTED: 1, fields::WAS_COUNTED: 1})
            .limit(DELETE_BATCH)
            .run()
            .documents(&self.queue, "find (delete)")?;
        if jobs.is_empty() {
            return Ok((0, false));
        }
        let mut groups: BTreeMap<(String, Option<String>), Group> = BTreeMap::new();
        for job in &jobs {
            let queue = queue_of(job);
            let from = contribution(job).map(str::to_string);
            groups
                .entry((queue.clone(), from.clone()))
                .or_insert_with(|| Group {
                    queue,
                    from,
                    to: None,
                    status: Bson::Null,
                    filter: Some(filter.clone()),
                    ids: Vec::new(),
                })
                .ids
                .push(job.get("_id").cloned().unwrap_or(Bson::Null));
        }
        let journal: Vec<Group> = groups.into_values().collect();
        let deltas = moves_of(&journal);
        if !self.begin(&deltas, &journal, Document::new())? {
            return Err(Error::Invalid(
                "lost the counts' lock in the middle of a delete (a slow server?); run it again"
                    .into(),
            ));
        }
        let deleted = self.settle(&journal)?;
        Ok((deleted, jobs.len() as i64 >= DELETE_BATCH))
    }

    /// Counts every job again and replaces the counters: after jobs were
    /// deleted by hand (`deleteMany` in mongosh), or a status's retention
    /// was turned off. Reads every job once (seconds at a million).
    pub fn recount(&self) -> Result<Tallies, Error> {
        self.wait_for_lock()?;
        let result = self.recount_locked();
        self.unlock();
        result
    }

    fn recount_locked(&self) -> Result<Tallies, Error> {
        let ledger = self.read_ledger()?;
        if !ledger.journal.is_empty() {
            self.settle(&ledger.journal)?;
        }
        let pipeline = vec![doc! {"$group": {
            "_id": {
                "q": format!("${}", fields::QUEUE),
                "c": {"$ifNull": [format!("${}", fields::COUNTED), format!("${}", fields::WAS_COUNTED)]},
            },
            "n": {"$sum": 1},
        }}];
        let mut counters = Tallies::new();
        for group in self
            .queue
            .collection()
            .aggregate(pipeline)
            .run()
            .documents(&self.queue, "aggregate (recount)")?
        {
            let id = group.get_document("_id").cloned().unwrap_or_default();
            let Ok(key) = id.get_str("c") else {
                continue;
            };
            let queue = queue_named(id.get("q"));
            *counters
                .entry(queue)
                .or_default()
                .entry(key.to_string())
                .or_insert(0) += crate::schema::count(group.get("n")) as i64;
        }
        if !self.replace_counters(&counters)? {
            return Err(Error::Invalid(
                "lost the counts' lock in the middle of a recount (a slow server?); run it again"
                    .into(),
            ));
        }
        Ok(counters)
    }
}

impl Queue {
    /// Deletes one finished (completed, failed or cancelled) job by an `_id`
    /// condition; returns whether it did (false: no such job, or it is not
    /// finished).
    pub fn delete_finished(&self, id: &Bson) -> Result<bool, Error> {
        let filter = doc! {"_id": id.clone(), fields::STATUS: Status::any_of(&Status::FINISHED)};
        Ok(Counts::new(self).delete(&filter)? == 1)
    }

    /// Deletes jobs of a finished `status` that finished more than
    /// `older_than` ago; with `dry_run`, only counts them.
    pub fn purge(&self, status: &str, older_than: Duration, dry_run: bool) -> Result<u64, Error> {
        let Some((status, field)) = finished_status(status) else {
            return Err(Error::Invalid(format!(
                "purge deletes finished jobs: --status completed, failed or cancelled, not `{status}` (pending and running jobs are never purged)"
            )));
        };
        let filter = doc! {fields::STATUS: status, field: {"$lt": self.now_ago(older_than)}};
        if dry_run {
            return self
                .collection()
                .count_documents(filter)
                .run()
                .map_err(|e| self.db_error("count", &e));
        }
        Counts::new(self).delete(&filter)
    }
}
