//! The claim: how a worker takes a batch of jobs, atomically, in few round
//! trips.
//!
//! MongoDB has no "update N documents and return them" (findAndModify takes
//! one), so a batch claim is built from documented operations:
//!
//! 1. **Read ahead** the keys (`_id`, `priority`, `attempts`, `run_at`) of
//!    the next eligible jobs, in queue order (`priority` desc, `run_at`,
//!    `_id`), several batches at once, through the `mongoq_claim_by_queue`
//!    index, into a window bounded by count and bytes. The reads are made
//!    by the claimer's reader thread ([`reader`]), while the claims go on
//!    from the current window: only an empty window waits for one. A read
//!    is one query in the index's order, put in queue order as far as it
//!    tells ([`keys::in_queue_order`]: a job without a `priority` ranks as
//!    0 with no write to give it one), or, when it tells nothing, exact
//!    `priority` ranges of the index ([`keys::priority_ranges`]). Workers
//!    that share the queue share the window too ([`SharedWindow`]): one of
//!    them reads it and publishes the keys, and its peers take them from
//!    there instead of reading the queue themselves.
//! 2. **Claim** a batch from the window with one `updateMany` whose filter
//!    leads with the batch's `_id`s (hinted to the `_id` index) and repeats
//!    `status: "pending"`, the `run_at` bound and the worker's queues. Each
//!    document's update is atomic, so a job another worker took in between
//!    simply does not match: two workers never hold the same job. All jobs
//!    claimed get this claim's fresh `lease_token` and `attempts + 1`.
//! 3. **Read back** what the token holds: one `find` on the lease-token
//!    index, which returns the bodies of the jobs won, as they are now.
//!
//! That is two round trips per batch plus one read-ahead per several
//! batches for the whole fleet. Workers that share the queue divide it
//! ([`crate::fleet::share`]): each claims its own part of the window first, so they
//! seldom collide; when claims keep winning less than half of what they
//! ask for, the window is stale and is read again rather than fought over.
//! Every `max_window_age` (at most a second) one worker of the fleet (the
//! one that leads the duty, [`Share::leads`]) makes one index seek for an
//! eligible job of a higher priority than the window's head, which
//! re-reads the window; its peers see the new window at their next look
//! (each looks once a `max_window_age`), so a new urgent job waits at most
//! about two of them (plus a read). A window is read again after its
//! lifetime anyway ([`WINDOW_LIFETIME`], longer when reads take long).
//!
//! Retrying a claim after a lost reply is safe: the retry reuses the token,
//! the documents the lost attempt took no longer match `pending`, and the
//! read back returns everything held under the token.
//!
//! A stage of [`crate::worker`]: it may import the later stages (`settle`,
//! `lease`, `health`), the fleet and the queue; no other stage imports it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{oid::ObjectId, Bson, Document};

use crate::error::Error;
use crate::fleet::share::{owns, Share};
use crate::fleet::window::{Key, SharedWindow};
use crate::groups::fair::Turns;
use crate::groups::gate::Gate;
use crate::queue::Queue;
use ahead::Freshness;
use reader::{Reader, Source};

mod ahead;
mod drain;
pub(crate) mod fetcher;
mod gated;
pub(crate) mod keys;
pub(crate) mod pacing;
mod reader;
pub(crate) mod unroutable;
mod write;

/// A window is read again at least this often, even when no higher
/// priority has arrived, so what it proposes is never older.
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

/// The window stops filling at this many bytes of keys, so the shared
/// window stays far below MongoDB's 16 MB document limit.
const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// A claim that won some jobs.
pub(crate) struct Claimed {
    pub(crate) token: ObjectId,
    pub(crate) documents: Vec<Document>,
    /// For each document, the (queue, group) whose group concurrency slot
    /// it holds (empty: no group limits).
    pub(crate) group_slots: Vec<Option<Arc<(String, String)>>>,
}

/// Claims batches for one worker; owns its copy of the read-ahead window.
pub(crate) struct Claimer {
    queue: Queue,
    owner: String,
    lease: Duration,
    /// The named queues this worker takes jobs from.
    queues: Vec<String>,
    /// Eligible jobs as the read-ahead saw them, in queue order.
    window: VecDeque<Key>,
    /// The window shared with the peers serving the same queues.
    shared: SharedWindow,
    /// The newest shared epoch this worker has seen (0: none).
    seen: i64,
    /// The window's read stopped at its limit: there is more beyond it.
    full: bool,
    /// Claims in a row that won less than half of what they asked for.
    contended: u32,
    /// When the window was read (by this worker or the peer that shared it).
    window_read_at: Instant,
    max_window_age: Duration,
    /// The thread that makes the reads (see [`reader`]).
    reader: Reader,
    /// The jobs asked for since the read under way started: its window may
    /// still list them.
    during_read: HashSet<IdKey>,
    /// The token of a claim that failed half-way; the retry reuses it.
    unfinished: Option<ObjectId>,
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
    /// What the last look found: work, nothing eligible, or nothing pending
    /// at all (then only a write can bring work, and writes make events).
    idle: Idle,
    /// When the last idle poll asked whether any job is pending at all.
    pending_checked_at: Option<Instant>,
    /// An idle poll found work since the caller last looked (see
    /// [`Claimer::take_woke`]).
    woke: bool,
    /// The jobs this worker asked for since the window was last filled:
    /// a window a peer read before they were claimed still lists them.
    taken: HashSet<IdKey>,
    /// The part of a peer's window the window is (all of it this worker's),
    /// or `None` for a whole read.
    adopted: Option<(usize, usize)>,
    /// The peers' parts of the adopted window still to help with.
    next_part: Option<ahead::NextPart>,
    /// The named groups of the whole window, for the look for new ones
    /// (`None`: too many listed, or not known).
    window_groups: Option<Vec<String>>,
    /// When each group last had a job taken, so that each new window's
    /// round starts from the group served longest ago.
    turns: Turns,
    /// Group limits of the queue this claimer serves, if any: candidates
    /// pass through it (see [`crate::groups::limits`]).
    pub(crate) gate: Option<Gate>,
    /// Group slots taken for the claim under way (kept across a retry of
    /// it), by group.
    granted: HashMap<String, u32>,
    /// The last claim found only jobs of groups at their limit.
    at_group_limit: bool,
    /// How long the last claim through the gate took, to its read-back
    /// (the jobs of a group under a rate start at an instant reserved
    /// before it: see the fetcher).
    gated_took: Duration,
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
        let shared = SharedWindow::new(&queue, &queues, &owner);
        let reader = Reader::spawn(Source::new(
            queue.clone(),
            queues.clone(),
            Arc::clone(&share),
            &owner,
        ));
        Claimer {
            queue,
            owner,
            lease,
            queues,
            window: VecDeque::new(),
            shared,
            seen: 0,
            full: false,
            contended: 0,
            window_read_at: Instant::now(),
            max_window_age,
            reader,
            during_read: HashSet::new(),
            unfinished: None,
            round_trips: 0,
            candidates: 0,
            share,
            own_left: 0,
            part_read: (0, 1),
            window_checked_at: Instant::now(),
            idle: Idle::Working,
            pending_checked_at: None,
            woke: false,
            taken: HashSet::new(),
            adopted: None,
            next_part: None,
            window_groups: None,
            turns: Turns::default(),
            gate: None,
            granted: HashMap::new(),
            at_group_limit: false,
            gated_took: Duration::ZERO,
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
        self.at_group_limit = false;
        let started = Instant::now();
        let claimed = self.claim_with(token, count, window, retrying)?;
        self.unfinished = None;
        if self.gate.is_some() && claimed.is_some() {
            self.gated_took = started.elapsed();
        }
        Ok(self.hold_group_slots(claimed))
    }

    /// One idle poll, one index seek in the steady states: with nothing
    /// pending known, is anything pending now (if not, nothing is eligible
    /// either); else is anything eligible, and, at most every
    /// [`PENDING_CHECK`], is anything pending at all.
    fn idle_poll(&mut self) -> Result<(), Error> {
        let mut checked = false;
        if self.idle == Idle::NothingPending {
            self.pending_checked_at = Some(Instant::now());
            if !self.any_pending()? {
                return Ok(());
            }
            // Something is pending again: is it eligible yet?
            self.idle = Idle::NothingEligible;
            checked = true;
        }
        if self.anything()? {
            // Work again: the caller reads the controls first (an idle
            // worker reads them seldom) and comes back.
            self.idle = Idle::Working;
            self.woke = true;
        } else if !checked
            && self
                .pending_checked_at
                .is_none_or(|at| at.elapsed() >= PENDING_CHECK)
        {
            self.pending_checked_at = Some(Instant::now());
            if !self.any_pending()? {
                self.idle = Idle::NothingPending;
            }
        }
        Ok(())
    }

    /// Whether the last look found no job of these queues pending at all
    /// (not even one waiting for its `run_at`): then nothing becomes
    /// eligible as time passes, and with a change stream open the worker
    /// need not poll (see `Fetcher`).
    pub(crate) fn nothing_pending(&self) -> bool {
        self.idle == Idle::NothingPending && self.window.is_empty()
    }

    /// Asks the reader for the upkeep of unroutable jobs (it runs it when
    /// this worker leads the duty, before the reader stops).
    pub(crate) fn upkeep_now(&self) {
        self.reader.idle();
    }

    /// Whether an idle poll found work (and so nothing was claimed yet):
    /// the fetcher then makes sure of the controls before claiming.
    pub(crate) fn take_woke(&mut self) -> bool {
        std::mem::take(&mut self.woke)
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
            self.collect_read()?;
            let part = self.share.part();
            if part != self.part_read {
                self.count_own();
            }
            // A window with nothing left of this worker's part is read again
            // when there is more beyond it, or a peer read a newer one,
            // before others' jobs are taken from it.
            let spent = part.1 > 1 && self.own_left == 0 && !self.window.is_empty();
            if !self.window.is_empty() && !spent && !self.reader.busy() {
                self.look_ahead(count, window)?;
            }
            if self.window.is_empty()
                && self.idle != Idle::Working
                && !retrying
                && !self.reader.busy()
            {
                // Idle: one index seek per poll, not a read of every range.
                self.reader.idle();
                self.idle_poll()?;
                return Ok(None);
            }
            let fresh = if self.window.is_empty() || (spent && self.more_beyond()?) {
                // Who shares the queue now decides what is ours in it.
                self.round_trips += self.share.recheck(&self.queue)?;
                // Nothing to claim until a read returns: a bounded one
                // (what the threads start in the base lifetime; ten batches
                // before any job was timed), so the first job starts as
                // soon as it does; a bigger window is read behind it while
                // these are claimed.
                let size = self.window_size(count, window);
                self.refill(window.max(count * 2).min(size))?;
                true
            } else {
                false
            };
            if self.window.is_empty() && !retrying {
                return Ok(None);
            }
            let candidates = self.take(count);
            let candidates = self.gated(candidates)?;
            if candidates.is_empty() && !retrying {
                // Only jobs of groups at their limit.
                return Ok(None);
            }
            self.turns.took(&candidates);
            self.candidates += candidates.len() as u64;
            if self.share.part().1 > 1 {
                self.taken
                    .extend(candidates.iter().map(|k| IdKey::of(&k.id)));
            }
            if self.reader.busy() {
                self.during_read
                    .extend(candidates.iter().map(|k| IdKey::of(&k.id)));
            }
            let (won, one_by_one) = self.claim_documents(&candidates, token)?;
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
            // A lost reply may have claimed jobs we never saw, so a retry
            // reads back even when this attempt won nothing.
            // So may a claim that fell back to one job at a time: its
            // updateMany may have stopped half-way.
            let documents = if won > 0 || retrying || one_by_one {
                gated::in_window_order(
                    self.read_claimed(token, candidates.len().max(count))?,
                    &candidates,
                )
            } else {
                Vec::new()
            };
            if !documents.is_empty() {
                return Ok(Some(Claimed {
                    token,
                    documents,
                    group_slots: Vec::new(),
                }));
            }
            if fresh {
                // A window read just now was entirely taken by others;
                // let the caller come back rather than spin.
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Asks the reader for what the window will need, while it still holds
    /// jobs: a new window once what is left of this worker's part would
    /// keep the threads busy for less than twice what the last read took
    /// (at least a batch), or once it is old; a look above its head every
    /// `max_window_age`.
    fn look_ahead(&mut self, count: usize, window: usize) -> Result<(), Error> {
        let left = if self.share.part().1 > 1 {
            self.own_left
        } else {
            self.window.len()
        };
        let size = self.window_size(count, window);
        if self.full && left <= self.low_water(count, window) {
            self.ask_reader(size, None);
            return Ok(());
        }
        match self.freshness()? {
            Freshness::Fresh => {}
            Freshness::CheckAbove(head) => self.ask_reader(size, Some(head)),
            Freshness::Reread => self.ask_reader(size, None),
        }
        Ok(())
    }

    /// How many keys a read fetches: what this worker's threads start in a
    /// window's lifetime (`window` is what they start in
    /// [`WINDOW_LIFETIME`]), times the peers dividing the queue (only its
    /// part is its own), at least a batch and at most [`MAX_WINDOW`].
    fn window_size(&self, count: usize, window: usize) -> usize {
        let lifetimes = self.lifetime().as_secs_f64() / WINDOW_LIFETIME.as_secs_f64();
        let mine = (window as f64 * lifetimes) as usize;
        mine.saturating_mul(self.share.part().1)
            .min(MAX_WINDOW)
            .max(count)
    }

    /// What the threads start in twice the last read's time: the window is
    /// read again before it holds less (at least a batch).
    fn low_water(&self, count: usize, window: usize) -> usize {
        let reads = 2.0 * self.reader.last_took.as_secs_f64() / WINDOW_LIFETIME.as_secs_f64();
        ((window as f64 * reads) as usize).max(count)
    }

    /// Takes `count` keys from the window: this worker's part first, in
    /// queue order. A worker alone takes the head. One whose part is used
    /// up takes a `1/n` share of the others' jobs from the end of the
    /// head's priority (their owners reach it last); lower priorities still
    /// wait for higher ones.
    fn take(&mut self, count: usize) -> Vec<Key> {
        let part = self.share.part();
        let adopted = self.adopted.is_some();
        if part.1 > 1 && self.own_left > 0 {
            let mut taken = Vec::with_capacity(count.min(self.own_left));
            let mut rest = VecDeque::with_capacity(self.window.len());
            for key in self.window.drain(..) {
                if taken.len() < count && (adopted || owns(part, &key.id)) {
                    taken.push(key);
                } else {
                    rest.push_back(key);
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
        let same = self.window.iter().take_while(|k| k.rank == *head).count();
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

    /// Counts the jobs of this worker's part in the window.
    fn count_own(&mut self) {
        let part = self.share.part();
        self.own_left = if self.adopted.is_some() {
            self.window.len()
        } else {
            self.window.iter().filter(|k| owns(part, &k.id)).count()
        };
        self.part_read = part;
    }
}

/// What a claimer's last look found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    Working,
    NothingEligible,
    NothingPending,
}

/// An idle poll that found nothing eligible while jobs wait for their
/// `run_at` asks at most this often whether anything is pending at all
/// (one more index seek).
const PENDING_CHECK: Duration = Duration::from_secs(10);

/// An `_id` as a set member (`Bson` is not `Hash`): an ObjectId's bytes,
/// or any other id's extended JSON.
#[derive(PartialEq, Eq, Hash)]
enum IdKey {
    ObjectId([u8; 12]),
    Other(String),
}

impl IdKey {
    fn of(id: &Bson) -> IdKey {
        match id {
            Bson::ObjectId(oid) => IdKey::ObjectId(oid.bytes()),
            other => IdKey::Other(other.clone().into_relaxed_extjson().to_string()),
        }
    }
}
