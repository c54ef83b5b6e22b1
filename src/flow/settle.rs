//! Settling finished jobs: release their dependents, or cancel them.
//!
//! [`settle`] takes jobs that have finished (or turned out not to exist) and
//! carried `has_dependents`, and, per round:
//!
//! 1. reads their waiting dependents (index `mongoq_after {after, status}`,
//!    partial on `after` existing, so only flows' jobs are in it): one `find`;
//! 2. marks the ones it may count as done: one pipeline `updateMany` that
//!    adds them to `deps_done` (only ids of that job's `after`) and sets
//!    `status: "pending"` where `after` is now covered. The document decides,
//!    at the instant of the write, so concurrent settles release once;
//! 3. cancels the ones a failed dependency dooms: one `update` command with
//!    a statement per failed dependency, so each `last_error` names its own;
//! 4. takes the flag off the settled jobs.
//!
//! Cancelled dependents that have dependents of their own are the next
//! round's input, until none is left (the set of ids seen stops a cycle a
//! producer wrote by hand). Every step is idempotent: a settle cut short by
//! a crash is finished by the next one ([`super::sweep`]).

use std::collections::HashSet;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use crate::error::Error;
use crate::queue::Queue;
use crate::schema::{fields, id_text, Status};

/// Ids per `$in`: well under the 16 MB command limit for any id type.
pub(crate) const CHUNK: usize = 5_000;

/// How a dependency ended, as its dependents see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Completed: counts as done for every dependent.
    Completed,
    /// Failed, with its last error.
    Failed(String),
    /// Cancelled, with its reason.
    Cancelled(String),
    /// No such document (never inserted, or deleted before it completed).
    Missing,
}

impl Ended {
    /// How a job that ended with `status` (and `last_error`) ends for its
    /// dependents; `None` while it has not finished.
    pub(crate) fn from_status(status: Status, error: &str) -> Option<Ended> {
        match status {
            Status::Completed => Some(Ended::Completed),
            Status::Failed => Some(Ended::Failed(error.to_string())),
            Status::Cancelled => Some(Ended::Cancelled(error.to_string())),
            Status::Waiting | Status::Pending | Status::Running => None,
        }
    }

    /// From a document's `status` and `last_error`.
    pub(crate) fn of_document(job: &Document) -> Option<Ended> {
        let status = job.get_str(fields::STATUS).ok().and_then(Status::parse)?;
        Ended::from_status(status, job.get_str(fields::LAST_ERROR).unwrap_or(""))
    }

    /// Why a dependent of `id` that does not run anyway is cancelled.
    fn reason(&self, id: &Bson) -> String {
        let id = id_text(id);
        let cut = |text: &str| crate::text::truncate(text.to_string(), 300, "…");
        match self {
            Ended::Completed => format!("dependency {id} completed"),
            Ended::Failed(error) => format!("dependency {id} failed: {}", cut(error)),
            Ended::Cancelled(reason) => format!("dependency {id} was cancelled: {}", cut(reason)),
            Ended::Missing => format!(
                "dependency {id} does not exist (never inserted, or deleted before it completed)"
            ),
        }
    }
}

/// A job whose dependents are to be settled.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub(crate) id: Bson,
    pub(crate) ended: Ended,
}

/// What a settle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Settled {
    /// Dependents that became `pending` (as read before the write: under a
    /// race with another worker's settle, the one whose write flips a job
    /// may not know it).
    pub released: u64,
    /// Dependents cancelled because a dependency failed, was cancelled or
    /// is gone, counted through every level.
    pub cancelled: u64,
    /// Dependents that counted a failed dependency as done
    /// (`if_dep_fails: "run"`).
    pub ran_anyway: u64,
}

impl Settled {
    /// Adds what another settle did.
    pub(crate) fn add(&mut self, other: Settled) {
        self.released += other.released;
        self.cancelled += other.cancelled;
        self.ran_anyway += other.ran_anyway;
    }
}

/// A waiting dependent as one round reads it.
struct Dependent {
    id: Bson,
    after: Vec<Bson>,
    done: Vec<Bson>,
    runs_anyway: bool,
    has_dependents: bool,
}

impl Dependent {
    fn from_document(document: &Document) -> Dependent {
        let ids = |field: &str| match document.get(field) {
            Some(Bson::Array(ids)) => ids.clone(),
            _ => Vec::new(),
        };
        Dependent {
            id: document.get("_id").cloned().unwrap_or(Bson::Null),
            after: ids(fields::AFTER),
            done: ids(fields::DEPS_DONE),
            runs_anyway: document.get_str(fields::IF_DEP_FAILS) == Ok("run"),
            has_dependents: document.get_bool(fields::HAS_DEPENDENTS) == Ok(true),
        }
    }

    /// Whether marking `ids` as done covers its `after`.
    fn covered_by(&self, ids: &HashSet<String>) -> bool {
        self.after.iter().all(|dep| {
            let key = key(dep);
            ids.contains(&key) || self.done.iter().any(|done| self::key(done) == key)
        })
    }
}

/// A comparable key of an id (BSON values are not `Hash`).
pub(crate) fn key(id: &Bson) -> String {
    format!("{id:?}")
}

/// Releases or cancels the waiting dependents of `finished`, transitively,
/// then takes `has_dependents` off the finished jobs.
pub(crate) fn settle(queue: &Queue, finished: Vec<Finished>) -> Result<Settled, Error> {
    let mut total = Settled::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut round: Vec<Finished> = finished
        .into_iter()
        .filter(|f| seen.insert(key(&f.id)))
        .collect();
    while !round.is_empty() {
        let mut next = Vec::new();
        for chunk in round.chunks(CHUNK) {
            let (settled, cancelled) = settle_round(queue, chunk)?;
            total.add(settled);
            next.extend(cancelled.into_iter().filter(|f| seen.insert(key(&f.id))));
        }
        let ids: Vec<&Bson> = round.iter().map(|f| &f.id).collect();
        queue
            .collection()
            .update_many(
                doc! {"_id": {"$in": ids}, fields::STATUS: Status::any_of(&Status::FINISHED)},
                doc! {"$unset": {fields::HAS_DEPENDENTS: ""}},
            )
            .run()
            .map_err(|e| queue.db_error("update (flow: settled)", &e))?;
        round = next;
    }
    Ok(total)
}

/// One round: the dependents of `finished`; returns what it did and the
/// dependents it cancelled that have dependents of their own.
fn settle_round(queue: &Queue, finished: &[Finished]) -> Result<(Settled, Vec<Finished>), Error> {
    let ids: Vec<&Bson> = finished.iter().map(|f| &f.id).collect();
    let dependents: Vec<Dependent> = queue
        .collection()
        .find(doc! {fields::AFTER: {"$in": &ids}, fields::STATUS: Status::Waiting})
        .projection(doc! {
            fields::AFTER: 1, fields::DEPS_DONE: 1, fields::IF_DEP_FAILS: 1, fields::HAS_DEPENDENTS: 1,
        })
        .run()
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| queue.db_error("find (flow: dependents)", &e))?
        .iter()
        .map(Dependent::from_document)
        .collect();
    if dependents.is_empty() {
        return Ok((Settled::default(), Vec::new()));
    }
    let (statements, settled, next) = plan(finished, &dependents, queue.now());
    if statements.is_empty() {
        return Ok((settled, next));
    }
    let reply = queue.run_write_command(
        doc! {
            "update": queue.collection().name(),
            "updates": statements,
            "ordered": false,
        },
        "update (flow: release)",
    )?;
    if let Some(Bson::Array(errors)) = reply.get("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Err(Error::Invalid(format!(
                "MongoDB refused a flow release: {}",
                first.get_str("errmsg").unwrap_or("no message")
            )));
        }
    }
    Ok((settled, next))
}

/// The round's writes for `dependents` of `finished` (pure): the marking
/// statements, then one cancel statement per failed dependency; what they
/// will do as read now; and the cancelled dependents that have dependents.
fn plan(
    finished: &[Finished],
    dependents: &[Dependent],
    now: DateTime,
) -> (Vec<Document>, Settled, Vec<Finished>) {
    let mut settled = Settled::default();
    let failed: Vec<&Finished> = finished
        .iter()
        .filter(|f| f.ended != Ended::Completed)
        .collect();
    let failed_keys: HashSet<String> = failed.iter().map(|f| key(&f.id)).collect();
    let all_keys: HashSet<String> = finished.iter().map(|f| key(&f.id)).collect();
    let completed_keys: HashSet<String> = all_keys.difference(&failed_keys).cloned().collect();
    let hit_by_failure = |d: &Dependent| d.after.iter().any(|dep| failed_keys.contains(&key(dep)));
    let doomed = |d: &Dependent| !d.runs_anyway && hit_by_failure(d);

    // Marking as done: completed dependencies for everyone not doomed;
    // failed ones too for those that run anyway.
    let mut plain = Vec::new();
    let mut anyway = Vec::new();
    for dependent in dependents.iter().filter(|d| !doomed(d)) {
        let counted = if dependent.runs_anyway {
            &all_keys
        } else {
            &completed_keys
        };
        if dependent.covered_by(counted) {
            settled.released += 1;
        }
        if dependent.runs_anyway {
            settled.ran_anyway += u64::from(hit_by_failure(dependent));
            anyway.push(&dependent.id);
        } else {
            plain.push(&dependent.id);
        }
    }
    let completed_ids: Vec<Bson> = finished
        .iter()
        .filter(|f| f.ended == Ended::Completed)
        .map(|f| f.id.clone())
        .collect();
    let every_id: Vec<Bson> = finished.iter().map(|f| f.id.clone()).collect();
    let mut statements = Vec::new();
    if !plain.is_empty() && !completed_ids.is_empty() {
        statements.push(mark_statement(&plain, &completed_ids, now));
    }
    if !anyway.is_empty() {
        statements.push(mark_statement(&anyway, &every_id, now));
    }
    // Cancelling: one statement per failed dependency, so that each
    // dependent's last_error names the dependency that doomed it (the first
    // one in its `after`, if several failed).
    let mut next = Vec::new();
    for failure in &failed {
        let victims: Vec<&Dependent> = dependents
            .iter()
            .filter(|d| doomed(d))
            .filter(|d| {
                d.after
                    .iter()
                    .find(|dep| failed_keys.contains(&key(dep)))
                    .map(key)
                    == Some(key(&failure.id))
            })
            .collect();
        if victims.is_empty() {
            continue;
        }
        settled.cancelled += victims.len() as u64;
        let reason = failure.ended.reason(&failure.id);
        let ids: Vec<&Bson> = victims.iter().map(|d| &d.id).collect();
        statements.push(doc! {
            "q": {"_id": {"$in": ids}, fields::STATUS: Status::Waiting},
            "u": {"$set": {
                fields::STATUS: Status::Cancelled,
                fields::CANCELLED_AT: now,
                fields::LAST_ERROR: &reason,
            }},
            "multi": true,
        });
        next.extend(
            victims
                .iter()
                .filter(|d| d.has_dependents)
                .map(|d| Finished {
                    id: d.id.clone(),
                    ended: Ended::Cancelled(reason.clone()),
                }),
        );
    }
    (statements, settled, next)
}

/// The pipeline statement that adds `done` (only ids of each job's `after`)
/// to `deps_done` of the waiting jobs `ids`, and releases those covered.
fn mark_statement(ids: &[&Bson], done: &[Bson], now: DateTime) -> Document {
    let covered =
        doc! {"$setIsSubset": [format!("${}", fields::AFTER), format!("${}", fields::DEPS_DONE)]};
    doc! {
        "q": {"_id": {"$in": ids}, fields::STATUS: Status::Waiting},
        "u": [
            {"$set": {fields::DEPS_DONE: {"$setUnion": [
                {"$ifNull": [format!("${}", fields::DEPS_DONE), []]},
                {"$setIntersection": [format!("${}", fields::AFTER), {"$literal": done}]},
            ]}}},
            {"$set": {
                fields::STATUS: {"$cond": [covered.clone(), Status::Pending.as_str(), Status::Waiting.as_str()]},
                fields::RELEASED_AT: {"$cond": [covered.clone(), now, "$$REMOVE"]},
                // Released jobs queue behind the ones already eligible; a
                // producer's later `run_at` still holds.
                fields::RUN_AT: {"$cond": [covered, {"$max": [format!("${}", fields::RUN_AT), now]}, format!("${}", fields::RUN_AT)]},
            }},
        ],
        "multi": true,
    }
}

/// Settles the jobs `ids` that have finished and still carry
/// `has_dependents`, reading how each ended from the collection (so a job
/// whose outcome this worker did not write, because its lease was lost,
/// is settled by what it really became, or not at all while it runs).
pub(crate) fn settle_ids(queue: &Queue, ids: &[Bson]) -> Result<Settled, Error> {
    let mut finished = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let cursor = queue
            .collection()
            .find(doc! {"_id": {"$in": chunk}, fields::HAS_DEPENDENTS: true})
            .projection(doc! {fields::STATUS: 1, fields::LAST_ERROR: 1})
            .run()
            .map_err(|e| queue.db_error("find (flow: finished)", &e))?;
        for job in cursor {
            let job = job.map_err(|e| queue.db_error("find (flow: finished)", &e))?;
            if let (Some(id), Some(ended)) = (job.get("_id"), Ended::of_document(&job)) {
                finished.push(Finished {
                    id: id.clone(),
                    ended,
                });
            }
        }
    }
    settle(queue, finished)
}

/// Of `(id, lease token)` pairs whose outcome matched nothing, the ids
/// still running under that token with `has_dependents`: the flag came
/// after the claim, and the outcome's fence held it back (see
/// [`super`]).
pub(crate) fn held_back(
    queue: &Queue,
    candidates: &[(Bson, ObjectId)],
) -> Result<Vec<Bson>, Error> {
    let mut held = Vec::new();
    for chunk in candidates.chunks(CHUNK) {
        let ids: Vec<&Bson> = chunk.iter().map(|(id, _)| id).collect();
        let tokens: Vec<ObjectId> = chunk.iter().map(|(_, token)| *token).collect();
        let cursor = queue
            .collection()
            .find(doc! {
                "_id": {"$in": ids},
                fields::STATUS: Status::Running,
                fields::HAS_DEPENDENTS: true,
                fields::LEASE_TOKEN: {"$in": tokens},
            })
            .projection(doc! {fields::LEASE_TOKEN: 1})
            .run()
            .map_err(|e| queue.db_error("find (flow: held back)", &e))?;
        for job in cursor {
            let job = job.map_err(|e| queue.db_error("find (flow: held back)", &e))?;
            let (Some(id), Ok(token)) = (job.get("_id"), job.get_object_id(fields::LEASE_TOKEN))
            else {
                continue;
            };
            if chunk.iter().any(|(i, t)| i == id && *t == token) {
                held.push(id.clone());
            }
        }
    }
    Ok(held)
}
