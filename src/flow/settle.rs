//! Settling finished jobs: release their dependents, or cancel them.
//!
//! [`settle`] takes jobs that have finished (or turned out not to exist) and
//! carried `has_dependents`, and, per round:
//!
//! 1. reads their waiting dependents' `after` (index `mongoq_after {after,
//!    status}`, partial on `after` existing, so only flows' jobs are in
//!    it): one `find`;
//! 2. cancels the ones a failed dependency dooms: one statement per failed
//!    dependency `{after: ID, status: "waiting", if_dep_fails: {$ne:
//!    "run"}}`, so each `last_error` names its own;
//! 3. counts the finished ones as done: per dependent, one `$addToSet` of
//!    the finished ids of its own `after` (failed ones only under
//!    `if_dep_fails: "run"`), all in one command. A dependent that this
//!    completes, by what step 1 read (`deps_done` only grows), is released
//!    in the same statement: `status: "pending"`, `released_at` on the
//!    server's clock;
//! 4. releases, in a second command, the other marked dependents whose
//!    `deps_done` now holds as many ids as their `after` holds distinct
//!    ones (`deps_total`, written with the job). It runs after this
//!    worker's own step 3 and tests the document as it is then, so when two
//!    workers complete the last two dependencies at once, whichever release
//!    runs second sees both. Every release is conditional on `waiting`: a
//!    job leaves it once, and the count of released jobs is exact.
//! 5. takes the flag off the settled jobs.
//!
//! The intersections are computed here, not by the server: a write is an
//! append and a size test, whatever the size of a fan-in. Cancelled
//! dependents that have dependents of their own are the next round's input,
//! until none is left (the set of ids seen stops a cycle a producer wrote by
//! hand). Every step is idempotent: a settle cut short by a crash is
//! finished by the next one ([`super::sweep`]).

use std::collections::HashSet;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use crate::error::Error;
use crate::queue::Documents;
use crate::queue::{Queue, WriteError};
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
    /// Dependents this settle made `pending` (its own writes' count).
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

pub(crate) use crate::schema::{distinct_ids as distinct, id_key as key};

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

/// A waiting dependent as a round reads it.
struct Dependent {
    id: Bson,
    after: HashSet<String>,
    /// `deps_done` as read: it only grows, so what it covers stays covered.
    done: HashSet<String>,
    runs_anyway: bool,
}

/// One round: the dependents of `finished`; returns what it did and the
/// dependents it cancelled that have dependents of their own.
fn settle_round(queue: &Queue, finished: &[Finished]) -> Result<(Settled, Vec<Finished>), Error> {
    let mut settled = Settled::default();
    let dependents = read_dependents(queue, finished)?;
    if dependents.is_empty() {
        return Ok((settled, Vec::new()));
    }
    let now = queue.now();
    let failed: Vec<&Finished> = finished
        .iter()
        .filter(|f| f.ended != Ended::Completed)
        .collect();
    let mut next = Vec::new();
    if !failed.is_empty() {
        // One statement per failed dependency, so that each last_error
        // names the one that doomed it.
        let cancels: Vec<Document> = failed
            .iter()
            .map(|f| {
                doc! {
                    "q": {fields::AFTER: &f.id, fields::STATUS: Status::Waiting, fields::IF_DEP_FAILS: {"$ne": "run"}},
                    "u": {"$set": {
                        fields::STATUS: Status::Cancelled,
                        fields::CANCELLED_AT: now,
                        fields::LAST_ERROR: f.ended.reason(&f.id),
                    }, "$rename": crate::schema::recount()},
                    "multi": true,
                }
            })
            .collect();
        settled.cancelled = write(queue, cancels, "update (flow: cancel)")?;
        if settled.cancelled > 0 {
            next = cancelled_with_dependents(queue, &failed)?;
        }
    }
    // Each dependent gets the finished jobs of its own `after` that count
    // as done for it. One this round's jobs complete (as read; `deps_done`
    // only grows) is marked and released in one statement; the others are
    // marked, then released if another worker's marks completed them
    // meanwhile.
    let mut releases = Vec::new();
    let mut marks = Vec::new();
    let mut marked_ids = Vec::new();
    for dependent in &dependents {
        let counted: Vec<&Bson> = finished
            .iter()
            .filter(|f| dependent.after.contains(&key(&f.id)))
            .filter(|f| f.ended == Ended::Completed || dependent.runs_anyway)
            .map(|f| &f.id)
            .collect();
        if counted.is_empty() {
            continue;
        }
        if dependent.runs_anyway && failed.iter().any(|f| dependent.after.contains(&key(&f.id))) {
            settled.ran_anyway += 1;
        }
        let keys: HashSet<String> = counted.iter().map(|id| key(id)).collect();
        let covered = dependent
            .after
            .iter()
            .all(|k| keys.contains(k) || dependent.done.contains(k));
        let mut update = doc! {"$addToSet": {fields::DEPS_DONE: {"$each": counted}}};
        if covered {
            update.extend(released(now));
            releases.push(doc! {
                // A producer's waiting job with a unique_key is failed by
                // the link, never released.
                "q": {"_id": &dependent.id, fields::STATUS: Status::Waiting, fields::UNIQUE_KEY: {"$exists": false}},
                "u": update,
            });
        } else {
            marks.push(
                doc! {"q": {"_id": &dependent.id, fields::STATUS: Status::Waiting}, "u": update},
            );
            marked_ids.push(&dependent.id);
        }
    }
    settled.released = write(queue, releases, "update (flow: release)")?;
    if write(queue, marks, "update (flow: mark done)")? == 0 {
        return Ok((settled, next));
    }
    let release = doc! {
        "q": {
            "_id": {"$in": marked_ids},
            fields::STATUS: Status::Waiting,
            fields::UNIQUE_KEY: {"$exists": false},
            fields::DEPS_TOTAL: {"$type": "number"},
            "$expr": {"$gte": [
                {"$size": {"$ifNull": [format!("${}", fields::DEPS_DONE), []]}},
                format!("${}", fields::DEPS_TOTAL),
            ]},
        },
        "u": released(now),
        "multi": true,
    };
    settled.released += write(queue, vec![release], "update (flow: release)")?;
    Ok((settled, next))
}

/// The waiting dependents of `finished`, as a round needs them.
fn read_dependents(queue: &Queue, finished: &[Finished]) -> Result<Vec<Dependent>, Error> {
    let ids: Vec<&Bson> = finished.iter().map(|f| &f.id).collect();
    let keys = |d: &Document, field: &str| -> HashSet<String> {
        d.get_array(field)
            .map(|a| a.iter().map(key).collect())
            .unwrap_or_default()
    };
    Ok(queue
        .collection()
        .find(doc! {fields::AFTER: {"$in": &ids}, fields::STATUS: Status::Waiting})
        .projection(doc! {fields::AFTER: 1, fields::DEPS_DONE: 1, fields::IF_DEP_FAILS: 1})
        .run()
        .documents(queue, "find (flow: dependents)")?
        .iter()
        .map(|d| Dependent {
            id: d.get("_id").cloned().unwrap_or(Bson::Null),
            after: keys(d, fields::AFTER),
            done: keys(d, fields::DEPS_DONE),
            runs_anyway: d.get_str(fields::IF_DEP_FAILS) == Ok("run"),
        })
        .collect())
}

/// What releasing a waiting job writes: `pending`, `released_at` on the
/// server's clock, and a `run_at` that queues it behind the jobs already
/// eligible (a producer's later `run_at` still holds).
fn released(now: mongodb::bson::DateTime) -> Document {
    doc! {
        "$set": {fields::STATUS: Status::Pending},
        "$rename": crate::schema::recount(),
        "$max": {fields::RUN_AT: now},
        "$currentDate": {fields::RELEASED_AT: true},
    }
}

/// The dependents of `failed` that are cancelled and have dependents of
/// their own: the next round.
fn cancelled_with_dependents(queue: &Queue, failed: &[&Finished]) -> Result<Vec<Finished>, Error> {
    let ids: Vec<&Bson> = failed.iter().map(|f| &f.id).collect();
    let documents = queue
        .collection()
        .find(doc! {
            fields::AFTER: {"$in": ids},
            fields::STATUS: Status::Cancelled,
            fields::HAS_DEPENDENTS: true,
        })
        .projection(doc! {fields::LAST_ERROR: 1})
        .run()
        .documents(queue, "find (flow: cancelled)")?;
    let mut next = Vec::new();
    for job in documents {
        if let Some(id) = job.get("_id") {
            next.push(Finished {
                id: id.clone(),
                ended: Ended::Cancelled(job.get_str(fields::LAST_ERROR).unwrap_or("").to_string()),
            });
        }
    }
    Ok(next)
}

/// Runs one `update` command of `statements`; returns how many documents
/// they matched. A statement the server refuses is an error: the sweep
/// tries again.
pub(crate) fn write(
    queue: &Queue,
    statements: Vec<Document>,
    operation: &'static str,
) -> Result<u64, Error> {
    if statements.is_empty() {
        return Ok(0);
    }
    let reply = queue.run_write_command(
        doc! {
            "update": queue.collection().name(),
            "updates": statements,
            "ordered": false,
        },
        operation,
    )?;
    if let Some(first) = WriteError::all_in(&reply).first() {
        return Err(Error::Invalid(format!(
            "MongoDB refused a flow write ({operation}): {}",
            first.message
        )));
    }
    Ok(crate::schema::count(reply.get("n")))
}

/// Settles the jobs `ids` that have finished and still carry
/// `has_dependents`, reading how each ended from the collection (so a job
/// whose outcome this worker did not write, because its lease was lost,
/// is settled by what it really became, or not at all while it runs).
pub(crate) fn settle_ids(queue: &Queue, ids: &[Bson]) -> Result<Settled, Error> {
    let mut finished = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        for job in queue
            .collection()
            .find(doc! {"_id": {"$in": chunk}, fields::HAS_DEPENDENTS: true})
            .projection(doc! {fields::STATUS: 1, fields::LAST_ERROR: 1})
            .run()
            .documents(queue, "find (flow: finished)")?
        {
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
        for job in queue
            .collection()
            .find(doc! {
                "_id": {"$in": ids},
                fields::STATUS: Status::Running,
                fields::HAS_DEPENDENTS: true,
                fields::LEASE_TOKEN: {"$in": tokens},
            })
            .projection(doc! {fields::LEASE_TOKEN: 1})
            .run()
            .documents(queue, "find (flow: held back)")?
        {
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
