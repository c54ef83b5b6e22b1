//! Cancelling running jobs: `mongoq cancel` marks a running job with
//! `cancel_requested`; the keeper of the worker holding it finds the mark at
//! its next lease extension, ends the job as `cancelled` (fenced by owner
//! and status), and tells the handler thread running it to stop.
//!
//! [`Running`] is the registry that makes the last step possible: which job
//! each handler thread runs now, with that job's cancel flag. The handler
//! threads fill it, the keeper reads it, the shutdown sequence reads it to
//! hand back jobs cut off by the grace period. The keeper also collects
//! the progress the running jobs reported from it ([`crate::progress`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, oid::ObjectId, Bson};

use crate::error::Error;
use crate::handlers::Handler;
use crate::job::Job;
use crate::progress::{Progress, ProgressCell};
use crate::queue::Queue;
use crate::schema::{cancelled_update, fields, id_text, Status};
use crate::sync::lock;
use crate::worker::lease::held::JobKey;

/// One running job as the keeper sees it.
struct Entry {
    key: JobKey,
    cancelled: Arc<AtomicBool>,
    progress: Arc<ProgressCell>,
    attempt: u32,
}

/// The job each handler thread is running, by thread index.
#[derive(Default)]
pub(crate) struct Running {
    jobs: Mutex<HashMap<usize, Entry>>,
}

impl Running {
    /// Thread `index` starts `job`, held as `key`.
    pub(crate) fn start(&self, index: usize, key: JobKey, job: &Job) {
        let entry = Entry {
            key,
            cancelled: Arc::clone(&job.cancelled),
            progress: Arc::clone(&job.progress),
            attempt: job.attempt,
        };
        lock(&self.jobs).insert(index, entry);
    }

    /// The progress reported since the last call, by job, with its attempt.
    pub(crate) fn unwritten_progress(&self) -> Vec<(JobKey, u32, Progress)> {
        lock(&self.jobs)
            .values()
            .filter_map(|entry| {
                let progress = entry.progress.take_unwritten()?;
                Some((entry.key.clone(), entry.attempt, progress))
            })
            .collect()
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
            .map(|entry| entry.key.clone())
            .collect()
    }

    /// Raises the cancel flag of the running jobs among `ids` and tells the
    /// handler; returns how many it found.
    pub(crate) fn cancel(&self, ids: &[Bson], handler: &dyn Handler) -> usize {
        let mut found = 0;
        for entry in lock(&self.jobs).values() {
            if ids.contains(&entry.key.id) {
                found += 1;
                entry.cancelled.store(true, Relaxed);
                handler.cancel(&entry.key.id);
                log::info!(
                    "job {} was cancelled while running; its handler was told to stop",
                    id_text(&entry.key.id)
                );
            }
        }
        found
    }
}

/// Finds this worker's running jobs that an operator cancelled (`mongoq
/// cancel` sets `cancel_requested`) and marks them `cancelled`, fenced by
/// owner and status. Returns their ids, so their handlers can be stopped.
/// The look goes by the lease tokens this worker holds (the lease-token
/// index), so it costs the same however many jobs the fleet is running:
/// by `status` it would examine every running job on servers that do not
/// stop at the first index key (about 20 ms with 8,000 running).
pub(crate) fn drop_cancelled(
    queue: &Queue,
    owner: &str,
    tokens: &[ObjectId],
) -> Result<Vec<Bson>, Error> {
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let requested = doc! {
        fields::LEASE_TOKEN: {"$in": tokens},
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
