//! The read-ahead window on the claim path: filling it with what the
//! reader read (alone, or from the window a peer shared), and deciding
//! when the reader must read it again. The reads themselves are the
//! reader's ([`super::reader`]).

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use super::reader::{any_eligible, Answer, Ask, Found};
use super::{Claimer, IdKey, Idle, WINDOW_LIFETIME};
use crate::error::Error;
use crate::fleet::window::{Key, Published};
use crate::queue::filters::queue_condition;
use crate::schema::{fields, Status};

/// The duty of the fleet's check for a higher priority (see [`Share::leads`]).
const PRIORITY_CHECK: &str = "priority check";

/// What the window needs now.
#[derive(Debug, PartialEq)]
pub(super) enum Freshness {
    /// Nothing: claim from it.
    Fresh,
    /// A look for an eligible job above its head (this rank).
    CheckAbove(Bson),
    /// A new read: it is old, or low, or a peer published a newer one.
    Reread,
}

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

    /// Fills the window with up to `limit` keys, waiting for the reader:
    /// the window is empty (or used up) and nothing else can be claimed.
    /// A read already under way is waited for rather than asked again.
    pub(super) fn refill(&mut self, limit: usize) -> Result<(), Error> {
        if self.share.part().1 > 1 && self.widen()? {
            return Ok(());
        }
        // A look above the head under way may answer that there is nothing
        // above: then the window is still empty, and a read is asked.
        for _ in 0..2 {
            if !self.reader.busy() {
                self.ask_reader(limit, None);
            }
            let Some(answer) = self.reader.wait() else {
                return Err(crate::error::Error::Invalid(
                    "the claim's read-ahead thread stopped; restart the worker".into(),
                ));
            };
            let looked = matches!(answer.found, Ok(Found::NothingAbove));
            self.take_answer(answer)?;
            if !looked {
                break;
            }
        }
        Ok(())
    }

    /// Asks the reader for a window of up to `limit` keys (only if a job
    /// ranks above `above`, when given) while claims go on.
    pub(super) fn ask_reader(&mut self, limit: usize, above: Option<Bson>) {
        self.during_read.clear();
        // The look above the head also looks for groups the window does
        // not list (see `crate::groups::fair`).
        let groups = above.as_ref().and(self.window_groups.clone());
        self.reader.ask(Ask {
            limit,
            seen: self.seen,
            above,
            groups,
        });
    }

    /// Takes in a finished read, if one is: the window it found replaces
    /// the current one.
    pub(super) fn collect_read(&mut self) -> Result<(), Error> {
        match self.reader.ready() {
            Some(answer) => self.take_answer(answer),
            None => Ok(()),
        }
    }

    fn take_answer(&mut self, answer: Answer) -> Result<(), Error> {
        self.round_trips += answer.round_trips;
        self.seen = self.seen.max(answer.seen);
        let read_at = answer.asked_at;
        // Jobs claimed while the read was under way may still be listed.
        let during = std::mem::take(&mut self.during_read);
        let unclaimed = |keys: Vec<Key>| -> Vec<Key> {
            if during.is_empty() {
                keys
            } else {
                keys.into_iter()
                    .filter(|k| !during.contains(&IdKey::of(&k.id)))
                    .collect()
            }
        };
        match answer.found? {
            Found::Keys { keys, full, groups } => {
                let keys = unclaimed(keys);
                self.fill(keys, full, read_at, None);
                self.window_groups = groups;
            }
            Found::Adopted(mut published) => {
                published.keys = unclaimed(published.keys);
                self.window_groups = published.groups.take();
                self.adopt(published);
            }
            Found::NothingAbove => {}
        }
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
        // Groups take turns from the one served longest ago (a window
        // without groups is left as read); in an ordered queue each group's
        // keys are in its own order (see `crate::groups::ordered`).
        let weights = self.gate.as_ref().map(|gate| &gate.control);
        let keys = self.turns.order(keys, &|group: &Option<String>| match (
            weights,
            group.as_deref(),
        ) {
            (Some(control), Some(group)) => control.group_weight(group),
            _ => 1,
        });
        let keys = if self.gate.as_ref().is_some_and(|gate| gate.control.ordered) {
            crate::groups::ordered::in_group_order(keys)
        } else {
            keys
        };
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

    /// Whether any job is eligible at all (one index seek, one `_id`
    /// returned): what an idle worker asks before it reads a window again.
    pub(super) fn anything(&mut self) -> Result<bool, Error> {
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
        self.round_trips += 1;
        any_eligible(
            &self.queue,
            &self.queues,
            also,
            crate::queue::CLAIM_INDEX,
            what,
        )
    }

    /// What the window needs: every `max_window_age` a look for an
    /// eligible job of a higher priority than its head, which would have to
    /// run first; a new read once it is older than its lifetime (see
    /// [`Claimer::lifetime`]). With peers, the look is the fleet's: each
    /// worker looks whether a peer published a newer window (one `_id`
    /// lookup), and the one that leads the look asks its reader.
    pub(super) fn freshness(&mut self) -> Result<Freshness, Error> {
        if self.window_checked_at.elapsed() <= self.max_window_age {
            return Ok(Freshness::Fresh);
        }
        self.window_checked_at = Instant::now();
        if self.window_read_at.elapsed() > self.lifetime() {
            return Ok(Freshness::Reread);
        }
        let Some(head) = self.window.front().map(|k| k.rank.clone()) else {
            return Ok(Freshness::Reread);
        };
        if self.share.part().1 > 1 {
            let epoch = self.shared.epoch()?;
            self.round_trips += 1;
            if epoch > self.seen {
                return Ok(Freshness::Reread);
            }
            if !self.share.leads(PRIORITY_CHECK) {
                return Ok(Freshness::Fresh);
            }
        }
        Ok(Freshness::CheckAbove(head))
    }

    /// How long a window is claimed from before it is read again: at least
    /// [`WINDOW_LIFETIME`], and four times what the last read took, so
    /// reading costs at most a quarter of the reader's time however long
    /// the backlog makes a read.
    pub(super) fn lifetime(&self) -> Duration {
        WINDOW_LIFETIME.max(self.reader.last_took * 4)
    }
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
