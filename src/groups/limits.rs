//! Per-group limits: at most `n` jobs of each group of a queue run at once
//! across the fleet (`mongoq limit QUEUE --group-concurrency N`), and at
//! most `n` start in any window (`--group-rate N/DUR`); `--group NAME
//! --concurrency N --rate N/DUR` for one group. The rate is kept in the
//! same document and the same take as the slots (see [`take`]'s pipeline).
//!
//! **Slot documents only for busy groups.** `<collection>_group_slots`
//! holds one document per (queue, group) with jobs claimed under a limit:
//! `{_id: "<queue>\n<group>", n, holders: {<worker>: {n, until}}, until,
//! grants: {<worker>: {t, k}}}`. A claim's take creates it (an upsert);
//! giving back the last slot deletes it; a group that runs nothing costs
//! nothing, so 10,000 groups that come and go cost what the busy ones do.
//!
//! **One round trip for a batch's groups.** Before claiming a batch, a
//! worker takes slots for every limited group in it with one `update`
//! command of one statement per group (pipeline updates, MongoDB 4.2+),
//! each atomic on its document: it drops holders whose `until` has
//! certainly passed on the server's clock (dead workers; a live worker's
//! `until` moves with its leases, and outlasts them), nets in the slots this worker's finished jobs
//! of that group freed, grants `k = max(0, min(want, limit − held by the
//! live holders))`, and records the grant under `grants.<worker>` with the
//! claim's token. One `find` by that token reads the grants back. So at no
//! instant do more than `limit` jobs of a group hold slots, whoever died
//! holding some, and a claim of 500 jobs of 500 groups is two round trips
//! more, not 500.
//!
//! **Giving back.** A finished job's slot is netted into the worker's next
//! take of its group, or given back by the control thread within half a
//! second (one `update` command for all such groups, then a `deleteMany`
//! of the documents left at 0). Slots a claim did not fill (jobs another
//! worker took first) are freed at once the same way.
//!
//! Jobs without a group (the queue's default group) are not held by these
//! limits; the queue's own limits hold them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::sync::Collection;

use crate::error::Error;
use crate::queue::control::{holder_key, Rate};
use crate::queue::Queue;
use crate::schema::integer;
use crate::sync::lock;

/// A (queue, group) pair.
pub(crate) type GroupOf = (String, String);

/// The slots this worker holds, and those its finished jobs freed, by
/// (queue, group).
#[derive(Default)]
pub(crate) struct GroupSlots {
    held: Mutex<HashMap<GroupOf, u32>>,
    freed: Mutex<HashMap<GroupOf, u32>>,
}

impl GroupSlots {
    /// A job holding a slot of `group` in `queue` ended (its outcome was
    /// written or lost), or a claim did not fill the slot.
    pub(crate) fn free(&self, queue: &str, group: &str, n: u32) {
        if n > 0 {
            *lock(&self.freed)
                .entry((queue.to_string(), group.to_string()))
                .or_insert(0) += n;
        }
    }

    fn take_freed(&self, key: &GroupOf) -> u32 {
        lock(&self.freed).remove(key).unwrap_or(0)
    }

    /// Whether this worker holds slots of any group.
    pub(crate) fn holding(&self) -> bool {
        lock(&self.held).values().any(|n| *n > 0)
    }
}

/// How long past now a holder's `until` is set: its jobs' leases are
/// claimed after the take and renewed on their own thread, up to a third
/// of the lease apart from the slots' extension, so the slots outlast
/// every lease of their jobs (plus a second for the clocks).
fn held_for(lease: Duration) -> Duration {
    lease + lease / 3 + Duration::from_secs(1)
}

/// The collection of group slots (`<collection>_group_slots`).
pub fn slots_collection(queue: &Queue) -> Collection<Document> {
    queue
        .database()
        .collection(&format!("{}_group_slots", queue.collection().name()))
}

/// The group a slot document of the queue `prefix` names (`<queue>\n`).
fn group_of_slot<'a>(document: &'a Document, prefix: &str) -> Option<&'a str> {
    document.get_str("_id").ok()?.strip_prefix(prefix)
}

fn slot_id(key: &GroupOf) -> String {
    format!("{}\n{}", key.0, key.1)
}

/// Takes, for each group of `wanted` (group, jobs wanted, its limit), up to
/// that many slots for `worker`, in one `update` command and one `find`.
/// Returns the slots granted by group, and the round trips made.
pub(crate) fn take(
    queue: &Queue,
    name: &str,
    wanted: &[Want],
    worker: &str,
    slots: &GroupSlots,
    lease: Duration,
    starts: Option<Starts>,
) -> Result<(HashMap<String, u32>, u64), Error> {
    if wanted.is_empty() {
        return Ok((HashMap::new(), 0));
    }
    let key = holder_key(worker);
    let token = ObjectId::new();
    let until = queue.clock().after(held_for(lease));
    // Holders whose `until` is before this are dead (a time that has
    // certainly passed on the server's clock: a live holder is never
    // taken for dead).
    let passed = queue.clock().passed();
    let mut freed = Vec::with_capacity(wanted.len());
    let statements: Vec<Document> = wanted
        .iter()
        .map(|want| {
            let id = (name.to_string(), want.group.clone());
            let f = slots.take_freed(&id);
            freed.push((id.clone(), f));
            let ask = Ask {
                want: i64::from(want.jobs),
                limit: want.limit.map(i64::from),
                rate: want.rate.zip(starts),
                freed: i64::from(f),
            };
            doc! {
                "q": {"_id": slot_id(&id)},
                "u": take_pipeline(&key, &ask, token, until, passed),
                "upsert": true,
            }
        })
        .collect();
    let collection = slots_collection(queue);
    let command = doc! {
        "update": collection.name(),
        "updates": statements,
        "ordered": false,
    };
    let reply = match queue.database().run_command(command).run() {
        Ok(reply) => reply,
        Err(error) => {
            for (id, f) in freed {
                slots.free(&id.0, &id.1, f);
            }
            return Err(queue.db_error("update (take group slots)", &error));
        }
    };
    // A statement that failed (two workers creating a group's document at
    // once: one gets a duplicate key) took nothing: what it would have
    // given back is still to give back.
    if let Ok(errors) = reply.get_array("writeErrors") {
        for error in errors.iter().filter_map(Bson::as_document) {
            let at = error
                .get("index")
                .and_then(integer)
                .and_then(|i| usize::try_from(i).ok());
            if let Some((id, f)) = at.and_then(|at| freed.get(at)) {
                slots.free(&id.0, &id.1, *f);
            }
        }
    }
    let ids: Vec<String> = wanted
        .iter()
        .map(|want| slot_id(&(name.to_string(), want.group.clone())))
        .collect();
    let grant_token = format!("grants.{key}.t");
    let cursor = collection
        .find(doc! {"_id": {"$in": ids}, grant_token: token})
        .projection(doc! {format!("grants.{key}.k"): 1, format!("holders.{key}.n"): 1})
        .run()
        .map_err(|e| queue.db_error("find (group slots granted)", &e))?;
    let mut granted = HashMap::new();
    let prefix = format!("{name}\n");
    for document in cursor {
        let document = document.map_err(|e| queue.db_error("find (group slots granted)", &e))?;
        let Some(group) = group_of_slot(&document, &prefix) else {
            continue;
        };
        let read = |path: [&str; 2]| {
            document
                .get_document(path[0])
                .ok()
                .and_then(|d| d.get_document(&key).ok())
                .and_then(|d| d.get(path[1]))
                .and_then(integer)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        granted.insert(group.to_string(), read(["grants", "k"]));
        lock(&slots.held).insert(
            (name.to_string(), group.to_string()),
            read(["holders", "n"]),
        );
    }
    Ok((granted, 2))
}

/// One limited group of a batch: the jobs wanted, and its limits.
pub(crate) struct Want {
    pub(crate) group: String,
    pub(crate) jobs: u32,
    pub(crate) limit: Option<u32>,
    pub(crate) rate: Option<Rate>,
}

/// When the jobs of a claim under a rate start (the instant reserved, on
/// the server's clock, as the queue's rate reserves it: see
/// [`crate::fleet::limits`]), and the margin a window is widened by.
#[derive(Clone, Copy)]
pub(crate) struct Starts {
    pub(crate) at: DateTime,
    pub(crate) margin: Duration,
}

/// What one group's take asks: slots wanted, the group's limits, and the
/// slots this worker's finished jobs of the group freed.
struct Ask {
    want: i64,
    limit: Option<i64>,
    rate: Option<(Rate, Starts)>,
    freed: i64,
}

/// The pipeline of one group's take (see the module's notes).
fn take_pipeline(
    key: &str,
    ask: &Ask,
    token: ObjectId,
    until: DateTime,
    passed: DateTime,
) -> Vec<Document> {
    let me = format!("holders.{key}");
    let my_n = doc! {"$ifNull": [format!("$holders.{key}.n"), 0]};
    let mut pipeline = vec![
        // Holders whose `until` passed are dead: their slots are free.
        doc! {"$set": {"holders": {"$arrayToObject": {"$filter": {
            "input": {"$objectToArray": {"$ifNull": ["$holders", {}]}},
            "cond": {"$or": [
                {"$eq": ["$$this.k", key]},
                {"$gte": ["$$this.v.until", passed]},
            ]},
        }}}}},
        // Mine after giving back what my finished jobs freed, and what the
        // others hold.
        doc! {"$set": {
            "mine": {"$max": [0, {"$subtract": [my_n, ask.freed]}]},
            "others": {"$reduce": {
                "input": {"$objectToArray": "$holders"},
                "initialValue": 0,
                "in": {"$add": ["$$value", {"$cond": [
                    {"$eq": ["$$this.k", key]},
                    0,
                    {"$ifNull": ["$$this.v.n", 0]},
                ]}]},
            }},
        }},
    ];
    // The grant: what is wanted, within the slots free and the starts the
    // rate leaves in its window.
    let mut bounds = vec![Bson::Int64(ask.want)];
    if let Some(limit) = ask.limit {
        bounds.push(Bson::Document(
            doc! {"$subtract": [limit, {"$add": ["$others", "$mine"]}]},
        ));
    }
    let window = |rate: Rate, starts: Starts| {
        i64::try_from((rate.per + starts.margin).as_millis()).unwrap_or(i64::MAX)
    };
    if let Some((rate, starts)) = ask.rate {
        // Starts kept: the latest `n`; those at or after the cutoff count.
        let cutoff = DateTime::from_millis(starts.at.timestamp_millis() - window(rate, starts));
        bounds.push(Bson::Document(doc! {"$subtract": [
            i64::from(rate.count),
            {"$size": {"$filter": {
                "input": {"$ifNull": ["$starts", []]},
                "cond": {"$gte": ["$$this", cutoff]},
            }}},
        ]}));
    }
    pipeline.push(doc! {"$set": {"grant": {"$max": [0, {"$min": bounds}]}}});
    let mut set = doc! {
        format!("{me}.n"): {"$add": ["$mine", "$grant"]},
        format!("{me}.until"): until,
        format!("grants.{key}"): {"t": token, "k": "$grant"},
        "n": {"$add": ["$others", "$mine", "$grant"]},
    };
    let mut keep = until;
    if let Some((rate, starts)) = ask.rate {
        // The latest `n` starts by time, oldest first: the new ones go in
        // their place in time, not at the end. Claims reserve their
        // instants with different leads, so a later take can reserve an
        // earlier instant; appending it and keeping the last `n` would drop
        // a later start that still counts, and a window would see more.
        let starts_where = |op: &str| {
            doc! {"$filter": {
                "input": {"$ifNull": ["$starts", []]},
                "cond": {op: ["$$this", starts.at]},
            }}
        };
        set.insert(
            "starts",
            doc! {"$slice": [
                {"$concatArrays": [
                    starts_where("$lte"),
                    {"$map": {"input": {"$range": [0, "$grant"]}, "in": starts.at}},
                    starts_where("$gt"),
                ]},
                -i64::from(rate.count),
            ]},
        );
        // The document outlives its starts' window (a give-back that
        // leaves no slot held must not delete the starts that count).
        let kept = DateTime::from_millis(starts.at.timestamp_millis() + window(rate, starts));
        set.insert("keep", doc! {"$max": [{"$ifNull": ["$keep", kept]}, kept]});
        keep = keep.max(kept);
    }
    set.insert(
        "until",
        doc! {"$max": [{"$ifNull": ["$until", keep]}, keep]},
    );
    pipeline.push(doc! {"$set": set});
    pipeline.push(doc! {"$unset": ["mine", "others", "grant"]});
    pipeline
}

/// Gives back every group slot this worker's finished jobs freed (one
/// `update` command, then a `deleteMany` of the documents left at 0).
/// Returns the round trips made.
pub(crate) fn give_back(queue: &Queue, worker: &str, slots: &GroupSlots) -> Result<u64, Error> {
    let freed: Vec<(GroupOf, u32)> = lock(&slots.freed).drain().collect();
    if freed.is_empty() {
        return Ok(0);
    }
    let key = holder_key(worker);
    let held_path = format!("holders.{key}.n");
    let statements: Vec<Document> = freed
        .iter()
        .map(|(id, n)| {
            let n = i64::from(*n);
            doc! {
                // Only what this worker still holds (a peer that thought
                // it dead dropped its entry, and its slots, already).
                "q": {"_id": slot_id(id), &held_path: {"$gte": n}},
                "u": {"$inc": {"n": -n, &held_path: -n}},
            }
        })
        .collect();
    let collection = slots_collection(queue);
    let command = doc! {"update": collection.name(), "updates": statements, "ordered": false};
    if let Err(error) = queue.database().run_command(command).run() {
        for ((q, g), n) in freed {
            slots.free(&q, &g, n);
        }
        return Err(queue.db_error("update (give back group slots)", &error));
    }
    {
        let mut held = lock(&slots.held);
        for (id, n) in &freed {
            if let Some(h) = held.get_mut(id) {
                *h = h.saturating_sub(*n);
                if *h == 0 {
                    held.remove(id);
                }
            }
        }
    }
    let ids: Vec<Bson> = freed
        .iter()
        .map(|(id, _)| Bson::String(slot_id(id)))
        .collect();
    collection
        .delete_many(doc! {
            "_id": {"$in": ids},
            "n": {"$lte": 0},
            // A group's rate counts its recent starts: kept until they are
            // out of the window.
            "$or": [{"keep": {"$exists": false}}, {"keep": {"$lt": queue.clock().passed()}}],
        })
        .run()
        .map_err(|e| queue.db_error("delete (idle group slots)", &e))?;
    Ok(2)
}

/// Pushes `until` forward on every group slot this worker holds, as its
/// leases (one `updateMany`).
pub(crate) fn extend(queue: &Queue, worker: &str, lease: Duration) -> Result<(), Error> {
    let key = holder_key(worker);
    let until = queue.clock().after(held_for(lease));
    slots_collection(queue)
        .update_many(
            doc! {format!("holders.{key}.n"): {"$gt": 0}},
            doc! {
                "$set": {format!("holders.{key}.until"): until},
                "$max": {"until": until},
            },
        )
        .run()
        .map(|_| ())
        .map_err(|e| queue.db_error("update (extend group slots)", &e))
}

/// Deletes the documents of groups whose every holder is past its
/// `until` (they all died, and no take came since): nothing else would.
pub(crate) fn sweep(queue: &Queue) -> Result<u64, Error> {
    slots_collection(queue)
        .delete_many(doc! {"until": {"$lt": queue.clock().passed()}})
        .run()
        .map(|r| r.deleted_count)
        .map_err(|e| queue.db_error("delete (group slots of dead workers)", &e))
}

/// How many jobs of each group hold slots now, fleet-wide (live holders
/// only), for `stats --groups`.
pub fn running_slots(queue: &Queue, name: &str) -> Result<HashMap<String, u32>, Error> {
    let prefix = format!("{name}\n");
    let passed = queue.clock().passed();
    let cursor = slots_collection(queue)
        .find(doc! {"_id": {"$gte": &prefix, "$lt": format!("{name}\u{b}")}})
        .projection(doc! {"holders": 1})
        .run()
        .map_err(|e| queue.db_error("find (group slots)", &e))?;
    let mut out = HashMap::new();
    for document in cursor {
        let document = document.map_err(|e| queue.db_error("find (group slots)", &e))?;
        let Some(group) = group_of_slot(&document, &prefix) else {
            continue;
        };
        let live: i64 = document.get_document("holders").map_or(0, |holders| {
            holders
                .values()
                .filter_map(Bson::as_document)
                .filter(|h| h.get_datetime("until").is_ok_and(|u| *u >= passed))
                .filter_map(|h| h.get("n").and_then(integer))
                .sum()
        });
        if live > 0 {
            out.insert(group.to_string(), u32::try_from(live).unwrap_or(0));
        }
    }
    Ok(out)
}
