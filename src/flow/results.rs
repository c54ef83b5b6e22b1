//! Fan-in: what a dependent's handler sees of the jobs it waited on.
//!
//! When a worker claims jobs that have `after`, it reads their
//! dependencies' `status`, `result` and `last_error` with one `find` for the
//! whole claim, and hands each job its list ([`crate::Job::deps`]; `deps` in
//! the JSON an `--exec` or `--pipe` program reads). Results are bounded:
//! each is at most [`crate::schema::MAX_RESULT_BYTES`] as stored, and one
//! job sees at most [`MAX_DEPS_BYTES`] of them in all; past that a
//! dependency is listed with `truncated: true` and no result, and the
//! handler can read it from the collection if it must.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};

use super::settle::{key, CHUNK};
use crate::error::Error;
use crate::job::{DepResult, Job};
use crate::queue::Documents;
use crate::queue::Queue;
use crate::schema::fields;

/// Most bytes of dependencies' results one job is handed.
pub const MAX_DEPS_BYTES: usize = 1024 * 1024;

/// Each job's dependencies' results, in `after` order. A dependency whose
/// document is gone but which the job counted as completed
/// (`Job::completed_deps`) was deleted after it completed.
pub(crate) fn load(queue: &Queue, jobs: &[Job]) -> Result<Vec<Vec<DepResult>>, Error> {
    let lists: Vec<&[Bson]> = jobs.iter().map(|job| job.after.as_slice()).collect();
    let mut wanted: Vec<&Bson> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for list in &lists {
        wanted.extend(list.iter().filter(|id| seen.insert(key(id))));
    }
    let mut found: HashMap<String, Document> = HashMap::new();
    for chunk in wanted.chunks(CHUNK) {
        for document in queue
            .collection()
            .find(doc! {"_id": {"$in": chunk}})
            .projection(doc! {fields::STATUS: 1, fields::RESULT: 1, fields::LAST_ERROR: 1})
            .run()
            .documents(queue, "find (flow: results)")?
        {
            found.insert(document.get("_id").map(key).unwrap_or_default(), document);
        }
    }
    Ok(lists
        .iter()
        .zip(jobs)
        .map(|(list, job)| {
            let completed: std::collections::HashSet<String> =
                job.completed_deps.iter().map(key).collect();
            let mut budget = MAX_DEPS_BYTES;
            list.iter()
                .map(|id| match found.get(&key(id)) {
                    Some(document) => one(id, document, &mut budget),
                    None => gone(id, completed.contains(&key(id))),
                })
                .collect()
        })
        .collect())
}

/// A dependency whose document is not there: deleted after it completed,
/// or (as far as this job knows) never there.
fn gone(id: &Bson, completed: bool) -> DepResult {
    DepResult {
        id: id.clone(),
        status: if completed { "completed" } else { "missing" }.into(),
        result: None,
        error: None,
        truncated: false,
        gone: completed,
    }
}

fn one(id: &Bson, document: &Document, budget: &mut usize) -> DepResult {
    let status = document.get_str(fields::STATUS).unwrap_or("?").to_string();
    let error = (status != "completed")
        .then(|| {
            document
                .get_str(fields::LAST_ERROR)
                .ok()
                .map(str::to_string)
        })
        .flatten();
    let mut truncated = false;
    let result = match document.get(fields::RESULT) {
        None | Some(Bson::Null) => None,
        Some(result) => {
            let size = mongodb::bson::to_vec(&doc! {"r": result}).map_or(usize::MAX, |b| b.len());
            if size <= *budget {
                *budget -= size;
                Some(result.clone())
            } else {
                truncated = true;
                None
            }
        }
    };
    DepResult {
        id: id.clone(),
        status,
        result,
        error,
        truncated,
        gone: false,
    }
}
