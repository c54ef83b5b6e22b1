//! History that outlives the jobs: per queue and per minute, how many
//! attempts completed, failed, were retried, cancelled or snoozed, and how
//! long jobs waited (from eligible to started) and ran, kept in
//! `<collection>_metrics` for as long as `mongoq init --retain-metrics`
//! says (30 days by default), whatever the jobs' own retention.
//!
//! The invariant: a worker counts an outcome once, after the completer has
//! written it (the same place its Prometheus counters count), into a
//! tally of its own ([`Recorder`]); the control thread adds the tallies to
//! the fleet's documents every [`FLUSH_EVERY`] and when the worker stops.
//! So the history costs the server one small `update` per worker per
//! flush, whatever the throughput, and workers never coordinate: minutes
//! merge by `$inc`. A flush the server refuses is kept and sent again; a
//! worker killed with `SIGKILL` loses what it had not flushed (at most
//! [`FLUSH_EVERY`] of its own outcomes), as its Prometheus counters do.
//!
//! Wait and run times are counted in fixed buckets ([`tally::BOUNDS_MS`])
//! so that they merge by addition too; a percentile read back is the bound
//! of the bucket that holds it.
//!
//! Readers: `mongoq stats --history`, the dashboard's charts (and its
//! overview's per-minute chart), both through [`History::read`].

pub mod recorder;
pub mod store;
pub mod tally;

use std::time::Duration;

pub use recorder::Recorder;
pub use store::{History, Point};
pub use tally::{Distribution, Event, Tally, BOUNDS_MS, EVENTS};

use crate::queue::Queue;

/// How often a worker adds its tallies to the fleet's history: three
/// small writes a minute.
pub const FLUSH_EVERY: Duration = Duration::from_secs(20);

/// The steps a series is read in: a minute (what is stored) and its
/// round multiples.
const STEPS_MINUTES: [u64; 13] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1_440, 10_080];

/// The shortest round step that shows `range` in at most `points` steps
/// (a minute at least: the history's resolution).
pub fn step_for(range: Duration, points: u32) -> Duration {
    let wanted = range.as_secs().div_ceil(60 * u64::from(points.max(1)));
    let minutes = STEPS_MINUTES
        .iter()
        .copied()
        .find(|m| *m >= wanted)
        .unwrap_or(STEPS_MINUTES[STEPS_MINUTES.len() - 1]);
    Duration::from_secs(minutes * 60)
}

/// The steps of `step` that cover the last `range` up to `now`: the first
/// starts on a multiple of `step` (in UTC), the last holds `now`.
pub fn window(
    now: mongodb::bson::DateTime,
    range: Duration,
    step: Duration,
) -> (mongodb::bson::DateTime, mongodb::bson::DateTime) {
    let step_ms = i64::try_from(step.as_millis())
        .unwrap_or(i64::MAX)
        .max(60_000);
    let now_ms = now.timestamp_millis();
    let to = (now_ms.div_euclid(step_ms) + 1) * step_ms;
    let range_ms = i64::try_from(range.as_millis()).unwrap_or(i64::MAX);
    let steps = (range_ms + step_ms - 1) / step_ms;
    (
        mongodb::bson::DateTime::from_millis(to - steps.max(1) * step_ms),
        mongodb::bson::DateTime::from_millis(to),
    )
}

/// Writes what `recorder` holds to `queue`'s history; what the server
/// refused, or all of it if the write failed, goes back for the next
/// flush. Returns whether anything was written.
pub fn flush(queue: &Queue, recorder: &Recorder) -> Result<bool, crate::Error> {
    let tallies = recorder.take();
    if tallies.is_empty() {
        return Ok(false);
    }
    match History::new(queue).write(&tallies) {
        Ok(refused) => {
            let wrote = refused.len() < tallies.len();
            if !refused.is_empty() {
                recorder.give_back(
                    tallies
                        .into_iter()
                        .filter(|(minute, _)| refused.contains(minute))
                        .collect(),
                );
            }
            Ok(wrote)
        }
        Err(error) => {
            recorder.give_back(tallies);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::DateTime;

    #[test]
    fn a_range_is_shown_in_round_steps_ending_with_the_current_one() {
        let hour = Duration::from_secs(3600);
        assert_eq!(step_for(hour, 60), Duration::from_secs(60));
        assert_eq!(step_for(24 * hour, 60), Duration::from_secs(30 * 60));
        assert_eq!(step_for(7 * 24 * hour, 60), Duration::from_secs(3 * 3600));
        assert_eq!(
            step_for(Duration::from_secs(10), 60),
            Duration::from_secs(60)
        );
        let now = DateTime::from_millis(10 * 3_600_000 + 90_000);
        let (from, to) = window(now, hour, Duration::from_secs(60));
        assert_eq!(to.timestamp_millis(), 10 * 3_600_000 + 120_000);
        assert_eq!(to.timestamp_millis() - from.timestamp_millis(), 3_600_000);
    }
}
