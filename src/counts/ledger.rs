//! The ledger: one document in `<collection>_counts` that holds every
//! queue's counters, the lock that lets one process at a time change them,
//! and the journal of the change under way.
//!
//! ```text
//! { _id: "counts", v: 812,                       // bumped by every change
//!   q: {default: {pending: 999000, running: 8, completed: 992},
//!       mail: {failed: 3, expired: 1}},
//!   holder: "host-4711-…", until: ISODate(…),   // the lock
//!   journal: [ {q: "default", from: "pending", to: "completed",
//!               status: "completed", ids: [ObjectId(…), …]}, … ] }
//! ```
//!
//! A change is written in three steps, so that a process killed at any
//! point leaves nothing counted twice or not at all:
//!
//! 1. one update of the ledger: the counters move (`$inc`) and the journal
//!    names the jobs and what they are to be counted under;
//! 2. the jobs are marked (`counted` set, or the jobs deleted), each
//!    statement fenced on the state the counters assumed;
//! 3. one update of the ledger: the counters of jobs step 2 did not change
//!    (they changed again meanwhile, or are gone) move back, and the
//!    journal is dropped.
//!
//! Steps 2 and 3 can be done again by whoever holds the lock next: marking
//! a job that is marked changes nothing, and step 3 reads what is true.

use std::collections::BTreeMap;
use std::time::Instant;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;

use super::key::{escape, unescape};
use super::Counts;
use crate::error::Error;
use crate::queue::Documents;
use crate::schema::{fields, integer, Status};

use super::LEDGER;

/// Counters by queue, then key.
pub type Tallies = BTreeMap<String, BTreeMap<String, i64>>;

/// Moves of counters by (queue, key).
pub(super) type Deltas = BTreeMap<(String, String), i64>;

/// The ledger as read.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    pub(super) version: i64,
    pub(super) counters: Tallies,
    pub(super) journal: Vec<Group>,
    pub(super) floors: super::oldest::Floors,
}

/// Jobs of one queue that a change moves from one key to another (`to`
/// absent: deleted).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    pub(super) queue: String,
    /// What they were counted under (absent: not counted yet).
    pub(super) from: Option<String>,
    /// What they are to be counted under (absent: deleted).
    pub(super) to: Option<String>,
    /// The `status` they had when read (a mark is fenced on it).
    pub(super) status: Bson,
    /// For a delete: the filter the caller gave (it fences the delete).
    pub(super) filter: Option<Document>,
    pub(super) ids: Vec<Bson>,
}

impl Group {
    fn to_document(&self) -> Document {
        let mut group = doc! {
            "q": &self.queue,
            "from": self.from.clone().map_or(Bson::Null, Bson::String),
            "to": self.to.clone().map_or(Bson::Null, Bson::String),
            "status": self.status.clone(),
            "ids": self.ids.clone(),
        };
        if let Some(filter) = &self.filter {
            group.insert("filter", filter.clone());
        }
        group
    }

    fn from_document(group: &Document) -> Group {
        let text = |field: &str| group.get_str(field).ok().map(str::to_string);
        Group {
            queue: text("q").unwrap_or_default(),
            from: text("from"),
            to: text("to"),
            status: group.get("status").cloned().unwrap_or(Bson::Null),
            filter: group.get_document("filter").ok().cloned(),
            ids: group.get_array("ids").cloned().unwrap_or_default(),
        }
    }

    /// The jobs of this group still in the state the counters assumed
    /// when the group was read: counted under `from` (or, a status change
    /// since, `was_counted` says so) or not at all.
    fn unchanged(&self, ids: &[Bson]) -> Document {
        let mut filter = doc! {"_id": {"$in": ids}};
        match (&self.to, &self.from) {
            // A mark: not counted since, and still the status read.
            (Some(to), from) => {
                filter.insert(fields::COUNTED, Bson::Null);
                filter.insert(
                    fields::WAS_COUNTED,
                    from.clone().map_or(Bson::Null, Bson::String),
                );
                filter.insert(fields::STATUS, self.status.clone());
                if self.status == Bson::String(Status::Cancelled.as_str().into()) {
                    let expired = to == super::key::EXPIRED;
                    filter.insert(
                        fields::EXPIRED,
                        if expired {
                            Bson::Boolean(true)
                        } else {
                            Bson::Document(doc! {"$ne": true})
                        },
                    );
                }
            }
            // A delete: the caller's filter, and counted as read.
            (None, from) => {
                let as_read = if let Some(from) = from {
                    doc! {"$or": [
                        {fields::COUNTED: from},
                        {fields::COUNTED: Bson::Null, fields::WAS_COUNTED: from},
                    ]}
                } else {
                    doc! {fields::COUNTED: Bson::Null, fields::WAS_COUNTED: Bson::Null}
                };
                let mut all = vec![Bson::Document(as_read)];
                if let Some(extra) = &self.filter {
                    all.push(Bson::Document(extra.clone()));
                }
                filter.insert("$and", all);
            }
        }
        filter
    }
}

/// The `$inc` of `deltas` (zero moves left out).
fn increments(deltas: &Deltas) -> Document {
    let mut inc = doc! {"v": 1};
    for ((queue, key), n) in deltas {
        if *n != 0 {
            inc.insert(format!("q.{}.{}", escape(queue), escape(key)), *n);
        }
    }
    inc
}

/// The moves of counters that `groups` make (each job from its group's
/// `from` to its `to`).
pub(super) fn moves_of(groups: &[Group]) -> Deltas {
    let mut deltas = Deltas::new();
    for group in groups {
        add_move(
            &mut deltas,
            &group.queue,
            group.from.as_deref(),
            group.to.as_deref(),
            group.ids.len() as i64,
        );
    }
    deltas
}

/// Adds `n` jobs of `queue` moved from `from` to `to` to `deltas`.
pub(super) fn add_move(
    deltas: &mut Deltas,
    queue: &str,
    from: Option<&str>,
    to: Option<&str>,
    n: i64,
) {
    if from == to {
        return;
    }
    if let Some(from) = from {
        *deltas
            .entry((queue.to_string(), from.to_string()))
            .or_insert(0) -= n;
    }
    if let Some(to) = to {
        *deltas
            .entry((queue.to_string(), to.to_string()))
            .or_insert(0) += n;
    }
}

impl Counts {
    /// Reads the ledger (empty before the first change).
    pub(super) fn read_ledger(&self) -> Result<Ledger, Error> {
        let Some(ledger) = self
            .ledger
            .find_one(doc! {"_id": LEDGER})
            .projection(doc! {"holder": 0, "until": 0})
            .run()
            .map_err(|e| self.queue.db_error("find (counts)", &e))?
        else {
            return Ok(Ledger::default());
        };
        let mut counters = Tallies::new();
        if let Ok(queues) = ledger.get_document("q") {
            for (queue, keys) in queues {
                let Some(keys) = keys.as_document() else {
                    continue;
                };
                let tally = counters.entry(unescape(queue)).or_default();
                for (key, n) in keys {
                    tally.insert(unescape(key), integer(n).unwrap_or(0));
                }
            }
        }
        let journal = ledger
            .get_array("journal")
            .map(|groups| {
                groups
                    .iter()
                    .filter_map(Bson::as_document)
                    .map(Group::from_document)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Ledger {
            version: ledger.get("v").and_then(integer).unwrap_or(0),
            counters,
            journal,
            floors: super::oldest::Floors::read(&ledger),
        })
    }

    /// Takes the lock if it is free (or ours), for [`super::LOCK_LEASE`]:
    /// whether this process now holds it. Time is the server's (the
    /// queue's clock), as for job leases.
    pub(super) fn lock(&self) -> Result<bool, Error> {
        let clock = self.queue.clock();
        let free = doc! {"$or": [
            {"$eq": ["$holder", &self.me]},
            {"$lt": ["$until", clock.now()]},
        ]};
        let update = vec![doc! {"$set": {
            "holder": {"$cond": [free.clone(), &self.me, "$holder"]},
            "until": {"$cond": [free, clock.after(super::LOCK_LEASE), "$until"]},
        }}];
        match self
            .ledger
            .find_one_and_update(doc! {"_id": LEDGER}, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! {"holder": 1})
            .run()
        {
            Ok(ledger) => Ok(ledger.is_some_and(|l| l.get_str("holder") == Ok(&self.me))),
            // Two processes created the ledger at once: the other has it.
            Err(error) if crate::queue::enqueue::is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(self.queue.db_error("update (counts lock)", &error)),
        }
    }

    /// Lets the lock go (best effort: it expires anyway).
    pub(super) fn unlock(&self) {
        let _ = self
            .ledger
            .update_one(
                doc! {"_id": LEDGER, "holder": &self.me},
                doc! {"$set": {"until": mongodb::bson::DateTime::from_millis(0)}},
            )
            .run();
    }

    /// Step 1: moves the counters by `deltas` and writes `journal`, if
    /// this process still holds the lock (whether it did).
    /// `floors` is the `$min` that lowers the floors (see [`super::oldest`]).
    pub(super) fn begin(
        &self,
        deltas: &Deltas,
        journal: &[Group],
        floors: Document,
    ) -> Result<bool, Error> {
        let groups: Vec<Document> = journal.iter().map(Group::to_document).collect();
        let mut update = doc! {"$inc": increments(deltas), "$set": {"journal": groups}};
        if !floors.is_empty() {
            update.insert("$min", floors);
        }
        let result = self
            .ledger
            .update_one(
                doc! {"_id": LEDGER, "holder": &self.me, "journal": {"$exists": false}},
                update,
            )
            .run()
            .map_err(|e| self.queue.db_error("update (counts)", &e))?;
        Ok(result.matched_count == 1)
    }

    /// Steps 2 and 3 of the journal (again, after a crash: both are safe to
    /// repeat). Returns how many jobs it marked or deleted.
    pub(super) fn settle(&self, journal: &[Group]) -> Result<u64, Error> {
        let collection = self.queue.collection();
        let mut done = 0;
        let mut renewed = Instant::now();
        // Groups whose every job was marked (or deleted) need no step 3.
        let mut unsure: Vec<&Group> = Vec::new();
        for group in journal {
            let mut changed = 0;
            // In chunks: an `$in` of many thousand ids costs some servers
            // far more per id than a thousand does.
            for ids in group.ids.chunks(ID_CHUNK) {
                let filter = group.unchanged(ids);
                changed += match &group.to {
                    Some(to) => collection
                        .update_many(
                            filter,
                            doc! {"$set": {fields::COUNTED: to}, "$unset": {fields::WAS_COUNTED: ""}},
                        )
                        .hint(by_id())
                        .run()
                        .map_err(|e| self.queue.db_error("update (count jobs)", &e))?
                        .modified_count,
                    None => {
                        collection
                            .delete_many(filter)
                            .hint(by_id())
                            .run()
                            .map_err(|e| self.queue.db_error("delete", &e))?
                            .deleted_count
                    }
                };
                // A slow server: the lock must outlive the round, or
                // another process would finish this journal beside it.
                if renewed.elapsed() > super::LOCK_LEASE / 4 {
                    if !self.lock()? {
                        return Err(Error::Invalid(
                            "the counts' lock was taken over in the middle of a change (a round slower than its lease); the new holder finishes it".into(),
                        ));
                    }
                    renewed = Instant::now();
                }
            }
            done += changed;
            if changed < group.ids.len() as u64 {
                unsure.push(group);
            }
        }
        // Step 3: what did not happen moves back.
        let ids: Vec<Bson> = unsure.iter().flat_map(|g| g.ids.iter().cloned()).collect();
        let present = self.read_ids(&ids, doc! {fields::COUNTED: 1, fields::WAS_COUNTED: 1})?;
        let mut back = Deltas::new();
        for group in unsure {
            for id in &group.ids {
                let job = present.get(&id_key(Some(id)));
                match (&group.to, job) {
                    // Marked, as planned (its status may have changed
                    // since, which moved the mark to `was_counted`).
                    (Some(to), Some(job)) if contribution(job) == Some(to.as_str()) => {}
                    // Not marked: it changed again, and is still counted
                    // under `from` (the next round counts it).
                    (Some(to), Some(_)) => {
                        add_move(&mut back, &group.queue, Some(to), group.from.as_deref(), 1);
                    }
                    // Gone (deleted by someone else): counted under nothing.
                    (Some(to), None) => add_move(&mut back, &group.queue, Some(to), None, 1),
                    // Not deleted: still counted under `from`.
                    (None, Some(_)) => {
                        add_move(&mut back, &group.queue, None, group.from.as_deref(), 1);
                    }
                    (None, None) => {}
                }
            }
        }
        self.ledger
            .update_one(
                doc! {"_id": LEDGER, "holder": &self.me},
                doc! {"$inc": increments(&back), "$unset": {"journal": ""}},
            )
            .run()
            .map_err(|e| self.queue.db_error("update (counts)", &e))?;
        Ok(done)
    }

    /// The jobs of `ids` that exist, by [`id_key`], with `projection`
    /// (read a chunk at a time).
    pub(super) fn read_ids(
        &self,
        ids: &[Bson],
        projection: Document,
    ) -> Result<BTreeMap<String, Document>, Error> {
        let mut present = BTreeMap::new();
        for chunk in ids.chunks(ID_CHUNK) {
            for job in self
                .queue
                .collection()
                .find(doc! {"_id": {"$in": chunk}})
                .projection(projection.clone())
                .run()
                .documents(&self.queue, "find (counts)")?
            {
                present.insert(id_key(job.get("_id")), job);
            }
        }
        Ok(present)
    }

    /// Replaces every counter (a recount).
    pub(super) fn replace_counters(&self, counters: &Tallies) -> Result<bool, Error> {
        let mut q = Document::new();
        for (queue, keys) in counters {
            let mut tally = Document::new();
            for (key, n) in keys {
                tally.insert(escape(key), *n);
            }
            q.insert(escape(queue), tally);
        }
        let result = self
            .ledger
            .update_one(
                doc! {"_id": LEDGER, "holder": &self.me, "journal": {"$exists": false}},
                doc! {"$set": {"q": q}, "$inc": {"v": 1}},
            )
            .run()
            .map_err(|e| self.queue.db_error("update (counts)", &e))?;
        Ok(result.matched_count == 1)
    }
}

/// What a job is counted under now: `counted`, or while it waits to be
/// counted again, `was_counted`; nothing for a job never counted.
pub(super) fn contribution(job: &Document) -> Option<&str> {
    match job.get(fields::COUNTED) {
        Some(Bson::String(key)) => Some(key),
        _ => job.get_str(fields::WAS_COUNTED).ok(),
    }
}

/// The `_id` index: a mark or delete names its jobs by `_id`, and must
/// not be planned on `mongoq_counted` (every job not counted yet).
fn by_id() -> mongodb::options::Hint {
    mongodb::options::Hint::Keys(doc! {"_id": 1})
}

/// Ids per `$in` of a mark, a delete or a read of the journal's jobs.
pub(super) const ID_CHUNK: usize = 1_000;

/// An `_id` as a map key (equal ids, equal keys).
pub(super) fn id_key(id: Option<&Bson>) -> String {
    id.map_or_else(String::new, |id| format!("{id:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_leave_out_no_ops_and_sum_per_queue_and_key() {
        let mut deltas = Deltas::new();
        add_move(&mut deltas, "q", Some("pending"), Some("completed"), 3);
        add_move(&mut deltas, "q", None, Some("pending"), 2);
        add_move(&mut deltas, "q", Some("running"), Some("running"), 5);
        add_move(&mut deltas, "r", Some("failed"), None, 1);
        assert_eq!(deltas[&("q".into(), "pending".into())], -1);
        assert_eq!(deltas[&("q".into(), "completed".into())], 3);
        assert!(!deltas.contains_key(&("q".into(), "running".into())));
        assert_eq!(deltas[&("r".into(), "failed".into())], -1);
        let inc = increments(&deltas);
        assert_eq!(inc.get_i64("q.q.completed").unwrap(), 3);
        assert_eq!(inc.get_i32("v").unwrap(), 1);
    }

    #[test]
    fn a_group_round_trips_and_fences_its_marks() {
        let group = Group {
            queue: "a.b".into(),
            from: None,
            to: Some("expired".into()),
            status: Bson::String("cancelled".into()),
            filter: None,
            ids: vec![Bson::Int32(1), Bson::String("x".into())],
        };
        assert_eq!(Group::from_document(&group.to_document()), group);
        let fence = group.unchanged(&group.ids);
        assert_eq!(fence.get(fields::COUNTED), Some(&Bson::Null));
        assert_eq!(fence.get(fields::WAS_COUNTED), Some(&Bson::Null));
        assert_eq!(fence.get(fields::EXPIRED), Some(&Bson::Boolean(true)));
    }
}
