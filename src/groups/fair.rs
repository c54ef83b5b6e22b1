//! Fair share between a queue's groups: what the claim's read-ahead does
//! with the keys it read so that, within one priority, starts go
//! round-robin among the groups with eligible jobs.
//!
//! The claim takes jobs from the head of its window, so fairness is a
//! matter of what the window holds and in what order:
//!
//! 1. **Every busy group in the window.** A read in queue order can be
//!    filled by one group (a customer's 500,000-job import enqueued first).
//!    When a read stopped at its limit, the reader reads again for the
//!    groups it has not met ([`others`]: the jobs whose `group` is a string
//!    and none of those), up to [`PASSES`] times, keeping only what ranks
//!    at or above where the first read stopped ([`at_or_above`]): a job of
//!    a lower priority waits for the unread jobs above it, as always.
//! 2. **Round-robin within a priority.** [`interleave`] orders each run of
//!    one rank group by group: the first job of every group, then the
//!    second of every group, and so on, groups in the order the read met
//!    them, each group's jobs in queue order. The window is divided among
//!    the peers by `_id` (each part keeps this order), and every claim takes
//!    a batch from the head, so a batch of 500 holds the next job of up to
//!    500 groups: claims stay one `updateMany` each.
//! 3. **New groups noticed within a second.** The fleet's look for a
//!    higher priority (every `max_window_age`, by one worker) also looks
//!    for an eligible job, at or above the window's head rank, of a group
//!    the window does not list ([`new_group`]); one re-reads the window.
//!
//! The rule, then: with `G` groups holding eligible jobs of the head
//! priority, each gets one start in every `G` from the window, as long as
//! the window holds one of its jobs; a group the window missed (it had
//! none eligible at the read, or more than `PASSES` reads' worth of other
//! groups came first) is in the next window, at most a window's lifetime
//! later, and within about a second if it is new. A queue whose jobs carry
//! no group reads nothing more: the extra reads are made only when the
//! first stopped at its limit and the reader met a named group within
//! [`GROUPS_REMEMBERED`] (in a read, or in the look for new groups, which is how
//! groups behind a backlog without groups are noticed: within a look).
//!
//! The default group (jobs without a `group`) takes its turn like any
//! group when the read meets it; the extra reads look for named groups
//! only (no index can find jobs *without* a field past a named group's
//! backlog cheaply), so a service that wants every job's share names a
//! group for every job.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};

use crate::fleet::window::Key;
use crate::schema::fields;

/// The most extra reads for groups the first read did not meet.
pub(crate) const PASSES: usize = 3;

/// How long a reader that met a named group (in a read, or in the look
/// for new groups) keeps making the extra reads behind a full first read;
/// a reader that has met none for this long makes none, so a queue
/// without groups costs what it did before groups.
pub(crate) const GROUPS_REMEMBERED: Duration = Duration::from_secs(60);

/// The most group names a window lists for the look for new groups (a
/// window with more is re-read at its lifetime instead: it is broad
/// already).
pub(crate) const LISTED_GROUPS: usize = 1_000;

/// The filter of an extra read: jobs of named groups other than `met`
/// (the default group, jobs without a string `group`, is never extra: the
/// first read is in plain queue order and meets it if it is at the head).
pub(crate) fn others(met: &[String]) -> Document {
    doc! {fields::GROUP: {"$type": "string", "$nin": met}}
}

/// The filter of the look for a new group: an eligible job, of a group
/// not in `listed`, ranking at or above `head`.
pub(crate) fn new_group(listed: &[String], head: &Bson) -> Document {
    let mut filter = others(listed);
    if let Some(n) = crate::schema::integer(head) {
        let at_or_above = doc! {fields::PRIORITY: {"$gte": n}};
        if n <= 0 {
            // A job without a priority ranks as 0.
            filter.insert(
                "$or",
                vec![
                    Bson::Document(at_or_above),
                    Bson::Document(doc! {fields::PRIORITY: Bson::Null}),
                ],
            );
        } else {
            filter.extend(at_or_above);
        }
    }
    filter
}

/// The named groups of `keys`, in the order they first appear.
pub(crate) fn named(keys: &[Key]) -> Vec<String> {
    let mut seen = HashSet::new();
    keys.iter()
        .filter_map(|k| k.group.as_deref())
        .filter(|g| seen.insert(*g))
        .map(str::to_string)
        .collect()
}

/// `extra` without the keys that rank below `floor` (the last rank of a
/// read that stopped at its limit: unread jobs of that rank or above come
/// before anything lower).
pub(crate) fn at_or_above(extra: Vec<Key>, floor: &Bson) -> Vec<Key> {
    extra
        .into_iter()
        .filter(|k| rank_order(&k.rank, floor) != std::cmp::Ordering::Greater)
        .collect()
}

/// `keys` (in queue order) with `extra` (in queue order, ranks at or above
/// the last of `keys`) merged in, each run of one rank ordered
/// round-robin by group (see the module's notes).
pub(crate) fn merge(mut keys: Vec<Key>, extra: Vec<Key>) -> Vec<Key> {
    if !extra.is_empty() {
        keys.extend(extra);
        // Stable: each read's keys keep their order within a rank.
        keys.sort_by(|a, b| rank_order(&a.rank, &b.rank));
    }
    interleave(keys)
}

/// Orders each run of equal rank round-robin by group, groups in the order
/// the keys meet them.
pub(crate) fn interleave(keys: Vec<Key>) -> Vec<Key> {
    interleave_by(keys, |_| 0, &|_| 1)
}

/// Which group's turn comes first when a window is read again: a claimer
/// remembers when it last took a job of each group, and orders each round
/// of its new window from the group it served longest ago (a group it
/// never served first). Without it, every new window would start its
/// round with the same groups (those whose jobs are oldest), and they
/// would get one more start per window than the rest.
#[derive(Default)]
pub(crate) struct Turns {
    taken: u64,
    last: HashMap<Option<String>, u64>,
}

/// Groups a claimer remembers at most (those served longest ago are
/// forgotten first: they go first anyway, as new groups do).
const REMEMBERED: usize = 20_000;

impl Turns {
    /// Notes the groups of the jobs a claim took, in the order taken.
    pub(crate) fn took(&mut self, keys: &[Key]) {
        if keys.iter().all(|k| k.group.is_none()) && self.last.is_empty() {
            return;
        }
        for key in keys {
            self.taken += 1;
            self.last.insert(key.group.clone(), self.taken);
        }
        if self.last.len() > REMEMBERED {
            let mut ages: Vec<u64> = self.last.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() - REMEMBERED / 2];
            self.last.retain(|_, at| *at >= cut);
        }
    }

    /// `keys` (a window, in queue order or already interleaved) with each
    /// rank's groups taking turns from the one served longest ago.
    /// Each group takes `weight(group)` turns in a row per round (a
    /// weight set with `mongoq limit QUEUE --group NAME --weight N`).
    pub(crate) fn order(
        &self,
        keys: Vec<Key>,
        weight: &dyn Fn(&Option<String>) -> u32,
    ) -> Vec<Key> {
        interleave_by(
            keys,
            |group| self.last.get(group).copied().unwrap_or(0),
            weight,
        )
    }
}

/// [`interleave`], each round's groups ordered by `turn` (lowest first;
/// ties in the order the keys meet them).
fn interleave_by(
    keys: Vec<Key>,
    turn: impl Fn(&Option<String>) -> u64,
    weight: &dyn Fn(&Option<String>) -> u32,
) -> Vec<Key> {
    if keys.iter().all(|k| k.group.is_none()) {
        return keys;
    }
    let mut out = Vec::with_capacity(keys.len());
    let mut run: Vec<Key> = Vec::new();
    for key in keys {
        if run.first().is_some_and(|first| first.rank != key.rank) {
            round_robin(std::mem::take(&mut run), &turn, weight, &mut out);
        }
        run.push(key);
    }
    round_robin(run, &turn, weight, &mut out);
    out
}

/// Appends `run` (one rank) to `out`, one job of each group per round,
/// each group's jobs in the order `run` lists them.
fn round_robin(
    run: Vec<Key>,
    turn: &dyn Fn(&Option<String>) -> u64,
    weight: &dyn Fn(&Option<String>) -> u32,
    out: &mut Vec<Key>,
) {
    let mut order: Vec<Option<String>> = Vec::new();
    let mut by_group: HashMap<Option<String>, std::collections::VecDeque<Key>> = HashMap::new();
    for key in run {
        let group = key.group.clone();
        by_group
            .entry(group.clone())
            .or_insert_with(|| {
                order.push(group);
                std::collections::VecDeque::new()
            })
            .push_back(key);
    }
    order.sort_by_key(|group| turn(group));
    while !order.is_empty() {
        order.retain(|group| {
            let queue = by_group.get_mut(group).expect("listed");
            for _ in 0..weight(group).max(1) {
                if let Some(key) = queue.pop_front() {
                    out.push(key);
                }
            }
            !queue.is_empty()
        });
    }
}

/// Two ranks in queue order: one that is not a number first (such jobs
/// are claimed only to be failed), then numbers from the highest.
fn rank_order(a: &Bson, b: &Bson) -> std::cmp::Ordering {
    fn sort_key(rank: &Bson) -> (u8, f64) {
        match rank {
            Bson::Int32(n) => (1, -f64::from(*n)),
            #[allow(clippy::cast_precision_loss)]
            Bson::Int64(n) => (1, -(*n as f64)),
            Bson::Double(x) if !x.is_nan() => (1, -x),
            Bson::Double(_) => (1, f64::INFINITY),
            Bson::Null => (1, 0.0),
            _ => (0, 0.0),
        }
    }
    let (a, b) = (sort_key(a), sort_key(b));
    a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64, rank: i64, group: Option<&str>) -> Key {
        Key {
            id: Bson::Int64(id),
            rank: Bson::Int64(rank),
            group: group.map(str::to_string),
        }
    }

    fn ids(keys: &[Key]) -> Vec<i64> {
        keys.iter().map(|k| k.id.as_i64().unwrap()).collect()
    }

    #[test]
    fn a_run_of_one_rank_goes_round_robin_and_ranks_stay_in_order() {
        let keys = vec![
            key(1, 5, Some("big")),
            key(2, 5, Some("big")),
            key(3, 5, Some("big")),
            key(4, 5, Some("a")),
            key(5, 5, None),
            key(6, 5, Some("a")),
            key(7, 0, Some("big")),
            key(8, 0, Some("b")),
        ];
        assert_eq!(ids(&interleave(keys)), vec![1, 4, 5, 2, 6, 3, 7, 8]);
        let plain = vec![key(1, 0, None), key(2, 0, None)];
        assert_eq!(ids(&interleave(plain)), vec![1, 2], "no groups: as read");
    }

    #[test]
    fn a_new_window_starts_its_round_with_the_group_served_longest_ago() {
        let window = || {
            vec![
                key(1, 0, Some("big")),
                key(2, 0, Some("big")),
                key(3, 0, Some("a")),
                key(4, 0, Some("b")),
            ]
        };
        let mut turns = Turns::default();
        let even = |_: &Option<String>| 1;
        assert_eq!(ids(&turns.order(window(), &even)), vec![1, 3, 4, 2]);
        turns.took(&[key(1, 0, Some("big")), key(3, 0, Some("a"))]);
        // "b" was never served, then "big" before "a".
        assert_eq!(ids(&turns.order(window(), &even)), vec![4, 1, 3, 2]);
        // A weight of 2: two turns in a row per round.
        let heavy = |g: &Option<String>| if g.as_deref() == Some("big") { 2 } else { 1 };
        assert_eq!(
            ids(&Turns::default().order(window(), &heavy)),
            vec![1, 2, 3, 4]
        );
        let mut plain = Turns::default();
        plain.took(&[key(1, 0, None)]);
        assert!(
            plain.last.is_empty(),
            "a queue without groups keeps nothing"
        );
    }

    #[test]
    fn extra_keys_merge_by_rank_and_stop_at_the_floor() {
        let read = vec![key(1, 3, Some("big")), key(2, 0, Some("big"))];
        let extra = vec![
            key(10, 3, Some("a")),
            key(11, 0, Some("a")),
            key(12, -1, Some("a")),
        ];
        let extra = at_or_above(extra, &Bson::Int64(0));
        assert_eq!(ids(&extra), vec![10, 11], "below the floor waits");
        assert_eq!(ids(&merge(read, extra)), vec![1, 10, 2, 11]);
    }

    #[test]
    fn a_rank_that_is_not_a_number_comes_first() {
        assert_eq!(
            rank_order(&Bson::String("x".into()), &Bson::Int64(9)),
            std::cmp::Ordering::Less
        );
        assert_eq!(
            rank_order(&Bson::Int64(9), &Bson::Double(1.5)),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn the_groups_a_window_met_are_listed_once_in_order() {
        let keys = vec![
            key(1, 0, Some("b")),
            key(2, 0, None),
            key(3, 0, Some("a")),
            key(4, 0, Some("b")),
        ];
        assert_eq!(named(&keys), vec!["b".to_string(), "a".to_string()]);
        let look = new_group(&named(&keys), &Bson::Int64(0));
        assert!(look.contains_key("$or"), "{look}");
        let look = new_group(&[], &Bson::Int64(2));
        assert_eq!(
            look.get_document(fields::PRIORITY).unwrap(),
            &doc! {"$gte": 2_i64}
        );
    }
}
