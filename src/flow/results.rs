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
use crate::queue::Queue;
use crate::schema::fields;

/// Most bytes of dependencies' results one job is handed.
pub const MAX_DEPS_BYTES: usize = 1024 * 1024;

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
    /// The result was left out to keep within [`MAX_DEPS_BYTES`].
    pub truncated: bool,
}

impl DepResult {
    /// As JSON: `{"id", "status", "result"?, "error"?, "truncated"?}`.
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
        }
        json
    }
}

/// The dependencies' results for each list of `after` ids, in order.
pub(crate) fn load(queue: &Queue, lists: &[&[Bson]]) -> Result<Vec<Vec<DepResult>>, Error> {
    let mut wanted: Vec<&Bson> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for list in lists {
        wanted.extend(list.iter().filter(|id| seen.insert(key(id))));
    }
    let mut found: HashMap<String, Document> = HashMap::new();
    for chunk in wanted.chunks(CHUNK) {
        let cursor = queue
            .collection()
            .find(doc! {"_id": {"$in": chunk}})
            .projection(doc! {fields::STATUS: 1, fields::RESULT: 1, fields::LAST_ERROR: 1})
            .run()
            .map_err(|e| queue.db_error("find (flow: results)", &e))?;
        for document in cursor {
            let document = document.map_err(|e| queue.db_error("find (flow: results)", &e))?;
            found.insert(document.get("_id").map(key).unwrap_or_default(), document);
        }
    }
    Ok(lists
        .iter()
        .map(|list| {
            let mut budget = MAX_DEPS_BYTES;
            list.iter()
                .map(|id| one(id, found.get(&key(id)), &mut budget))
                .collect()
        })
        .collect())
}

fn one(id: &Bson, document: Option<&Document>, budget: &mut usize) -> DepResult {
    let Some(document) = document else {
        return DepResult {
            id: id.clone(),
            status: "missing".into(),
            result: None,
            error: None,
            truncated: false,
        };
    };
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
    }
}
