//! What is in the queue, exactly, without counting it: the ledger's
//! counters plus the jobs not counted yet, and for the rest (eligible,
//! scheduled, the oldest eligible job) reads that only touch the jobs
//! they are about.
//!
//! The reads and what bounds each (on MongoDB's planner):
//! - the ledger: one `_id` lookup;
//! - the jobs not counted yet: `mongoq_counted`, equality on `null`, within
//!   a budget ([`READ_BUDGET`], `maxTimeMS`) for the reads that answer a
//!   person or a scrape; past it, with many of them, the ledger answers
//!   alone and says about how many jobs it leaves out (the collection's
//!   estimated size, from its metadata);
//! - statuses with a retention TTL (whose deletes no one sees): counted
//!   directly, so their cost is the number of such jobs;
//! - scheduled jobs: `mongoq_due` (partial on `pending`), `run_at` after now;
//! - the oldest eligible job: `mongoq_due`, windows from the ledger's
//!   floors (see [`super::oldest`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mongodb::action::Action;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};
use serde::Serialize;

use super::key::{key_of, key_of_parts, queue_named, queue_of, status_of_key, EXPIRED};
use super::ledger::{id_key, Ledger, Tallies};
use super::oldest::Floors;
use super::Counts;
use crate::error::{server_code_is, Error};
use crate::queue::Queue;
use crate::schema::{count, fields, Status};

/// Jobs by queue and status, and about how many jobs the counts leave out
/// (see [`Stats::not_counted_yet`]).
pub type ByQueue = (BTreeMap<String, BTreeMap<String, u64>>, Option<u64>);

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
    /// `Some`: the jobs not counted yet were too many to count within the
    /// read's budget ([`READ_BUDGET`]; at least [`NOT_COUNTED_MANY`], as
    /// right after a producer inserted hundreds of thousands directly,
    /// before a worker counted them), so the counts are the ledger's alone
    /// and leave out about this many jobs (the collection's estimated size
    /// less the ledger's total). A worker counts them in the background
    /// (see [`crate::counts`]); `mongoq stats --exact` counts them now.
    /// `None`: exact.
    pub not_counted_yet: Option<u64>,
}

/// How long the pass over the jobs not counted yet may take in a read that
/// answers a person or a scrape (`stats`, the dashboard, `/metrics`): past
/// it, the read answers from the ledger alone and says how many jobs it
/// leaves out ([`Stats::not_counted_yet`]).
pub const READ_BUDGET: Duration = Duration::from_millis(1_500);

/// Past the budget, a read answers from the ledger alone only when about
/// this many jobs are not counted yet; fewer are counted however long that
/// takes (the server was slow, the backlog is not big).
pub const NOT_COUNTED_MANY: u64 = 50_000;

/// A budgeted read does not even try the pass when about this many jobs
/// are not counted yet: the test server, which does not stop an aggregate
/// at its `maxTimeMS`, counts some 200,000 a second (100,000 took 0.5 s,
/// a million 6–7 s).
pub const NOT_COUNTED_FAR_TOO_MANY: u64 = 250_000;

/// The server's code for a command that ran past its `maxTimeMS`.
const MAX_TIME_EXPIRED: i32 = 50;

/// How long a journal must stay unchanged before a read takes it as left
/// by a dead process (a live one is gone in some tens of milliseconds).
const JOURNAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a read keeps trying for a moment when no round changes the
/// ledger under it (a busy server makes rounds and reads slower).
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// One consistent read of the counts.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Exact counts by queue and key (the ledger's alone when
    /// `not_counted_yet` is `Some`).
    pub tallies: Tallies,
    /// See [`Stats::not_counted_yet`].
    pub not_counted_yet: Option<u64>,
    /// The ledger's floors (see [`super::oldest`]).
    pub floors: Floors,
    /// Per queue, the oldest pending jobs not counted yet: with no
    /// `run_at`, the smallest `_id`; with one, the earliest `run_at`.
    pub fresh: Vec<(String, Option<ObjectId>, Option<DateTime>)>,
}

impl Counts {
    /// The ledger's counts corrected by the jobs not counted yet; read
    /// again when a round of the reconciler changed the ledger meanwhile.
    ///
    /// Jobs are marked only while a journal is there (a thousand at a
    /// time, some tens of milliseconds), so a read waits for it to go: its
    /// jobs are then all marked or all not. A journal that stays (its
    /// process died) is read as it says, with no marks under way.
    ///
    /// `direct`: statuses whose jobs are counted here rather than taken
    /// from the ledger (a retention TTL deletes them unseen), in the same
    /// pass as the jobs not counted yet, so that a job moving into or out
    /// of one is counted once.
    ///
    /// `budget`: how long the pass over the jobs not counted yet may take;
    /// past it, the snapshot is the ledger's alone (see
    /// [`Stats::not_counted_yet`]). `None`: as long as it takes.
    pub fn snapshot(
        &self,
        direct: &BTreeSet<&str>,
        budget: Option<Duration>,
    ) -> Result<Snapshot, Error> {
        let started = std::time::Instant::now();
        // A journal that stays the same this long was left by a process
        // that died: no marks are under way, and it is read as it says.
        let mut unmoved: Option<(i64, std::time::Instant)> = None;
        loop {
            let patience_left = started.elapsed() < READ_PATIENCE;
            let ledger = self.read_ledger()?;
            if !ledger.journal.is_empty() && patience_left {
                let since = match unmoved {
                    Some((version, since)) if version == ledger.version => since,
                    _ => {
                        let now = std::time::Instant::now();
                        unmoved = Some((ledger.version, now));
                        now
                    }
                };
                if since.elapsed() < JOURNAL_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            }
            // Far too many jobs not counted yet for the budget (the
            // collection's size from its metadata, less what the ledger
            // counts): the ledger answers alone at once, rather than after
            // a pass that some servers do not stop at its `maxTimeMS`.
            if budget.is_some() {
                let alone = self.ledger_alone(&ledger)?;
                if alone.not_counted_yet.unwrap_or(0) >= NOT_COUNTED_FAR_TOO_MANY {
                    return Ok(alone);
                }
            }
            let snapshot = if let Some(snapshot) = self.corrected(&ledger, direct, budget)? {
                snapshot
            } else {
                // Out of budget: with many jobs not counted yet, the ledger
                // answers alone; with few, the server was only slow, and
                // they are counted however long it takes.
                let alone = self.ledger_alone(&ledger)?;
                if alone.not_counted_yet.unwrap_or(0) >= NOT_COUNTED_MANY {
                    return Ok(alone);
                }
                match self.corrected(&ledger, direct, None)? {
                    Some(snapshot) => snapshot,
                    None => return Ok(alone),
                }
            };
            let after = self.read_ledger()?;
            let same = after.version == ledger.version && after.journal == ledger.journal;
            if same || !patience_left {
                return Ok(snapshot);
            }
        }
    }

    /// The ledger's counts alone, and about how many jobs they leave out.
    fn ledger_alone(&self, ledger: &Ledger) -> Result<Snapshot, Error> {
        let size = self
            .queue
            .collection()
            .estimated_document_count()
            .run()
            .map_err(|e| self.queue.db_error("count (estimated)", &e))?;
        let counted: i64 = ledger
            .counters
            .values()
            .flat_map(|keys| keys.values())
            .sum();
        Ok(Snapshot {
            tallies: ledger.counters.clone(),
            floors: ledger.floors,
            fresh: Vec::new(),
            not_counted_yet: Some(size.saturating_sub(counted.max(0) as u64)),
        })
    }

    /// The ledger corrected by the pass over the jobs not counted yet;
    /// `None` if the pass ran past `budget`.
    fn corrected(
        &self,
        ledger: &Ledger,
        direct: &BTreeSet<&str>,
        budget: Option<Duration>,
    ) -> Result<Option<Snapshot>, Error> {
        let mut fresh = Vec::new();
        let is_direct = |key: &str| direct.contains(status_of_key(key));
        let mut tallies = ledger.counters.clone();
        for keys in tallies.values_mut() {
            keys.retain(|key, _| !is_direct(key));
        }
        // Keys of the ledger only: a direct key is counted by the pass.
        let mut add = |queue: &str, key: &str, n: i64| {
            if !is_direct(key) {
                *tallies
                    .entry(queue.to_string())
                    .or_default()
                    .entry(key.to_string())
                    .or_insert(0) += n;
            }
        };
        let mut counted_directly = Tallies::new();
        let mut uncounted = doc! {fields::COUNTED: Bson::Null};
        if !direct.is_empty() {
            let mut keys: Vec<&str> = direct.iter().copied().collect();
            if direct.contains(Status::Cancelled.as_str()) {
                keys.push(EXPIRED);
            }
            uncounted = doc! {"$or": [uncounted, {fields::COUNTED: {"$in": keys}}]};
        }
        let Some(groups) = self.uncounted_groups(uncounted, budget)? else {
            return Ok(None);
        };
        for group in groups {
            let id = group.get_document("_id").cloned().unwrap_or_default();
            let queue = queue_named(id.get("q"));
            let n = count(group.get("n")) as i64;
            if let Ok(was) = id.get_str("w") {
                add(&queue, was, -n);
            }
            let key = key_of_parts(id.get("s"), id.get("e"));
            if key == Status::Pending.as_str() {
                fresh.push((
                    queue.clone(),
                    group.get_object_id("u").ok(),
                    group.get_datetime("d").ok().copied(),
                ));
            }
            if is_direct(&key) {
                *counted_directly
                    .entry(queue)
                    .or_default()
                    .entry(key)
                    .or_insert(0) += n;
            } else {
                add(&queue, &key, n);
            }
        }
        for (queue, key, n) in self.journal_moves(ledger)? {
            add(&queue, &key, n);
        }
        for (queue, keys) in counted_directly {
            for (key, n) in keys {
                *tallies
                    .entry(queue.clone())
                    .or_default()
                    .entry(key)
                    .or_insert(0) += n;
            }
        }
        Ok(Some(Snapshot {
            tallies,
            floors: ledger.floors,
            fresh,
            not_counted_yet: None,
        }))
    }

    /// The jobs not counted yet matching `uncounted`, grouped by queue,
    /// `was_counted`, status, `expired` and `counted`, with the oldest
    /// pending ones' `_id` and `run_at`; `None` if the pass ran past
    /// `budget`.
    fn uncounted_groups(
        &self,
        uncounted: Document,
        budget: Option<Duration>,
    ) -> Result<Option<Vec<Document>>, Error> {
        let pipeline = vec![
            doc! {"$match": uncounted},
            doc! {"$group": {
                "_id": {
                    "q": format!("${}", fields::QUEUE),
                    "w": format!("${}", fields::WAS_COUNTED),
                    "s": format!("${}", fields::STATUS),
                    "e": format!("${}", fields::EXPIRED),
                    "c": format!("${}", fields::COUNTED),
                },
                "n": {"$sum": 1},
                // The oldest pending ones, for the oldest eligible job.
                "u": {"$min": {"$cond": [
                    {"$eq": [{"$ifNull": [format!("${}", fields::RUN_AT), Bson::Null]}, Bson::Null]},
                    "$_id",
                    Bson::Null,
                ]}},
                "d": {"$min": {"$cond": [
                    {"$eq": [{"$type": format!("${}", fields::RUN_AT)}, "date"]},
                    format!("${}", fields::RUN_AT),
                    Bson::Null,
                ]}},
            }},
        ];
        match self
            .queue
            .collection()
            .aggregate(pipeline)
            .optional(budget, mongodb::action::Aggregate::max_time)
            .run()
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        {
            Ok(groups) => Ok(Some(groups)),
            Err(error) if server_code_is(&error, |code| code == MAX_TIME_EXPIRED) => Ok(None),
            Err(error) => Err(self
                .queue
                .db_error("aggregate (jobs not counted yet)", &error)),
        }
    }

    /// The moves that correct the pass for the jobs of a journal: the
    /// ledger already counts them under `to` (or, for a delete, not at
    /// all), and the pass counted those not marked yet as if it did not.
    fn journal_moves(&self, ledger: &Ledger) -> Result<Vec<(String, String, i64)>, Error> {
        let mut moves = Vec::new();
        let journal_ids: Vec<Bson> = ledger
            .journal
            .iter()
            .flat_map(|g| g.ids.iter().cloned())
            .collect();
        let present = self.read_ids(
            &journal_ids,
            doc! {fields::QUEUE: 1, fields::STATUS: 1, fields::EXPIRED: 1, fields::COUNTED: 1, fields::WAS_COUNTED: 1},
        )?;
        for group in &ledger.journal {
            for id in &group.ids {
                let job = present.get(&id_key(Some(id)));
                let unmarked =
                    job.is_some_and(|j| !matches!(j.get(fields::COUNTED), Some(Bson::String(_))));
                let was = job.and_then(|j| j.get_str(fields::WAS_COUNTED).ok());
                match (&group.to, job) {
                    (Some(to), Some(_)) if unmarked => {
                        moves.push((group.queue.clone(), to.clone(), -1));
                        if let Some(was) = was {
                            moves.push((group.queue.clone(), was.to_string(), 1));
                        }
                    }
                    (Some(to), Some(job)) => {
                        moves.push((group.queue.clone(), to.clone(), -1));
                        moves.push((queue_of(job), key_of(job), 1));
                    }
                    (Some(to), None) => moves.push((group.queue.clone(), to.clone(), -1)),
                    (None, Some(_)) if unmarked => {
                        if let Some(was) = was {
                            moves.push((group.queue.clone(), was.to_string(), 1));
                        }
                    }
                    (None, Some(job)) => moves.push((queue_of(job), key_of(job), 1)),
                    (None, None) => {}
                }
            }
        }
        Ok(moves)
    }
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
    /// the dashboard's Queues page shows them: from the counters, exact
    /// unless the jobs not counted yet were too many for the read's budget
    /// (then the second value says about how many it leaves out, as
    /// [`Stats::not_counted_yet`]).
    pub fn counts_by_queue(&self) -> Result<ByQueue, Error> {
        let snapshot = self.counts_snapshot(&Counts::new(self), Some(READ_BUDGET))?;
        let tallies = snapshot.tallies;
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
        Ok((counts, snapshot.not_counted_yet))
    }

    /// [`Counts::snapshot`], with the statuses that have a retention TTL
    /// counted directly.
    fn counts_snapshot(
        &self,
        counts: &Counts,
        budget: Option<Duration>,
    ) -> Result<Snapshot, Error> {
        counts.snapshot(&counted_directly(self)?, budget)
    }

    /// Counts the queue's jobs (without counting them: see
    /// [`crate::counts`]): exact, unless the jobs not counted yet are too
    /// many to count within [`READ_BUDGET`] (see
    /// [`Stats::not_counted_yet`]).
    pub fn stats(&self) -> Result<Stats, Error> {
        self.stats_within(Some(READ_BUDGET))
    }

    /// [`Queue::stats`], counting every job not counted yet however long
    /// that takes (`mongoq stats --exact`).
    pub fn stats_exact(&self) -> Result<Stats, Error> {
        self.stats_within(None)
    }

    /// [`Queue::stats`] with this budget for the pass over the jobs not
    /// counted yet (`None`: none).
    pub fn stats_within(&self, budget: Option<Duration>) -> Result<Stats, Error> {
        let counter = Counts::new(self);
        let snapshot = self.counts_snapshot(&counter, budget)?;
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
        for keys in snapshot.tallies.values() {
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
        for (queue, keys) in &snapshot.tallies {
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
        // The oldest eligible job: from the floors, and among the jobs not
        // counted yet (of queues not paused, due by now).
        let paused_list: Vec<String> = paused_queues.iter().cloned().collect();
        let mut since: Vec<DateTime> = counter
            .oldest_from_floors(snapshot.floors, now, &paused_list)?
            .into_iter()
            .collect();
        for (queue, undated, dated) in &snapshot.fresh {
            if paused_queues.contains(queue) {
                continue;
            }
            since.extend(undated.map(|id| id.timestamp()));
            since.extend(dated.filter(|at| *at <= now));
        }
        let oldest_eligible_age_seconds = since.into_iter().min().map(|since| {
            let millis = (now.timestamp_millis() - since.timestamp_millis()).max(0);
            Duration::from_millis(millis as u64).as_secs_f64()
        });
        Ok(Stats {
            counts,
            eligible,
            paused,
            scheduled,
            oldest_eligible_age_seconds,
            expired,
            not_counted_yet: snapshot.not_counted_yet,
        })
    }

    /// Pending jobs whose `run_at` is still to come, by queue (bounded by
    /// `mongoq_due`, a range of `run_at`; not hinted: on the test server a
    /// hint to it made the read scan the index, 0.6 s at a million, where
    /// its own plan took 4 ms).
    fn scheduled_by_queue(&self, now: DateTime) -> Result<BTreeMap<String, u64>, Error> {
        let pipeline = vec![
            doc! {"$match": {fields::STATUS: Status::Pending, fields::RUN_AT: {"$gt": now}}},
            doc! {"$group": {"_id": format!("${}", fields::QUEUE), "n": {"$sum": 1}}},
        ];
        let mut scheduled = BTreeMap::new();
        let groups = self
            .collection()
            .aggregate(pipeline)
            .run()
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db_error("aggregate (scheduled jobs)", &e))?;
        for group in groups {
            let queue = queue_named(group.get("_id"));
            *scheduled.entry(queue).or_insert(0) += count(group.get("n"));
        }
        Ok(scheduled)
    }
}
