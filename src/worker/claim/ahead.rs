//! The read-ahead: filling the window (alone, or from the window a peer
//! shared), and deciding when it must be read again.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

use super::write::is_number;
use super::{Claimer, IdKey, Idle, WINDOW_BYTES, WINDOW_LIFETIME};
use crate::error::Error;
use crate::fleet::share::part_of;
use crate::fleet::window::{Key, Published};
use crate::queue::filters::{eligible_in, queue_condition};
use crate::schema::{fields, integer, Status};
use crate::worker::claim::keys::{key_of, key_projection, priority_ranges};

/// While a peer reads the shared window, look for what it published this
/// often, at most [`TURN_WAITS`] times before reading for ourselves.
const TURN_WAIT: Duration = Duration::from_millis(50);
const TURN_WAITS: u32 = 40;

/// The duty of the fleet's check for a higher priority (see [`Share::leads`]).
const PRIORITY_CHECK: &str = "priority check";

/// The duty of failing unroutable pending jobs (see [`super::Upkeep`]),
/// which an idle worker does only when it leads it among its peers.
const UPKEEP: &str = "upkeep";

impl Claimer {
    /// With this worker's part of the window used up: whether a read would
    /// find more than the others' jobs left in it (the read stopped at its
    /// limit, or a peer published a newer window since).
    pub(super) fn more_beyond(&mut self) -> Result<bool, Error> {
        if self.full {
            return Ok(true);
        }
        let epoch = self.shared.epoch()?;
        self.round_trips += 1;
        Ok(epoch > self.seen)
    }

    /// Fills the window with up to `limit` keys. A worker alone reads the
    /// queue. One with peers takes the window a peer published since the
    /// last it saw, if that is fresh; else it takes the reader's turn,
    /// reads and publishes; while a peer has the turn, it waits for what
    /// that peer publishes (reading for itself if that takes too long).
    pub(super) fn refill(&mut self, limit: usize) -> Result<(), Error> {
        if self.share.part().1 > 1 {
            if self.widen()? {
                return Ok(());
            }
            let mut waits = 0;
            loop {
                let (newer, trips) = self.shared.newer(self.seen, self.share.part().0)?;
                self.round_trips += trips;
                if let Some(published) = newer {
                    self.seen = published.epoch;
                    if self
                        .queue
                        .clock()
                        .now()
                        .saturating_duration_since(published.read_at)
                        < WINDOW_LIFETIME
                    {
                        self.adopt(published);
                        return Ok(());
                    }
                }
                if waits == 0 || waits >= TURN_WAITS {
                    let turn = self.shared.take_turn(self.seen)?;
                    self.round_trips += 1;
                    if turn {
                        let (keys, full) = self.read_keys(limit)?;
                        let parts = divide(&keys, self.share.part().1);
                        let (epoch, trips) = self.shared.publish(&parts, full)?;
                        self.round_trips += trips;
                        self.seen = epoch.unwrap_or(self.seen);
                        // The reader keeps the whole window: its own part
                        // first, then a share of the others' (see `take`).
                        self.fill(keys, full, Instant::now(), None);
                        return Ok(());
                    }
                    if waits >= TURN_WAITS {
                        break;
                    }
                }
                waits += 1;
                std::thread::sleep(TURN_WAIT);
            }
            log::debug!("a peer's read of the shared window is slow; reading for this worker");
        }
        let (keys, full) = self.read_keys(limit)?;
        self.fill(keys, full, Instant::now(), None);
        Ok(())
    }

    /// With this worker's part of a peer's window used up and nothing known
    /// beyond the window: takes the next peer's part, to claim a share of
    /// its jobs from the end (its owner works from the head), rather than
    /// reading the queue again. A read would find the same jobs divided the
    /// same way, and on servers where a query's price grows with what its
    /// range ever held, a read at the end of a drain costs what one at its
    /// start did. Returns whether it took one.
    fn widen(&mut self) -> Result<bool, Error> {
        let Some(mut next) = self.next_part.take() else {
            return Ok(false);
        };
        if self.full {
            return Ok(false);
        }
        let epoch = self.shared.epoch()?;
        self.round_trips += 1;
        if epoch > self.seen {
            return Ok(false);
        }
        while next.rank != next.own {
            let rank = next.rank;
            next.rank = (next.rank + 1) % next.of;
            let part = self.shared.part(&next.token, rank)?;
            self.round_trips += 1;
            match part {
                Some(keys) if !keys.is_empty() => {
                    let read_at = next.read_at;
                    self.fill(keys, false, read_at, None);
                    self.next_part = Some(next);
                    return Ok(true);
                }
                Some(_) => {}
                // A newer window replaced it.
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Takes this worker's part of a window a peer published (the jobs it
    /// lists that this worker has claimed since are no longer pending and
    /// simply lose).
    pub(super) fn adopt(&mut self, published: Published) {
        let age = self
            .queue
            .clock()
            .now()
            .saturating_duration_since(published.read_at);
        let read_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let (own, of) = published.part;
        let next = NextPart {
            token: published.token.clone(),
            own,
            of,
            rank: (own + 1) % of,
            read_at,
        };
        // The peer read before this worker claimed some of its jobs.
        let taken = std::mem::take(&mut self.taken);
        let keys = if taken.is_empty() {
            published.keys
        } else {
            published
                .keys
                .into_iter()
                .filter(|k| !taken.contains(&IdKey::of(&k.id)))
                .collect()
        };
        self.fill(keys, published.full, read_at, Some(published.part));
        self.next_part = Some(next);
    }

    /// Makes `keys` the window: a whole read (`part` None), or the part of
    /// a published one that is this worker's. A read this worker made
    /// itself is current: a job it claimed and handed back since (a pause,
    /// say) is listed again, rightly, so the set of jobs taken starts over
    /// unfiltered.
    pub(super) fn fill(
        &mut self,
        keys: Vec<Key>,
        full: bool,
        read_at: Instant,
        part: Option<(usize, usize)>,
    ) {
        self.taken.clear();
        self.window = keys.into();
        self.adopted = part;
        self.next_part = None;
        self.full = full;
        self.count_own();
        if self.window.is_empty() {
            if self.idle == Idle::Working {
                self.idle = Idle::NothingEligible;
                self.pending_checked_at = None;
            }
        } else {
            self.idle = Idle::Working;
        }
        self.window_read_at = read_at;
        self.window_checked_at = Instant::now();
        self.contended = 0;
    }

    /// Reads up to `limit` keys of eligible jobs in queue order, in four
    /// ranges of the claim index (see [`priority_ranges`]), so a job without
    /// a `priority` sorts as 0 without a write to give it one. Returns them
    /// and whether the read stopped at its limit.
    pub(super) fn read_keys(&mut self, limit: usize) -> Result<(Vec<Key>, bool), Error> {
        // The upkeep's filter ranges over every pending job: one peer of the
        // fleet runs it, not each that reads.
        if self.share.leads(UPKEEP) {
            self.round_trips += self.upkeep.run(&self.queue)?;
        }
        let mut keys = Vec::new();
        let mut bytes = 0;
        let mut full = false;
        for (priority, order) in priority_ranges() {
            let wanted = limit - keys.len();
            if wanted == 0 || bytes > WINDOW_BYTES {
                full = true;
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
                .projection(key_projection())
                .limit(wanted as i64)
                .batch_size(10_000)
                .run()
                .map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
            self.round_trips += 1;
            for raw in cursor {
                let raw = raw.map_err(|e| self.queue.db_error("find (claim read-ahead)", &e))?;
                bytes += raw.as_bytes().len();
                let (key, attempts) = key_of(&raw);
                if is_number(&attempts) {
                    keys.push(key);
                } else {
                    // `$inc` would fail on it and stop the whole claim.
                    self.fail_unclaimable(key.id, Some(&attempts))?;
                }
                if bytes > WINDOW_BYTES {
                    // Dropping the cursor ends the query on the server.
                    full = true;
                    break;
                }
            }
        }
        let full = full || keys.len() >= limit;
        Ok((keys, full))
    }

    /// Whether any job is eligible at all (one index seek, one `_id`
    /// returned): what an idle worker asks before it reads a window again.
    pub(super) fn anything(&mut self) -> Result<bool, Error> {
        if self.share.leads(UPKEEP) {
            self.round_trips += self.upkeep.run(&self.queue)?;
        }
        self.any_eligible(Document::new(), "find (any eligible job)")
    }

    /// Whether any job of these queues is pending, eligible or not (one
    /// index seek, one `_id` returned).
    pub(super) fn any_pending(&mut self) -> Result<bool, Error> {
        let found = self
            .queue
            .collection()
            .find_one(doc! {
                fields::STATUS: Status::Pending,
                fields::QUEUE: queue_condition(&self.queues),
            })
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (any pending job)", &e))?;
        self.round_trips += 1;
        Ok(found.is_some())
    }

    /// Whether an eligible job also matching `also` exists: one index seek,
    /// one `_id` returned.
    pub(super) fn any_eligible(
        &mut self,
        also: Document,
        what: &'static str,
    ) -> Result<bool, Error> {
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

    /// Whether the window must be read again: every `max_window_age` it is
    /// checked for an eligible job of a higher priority than its head (one
    /// index seek, nothing returned when there is none), which would have
    /// to run first; and it is read again anyway once it is
    /// [`WINDOW_LIFETIME`] old. With peers, the check is the fleet's: each
    /// worker looks whether a peer published a newer window (one `_id`
    /// lookup), and the one that leads the check makes the seek.
    pub(super) fn aged(&mut self) -> Result<bool, Error> {
        if self.window_checked_at.elapsed() <= self.max_window_age {
            return Ok(false);
        }
        self.window_checked_at = Instant::now();
        if self.window_read_at.elapsed() > WINDOW_LIFETIME {
            return Ok(true);
        }
        let Some(head) = self.window.front().map(|k| k.rank.clone()) else {
            return Ok(true);
        };
        if self.share.part().1 > 1 {
            let epoch = self.shared.epoch()?;
            self.round_trips += 1;
            if epoch > self.seen {
                return Ok(true);
            }
            if !self.share.leads(PRIORITY_CHECK) {
                return Ok(false);
            }
        }
        let above = doc! {fields::PRIORITY: {"$gt": head.clone()}};
        let above = if integer(&head).is_some_and(|n| n < 0) {
            // Below 0, a job without a priority (ranked 0) is above too.
            doc! {"$or": [above, {fields::PRIORITY: Bson::Null}]}
        } else {
            above
        };
        self.any_eligible(above, "find (higher priority)")
    }
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

/// The peers' parts of an adopted window that this worker has not yet
/// helped with (see [`Claimer::widen`]).
pub(super) struct NextPart {
    token: Bson,
    /// This worker's own part, where the round ends, and the division.
    own: usize,
    of: usize,
    /// The next part to take.
    rank: usize,
    /// When the window was read.
    read_at: Instant,
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
