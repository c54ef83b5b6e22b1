//! Capped exponential back-off, as plain data with pure steps.
//!
//! One type serves the three waits that grow while nothing good happens:
//! retrying an operation through a database outage, reopening a broken
//! change stream, and the idle poll of a fetcher that finds no work. Each
//! resets to its first pause the moment things go well again (fang's one
//! good idea: an idle back-off that resets on work).

use std::time::Duration;

/// A pause that doubles on every [`Backoff::advance`] up to a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `first` and never exceeds `max` (a `first` above `max` is
    /// taken as `max`).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// The pause to take now; the next one is twice as long (capped).
    pub fn advance(&mut self) -> Duration {
        let pause = self.current;
        self.current = (self.current * 2).min(self.max);
        pause
    }

    /// The pause [`Backoff::advance`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.current
    }

    /// Back to the first pause (things went well).
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<u128> = (0..4).map(|_| backoff.advance().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.peek(), Duration::from_millis(100));
    }

    #[test]
    fn a_first_pause_above_the_cap_is_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(backoff.advance(), Duration::from_secs(1));
    }
}
