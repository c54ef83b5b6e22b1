//! What time it is: the **database server's** clock, for every timestamp
//! mongoq writes or compares.
//!
//! A fleet runs on many hosts whose clocks disagree (a VM resumed from
//! suspend, a host without NTP). If each worker judged leases, rescue and
//! `run_at` by its own clock, a worker running fast would rescue the live
//! leases of the others and start delayed jobs early. So time is the
//! server's, as River and Oban do with Postgres' `now()`.
//!
//! **How.** `hello` returns the server's `localTime`. [`Clock::measure`]
//! asks three times and keeps the sample with the shortest round trip,
//! crediting half of it: the server read its clock somewhere inside the
//! round trip, so the estimate is off by at most half of it. From then on
//! time is counted forward on this host's **monotonic** clock (`Instant`),
//! never its wall clock, so a wall clock that is wrong, or jumps, changes
//! nothing. The keeper re-measures every [`REFRESH`].
//!
//! **Uncertainty.** Half the round trip, plus a millisecond for the
//! server's own resolution, plus [`DRIFT_PPM`] of the time since the
//! sample (how far two quartz clocks may drift apart). Decisions that must
//! not be early subtract it: a job is eligible only once `run_at` has
//! passed even on the latest reading of the clock, and a lease is expired
//! only once `lease_until` has passed by it. A new sample replaces the
//! current one only if it is more certain than the current one is by now,
//! so one slow reply on a loaded server cannot move the clock by seconds.
//!
//! **Why not `$$NOW`.** MongoDB can compare with its own clock (`$$NOW` in
//! `$expr`, `$dateAdd` in pipeline updates), but an `$expr` bound is not an
//! index range: the claim would examine every pending job instead of a
//! batch's worth of index keys, and pipeline updates make every outcome
//! write dearer (and need MongoDB 5.0). An offset keeps every query and
//! write as cheap as with the host's clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime};
use mongodb::sync::Database;

use crate::sync::lock;

/// How often a worker re-measures the server's clock.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How far two clocks may drift apart, in parts per million (NTP-less
/// quartz is within about 50 ppm; this is twice that).
pub const DRIFT_PPM: u64 = 100;
/// Hellos per measurement; the one with the shortest round trip is kept.
const TRIES: usize = 3;

/// One reading of the server's clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When (on this host's monotonic clock) the server's time was
    /// `server_millis`.
    at: Instant,
    server_millis: i64,
    /// Half the round trip plus the server's resolution.
    base_uncertainty: Duration,
}

impl Sample {
    fn uncertainty(&self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.at);
        self.base_uncertainty + since * DRIFT_PPM as u32 / 1_000_000
    }

    fn server_now(&self, now: Instant) -> i64 {
        let since = now.saturating_duration_since(self.at);
        self.server_millis + since.as_millis() as i64
    }
}

/// The server's clock as this process knows it. Shared by every clone of
/// a [`crate::Queue`].
#[derive(Debug, Default)]
pub struct Clock {
    sample: Mutex<Option<Sample>>,
    /// Whether "not measured yet; using this host's clock" was logged.
    warned: std::sync::atomic::AtomicBool,
}

/// What a measurement found, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Server time minus this host's wall clock, in milliseconds.
    pub offset_millis: i64,
    /// How far the estimate may be off.
    pub uncertainty: Duration,
}

impl Clock {
    /// Asks the server for its time ([`TRIES`] hellos) and keeps the most
    /// certain sample. Returns the offset from this host's wall clock.
    pub fn measure(&self, admin: &Database) -> Result<Reading, mongodb::error::Error> {
        let mut best: Option<Sample> = None;
        for _ in 0..TRIES {
            let sent = Instant::now();
            let reply = admin.run_command(doc! {"hello": 1}).run()?;
            let received = Instant::now();
            let Some(Bson::DateTime(server)) = reply.get("localTime") else {
                // A server that does not say its time: nothing to learn.
                continue;
            };
            let half = received.duration_since(sent) / 2;
            let sample = Sample {
                at: sent + half,
                server_millis: server.timestamp_millis(),
                base_uncertainty: half + Duration::from_millis(1),
            };
            if best.is_none_or(|b| sample.base_uncertainty < b.base_uncertainty) {
                best = Some(sample);
            }
        }
        let now = Instant::now();
        if let Some(sample) = best {
            self.offer(sample, now);
        }
        let kept = (*lock(&self.sample)).ok_or_else(|| {
            mongodb::error::Error::custom("the server's hello reply has no localTime")
        })?;
        Ok(Reading {
            offset_millis: kept.server_now(now) - DateTime::now().timestamp_millis(),
            uncertainty: kept.uncertainty(now),
        })
    }

    /// Keeps `sample` if it is more certain than the current one is by
    /// `now`; returns whether it was kept.
    fn offer(&self, sample: Sample, now: Instant) -> bool {
        let mut current = lock(&self.sample);
        let better = current.is_none_or(|c| sample.uncertainty(now) < c.uncertainty(now));
        if better {
            *current = Some(sample);
        }
        better
    }

    /// Whether the server's clock has been read.
    pub fn is_measured(&self) -> bool {
        lock(&self.sample).is_some()
    }

    /// The server's time now (this host's wall clock until the first
    /// measurement succeeds).
    pub fn now(&self) -> DateTime {
        let now = Instant::now();
        if let Some(sample) = *lock(&self.sample) {
            return DateTime::from_millis(sample.server_now(now));
        }
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::debug!("the server's clock is not read yet; using this host's clock");
        }
        DateTime::now()
    }

    /// How far [`Clock::now`] may be off (zero before any measurement: the
    /// host's clock is then the only one there is).
    pub fn uncertainty(&self) -> Duration {
        lock(&self.sample).map_or(Duration::ZERO, |s| s.uncertainty(Instant::now()))
    }

    /// The server's time `duration` from now.
    pub fn after(&self, duration: Duration) -> DateTime {
        shift(self.now(), duration.as_millis() as i64)
    }

    /// The server's time `duration` ago.
    pub fn ago(&self, duration: Duration) -> DateTime {
        shift(self.now(), -(duration.as_millis() as i64))
    }

    /// The latest the server's time may be now: now plus the uncertainty.
    /// Expiry compares with this, so an expired job is never judged alive.
    pub fn latest(&self) -> DateTime {
        self.after(self.uncertainty())
    }

    /// The latest time that has certainly passed on the server: now minus
    /// the uncertainty. Eligibility and lease expiry compare with this, so
    /// neither is ever judged early.
    pub fn passed(&self) -> DateTime {
        self.ago(self.uncertainty())
    }
}

/// `at + duration`.
pub(crate) fn shift_by(at: DateTime, duration: Duration) -> DateTime {
    shift(at, duration.as_millis() as i64)
}

fn shift(at: DateTime, millis: i64) -> DateTime {
    DateTime::from_millis(at.timestamp_millis().saturating_add(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_counts_forward_from_the_sample_on_the_monotonic_clock() {
        let at = Instant::now();
        let sample = Sample {
            at,
            server_millis: 1_000_000,
            base_uncertainty: Duration::from_millis(2),
        };
        assert_eq!(
            sample.server_now(at + Duration::from_millis(1_500)),
            1_001_500
        );
        // 100 ppm of 1,000 s is 100 ms.
        assert_eq!(
            sample.uncertainty(at + Duration::from_secs(1_000)),
            Duration::from_millis(102)
        );
    }

    #[test]
    fn an_unmeasured_clock_is_the_hosts() {
        let clock = Clock::default();
        assert!(!clock.is_measured());
        let host = DateTime::now().timestamp_millis();
        assert!((clock.now().timestamp_millis() - host).abs() < 1_000);
        assert_eq!(clock.uncertainty(), Duration::ZERO);
        assert!(clock.ago(Duration::from_secs(10)) < clock.now());
        assert!(clock.after(Duration::from_secs(10)) > clock.now());
    }

    #[test]
    fn a_less_certain_sample_does_not_replace_a_better_one() {
        let clock = Clock::default();
        let now = Instant::now();
        *lock(&clock.sample) = Some(Sample {
            at: now,
            server_millis: 5_000_000,
            base_uncertainty: Duration::from_millis(1),
        });
        let worse = Sample {
            at: now,
            server_millis: 9_000_000,
            base_uncertainty: Duration::from_millis(900),
        };
        assert!(!clock.offer(worse, now));
        assert_eq!(clock.now().timestamp_millis() / 1_000_000, 5);
        // A sample grows less certain with age: a fresh, good one wins.
        let later = now + Duration::from_secs(3_600);
        let fresh = Sample {
            at: later,
            server_millis: 8_600_000,
            base_uncertainty: Duration::from_millis(2),
        };
        assert!(clock.offer(fresh, later));
    }
}
