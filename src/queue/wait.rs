//! Waiting for a job's result: a shell script that enqueues a job can
//! block until it is completed or failed (`mongoq enqueue --wait`).
//!
//! Where the deployment supports change streams the wait follows the job's
//! own updates (a filter on its `_id`), so it ends the moment the job does;
//! elsewhere it polls, backing off from 50 ms to 1 s. Either way the job is
//! read once first, so a job that finished before the wait began is seen.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use super::Queue;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::schema::{fields, Status};

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// The job completed; its `result` (or `null`).
    Completed(Bson),
    /// The job failed for good; its `last_error`.
    Failed(String),
    /// The timeout passed first; the job stays queued.
    TimedOut,
}

impl Queue {
    /// Waits until the job `id` is `completed` or `failed`, or `timeout`
    /// passes. A cancelled job counts as failed (it will not complete).
    pub fn wait(&self, id: &Bson, timeout: Duration) -> Result<Waited, Error> {
        let deadline = Instant::now() + timeout;
        let filter = doc! {"_id": {"$eq": id.clone()}};
        let mut stream = self
            .collection()
            .watch()
            .pipeline(vec![doc! {"$match": {"documentKey._id": id.clone()}}])
            .max_await_time(Duration::from_millis(500))
            .run()
            .ok();
        let mut poll = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let job = self
                .collection()
                .find_one(filter.clone())
                .projection(doc! {fields::STATUS: 1, fields::RESULT: 1, fields::LAST_ERROR: 1})
                .run()
                .map_err(|e| self.db_error("find (wait)", &e))?
                .ok_or_else(|| Error::NotFound(crate::schema::id_text(id)))?;
            if let Some(done) = finished(&job) {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                return Ok(Waited::TimedOut);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.as_mut() {
                // Any event on this job: read it again. A broken stream
                // falls back to polling.
                Some(events) => {
                    if events.next_if_any().is_err() {
                        stream = None;
                    }
                }
                None => std::thread::sleep(poll.advance().min(left)),
            }
        }
    }
}

fn finished(job: &Document) -> Option<Waited> {
    let status = job.get_str(fields::STATUS).ok().and_then(Status::parse)?;
    let error = || job.get_str(fields::LAST_ERROR).unwrap_or("").to_string();
    match status {
        Status::Completed => Some(Waited::Completed(
            job.get(fields::RESULT).cloned().unwrap_or(Bson::Null),
        )),
        Status::Failed => Some(Waited::Failed(error())),
        Status::Cancelled => Some(Waited::Failed(format!("cancelled: {}", error()))),
        Status::Waiting | Status::Pending | Status::Running => None,
    }
}
