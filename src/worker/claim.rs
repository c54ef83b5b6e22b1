//! The claim: how a worker takes a batch of jobs, atomically, in few round
//! trips.
//!
//! MongoDB has no "update N documents and return them" (findAndModify takes
//! one), so a batch claim is built from documented operations:
//!
//! 1. **Read ahead** the next eligible jobs, in queue order (`priority`
//!    desc, `run_at`, `_id`), several batches at once, through the
//!    `mongoq_claim_by_queue` index, into a window bounded by count and
//!    bytes. The read is four exact `priority` ranges of the index (see
//!    [`priority_ranges`]), so a job without a `priority` ranks as 0 with
//!    no write to give it one.
//! 2. **Claim** a batch from the window with one `updateMany` whose filter
//!    leads with the batch's `_id`s (hinted to the `_id` index) and repeats
//!    `status: "pending"`, the `run_at` bound and the `attempts` the
//!    read-ahead saw. Each document's update is atomic, so a job another
//!    worker took in between simply does not match: two workers never hold
//!    the same job. All jobs claimed get this claim's fresh `lease_token`
//!    and `attempts + 1`.
//! 3. When the claim took every job it asked for, the window's copies are
//!    exactly what was claimed (a document whose `attempts` had moved would
//!    not have matched), so no read is needed. When it took fewer, the
//!    claimed `_id`s are read back by `lease_token`.
//!
//! That is one round trip per batch plus one read-ahead per several
//! batches. Workers that share the queue divide it ([`super::share`]): each
//! claims its own part of the window first, so they seldom collide; when
//! claims keep winning less than half of what they ask for, the window is
//! stale and is read again rather than fought over. Every `max_window_age`
//! (at most a second) one index seek checks for an eligible job of a higher
//! priority than the window's head, which re-reads the window, so a new
//! urgent job waits at most about that long; a window is read again after
//! [`WINDOW_LIFETIME`] anyway, so a producer's edit of a pending job's
//! `data` can race a claim only within that time.
//!
//! Retrying a claim after a lost reply is safe: the retry reuses the token,
//! the documents the lost attempt took no longer match `pending`, and the
//! retry reads everything held under the token back from the server.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, Bson, Document, RawDocumentBuf};
use mongodb::options::Hint;

use super::oversized::{fail_oversized, too_large};
use super::share::{owns, Share};
use super::upkeep::Upkeep;
use super::window::{priority_ranges, Slot};
use crate::clock::Clock;
use crate::error::Error;
use crate::queue::filters::{eligible_filter, eligible_in, queue_order};
use crate::queue::Queue;
use crate::schema::{fields, id_text, integer, Status};

/// A window is read again at least this often, even when no higher
/// priority has arrived, so its copies of the jobs are never older.
pub(crate) const WINDOW_LIFETIME: Duration = Duration::from_secs(5);

/// The most jobs a window holds. A read-ahead fetches what the worker can
/// start within the window's lifetime (at its measured pace; at least one
/// batch), times the number of workers dividing the queue (only its part
/// is its own), up to this many and [`WINDOW_BYTES`]. One query then
/// serves many batches; on servers where a query's price grows with the
/// backlog (everything the filter matches is examined) that makes it cheap
/// per job, and on those where the index scan stops at the limit it costs
/// the same per job at any size.
const MAX_WINDOW: usize = 40_000;

/// The window stops filling at this many bytes of documents, so large jobs
/// cannot make a worker's memory grow with the backlog.
const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// A claim that won some jobs.
pub(crate) struct Claimed {
    pub(crate) token: ObjectId,
    pub(crate) documents: Vec<Document>,
}

/// Claims batches for one worker; owns the read-ahead window.
pub(crate) struct Claimer {
    queue: Queue,
    owner: String,
    lease: Duration,
    /// The named queues this worker takes jobs from.
    queues: Vec<String>,
    /// Eligible jobs as the read-ahead saw them, in queue order.
    window: VecDeque<Slot>,
    /// Claims in a row that won less than half of what they asked for.
    contended: u32,
    window_read_at: Instant,
    max_window_age: Duration,
    upkeep: Upkeep,
    /// The token of a claim that failed half-way; the retry reuses it.
    unfinished: Option<ObjectId>,
    /// This claim cannot trust the window's copies (it fell back to
    /// claiming one by one); read what the token holds from the server.
    read_back: bool,
    /// Round trips made, for `bench` and stats.
    pub(crate) round_trips: u64,
    /// Jobs the claims asked for (won or taken by others first).
    pub(crate) candidates: u64,
    /// This worker's part of the queue, claimed first.
    share: Arc<Share>,
    /// Jobs of this worker's part left in the window.
    own_left: usize,
    /// The part `own_left` was counted for.
    part_read: (usize, usize),
    /// When the window was last checked for higher priorities.
    window_checked_at: Instant,
    /// The last window read found nothing eligible.
    found_nothing: bool,
}

impl Claimer {
    pub(crate) fn new(
        queue: Queue,
        owner: String,
        lease: Duration,
        queues: Vec<String>,
        max_window_age: Duration,
        share: Arc<Share>,
    ) -> Claimer {
        Claimer {
            queue,
            owner,
            lease,
            queues,
            window: VecDeque::new(),
            contended: 0,
            window_read_at: Instant::now(),
            max_window_age,
            upkeep: Upkeep::default(),
            unfinished: None,
            read_back: false,
            round_trips: 0,
            candidates: 0,
            share,
            own_left: 0,
            part_read: (0, 1),
            window_checked_at: Instant::now(),
            found_nothing: false,
        }
    }

    /// Claims up to `count` jobs, reading ahead `window` of this worker's
    /// own jobs when the window must be read. `None` means nothing is
    /// eligible right now.
    pub(crate) fn claim(&mut self, count: usize, window: usize) -> Result<Option<Claimed>, Error> {
        if count == 0 {
            return Ok(None);
        }
        // An error below leaves `unfinished` set, so the caller's retry
        // comes back with the same token.
        let retrying = self.unfinished.is_some();
        let token = *self.unfinished.get_or_insert_with(ObjectId::new);
        let claimed = self.claim_with(token, count, window, retrying)?;
        self.unfinished = None;
        Ok(claimed)
    }

    fn claim_with(
        &mut self,
        token: ObjectId,
        count: usize,
        window: usize,
        retrying: bool,
    ) -> Result<Option<Claimed>, Error> {
        // Two passes at most: the second only after a stale or contended
        // window was dropped.
        for _ in 0..2 {
            let part = self.share.part();
            if part != self.part_read {
                self.count_own();
            }
            // A window with nothing left of this worker's part is read again
            // before others' jobs are taken from it.
            let spent = part.1 > 1 && self.own_left == 0;
            if !self.window.is_empty() && !spent && self.aged()? {
                self.window.clear();
            }
            if self.window.is_empty() && self.found_nothing && !retrying && !self.anything()? {
                // Idle: one index seek per poll, not a read of every range.
                return Ok(None);
            }
            let fresh = if self.window.is_empty() || spent {
                // Who shares the queue now decides what is ours in it.
                self.round_trips += self.share.recheck(&self.queue)?;
                let of = self.share.part().1;
                let size = window.saturating_mul(of).min(MAX_WINDOW).max(count);
                self.read_window(size)?;
                true
            } else {
                false
            };
            if self.window.is_empty() && !retrying {
                return Ok(None);
            }
            let candidates = self.take(count);
            self.candidates += candidates.len() as u64;
            let won = self.claim_documents(&candidates, token)?;
            if won < candidates.len() {
                self.round_trips += self.share.recheck(&self.queue)?;
            }
            if won * 2 < candidates.len() {
                self.contended += 1;
                if self.contended >= 2 {
                    // Other workers keep beating us to this window: it is
                    // stale, read a fresh one.
                    self.window.clear();
                    self.contended = 0;
                }
            } else {
                self.contended = 0;
            }
            let read_back = std::mem::take(&mut self.read_back);
            let documents = if retrying || read_back {
                // A lost reply may have claimed jobs we never saw.
                self.read_claimed(token, false)?
            } else if won == candidates.len() {
                candidates
                    .into_iter()
                    .map(|s| as_claimed(s, token, &self.owner))
                    .collect()
            } else if won > 0 {
                let ids: HashSet<String> = self
                    .read_claimed(token, true)?
                    .iter()
                    .filter_map(|d| d.get("_id").map(ToString::to_string))
                    .collect();
                candidates
                    .into_iter()
                    .filter(|s| ids.contains(&s.id.to_string()))
                    .map(|s| as_claimed(s, token, &self.owner))
                    .collect()
            } else {
                Vec::new()
            };
            if !documents.is_empty() {
                return Ok(Some(Claimed { token, documents }));
            }
            if fresh {
                // A window read just now was entirely taken by others;
                // let the caller come back rather than spin.
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Takes `count` documents from the window: this worker's part first,
    /// in queue order. A worker alone takes the head. One whose part is used
    /// up takes a `1/n` share of the others' jobs from the end of the head's
    /// priority (their owners reach it last); lower priorities still wait
    /// for higher ones.
    fn take(&mut self, count: usize) -> Vec<Slot> {
        let part = self.share.part();
        if part.1 > 1 && self.own_left > 0 {
            let mut taken = Vec::with_capacity(count.min(self.own_left));
            let mut rest = VecDeque::with_capacity(self.window.len());
            for slot in self.window.drain(..) {
                if taken.len() < count && owns(part, &slot.id) {
                    taken.push(slot);
                } else {
                    rest.push_back(slot);
                }
            }
            self.window = rest;
            self.own_left -= taken.len().min(self.own_left);
            if !taken.is_empty() {
                return taken;
            }
        }
        let Some(first) = self.window.front() else {
            return Vec::new();
        };
        let head = &first.rank;
        let same = self.window.iter().take_while(|s| s.rank == *head).count();
        let mut take = count.min(self.window.len());
        let start = if part.1 > 1 {
            // Others' jobs (a dead peer's, or the last of a drain): a share
            // of them, from the end of the head's priority, which their
            // owners reach last.
            take = take.div_ceil(part.1).min(same.max(1));
            same.saturating_sub(take)
        } else {
            // Alone, as far as the registry says: from the head.
            0
        };
        self.window.drain(start..start + take).collect()
    }

    /// Reads the window: up to `limit` eligible jobs in queue order, in
    /// four ranges of the claim index (see [`priority_ranges`]), so a job
    /// without a `priority` sorts as 0 without a write to give it one.
    fn read_window(&mut self, limit: usize) -> Result<(), Error> {
        self.round_trips += self.upkeep.run(&self.queue)?;
        self.window.clear();
        let mut bytes = 0;
        for (priority, order) in priority_ranges() {
            let wanted = limit - self.window.len();
            if wanted == 0 || bytes > WINDOW_BYTES {
                break;
            }
            let mut filter = eligible_in(&self.queues, self.queue.clock().passed());
            filter.insert(fields::PRIORITY, priority);
            let cursor = self
                .queue
                .collection()
                .clone_with_type::<RawDocumentBuf>()
                .find(filter)
                .sort(order)
                .limit(wanted as i64)
                // The driver buffers a whole reply batch (up to 16 MB by
                // default); small batches keep the window's bound real.
                .batch_size(1_000)
                .run()
                .map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
            self.round_trips += 1;
            for raw in cursor {
                let raw = raw.map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
                bytes += raw.as_bytes().len();
                self.window.push_back(Slot::new(raw));
                if bytes > WINDOW_BYTES {
                    // Dropping the cursor ends the query on the server.
                    break;
                }
            }
        }
        self.count_own();
        self.found_nothing = self.window.is_empty();
        self.window_read_at = Instant::now();
        self.window_checked_at = self.window_read_at;
        Ok(())
    }

    /// Whether any job is eligible at all (one index seek, one `_id`
    /// returned): what an idle worker asks before it reads a window again.
    fn anything(&mut self) -> Result<bool, Error> {
        self.round_trips += self.upkeep.run(&self.queue)?;
        self.any_eligible(Document::new(), "find (any eligible job)")
    }

    /// Whether an eligible job also matching `also` exists: one index seek,
    /// one `_id` returned.
    fn any_eligible(&mut self, also: Document, what: &'static str) -> Result<bool, Error> {
        let mut filter = eligible_in(&self.queues, self.queue.clock().passed());
        filter.extend(also);
        let found = self
            .queue
            .collection()
            .find_one(filter)
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.queue.db_error(what, &e))?;
        self.round_trips += 1;
        Ok(found.is_some())
    }

    /// Counts the jobs of this worker's part in the window.
    fn count_own(&mut self) {
        let part = self.share.part();
        self.own_left = self.window.iter().filter(|s| owns(part, &s.id)).count();
        self.part_read = part;
    }

    /// Whether the window must be read again: every `max_window_age` it is
    /// checked for an eligible job of a higher priority than its head (one
    /// index seek, nothing returned when there is none), which would have
    /// to run first; and it is read again anyway once it is
    /// [`WINDOW_LIFETIME`] old. Checking instead of re-reading keeps a large
    /// window cheap for a worker that claims slowly.
    fn aged(&mut self) -> Result<bool, Error> {
        if self.window_checked_at.elapsed() <= self.max_window_age {
            return Ok(false);
        }
        if self.window_read_at.elapsed() > WINDOW_LIFETIME {
            return Ok(true);
        }
        let Some(head) = self.window.front().map(|s| s.rank.clone()) else {
            return Ok(true);
        };
        let above = doc! {fields::PRIORITY: {"$gt": head.clone()}};
        let above = if integer(&head).is_some_and(|n| n < 0) {
            // Below 0, a job without a priority (ranked 0) is above too.
            doc! {"$or": [above, {fields::PRIORITY: Bson::Null}]}
        } else {
            above
        };
        let found = self.any_eligible(above, "find (higher priority)")?;
        self.window_checked_at = Instant::now();
        Ok(found)
    }

    /// Claims the candidates that are still as the read-ahead saw them; one
    /// `updateMany` per distinct `attempts` value (almost always one).
    fn claim_documents(&mut self, candidates: &[Slot], token: ObjectId) -> Result<usize, Error> {
        let mut groups: Vec<(Bson, Vec<Bson>)> = Vec::new();
        for slot in candidates {
            let attempts = slot.attempts.clone();
            let id = slot.id.clone();
            if !matches!(
                attempts,
                Bson::Null | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)
            ) {
                // `$inc` would fail on it and stop the whole claim.
                self.fail_unclaimable(id, &attempts)?;
                continue;
            }
            match groups.iter_mut().find(|(a, _)| *a == attempts) {
                Some(group) => group.1.push(id),
                None => groups.push((attempts, vec![id])),
            }
        }
        let mut won = 0;
        for (attempts, ids) in groups {
            let filter = claim_filter(doc! {"$in": &ids}, &attempts, self.queue.clock());
            let result = self
                .queue
                .collection()
                .update_many(
                    filter,
                    claim_update(token, &self.owner, self.lease, self.queue.clock()),
                )
                .hint(by_id())
                .run();
            self.round_trips += 1;
            match result {
                Ok(result) => won += result.modified_count as usize,
                Err(error) if too_large(&error) => {
                    // One job is so close to 16 MB that the claim's fields do
                    // not fit. updateMany stops at it, maybe half-way, so
                    // claim one by one, fail the oversized job, and read
                    // back what this token holds.
                    self.read_back = true;
                    won += self.claim_one_by_one(&ids, &attempts, token)?;
                }
                Err(error) => return Err(self.queue.db_error("update (claim)", &error)),
            }
        }
        Ok(won)
    }

    fn claim_one_by_one(
        &mut self,
        ids: &[Bson],
        attempts: &Bson,
        token: ObjectId,
    ) -> Result<usize, Error> {
        let mut won = 0;
        for id in ids {
            let filter = claim_filter(id.clone(), attempts, self.queue.clock());
            let result = self
                .queue
                .collection()
                .update_one(
                    filter,
                    claim_update(token, &self.owner, self.lease, self.queue.clock()),
                )
                .run();
            self.round_trips += 1;
            match result {
                Ok(result) => won += result.modified_count as usize,
                Err(error) if too_large(&error) => fail_oversized(&self.queue, id)?,
                Err(error) => return Err(self.queue.db_error("update (claim)", &error)),
            }
        }
        Ok(won)
    }

    /// Marks `failed` a pending job whose worker-owned `attempts` field a
    /// producer set to something that is not a number.
    fn fail_unclaimable(&mut self, id: Bson, attempts: &Bson) -> Result<(), Error> {
        let error = format!(
            "malformed job: `attempts` is owned by the worker and must be a number, but it is {}",
            attempts.clone().into_relaxed_extjson()
        );
        log::warn!("job {} failed: {error}", id_text(&id));
        self.queue
            .collection()
            .update_one(
                doc! {"_id": id, fields::STATUS: Status::Pending, fields::ATTEMPTS: attempts.clone()},
                doc! {"$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: self.queue.clock().now(), fields::LAST_ERROR: error}},
            )
            .run()
            .map_err(|e| self.queue.db_error("update (fail malformed)", &e))?;
        self.round_trips += 1;
        Ok(())
    }

    fn read_claimed(&mut self, token: ObjectId, ids_only: bool) -> Result<Vec<Document>, Error> {
        let mut find = self
            .queue
            .collection()
            .find(doc! {fields::LEASE_TOKEN: token, fields::STATUS: Status::Running})
            .sort(queue_order());
        if ids_only {
            find = find.projection(doc! {"_id": 1});
        }
        let cursor = find
            .run()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))?;
        self.round_trips += 1;
        cursor
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.queue.db_error("find (claimed jobs)", &e))
    }
}

/// Which documents a claim may take: eligible, with `_id` matching `id`
/// (one id or an `$in`), and still at the `attempts` the read-ahead saw.
/// `_id` comes first and the claim hints the `_id` index: the ids bound
/// the claim to a batch, where a plan on the claim index would examine
/// every pending job.
fn claim_filter(id: impl Into<Bson>, attempts: &Bson, clock: &Clock) -> Document {
    let mut filter = doc! {"_id": id.into()};
    filter.extend(eligible_filter(clock.passed()));
    filter.insert(fields::ATTEMPTS, attempts.clone());
    filter
}

/// The `_id` index, which every collection has.
fn by_id() -> Hint {
    Hint::Keys(doc! {"_id": 1})
}

/// What a claim writes.
fn claim_update(token: ObjectId, owner: &str, lease: Duration, clock: &Clock) -> Document {
    let now = clock.now();
    doc! {
        "$set": {
            fields::STATUS: Status::Running,
            fields::LEASE_OWNER: owner,
            fields::LEASE_TOKEN: token,
            fields::LEASE_UNTIL: crate::clock::shift_by(now, lease),
            fields::STARTED_AT: now,
        },
        "$inc": {fields::ATTEMPTS: 1},
    }
}

/// The window's copy of a document, as the claim left it on the server
/// (only the fields the worker reads need to be exact: `attempts`).
fn as_claimed(slot: Slot, token: ObjectId, owner: &str) -> Document {
    // The server sent it, so it parses; if not, the job fails as malformed.
    let mut document = slot
        .raw
        .to_document()
        .unwrap_or_else(|_| doc! {"_id": slot.id.clone()});
    let attempts = document
        .get(fields::ATTEMPTS)
        .and_then(integer)
        .map_or(1, |n| n + 1);
    document.insert(fields::ATTEMPTS, attempts);
    document.insert(fields::STATUS, Status::Running);
    document.insert(fields::LEASE_TOKEN, token);
    document.insert(fields::LEASE_OWNER, owner);
    document
}
