//! Cancelling running jobs: `mongoq cancel` marks a running job with
//! `cancel_requested`; the keeper of the worker holding it finds the mark at
//! its next lease extension, ends the job as `cancelled` (fenced by owner
//! and status), and tells the handler thread running it to stop.
//!
//! [`Running`] is the registry that makes the last step possible: which job
//! each handler thread runs now, with that job's cancel flag. The handler
//! threads fill it, the keeper reads it, the shutdown sequence reads it to
//! hand back jobs cut off by the grace period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, Bson};

use super::outcome::JobKey;
use crate::error::Error;
use crate::handlers::Handler;
use crate::queue::Queue;
use crate::schema::{cancelled_update, fields, id_text, Status};
use crate::sync::lock;

/// The job each handler thread is running, by thread index.
#[derive(Default)]
pub(crate) struct Running {
    jobs: Mutex<HashMap<usize, (JobKey, Arc<AtomicBool>)>>,
}

impl Running {
    /// Thread `index` starts the job `key`, whose cancel flag is `flag`.
    pub(crate) fn start(&self, index: usize, key: JobKey, flag: Arc<AtomicBool>) {
        lock(&self.jobs).insert(index, (key, flag));
    }

    /// Thread `index` finished its job.
    pub(crate) fn finish(&self, index: usize) {
        lock(&self.jobs).remove(&index);
    }

    /// How many jobs run now.
    pub(crate) fn count(&self) -> usize {
        lock(&self.jobs).len()
    }

    /// The jobs running now.
    pub(crate) fn keys(&self) -> Vec<JobKey> {
        lock(&self.jobs)
            .values()
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Raises the cancel flag of the running jobs among `ids` and tells the
    /// handler; returns how many it found.
    pub(crate) fn cancel(&self, ids: &[Bson], handler: &dyn Handler) -> usize {
        let mut found = 0;
        for (key, flag) in lock(&self.jobs).values() {
            if ids.contains(&key.id) {
                found += 1;
                flag.store(true, Relaxed);
                handler.cancel(&key.id);
                log::info!(
                    "job {} was cancelled while running; its handler was told to stop",
                    id_text(&key.id)
                );
            }
        }
        found
    }
}

/// Finds this worker's running jobs that an operator cancelled (`mongoq
/// cancel` sets `cancel_requested`) and marks them `cancelled`, fenced by
/// owner and status. Returns their ids, so their handlers can be stopped.
/// Running jobs are few (the workers' holdings), so the scan is small.
pub(crate) fn drop_cancelled(queue: &Queue, owner: &str) -> Result<Vec<Bson>, Error> {
    let requested = doc! {
        fields::STATUS: Status::Running,
        fields::LEASE_OWNER: owner,
        fields::CANCEL_REQUESTED: true,
    };
    let ids = queue.find_ids(requested.clone(), "find (cancelled jobs)")?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let mut filter = requested;
    filter.insert("_id", doc! {"$in": &ids});
    queue
        .collection()
        .update_many(
            filter,
            cancelled_update(
                &format!("cancelled by an operator while running on {owner}"),
                queue.clock().now(),
            ),
        )
        .run()
        .map_err(|e| queue.db_error("update (cancel running jobs)", &e))?;
    Ok(ids)
}
