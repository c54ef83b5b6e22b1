//! The claim's gate for group limits: a claim of a queue with group
//! limits passes the candidates it took from the window through it. One
//! take ([`super::limits::take`]) asks slots (and rate starts) for the
//! limited groups among them; in an ordered queue one heads read
//! ([`super::ordered::heads`]) first admits only each group's head.

use std::collections::HashMap;
use std::time::Duration;

use super::limits::{take, GroupSlots, Starts, Want};
use crate::error::Error;
use crate::queue::Queue;

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
    pub(crate) keys: Vec<crate::fleet::window::Key>,
    /// The candidates of groups at their limit, in their order.
    pub(crate) refused: Vec<crate::fleet::window::Key>,
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

impl Gate {
    /// Takes slots for the limited groups among `candidates` (one round
    /// trip for all of them, one to read the grants) and splits the
    /// candidates into those admitted and those refused.
    pub(crate) fn admit(
        &self,
        queue: &Queue,
        candidates: Vec<crate::fleet::window::Key>,
    ) -> Result<Admitted, Error> {
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
        let may_ask = |key: &crate::fleet::window::Key| match (&heads, key.group.as_deref()) {
            (Some(heads), Some(group)) => heads.get(group).is_some_and(|head| {
                head.id == key.id && head.status == crate::schema::Status::Pending.as_str()
            }),
            _ => true,
        };
        // A key whose job is no longer pending: its group has no head, or
        // the head comes after it, or it is the head and running (a peer
        // claimed it) or failed. The window is only a list of candidates:
        // a job dropped from it that is pending after all is read again.
        let ended = |key: &crate::fleet::window::Key| match (&heads, key.group.as_deref()) {
            (Some(heads), Some(group)) => heads.get(group).is_none_or(|head| {
                head.is_after(key)
                    || (head.id == key.id && head.status != crate::schema::Status::Pending.as_str())
            }),
            _ => false,
        };
        let halted = |key: &crate::fleet::window::Key| match (&heads, key.group.as_deref()) {
            (Some(heads), Some(group)) => heads
                .get(group)
                .is_some_and(|head| head.status == crate::schema::Status::Failed.as_str()),
            _ => false,
        };
        let mut wanted: Vec<Want> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for key in candidates.iter().filter(|k| may_ask(k)) {
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
            if !may_ask(&key) {
                if ended(&key) {
                    gone += 1;
                } else if halted(&key) {
                    stopped += 1;
                } else {
                    refused.push(key);
                }
                continue;
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
