//! The claim's gate for group limits: a claim of a queue with group
//! limits passes the candidates it took from the window through it. One
//! take ([`super::limits::take`]) asks slots (and rate starts) for the
//! limited groups among them; in an ordered queue one heads read
//! ([`super::ordered::heads`]) first admits only each group's head.

use std::collections::HashMap;
use std::time::Duration;

use super::limits::{take, GroupSlots, Starts, Want};
use super::ordered::Head;
use crate::error::Error;
use crate::fleet::window::Key;
use crate::queue::Queue;
use crate::schema::Status;

/// What a claim of a queue with group limits passes its candidates
/// through: it takes slots for their limited groups and admits each
/// group's jobs up to the slots granted.
pub(crate) struct Gate {
    /// The queue's control, with its group limits.
    pub(crate) control: crate::queue::control::QueueControl,
    pub(crate) worker: String,
    pub(crate) lease: Duration,
    pub(crate) slots: std::sync::Arc<GroupSlots>,
    /// When the claim's jobs start, for the groups' rates.
    pub(crate) starts: Option<Starts>,
}

/// What [`Gate::admit`] decided.
pub(crate) struct Admitted {
    /// The candidates to claim, in their order.
    pub(crate) keys: Vec<Key>,
    /// The candidates of groups at their limit, in their order.
    pub(crate) refused: Vec<Key>,
    /// Candidates of an ordered queue whose jobs are no longer pending
    /// (they ended, or a peer runs them) since the window was read:
    /// dropped from the window, or they would wait at its front for ever.
    pub(crate) ended: usize,
    /// Candidates of halted ordered groups (their head failed for good):
    /// dropped from the window too, as nothing of theirs can start until
    /// an operator retries or cancels the failed job.
    pub(crate) halted: usize,
    /// Slots granted, by group.
    pub(crate) granted: HashMap<String, u32>,
    pub(crate) round_trips: u64,
}

/// Where a candidate stands in its ordered group (any candidate of a
/// queue that is not ordered, or of no group, may start: `Head`).
enum Standing {
    /// Its group's head, pending: it may ask for a slot.
    Head,
    /// No longer pending since the window was read: dropped.
    Ended,
    /// Behind a head that failed for good: dropped.
    Halted,
    /// Behind a pending or running head: it waits.
    Behind,
}

impl Standing {
    /// Where `key` stands against its group's head in `heads` (`None`: the
    /// queue is not ordered). A key whose job is no longer pending has
    /// ended: its group has no head, or the head comes after it, or it is
    /// the head and running (a peer claimed it) or failed. The window is
    /// only a list of candidates: a job dropped from it that is pending
    /// after all is read again.
    fn of(heads: Option<&HashMap<String, Head>>, key: &Key) -> Standing {
        let (Some(heads), Some(group)) = (heads, key.group.as_deref()) else {
            return Standing::Head;
        };
        let Some(head) = heads.get(group) else {
            return Standing::Ended;
        };
        if head.id == key.id {
            if head.status == Status::Pending.as_str() {
                Standing::Head
            } else {
                Standing::Ended
            }
        } else if head.is_after(key) {
            Standing::Ended
        } else if head.status == Status::Failed.as_str() {
            Standing::Halted
        } else {
            Standing::Behind
        }
    }
}

impl Gate {
    /// Takes slots for the limited groups among `candidates` (one round
    /// trip for all of them, one to read the grants) and splits the
    /// candidates into those admitted and those refused.
    pub(crate) fn admit(&self, queue: &Queue, candidates: Vec<Key>) -> Result<Admitted, Error> {
        let mut round_trips = 0;
        // Ordered: only a group's head may start (see `super::ordered`), so
        // slots are asked for heads only.
        let heads = if self.control.ordered {
            let mut groups: Vec<String> =
                candidates.iter().filter_map(|k| k.group.clone()).collect();
            groups.sort();
            groups.dedup();
            round_trips += 1;
            Some(super::ordered::heads(
                queue,
                &self.control.queue,
                &groups,
                self.control.continue_on_failure,
            )?)
        } else {
            None
        };
        let standing = |key: &Key| Standing::of(heads.as_ref(), key);
        let mut wanted: Vec<Want> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for key in candidates
            .iter()
            .filter(|k| matches!(standing(k), Standing::Head))
        {
            let Some(group) = key.group.as_deref().filter(|g| self.limited(g)) else {
                continue;
            };
            if let Some(&at) = index.get(group) {
                wanted[at].jobs += 1;
            } else {
                index.insert(group, wanted.len());
                wanted.push(Want {
                    group: group.to_string(),
                    jobs: 1,
                    limit: self.control.group_limit(group),
                    rate: self.control.group_rate_of(group),
                });
            }
        }
        let (granted, trips) = take(
            queue,
            &self.control.queue,
            &wanted,
            &self.worker,
            &self.slots,
            self.lease,
            self.starts,
        )?;
        round_trips += trips;
        let mut left = granted.clone();
        let mut keys = Vec::with_capacity(candidates.len());
        let mut refused = Vec::new();
        let mut gone = 0;
        let mut stopped = 0;
        for key in candidates {
            match standing(&key) {
                Standing::Head => {}
                Standing::Ended => {
                    gone += 1;
                    continue;
                }
                Standing::Halted => {
                    stopped += 1;
                    continue;
                }
                Standing::Behind => {
                    refused.push(key);
                    continue;
                }
            }
            let limited = key.group.as_deref().filter(|group| self.limited(group));
            match limited {
                None => keys.push(key),
                Some(group) => match left.get_mut(group) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        keys.push(key);
                    }
                    _ => refused.push(key),
                },
            }
        }
        Ok(Admitted {
            keys,
            refused,
            ended: gone,
            halted: stopped,
            granted,
            round_trips,
        })
    }

    /// Whether `group` has a limit (a concurrency limit or a rate).
    fn limited(&self, group: &str) -> bool {
        self.control.group_limit(group).is_some() || self.control.group_rate_of(group).is_some()
    }

    /// Frees the slots granted that the claim did not fill (`left`, by
    /// group).
    pub(crate) fn unfilled(&self, left: &HashMap<String, u32>) {
        for (group, n) in left {
            self.slots.free(&self.control.queue, group, *n);
        }
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::Bson;

    use super::*;

    #[test]
    fn a_candidate_stands_as_its_groups_head_says() {
        let key = |id: i64, group: Option<&str>| Key {
            id: Bson::Int64(id),
            rank: Bson::Int32(0),
            group: group.map(str::to_string),
        };
        let head = |id: i64, status: &str| Head {
            id: Bson::Int64(id),
            status: status.into(),
            rank: Bson::Int32(0),
        };
        let is = |heads: Option<&HashMap<String, Head>>, k: &Key| match Standing::of(heads, k) {
            Standing::Head => "head",
            Standing::Ended => "ended",
            Standing::Halted => "halted",
            Standing::Behind => "behind",
        };
        // Not ordered, or no group: any candidate may start.
        assert_eq!(is(None, &key(1, Some("a"))), "head");
        let mut heads = HashMap::from([("a".to_string(), head(5, "pending"))]);
        assert_eq!(is(Some(&heads), &key(1, None)), "head");
        assert_eq!(is(Some(&heads), &key(5, Some("a"))), "head");
        assert_eq!(is(Some(&heads), &key(6, Some("a"))), "behind");
        assert_eq!(is(Some(&heads), &key(4, Some("a"))), "ended");
        assert_eq!(is(Some(&heads), &key(1, Some("b"))), "ended", "no head");
        heads.insert("a".into(), head(5, "running"));
        assert_eq!(is(Some(&heads), &key(5, Some("a"))), "ended");
        assert_eq!(is(Some(&heads), &key(6, Some("a"))), "behind");
        heads.insert("a".into(), head(5, "failed"));
        assert_eq!(is(Some(&heads), &key(5, Some("a"))), "ended");
        assert_eq!(is(Some(&heads), &key(6, Some("a"))), "halted");
    }
}
