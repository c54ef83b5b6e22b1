//! Firing: every worker serving a schedule's queue looks at the due
//! schedules about once a second, and the insert itself is the election.
//!
//! A tick's job has a deterministic `_id`, `NAME@<tick as RFC 3339>`, so
//! when two workers fire the same tick the second insert is a duplicate
//! key error, never a second job. The schedule's `last_tick` then moves
//! forward with a conditional update (it must still hold the value read),
//! so it only ever advances, and a tick at or before it is never fired
//! again, even after retention deleted its job. A worker that dies between
//! the insert and that update leaves `last_tick` behind: the next look
//! recomputes the same ticks, finds their jobs there, and moves it on.
//!
//! Time is the server's (`Queue::now`, see `crate::clock`), so a worker
//! whose clock is fast fires nothing early and one whose clock is slow
//! fires nothing twice.
//!
//! **What a look costs.** One indexed query for the schedules due within
//! the next second, then, for all of them together, one `insert` command
//! (unordered: duplicates are reported per job) and one `update` command
//! moving their `last_tick`s: three round trips whatever the number of
//! schedules, and nothing that grows with the number of jobs. Workers
//! divide the schedules among themselves by a hash of the name over the
//! live workers in the registry ([`Owner`]): each fires its own share on
//! time and a peer's only once it is [`TAKE_OVER_AFTER`] late (the peer
//! died, or has not seen the newest registry yet), so a tick normally costs
//! the server one insert and one update, not one per worker.

use std::time::Duration;

use chrono::{DateTime as Utc8601, SecondsFormat, Utc};
use mongodb::bson::{doc, Bson, DateTime, Document};

use super::spec::{utc_millis, Spec};
use super::store::{spec_of, CatchUp, Schedules};
use crate::error::Error;
use crate::queue::enqueue::new_job_document;
use crate::queue::Documents;
use crate::queue::{EnqueueOptions, WriteError};
use crate::schema::{fields, Status};
use crate::text::fnv1a;

/// How often a ticker looks while schedules tick (it sleeps until the next
/// tick it knows of, at most this long after a look that found one).
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest a ticker sleeps when no schedule ticks within it: a look
/// reads the schedules due within this long, so an idle fleet looks once
/// per this, and a schedule added or resumed is seen within it.
pub const LOOK_IDLE: Duration = Duration::from_secs(5);

/// How late a tick may be and still count as on time (for `--catch-up none`).
const ON_TIME: Duration = Duration::from_secs(2);

/// How late a peer's tick must be before this worker fires it.
pub const TAKE_OVER_AFTER: Duration = Duration::from_millis(1_500);

/// Most schedules handled in one look (the rest wait for the next).
const MAX_PER_LOOK: i64 = 5_000;

/// What one look did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Jobs this worker inserted.
    pub fired: u64,
    /// Ticks skipped (missed under the catch-up policy, or overlapping).
    pub skipped: u64,
    /// Ticks a peer had fired first.
    pub lost: u64,
    /// How late (ms after its tick, on the server's clock) the latest tick
    /// this worker fired was.
    pub lag_ms: Option<i64>,
}

/// Which schedules are this worker's own: those whose name hashes to its
/// place among the live workers (`index` of `of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub index: usize,
    pub of: usize,
}

impl Owner {
    /// A worker alone: every schedule is its own.
    pub const ALONE: Owner = Owner { index: 0, of: 1 };

    /// Whether `name` is this worker's to fire on time.
    pub fn owns(&self, name: &str) -> bool {
        self.of <= 1 || (fnv1a(name.as_bytes()) % self.of as u64) as usize == self.index
    }
}

/// One due schedule's part of a look.
struct Plan {
    name: String,
    read_last: Bson,
    latest: Utc8601<Utc>,
    next: Bson,
    skipped: u64,
    /// The jobs to insert, by index into the look's batch.
    jobs: Vec<usize>,
}

impl Schedules {
    /// Fires the due schedules of `queues` (on time those `owner` owns, a
    /// peer's once late); returns what it did and how long until the next
    /// tick among them (at most [`LOOK_IDLE`]).
    pub fn fire_due(&self, queues: &[String], owner: Owner) -> Result<(Fired, Duration), Error> {
        if !self.queue.clock().is_measured() {
            // Never this host's clock: a fast one would fire ticks early.
            self.queue.measure_clock()?;
        }
        // A tick is due once it has certainly passed on the server's clock
        // (its reading less its uncertainty).
        let now = self.queue.clock().passed();
        let now_ms = now.timestamp_millis();
        let horizon = DateTime::from_millis(now_ms + LOOK_IDLE.as_millis() as i64);
        let documents = self
            .collection()
            .find(doc! {
                "queue": {"$in": queues},
                "next_tick": {"$lte": horizon},
                "paused": {"$ne": true},
            })
            .sort(doc! {"next_tick": 1})
            .limit(MAX_PER_LOOK)
            .run()
            .documents(&self.queue, "find (due schedules)")?;
        // The earliest instant a look is wanted again (server time, ms):
        // the next tick among these schedules, or when a peer's becomes late.
        let mut wake = now_ms + LOOK_IDLE.as_millis() as i64;
        let fired_at = self.queue.now();
        let mut plans = Vec::new();
        let mut batch: Vec<Document> = Vec::new();
        for document in documents {
            let name = document.get_str("_id").unwrap_or_default().to_string();
            let next = document
                .get_datetime("next_tick")
                .map_or(0, |t| t.timestamp_millis());
            let mine = owner.owns(&name);
            let late_at = next
                + if mine {
                    0
                } else {
                    TAKE_OVER_AFTER.as_millis() as i64
                };
            if late_at > now_ms {
                // Not yet (a peer's: not late yet): look again when it is.
                wake = wake.min(late_at);
                continue;
            }
            match self.plan(&document, now, fired_at, &mut batch) {
                Ok(Some(plan)) => {
                    if let Bson::DateTime(next) = &plan.next {
                        let take = if mine {
                            0
                        } else {
                            TAKE_OVER_AFTER.as_millis() as i64
                        };
                        wake = wake.min(next.timestamp_millis() + take);
                    }
                    plans.push(plan);
                }
                Ok(None) => {}
                Err(error) => log::warn!("schedule {name}: {error}"),
            }
        }
        let inserted = self.insert_batch(&batch)?;
        let mut total = Fired::default();
        let mut statements = Vec::new();
        for plan in plans {
            let mine = plan.jobs.iter().filter(|&&i| inserted[i]).count() as u64;
            total.fired += mine;
            total.lost += plan.jobs.len() as u64 - mine;
            total.skipped += plan.skipped;
            if let Some(last) = plan.jobs.iter().rev().find(|&&i| inserted[i]) {
                let tick = batch[*last]
                    .get_datetime(fields::TICK)
                    .map_or(0, |t| t.timestamp_millis());
                total.lag_ms = total.lag_ms.max(Some(fired_at.timestamp_millis() - tick));
            }
            let last_job = plan
                .jobs
                .last()
                .and_then(|&last| batch[last].get("_id").cloned());
            statements.push(advance_statement(&plan, mine, last_job));
        }
        self.update_batch(statements)?;
        // Measured after the writes, so the time they took does not push
        // every later look back.
        let sleep = u64::try_from(wake - self.queue.now().timestamp_millis()).unwrap_or(0);
        Ok((total, Duration::from_millis(sleep).min(LOOK_IDLE)))
    }

    /// The ticks one due schedule fires now, as its catch-up policy and
    /// `--no-overlap` say; their jobs are appended to `batch`.
    fn plan(
        &self,
        schedule: &Document,
        now: DateTime,
        fired_at: DateTime,
        batch: &mut Vec<Document>,
    ) -> Result<Option<Plan>, Error> {
        let name = schedule.get_str("_id").unwrap_or_default().to_string();
        let spec = spec_of(schedule)?;
        let read_last = schedule.get("last_tick").cloned().unwrap_or(Bson::Null);
        let from = match &read_last {
            Bson::DateTime(t) => *t,
            _ => schedule.get_datetime("created_at").copied().unwrap_or(now),
        };
        let catch_up = schedule
            .get_str("catch_up")
            .ok()
            .and_then(CatchUp::parse)
            .unwrap_or_default();
        let max = match catch_up {
            CatchUp::All => schedule
                .get("max_catch_up")
                .and_then(crate::schema::integer)
                .map_or(100, |n| n.clamp(1, 10_000) as usize),
            CatchUp::One | CatchUp::None => 1,
        };
        let now_utc = utc_millis(now.timestamp_millis());
        // Everything due, to count what is skipped, then the ones to run.
        let all_due = spec.due(utc_millis(from.timestamp_millis()), now_utc, 100_000);
        let Some(latest) = all_due.last().copied() else {
            return Ok(None);
        };
        let mut run: Vec<Utc8601<Utc>> = all_due.iter().rev().take(max).rev().copied().collect();
        if catch_up == CatchUp::None {
            run.retain(|tick| (now_utc - *tick).to_std().unwrap_or_default() <= ON_TIME);
        }
        let mut skipped = (all_due.len() - run.len()) as u64;
        if !run.is_empty()
            && schedule.get_bool("no_overlap").unwrap_or(false)
            && self.previous_still_active(&name)?
        {
            skipped += run.len() as u64;
            run.clear();
        }
        let mut jobs = Vec::new();
        for tick in run {
            jobs.push(batch.len());
            batch.push(job_for(&name, schedule, tick, fired_at));
        }
        Ok(Some(Plan {
            next: next_tick(&spec, latest),
            name,
            read_last,
            latest,
            skipped,
            jobs,
        }))
    }

    /// Whether the schedule's latest job is still pending or running.
    fn previous_still_active(&self, name: &str) -> Result<bool, Error> {
        let active = self
            .queue
            .collection()
            .find_one(doc! {
                fields::SCHEDULE: name,
                fields::STATUS: {"$in": [Status::Pending, Status::Running]},
            })
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (schedule's running job)", &e))?;
        Ok(active.is_some())
    }

    /// Inserts `jobs` with one unordered `insert` command; returns, per
    /// job, whether this worker inserted it (false: a peer had, E11000).
    fn insert_batch(&self, jobs: &[Document]) -> Result<Vec<bool>, Error> {
        let mut inserted = vec![true; jobs.len()];
        for (chunk_index, chunk) in jobs.chunks(1_000).enumerate() {
            let reply = self.run_batch(
                doc! {
                    "insert": self.queue.collection().name(),
                    "documents": chunk,
                    "ordered": false,
                },
                "insert (scheduled jobs)",
            )?;
            for error in WriteError::all_in(&reply) {
                if let Some(slot) = inserted.get_mut(chunk_index * 1_000 + error.index) {
                    *slot = false;
                }
                if error.code != 11_000 {
                    log::warn!("schedules: a tick's job was refused: {}", error.message);
                }
            }
        }
        Ok(inserted)
    }

    /// Runs the `last_tick` updates with one unordered `update` command.
    fn update_batch(&self, statements: Vec<Document>) -> Result<(), Error> {
        for chunk in statements.chunks(1_000) {
            self.run_batch(
                doc! {
                    "update": self.collection().name(),
                    "updates": chunk,
                    "ordered": false,
                },
                "update (schedules' last ticks)",
            )?;
        }
        Ok(())
    }

    fn run_batch(&self, command: Document, what: &'static str) -> Result<Document, Error> {
        let has_work = ["documents", "updates"]
            .iter()
            .any(|key| command.get_array(key).is_ok_and(|a| !a.is_empty()));
        if !has_work {
            return Ok(Document::new());
        }
        self.queue.run_write_command(command, what)
    }
}

/// The update that records a look at one schedule, as one pipeline (one
/// statement, matched by name alone): `fired` counts this worker's
/// inserts whatever happens; `last_tick` and `next_tick` (and `skipped`,
/// `last_job`) move only if `last_tick` still holds what this look read,
/// so it never moves back and a race moves it once. Values go in as
/// `$literal`, so a name that starts with `$` stays a name.
fn advance_statement(plan: &Plan, mine: u64, last_job: Option<Bson>) -> Document {
    let literal = |value: Bson| doc! {"$literal": value};
    let keep_or = |field: &str, value: Bson| {
        doc! {"$cond": ["$mongoq_advance", literal(value), format!("${field}")]}
    };
    let mut moved = doc! {
        "last_tick": keep_or("last_tick", Bson::DateTime(DateTime::from_millis(plan.latest.timestamp_millis()))),
        "next_tick": keep_or("next_tick", plan.next.clone()),
        "skipped": {"$cond": [
            "$mongoq_advance",
            {"$add": [{"$ifNull": ["$skipped", 0_i64]}, plan.skipped as i64]},
            "$skipped",
        ]},
    };
    if let Some(id) = last_job {
        moved.insert("last_job", keep_or("last_job", id));
    }
    doc! {
        "q": {"_id": {"$eq": &plan.name}},
        "u": [
            {"$set": {
                "fired": {"$add": [{"$ifNull": ["$fired", 0_i64]}, mine as i64]},
                "mongoq_advance": {"$eq": [{"$ifNull": ["$last_tick", Bson::Null]}, literal(plan.read_last.clone())]},
            }},
            {"$set": moved},
            {"$unset": "mongoq_advance"},
        ],
        "multi": false,
    }
}

/// The tick after `latest`, as the schedule document stores it.
fn next_tick(spec: &Spec, latest: Utc8601<Utc>) -> Bson {
    spec.next_after(latest, Some(latest))
        .map_or(Bson::Null, |t| {
            Bson::DateTime(DateTime::from_millis(t.timestamp_millis()))
        })
}

/// The job of one tick: `_id` `NAME@TICK`, `schedule`, `tick`, and the
/// schedule's data, queue, priority and attempts; `run_at` is when it fired.
fn job_for(name: &str, schedule: &Document, tick: Utc8601<Utc>, fired_at: DateTime) -> Document {
    let options = EnqueueOptions {
        priority: schedule
            .get("priority")
            .and_then(crate::schema::integer)
            .unwrap_or(0),
        run_at: Some(fired_at),
        max_attempts: schedule
            .get("max_attempts")
            .and_then(crate::schema::integer)
            .and_then(|n| u32::try_from(n).ok()),
        queue: schedule.get_str("queue").ok().map(ToString::to_string),
        ..EnqueueOptions::default()
    };
    let data = schedule.get("data").cloned().unwrap_or(Bson::Null);
    let mut job = new_job_document(
        mongodb::bson::oid::ObjectId::new(),
        data,
        &options,
        fired_at,
    );
    job.insert(
        "_id",
        format!(
            "{name}@{}",
            tick.to_rfc3339_opts(SecondsFormat::Millis, true)
        ),
    );
    job.insert(fields::SCHEDULE, name);
    job.insert(fields::TICK, DateTime::from_millis(tick.timestamp_millis()));
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_divide_the_schedules_and_a_lone_one_owns_them_all() {
        let names: Vec<String> = (0..1_000).map(|n| format!("s{n:04}")).collect();
        for name in &names {
            assert!(Owner::ALONE.owns(name));
        }
        let owners: Vec<usize> = names
            .iter()
            .map(|name| {
                (0..4)
                    .filter(|&index| Owner { index, of: 4 }.owns(name))
                    .count()
            })
            .collect();
        assert!(
            owners.iter().all(|&n| n == 1),
            "each schedule has exactly one owner"
        );
        let share = names
            .iter()
            .filter(|n| Owner { index: 0, of: 4 }.owns(n))
            .count();
        assert!((150..350).contains(&share), "about a quarter each: {share}");
    }
}
