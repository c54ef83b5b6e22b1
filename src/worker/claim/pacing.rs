//! How much to claim: the prefetch pacing, as a pure type.
//!
//! Claimed jobs hold leases while they wait for a thread, so a worker
//! should hold no more than its threads can start soon. [`Pacing`] keeps at
//! most `threads + 2 × prefetch` jobs, where `prefetch` is what the threads
//! can start within [`PREFETCH_HORIZON`] at the measured handler speed
//! (capped at the batch size). Two prefetches: one being run while the next
//! claim is already on its way, so claiming overlaps running. Fast jobs get
//! full batches and few round trips; slow jobs are not hoarded away from
//! other workers.
//!
//! [`PaceMeter`] measures the handler speed (a moving average the handler
//! threads feed); [`Pacing`] turns it and the jobs held into a decision.
//! The decision is pure, so it is unit-tested here without a server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Claimed jobs should be startable within about this long.
pub const PREFETCH_HORIZON: Duration = Duration::from_millis(200);

/// The fixed inputs of the decision: the worker's threads and batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    pub(crate) threads: usize,
    pub(crate) batch_size: usize,
}

/// What the fetcher should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Claim up to this many jobs.
    Claim(usize),
    /// Wait for a held job to finish: no room, or too little to be worth a
    /// round trip while every thread is busy.
    Wait,
}

impl Pacing {
    /// How many jobs beyond one per thread to keep claimed, for an average
    /// handler time of `average` (`None`: nothing measured yet).
    pub(crate) fn prefetch(&self, average: Option<Duration>) -> usize {
        let Some(average) = average else {
            return self.threads.min(self.batch_size);
        };
        let micros = (average.as_micros() as u64).max(1);
        let startable = (self.threads as u64).saturating_mul(PREFETCH_HORIZON.as_micros() as u64);
        startable.div_ceil(micros).clamp(1, self.batch_size as u64) as usize
    }

    /// How many jobs the threads can start within `within` at an average
    /// handler time of `average` (one per thread before any measure).
    pub(crate) fn startable_within(&self, within: Duration, average: Option<Duration>) -> usize {
        let Some(average) = average else {
            return self.threads;
        };
        let micros = (average.as_micros() as u64).max(1);
        let per_thread = (within.as_micros() as u64 / micros).max(1);
        (self.threads as u64)
            .saturating_mul(per_thread)
            .min(u64::from(u32::MAX)) as usize
    }

    /// Whether to claim, and how many, with `held` jobs held now.
    pub(crate) fn decide(&self, held: usize, average: Option<Duration>) -> Decision {
        let prefetch = self.prefetch(average);
        let room = (self.threads + 2 * prefetch).saturating_sub(held);
        // While every thread is busy, wait until a claim is worth its round
        // trip rather than claiming one job at a time.
        if room == 0 || (held >= self.threads && room < prefetch) {
            Decision::Wait
        } else {
            Decision::Claim(room.min(self.batch_size))
        }
    }
}

/// The average handler time, fed by the handler threads (an exponential
/// moving average with weight 1/8, in µs; 0 means none measured yet).
#[derive(Default)]
pub(crate) struct PaceMeter {
    average_micros: AtomicU64,
}

impl PaceMeter {
    /// Records one handler run.
    pub(crate) fn record(&self, elapsed: Duration) {
        let sample = (elapsed.as_micros() as u64).max(1);
        let _ = self.average_micros.fetch_update(Relaxed, Relaxed, |old| {
            Some(if old == 0 {
                sample
            } else {
                (old * 7 + sample) / 8
            })
        });
    }

    /// The average so far.
    pub(crate) fn average(&self) -> Option<Duration> {
        match self.average_micros.load(Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: Pacing = Pacing {
        threads: 4,
        batch_size: 500,
    };

    #[test]
    fn before_any_measure_one_job_per_thread_is_prefetched() {
        assert_eq!(PACING.prefetch(None), 4);
        assert_eq!(PACING.decide(0, None), Decision::Claim(12));
    }

    #[test]
    fn fast_jobs_get_full_batches_and_slow_jobs_few() {
        // 4 threads start 4 × 200 ms / 10 µs = 80,000 jobs in the horizon:
        // capped at the batch.
        assert_eq!(PACING.prefetch(Some(Duration::from_micros(10))), 500);
        assert_eq!(
            PACING.decide(0, Some(Duration::from_micros(10))),
            Decision::Claim(500)
        );
        // 1 s jobs: nothing more than one per thread plus one.
        assert_eq!(PACING.prefetch(Some(Duration::from_secs(1))), 1);
        assert_eq!(
            PACING.decide(0, Some(Duration::from_secs(1))),
            Decision::Claim(6)
        );
    }

    #[test]
    fn a_busy_worker_waits_for_a_claim_worth_its_round_trip() {
        let average = Some(Duration::from_millis(10)); // prefetch 80
        assert_eq!(PACING.prefetch(average), 80);
        // Room 164 − 100 = 64 < 80 while all threads are busy: wait.
        assert_eq!(PACING.decide(100, average), Decision::Wait);
        assert_eq!(PACING.decide(84, average), Decision::Claim(80));
        assert_eq!(PACING.decide(164, average), Decision::Wait);
        // Idle threads: claim even a little.
        let small = Pacing {
            threads: 4,
            batch_size: 2,
        };
        assert_eq!(small.decide(0, average), Decision::Claim(2));
    }

    #[test]
    fn startable_jobs_follow_the_pace() {
        let within = Duration::from_millis(500);
        assert_eq!(PACING.startable_within(within, None), 4);
        assert_eq!(
            PACING.startable_within(within, Some(Duration::from_millis(100))),
            20
        );
        assert_eq!(
            PACING.startable_within(within, Some(Duration::from_secs(3))),
            4
        );
    }

    #[test]
    fn the_meter_averages_and_starts_empty() {
        let meter = PaceMeter::default();
        assert_eq!(meter.average(), None);
        meter.record(Duration::from_micros(800));
        assert_eq!(meter.average(), Some(Duration::from_micros(800)));
        meter.record(Duration::from_micros(0));
        assert_eq!(meter.average(), Some(Duration::from_micros(700)));
    }
}
