//! Linking a waiting job to what it waits on, and enqueueing one.
//!
//! A dependent is inserted first (`status: "waiting"`, `after`, no
//! `linked`), then linked: `has_dependents` goes on every dependency not
//! yet finished, then their statuses are read, and the finished (or
//! missing) ones are settled at once. The order is what makes a release
//! certain: a dependency that finishes after the flag went on is written by
//! a completer that sees the flag (see [`super`]), and one that finished
//! before is seen finished by the read. `linked: true` goes on last, so a
//! link cut short is done again by the sweep; every step is idempotent.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};

use super::settle::{distinct, key, settle, write, Ended, Finished, Settled, CHUNK};
use super::MAX_AFTER;
use crate::error::Error;
#[cfg(doc)]
use crate::queue::enqueue::new_job_document;
use crate::queue::Documents;
use crate::queue::Queue;
use crate::schema::{fields, id_text, Status};

/// What linking a batch of waiting jobs found.
#[derive(Debug, Default)]
pub(crate) struct Linked {
    /// Dependencies that do not exist.
    pub(crate) missing: Vec<Bson>,
    /// Waiting jobs failed because their `after` cannot be used.
    pub(crate) malformed: u64,
    /// What settling the finished dependencies did.
    pub(crate) settled: Settled,
}

/// Why a waiting document's `after` cannot be used, if it cannot.
fn bad_after(document: &Document) -> Option<String> {
    if document.contains_key(fields::UNIQUE_KEY) {
        // Its release could collide with the pending job holding the key.
        return Some("malformed job: a job that waits for others (`after`) cannot have a `unique_key`: the key is held only by pending and running jobs".into());
    }
    let own = document.get("_id").map(key);
    match document.get(fields::AFTER) {
        Some(Bson::Array(ids)) if ids.len() > MAX_AFTER => Some(format!(
            "malformed job: `after` lists {} jobs; at most {MAX_AFTER} may be waited on",
            ids.len()
        )),
        Some(Bson::Array(ids)) if ids.iter().any(|id| Some(key(id)) == own) => {
            Some("malformed job: `after` lists the job itself, so it could never run".into())
        }
        Some(Bson::Array(_)) => None,
        None | Some(Bson::Null) => Some(
            "malformed job: a `waiting` job needs `after`: an array of the `_id`s of the jobs it waits for".into(),
        ),
        Some(_) => Some(
            "malformed job: `after` must be an array of `_id`s (e.g. after: [ObjectId(\"…\")])"
                .into(),
        ),
    }
}

/// Links waiting jobs (their `_id`, `after`): flags their dependencies,
/// settles the finished or missing ones, and marks the jobs `linked`.
pub(crate) fn link(queue: &Queue, dependents: &[Document]) -> Result<Linked, Error> {
    let mut linked = Linked::default();
    let now = queue.now();
    let mut good = Vec::new();
    let mut deps: Vec<Bson> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dependent in dependents {
        let id = dependent.get("_id").cloned().unwrap_or(Bson::Null);
        if let Some(reason) = bad_after(dependent) {
            linked.malformed += queue
                .collection()
                .update_one(
                    doc! {"_id": id, fields::STATUS: Status::Waiting},
                    doc! {"$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: now, fields::LAST_ERROR: reason}, "$rename": crate::schema::recount()},
                )
                .run()
                .map_err(|e| queue.db_error("update (flow: malformed)", &e))?
                .modified_count;
            continue;
        }
        if let Ok(after) = dependent.get_array(fields::AFTER) {
            deps.extend(after.iter().filter(|d| seen.insert(key(d))).cloned());
        }
        good.push(id);
    }
    // `deps_total` first: a release tests it, and a producer's plain
    // document has none.
    let totals: Vec<Document> = dependents
        .iter()
        .filter(|d| !d.contains_key(fields::DEPS_TOTAL) && bad_after(d).is_none())
        .filter_map(|d| {
            let total = distinct(d.get_array(fields::AFTER).ok()?);
            Some(doc! {
                "q": {"_id": d.get("_id")?, fields::STATUS: Status::Waiting},
                "u": {"$set": {fields::DEPS_TOTAL: total}},
            })
        })
        .collect();
    write(queue, totals, "update (flow: link)")?;
    let finished = flag(queue, &deps, &mut linked.missing)?;
    // Waiting on nothing (`after: []`): released now.
    let empty: Vec<&Bson> = dependents
        .iter()
        .filter(|d| d.get_array(fields::AFTER).is_ok_and(Vec::is_empty))
        .filter_map(|d| d.get("_id"))
        .collect();
    if !empty.is_empty() {
        linked.settled.released += queue
            .collection()
            .update_many(
                doc! {"_id": {"$in": empty}, fields::STATUS: Status::Waiting},
                doc! {"$set": {fields::STATUS: Status::Pending, fields::RELEASED_AT: now, fields::RUN_AT: now}, "$rename": crate::schema::recount()},
            )
            .run()
            .map_err(|e| queue.db_error("update (flow: release)", &e))?
            .modified_count;
    }
    linked.settled.add(settle(queue, finished)?);
    for chunk in good.chunks(CHUNK) {
        queue
            .collection()
            .update_many(
                doc! {"_id": {"$in": chunk}, fields::STATUS: Status::Waiting},
                doc! {"$set": {fields::LINKED: true}},
            )
            .run()
            .map_err(|e| queue.db_error("update (flow: linked)", &e))?;
    }
    Ok(linked)
}

/// Puts `has_dependents` on the dependencies `deps` that have not finished,
/// then reads them all: the finished ones, and the missing ones (also
/// added to `missing`), are to be settled now.
fn flag(queue: &Queue, deps: &[Bson], missing: &mut Vec<Bson>) -> Result<Vec<Finished>, Error> {
    let mut finished = Vec::new();
    for chunk in deps.chunks(CHUNK) {
        queue
            .collection()
            .update_many(
                doc! {"_id": {"$in": chunk}, fields::STATUS: {"$nin": finished_names()}},
                doc! {"$set": {fields::HAS_DEPENDENTS: true}},
            )
            .run()
            .map_err(|e| queue.db_error("update (flow: link)", &e))?;
        let found: HashMap<String, Document> = queue
            .collection()
            .find(doc! {"_id": {"$in": chunk}})
            .projection(doc! {fields::STATUS: 1, fields::LAST_ERROR: 1})
            .run()
            .documents(queue, "find (flow: link)")?
            .into_iter()
            .map(|d| (d.get("_id").map(key).unwrap_or_default(), d))
            .collect();
        for dep in chunk {
            match found.get(&key(dep)) {
                None => {
                    missing.push(dep.clone());
                    finished.push(Finished {
                        id: dep.clone(),
                        ended: Ended::Missing,
                    });
                }
                Some(document) => {
                    if let Some(ended) = Ended::of_document(document) {
                        finished.push(Finished {
                            id: dep.clone(),
                            ended,
                        });
                    }
                }
            }
        }
    }
    Ok(finished)
}

fn finished_names() -> Vec<&'static str> {
    Status::FINISHED.iter().map(|s| s.as_str()).collect()
}

impl Queue {
    /// Inserts jobs that wait for others (made by [`new_job_document`]
    /// with `after`) and links them: none is claimed until every job it
    /// waits on has completed; a dependency that fails, is cancelled or is
    /// deleted first cancels it (or, with [`crate::flow::IfDepFails::Run`], counts as
    /// done). A dependency that does not exist is an error, and the batch
    /// is taken back.
    pub(crate) fn insert_dependents(&self, documents: Vec<Document>) -> Result<(), Error> {
        if let Some(reason) = documents.iter().find_map(bad_after) {
            return Err(Error::Invalid(reason.replace("malformed job: ", "")));
        }
        let ids: Vec<Bson> = documents
            .iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        self.insert_batch(documents.clone())?;
        let linked = link(self, &documents)?;
        if let Some(missing) = linked.missing.first() {
            crate::counts::Counts::new(self).delete(&doc! {"_id": {"$in": ids}})?;
            return Err(Error::Invalid(format!(
                "dependency {} does not exist (enqueue dependencies before the jobs that wait for them); nothing was enqueued",
                id_text(missing)
            )));
        }
        Ok(())
    }

    /// The jobs `id` waits on (`after`) with their statuses, and the jobs
    /// that wait on it: what `mongoq show` and the dashboard list.
    pub fn dependencies_of(&self, job: &Document) -> Result<Links, Error> {
        let after = match job.get(fields::AFTER) {
            Some(Bson::Array(after)) => after.clone(),
            _ => Vec::new(),
        };
        let mut statuses: HashMap<String, String> = HashMap::new();
        for chunk in after.chunks(CHUNK) {
            for found in self
                .collection()
                .find(doc! {"_id": {"$in": chunk}})
                .projection(doc! {fields::STATUS: 1})
                .run()
                .documents(self, "find (flow)")?
            {
                statuses.insert(
                    found.get("_id").map(key).unwrap_or_default(),
                    found.get_str(fields::STATUS).unwrap_or("?").to_string(),
                );
            }
        }
        let waits_on = after
            .iter()
            .map(|dep| {
                let status = statuses
                    .get(&key(dep))
                    .cloned()
                    .unwrap_or_else(|| "missing".into());
                (dep.clone(), status)
            })
            .collect();
        // Dependents, whatever their status, through `mongoq_after`
        // (partial on `after` existing: only jobs of flows are in it).
        let id = job.get("_id").cloned().unwrap_or(Bson::Null);
        let mut dependents = Vec::new();
        for found in self
            .collection()
            .find(doc! {fields::AFTER: &id})
            .projection(doc! {fields::STATUS: 1})
            .limit(LINKS_SHOWN)
            .run()
            .documents(self, "find (flow)")?
        {
            dependents.push((
                found.get("_id").cloned().unwrap_or(Bson::Null),
                found.get_str(fields::STATUS).unwrap_or("?").to_string(),
            ));
        }
        Ok(Links {
            waits_on,
            dependents,
        })
    }
}

/// Most dependents [`Queue::dependencies_of`] lists.
pub const LINKS_SHOWN: i64 = 200;

/// A job's place in a flow (see [`Queue::dependencies_of`]).
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// What it waits on, in `after` order, with each one's status
    /// (`missing` for a job that does not exist).
    pub waits_on: Vec<(Bson, String)>,
    /// The jobs that list it in `after` (at most [`LINKS_SHOWN`]), with
    /// their statuses.
    pub dependents: Vec<(Bson, String)>,
}
