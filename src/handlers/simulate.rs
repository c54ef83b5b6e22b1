//! `--simulate MIN..MAX`: the original demo's handler, a random sleep.
//!
//! Useful to watch the queue work, and for tests and benchmarks that need
//! jobs of a known duration without spawning processes.

use std::time::Duration;

use rand::Rng;

use crate::handlers::{Handler, HandlerResult};
use crate::job::Job;

/// Sleeps a random time in `[min, max]` and succeeds with no result.
#[derive(Debug, Clone, Copy)]
pub struct SimulateHandler {
    /// Shortest sleep.
    pub min: Duration,
    /// Longest sleep.
    pub max: Duration,
}

impl Handler for SimulateHandler {
    fn handle(&self, _job: &Job) -> HandlerResult {
        let sleep = if self.max > self.min {
            rand::rng().random_range(self.min..=self.max)
        } else {
            self.min
        };
        if !sleep.is_zero() {
            std::thread::sleep(sleep);
        }
        // No result: like the original demo, a simulated job is just done
        // (and a completion without a result is the cheapest to write).
        Ok(None)
    }
}
