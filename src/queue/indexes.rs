//! The indexes the queue needs, and retention (TTL indexes per finished
//! status). `mongoq init` and every worker's start call
//! [`Queue::ensure_indexes`]; creating an index that exists is a no-op.

use std::sync::Mutex;
use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{Hint, IndexOptions};
use mongodb::IndexModel;

use super::Queue;
use crate::error::{server_code_is, trim_driver_message, Error};
use crate::redact::redact_text;
use crate::schema::{fields, Status};
use crate::sync::lock;

/// How long finished jobs of one status are kept (see [`Queue::set_retention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    /// `completed`, `failed` or `cancelled`.
    pub status: Status,
    /// The timestamp field the TTL index expires on.
    pub field: &'static str,
    /// How long after that time the job is deleted; `None`: kept forever.
    pub keep: Option<Duration>,
}

/// The finished status `text` names, and its timestamp field; `None` for
/// any other status (retention and purge apply to finished jobs only).
pub(crate) fn finished_status(text: &str) -> Option<(Status, &'static str)> {
    let status = Status::parse(text)?;
    Some((status, status.finished_at()?))
}

/// The name of the index the claim query uses; `explain` tests look for it.
/// `{after, status}`, partial on `after` existing: a job's dependents.
pub const AFTER_INDEX: &str = "mongoq_after";
/// `{linked, _id}`, partial on `status: "waiting"`: jobs to link, and the audit's pages.
pub const WAITING_INDEX: &str = "mongoq_waiting";
/// `{status}`, partial on `has_dependents: true`: finished jobs not yet settled.
pub const DEPENDENTS_INDEX: &str = "mongoq_dependents";
/// Pending jobs with an expiry, for the sweep that cancels expired ones.
pub const EXPIRY_INDEX: &str = "mongoq_expiry";
/// Jobs kept by `--throttle`, by key and window.
const THROTTLE_INDEX: &str = "mongoq_throttle";
pub const CLAIM_INDEX: &str = "mongoq_claim_by_queue";
/// The claim index of mongoq before named queues (`{status, priority, run_at, _id}`).
const LEGACY_CLAIM_INDEX: &str = "mongoq_claim";
const LEASE_TOKEN_INDEX: &str = "mongoq_lease_token";
const LEASE_EXPIRY_INDEX: &str = "mongoq_lease_expiry";
/// The unique partial index that enforces `unique_key`.
pub const UNIQUE_INDEX: &str = "mongoq_unique_key";
/// `{counted}`: the jobs not counted yet (see [`crate::counts`]).
pub const COUNTED_INDEX: &str = "mongoq_counted";
/// `{run_at, _id}`, partial on `pending`: scheduled jobs and the oldest
/// eligible one, for `stats`.
pub const DUE_INDEX: &str = "mongoq_due";
/// `{status, queue, group, priority, run_at, _id}`, partial on `group`
/// being a string: a queue's groups (see [`crate::groups`]).
pub const GROUPS_INDEX: &str = "mongoq_groups";

/// The server's code for a bad argument, among them a hint naming an index
/// that is not there.
const BAD_VALUE: i32 = 2;

/// Runs `read` hinted to the index `index`, and once more without the hint
/// if the server refuses it (an index dropped by hand, or one a newer
/// mongoq makes and no worker of it has started yet), warning once.
///
/// Reads of a range that one of our indexes bounds exactly name it: a
/// planner that races every index whose keys the filter touches pays for
/// the race on each read where it keeps no plan cache (on the test server,
/// half a claim read at 100,000 pending jobs), and may settle on an index
/// that matches far more than the range.
pub(crate) fn hinted<T>(
    index: &'static str,
    read: impl Fn(Option<Hint>) -> mongodb::error::Result<T>,
) -> mongodb::error::Result<T> {
    static WARNED: Mutex<Vec<&str>> = Mutex::new(Vec::new());
    match read(Some(Hint::Name(index.to_string()))) {
        Err(error) if server_code_is(&error, |code| code == BAD_VALUE) => {
            let mut warned = lock(&WARNED);
            if !warned.contains(&index) {
                warned.push(index);
                log::warn!(
                    "the index {index} is missing; reading without it (run `mongoq init` to create it)"
                );
            }
            drop(warned);
            read(None)
        }
        other => other,
    }
}

impl Queue {
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
    /// - `mongoq_after`, `mongoq_waiting`, `mongoq_dependents`: flows (see
    ///   [`crate::flow`]), each partial on a field plain jobs never have.
    /// - `mongoq_expiry` `{status, expires_at}`, partial on `expires_at`:
    ///   the sweep that cancels expired jobs (see [`crate::expiry`]).
    /// - `mongoq_throttle` `{unique_key, throttle_until}`, partial on
    ///   `throttle_until`: `enqueue --throttle` (see [`super::debounce`]).
    /// - `mongoq_counted` `{counted}` and `mongoq_due` `{run_at, _id}`
    ///   (partial on `pending`): counts and stats (see [`crate::counts`]).
    /// - `mongoq_groups` `{status, queue, group, priority, run_at, _id}`
    ///   (partial on `group` being a string): groups (see
    ///   [`crate::groups`]).
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
            // Flows (crate::flow). Each is partial on a field plain jobs
            // never have, so a plain job costs none of them a key.
            partial(
                doc! {fields::AFTER: 1, fields::STATUS: 1},
                AFTER_INDEX,
                doc! {fields::AFTER: {"$exists": true}},
            ),
            partial(
                doc! {fields::LINKED: 1, "_id": 1},
                WAITING_INDEX,
                doc! {fields::STATUS: Status::Waiting},
            ),
            partial(
                doc! {fields::STATUS: 1},
                DEPENDENTS_INDEX,
                doc! {fields::HAS_DEPENDENTS: true},
            ),
            // Throttle (queue::debounce): only the jobs it kept.
            partial(
                doc! {fields::UNIQUE_KEY: 1, fields::THROTTLE_UNTIL: 1},
                THROTTLE_INDEX,
                doc! {fields::THROTTLE_UNTIL: {"$exists": true}},
            ),
            // Counts (crate::counts): the jobs not counted yet are those
            // under `null`; the pending jobs by `run_at` for stats.
            IndexModel::builder()
                .keys(doc! {fields::COUNTED: 1})
                .options(named(COUNTED_INDEX))
                .build(),
            partial(
                doc! {fields::RUN_AT: 1, "_id": 1},
                DUE_INDEX,
                doc! {fields::STATUS: Status::Pending},
            ),
            // Groups (crate::groups): only jobs that name one.
            partial(
                doc! {fields::STATUS: 1, fields::QUEUE: 1, fields::GROUP: 1, fields::PRIORITY: -1, fields::RUN_AT: 1, "_id": 1},
                GROUPS_INDEX,
                doc! {fields::GROUP: {"$type": "string"}},
            ),
            // Expiry (crate::expiry): only jobs that have one.
            partial(
                doc! {fields::STATUS: 1, fields::EXPIRES_AT: 1},
                EXPIRY_INDEX,
                doc! {fields::EXPIRES_AT: {"$exists": true}},
            ),
        ];
        // Only what is missing: on a big collection `createIndexes` of
        // indexes that exist still costs the server (a second at a million
        // jobs on some), and every worker start pays it. An index of the
        // same name with other keys is left to `createIndexes` to refuse.
        let present = present_indexes(self, &self.collection)?;
        let missing: Vec<IndexModel> = models
            .into_iter()
            .filter(|m| !has_index(&present, m))
            .collect();
        let unique_present = present
            .iter()
            .any(|p| p.options.as_ref().and_then(|o| o.name.as_deref()) == Some(UNIQUE_INDEX));
        if !missing.is_empty() {
            log::debug!(
                "creating indexes {:?}",
                missing
                    .iter()
                    .map(|m| m.options.as_ref().and_then(|o| o.name.clone()))
                    .collect::<Vec<_>>()
            );
            self.collection
                .create_indexes(missing)
                .run()
                .map_err(|e| self.db_error("createIndexes", &e))?;
        }
        if !unique_present {
            self.ensure_unique_index();
        }
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
                        fields::STATUS: Status::any_of(&Status::ACTIVE),
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
        Ok(Status::FINISHED
            .into_iter()
            .filter_map(|status| {
                let field = status.finished_at()?;
                let keep = index_options(&indexes, &retention_index(status))
                    .and_then(|options| options.expire_after);
                Some(Retention {
                    status,
                    field,
                    keep,
                })
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
    pub fn set_retention(&self, status: Status, keep: Option<Duration>) -> Result<(), Error> {
        let Some(field) = status.finished_at() else {
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
                        .keys(doc! {field: 1})
                        .options(
                            IndexOptions::builder()
                                .name(name)
                                .expire_after(keep)
                                .partial_filter_expression(doc! {fields::STATUS: status})
                                .build(),
                        )
                        .build(),
                )
                .run()
                .map(|_| ())
                .map_err(|e| self.db_error("createIndex (retention)", &e)),
        }
    }

    /// The indexes on the collection, with their options.
    fn indexes(&self) -> Result<Vec<IndexModel>, Error> {
        // A collection not created yet has no indexes (not an error).
        present_indexes(self, &self.collection)
    }

    /// Names of the indexes on the collection.
    pub fn index_names(&self) -> Result<Vec<String>, Error> {
        self.collection
            .list_index_names()
            .run()
            .map_err(|e| self.db_error("listIndexes", &e))
    }
}

/// Whether `present` (as `listIndexes` gave them) has `wanted`: the same
/// name over the same keys in the same order and directions (a server may
/// give a direction as another number type than it was created with).
pub(crate) fn has_index(present: &[IndexModel], wanted: &IndexModel) -> bool {
    let name = |m: &IndexModel| m.options.as_ref().and_then(|o| o.name.clone());
    let same_keys = |a: &mongodb::bson::Document, b: &mongodb::bson::Document| {
        a.len() == b.len()
            && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
                ka == kb
                    && match (crate::schema::integer(va), crate::schema::integer(vb)) {
                        (Some(x), Some(y)) => x == y,
                        _ => va == vb,
                    }
            })
    };
    present
        .iter()
        .any(|p| name(p) == name(wanted) && same_keys(&p.keys, &wanted.keys))
}

/// Creates those of `models` that `collection` lacks (see [`has_index`]):
/// `createIndexes` of indexes that exist still costs the server on a big
/// collection, and every worker start would pay it.
pub(crate) fn create_missing(
    queue: &Queue,
    collection: &mongodb::sync::Collection<mongodb::bson::Document>,
    models: Vec<IndexModel>,
) -> Result<(), Error> {
    let present = present_indexes(queue, collection)?;
    let missing: Vec<IndexModel> = models
        .into_iter()
        .filter(|m| !has_index(&present, m))
        .collect();
    if !missing.is_empty() {
        collection
            .create_indexes(missing)
            .run()
            .map_err(|e| queue.db_error("createIndexes", &e))?;
    }
    Ok(())
}

/// The indexes `collection` has (none when it does not exist yet).
pub(crate) fn present_indexes(
    queue: &Queue,
    collection: &mongodb::sync::Collection<mongodb::bson::Document>,
) -> Result<Vec<IndexModel>, Error> {
    collection
        .list_indexes()
        .run()
        .and_then(Iterator::collect)
        .or_else(|error| {
            // NamespaceNotFound: a collection that does not exist yet.
            if crate::error::server_code_is(&error, |code| code == 26) {
                Ok(Vec::new())
            } else {
                Err(error)
            }
        })
        .map_err(|e| queue.db_error("listIndexes", &e))
}

/// An index on `keys` holding only the documents `filter` matches.
fn partial(
    keys: mongodb::bson::Document,
    name: &str,
    filter: mongodb::bson::Document,
) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_string())
                .partial_filter_expression(filter)
                .build(),
        )
        .build()
}

/// The options of the index called `name` among `indexes`.
fn index_options<'a>(indexes: &'a [IndexModel], name: &str) -> Option<&'a IndexOptions> {
    indexes
        .iter()
        .filter_map(|index| index.options.as_ref())
        .find(|options| options.name.as_deref() == Some(name))
}

/// The name of the TTL index that expires jobs of `status`.
fn retention_index(status: Status) -> String {
    format!("mongoq_retain_{status}")
}
