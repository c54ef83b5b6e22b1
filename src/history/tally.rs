//! One queue's minute as one worker saw it: what became of the attempts
//! that ended in it, and how long their jobs waited and ran, as counts in
//! fixed buckets. Fixed buckets are what lets the fleet's tallies merge by
//! addition (`$inc` on one document per queue and minute), whatever the
//! number of workers; a percentile read back is exact to its bucket.

use std::time::Duration;

/// The buckets' upper bounds in milliseconds, a 1-2-5 series from 1 ms to
/// a day: bucket `i` holds durations above `BOUNDS_MS[i - 1]` and up to
/// `BOUNDS_MS[i]`; the last bucket, [`BUCKETS`] − 1, holds the longer ones.
pub const BOUNDS_MS: [u64; 24] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000,
    120_000, 300_000, 600_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000, 86_400_000,
];

/// How many buckets a distribution has.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// The bucket `duration` falls in.
pub fn bucket_of(duration: Duration) -> usize {
    let ms = duration.as_secs_f64() * 1000.0;
    BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound as f64)
        .unwrap_or(BUCKETS - 1)
}

/// The durations of many jobs, counted per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    /// How many durations fell in each bucket.
    pub counts: [u64; BUCKETS],
    /// Their sum, in milliseconds (for the mean).
    pub sum_ms: u64,
}

impl Default for Distribution {
    fn default() -> Distribution {
        Distribution {
            counts: [0; BUCKETS],
            sum_ms: 0,
        }
    }
}

impl Distribution {
    /// Counts one duration.
    pub fn add(&mut self, duration: Duration) {
        self.counts[bucket_of(duration)] += 1;
        self.sum_ms = self
            .sum_ms
            .saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    }

    /// Adds another distribution's counts to this one.
    pub fn merge(&mut self, other: &Distribution) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum_ms = self.sum_ms.saturating_add(other.sum_ms);
    }

    /// How many durations it holds.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0.5 for the median), as the upper bound of the
    /// bucket that holds it (the lower bound for the last, open bucket);
    /// `None` when it holds nothing.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest n with n/total ≥ q.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let bound = BOUNDS_MS
                    .get(bucket)
                    .or(BOUNDS_MS.last())
                    .copied()
                    .unwrap_or(0);
                return Some(Duration::from_millis(bound));
            }
        }
        None
    }

    /// The mean duration, if it holds any.
    pub fn mean(&self) -> Option<Duration> {
        let total = self.count();
        (total > 0).then(|| Duration::from_millis(self.sum_ms / total))
    }
}

/// What became of an attempt, as the history counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The job completed.
    Completed,
    /// The job failed for good.
    Failed,
    /// The attempt failed and the job runs again later.
    Retried,
    /// The job was cancelled (expired before it started, or by an operator).
    Cancelled,
    /// The handler said "not now": the job runs again later, no attempt charged.
    Snoozed,
}

/// A queue's minute: counts by [`Event`] and the wait and run times of the
/// attempts that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub cancelled: u64,
    pub snoozed: u64,
    /// From eligible (`run_at`, or the insert) to started.
    pub wait: Distribution,
    /// From started to ended, for attempts that ran.
    pub run: Distribution,
}

impl Tally {
    /// Counts one event, with the wait and run times when it has them.
    pub fn add(&mut self, event: Event, wait: Option<Duration>, run: Option<Duration>) {
        *self.count_mut(event) += 1;
        if let Some(wait) = wait {
            self.wait.add(wait);
        }
        if let Some(run) = run {
            self.run.add(run);
        }
    }

    /// The count of `event`.
    pub fn count(&self, event: Event) -> u64 {
        match event {
            Event::Completed => self.completed,
            Event::Failed => self.failed,
            Event::Retried => self.retried,
            Event::Cancelled => self.cancelled,
            Event::Snoozed => self.snoozed,
        }
    }

    fn count_mut(&mut self, event: Event) -> &mut u64 {
        match event {
            Event::Completed => &mut self.completed,
            Event::Failed => &mut self.failed,
            Event::Retried => &mut self.retried,
            Event::Cancelled => &mut self.cancelled,
            Event::Snoozed => &mut self.snoozed,
        }
    }

    /// Adds another tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        for event in EVENTS {
            *self.count_mut(event) += other.count(event);
        }
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
    }

    /// Whether it counted nothing.
    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }
}

/// Every event, in the order they are shown.
pub const EVENTS: [Event; 5] = [
    Event::Completed,
    Event::Failed,
    Event::Retried,
    Event::Cancelled,
    Event::Snoozed,
];

impl Event {
    /// Its field in a history document, and its word in `stats --history`.
    pub fn name(self) -> &'static str {
        match self {
            Event::Completed => "completed",
            Event::Failed => "failed",
            Event::Retried => "retried",
            Event::Cancelled => "cancelled",
            Event::Snoozed => "snoozed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_bucket_of_its_upper_bound() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_millis(1)), 0);
        assert_eq!(bucket_of(Duration::from_micros(1_001)), 1);
        assert_eq!(bucket_of(Duration::from_millis(200)), 7);
        assert_eq!(bucket_of(Duration::from_millis(201)), 8);
        assert_eq!(bucket_of(Duration::from_secs(86_400)), BUCKETS - 2);
        assert_eq!(bucket_of(Duration::from_secs(86_401)), BUCKETS - 1);
    }

    #[test]
    fn a_percentile_is_the_bound_of_the_bucket_that_holds_it() {
        let mut d = Distribution::default();
        assert_eq!(d.percentile(0.5), None);
        for ms in [3, 4, 4, 40, 40, 40, 40, 40, 900, 90_000_000] {
            d.add(Duration::from_millis(ms));
        }
        assert_eq!(d.percentile(0.0), Some(Duration::from_millis(5)));
        assert_eq!(d.percentile(0.3), Some(Duration::from_millis(5)));
        assert_eq!(d.percentile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(d.percentile(0.8), Some(Duration::from_millis(50)));
        assert_eq!(d.percentile(0.9), Some(Duration::from_secs(1)));
        // The open last bucket answers with its lower bound.
        assert_eq!(d.percentile(1.0), Some(Duration::from_secs(86_400)));
        assert_eq!(d.count(), 10);
    }

    #[test]
    fn tallies_merge_by_addition() {
        let mut a = Tally::default();
        a.add(
            Event::Completed,
            Some(Duration::from_millis(3)),
            Some(Duration::from_millis(30)),
        );
        a.add(Event::Cancelled, Some(Duration::from_millis(3)), None);
        let mut b = Tally::default();
        b.add(Event::Completed, None, Some(Duration::from_millis(30)));
        b.add(Event::Failed, None, None);
        let mut both = a.clone();
        both.merge(&b);
        assert_eq!(both.completed, 2);
        assert_eq!(both.failed, 1);
        assert_eq!(both.cancelled, 1);
        assert_eq!(both.wait.count(), 2);
        assert_eq!(both.run.count(), 2);
        assert_eq!(both.run.sum_ms, 60);
        assert!(!both.is_empty());
        assert!(Tally::default().is_empty());
    }
}
