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
    /// The named queue (default: none, which is the `default` queue).
    pub queue: Option<String>,
    /// At most one pending or running job may have this key; enqueueing
    /// another fails with [`Error::Duplicate`].
    pub unique_key: Option<String>,
}

/// How long finished jobs of one status are kept (see [`Queue::set_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    /// `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The timestamp field the TTL index expires on.
    pub field: &'static str,
    /// How long after that time the job is deleted; `None`: kept forever.
    pub keep: Option<Duration>,
}

/// The finished statuses retention applies to, and their timestamp fields.
pub const RETAINABLE: [(&str, &str); 3] = [
    (fields::COMPLETED, fields::COMPLETED_AT),
    (fields::FAILED, fields::FAILED_AT),
    (fields::CANCELLED, fields::CANCELLED_AT),
];

/// The name of the index the claim query uses; `explain` tests look for it.
pub const CLAIM_INDEX: &str = "mongoq_claim_by_queue";
/// The claim index of mongoq before named queues (`{status, priority, run_at, _id}`).
const LEGACY_CLAIM_INDEX: &str = "mongoq_claim";
const LEASE_TOKEN_INDEX: &str = "mongoq_lease_token";
const LEASE_EXPIRY_INDEX: &str = "mongoq_lease_expiry";
/// The unique partial index that enforces `unique_key`.
pub const UNIQUE_INDEX: &str = "mongoq_unique_key";
/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

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
    /// - `mongoq_claim_by_queue` `{status, queue, priority: -1, run_at, _id}`: the
    ///   claim query's equality on `status`, its named queues (each an
    ///   exact range, merged in sort order), its sort, and its `run_at`
    ///   bound, so the claim reads only a batch's worth of index entries.
    /// - `mongoq_unique_key`: see [`Queue::ensure_unique_index`].
    /// - `mongoq_lease_token` (sparse): finding a claim's documents and
    ///   extending its leases by token.
    /// - `mongoq_lease_expiry` `{status, lease_until}`: rescuing expired leases.
    pub fn ensure_indexes(&self) -> Result<Vec<String>, Error> {
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let models = vec![
            IndexModel::builder()
                .keys(doc! {fields::STATUS: 1, fields::QUEUE: 1, fields::PRIORITY: -1, fields::RUN_AT: 1, "_id": 1})
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
        self.ensure_unique_index();
        let names = self.index_names()?;
        if names.iter().any(|name| name == LEGACY_CLAIM_INDEX) {
            log::warn!(
                "index {LEGACY_CLAIM_INDEX} is from an earlier mongoq and no longer used (the claim uses {CLAIM_INDEX}); drop it to save its write cost: db.{}.dropIndex(\"{LEGACY_CLAIM_INDEX}\")",
                self.collection.name()
            );
        }
        Ok(names)
    }

    /// `mongoq_unique_key`: `unique_key` is unique among pending and running
    /// jobs. The index decides, so two producers racing to insert the same
    /// key cannot both win (a find-then-insert check could). Its partial
    /// filter uses `$in`, which recent MongoDB releases accept (5.x refuses
    /// it); on a server that
    /// refuses it (or a sharded collection whose shard key is not
    /// `unique_key`) the queue works without unique jobs and says so.
    fn ensure_unique_index(&self) {
        let model = IndexModel::builder()
            .keys(doc! {fields::UNIQUE_KEY: 1})
            .options(
                IndexOptions::builder()
                    .name(UNIQUE_INDEX.to_string())
                    .unique(true)
                    .partial_filter_expression(doc! {
                        fields::UNIQUE_KEY: {"$exists": true},
                        fields::STATUS: {"$in": [fields::PENDING, fields::RUNNING]},
                    })
                    .build(),
            )
            .build();
        if let Err(error) = self.collection.create_index(model).run() {
            log::warn!(
                "unique_key is not enforced on this collection: the server refused the index {UNIQUE_INDEX} ({}). It needs a MongoDB that accepts $in in partial indexes (recent releases), no two pending/running jobs already sharing a key, and on a sharded collection a shard key of unique_key",
                trim_driver_message(&redact_text(&error.to_string(), &self.uri))
            );
        }
    }

    /// The retention of each finished status, from the TTL indexes present.
    pub fn retention(&self) -> Result<Vec<Retention>, Error> {
        let indexes = self.indexes()?;
        Ok(RETAINABLE
            .iter()
            .map(|(status, field)| {
                let keep = index_options(&indexes, &retention_index(status))
                    .and_then(|options| options.expire_after);
                Retention {
                    status,
                    field,
                    keep,
                }
            })
            .collect())
    }

    /// Keeps jobs of a finished `status` (`completed`, `failed`,
    /// `cancelled`) for `keep` after they finished, then lets MongoDB's TTL
    /// monitor delete them; `None` keeps them forever (drops the index).
    ///
    /// The TTL index is partial on `status`, so a job retried after failing
    /// (back to `pending`) is never deleted by it. MongoDB deletes expired
    /// documents in a background pass about once a minute, so jobs may
    /// outlive `keep` by that much (more on a loaded server).
    pub fn set_retention(&self, status: &str, keep: Option<Duration>) -> Result<(), Error> {
        let Some((status, field)) = RETAINABLE.iter().find(|(s, _)| *s == status) else {
            return Err(Error::Invalid(format!(
                "retention applies to completed, failed or cancelled jobs, not `{status}`"
            )));
        };
        let name = retention_index(status);
        let indexes = self.indexes()?;
        let existing = index_options(&indexes, &name);
        let current = existing.and_then(|options| options.expire_after);
        match (keep, existing.is_some()) {
            (None, false) => Ok(()),
            (None, true) => self
                .collection
                .drop_index(name)
                .run()
                .map_err(|e| self.db_error("dropIndex", &e)),
            (Some(keep), true) if current == Some(keep) => Ok(()),
            (Some(keep), true) => self
                .database
                .run_command(doc! {
                    "collMod": self.collection.name(),
                    "index": {"name": name, "expireAfterSeconds": keep.as_secs() as i64},
                })
                .run()
                .map(|_| ())
                .map_err(|e| self.db_error("collMod (retention)", &e)),
            (Some(keep), false) => self
                .collection
                .create_index(
                    IndexModel::builder()
                        .keys(doc! {*field: 1})
                        .options(
                            IndexOptions::builder()
                                .name(name)
                                .expire_after(keep)
                                .partial_filter_expression(doc! {fields::STATUS: *status})
                                .build(),
                        )
                        .build(),
                )
                .run()
                .map(|_| ())
                .map_err(|e| self.db_error("createIndex (retention)", &e)),
        }
    }

    /// The `_id`s of the documents `filter` matches.
    pub(crate) fn find_ids(
        &self,
        filter: Document,
        operation: &'static str,
    ) -> Result<Vec<Bson>, Error> {
        self.collection
            .find(filter)
            .projection(doc! {"_id": 1})
            .run()
            .and_then(|cursor| {
                cursor
                    .map(|d| d.map(|d| d.get("_id").cloned().unwrap_or(Bson::Null)))
                    .collect()
            })
            .map_err(|e| self.db_error(operation, &e))
    }

    /// The indexes on the collection, with their options.
    fn indexes(&self) -> Result<Vec<IndexModel>, Error> {
        self.collection
            .list_indexes()
            .run()
            .and_then(Iterator::collect)
            .map_err(|e| self.db_error("listIndexes", &e))
    }

    /// Names of the indexes on the collection.
    pub fn index_names(&self) -> Result<Vec<String>, Error> {
        self.collection
            .list_index_names()
            .run()
            .map_err(|e| self.db_error("listIndexes", &e))
    }

    /// Inserts one pending job and returns its `_id`.
    ///
    /// With a `unique_key` that a pending or running job already has, nothing
    /// is inserted and the error is [`Error::Duplicate`] naming that job.
    pub fn enqueue(&self, data: Bson, options: &EnqueueOptions) -> Result<ObjectId, Error> {
        if options.unique_key.is_none() {
            return Ok(self.enqueue_many(std::iter::once(data), options)?[0]);
        }
        let id = ObjectId::new();
        let document = new_job_document(id, data, options, DateTime::now());
        match self.collection.insert_one(document).run() {
            Ok(_) => Ok(id),
            Err(error) if is_duplicate_key(&error) => {
                let key = options.unique_key.clone().unwrap_or_default();
                let existing = self
                    .collection
                    .find_one(doc! {
                        fields::UNIQUE_KEY: &key,
                        fields::STATUS: {"$in": [fields::PENDING, fields::RUNNING]},
                    })
                    .projection(doc! {"_id": 1})
                    .run()
                    .ok()
                    .flatten()
                    .and_then(|d| d.get("_id").map(crate::job::id_text));
                Err(Error::Duplicate {
                    unique_key: key,
                    existing,
                })
            }
            Err(error) => Err(self.db_error("insert", &error)),
        }
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

/// The options of the index called `name` among `indexes`.
fn index_options<'a>(indexes: &'a [IndexModel], name: &str) -> Option<&'a IndexOptions> {
    indexes
        .iter()
        .filter_map(|index| index.options.as_ref())
        .find(|options| options.name.as_deref() == Some(name))
}

/// The name of the TTL index that expires jobs of `status`.
fn retention_index(status: &str) -> String {
    format!("mongoq_retain_{status}")
}

/// Whether a driver error is a duplicate key (E11000).
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    crate::error::server_code_is(error, |code| code == DUPLICATE_KEY)
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
    if let Some(queue) = &options.queue {
        document.insert(fields::QUEUE, queue.clone());
    }
    if let Some(key) = &options.unique_key {
        document.insert(fields::UNIQUE_KEY, key.clone());
    }
    document
}
