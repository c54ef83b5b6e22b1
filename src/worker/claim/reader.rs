//! The read-ahead's reader: the one thread of a claimer that makes the
//! reads whose cost grows with the backlog, so the claims never wait for
//! one while the window still holds jobs.
//!
//! A read of the window ranges over the eligible jobs; on MongoDB it is
//! an index scan that stops at its limit, but its price still grows with
//! the window it fills, and on servers where a query costs what its range
//! holds it takes seconds at a million jobs. Made on the claim path, every
//! such read was a stall: the threads finished the window, then sat idle
//! while the next one was read. So the claimer asks its reader for the
//! next window while the current one still holds enough to keep the
//! threads busy for twice what the last read took, and claims from the old
//! window meanwhile; only an empty window (a worker's first claim, or work
//! again after idling) waits for a read, and that read is bounded to what
//! the worker's own threads start in 5 s (ten batches before any job was
//! timed), so the first job starts as soon as it returns.
//!
//! The reader also makes the fleet's check for a higher priority (an index
//! seek on MongoDB, but a query over the pending jobs all the same) and the
//! upkeep of unroutable jobs, for the same reason.
//!
//! One thread, owned: the claimer keeps its `JoinHandle` and, when dropped,
//! drops the sender of asks, which ends the thread after the read in hand.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mongodb::action::Action;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

use super::keys::{in_queue_order, key_of, key_projection, priority_ranges, Row};
use super::unroutable::Upkeep;
use super::unroutable::MALFORMED_CHECK;
use super::write::{fail_unclaimable, is_number};
use super::{WINDOW_BYTES, WINDOW_LIFETIME};
use crate::error::Error;
use crate::fleet::share::{part_of, Share};
use crate::fleet::window::{Key, Published, SharedWindow};
use crate::groups::fair;
use crate::queue::filters::{eligible_in, queue_order};
use crate::queue::indexes::{hinted, GROUPS_INDEX};
use crate::queue::{Queue, CLAIM_INDEX};
use crate::schema::{fields, integer};

/// While a peer reads the shared window, look for what it published this
/// often, at most [`TURN_WAITS`] times (a little longer than a turn lasts,
/// [`crate::fleet::window`]'s 10 s) before reading for ourselves: a read of
/// a big backlog can take seconds, and peers that stop waiting too soon
/// all read it at once. The wait is the reader thread's; the claims go on.
const TURN_WAIT: Duration = Duration::from_millis(100);
const TURN_WAITS: u32 = 110;

/// The duty of failing unroutable pending jobs (see [`Upkeep`]), which a
/// worker does only when it leads it among its peers.
const UPKEEP: &str = "upkeep";

/// What the claimer asks of its reader.
pub(super) struct Ask {
    /// The most keys to read.
    pub(super) limit: usize,
    /// The newest shared epoch the claimer has seen.
    pub(super) seen: i64,
    /// Read only if an eligible job ranks above this (the window's head),
    /// or, with `groups`, one at or above it is of a group not among them.
    pub(super) above: Option<Bson>,
    /// The named groups the window lists (`None`: no look for new ones).
    pub(super) groups: Option<Vec<String>>,
}

/// What a read found.
pub(super) enum Found {
    /// Keys read by this worker, in queue order (round-robin by group
    /// within a priority), whether more lie beyond them, and the named
    /// groups they hold (`None`: too many to list).
    Keys {
        keys: Vec<Key>,
        full: bool,
        groups: Option<Vec<String>>,
    },
    /// This worker's part of a window a peer published.
    Adopted(Published),
    /// Asked with `above`: nothing eligible ranks above the head.
    NothingAbove,
}

/// A window this worker read (see [`Source::read_window`]).
struct Window {
    keys: Vec<Key>,
    full: bool,
    groups: Option<Vec<String>>,
}

/// The reader's answer to one [`Ask`].
pub(super) struct Answer {
    pub(super) found: Result<Found, Error>,
    /// The newest shared epoch seen after the read.
    pub(super) seen: i64,
    pub(super) round_trips: u64,
    /// When the claimer asked (a window read is as old as its ask).
    pub(super) asked_at: Instant,
    /// How long the read took.
    pub(super) took: Duration,
}

/// What goes to the reader thread.
enum Request {
    /// A read, and when the claimer asked for it.
    Read(Ask, Instant),
    /// The claimer is idle: a good time for the upkeep (if it is due).
    Upkeep,
}

/// The claimer's handle on its reader thread.
pub(super) struct Reader {
    asks: Option<Sender<Request>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
    /// A read was asked for and not yet answered.
    in_flight: bool,
    /// How long the last window read took (zero before the first).
    pub(super) last_took: Duration,
}

impl Reader {
    pub(super) fn spawn(source: Source) -> Reader {
        let (asks, asked) = crossbeam_channel::unbounded::<Request>();
        let (answer, answers) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("mongoq-reader".into())
            .spawn(move || source.serve(&asked, &answer))
            .ok();
        Reader {
            asks: Some(asks),
            answers,
            thread,
            in_flight: false,
            last_took: Duration::ZERO,
        }
    }

    /// Whether a read is under way.
    pub(super) fn busy(&self) -> bool {
        self.in_flight
    }

    /// Asks for a read (at most one at a time: an ask while one is under
    /// way is ignored).
    pub(super) fn ask(&mut self, ask: Ask) {
        if self.in_flight {
            return;
        }
        if let Some(asks) = &self.asks {
            self.in_flight = asks.send(Request::Read(ask, Instant::now())).is_ok();
        }
    }

    /// Tells the reader the claimer is idle: it runs the upkeep if due.
    pub(super) fn idle(&self) {
        if let Some(asks) = &self.asks {
            let _ = asks.send(Request::Upkeep);
        }
    }

    /// The answer of the read under way, if it is in.
    pub(super) fn ready(&mut self) -> Option<Answer> {
        if !self.in_flight {
            return None;
        }
        let answer = self.answers.try_recv().ok()?;
        self.took(&answer);
        Some(answer)
    }

    /// Waits for the answer of the read under way. `None` if none is, or
    /// the reader is gone (it could not be started, or it panicked).
    pub(super) fn wait(&mut self) -> Option<Answer> {
        if !self.in_flight {
            return None;
        }
        let answer = self.answers.recv().ok();
        self.in_flight = false;
        if let Some(answer) = &answer {
            self.took(answer);
        }
        answer
    }

    fn took(&mut self, answer: &Answer) {
        self.in_flight = false;
        if matches!(answer.found, Ok(Found::Keys { .. } | Found::Adopted(_))) {
            self.last_took = answer.took;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Disconnecting the asks ends the thread's loop.
        self.asks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Everything a read needs, owned by the reader thread.
pub(super) struct Source {
    pub(super) queue: Queue,
    pub(super) queues: Vec<String>,
    pub(super) share: Arc<Share>,
    pub(super) shared: SharedWindow,
    pub(super) upkeep: Upkeep,
    round_trips: u64,
    /// When this reader last met a named group (see
    /// [`fair::GROUPS_REMEMBERED`]).
    met_groups_at: Option<Instant>,
}

impl Source {
    pub(super) fn new(queue: Queue, queues: Vec<String>, share: Arc<Share>, owner: &str) -> Source {
        let shared = SharedWindow::new(&queue, &queues, owner);
        Source {
            queue,
            queues,
            share,
            shared,
            upkeep: Upkeep::default(),
            round_trips: 0,
            met_groups_at: None,
        }
    }

    /// The thread's loop: answers each ask; runs the upkeep when this
    /// worker leads it, every [`MALFORMED_CHECK`] (the first a period after
    /// the start, so it never delays the first jobs) and whenever the
    /// claimer, idle, asks for it.
    fn serve(mut self, asked: &Receiver<Request>, answers: &Sender<Answer>) {
        let mut upkeep_at = Instant::now() + MALFORMED_CHECK;
        loop {
            match asked.recv_deadline(upkeep_at) {
                Ok(Request::Read(ask, asked_at)) => {
                    let answer = self.answer(ask, asked_at);
                    if answers.send(answer).is_err() {
                        return;
                    }
                }
                Ok(Request::Upkeep) => upkeep_at = upkeep_at.min(Instant::now()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= upkeep_at {
                upkeep_at = Instant::now() + MALFORMED_CHECK;
                if self.share.leads(UPKEEP) {
                    if let Err(error) = self.upkeep.run(&self.queue) {
                        log::warn!("{error}");
                    }
                }
            }
        }
    }

    fn answer(&mut self, ask: Ask, asked_at: Instant) -> Answer {
        self.round_trips = 0;
        let mut seen = ask.seen;
        let started = Instant::now();
        let found = match &ask.above {
            Some(head) => match self.anything_above(head, ask.groups.as_deref()) {
                Ok(false) => Ok(Found::NothingAbove),
                Ok(true) => self.refill(ask.limit, &mut seen),
                Err(error) => Err(error),
            },
            None => self.refill(ask.limit, &mut seen),
        };
        // What each read found and how long it took: a slow first job or a
        // gap in a drain is one grep away (with `mongoq::commands`' log).
        if log::log_enabled!(log::Level::Debug) {
            let what = match &found {
                Ok(Found::Keys { keys, .. }) => format!("read {} keys", keys.len()),
                Ok(Found::Adopted(published)) => {
                    format!("took a peer's window (epoch {})", published.epoch)
                }
                Ok(Found::NothingAbove) => "nothing of a higher priority".into(),
                Err(_) => "failed".into(),
            };
            log::debug!(
                "read-ahead ({} keys asked, {} workers share the queue): {what} in {} ms",
                ask.limit,
                self.share.part().1,
                started.elapsed().as_millis()
            );
        }
        Answer {
            found,
            seen,
            round_trips: self.round_trips,
            asked_at,
            took: started.elapsed(),
        }
    }

    /// Reads up to `limit` keys: takes the window a peer published since
    /// the last this worker saw, if that is fresh; else takes the reader's
    /// turn, reads, and publishes what it read divided among the peers (or
    /// gives the turn back, alone); while a peer has the turn, waits for
    /// what that peer publishes, taking the turn if it is given back, and
    /// reads for itself if that takes too long.
    ///
    /// A worker that believes itself alone takes the turn too: workers that
    /// start together each see only the peers registered before them, and
    /// the first ones to start read the queue at once otherwise (two reads
    /// of a million at once made the fleet's first job wait 7.5 s instead
    /// of 1.8 s on the test server).
    fn refill(&mut self, limit: usize, seen: &mut i64) -> Result<Found, Error> {
        for waits in 0..=TURN_WAITS {
            if waits > 0 {
                std::thread::sleep(TURN_WAIT);
            }
            let (newer, trips) = self.shared.newer(*seen, self.share.part().0)?;
            self.round_trips += trips;
            if let Some(published) = newer {
                *seen = published.epoch;
                let age = self
                    .queue
                    .clock()
                    .now()
                    .saturating_duration_since(published.read_at);
                if age < WINDOW_LIFETIME {
                    return Ok(Found::Adopted(published));
                }
            }
            let turn = self.shared.take_turn(*seen)?;
            self.round_trips += 1;
            if turn {
                let Window { keys, full, groups } = self.read_window(limit)?;
                // The peers as they are now: one may have started during
                // the read.
                let of = self.share.part().1;
                if of > 1 {
                    let (epoch, trips) =
                        self.shared
                            .publish(&divide(&keys, of), full, groups.as_deref())?;
                    self.round_trips += trips;
                    *seen = epoch.unwrap_or(*seen);
                } else {
                    self.round_trips += self.shared.release_turn();
                }
                // The reader keeps the whole window: its own part first,
                // then a share of the others' (see `take`).
                return Ok(Found::Keys { keys, full, groups });
            }
        }
        log::debug!("a peer's read of the shared window is slow; reading for this worker");
        let Window { keys, full, groups } = self.read_window(limit)?;
        Ok(Found::Keys { keys, full, groups })
    }

    /// A window of up to `limit` keys (more with groups, see [`fair`]): a
    /// read in queue order; if it stopped at its limit and this reader met
    /// a named group lately, reads for the named groups it did not meet,
    /// up to [`fair::PASSES`] times (on the partial index `mongoq_groups`);
    /// then each rank's keys round-robin by group.
    /// Returns the keys, whether more lie beyond, and the named groups
    /// (`None`: more than [`fair::LISTED_GROUPS`]).
    fn read_window(&mut self, limit: usize) -> Result<Window, Error> {
        let (mut keys, full) = self.read_keys(Document::new(), CLAIM_INDEX, limit)?;
        let mut met = fair::named(&keys);
        if !met.is_empty() {
            self.met_groups_at = Some(Instant::now());
        }
        let groups_about = self
            .met_groups_at
            .is_some_and(|at| at.elapsed() < fair::GROUPS_REMEMBERED);
        let floor = keys.last().map(|k| k.rank.clone());
        if let Some(floor) = floor.filter(|_| full && groups_about) {
            let mut extra = Vec::new();
            for _ in 0..fair::PASSES {
                let (more, more_full) = self.read_keys(fair::others(&met), GROUPS_INDEX, limit)?;
                let more = fair::at_or_above(more, &floor);
                if more.is_empty() {
                    break;
                }
                met.extend(fair::named(&more));
                extra.extend(more);
                if !more_full {
                    break;
                }
            }
            if !extra.is_empty() {
                self.met_groups_at = Some(Instant::now());
            }
            keys = fair::merge(keys, extra);
        }
        let groups = (met.len() <= fair::LISTED_GROUPS).then_some(met);
        Ok(Window { keys, full, groups })
    }

    /// Reads up to `limit` keys of eligible jobs in queue order. One read in
    /// the claim index's order first, which is queue order as far as
    /// [`in_queue_order`] can tell (all of it when every job has a
    /// `priority`, or none has one); only when it tells nothing, a read in
    /// the ranges of [`priority_ranges`], from the first that can hold what
    /// the single read met. Returns the keys and whether more lie beyond.
    fn read_keys(
        &mut self,
        also: Document,
        index: &'static str,
        limit: usize,
    ) -> Result<(Vec<Key>, bool), Error> {
        let (queue, queues) = (self.queue.clone(), self.queues.clone());
        let eligible = || {
            let mut filter = eligible_in(&queues, queue.clock().passed());
            filter.extend(also.clone());
            filter
        };
        let (rows, full) = self.read(eligible(), queue_order(), index, limit)?;
        let first = match in_queue_order(rows, full) {
            Ok(read) => return Ok(read),
            Err(first) => first.first_range(),
        };
        let mut keys = Vec::new();
        let mut full = false;
        for (priority, order) in priority_ranges().into_iter().skip(first) {
            let wanted = limit - keys.len();
            if wanted == 0 {
                full = true;
                break;
            }
            let mut filter = eligible();
            filter.insert(fields::PRIORITY, priority);
            let (rows, stopped) = self.read(filter, order, index, wanted)?;
            keys.extend(rows.into_iter().map(|r| r.key));
            if stopped {
                full = true;
                break;
            }
        }
        let full = full || keys.len() >= limit;
        Ok((keys, full))
    }

    /// One read of up to `limit` keys matching `filter` in `order`, and
    /// whether it stopped at its limit (of keys or [`WINDOW_BYTES`]). A job
    /// whose `attempts` is not a number is failed, with the reason, on the
    /// way: a claim's `$inc` would fail on it and stop the whole claim.
    fn read(
        &mut self,
        filter: Document,
        order: Document,
        index: &'static str,
        limit: usize,
    ) -> Result<(Vec<Row>, bool), Error> {
        let jobs = self.queue.collection().clone_with_type::<RawDocumentBuf>();
        let cursor = hinted(index, |hint| {
            jobs.find(filter.clone())
                .sort(order.clone())
                .projection(key_projection())
                .limit(limit as i64)
                // One reply (the server stops a batch at 16 MiB, far above
                // a window's 4 MB): a getMore per 10,000 keys costs round
                // trips.
                .batch_size(u32::try_from(limit.saturating_add(1)).unwrap_or(u32::MAX))
                .optional(hint, mongodb::action::Find::hint)
                .run()
        })
        .map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
        self.round_trips += 1;
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut read = 0;
        for raw in cursor {
            let raw = raw.map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
            read += 1;
            bytes += raw.as_bytes().len();
            let (key, attempts) = key_of(&raw);
            if is_number(&attempts) {
                rows.push(Row::of(&raw, key));
            } else {
                fail_unclaimable(&self.queue, key.id, Some(&attempts))?;
                self.round_trips += 1;
            }
            if bytes > WINDOW_BYTES {
                // Dropping the cursor ends the query on the server.
                return Ok((rows, true));
            }
        }
        Ok((rows, read >= limit))
    }

    /// Whether an eligible job ranks above `head`, or (with `groups`, the
    /// named groups the window lists) one at or above it is of another
    /// named group: one index seek each, one `_id` returned.
    fn anything_above(&mut self, head: &Bson, groups: Option<&[String]>) -> Result<bool, Error> {
        let above = doc! {fields::PRIORITY: {"$gt": head.clone()}};
        let above = if integer(head).is_some_and(|n| n < 0) {
            // Below 0, a job without a priority (ranked 0) is above too.
            doc! {"$or": [above, {fields::PRIORITY: Bson::Null}]}
        } else {
            above
        };
        self.round_trips += 1;
        if any_eligible(
            &self.queue,
            &self.queues,
            above,
            CLAIM_INDEX,
            "find (higher priority)",
        )? {
            return Ok(true);
        }
        let Some(groups) = groups else {
            return Ok(false);
        };
        self.round_trips += 1;
        let found = any_eligible(
            &self.queue,
            &self.queues,
            fair::new_group(groups, head),
            GROUPS_INDEX,
            "find (a new group)",
        )?;
        if found {
            self.met_groups_at = Some(Instant::now());
        }
        Ok(found)
    }
}

/// Whether an eligible job of `queues` also matching `also` exists: one
/// index seek, one `_id` returned.
pub(super) fn any_eligible(
    queue: &Queue,
    queues: &[String],
    also: Document,
    index: &'static str,
    what: &'static str,
) -> Result<bool, Error> {
    let mut filter = eligible_in(queues, queue.clock().passed());
    filter.extend(also);
    let jobs = queue.collection();
    let found = hinted(index, |hint| {
        jobs.find_one(filter.clone())
            .projection(doc! {"_id": 1})
            .optional(hint, mongodb::action::FindOne::hint)
            .run()
    })
    .map_err(|e| queue.db_error(what, &e))?;
    Ok(found.is_some())
}

/// `keys` divided into the `of` parts of the peers (see [`part_of`]), each in
/// queue order.
fn divide(keys: &[Key], of: usize) -> Vec<Vec<Key>> {
    let mut parts = vec![Vec::new(); of.max(1)];
    for key in keys {
        parts[part_of(&key.id, of)].push(key.clone());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn a_division_puts_every_key_in_its_owners_part_in_queue_order() {
        let keys: Vec<Key> = (0..1_000)
            .map(|i| Key {
                id: Bson::ObjectId(ObjectId::new()),
                rank: Bson::Int32(i % 3),
                group: None,
            })
            .collect();
        let parts = divide(&keys, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), keys.len());
        for (rank, part) in parts.iter().enumerate() {
            assert!(part.iter().all(|k| part_of(&k.id, 4) == rank));
            let positions: Vec<usize> = part
                .iter()
                .map(|k| keys.iter().position(|x| x == k).unwrap())
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "queue order");
        }
        assert_eq!(divide(&keys, 1), vec![keys.clone()], "alone: one part");
    }
}
