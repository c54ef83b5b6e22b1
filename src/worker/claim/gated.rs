//! The claim's seam for group limits ([`crate::groups::limits`]): the
//! candidates a claim took from the window pass the gate, and the jobs it
//! won hold their groups' slots.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::Document;

use super::{Claimed, Claimer, IdKey};
use crate::error::Error;
use crate::fleet::window::Key;

impl Claimer {
    /// How long the last claim through the gate of group limits took.
    pub(crate) fn gated_took(&self) -> Duration {
        self.gated_took
    }

    /// Whether the last claim found only jobs of groups at their limit
    /// (then slots free up as jobs finish: look again soon).
    pub(crate) fn at_group_limit(&self) -> bool {
        self.at_group_limit
    }

    /// Passes `candidates` through the gate of group limits, if any: the
    /// admitted are claimed, the refused go to the back of the window
    /// (their groups' slots free up as jobs finish; the jobs behind them
    /// are not held up meanwhile), or, in an ordered queue, back where they
    /// were (a group's next job must stay its first key). In an ordered
    /// queue, keys of jobs no longer pending (a peer ran them, or runs
    /// them) and of halted groups are dropped: put back, they would stay
    /// in front for ever (a halted group's jobs are read again with the
    /// next window, and dropped again until the group goes on).
    pub(super) fn gated(&mut self, candidates: Vec<Key>) -> Result<Vec<Key>, Error> {
        let Some(gate) = &self.gate else {
            return Ok(candidates);
        };
        let asked = candidates.len();
        let admitted = gate.admit(&self.queue, candidates)?;
        self.round_trips += admitted.round_trips;
        log::debug!(
            "group limits: {} of {asked} candidates admitted ({} slots granted), {} wait, {} no longer pending, {} of halted groups",
            admitted.keys.len(),
            admitted.granted.values().sum::<u32>(),
            admitted.refused.len(),
            admitted.ended,
            admitted.halted
        );
        for (group, n) in admitted.granted {
            *self.granted.entry(group).or_insert(0) += n;
        }
        if admitted.keys.is_empty() && !admitted.refused.is_empty() {
            self.at_group_limit = true;
        }
        if !admitted.refused.is_empty() || admitted.ended > 0 || admitted.halted > 0 {
            if gate.control.ordered {
                // In order, where they were: a group's next job is the
                // first of its keys in the window.
                for key in admitted.refused.into_iter().rev() {
                    self.window.push_front(key);
                }
            } else {
                self.window.extend(admitted.refused);
            }
            self.count_own();
        }
        Ok(admitted.keys)
    }

    /// Marks the claimed jobs that hold a slot of their group, and frees
    /// the slots taken that the claim did not fill.
    pub(super) fn hold_group_slots(&mut self, claimed: Option<Claimed>) -> Option<Claimed> {
        let Some(gate) = &self.gate else {
            return claimed;
        };
        let mut left = std::mem::take(&mut self.granted);
        let claimed = claimed.map(|mut claimed| {
            claimed.group_slots = claimed
                .documents
                .iter()
                .map(|document| {
                    let group = document.get_str(crate::schema::fields::GROUP).ok()?;
                    let n = left.get_mut(group).filter(|n| **n > 0)?;
                    *n -= 1;
                    Some(Arc::new((gate.control.queue.clone(), group.to_string())))
                })
                .collect();
            claimed
        });
        // Slots taken and not filled go back at once: netted into this
        // worker's next take they would stay its own, and a peer that can
        // start the group's job would find none.
        if left.values().any(|n| *n > 0) {
            gate.unfilled(&left);
            match crate::groups::limits::give_back(&self.queue, &gate.worker, &gate.slots) {
                Ok(trips) => self.round_trips += trips,
                Err(error) => log::debug!(
                    "giving back unfilled group slots failed ({error}); the control thread does"
                ),
            }
        }
        claimed
    }
}

/// The jobs a claim read back (in queue order), in the order the window
/// proposed them when that differs (groups taking turns within a
/// priority, see [`crate::groups::fair`]), so the threads start them in
/// that order; any the window did not list (a retried claim's) last.
pub(super) fn in_window_order(mut documents: Vec<Document>, candidates: &[Key]) -> Vec<Document> {
    if candidates.iter().all(|k| k.group.is_none()) {
        return documents;
    }
    let position: std::collections::HashMap<IdKey, usize> = candidates
        .iter()
        .enumerate()
        .map(|(n, k)| (IdKey::of(&k.id), n))
        .collect();
    documents.sort_by_key(|document| {
        document
            .get("_id")
            .and_then(|id| position.get(&IdKey::of(id)).copied())
            .unwrap_or(usize::MAX)
    });
    documents
}
