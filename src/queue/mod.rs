//! The queue as a collection: connecting to it, and the rooms that act on
//! it without running jobs: [`indexes`] (and retention), [`enqueue`],
//! [`filters`] (which documents are eligible), [`stats`] and [`admin`]
//! (show, cancel, retry, purge).
//!
//! [`Queue`] is what producers and tools use; the worker borrows its
//! collection for claims and outcome writes. Every driver error leaves the
//! queue through [`Queue::db_error`], which redacts the password.
//!
//! The room below every other: it may import `job`, `schema`, `clock` and
//! the shared helpers, never `flow`, `schedule`, `fleet` or `worker` (a
//! thing that needs those, such as a cancel that settles dependents, lives
//! with them).

pub mod admin;
pub mod commands;
pub mod control;
pub mod debounce;
pub mod enqueue;
pub mod filters;
pub mod indexes;
pub mod registry;
pub mod transaction;
pub mod wait;

pub use admin::{Cancel, Retried, RetrySelection};
pub use control::{GroupOverride, QueueControl, Rate};
pub use debounce::{Debounced, Throttled};
pub use enqueue::EnqueueOptions;
pub use filters::{validate_group_name, validate_queue_name};
pub use indexes::{Retention, CLAIM_INDEX, UNIQUE_INDEX};
pub use registry::WorkerInfo;
pub use wait::Waited;

use std::time::Duration;

use std::sync::Arc;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ClientOptions;
use mongodb::sync::{Client, Collection, Database};

use crate::clock::{Clock, Reading};
use crate::error::{describe_driver_error, hint_for, Error};
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

/// A handle on the queue collection. Cheap to clone; share it freely.
#[derive(Clone)]
pub struct Queue {
    client: Client,
    database: Database,
    collection: Collection<Document>,
    uri: String,
    /// The server's clock, shared by every clone (see [`crate::clock`]).
    clock: Arc<Clock>,
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
        // A `%` that starts no `%XX` escape is invalid in any URI (RFC 3986),
        // and the driver's parser panics on one before a multi-byte
        // character; refuse it here with a message instead.
        if let Some(offset) = crate::text::broken_percent_escape(&config.uri) {
            return Err(Error::InvalidUri {
                uri: redact_uri(&config.uri),
                reason: format!(
                    "the `%` at byte {offset} starts no %XX escape; write a literal % in a user name or password as %25"
                ),
            });
        }
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
            client,
            database,
            collection,
            uri: config.uri.clone(),
            clock: Arc::default(),
        })
    }

    /// The collection holding the jobs.
    pub fn collection(&self) -> &Collection<Document> {
        &self.collection
    }

    /// The driver's client (share it: one pool for the queue and your own
    /// collections, needed for transactions across both).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The database holding the collection.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The server's clock as this process knows it. Until it has been read
    /// ([`Queue::measure_clock`]) it is this host's clock; [`Queue::now`]
    /// reads it on first use.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The clock, to hand to a thread.
    pub(crate) fn clock_handle(&self) -> Arc<Clock> {
        Arc::clone(&self.clock)
    }

    /// Reads the server's clock now (three `hello`s).
    pub fn measure_clock(&self) -> Result<Reading, Error> {
        self.clock
            .measure(&self.database)
            .map_err(|e| self.db_error("hello (server clock)", &e))
    }

    /// The server's time now. The first call reads the server's clock; if
    /// the server cannot be reached the host's clock stands in (the
    /// operation that needed the time fails on its own then).
    pub fn now(&self) -> DateTime {
        if !self.clock.is_measured() {
            if let Err(error) = self.measure_clock() {
                log::debug!("cannot read the server's clock yet: {error}");
            }
        }
        self.clock.now()
    }

    /// The server's time `duration` from now.
    pub fn clock_after(&self, duration: std::time::Duration) -> DateTime {
        let now = self.now();
        crate::clock::shift_by(now, duration)
    }

    /// The server's time `duration` ago.
    pub(crate) fn now_ago(&self, duration: std::time::Duration) -> DateTime {
        let now = self.now();
        DateTime::from_millis(now.timestamp_millis() - duration.as_millis() as i64)
    }

    /// The URI with its password hidden, for logs.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    /// Wraps a driver error for the user: operation, redacted URI, hint.
    pub fn db_error(&self, operation: &'static str, error: &mongodb::error::Error) -> Error {
        let message = redact_text(&describe_driver_error(error), &self.uri);
        if error.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) {
            return Error::Transient {
                operation,
                reason: message,
            };
        }
        let hint = hint_for(&message);
        Error::Database {
            operation,
            uri: self.redacted_uri(),
            reason: format!("{message}{hint}"),
        }
    }

    /// Runs a write command (`insert`, `update` with many statements) on
    /// this database with the collection's write concern (from the URI),
    /// as the driver's own write helpers would send it.
    pub(crate) fn run_write_command(
        &self,
        mut command: Document,
        operation: &'static str,
    ) -> Result<Document, Error> {
        if let Some(concern) = self.collection().write_concern() {
            if let Ok(concern) = mongodb::bson::to_document(concern) {
                if !concern.is_empty() {
                    command.insert("writeConcern", concern);
                }
            }
        }
        self.database()
            .run_command(command)
            .run()
            .map_err(|e| self.db_error(operation, &e))
    }

    /// The `_id`s of the documents `filter` matches (`operation` names the
    /// query in an error).
    pub fn find_ids(&self, filter: Document, operation: &'static str) -> Result<Vec<Bson>, Error> {
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
}

/// One statement of a write command that the server refused (an entry of
/// the reply's `writeErrors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteError {
    /// The statement's position in the command.
    pub(crate) index: usize,
    /// MongoDB's error code (11000: a duplicate key).
    pub(crate) code: i64,
    pub(crate) message: String,
}

impl WriteError {
    /// Every `writeErrors` entry of a write command's reply.
    pub(crate) fn all_in(reply: &Document) -> Vec<WriteError> {
        reply
            .get_array("writeErrors")
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Bson::as_document)
            .filter_map(|refused| {
                Some(WriteError {
                    index: usize::try_from(crate::schema::integer(refused.get("index")?)?).ok()?,
                    code: refused
                        .get("code")
                        .and_then(crate::schema::integer)
                        .unwrap_or(0),
                    message: refused
                        .get_str("errmsg")
                        .unwrap_or("no message")
                        .to_string(),
                })
            })
            .collect()
    }
}

/// Reading a whole cursor: `collection.find(…).run().documents(&queue,
/// "find (what)")?` instead of collecting and wording the error by hand.
pub(crate) trait Documents {
    /// Every document of the cursor, or the first error, worded as
    /// `operation`'s.
    fn documents(self, queue: &Queue, operation: &'static str) -> Result<Vec<Document>, Error>;
}

impl Documents for mongodb::error::Result<mongodb::sync::Cursor<Document>> {
    fn documents(self, queue: &Queue, operation: &'static str) -> Result<Vec<Document>, Error> {
        self.and_then(Iterator::collect)
            .map_err(|e| queue.db_error(operation, &e))
    }
}
