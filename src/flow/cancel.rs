//! Cancelling a job, and with it the waiting jobs that wait on it.
//!
//! It lives with the flows, not with the collection ([`crate::queue`]),
//! because a cancel settles the cancelled job's dependents: the queue's
//! room stays below the flows'.

use mongodb::bson::{doc, Bson};

use crate::error::Error;
use crate::queue::admin::id_condition;
use crate::queue::{Cancel, Queue};
use crate::schema::{cancelled_update, fields, Status};

impl Queue {
    /// Cancels a job: a pending or waiting one will not run (nor will the
    /// waiting jobs that wait on it, unless they run anyway); a running one
    /// is marked so that its worker drops it at its next lease extension
    /// (within a third of the lease) and marks it `cancelled`, and its
    /// dependents are cancelled then.
    pub fn cancel(&self, id: &str) -> Result<Cancel, Error> {
        self.cancel_exact(&id_condition(id), id.trim())
    }

    /// [`Queue::cancel`] for an `_id` condition (a value, or `{$eq: value}`
    /// for ids from untrusted input); `text` names the job in errors.
    pub fn cancel_exact(&self, id: &Bson, text: &str) -> Result<Cancel, Error> {
        let text = text.to_string();
        // Two rounds at most: the job may move from pending to running
        // between the first write and the read.
        for _ in 0..2 {
            let pending = self
                .collection()
                .find_one_and_update(
                    doc! {"_id": id.clone(), fields::STATUS: Status::any_of(&[Status::Pending, Status::Waiting])},
                    cancelled_update("cancelled by an operator before it ran", self.clock().now()),
                )
                .projection(doc! {fields::HAS_DEPENDENTS: 1})
                .run()
                .map_err(|e| self.db_error("update (cancel)", &e))?;
            if let Some(job) = pending {
                let dependents = match job.get("_id") {
                    Some(id) if job.get_bool(fields::HAS_DEPENDENTS) == Ok(true) => {
                        super::settle::settle_ids(self, std::slice::from_ref(id))?.cancelled
                    }
                    _ => 0,
                };
                return Ok(Cancel::Cancelled { dependents });
            }
            let running = self
                .collection()
                .find_one_and_update(
                    doc! {"_id": id.clone(), fields::STATUS: Status::Running},
                    doc! {"$set": {fields::CANCEL_REQUESTED: true}},
                )
                .projection(doc! {fields::LEASE_OWNER: 1})
                .run()
                .map_err(|e| self.db_error("update (cancel)", &e))?;
            if let Some(job) = running {
                let owner = job.get_str(fields::LEASE_OWNER).unwrap_or("?").to_string();
                return Ok(Cancel::Requested { owner });
            }
            let current = self
                .collection()
                .find_one(doc! {"_id": id.clone()})
                .projection(doc! {fields::STATUS: 1})
                .run()
                .map_err(|e| self.db_error("find", &e))?
                .ok_or_else(|| Error::NotFound(text.clone()))?;
            let status = match current.get(fields::STATUS) {
                Some(Bson::String(status)) => status.clone(),
                Some(other) => other.to_string(),
                None => "(no status)".into(),
            };
            if !Status::parse(&status).is_some_and(Status::is_active) {
                return Ok(Cancel::Finished { status });
            }
        }
        Err(Error::Invalid(format!(
            "job {text} kept changing status while being cancelled; run the command again"
        )))
    }
}
