//! The worker registry: each running worker keeps a document in the
//! companion collection `<collection>_workers`, refreshed every few seconds
//! (see `worker::control`), removed on a clean stop, and expired by a TTL
//! index on `last_seen` when a worker dies without saying goodbye. This is
//! how the fleet is seen as one: `mongoq workers`, the dashboard.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::sync::Collection;
use mongodb::IndexModel;

use super::Documents;
use super::Queue;
use crate::error::Error;
use crate::schema::integer;

/// A worker not seen for this long is shown as late (its heartbeat is
/// every [`HEARTBEAT`]).
pub const LATE_AFTER: Duration = Duration::from_secs(10);
/// How often a worker refreshes its document.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The TTL index deletes a document this long after its last heartbeat
/// (MongoDB's TTL monitor runs about once a minute, so it may be later).
pub const EXPIRE_AFTER: Duration = Duration::from_secs(60);
const TTL_INDEX: &str = "mongoq_worker_expiry";

/// A worker as the registry shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerInfo {
    /// `--worker-id` (default `host:pid`).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u64,
    /// mongoq's version.
    pub version: String,
    /// Handler threads.
    pub threads: u64,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// When it started (server time, ms since the epoch).
    pub started_at: i64,
    /// Its last heartbeat (server time, ms since the epoch).
    pub last_seen: i64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs it holds (running or claimed).
    pub held: u64,
    /// Totals since it started.
    pub completed: u64,
    /// Attempts that failed and were retried.
    pub retried: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Not seen for [`LATE_AFTER`]: probably dead, its leases are expiring.
    pub late: bool,
}

impl WorkerInfo {
    fn from_document(document: &Document, now: i64) -> Option<WorkerInfo> {
        let count = |key: &str| {
            document
                .get(key)
                .and_then(integer)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        let time = |key: &str| {
            document
                .get_datetime(key)
                .map_or(0, |at| at.timestamp_millis())
        };
        let last_seen = time("last_seen");
        Some(WorkerInfo {
            id: document.get_str("_id").ok()?.to_string(),
            host: document.get_str("host").unwrap_or("").to_string(),
            pid: count("pid"),
            version: document.get_str("version").unwrap_or("").to_string(),
            threads: count("threads"),
            queues: document
                .get_array("queues")
                .map(|queues| {
                    queues
                        .iter()
                        .filter_map(|q| q.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            started_at: time("started_at"),
            last_seen,
            running: count("running"),
            held: count("held"),
            completed: count("completed"),
            retried: count("retried"),
            failed: count("failed"),
            late: now - last_seen > LATE_AFTER.as_millis() as i64,
        })
    }
}

impl Queue {
    /// The registry collection, `<collection>_workers`.
    pub fn workers_collection(&self) -> Collection<Document> {
        self.database()
            .collection(&format!("{}_workers", self.collection().name()))
    }

    /// Every worker in the registry, live ones and late ones, by id.
    pub fn workers(&self) -> Result<Vec<WorkerInfo>, Error> {
        let now = self.now().timestamp_millis();
        let documents = self
            .workers_collection()
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .run()
            .documents(self, "find (workers)")?;
        let mut workers = Vec::new();
        for document in documents {
            workers.extend(WorkerInfo::from_document(&document, now));
        }
        Ok(workers)
    }

    /// The ids of the workers that serve exactly `queues` (in any order)
    /// and were seen within `within` (the peers a worker divides its queues
    /// with).
    pub(crate) fn peers(&self, queues: &[String], within: Duration) -> Result<Vec<String>, Error> {
        let same_queues = doc! {"$all": queues, "$size": queues.len() as i64};
        let documents = self
            .workers_collection()
            .find(doc! {"queues": same_queues, "last_seen": {"$gte": self.clock().ago(within)}})
            .projection(doc! {"_id": 1})
            .run()
            .documents(self, "find (peers)")?;
        let mut peers = Vec::new();
        for document in documents {
            if let Ok(id) = document.get_str("_id") {
                peers.push(id.to_string());
            }
        }
        Ok(peers)
    }

    /// The TTL index that removes dead workers' documents.
    pub(crate) fn ensure_registry_index(&self) -> Result<(), Error> {
        let model = IndexModel::builder()
            .keys(doc! {"last_seen": 1})
            .options(
                IndexOptions::builder()
                    .name(TTL_INDEX.to_string())
                    .expire_after(EXPIRE_AFTER)
                    .build(),
            )
            .build();
        self.workers_collection()
            .create_index(model)
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error("createIndex (workers)", &e))
    }

    /// Writes this worker's heartbeat (`fields` are the `$set` part).
    pub(crate) fn heartbeat(&self, id: &str, fields: Document) -> Result<(), Error> {
        let mut set = fields;
        set.insert("last_seen", self.clock().now());
        self.workers_collection()
            .update_one(
                doc! {"_id": id},
                doc! {"$set": set, "$setOnInsert": {"started_at": self.clock().now()}},
            )
            .upsert(true)
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error("update (worker heartbeat)", &e))
    }

    /// Removes this worker from the registry (a clean stop).
    pub(crate) fn deregister(&self, id: &str) -> Result<(), Error> {
        self.workers_collection()
            .delete_one(doc! {"_id": id})
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error("delete (worker registry)", &e))
    }
}
