//! How long a failed job waits before its next attempt.
//!
//! Policy as plain data with a pure function, so it can be tested without a
//! server and reasoned about in one place. Exponential growth keeps a
//! broken dependency from being hammered; jitter keeps a thousand jobs that
//! failed together from all retrying in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: attempt `n` waits about
/// `base * 2^(n-1)`, capped at `max`, scaled by a random factor in
/// `[0.5, 1.5)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// No delay is longer than this (before jitter).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The un-jittered delay after failed attempt number `attempt` (1-based).
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exponent;
        let millis = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(millis).min(self.max)
    }

    /// The delay after failed attempt `attempt`, with jitter from `rng`.
    pub fn delay_for(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        self.nominal_delay(attempt)
            .mul_f64(rng.random_range(0.5..1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_then_caps() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(policy.nominal_delay(1), Duration::from_millis(100));
        assert_eq!(policy.nominal_delay(2), Duration::from_millis(200));
        assert_eq!(policy.nominal_delay(3), Duration::from_millis(400));
        assert_eq!(policy.nominal_delay(5), Duration::from_secs(1));
        assert_eq!(policy.nominal_delay(1_000), Duration::from_secs(1));
        assert_eq!(policy.nominal_delay(0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        let policy = RetryPolicy::default();
        let mut rng = rand::rng();
        for attempt in 1..10 {
            let nominal = policy.nominal_delay(attempt);
            for _ in 0..100 {
                let delay = policy.delay_for(attempt, &mut rng);
                assert!(delay >= nominal.mul_f64(0.5) && delay < nominal.mul_f64(1.5));
            }
        }
    }
}
