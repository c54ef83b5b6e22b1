//! The queue as a collection: connecting, indexes, enqueueing, inspecting.
//!
//! [`Queue`] is what producers and tools use; the worker borrows its
//! collection for claims and outcome writes. Every driver error leaves this
//! module through [`Queue::db_error`], which redacts the password.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::sync::{Client, Collection, Database};
use mongodb::IndexModel;

use crate::error::{hint_for, trim_driver_message, Error};
use crate::job::fields;
use crate::redact::{redact_text, redact_uri};

/// Where the queue lives.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// A MongoDB connection string. Write concern (`w=majority`), TLS,
    /// replica set and auth options are all taken from it.
    pub uri: String,
    /// Database name (default `distributed_queue`).
    pub database: String,
    /// Collection name (default `queue`).
    pub collection: String,
}

impl QueueConfig {
    /// The defaults of the original design: `distributed_queue.queue`.
    pub fn new(uri: impl Into<String>) -> QueueConfig {
        QueueConfig {
            uri: uri.into(),
            database: "distributed_queue".into(),
            collection: "queue".into(),
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
}

/// The name of the index the claim query uses; `explain` tests look for it.
pub const CLAIM_INDEX: &str = "mongoq_claim";
const LEASE_TOKEN_INDEX: &str = "mongoq_lease_token";
const LEASE_EXPIRY_INDEX: &str = "mongoq_lease_expiry";

/// A handle on the queue collection. Cheap to clone; share it freely.
#[derive(Clone)]
pub struct Queue {
    database: Database,
    collection: Collection<Document>,
    uri: String,
}

impl Queue {
    /// Connects lazily: a bad URI fails here, an unreachable server fails
    /// (or, in a worker, is retried) at the first operation.
    pub fn connect(config: &QueueConfig) -> Result<Queue, Error> {
        Queue::connect_with(config, |_| {})
    }

    /// Like [`Queue::connect`], letting `adjust` change the driver's options
    /// after the URI is parsed (command monitoring, pool size, …).
    pub fn connect_with(
        config: &QueueConfig,
        adjust: impl FnOnce(&mut ClientOptions),
    ) -> Result<Queue, Error> {
        let mut options =
            ClientOptions::parse(&config.uri)
                .run()
                .map_err(|error| Error::InvalidUri {
                    uri: redact_uri(&config.uri),
                    reason: redact_text(&error.to_string(), &config.uri),
                })?;
        if options.app_name.is_none() {
            options.app_name = Some("mongoq".into());
        }
        // The driver's default of 30 s would freeze a worker that long before
        // it can log an outage; 10 s is still well above a healthy election.
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(Duration::from_secs(10));
        }
        if config.database.is_empty() || config.database.contains(['/', '.', ' ', '$', '"']) {
            return Err(Error::Invalid(format!(
                "`{}` is not a valid database name (--db)",
                config.database
            )));
        }
        if config.collection.is_empty() || config.collection.contains('$') {
            return Err(Error::Invalid(format!(
                "`{}` is not a valid collection name (--collection)",
                config.collection
            )));
        }
        adjust(&mut options);
        let client = Client::with_options(options).map_err(|error| Error::InvalidUri {
            uri: redact_uri(&config.uri),
            reason: redact_text(&error.to_string(), &config.uri),
        })?;
        let database = client.database(&config.database);
        let collection = database.collection::<Document>(&config.collection);
        Ok(Queue {
            database,
            collection,
            uri: config.uri.clone(),
        })
    }

    /// The collection holding the jobs.
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// The database holding the collection.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The URI with its password hidden, for logs.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    /// Wraps a driver error for the user: operation, redacted URI, hint.
    pub(crate) fn db_error(&self, operation: &'static str, error: &mongodb::error::Error) -> Error {
        let message = redact_text(&error.to_string(), &self.uri);
        let hint = hint_for(&message);
        let message = trim_driver_message(&message);
        Error::Database {
            operation,
            uri: self.redacted_uri(),
            reason: format!("{message}{hint}"),
        }
    }

    /// Creates the indexes the queue needs (idempotent) and returns the
    /// names of all indexes on the collection afterwards.
    ///
    /// - `mongoq_claim` `{status, priority: -1, run_at, _id}`: the claim
    ///   query's equality on `status`, its sort, and its `run_at` bound, so
    ///   the claim reads only a batch's worth of index entries.
    /// - `mongoq_lease_token` (sparse): finding a claim's documents and
    ///   extending its leases by token.
    /// - `mongoq_lease_expiry` `{status, lease_until}`: rescuing expired leases.
    pub fn ensure_indexes(&self) -> Result<Vec<String>, Error> {
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let models = vec![
            IndexModel::builder()
                .keys(doc! {fields::STATUS: 1, fields::PRIORITY: -1, fields::RUN_AT: 1, "_id": 1})
                .options(named(CLAIM_INDEX))
                .build(),
            IndexModel::builder()
                .keys(doc! {fields::LEASE_TOKEN: 1})
                .options(
                    IndexOptions::builder()
                        .name(LEASE_TOKEN_INDEX.to_string())
                        .sparse(true)
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {fields::STATUS: 1, fields::LEASE_UNTIL: 1})
                .options(named(LEASE_EXPIRY_INDEX))
                .build(),
        ];
        self.collection
            .create_indexes(models)
            .run()
            .map_err(|e| self.db_error("createIndexes", &e))?;
        self.index_names()
    }

    /// Names of the indexes on the collection.
    pub fn index_names(&self) -> Result<Vec<String>, Error> {
        self.collection
            .list_index_names()
            .run()
            .map_err(|e| self.db_error("listIndexes", &e))
    }

    /// Inserts one pending job and returns its `_id`.
    pub fn enqueue(&self, data: Bson, options: &EnqueueOptions) -> Result<ObjectId, Error> {
        Ok(self.enqueue_many(std::iter::once(data), options)?[0])
    }

    /// Inserts pending jobs in one round trip per 1,000 and returns their ids
    /// in order. Ids are made here, so a retried insert cannot duplicate a job.
    pub fn enqueue_many(
        &self,
        data: impl IntoIterator<Item = Bson>,
        options: &EnqueueOptions,
    ) -> Result<Vec<ObjectId>, Error> {
        let now = DateTime::now();
        let mut ids = Vec::new();
        let mut batch = Vec::with_capacity(1_000);
        for item in data {
            let id = ObjectId::new();
            ids.push(id);
            batch.push(new_job_document(id, item, options, now));
            if batch.len() == 1_000 {
                self.insert_batch(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            self.insert_batch(batch)?;
        }
        Ok(ids)
    }

    pub(crate) fn insert_batch(&self, documents: Vec<Document>) -> Result<(), Error> {
        self.collection
            .insert_many(documents)
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error("insert", &e))
    }
}

/// The document `enqueue` writes: the producer's two fields plus the
/// optional ones, always set, so the claim index orders them exactly.
pub(crate) fn new_job_document(
    id: ObjectId,
    data: Bson,
    options: &EnqueueOptions,
    now: DateTime,
) -> Document {
    let mut document = doc! {
        "_id": id,
        fields::DATA: data,
        fields::STATUS: fields::PENDING,
        fields::PRIORITY: options.priority,
        fields::RUN_AT: options.run_at.unwrap_or(now),
        fields::ATTEMPTS: 0,
    };
    if let Some(max) = options.max_attempts {
        document.insert(fields::MAX_ATTEMPTS, i64::from(max));
    }
    document
}
