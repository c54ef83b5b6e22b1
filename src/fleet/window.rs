//! The fleet's shared read-ahead window, `<collection>_windows`: one
//! document per set of queues, holding the `_id`s (and ranks) of the next
//! eligible jobs in queue order, as one worker read them.
//!
//! A read-ahead examines the pending jobs, and on some servers everything
//! its filter matches whatever its limit, so when each of `n` workers read
//! its own window the fleet read each job about `n` times. Instead, the
//! worker that needs a new window first looks for one a peer published
//! (one `_id` lookup); only when there is none newer does it take the
//! reader's turn (a conditional write, so one worker reads at a time), read
//! the queue and publish what it read under the next `epoch`. Its peers
//! pick that up instead of reading.
//!
//! The window only proposes: every claim is still an atomic, fenced
//! `updateMany` that re-checks eligibility and the worker's queues, so a
//! stale or wrong window costs lost races, never a job run twice.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::sync::Collection;

use crate::error::Error;
use crate::queue::enqueue::is_duplicate_key;
use crate::queue::Queue;
use crate::text::fnv1a;

/// A reader's turn lasts at most this long; a reader that died holding it
/// is replaced after that.
const TURN: Duration = Duration::from_secs(10);

/// A window `_id` longer than this is replaced by a hash of the names (the
/// names are kept in `queues`).
const MAX_ID_BYTES: usize = 512;

/// A job as a window lists it: its `_id` and its rank in queue order (its
/// `priority`, where none counts as 0).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub(crate) id: Bson,
    pub(crate) rank: Bson,
}

/// A window a worker published.
pub(crate) struct Published {
    pub(crate) epoch: i64,
    pub(crate) keys: Vec<Key>,
    /// The read stopped at its limit: more eligible jobs lie beyond.
    pub(crate) full: bool,
    /// When it was read, on the server's clock.
    pub(crate) read_at: DateTime,
}

/// The shared window of one set of queues.
pub(crate) struct SharedWindow {
    queue: Queue,
    collection: Collection<Document>,
    id: String,
    queues: Vec<String>,
    owner: String,
}

impl SharedWindow {
    pub(crate) fn new(queue: &Queue, queues: &[String], owner: &str) -> SharedWindow {
        let collection = queue
            .database()
            .collection(&format!("{}_windows", queue.collection().name()));
        SharedWindow {
            queue: queue.clone(),
            collection,
            id: window_id(queues),
            queues: queues.to_vec(),
            owner: owner.to_string(),
        }
    }

    /// The window published after `epoch`, if any (one `_id` lookup).
    pub(crate) fn newer(&self, epoch: i64) -> Result<Option<Published>, Error> {
        let found = self
            .collection
            .find_one(doc! {"_id": &self.id, "epoch": {"$gt": epoch}, "ids": {"$exists": true}})
            .projection(doc! {"epoch": 1, "ids": 1, "runs": 1, "full": 1, "read_at": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (shared window)", &e))?;
        Ok(found.and_then(|d| published(&d)))
    }

    /// The newest epoch published (0: none), without the window.
    pub(crate) fn epoch(&self) -> Result<i64, Error> {
        let found = self
            .collection
            .find_one(doc! {"_id": &self.id})
            .projection(doc! {"epoch": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (shared window epoch)", &e))?;
        Ok(found.and_then(|d| number(d.get("epoch"))).unwrap_or(0))
    }

    /// Takes the reader's turn if the newest epoch is still `seen` and no
    /// live peer holds it. False: a peer reads now or published newer.
    pub(crate) fn take_turn(&self, seen: i64) -> Result<bool, Error> {
        let clock = self.queue.clock();
        let result = self
            .collection
            .update_one(
                doc! {
                    "_id": &self.id,
                    "epoch": seen,
                    "$or": [{"reading_until": {"$exists": false}}, {"reading_until": {"$lte": clock.now()}}],
                },
                doc! {"$set": {
                    "reading_until": clock.after(TURN),
                    "reader": &self.owner,
                    "queues": &self.queues,
                }},
            )
            .upsert(true)
            .run();
        match result {
            Ok(result) => Ok(result.modified_count > 0 || result.upserted_id.is_some()),
            // The document exists with another epoch or a reader: not ours.
            Err(error) if is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(self.queue.db_error("update (shared window turn)", &error)),
        }
    }

    /// Publishes what this worker read in its turn; returns the new epoch
    /// (`None`: its turn had lapsed and a peer took it).
    pub(crate) fn publish(&self, keys: &[Key], full: bool) -> Result<Option<i64>, Error> {
        let now = self.queue.clock().now();
        let ids: Vec<Bson> = keys.iter().map(|k| k.id.clone()).collect();
        let updated = self
            .collection
            .find_one_and_update(
                doc! {"_id": &self.id, "reader": &self.owner},
                doc! {
                    "$set": {"ids": ids, "runs": runs(keys), "full": full, "read_at": now},
                    "$inc": {"epoch": 1_i64},
                    "$unset": {"reader": "", "reading_until": ""},
                },
            )
            .projection(doc! {"epoch": 1})
            .return_document(ReturnDocument::After)
            .run()
            .map_err(|e| self.queue.db_error("update (shared window)", &e))?;
        Ok(updated.and_then(|d| number(d.get("epoch"))))
    }
}

/// The `_id` of the window of `queues`: the names in order, one per line,
/// or a hash of them when that is long.
fn window_id(queues: &[String]) -> String {
    let mut names = queues.to_vec();
    names.sort();
    names.dedup();
    let joined = names.join("\n");
    if joined.len() <= MAX_ID_BYTES {
        return joined;
    }
    format!("fnv1a:{:016x}:{}", fnv1a(joined.as_bytes()), names.len())
}

/// The ranks of `keys` (in queue order, so in runs): `[{rank, n}]`.
fn runs(keys: &[Key]) -> Vec<Document> {
    let mut runs: Vec<Document> = Vec::new();
    let mut current: Option<(&Bson, i64)> = None;
    for key in keys {
        match &mut current {
            Some((rank, n)) if *rank == &key.rank => *n += 1,
            _ => {
                if let Some((rank, n)) = current.take() {
                    runs.push(doc! {"rank": rank.clone(), "n": n});
                }
                current = Some((&key.rank, 1));
            }
        }
    }
    if let Some((rank, n)) = current {
        runs.push(doc! {"rank": rank.clone(), "n": n});
    }
    runs
}

/// Reads a published window back; `None` for a document it cannot parse
/// (then it is read again rather than trusted).
fn published(document: &Document) -> Option<Published> {
    let epoch = number(document.get("epoch"))?;
    let ids = document.get_array("ids").ok()?;
    let mut ranks = Vec::with_capacity(ids.len());
    for run in document.get_array("runs").ok()? {
        let run = run.as_document()?;
        let n = usize::try_from(number(run.get("n"))?).ok()?;
        let rank = run.get("rank")?;
        ranks.extend(std::iter::repeat_n(rank, n));
    }
    if ranks.len() != ids.len() {
        return None;
    }
    Some(Published {
        epoch,
        keys: ids
            .iter()
            .zip(ranks)
            .map(|(id, rank)| Key {
                id: id.clone(),
                rank: rank.clone(),
            })
            .collect(),
        full: document.get_bool("full").unwrap_or(true),
        read_at: *document.get_datetime("read_at").ok()?,
    })
}

fn number(value: Option<&Bson>) -> Option<i64> {
    value.and_then(crate::schema::integer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_through_the_document() {
        let keys: Vec<Key> = [5, 5, 0, 0, 0, -1]
            .iter()
            .enumerate()
            .map(|(i, rank)| Key {
                id: Bson::Int64(i as i64),
                rank: Bson::Int64(*rank),
            })
            .collect();
        let document = doc! {
            "epoch": 3_i64,
            "ids": keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
            "runs": runs(&keys),
            "full": false,
            "read_at": DateTime::now(),
        };
        assert_eq!(document.get_array("runs").unwrap().len(), 3);
        let back = published(&document).expect("parses");
        assert_eq!(back.epoch, 3);
        assert_eq!(back.keys, keys);
        assert!(!back.full);
    }

    #[test]
    fn a_window_id_names_the_queues_in_order_or_hashes_them() {
        assert_eq!(window_id(&["b".into(), "a".into()]), "a\nb");
        assert_eq!(window_id(&["a".into(), "b".into()]), "a\nb");
        let long: Vec<String> = (0..100).map(|i| format!("queue-{i:03}")).collect();
        let id = window_id(&long);
        assert!(id.starts_with("fnv1a:") && id.ends_with(":100"), "{id}");
    }
}
