//! Dividing a queue among the workers that serve it, so they do not fight
//! over its head.
//!
//! Every worker reads the head of the queue into its window. Without a
//! rule, several workers claim the same jobs from it and all but one lose
//! the race; the losers' round trips and the server's work for them are
//! wasted, and more workers drain more slowly. So the live workers that
//! serve the same queues number themselves by worker id, from the registry
//! (`<collection>_workers`, read by the control thread every half second),
//! and worker `rank` of `of` first claims the jobs whose `_id` hashes to
//! `rank` modulo `of`. Only when its share of a fresh window is used up
//! does it claim others' jobs (those of a worker that died and has not yet
//! dropped out of the count, and the last jobs of a drain).
//!
//! The rule only decides who tries first: the claim itself stays atomic
//! and fenced, so workers that disagree for a moment (one just started or
//! stopped) lose some races, never correctness.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::Bson;

use crate::error::Error;
use crate::queue::Queue;
use crate::sync::lock;
use crate::text::fnv1a;

/// A peer counts in the division while its last heartbeat is this recent
/// (it beats every two seconds).
const SEEN_WITHIN: Duration = Duration::from_secs(5);

/// A lost claim re-reads the peers at most this often.
const RECHECK: Duration = Duration::from_millis(100);

/// This worker's part of its queues: `rank` of `of` live peers.
#[derive(Debug)]
pub(crate) struct Share {
    /// This worker's id, and the queues it serves (peers serve the same).
    id: String,
    queues: Vec<String>,
    rank: AtomicUsize,
    of: AtomicUsize,
    read_at: Mutex<Option<Instant>>,
}

impl Share {
    pub(crate) fn new(id: &str, queues: &[String]) -> Share {
        Share {
            id: id.to_string(),
            queues: queues.to_vec(),
            rank: AtomicUsize::new(0),
            of: AtomicUsize::new(1),
            read_at: Mutex::new(None),
        }
    }

    /// Reads the live peers from the registry (the control thread, every
    /// half second). Returns the round trips made.
    pub(crate) fn refresh(&self, queue: &Queue) -> Result<u64, Error> {
        *lock(&self.read_at) = Some(Instant::now());
        let peers = queue.peers(&self.queues, SEEN_WITHIN)?;
        self.update(peers);
        Ok(1)
    }

    /// After a claim lost jobs to another worker: the peers may have
    /// changed (one just started), so read them now unless that was done
    /// within [`RECHECK`]. Returns the round trips made.
    pub(crate) fn recheck(&self, queue: &Queue) -> Result<u64, Error> {
        if lock(&self.read_at).is_some_and(|at| at.elapsed() < RECHECK) {
            return Ok(0);
        }
        self.refresh(queue)
    }

    /// Records this worker's place among `peers` (the live workers'
    /// ids serving the same queues, this worker among them or not).
    fn update(&self, mut peers: Vec<String>) {
        if !peers.contains(&self.id) {
            peers.push(self.id.clone());
        }
        peers.sort();
        peers.dedup();
        let rank = peers.iter().position(|peer| *peer == self.id).unwrap_or(0);
        self.of.store(peers.len(), Relaxed);
        self.rank.store(rank, Relaxed);
    }

    /// Whether this worker does `duty` for the peers that share its queues
    /// (the flow sweep, the rescue of expired leases, the check for a
    /// higher priority): the one whose rank the duty's name hashes to. The
    /// duties are idempotent, so while peers disagree about who they are
    /// (one just started or died) two may do one, or none for the few
    /// seconds the registry takes to agree.
    pub(crate) fn leads(&self, duty: &str) -> bool {
        let (rank, of) = self.part();
        owns((rank, of), &Bson::String(duty.to_string()))
    }

    /// The current part: `(rank, of)`.
    pub(crate) fn part(&self) -> (usize, usize) {
        let of = self.of.load(Relaxed).max(1);
        (self.rank.load(Relaxed).min(of - 1), of)
    }
}

/// Whether the job with this `_id` is in part `rank` of `of`.
pub(crate) fn owns((rank, of): (usize, usize), id: &Bson) -> bool {
    of <= 1 || part_of(id, of) == rank
}

/// The part (of `of`) the job with this `_id` is in.
pub(crate) fn part_of(id: &Bson, of: usize) -> usize {
    if of <= 1 {
        return 0;
    }
    (slot(id) % of as u64) as usize
}

/// A hash of an `_id` that every worker computes alike (FNV-1a over the
/// ObjectId's bytes, or over the id's extended JSON for other types).
fn slot(id: &Bson) -> u64 {
    let text;
    let bytes: &[u8] = match id {
        Bson::ObjectId(oid) => &oid.bytes()[..],
        other => {
            text = other.clone().into_relaxed_extjson().to_string();
            text.as_bytes()
        }
    };
    fnv1a(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn peers_number_themselves_alike() {
        let peers = vec!["b".to_string(), "a".to_string(), "c".to_string()];
        let parts: Vec<(usize, usize)> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let share = Share::new(id, &[]);
                share.update(peers.clone());
                share.part()
            })
            .collect();
        assert_eq!(parts, vec![(0, 3), (1, 3), (2, 3)]);
        let share = Share::new("z", &[]);
        assert_eq!(
            share.part(),
            (0, 1),
            "alone until the registry says otherwise"
        );
        share.update(vec!["a".into()]);
        assert_eq!(
            share.part(),
            (1, 2),
            "a worker missing from the list counts itself"
        );
    }

    #[test]
    fn every_job_has_exactly_one_owner_and_parts_are_even() {
        let ids: Vec<Bson> = (0..4_000)
            .map(|_| Bson::ObjectId(ObjectId::new()))
            .collect();
        let mut counts = [0usize; 4];
        for id in &ids {
            let owners: Vec<usize> = (0..4).filter(|&rank| owns((rank, 4), id)).collect();
            assert_eq!(owners.len(), 1);
            counts[owners[0]] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1_200).contains(&n)),
            "{counts:?}"
        );
        assert!(owns((0, 1), &Bson::Null), "a lone worker owns everything");
        let leaders: Vec<bool> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let share = Share::new(id, &[]);
                share.update(vec!["a".into(), "b".into(), "c".into()]);
                share.leads("rescue")
            })
            .collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        assert!(owns((0, 2), &Bson::Int32(7)) != owns((1, 2), &Bson::Int32(7)));
    }
}
