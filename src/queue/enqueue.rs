//! Enqueueing: the documents producers' jobs become.
//!
//! A producer needs only `{data, status: "pending"}`; `mongoq enqueue` and
//! the library write the optional fields too, so the claim index orders
//! them exactly. Ids are made here, so a retried insert cannot duplicate a
//! job.

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use super::Queue;
use crate::error::Error;
use crate::schema::{fields, id_text, Status};

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// What a dependent does when a dependency fails, is cancelled, or is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfDepFails {
    /// It is cancelled too, with a `last_error` naming the dependency.
    #[default]
    Cancel,
    /// It counts that dependency as done and runs once the rest are.
    Run,
}

impl IfDepFails {
    /// `cancel` or `run`, as `--if-dep-fails` takes it.
    pub fn parse(text: &str) -> Result<IfDepFails, Error> {
        match text {
            "cancel" => Ok(IfDepFails::Cancel),
            "run" => Ok(IfDepFails::Run),
            other => Err(Error::Config {
                setting: "--if-dep-fails",
                reason: format!("`{other}` is not a choice: use `cancel` (the default: a failed dependency cancels this job) or `run` (run it anyway)"),
            }),
        }
    }
}

/// Options a producer may set on a job.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Higher runs first (default 0).
    pub priority: i64,
    /// Not before this time (default: now).
    pub run_at: Option<DateTime>,
    /// Attempts before `failed` (default: the worker's).
    pub max_attempts: Option<u32>,
    /// The named queue (default: none, which is the `default` queue).
    pub queue: Option<String>,
    /// The job's group within its queue: a customer, a tenant (default:
    /// none, the queue's default group). 1 to 200 printable characters.
    pub group: Option<String>,
    /// At most one pending or running job may have this key; enqueueing
    /// another fails with [`Error::Duplicate`].
    pub unique_key: Option<String>,
    /// The `_id`s of jobs this one waits for: it is inserted `waiting` and
    /// no worker claims it until all of them have completed (see
    /// [`crate::flow`]). Each must exist.
    pub after: Vec<Bson>,
    /// What a dependency that fails or is cancelled does to this job.
    pub if_dep_fails: IfDepFails,
    /// Not started by then (the server's clock), it never starts: it ends
    /// `cancelled` with `expired: true` and a reason naming the expiry.
    pub expires_at: Option<DateTime>,
    /// The W3C `traceparent` of the producer's trace, which the attempts'
    /// spans join (see [`crate::trace`]). When `None`, the current
    /// OpenTelemetry context's, if a span is active.
    pub traceparent: Option<String>,
}

impl Queue {
    /// Inserts one pending job and returns its `_id`.
    ///
    /// With a `unique_key` that a pending or running job already has, nothing
    /// is inserted and the error is [`Error::Duplicate`] naming that job.
    pub fn enqueue(&self, data: Bson, options: &EnqueueOptions) -> Result<ObjectId, Error> {
        if let Some(group) = &options.group {
            super::validate_group_name(group)?;
        }
        if !options.after.is_empty() {
            return Ok(self.enqueue_many(std::iter::once(data), options)?[0]);
        }
        if options.unique_key.is_none() {
            return Ok(self.enqueue_many(std::iter::once(data), options)?[0]);
        }
        let id = ObjectId::new();
        let document = new_job_document(id, data, options, self.now());
        match self.collection.insert_one(document).run() {
            Ok(_) => Ok(id),
            Err(error) if is_duplicate_key(&error) => {
                let key = options.unique_key.clone().unwrap_or_default();
                let existing = self.holder_of(&key).ok().flatten().map(|id| id_text(&id));
                Err(Error::Duplicate {
                    unique_key: key,
                    existing,
                })
            }
            Err(error) => Err(self.db_error("insert", &error)),
        }
    }

    /// The `_id` of the pending or running job that holds `key`.
    pub(crate) fn holder_of(&self, key: &str) -> Result<Option<Bson>, Error> {
        Ok(self
            .collection
            .find_one(doc! {
                fields::UNIQUE_KEY: key,
                fields::STATUS: Status::any_of(&[Status::Pending, Status::Running]),
            })
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.db_error("find (unique_key)", &e))?
            .and_then(|d| d.get("_id").cloned()))
    }

    /// Inserts pending jobs in one round trip per 1,000 and returns their ids
    /// in order. Ids are made here, so a retried insert cannot duplicate a job.
    pub fn enqueue_many(
        &self,
        data: impl IntoIterator<Item = Bson>,
        options: &EnqueueOptions,
    ) -> Result<Vec<ObjectId>, Error> {
        if options.after.is_empty() {
            return self.in_batches(data, options, |documents| self.insert_batch(documents));
        }
        if options.unique_key.is_some() {
            return Err(Error::Invalid(
                "a job that waits for others (after) cannot have a unique_key: the key is held only by pending and running jobs".into(),
            ));
        }
        self.in_batches(data, options, |documents| self.insert_dependents(documents))
    }

    /// Makes the job documents for `data` and hands them to `insert` in
    /// batches of 1,000; returns their ids in order.
    pub(crate) fn in_batches(
        &self,
        data: impl IntoIterator<Item = Bson>,
        options: &EnqueueOptions,
        mut insert: impl FnMut(Vec<Document>) -> Result<(), Error>,
    ) -> Result<Vec<ObjectId>, Error> {
        if let Some(group) = &options.group {
            super::validate_group_name(group)?;
        }
        let now = self.now();
        let mut ids = Vec::new();
        let mut batch = Vec::with_capacity(1_000);
        for item in data {
            let id = ObjectId::new();
            ids.push(id);
            batch.push(new_job_document(id, item, options, now));
            if batch.len() == 1_000 {
                insert(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            insert(batch)?;
        }
        Ok(ids)
    }

    /// Inserts documents as they are, in one round trip (the caller made
    /// them with [`new_job_document`] or knows what it writes).
    pub fn insert_batch(&self, documents: Vec<Document>) -> Result<(), Error> {
        self.collection
            .insert_many(documents)
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error("insert", &e))
    }
}

/// Whether a driver error is a duplicate key (E11000).
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    crate::error::server_code_is(error, |code| code == DUPLICATE_KEY)
}

/// The document `enqueue` writes: the producer's two fields plus the
/// optional ones, always set, so the claim index orders them exactly.
pub fn new_job_document(
    id: ObjectId,
    data: Bson,
    options: &EnqueueOptions,
    now: DateTime,
) -> Document {
    let mut document = doc! {
        "_id": id,
        fields::DATA: data,
        fields::STATUS: if options.after.is_empty() { Status::Pending } else { Status::Waiting },
        fields::PRIORITY: options.priority,
        fields::RUN_AT: options.run_at.unwrap_or(now),
        fields::ATTEMPTS: 0,
    };
    if let Some(max) = options.max_attempts {
        document.insert(fields::MAX_ATTEMPTS, i64::from(max));
    }
    if let Some(queue) = &options.queue {
        document.insert(fields::QUEUE, queue.clone());
    }
    if let Some(group) = &options.group {
        document.insert(fields::GROUP, group.clone());
    }
    if let Some(key) = &options.unique_key {
        document.insert(fields::UNIQUE_KEY, key.clone());
    }
    if let Some(at) = options.expires_at {
        document.insert(fields::EXPIRES_AT, at);
    }
    if let Some(traceparent) = options
        .traceparent
        .clone()
        .or_else(crate::trace::current_traceparent)
    {
        document.insert(fields::TRACEPARENT, traceparent);
    }
    if !options.after.is_empty() {
        document.insert(fields::AFTER, options.after.clone());
        document.insert(
            fields::DEPS_TOTAL,
            crate::schema::distinct_ids(&options.after),
        );
        if options.if_dep_fails == IfDepFails::Run {
            document.insert(fields::IF_DEP_FAILS, "run");
        }
    }
    document
}
