//! Debounce and throttle: what to do with the many enqueues of one key.
//!
//! Both work on a job's `unique_key` (at most one pending or running job
//! holds it; the unique partial index decides races):
//!
//! - **debounce** (`enqueue --unique-key K --debounce D`): the last of a
//!   burst runs, once, `D` after the burst. An enqueue replaces the `data`
//!   of the pending job holding `K` and pushes its `run_at` to the server's
//!   now + `D` (one `findOneAndUpdate`), or inserts one with that `run_at`.
//!   A job holding `K` that is already running gives its key up to the new
//!   one (graphile-worker's rule: the running job keeps its data, the new
//!   data runs after), so no enqueue of a burst is lost.
//! - **throttle** (`--throttle D`): the first runs, the rest are dropped
//!   for `D` after it. The kept job carries `throttle_until` (the server's
//!   now + `D`); an enqueue that finds a job of `K` whose `throttle_until`
//!   has not passed, or that meets the unique index, is dropped and names
//!   the job kept.
//!
//! A `mongosh` producer gets the same with the same writes: see README,
//! "Debounce and throttle".

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson};
use mongodb::options::ReturnDocument;

use super::enqueue::{is_duplicate_key, new_job_document};
use super::{EnqueueOptions, Queue};
use crate::error::Error;
use crate::schema::{fields, Status};

/// How many times an enqueue goes round when racing other enqueues of its
/// key (each round is a write that another one's write made fail).
const ROUNDS: usize = 20;

/// What a debounced enqueue did.
#[derive(Debug, Clone, PartialEq)]
pub enum Debounced {
    /// No job held the key: this one was inserted.
    Inserted(ObjectId),
    /// The pending job holding the key now has this data and runs later.
    Replaced(Bson),
}

/// What a throttled enqueue did.
#[derive(Debug, Clone, PartialEq)]
pub enum Throttled {
    /// The first of its window: inserted.
    Kept(ObjectId),
    /// Dropped: this job of the key was kept, and the window has not passed.
    Dropped(Bson),
}

fn key_of(options: &EnqueueOptions, flag: &'static str) -> Result<String, Error> {
    if !options.after.is_empty() {
        return Err(Error::Invalid(format!(
            "{flag} works on a unique key, and a job that waits for others (after) cannot have one"
        )));
    }
    options.unique_key.clone().ok_or_else(|| {
        Error::config(
            flag,
            "needs --unique-key: the key that says which enqueues are one job",
        )
    })
}

impl Queue {
    /// Debounce: the last of a burst of enqueues of `options.unique_key`
    /// runs, once, `window` after the burst (see the module docs).
    pub fn enqueue_debounced(
        &self,
        data: Bson,
        options: &EnqueueOptions,
        window: Duration,
    ) -> Result<Debounced, Error> {
        let key = key_of(options, "--debounce")?;
        for _ in 0..ROUNDS {
            let run_at = self.clock_after(window);
            let replaced = self
                .collection()
                .find_one_and_update(
                    doc! {fields::UNIQUE_KEY: &key, fields::STATUS: Status::Pending},
                    doc! {"$set": {fields::DATA: data.clone(), fields::RUN_AT: run_at}},
                )
                .projection(doc! {"_id": 1})
                .return_document(ReturnDocument::After)
                .run()
                .map_err(|e| self.db_error("update (debounce)", &e))?;
            if let Some(job) = replaced {
                return Ok(Debounced::Replaced(
                    job.get("_id").cloned().unwrap_or(Bson::Null),
                ));
            }
            let id = ObjectId::new();
            let document = new_job_document(
                id,
                data.clone(),
                &EnqueueOptions {
                    run_at: Some(run_at),
                    ..options.clone()
                },
                run_at,
            );
            match self.collection().insert_one(document).run() {
                Ok(_) => return Ok(Debounced::Inserted(id)),
                Err(error) if is_duplicate_key(&error) => {
                    // A running job holds the key: it keeps its data and
                    // gives the key up, so this data runs after it.
                    self.collection()
                        .update_one(
                            doc! {fields::UNIQUE_KEY: &key, fields::STATUS: Status::Running},
                            doc! {"$unset": {fields::UNIQUE_KEY: ""}, "$set": {"gave_key": &key}},
                        )
                        .run()
                        .map_err(|e| self.db_error("update (debounce)", &e))?;
                }
                Err(error) => return Err(self.db_error("insert (debounce)", &error)),
            }
        }
        Err(contended(&key))
    }

    /// Throttle: the first enqueue of `options.unique_key` in `window` is
    /// kept, the rest are dropped (see the module docs).
    pub fn enqueue_throttled(
        &self,
        data: Bson,
        options: &EnqueueOptions,
        window: Duration,
    ) -> Result<Throttled, Error> {
        let key = key_of(options, "--throttle")?;
        for _ in 0..ROUNDS {
            let now = self.now();
            if let Some(kept) = self.throttled_by(&key, now)? {
                return Ok(Throttled::Dropped(kept));
            }
            let id = ObjectId::new();
            let mut document = new_job_document(id, data.clone(), options, now);
            document.insert(fields::THROTTLE_UNTIL, crate::clock::shift_by(now, window));
            match self.collection().insert_one(document).run() {
                Ok(_) => return Ok(Throttled::Kept(id)),
                Err(error) if is_duplicate_key(&error) => {
                    // A pending or running job holds the key: it is the
                    // one kept, whatever its window.
                    if let Some(kept) = self.holder_of(&key)? {
                        return Ok(Throttled::Dropped(kept));
                    }
                }
                Err(error) => return Err(self.db_error("insert (throttle)", &error)),
            }
        }
        Err(contended(&key))
    }

    /// The job of `key` whose throttle window has not passed at `now`.
    fn throttled_by(&self, key: &str, now: mongodb::bson::DateTime) -> Result<Option<Bson>, Error> {
        Ok(self
            .collection()
            .find_one(doc! {fields::UNIQUE_KEY: key, fields::THROTTLE_UNTIL: {"$gt": now}})
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.db_error("find (throttle)", &e))?
            .and_then(|job| job.get("_id").cloned()))
    }
}

fn contended(key: &str) -> Error {
    Error::Invalid(format!(
        "enqueues of unique_key `{key}` kept overtaking this one ({ROUNDS} rounds), or the server's unique index still holds the key of a job that finished (MongoDB drops it); nothing was enqueued by it, try again"
    ))
}
