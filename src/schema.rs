//! The document schema in one place: field names, the statuses a job
//! passes through, and the update documents that several rooms share (a
//! claim, an outcome, a rescue and a cancel all end or begin a lease).
//!
//! Statuses are a [`Status`] enum, never compared as strings: a typo in a
//! status is then a compile error rather than a query that silently matches
//! nothing. On the wire they are the lower-case strings DESIGN.md lists.

use mongodb::bson::{doc, Bson, DateTime, Document};

/// Field names of the document schema (see DESIGN.md).
pub mod fields {
    /// The job's payload, any BSON.
    pub const DATA: &str = "data";
    /// `pending`, `running`, `completed`, `failed`, or anything else (left alone).
    pub const STATUS: &str = "status";
    /// Higher runs first (int, default 0).
    pub const PRIORITY: &str = "priority";
    /// Not before this time (date, default: eligible now).
    pub const RUN_AT: &str = "run_at";
    /// The producer's W3C trace context (see `crate::trace`).
    pub const TRACEPARENT: &str = "traceparent";
    /// Attempts before `failed` (int, default: the worker's `--max-attempts`).
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    /// How many times the job has been claimed.
    pub const ATTEMPTS: &str = "attempts";
    /// How many times a handler snoozed the job ("not now"; no attempt charged).
    pub const SNOOZES: &str = "snoozes";
    /// Not started by then, never started: the job ends `cancelled`.
    pub const EXPIRES_AT: &str = "expires_at";
    /// On a job cancelled because it expired (`true`).
    pub const EXPIRED: &str = "expired";
    /// On a job kept by `enqueue --throttle`: enqueues of its key until
    /// then are dropped.
    pub const THROTTLE_UNTIL: &str = "throttle_until";
    /// The worker that holds the running job.
    pub const LEASE_OWNER: &str = "lease_owner";
    /// The fencing token of the claim that holds the running job.
    pub const LEASE_TOKEN: &str = "lease_token";
    /// When the lease expires unless extended.
    pub const LEASE_UNTIL: &str = "lease_until";
    /// When the job was last claimed.
    pub const STARTED_AT: &str = "started_at";
    /// When the job completed.
    pub const COMPLETED_AT: &str = "completed_at";
    /// When the job failed for good.
    pub const FAILED_AT: &str = "failed_at";
    /// What the handler returned.
    pub const RESULT: &str = "result";
    /// The latest error text.
    pub const LAST_ERROR: &str = "last_error";
    /// A bounded history of attempts' errors.
    pub const ERRORS: &str = "errors";
    /// The named queue the job belongs to (string; missing means `default`).
    pub const QUEUE: &str = "queue";
    /// The group the job belongs to within its queue (string; missing
    /// means the queue's default group): a customer, a tenant, an account.
    pub const GROUP: &str = "group";
    /// A producer's key: at most one pending or running job has it.
    pub const UNIQUE_KEY: &str = "unique_key";
    /// Set by `mongoq cancel` on a running job: drop it at the next lease extension.
    pub const CANCEL_REQUESTED: &str = "cancel_requested";
    /// When the job was cancelled.
    pub const CANCELLED_AT: &str = "cancelled_at";
    /// How far the latest attempt got: `{fraction, note, attempt, at}`,
    /// written by the worker at most once a second while a job runs.
    pub const PROGRESS: &str = "progress";
    /// The schedule that created the job (see `crate::schedule`).
    pub const SCHEDULE: &str = "schedule";
    /// The schedule's nominal instant the job is for (not when it fired).
    pub const TICK: &str = "tick";
    /// The ids of the jobs a `waiting` job waits on (see `crate::flow`).
    pub const AFTER: &str = "after";
    /// `"run"`: a dependency that fails or is cancelled counts as done for
    /// this job (default: it cancels this job).
    pub const IF_DEP_FAILS: &str = "if_dep_fails";
    /// The ids among `after` that have finished (completed, or failed under
    /// `if_dep_fails: "run"`); the job is released when it covers `after`.
    pub const DEPS_DONE: &str = "deps_done";
    /// On a `waiting` job: how many distinct jobs `after` names; it is
    /// released when `deps_done` holds that many.
    pub const DEPS_TOTAL: &str = "deps_total";
    /// Set on a job some `waiting` job waits on, until its dependents have
    /// been released or cancelled after it finished.
    pub const HAS_DEPENDENTS: &str = "has_dependents";
    /// Set on a `waiting` job once its dependencies carry `has_dependents`.
    pub const LINKED: &str = "linked";
    /// When a `waiting` job became `pending`.
    pub const RELEASED_AT: &str = "released_at";
    /// On a job inserted by `enqueue --flow`: `{id, step}`.
    pub const FLOW: &str = "flow";

    /// The queue of jobs that name none.
    pub const DEFAULT_QUEUE: &str = "default";
    /// The key this job is counted under in `<collection>_counts` (see
    /// [`crate::counts`]); set only by the reconciler, absent until then.
    pub const COUNTED: &str = "counted";
    /// What a job was counted under before its `status` last changed: every
    /// write that changes a status renames `counted` to this
    /// ([`super::recount`]), so the reconciler can move the count.
    pub const WAS_COUNTED: &str = "was_counted";
}

/// The `$rename` every update that changes a job's `status` carries:
/// `counted` becomes `was_counted`, which tells the counts' reconciler
/// ([`crate::counts`]) that the job is to be counted again, and under what
/// it was counted until now. A job not yet counted has no `counted`, and the
/// rename then changes nothing (an earlier `was_counted` stays).
pub fn recount() -> Document {
    doc! {fields::COUNTED: fields::WAS_COUNTED}
}

/// `update` with [`recount`] added when it sets `status`.
pub fn with_recount(mut update: Document) -> Document {
    let sets_status = update
        .get_document("$set")
        .is_ok_and(|set| set.contains_key(fields::STATUS));
    if sets_status {
        update.insert("$rename", recount());
    }
    update
}

/// [`recount`] as the first stages of a pipeline update.
pub fn recount_stages() -> [Document; 2] {
    [
        doc! {"$set": {fields::WAS_COUNTED: {"$ifNull": [format!("${}", fields::COUNTED), format!("${}", fields::WAS_COUNTED)]}}},
        doc! {"$unset": fields::COUNTED},
    ]
}

/// Where a job is in its life. Any other `status` value in the collection
/// (e.g. `paused`) is left alone by workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for other jobs (`after`) before it may be claimed.
    Waiting,
    /// Waiting to be claimed.
    Pending,
    /// Claimed and leased by a worker.
    Running,
    /// Finished successfully.
    Completed,
    /// Attempts exhausted, a permanent error, or malformed.
    Failed,
    /// Cancelled by an operator (`mongoq cancel`); never runs again.
    Cancelled,
}

impl Status {
    /// Every status mongoq writes.
    pub const ALL: [Status; 6] = [
        Status::Waiting,
        Status::Pending,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];
    /// Statuses of jobs still to be run or running: a `unique_key` is held
    /// only by these, and purge never touches them.
    pub const ACTIVE: [Status; 2] = [Status::Pending, Status::Running];
    /// Statuses a job ends in; retention and purge apply to these.
    pub const FINISHED: [Status; 3] = [Status::Completed, Status::Failed, Status::Cancelled];

    /// The status as stored in `status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status a stored value names, if mongoq knows it.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// For a finished status, the timestamp field set when the job got it.
    pub const fn finished_at(self) -> Option<&'static str> {
        match self {
            Status::Completed => Some(fields::COMPLETED_AT),
            Status::Failed => Some(fields::FAILED_AT),
            Status::Cancelled => Some(fields::CANCELLED_AT),
            Status::Waiting | Status::Pending | Status::Running => None,
        }
    }

    /// Whether the job is still to run or running.
    pub fn is_active(self) -> bool {
        Status::ACTIVE.contains(&self)
    }

    /// Whether the job has ended (completed, failed or cancelled).
    pub fn is_finished(self) -> bool {
        Status::FINISHED.contains(&self)
    }

    /// `{$in: [...]}` of these statuses, for a filter.
    pub fn any_of(statuses: &[Status]) -> Bson {
        let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        Bson::Document(doc! {"$in": names})
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Status> for Bson {
    fn from(status: Status) -> Bson {
        Bson::String(status.as_str().to_string())
    }
}

/// How many past errors a job keeps in `errors`.
pub const ERROR_HISTORY: i32 = 10;

/// The `$unset` of a lease: what ends a worker's hold on a job.
pub(crate) fn unset_lease() -> Document {
    doc! {fields::LEASE_OWNER: "", fields::LEASE_TOKEN: "", fields::LEASE_UNTIL: ""}
}

/// The `$push` that appends one entry to the bounded error history.
pub(crate) fn push_error(entry: Document) -> Document {
    doc! {fields::ERRORS: {"$each": [entry], "$slice": -ERROR_HISTORY}}
}

/// Largest `result` stored; larger ones are replaced by a note.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// The update that ends a job as `completed` at `at` with `result`: the
/// worker's outcome writes it, and so does [`crate::Job::complete_in`]
/// inside a caller's transaction.
pub(crate) fn completed_update(at: DateTime, result: Option<Bson>) -> Document {
    doc! {
        "$set": {fields::STATUS: Status::Completed, fields::COMPLETED_AT: at, fields::RESULT: bounded_result(result)},
        "$unset": unset_lease(),
        "$rename": recount(),
    }
}

/// The update that completes several jobs of one claim at `at`, each with
/// its own result: one pipeline (MongoDB 4.2+) in which each document picks
/// its result by the position of its `_id` in `ids` (`results[i]` is the
/// stored result of `ids[i]`, null for none). Both arrays are `$literal`,
/// so a result or an id that looks like an expression (`"$x"`, `{$add:
/// …}`) is stored as written. The filter must match only `ids`: an `_id`
/// not among them would pick the last result.
pub(crate) fn completed_pipeline(at: DateTime, ids: &[Bson], results: &[Bson]) -> Vec<Document> {
    let lease: Vec<String> = unset_lease().keys().cloned().collect();
    let [was, uncount] = recount_stages();
    vec![
        was,
        uncount,
        doc! {"$set": {
            fields::STATUS: Status::Completed,
            fields::COMPLETED_AT: at,
            fields::RESULT: {"$arrayElemAt": [
                {"$literal": results},
                {"$indexOfArray": [{"$literal": ids}, "$_id"]},
            ]},
        }},
        doc! {"$unset": lease},
    ]
}

/// A result as stored: as it is, or a note when it is over the bound.
pub(crate) fn bounded_result(result: Option<Bson>) -> Bson {
    sized_result(result).0
}

/// [`bounded_result`], with about how many bytes it adds to a command
/// (measured once: an outcome write batches results by size).
pub(crate) fn sized_result(result: Option<Bson>) -> (Bson, usize) {
    let Some(result) = result else {
        return (Bson::Null, 1);
    };
    let size = mongodb::bson::to_vec(&doc! {"r": &result}).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_RESULT_BYTES {
        let note =
            format!("[result not stored: {size} bytes is over the {MAX_RESULT_BYTES}-byte limit]");
        let bytes = note.len() + 16;
        (Bson::String(note), bytes)
    } else {
        (result, size)
    }
}

/// The fence of every outcome: this job, under this claim, still running.
pub(crate) fn fenced(id: &Bson, token: mongodb::bson::oid::ObjectId) -> Document {
    doc! {"_id": id.clone(), fields::LEASE_TOKEN: token, fields::STATUS: Status::Running}
}

/// The update that ends a job as `cancelled` at `at`.
pub(crate) fn cancelled_update(reason: &str, at: DateTime) -> Document {
    let mut unset = unset_lease();
    unset.insert(fields::CANCEL_REQUESTED, "");
    doc! {
        "$set": {fields::STATUS: Status::Cancelled, fields::CANCELLED_AT: at, fields::LAST_ERROR: reason},
        "$unset": unset,
        "$rename": recount(),
    }
}

/// An integer from any BSON number that holds one exactly (producers write
/// numbers as int32, int64 or, from JavaScript, doubles).
pub fn integer(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        #[allow(clippy::float_cmp)]
        Bson::Double(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(*x as i64),
        _ => None,
    }
}

/// A non-negative count from a server reply field (`n`, `nModified`, a
/// `$sum`), 0 when absent or not a count.
pub(crate) fn count(value: Option<&Bson>) -> u64 {
    value
        .and_then(integer)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// An `_id` as text: the hex of an `ObjectId`, the string itself, else its
/// extended JSON form.
pub fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(text) => text.clone(),
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// A comparable key of an id (BSON values are not `Hash`), equal for
/// numbers MongoDB finds equal (`1`, `NumberLong(1)`, `1.0`).
pub(crate) fn id_key(id: &Bson) -> String {
    match integer(id) {
        Some(n) => format!("number {n}"),
        None => format!("{id:?}"),
    }
}

/// How many distinct jobs `after` names: its `deps_total`.
pub(crate) fn distinct_ids(after: &[Bson]) -> i64 {
    after
        .iter()
        .map(id_key)
        .collect::<std::collections::HashSet<_>>()
        .len() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_group() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(
                status.is_active() || status == Status::Waiting,
                status.finished_at().is_none()
            );
        }
        assert_eq!(Status::parse("paused"), None);
        assert_eq!(Bson::from(Status::Running), Bson::String("running".into()));
    }

    #[test]
    fn integers_come_from_any_exact_number() {
        assert_eq!(integer(&Bson::Int32(3)), Some(3));
        assert_eq!(integer(&Bson::Double(4.0)), Some(4));
        assert_eq!(integer(&Bson::Double(4.5)), None);
        assert_eq!(count(Some(&Bson::Int64(-1))), 0);
        assert_eq!(count(None), 0);
    }
}
