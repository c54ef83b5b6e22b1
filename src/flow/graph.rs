//! A flow: a small graph of jobs (names and edges) inserted at once.
//!
//! `mongoq enqueue --flow FILE` reads
//!
//! ```json
//! {"queue": "reports",
//!  "jobs": [
//!    {"name": "fetch-a", "data": {"url": "…"}},
//!    {"name": "fetch-b", "data": {"url": "…"}},
//!    {"name": "merge", "data": {}, "after": ["fetch-a", "fetch-b"], "if_dep_fails": "run"}
//!  ]}
//! ```
//!
//! and checks it whole before writing anything: every name unique, every
//! name in `after` defined, no cycle (the error names one, `a → b → a`).
//! Then every job is inserted `waiting` (the roots too, with no `after`),
//! already linked, and only when all are in do the roots become `pending`
//! with one `updateMany`. So no part of the flow runs before the whole graph
//! is in. An insert that fails deletes what it inserted; a producer killed
//! between the inserts and the last write leaves a flow that never starts
//! (its roots wait with no `after`; `mongoq show` says so).

use std::collections::HashMap;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use serde::Deserialize;

use crate::error::Error;
use crate::queue::enqueue::{new_job_document, IfDepFails};
use crate::queue::{EnqueueOptions, Queue};
use crate::schema::{fields, Status};

/// Most jobs one flow may have.
pub const MAX_FLOW_JOBS: usize = 10_000;

/// One job of a flow, as the file names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowStep {
    /// Its name within the flow (what `after` refers to).
    pub name: String,
    /// The payload.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Names of the steps it waits for.
    #[serde(default)]
    pub after: Vec<String>,
    /// `cancel` (default) or `run`.
    #[serde(default)]
    pub if_dep_fails: Option<String>,
    /// Its queue (default: the flow's, else `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i64,
    /// Attempts before `failed`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// A flow file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// The queue of steps that name none.
    #[serde(default)]
    pub queue: Option<String>,
    /// The steps.
    pub jobs: Vec<FlowStep>,
}

/// Why a flow cannot be inserted. Nothing was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// Not the JSON a flow file holds.
    #[error("the flow file is not valid: {0} (expected {{\"jobs\": [{{\"name\": \"a\", \"data\": …, \"after\": [\"b\"]}}]}})")]
    Parse(String),
    /// No jobs, or too many.
    #[error("a flow needs 1 to {MAX_FLOW_JOBS} jobs, and this one has {0}")]
    Size(usize),
    /// A step without a usable name.
    #[error("job {0} of the flow has an empty name; every job needs a unique `name`")]
    NoName(usize),
    /// Two steps share a name.
    #[error("two jobs of the flow are named `{0}`; names must be unique")]
    Duplicate(String),
    /// `after` names a step that is not in the flow.
    #[error("job `{job}` waits for `{name}`, which is not a job of the flow")]
    Unknown {
        /// The step whose `after` is wrong.
        job: String,
        /// The name it gave.
        name: String,
    },
    /// The edges go round.
    #[error("the flow has a cycle, so none of it could run: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    /// A field of a step is not usable.
    #[error("job `{job}`: {reason}")]
    Field {
        /// The step.
        job: String,
        /// What is wrong.
        reason: String,
    },
}

/// What [`Queue::enqueue_flow`] inserted.
#[derive(Debug, Clone)]
pub struct InsertedFlow {
    /// The flow's id (`flow.id` on each of its jobs).
    pub flow: ObjectId,
    /// Each step's name and job `_id`, in file order.
    pub jobs: Vec<(String, ObjectId)>,
    /// How many started `pending` (the roots).
    pub roots: usize,
}

impl Flow {
    /// Reads a flow file's text and checks it.
    pub fn from_json(text: &str) -> Result<Flow, FlowError> {
        let flow: Flow = serde_json::from_str(text).map_err(|e| FlowError::Parse(e.to_string()))?;
        flow.check()?;
        Ok(flow)
    }

    /// Every check that needs no server: names, edges, cycles, fields.
    pub fn check(&self) -> Result<(), FlowError> {
        if self.jobs.is_empty() || self.jobs.len() > MAX_FLOW_JOBS {
            return Err(FlowError::Size(self.jobs.len()));
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (n, step) in self.jobs.iter().enumerate() {
            if step.name.trim().is_empty() {
                return Err(FlowError::NoName(n + 1));
            }
            if index.insert(step.name.as_str(), n).is_some() {
                return Err(FlowError::Duplicate(step.name.clone()));
            }
            let field = |reason: String| FlowError::Field {
                job: step.name.clone(),
                reason,
            };
            if let Some(choice) = &step.if_dep_fails {
                IfDepFails::parse(choice).map_err(|e| field(e.to_string()))?;
            }
            if step.max_attempts == Some(0) {
                return Err(field("`max_attempts` must be at least 1".into()));
            }
            if let Some(queue) = step.queue.as_ref().or(self.queue.as_ref()) {
                crate::queue::validate_queue_name(queue).map_err(|e| field(e.to_string()))?;
            }
            Bson::try_from(step.data.clone())
                .map_err(|e| field(format!("`data` is not storable: {e}")))?;
        }
        for step in &self.jobs {
            for name in &step.after {
                if !index.contains_key(name.as_str()) {
                    return Err(FlowError::Unknown {
                        job: step.name.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        if let Some(cycle) = self.cycle(&index) {
            return Err(FlowError::Cycle(cycle));
        }
        Ok(())
    }

    /// A cycle among the edges, as names from a step back to itself.
    fn cycle(&self, index: &HashMap<&str, usize>) -> Option<Vec<String>> {
        // Iterative depth-first search with three colours; the grey path
        // is the stack, so a grey neighbour closes a cycle on it.
        const WHITE: u8 = 0;
        const GREY: u8 = 1;
        const BLACK: u8 = 2;
        let edges: Vec<Vec<usize>> = self
            .jobs
            .iter()
            .map(|s| s.after.iter().map(|n| index[n.as_str()]).collect())
            .collect();
        let mut colour = vec![WHITE; self.jobs.len()];
        for start in 0..self.jobs.len() {
            if colour[start] != WHITE {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            colour[start] = GREY;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&to) = edges[node].get(*next) {
                    *next += 1;
                    match colour[to] {
                        WHITE => {
                            colour[to] = GREY;
                            stack.push((to, 0));
                        }
                        GREY => {
                            let from = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                            let mut names: Vec<String> = stack[from..]
                                .iter()
                                .map(|&(n, _)| self.jobs[n].name.clone())
                                .collect();
                            names.push(self.jobs[to].name.clone());
                            return Some(names);
                        }
                        _ => {}
                    }
                } else {
                    colour[node] = BLACK;
                    stack.pop();
                }
            }
        }
        None
    }
}

impl Queue {
    /// Inserts a checked flow so that none of it runs before all of it is
    /// in (see [`crate::flow::graph`]).
    pub fn enqueue_flow(&self, flow: &Flow) -> Result<InsertedFlow, Error> {
        flow.check().map_err(|e| Error::Invalid(e.to_string()))?;
        let flow_id = ObjectId::new();
        let ids: Vec<ObjectId> = flow.jobs.iter().map(|_| ObjectId::new()).collect();
        let by_name: HashMap<&str, ObjectId> = flow
            .jobs
            .iter()
            .zip(&ids)
            .map(|(s, id)| (s.name.as_str(), *id))
            .collect();
        let awaited: std::collections::HashSet<&str> = flow
            .jobs
            .iter()
            .flat_map(|s| s.after.iter().map(String::as_str))
            .collect();
        let now = self.now();
        let mut documents: Vec<Document> = Vec::with_capacity(ids.len());
        for (step, id) in flow.jobs.iter().zip(&ids) {
            let options = EnqueueOptions {
                priority: step.priority,
                max_attempts: step.max_attempts,
                queue: step.queue.clone().or_else(|| flow.queue.clone()),
                after: step
                    .after
                    .iter()
                    .map(|n| Bson::ObjectId(by_name[n.as_str()]))
                    .collect(),
                if_dep_fails: step
                    .if_dep_fails
                    .as_deref()
                    .map_or(Ok(IfDepFails::Cancel), IfDepFails::parse)?,
                ..EnqueueOptions::default()
            };
            let data = Bson::try_from(step.data.clone())
                .map_err(|e| Error::Invalid(format!("job `{}`: {e}", step.name)))?;
            let mut document = new_job_document(*id, data, &options, now);
            document.insert(fields::STATUS, Status::Waiting);
            document.insert(fields::LINKED, true);
            document.insert(fields::FLOW, doc! {"id": flow_id, "step": &step.name});
            if awaited.contains(step.name.as_str()) {
                document.insert(fields::HAS_DEPENDENTS, true);
            }
            documents.push(document);
        }
        let mut inserted = 0;
        for chunk in documents.chunks(1_000) {
            if let Err(error) = self.insert_batch(chunk.to_vec()) {
                // Best effort: take back what went in (its ids are known),
                // through the counts (a worker may have counted them).
                let _ = crate::counts::Counts::new(self)
                    .delete(&doc! {"_id": {"$in": &ids[..inserted + chunk.len()]}});
                return Err(error);
            }
            inserted += chunk.len();
        }
        let roots: Vec<ObjectId> = flow
            .jobs
            .iter()
            .zip(&ids)
            .filter(|(s, _)| s.after.is_empty())
            .map(|(_, id)| *id)
            .collect();
        self.collection()
            .update_many(
                doc! {"_id": {"$in": &roots}, fields::STATUS: Status::Waiting},
                doc! {"$set": {fields::STATUS: Status::Pending, fields::RELEASED_AT: now}, "$rename": crate::schema::recount()},
            )
            .run()
            .map_err(|e| self.db_error("update (flow: start)", &e))?;
        Ok(InsertedFlow {
            flow: flow_id,
            jobs: flow.jobs.iter().map(|s| s.name.clone()).zip(ids).collect(),
            roots: roots.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(text: &str) -> Result<Flow, FlowError> {
        Flow::from_json(text)
    }

    #[test]
    fn a_diamond_is_accepted() {
        let f = flow(r#"{"jobs": [{"name": "a"}, {"name": "b", "after": ["a"]}, {"name": "c", "after": ["a"]}, {"name": "d", "after": ["b", "c"], "if_dep_fails": "run"}]}"#).unwrap();
        assert_eq!(f.jobs.len(), 4);
    }

    #[test]
    fn a_cycle_is_named() {
        let error = flow(r#"{"jobs": [{"name": "a", "after": ["c"]}, {"name": "b", "after": ["a"]}, {"name": "c", "after": ["b"]}, {"name": "d"}]}"#).unwrap_err();
        let FlowError::Cycle(names) = &error else {
            panic!("{error}")
        };
        assert_eq!(names.first(), names.last());
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(error.to_string().contains(" → "), "{error}");
    }

    #[test]
    fn a_self_edge_is_a_cycle() {
        assert!(matches!(
            flow(r#"{"jobs": [{"name": "a", "after": ["a"]}]}"#),
            Err(FlowError::Cycle(_))
        ));
    }

    #[test]
    fn unknown_duplicate_and_bad_fields_are_named() {
        assert_eq!(
            flow(r#"{"jobs": [{"name": "a", "after": ["zz"]}]}"#).unwrap_err(),
            FlowError::Unknown {
                job: "a".into(),
                name: "zz".into()
            }
        );
        assert_eq!(
            flow(r#"{"jobs": [{"name": "a"}, {"name": "a"}]}"#).unwrap_err(),
            FlowError::Duplicate("a".into())
        );
        assert!(matches!(
            flow(r#"{"jobs": [{"name": "a", "if_dep_fails": "maybe"}]}"#),
            Err(FlowError::Field { .. })
        ));
        assert!(matches!(flow(r#"{"jobs": []}"#), Err(FlowError::Size(0))));
        assert!(matches!(
            flow(r#"{"jobs": [{"name": "a", "aftr": []}]}"#),
            Err(FlowError::Parse(_))
        ));
    }

    #[test]
    fn a_long_chain_has_no_cycle_and_no_deep_recursion() {
        let jobs: Vec<String> = (0..MAX_FLOW_JOBS)
            .map(|n| {
                if n == 0 {
                    r#"{"name": "0"}"#.to_string()
                } else {
                    format!(r#"{{"name": "{n}", "after": ["{}"]}}"#, n - 1)
                }
            })
            .collect();
        let text = format!(r#"{{"jobs": [{}]}}"#, jobs.join(","));
        assert!(flow(&text).is_ok());
    }
}
