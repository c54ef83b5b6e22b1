//! Schedules as documents in `<collection>_schedules`, one per name, and
//! the operators' calls on them: add (or update), list, remove, pause and
//! resume. Editable while the fleet runs: the firing loop reads them anew
//! each time it looks.
//!
//! A schedule document:
//! `{_id: NAME, cron, tz, every_ms, anchor, queue, data, priority,
//! max_attempts, catch_up, max_catch_up, no_overlap, paused, last_tick,
//! next_tick, fired, skipped, last_job, created_at, updated_at}`.
//! `last_tick` is the latest tick handled (fired or skipped) and only ever
//! moves forward; `next_tick` is the next one, kept for the due query.

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use super::spec::{utc_millis, Spec};
use crate::error::Error;
use crate::queue::indexes::create_missing;
use crate::queue::Documents;
use crate::queue::Queue;
use crate::schema::fields;

/// What to do with ticks missed while every worker was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Skip them; run the next one on time.
    None,
    /// Run the latest missed tick once (the default).
    #[default]
    One,
    /// Run each missed tick, up to `max_catch_up`.
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<CatchUp> {
        match text {
            "none" => Some(CatchUp::None),
            "one" => Some(CatchUp::One),
            "all" => Some(CatchUp::All),
            _ => None,
        }
    }
}

/// When a schedule ticks, as given.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// A cron expression and its IANA zone (default UTC).
    Cron { expr: String, tz: Option<String> },
    /// A fixed interval: ticks at whole multiples of it since the Unix epoch.
    Every(std::time::Duration),
}

/// A schedule's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDef {
    pub name: String,
    pub timing: Timing,
    /// The queue its jobs go to (`None`: the default queue).
    pub queue: Option<String>,
    /// Each job's `data`.
    pub data: Bson,
    pub priority: i64,
    pub max_attempts: Option<u32>,
    pub catch_up: CatchUp,
    /// With `CatchUp::All`: at most this many missed ticks (default 100).
    pub max_catch_up: u32,
    /// Skip a tick while the previous tick's job is pending or running.
    pub no_overlap: bool,
}

impl ScheduleDef {
    /// `name` ticking on `timing`, with the defaults for everything else.
    pub fn new(name: impl Into<String>, timing: Timing) -> ScheduleDef {
        ScheduleDef {
            name: name.into(),
            timing,
            queue: None,
            data: Bson::Document(Document::new()),
            priority: 0,
            max_attempts: None,
            catch_up: CatchUp::One,
            max_catch_up: 100,
            no_overlap: false,
        }
    }
}

/// A stored schedule, as `list` shows it.
#[derive(Debug, Clone)]
pub struct ScheduleInfo {
    pub name: String,
    pub describe: String,
    pub queue: String,
    pub paused: bool,
    pub catch_up: CatchUp,
    pub no_overlap: bool,
    pub next_tick: Option<DateTime>,
    pub last_tick: Option<DateTime>,
    pub fired: i64,
    pub skipped: i64,
    /// The last job it created, and that job's status now.
    pub last_job: Option<(Bson, String)>,
}

impl ScheduleInfo {
    /// As the `--json` outputs show it: dates as RFC 3339 UTC strings.
    pub fn to_json(&self) -> serde_json::Value {
        let date = |at: Option<DateTime>| at.and_then(|t| t.try_to_rfc3339_string().ok());
        serde_json::json!({
            "name": self.name,
            "timing": self.describe,
            "queue": self.queue,
            "paused": self.paused,
            "catch_up": self.catch_up.as_str(),
            "no_overlap": self.no_overlap,
            "next_tick": date(self.next_tick),
            "last_tick": date(self.last_tick),
            "fired": self.fired,
            "skipped": self.skipped,
            "last_job": self.last_job.as_ref().map(|(id, status)| serde_json::json!({
                "id": id.clone().into_relaxed_extjson(),
                "status": status,
            })),
        })
    }
}

/// The schedules of one queue collection.
#[derive(Clone)]
pub struct Schedules {
    pub(crate) queue: Queue,
}

impl Schedules {
    pub fn new(queue: &Queue) -> Schedules {
        Schedules {
            queue: queue.clone(),
        }
    }

    /// `<collection>_schedules`.
    pub fn collection(&self) -> mongodb::sync::Collection<Document> {
        self.queue
            .database()
            .collection(&format!("{}_schedules", self.queue.collection().name()))
    }

    /// The index the due query uses, and the one `--no-overlap` and the
    /// list use to find a schedule's jobs.
    pub fn ensure_indexes(&self) -> Result<(), Error> {
        let due = IndexModel::builder()
            .keys(doc! {"queue": 1, "next_tick": 1})
            .options(
                IndexOptions::builder()
                    .name("mongoq_due".to_string())
                    .build(),
            )
            .build();
        create_missing(&self.queue, &self.collection(), vec![due])?;
        let fired = IndexModel::builder()
            .keys(doc! {fields::SCHEDULE: 1, fields::TICK: -1})
            .options(
                IndexOptions::builder()
                    .name("mongoq_schedule".to_string())
                    .partial_filter_expression(doc! {fields::SCHEDULE: {"$exists": true}})
                    .build(),
            )
            .build();
        create_missing(&self.queue, self.queue.collection(), vec![fired])?;
        Ok(())
    }

    /// Adds `def`, or updates the schedule of that name. An update keeps
    /// what it fired so far and goes on from its last tick. Returns its
    /// next tick (`None`: the expression never matches again).
    pub fn add(&self, def: &ScheduleDef) -> Result<Option<DateTime>, Error> {
        if def.name.is_empty() {
            return Err(Error::config("NAME", "a schedule needs a name"));
        }
        self.ensure_indexes()?;
        let now = self.queue.now();
        let existing = self
            .collection()
            .find_one(doc! {"_id": &def.name})
            .run()
            .map_err(|e| self.queue.db_error("find (schedule)", &e))?;
        // Intervals tick on whole multiples since the Unix epoch, so
        // `--every 5m` fires at :00, :05, … whenever it was added.
        let anchor = existing
            .as_ref()
            .and_then(|d| d.get_datetime("anchor").ok().copied())
            .unwrap_or(DateTime::from_millis(0));
        let last_tick = existing
            .as_ref()
            .and_then(|d| d.get_datetime("last_tick").ok().copied());
        let (cron, tz, every_ms) = match &def.timing {
            Timing::Cron { expr, tz } => (
                Bson::String(expr.clone()),
                tz.clone().map_or(Bson::Null, Bson::String),
                Bson::Null,
            ),
            Timing::Every(interval) => (
                Bson::Null,
                Bson::Null,
                Bson::Int64(interval.as_millis() as i64),
            ),
        };
        let mut set = doc! {
            "cron": cron, "tz": tz, "every_ms": every_ms, "anchor": anchor,
            "queue": def.queue.clone().unwrap_or_else(|| fields::DEFAULT_QUEUE.to_string()),
            "data": def.data.clone(),
            "priority": def.priority,
            "max_attempts": def.max_attempts.map_or(Bson::Null, |n| Bson::Int64(i64::from(n))),
            "catch_up": def.catch_up.as_str(),
            "max_catch_up": i64::from(def.max_catch_up),
            "no_overlap": def.no_overlap,
            "updated_at": now,
        };
        let spec = spec_of(&set)?;
        let from = last_tick.unwrap_or(now);
        let next = spec
            .next_after(
                utc_millis(from.timestamp_millis()),
                last_tick.map(|t| utc_millis(t.timestamp_millis())),
            )
            .map(|t| DateTime::from_millis(t.timestamp_millis()));
        set.insert("next_tick", next.map_or(Bson::Null, Bson::DateTime));
        self.collection()
            .update_one(
                doc! {"_id": &def.name},
                doc! {
                    "$set": set,
                    "$setOnInsert": {"created_at": now, "paused": false, "fired": 0_i64, "skipped": 0_i64, "last_tick": Bson::Null},
                },
            )
            .upsert(true)
            .run()
            .map_err(|e| self.queue.db_error("update (schedule)", &e))?;
        Ok(next)
    }

    /// Removes the schedule `name`; false when there was none. Its jobs stay.
    pub fn remove(&self, name: &str) -> Result<bool, Error> {
        let result = self
            .collection()
            .delete_one(doc! {"_id": {"$eq": name}})
            .run()
            .map_err(|e| self.queue.db_error("delete (schedule)", &e))?;
        Ok(result.deleted_count == 1)
    }

    /// Pauses (`true`) or resumes the schedule `name`; false when there is
    /// none. A resumed schedule goes on from now: ticks missed while it was
    /// paused are not caught up.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<bool, Error> {
        let Some(document) = self
            .collection()
            .find_one(doc! {"_id": {"$eq": name}})
            .run()
            .map_err(|e| self.queue.db_error("find (schedule)", &e))?
        else {
            return Ok(false);
        };
        let now = self.queue.now();
        let mut set = doc! {"paused": paused, "updated_at": now};
        if !paused {
            let spec = spec_of(&document)?;
            let now_utc = utc_millis(now.timestamp_millis());
            if let Some(next) = spec.next_after(now_utc, None) {
                set.insert("next_tick", DateTime::from_millis(next.timestamp_millis()));
            }
            set.insert("last_tick", now);
        }
        self.collection()
            .update_one(doc! {"_id": {"$eq": name}}, doc! {"$set": set})
            .run()
            .map_err(|e| self.queue.db_error("update (schedule)", &e))?;
        Ok(true)
    }

    /// Every schedule, by name, with its last job's status (all those
    /// statuses read with one query).
    pub fn list(&self) -> Result<Vec<ScheduleInfo>, Error> {
        let documents: Vec<Document> = self
            .collection()
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .run()
            .documents(&self.queue, "find (schedules)")?;
        let last_jobs: Vec<Bson> = documents
            .iter()
            .filter_map(|d| d.get("last_job").filter(|id| **id != Bson::Null).cloned())
            .collect();
        let mut statuses = std::collections::HashMap::new();
        if !last_jobs.is_empty() {
            let jobs = self
                .queue
                .collection()
                .find(doc! {"_id": {"$in": &last_jobs}})
                .projection(doc! {fields::STATUS: 1})
                .run()
                .map_err(|e| self.queue.db_error("find (schedules' jobs)", &e))?;
            for job in jobs {
                let job = job.map_err(|e| self.queue.db_error("find (schedules' jobs)", &e))?;
                if let Some(id) = job.get("_id") {
                    let status = job.get_str(fields::STATUS).unwrap_or("?").to_string();
                    statuses.insert(id.to_string(), status);
                }
            }
        }
        let mut out = Vec::new();
        for document in documents {
            let name = document.get_str("_id").unwrap_or_default().to_string();
            let last_job = document
                .get("last_job")
                .filter(|id| **id != Bson::Null)
                .map(|id| {
                    let status = statuses
                        .get(&id.to_string())
                        .cloned()
                        .unwrap_or_else(|| "deleted".to_string());
                    (id.clone(), status)
                });
            out.push(ScheduleInfo {
                describe: spec_of(&document).map_or_else(|e| e.to_string(), |s| s.describe()),
                queue: document
                    .get_str("queue")
                    .unwrap_or(fields::DEFAULT_QUEUE)
                    .to_string(),
                paused: document.get_bool("paused").unwrap_or(false),
                catch_up: document
                    .get_str("catch_up")
                    .ok()
                    .and_then(CatchUp::parse)
                    .unwrap_or_default(),
                no_overlap: document.get_bool("no_overlap").unwrap_or(false),
                next_tick: document.get_datetime("next_tick").ok().copied(),
                last_tick: document.get_datetime("last_tick").ok().copied(),
                fired: crate::schema::integer(document.get("fired").unwrap_or(&Bson::Null))
                    .unwrap_or(0),
                skipped: crate::schema::integer(document.get("skipped").unwrap_or(&Bson::Null))
                    .unwrap_or(0),
                last_job,
                name,
            });
        }
        Ok(out)
    }
}

/// The timing a stored schedule document describes.
pub(crate) fn spec_of(document: &Document) -> Result<Spec, Error> {
    let invalid = |e: super::SpecError| Error::config("schedule", e.to_string());
    if let Ok(expr) = document.get_str("cron") {
        return Spec::cron(expr, document.get_str("tz").ok()).map_err(invalid);
    }
    let every = document
        .get("every_ms")
        .and_then(crate::schema::integer)
        .ok_or_else(|| {
            Error::config("schedule", "the schedule has neither `cron` nor `every_ms`")
        })?;
    let anchor = document
        .get_datetime("anchor")
        .map_or(0, |a| a.timestamp_millis());
    Spec::every(
        std::time::Duration::from_millis(u64::try_from(every).unwrap_or(0)),
        utc_millis(anchor),
    )
    .map_err(invalid)
}
