//! The fleet's shared read-ahead window, `<collection>_windows`: per set of
//! queues, a small header document (the epoch, the reader's turn, how the
//! window was divided) and one document per part, holding the `_id`s (and
//! ranks) of that part's next eligible jobs in queue order, as one worker
//! read them.
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

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
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

/// A job as a window lists it: its `_id`, its rank in queue order (its
/// `priority`, where none counts as 0) and its group (`None`: the queue's
/// default group, or a `group` that is not a string).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    pub(crate) id: Bson,
    pub(crate) rank: Bson,
    pub(crate) group: Option<String>,
}

/// A part of a window a worker published.
pub(crate) struct Published {
    pub(crate) epoch: i64,
    /// The part's keys: all of them belong to `part` of the division.
    pub(crate) keys: Vec<Key>,
    /// The part (`rank` of `of`) these keys are, by the publisher's count
    /// of the peers.
    pub(crate) part: (usize, usize),
    /// The read stopped at its limit: more eligible jobs lie beyond.
    pub(crate) full: bool,
    /// When it was read, on the server's clock.
    pub(crate) read_at: DateTime,
    /// What names this window's parts (see [`SharedWindow::part`]).
    pub(crate) token: Bson,
    /// The named groups of the whole window (`None`: more than
    /// [`crate::groups::fair::LISTED_GROUPS`]).
    pub(crate) groups: Option<Vec<String>>,
}

/// A published window's header.
struct Header {
    epoch: i64,
    token: Bson,
    parts: usize,
    full: bool,
    read_at: DateTime,
    groups: Option<Vec<String>>,
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

    /// Part `rank` (of the publisher's division; `rank` is taken modulo
    /// it) of the window published after `epoch`, if any, and the round
    /// trips made: one `_id` lookup of the header, and one of the part when
    /// there is a newer window.
    pub(crate) fn newer(&self, epoch: i64, rank: usize) -> Result<(Option<Published>, u64), Error> {
        let found = self
            .collection
            // A header that holds `ids` was written by an older mongoq,
            // which names no parts: not one to adopt.
            .find_one(doc! {
                "_id": &self.id,
                "epoch": {"$gt": epoch},
                "token": {"$exists": true},
                "ids": {"$exists": false},
            })
            .projection(
                doc! {"epoch": 1, "token": 1, "parts": 1, "full": 1, "read_at": 1, "groups": 1},
            )
            .run()
            .map_err(|e| self.queue.db_error("find (shared window)", &e))?;
        let Some(header) = found.as_ref().and_then(header) else {
            return Ok((None, 1));
        };
        let part = (rank % header.parts, header.parts);
        // None: a newer window replaced the part in between; look again.
        let published = self.part(&header.token, part.0)?.map(|keys| Published {
            epoch: header.epoch,
            keys,
            part,
            full: header.full,
            read_at: header.read_at,
            token: header.token,
            groups: header.groups,
        });
        Ok((published, 2))
    }

    /// Part `rank` of the window `token` names (one `_id` lookup); `None`
    /// once a newer window replaced it.
    pub(crate) fn part(&self, token: &Bson, rank: usize) -> Result<Option<Vec<Key>>, Error> {
        let found = self
            .collection
            .find_one(doc! {"_id": self.part_id(rank), "token": token})
            .projection(doc! {"ids": 1, "runs": 1, "groups": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (shared window part)", &e))?;
        Ok(found.as_ref().and_then(keys))
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

    /// Gives the turn back unused (this worker read for itself alone): a
    /// peer that started meanwhile takes it at its next look. Best effort:
    /// an unreleased turn lapses after [`TURN`].
    pub(crate) fn release_turn(&self) -> u64 {
        let _ = self
            .collection
            .update_one(
                doc! {"_id": &self.id, "reader": &self.owner},
                doc! {"$unset": {"reader": "", "reading_until": ""}},
            )
            .run();
        1
    }

    /// Publishes what this worker read in its turn, divided into `parts`
    /// (each part written first, then the header that names them), with
    /// the whole window's named `groups` (`None`: too many to list);
    /// returns the new epoch (`None`: its turn had lapsed and a peer took
    /// it) and the round trips made.
    pub(crate) fn publish(
        &self,
        parts: &[Vec<Key>],
        full: bool,
        groups: Option<&[String]>,
    ) -> Result<(Option<i64>, u64), Error> {
        let token = Bson::ObjectId(ObjectId::new());
        for (rank, mine) in parts.iter().enumerate() {
            let ids: Vec<Bson> = mine.iter().map(|k| k.id.clone()).collect();
            let mut update = doc! {"$set": {"token": &token, "ids": ids, "runs": runs(mine)}};
            // Only a part with groups lists them: a queue without groups
            // writes what it always did.
            if mine.iter().any(|k| k.group.is_some()) {
                let groups: Vec<Bson> = mine
                    .iter()
                    .map(|k| k.group.clone().map_or(Bson::Null, Bson::String))
                    .collect();
                if let Ok(set) = update.get_document_mut("$set") {
                    set.insert("groups", groups);
                }
            } else {
                update.insert("$unset", doc! {"groups": ""});
            }
            self.collection
                .update_one(doc! {"_id": self.part_id(rank)}, update)
                .upsert(true)
                .run()
                .map_err(|e| self.queue.db_error("update (shared window part)", &e))?;
        }
        let now = self.queue.clock().now();
        let mut set =
            doc! {"token": &token, "parts": parts.len() as i64, "full": full, "read_at": now};
        // `ids` and `runs`: where an older mongoq kept the window.
        let mut unset = doc! {"reader": "", "reading_until": "", "ids": "", "runs": ""};
        match groups {
            Some(groups) => {
                set.insert("groups", groups);
            }
            None => {
                unset.insert("groups", "");
            }
        }
        let updated = self
            .collection
            .find_one_and_update(
                doc! {"_id": &self.id, "reader": &self.owner},
                doc! {"$set": set, "$inc": {"epoch": 1_i64}, "$unset": unset},
            )
            .projection(doc! {"epoch": 1})
            .return_document(ReturnDocument::After)
            .run()
            .map_err(|e| self.queue.db_error("update (shared window)", &e))?;
        Ok((
            updated.and_then(|d| number(d.get("epoch"))),
            parts.len() as u64 + 1,
        ))
    }

    /// The `_id` of part `rank`: a document, so it never equals a window's
    /// `_id` (a string), whatever the queues are named.
    fn part_id(&self, rank: usize) -> Document {
        doc! {"window": &self.id, "part": rank as i64}
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

/// Reads a window's header; `None` for one it cannot parse (then the
/// window is read again rather than trusted).
fn header(document: &Document) -> Option<Header> {
    Some(Header {
        epoch: number(document.get("epoch"))?,
        token: document.get("token")?.clone(),
        parts: usize::try_from(number(document.get("parts"))?)
            .ok()
            .filter(|&n| n > 0)?,
        full: document.get_bool("full").unwrap_or(true),
        read_at: *document.get_datetime("read_at").ok()?,
        groups: document.get_array("groups").ok().map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_string))
                .collect()
        }),
    })
}

/// Reads a part's keys back; `None` for a document it cannot parse.
fn keys(document: &Document) -> Option<Vec<Key>> {
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
    let groups = match document.get_array("groups") {
        Ok(groups) if groups.len() == ids.len() => Some(groups),
        Ok(_) => return None,
        Err(_) => None,
    };
    Some(
        ids.iter()
            .zip(ranks)
            .enumerate()
            .map(|(i, (id, rank))| Key {
                id: id.clone(),
                rank: rank.clone(),
                group: groups
                    .and_then(|groups| groups[i].as_str())
                    .map(str::to_string),
            })
            .collect(),
    )
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
                group: (i % 2 == 0).then(|| format!("g{i}")),
            })
            .collect();
        let document = doc! {
            "ids": keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
            "runs": runs(&keys),
            "groups": keys.iter().map(|k| k.group.clone().map_or(Bson::Null, Bson::String)).collect::<Vec<_>>(),
        };
        assert_eq!(document.get_array("runs").unwrap().len(), 3);
        assert_eq!(super::keys(&document).expect("parses"), keys);
        let short = doc! {"ids": [1, 2], "runs": [{"rank": 0, "n": 3}]};
        assert!(
            super::keys(&short).is_none(),
            "runs that do not cover the ids"
        );
        let head = doc! {"epoch": 3_i64, "token": 7, "parts": 0, "read_at": DateTime::now()};
        assert!(
            header(&head).is_none(),
            "a header without parts is not trusted"
        );
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
