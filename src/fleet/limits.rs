//! Fleet-wide limits, enforced by the claim itself.
//!
//! **Concurrency.** A limited queue's control document counts the slots in
//! use (`in_use`) and who holds them (`holders.<worker>.n`). Before
//! claiming `k` jobs of it, a worker takes up to `k` slots, netting in the
//! `f` slots its finished jobs freed since: one `findOneAndUpdate` whose
//! pipeline grants `min(k, limit − (in_use − f))` and adds it to `in_use`,
//! computed from `in_use` itself. The update is atomic on one document, so across the fleet the slots taken never
//! exceed the limit, and a job holds its slot from claim to outcome: at no
//! instant do more than `limit` jobs of the queue run; and each take is one
//! round trip however many slots are free. Slots the claim did
//! not fill, and slots of finished jobs, are given back (netted into the
//! next take, or returned by the control thread within half a second).
//! A holder's entry carries `until`, extended with its leases; once it is
//! past (on the server's clock), the worker is dead and any other worker
//! takes its slots back, but only if the entry is unchanged since it read
//! it.
//!
//! **Rate.** The document keeps the times of the last `n` reserved starts,
//! oldest first. A start is reserved for an instant [`START_LEAD`] ahead
//! (time enough to claim the job and hand it to a thread), and the job
//! starts exactly then: its thread waits for the instant, and a job that
//! cannot start within [`START_SLACK`] after it goes back unstarted. So a
//! real start lies within the slack (and twice the clock's uncertainty) of
//! its reserved time. Taking `k` starts for time `t` needs the `k`-th
//! oldest to be older than `t − (window + margin)`, the margin being that
//! slack and uncertainty; the new times are pushed and the array trimmed
//! to `n`, in the same update. No window of the real clock sees more than
//! `n` starts, and a limit of `n` per window runs at `window / (window +
//! margin)` of its rate (95 % for `10/1s`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime};
use mongodb::options::ReturnDocument;

use crate::clock::{shift_by, Clock};
use crate::error::Error;
use crate::queue::control::{holder_key, QueueControl, Rate};
use crate::queue::Queue;
use crate::schema::integer;
use crate::sync::lock;

/// A start is reserved for this long ahead: the claim and the hand-over to
/// a thread happen in between.
pub const START_LEAD: Duration = Duration::from_millis(200);

/// A job whose start was reserved under a rate limit starts at the reserved
/// instant, or within this long after it; later, it is handed back
/// unstarted.
pub const START_SLACK: Duration = Duration::from_millis(50);

/// Slots this worker holds and slots its finished jobs freed, by queue.
#[derive(Default)]
pub(crate) struct Slots {
    /// Slots counted in the control document under this worker.
    held: Mutex<HashMap<String, u32>>,
    /// Of those, freed by outcomes and not yet given back.
    freed: Mutex<HashMap<String, u32>>,
}

impl Slots {
    /// An outcome of a job holding a slot of `queue` was written (or lost).
    pub(crate) fn free(&self, queue: &str, n: u32) {
        *lock(&self.freed).entry(queue.to_string()).or_insert(0) += n;
    }

    fn take_freed(&self, queue: &str) -> u32 {
        lock(&self.freed).remove(queue).unwrap_or(0)
    }

    fn unfree(&self, queue: &str, n: u32) {
        if n > 0 {
            self.free(queue, n);
        }
    }

    fn set_held(&self, queue: &str, n: u32) {
        lock(&self.held).insert(queue.to_string(), n);
    }

    fn adjust_held(&self, queue: &str, delta: i64) {
        let mut held = lock(&self.held);
        let entry = held.entry(queue.to_string()).or_insert(0);
        *entry = u32::try_from((i64::from(*entry) + delta).max(0)).unwrap_or(0);
    }

    /// Slots of `queue` this worker holds for jobs not yet finished.
    pub(crate) fn unreturned(&self, queue: &str) -> u32 {
        let held = lock(&self.held).get(queue).copied().unwrap_or(0);
        let freed = lock(&self.freed).get(queue).copied().unwrap_or(0);
        held.saturating_sub(freed)
    }

    /// Queues in which this worker holds slots.
    pub(crate) fn holding(&self) -> Vec<String> {
        lock(&self.held)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Queues with freed slots waiting to be given back.
    pub(crate) fn with_freed(&self) -> Vec<String> {
        lock(&self.freed)
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(q, _)| q.clone())
            .collect()
    }
}

/// What one take did: how many jobs may be claimed, and the round trips.
/// A claim using banked starts should have landed by then: they are used
/// only while the job can still start within [`START_SLACK`] after this.
const BANK_CLAIM_TIME: Duration = Duration::from_millis(20);

/// Rate-limited starts this worker reserved that its claim did not fill
/// (it lost jobs to a peer, or found fewer): the next claim of the queue
/// uses them while their instant's slack lasts, instead of reserving
/// more. Without it, every start a claim does not fill is a start of the
/// rate nobody makes.
#[derive(Default)]
pub(crate) struct Banked {
    by_queue: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Banked {
    /// Up to `want` banked starts of `queue` still usable, and their instant.
    pub(crate) fn take(&self, queue: &str, want: u32) -> Option<(Instant, u32)> {
        let mut by_queue = lock(&self.by_queue);
        let (at, n) = by_queue.remove(queue)?;
        if n == 0 || Instant::now() + BANK_CLAIM_TIME > at + START_SLACK {
            return None;
        }
        let used = n.min(want);
        if n > used {
            by_queue.insert(queue.to_string(), (at, n - used));
        }
        Some((at, used))
    }

    /// Banks `n` unused starts of `queue` reserved for `at` (replacing
    /// older ones, which expire first anyway).
    pub(crate) fn put(&self, queue: &str, at: Instant, n: u32) {
        if n == 0 {
            return;
        }
        let mut by_queue = lock(&self.by_queue);
        match by_queue.get_mut(queue) {
            Some((banked_at, banked)) if *banked_at == at => *banked += n,
            _ => {
                by_queue.insert(queue.to_string(), (at, n));
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) jobs: u32,
    pub(crate) round_trips: u64,
}

/// Takes up to `want` slots of `control.queue` for `worker`, netting in
/// what its finished jobs freed, in one round trip: a `findOneAndUpdate`
/// whose pipeline grants `g = max(0, min(want, limit − (in_use − freed)))`
/// and adds `g − freed` to `in_use` and to this worker's holding, atomically
/// on the one document (pipeline updates: MongoDB 4.2+). The grant is read
/// back from `grants.<worker>` in the updated document.
pub(crate) fn take_slots(
    queue: &Queue,
    control: &QueueControl,
    limit: u32,
    worker: &str,
    want: u32,
    slots: &Slots,
    lease: Duration,
) -> Result<Grant, Error> {
    let name = &control.queue;
    let key = holder_key(worker);
    let freed = slots.take_freed(name);
    let held_path = format!("holders.{key}.n");
    let grant_path = format!("grants.{key}");
    let held = doc! {"$ifNull": [format!("${held_path}"), 0]};
    // Freed slots count only while this worker still holds them (another
    // worker may have taken them back, thinking it dead).
    let returned =
        doc! {"$cond": [{"$gte": [held.clone(), i64::from(freed)]}, i64::from(freed), 0]};
    let after_return = doc! {"$subtract": [{"$ifNull": ["$in_use", 0]}, returned.clone()]};
    let pipeline = vec![
        doc! {"$set": {&grant_path: {"$max": [0, {"$min": [
            i64::from(want),
            {"$subtract": [i64::from(limit), after_return.clone()]},
        ]}]}}},
        doc! {"$set": {
            "in_use": {"$add": [after_return, format!("${grant_path}")]},
            &held_path: {"$add": [{"$subtract": [held, returned]}, format!("${grant_path}")]},
            format!("holders.{key}.until"): queue.clock().after(lease),
        }},
    ];
    let updated = queue
        .controls_collection()
        .find_one_and_update(
            doc! {"_id": name, "concurrency": i64::from(limit)},
            pipeline,
        )
        .return_document(ReturnDocument::After)
        .run()
        .map_err(|e| queue.db_error("update (take concurrency slots)", &e));
    let updated = match updated {
        Ok(updated) => updated,
        Err(error) => {
            slots.unfree(name, freed);
            return Err(error);
        }
    };
    let grant = Grant {
        jobs: 0,
        round_trips: 1,
    };
    let Some(updated) = updated else {
        // The limit changed (or was removed); the next refresh of the
        // controls brings it. What was freed goes back then.
        slots.unfree(name, freed);
        return Ok(grant);
    };
    let granted = updated
        .get_document("grants")
        .ok()
        .and_then(|grants| grants.get(&key))
        .and_then(integer)
        .and_then(|g| u32::try_from(g).ok())
        .unwrap_or(0);
    let now_held = updated
        .get_document("holders")
        .ok()
        .and_then(|holders| holders.get_document(&key).ok())
        .and_then(|holder| holder.get("n"))
        .and_then(integer)
        .unwrap_or(0);
    slots.set_held(name, u32::try_from(now_held.max(0)).unwrap_or(0));
    Ok(Grant {
        jobs: granted,
        ..grant
    })
}

/// Gives `queue`'s freed slots back to the control document.
pub(crate) fn give_back(
    queue: &Queue,
    name: &str,
    worker: &str,
    slots: &Slots,
) -> Result<u64, Error> {
    let freed = slots.take_freed(name);
    if freed == 0 {
        return Ok(0);
    }
    let key = holder_key(worker);
    let n = i64::from(freed);
    let result = queue
        .controls_collection()
        .update_one(
            // Only what this worker still holds: if another worker took its
            // slots back (it was thought dead), they were counted off then.
            doc! {"_id": name, format!("holders.{key}.n"): {"$gte": n}},
            doc! {"$inc": {"in_use": -n, format!("holders.{key}.n"): -n}},
        )
        .run()
        .map_err(|e| queue.db_error("update (give back concurrency slots)", &e));
    match result {
        Ok(_) => {
            slots.adjust_held(name, -n);
            Ok(1)
        }
        Err(error) => {
            slots.unfree(name, freed);
            Err(error)
        }
    }
}

/// On a clean stop: removes this worker's entries from `name`'s control
/// document once it holds no slot there, so the document does not grow
/// with every worker that ever ran.
pub(crate) fn forget(queue: &Queue, name: &str, worker: &str) -> Result<(), Error> {
    let key = holder_key(worker);
    queue
        .controls_collection()
        .update_one(
            doc! {"_id": name, format!("holders.{key}.n"): {"$lte": 0}},
            doc! {"$unset": {format!("holders.{key}"): "", format!("grants.{key}"): ""}},
        )
        .run()
        .map(|_| ())
        .map_err(|e| queue.db_error("update (forget worker slots)", &e))
}

/// Pushes `until` forward on this worker's slots of `name`, as its leases.
pub(crate) fn extend_slots(
    queue: &Queue,
    name: &str,
    worker: &str,
    lease: Duration,
) -> Result<(), Error> {
    let key = holder_key(worker);
    queue
        .controls_collection()
        .update_one(
            doc! {"_id": name, format!("holders.{key}"): {"$exists": true}},
            doc! {"$set": {format!("holders.{key}.until"): queue.clock().after(lease)}},
        )
        .run()
        .map(|_| ())
        .map_err(|e| queue.db_error("update (extend concurrency slots)", &e))
}

/// Takes back the slots of holders whose `until` has passed (dead
/// workers), each only if its entry is as read. Returns how many slots.
pub(crate) fn reclaim_dead(queue: &Queue, control: &QueueControl, me: &str) -> Result<u64, Error> {
    let passed = queue.clock().passed().timestamp_millis();
    let mut reclaimed = 0;
    for (holder, n, until) in &control.holders {
        if holder == me || *until >= passed {
            continue;
        }
        let key = holder_key(holder);
        let result = queue
            .controls_collection()
            .update_one(
                doc! {
                    "_id": &control.queue,
                    format!("holders.{key}.n"): i64::from(*n),
                    format!("holders.{key}.until"): DateTime::from_millis(*until),
                },
                doc! {
                    "$inc": {"in_use": -i64::from(*n)},
                    "$unset": {format!("holders.{key}"): "", format!("grants.{key}"): ""},
                },
            )
            .run()
            .map_err(|e| queue.db_error("update (reclaim concurrency slots)", &e))?;
        if result.modified_count == 1 {
            log::warn!(
                "took back {n} concurrency slots of queue {} from worker {holder}, not seen since its lease ran out",
                control.queue
            );
            reclaimed += u64::from(*n);
        }
    }
    Ok(reclaimed)
}

/// Reserves up to `want` starts of `name` under `rate`, for the instant it
/// returns (this host's clock, [`START_LEAD`] from now): the jobs start
/// then, or within [`START_SLACK`].
pub(crate) fn take_starts(
    queue: &Queue,
    name: &str,
    rate: Rate,
    want: u32,
    clock: &Clock,
) -> Result<(Grant, Instant), Error> {
    let collection = queue.controls_collection();
    let uncertainty = clock.uncertainty();
    // The instant the jobs start, and the latest the true time may be then
    // (recorded); the oldest a counted start may be (see the module docs).
    let start = Instant::now() + START_LEAD;
    let at = shift_by(clock.now(), uncertainty + START_LEAD);
    let margin = START_SLACK + uncertainty * 2;
    let cutoff =
        DateTime::from_millis(at.timestamp_millis() - (rate.per + margin).as_millis() as i64);
    let mut grant = Grant::default();
    let mut k = want.min(rate.count);
    for _ in 0..2 {
        if k == 0 {
            break;
        }
        let filter = doc! {
            "_id": name,
            "rate.n": i64::from(rate.count),
            "rate.per_ms": rate.per.as_millis() as i64,
            format!("starts.{}", k - 1): {"$lt": cutoff},
        };
        let times = vec![Bson::DateTime(at); k as usize];
        let update = doc! {"$push": {"starts": {"$each": times, "$sort": 1, "$slice": -i64::from(rate.count)}}};
        let result = collection
            .update_one(filter, update)
            .run()
            .map_err(|e| queue.db_error("update (take rate starts)", &e))?;
        grant.round_trips += 1;
        if result.modified_count == 1 {
            grant.jobs = k;
            return Ok((grant, start));
        }
        let current = collection
            .find_one(doc! {"_id": name})
            .projection(doc! {"starts": 1})
            .run()
            .map_err(|e| queue.db_error("find (rate starts)", &e))?;
        grant.round_trips += 1;
        let old = current
            .and_then(|c| c.get_array("starts").ok().cloned())
            .map_or(0, |starts| {
                starts
                    .iter()
                    .filter(|s| matches!(s, Bson::DateTime(t) if *t < cutoff))
                    .count()
            });
        k = k.min(u32::try_from(old).unwrap_or(0));
    }
    Ok((grant, start))
}
