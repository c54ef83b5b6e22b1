//! A claimed job, and the rules for what a valid job document is.
//!
//! Producers are anything that can insert a document, so the worker cannot
//! trust the shape of what it claims. [`Job::from_document`] is the one
//! place that decides whether a document can run; what it rejects is marked
//! `failed` with the exact reason it returns, so a malformed document is
//! neither skipped forever nor allowed to crash a worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mongodb::bson::{oid::ObjectId, Bson, Document};

use crate::progress::ProgressCell;
use crate::schema::{fields, id_text, integer};

/// A job a worker holds: it was claimed with `lease_token` and may be run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The document's `_id`.
    pub id: Bson,
    /// The payload.
    pub data: Bson,
    /// This attempt's number, starting at 1.
    pub attempt: u32,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: u32,
    /// How many times a handler snoozed it before (`snoozes`; 0 if never).
    pub snoozes: u32,
    /// Not started by then, it never starts (see [`crate::expiry`]).
    pub expires_at: Option<mongodb::bson::DateTime>,
    /// Priority it was claimed with.
    pub priority: i64,
    /// The fencing token of the claim that holds it.
    pub lease_token: ObjectId,
    /// The named queue it came from (`default` when it names none).
    pub queue: String,
    /// Its group within the queue (`None`: the queue's default group).
    pub group: Option<String>,
    /// Raised when an operator cancels the running job (`mongoq cancel`);
    /// a long handler may check [`Job::is_cancelled`] and stop early. Its
    /// outcome is not written either way.
    pub cancelled: Arc<AtomicBool>,
    /// The limited queue whose concurrency slot this job holds.
    pub(crate) slot: Option<Arc<str>>,
    /// The (queue, group) whose group concurrency slot this job holds.
    pub(crate) group_slot: Option<Arc<(String, String)>>,
    /// Set by [`Job::complete_in`]: the handler wrote the completion itself.
    pub(crate) settled: Arc<AtomicBool>,
    /// Under a rate limit: the instant its start was reserved for. It
    /// starts then, or within `START_SLACK` after; later, it goes back
    /// unstarted.
    pub(crate) start_at: Option<std::time::Instant>,
    /// The latest progress the handler reported ([`Job::set_progress`]).
    pub(crate) progress: Arc<ProgressCell>,
    /// The jobs it waited for (`after`), empty for most jobs.
    pub after: Vec<Bson>,
    /// Those jobs' statuses and results, in `after` order (see
    /// [`crate::flow::results`]), read when the job was claimed.
    pub deps: Vec<DepResult>,
    /// Of `after`, the jobs this one counted as completed when they
    /// finished (`deps_done`, unless failures count as done too): one of
    /// them found deleted later still completed ([`DepResult::gone`]).
    pub(crate) completed_deps: Vec<Bson>,
    /// Some waiting job waits on this one: its outcome settles them.
    pub(crate) has_dependents: bool,
    /// Since when it could run: its `run_at`, or when it was inserted (its
    /// `ObjectId`'s time); what the history's wait time counts from.
    pub(crate) eligible_at: Option<mongodb::bson::DateTime>,
    /// The producer's W3C `traceparent` (its `traceparent` field), if any.
    pub(crate) producer_trace: Option<String>,
    /// This attempt's span's `traceparent`, while the worker traces.
    pub(crate) attempt_trace: Option<String>,
}
/// A job's `max_attempts` (the worker's default when it has none).
fn max_attempts_of(document: &Document, default_max_attempts: u32) -> Result<u32, Malformed> {
    match document.get(fields::MAX_ATTEMPTS) {
        None | Some(Bson::Null) => Ok(default_max_attempts),
        Some(value) => match integer(value) {
            Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => Err(Malformed(format!(
                "`max_attempts` must be at least 1, but it is {n}"
            ))),
            None => Err(Malformed(format!(
                "`max_attempts` must be an integer, but it is {}",
                describe(value)
            ))),
        },
    }
}

/// The attempt a claimed job is on (its `attempts`, which the claim
/// incremented).
fn attempt_of(document: &Document) -> Result<u32, Malformed> {
    match document.get(fields::ATTEMPTS) {
        None | Some(Bson::Null) => Ok(1),
        Some(value) => match integer(value) {
            Some(n) if n >= 1 => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => Err(Malformed(format!(
                "`attempts` is owned by the worker and must be a positive integer, but it is {}",
                describe(value)
            ))),
        },
    }
}

/// A document's `group`: none, a name, or a reason it cannot run.
fn group_of(document: &Document) -> Result<Option<String>, Malformed> {
    match document.get(fields::GROUP) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(name)) => Ok(Some(name.clone())),
        Some(value) => Err(Malformed(format!(
            "`group` must be a string naming the job's group (a customer, a tenant), but it is {}",
            describe(value)
        ))),
    }
}

/// A document's `expires_at`: none, a date, or a reason it cannot run.
fn expires_at_of(document: &Document) -> Result<Option<mongodb::bson::DateTime>, Malformed> {
    match document.get(fields::EXPIRES_AT) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::DateTime(at)) => Ok(Some(*at)),
        Some(value) => Err(Malformed(format!(
            "`expires_at` must be a date (e.g. ISODate(\"2026-01-01T00:00:00Z\") in mongosh), but it is {}",
            describe(value)
        ))),
    }
}

/// Since when a document could run: its `run_at`, or its insert (the time
/// in its `ObjectId`); `None` when it tells neither.
fn eligible_at(document: &Document) -> Option<mongodb::bson::DateTime> {
    match (document.get(fields::RUN_AT), document.get("_id")) {
        (Some(Bson::DateTime(at)), _) => Some(*at),
        (_, Some(Bson::ObjectId(id))) => Some(id.timestamp()),
        _ => None,
    }
}

/// How many times handlers snoozed it: written by workers only, so
/// anything but a count reads as none.
fn snoozes_of(document: &Document) -> u32 {
    document
        .get(fields::SNOOZES)
        .and_then(integer)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// The producer's `traceparent`, if the document has a valid one (an
/// invalid one is ignored: the attempt starts a trace of its own).
fn producer_trace(document: &Document) -> Option<String> {
    document
        .get_str(fields::TRACEPARENT)
        .ok()
        .filter(|text| crate::trace::is_traceparent(text))
        .map(str::to_string)
}

/// Why a claimed document cannot run. The text becomes `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed job: {0}")]
pub struct Malformed(pub String);

impl Job {
    /// Reads a document this worker has just claimed.
    ///
    /// `default_max_attempts` applies when the producer set none.
    pub fn from_document(
        document: &Document,
        lease_token: ObjectId,
        default_max_attempts: u32,
    ) -> Result<Job, Malformed> {
        let id = document
            .get("_id")
            .cloned()
            .ok_or_else(|| Malformed("the document has no `_id`".into()))?;
        let data = document.get(fields::DATA).cloned().ok_or_else(|| {
            Malformed("the document has no `data` field; a job needs `data` (any value) and `status: \"pending\"`".into())
        })?;
        let priority = match document.get(fields::PRIORITY) {
            None | Some(Bson::Null) => 0,
            Some(value) => integer(value).ok_or_else(|| {
                Malformed(format!(
                    "`priority` must be an integer, but it is {}",
                    describe(value)
                ))
            })?,
        };
        match document.get(fields::RUN_AT) {
            None | Some(Bson::Null | Bson::DateTime(_)) => {}
            Some(value) => {
                return Err(Malformed(format!(
                    "`run_at` must be a date (e.g. ISODate(\"2026-01-01T00:00:00Z\") in mongosh), but it is {}",
                    describe(value)
                )))
            }
        }
        let expires_at = expires_at_of(document)?;
        let max_attempts = max_attempts_of(document, default_max_attempts)?;
        let attempt = attempt_of(document)?;
        let queue = match document.get(fields::QUEUE) {
            None | Some(Bson::Null) => fields::DEFAULT_QUEUE.to_string(),
            Some(Bson::String(name)) => name.clone(),
            Some(value) => {
                return Err(Malformed(format!(
                    "`queue` must be a string naming the queue, but it is {}",
                    describe(value)
                )))
            }
        };
        let group = group_of(document)?;
        let after = match document.get(fields::AFTER) {
            None | Some(Bson::Null) => Vec::new(),
            Some(Bson::Array(ids)) => ids.clone(),
            Some(value) => {
                return Err(Malformed(format!(
                    "`after` must be an array of the `_id`s the job waits for, but it is {}",
                    describe(value)
                )))
            }
        };
        Ok(Job {
            id,
            data,
            attempt,
            max_attempts,
            snoozes: snoozes_of(document),
            expires_at,
            priority,
            lease_token,
            queue,
            group,
            cancelled: Arc::new(AtomicBool::new(false)),
            slot: None,
            group_slot: None,
            settled: Arc::new(AtomicBool::new(false)),
            start_at: None,
            progress: Arc::default(),
            after,
            deps: Vec::new(),
            completed_deps: completed_deps(document),
            has_dependents: document.get_bool(fields::HAS_DEPENDENTS) == Ok(true),
            eligible_at: eligible_at(document),
            producer_trace: producer_trace(document),
            attempt_trace: None,
        })
    }

    /// The W3C `traceparent` a handler's own spans should nest under: the
    /// attempt's span while the worker exports traces (see
    /// [`crate::trace`]), else the producer's, if it gave one.
    pub fn traceparent(&self) -> Option<&str> {
        self.attempt_trace
            .as_deref()
            .or(self.producer_trace.as_deref())
    }

    /// Whether [`Job::complete_in`] wrote this job's completion.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// Reports how far the job got (`fraction` from 0.0 to 1.0, and what it
    /// does now). Cheap enough to call in a tight loop: it only replaces the
    /// latest value, and the worker writes the latest onto the job's
    /// `progress` at most once a second (see [`crate::progress`]).
    pub fn set_progress(&self, fraction: f64, note: Option<&str>) {
        self.progress.set(fraction, note);
    }

    /// Whether an operator cancelled this job while it ran.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The job as the JSON an `--exec` program reads on stdin:
    /// `{"id": …, "attempt": n, "max_attempts": n, "priority": n, "queue": …,
    /// "data": …}`, in relaxed extended JSON (dates as `{"$date": …}`, ids as
    /// `{"$oid": …}`); a job in a group also has `group`; a job that waited for others also has `deps`: `[{id, status, result,
    /// error, truncated}]` ([`DepResult::to_json`]); a job snoozed before has
    /// `snoozes`: how many times.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "id": self.id.clone().into_relaxed_extjson(),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "queue": self.queue,
            "data": self.data.clone().into_relaxed_extjson(),
        });
        if let (Some(group), Some(fields)) = (&self.group, json.as_object_mut()) {
            fields.insert("group".into(), group.clone().into());
        }
        if self.snoozes > 0 {
            if let Some(fields) = json.as_object_mut() {
                fields.insert("snoozes".into(), self.snoozes.into());
            }
        }
        if let (Some(traceparent), Some(fields)) = (self.traceparent(), json.as_object_mut()) {
            fields.insert("traceparent".into(), traceparent.into());
        }
        if !self.after.is_empty() {
            if let Some(fields) = json.as_object_mut() {
                let deps: Vec<serde_json::Value> =
                    self.deps.iter().map(DepResult::to_json).collect();
                fields.insert("deps".into(), deps.into());
            }
        }
        json
    }

    /// The result of dependency `id` (one of [`Job::after`]), if it
    /// completed with one.
    pub fn dep_result(&self, id: &Bson) -> Option<&Bson> {
        self.deps.iter().find(|d| &d.id == id)?.result.as_ref()
    }

    /// The id as text for logs and environment variables.
    pub fn id_text(&self) -> String {
        id_text(&self.id)
    }
}

/// "a string (\"high\")", "a date", … for error messages.
/// One dependency of a job, as its handler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DepResult {
    /// The dependency's `_id`.
    pub id: Bson,
    /// Its status when the dependent was claimed: `completed`, or (under
    /// `if_dep_fails: "run"`) `failed` / `cancelled` / `missing`.
    pub status: String,
    /// What its handler returned, if anything (and if it fit).
    pub result: Option<Bson>,
    /// Its `last_error`, for one that did not complete.
    pub error: Option<String>,
    /// The result was left out to keep within [`crate::flow::results::MAX_DEPS_BYTES`].
    pub truncated: bool,
    /// The dependency completed and its document was deleted since (by
    /// `mongoq purge`, retention, or by hand): its result went with it.
    pub gone: bool,
}

impl DepResult {
    /// As JSON: `{"id", "status", "result"?, "error"?, "truncated"?, "gone"?}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "id": self.id.clone().into_relaxed_extjson(),
            "status": self.status,
        });
        if let Some(fields) = json.as_object_mut() {
            if let Some(result) = &self.result {
                fields.insert("result".into(), result.clone().into_relaxed_extjson());
            }
            if let Some(error) = &self.error {
                fields.insert("error".into(), error.clone().into());
            }
            if self.truncated {
                fields.insert("truncated".into(), true.into());
            }
            if self.gone {
                fields.insert("gone".into(), true.into());
            }
        }
        json
    }
}

/// A claimed document's `deps_done` when each id in it completed: always,
/// unless `if_dep_fails: "run"` let failed ones in too.
fn completed_deps(document: &Document) -> Vec<Bson> {
    if document.get_str(fields::IF_DEP_FAILS) == Ok("run") {
        return Vec::new();
    }
    document
        .get_array(fields::DEPS_DONE)
        .cloned()
        .unwrap_or_default()
}

fn describe(value: &Bson) -> String {
    let shown = crate::text::truncate(value.clone().into_relaxed_extjson().to_string(), 60, "…");
    let kind = match value {
        Bson::String(_) => "a string",
        Bson::Double(_) => "a non-integer number",
        Bson::Boolean(_) => "a boolean",
        Bson::Array(_) => "an array",
        Bson::Document(_) => "an object",
        Bson::DateTime(_) => "a date",
        Bson::ObjectId(_) => "an ObjectId",
        Bson::Int32(_) | Bson::Int64(_) => "an integer",
        _ => "a value of another type",
    };
    format!("{kind} ({shown})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, DateTime};

    fn parse(document: Document) -> Result<Job, Malformed> {
        Job::from_document(&document, ObjectId::new(), 5)
    }

    #[test]
    fn a_producer_needs_only_data_and_status() {
        let job = parse(doc! {"_id": 1, "data": {"x": 1}, "status": "pending"}).unwrap();
        assert_eq!(job.priority, 0);
        assert_eq!(job.max_attempts, 5);
        assert_eq!(job.attempt, 1);
    }

    #[test]
    fn optional_fields_are_read() {
        let job = parse(doc! {"_id": 1, "data": null, "priority": 7_i64, "max_attempts": 2.0, "attempts": 2, "run_at": DateTime::now()}).unwrap();
        assert_eq!(job.priority, 7);
        assert_eq!(job.max_attempts, 2);
        assert_eq!(job.attempt, 2);
    }

    #[test]
    fn malformed_documents_say_what_is_wrong() {
        let reason = |d| parse(d).unwrap_err().0;
        assert!(reason(doc! {"_id": 1, "status": "pending"}).contains("no `data`"));
        assert!(reason(doc! {"_id": 1, "data": 1, "priority": "high"})
            .contains("`priority` must be an integer, but it is a string (\"high\")"));
        assert!(reason(doc! {"_id": 1, "data": 1, "run_at": "tomorrow"})
            .contains("`run_at` must be a date"));
        assert!(reason(doc! {"_id": 1, "data": 1, "max_attempts": -1})
            .contains("`max_attempts` must be at least 1, but it is -1"));
        assert!(reason(doc! {"_id": 1, "data": 1, "max_attempts": 1.5})
            .contains("`max_attempts` must be an integer"));
    }

    #[test]
    fn exec_json_carries_id_attempt_and_data() {
        let oid = ObjectId::new();
        let job = parse(doc! {"_id": oid, "data": {"cmd": "; rm -rf /"}}).unwrap();
        let json = job.to_json();
        assert_eq!(json["id"]["$oid"], oid.to_hex());
        assert_eq!(json["attempt"], 1);
        assert_eq!(json["data"]["cmd"], "; rm -rf /");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_bson() -> impl Strategy<Value = Bson> {
            let leaf = prop_oneof![
                Just(Bson::Null),
                any::<bool>().prop_map(Bson::Boolean),
                any::<i32>().prop_map(Bson::Int32),
                any::<i64>().prop_map(Bson::Int64),
                any::<f64>().prop_map(Bson::Double),
                ".{0,12}".prop_map(Bson::String),
                any::<i64>().prop_map(|ms| Bson::DateTime(DateTime::from_millis(ms))),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                        .prop_map(|m| Bson::Document(m.into_iter().collect())),
                ]
            })
        }

        fn field() -> impl Strategy<Value = Option<Bson>> {
            prop_oneof![Just(None), any_bson().prop_map(Some)]
        }

        proptest! {
            /// Whatever a producer writes, parsing never panics, and what it
            /// accepts is runnable: a positive attempt and attempt limit.
            #[test]
            fn any_document_parses_or_is_rejected_with_a_reason(
                data in field(), priority in field(), run_at in field(),
                max_attempts in field(), attempts in field(), extra in any_bson(),
            ) {
                let mut document = doc! {"_id": 1, "status": "pending", "unknown": extra};
                for (name, value) in [("data", data.clone()), ("priority", priority), ("run_at", run_at), ("max_attempts", max_attempts), ("attempts", attempts)] {
                    if let Some(value) = value {
                        document.insert(name, value);
                    }
                }
                match Job::from_document(&document, ObjectId::new(), 3) {
                    Ok(job) => {
                        prop_assert!(job.attempt >= 1 && job.max_attempts >= 1);
                        // Compared as text: NaN is not equal to itself.
                        prop_assert_eq!(format!("{:?}", Some(&job.data)), format!("{:?}", data.as_ref()));
                        let _ = job.to_json();
                    }
                    Err(Malformed(reason)) => prop_assert!(!reason.is_empty()),
                }
            }

            /// JSON from `mongoq enqueue` always becomes a document the
            /// worker accepts.
            #[test]
            fn every_enqueued_json_value_is_a_runnable_job(value in any_bson()) {
                let json = value.into_relaxed_extjson();
                if let Ok(data) = Bson::try_from(json) {
                    let document = crate::queue::enqueue::new_job_document(
                        ObjectId::new(), data, &crate::queue::EnqueueOptions::default(), DateTime::now());
                    let mut claimed = document.clone();
                    claimed.insert("attempts", 1);
                    prop_assert!(Job::from_document(&claimed, ObjectId::new(), 5).is_ok());
                }
            }
        }
    }
}
