//! Riding out MongoDB outages: retry an operation with capped exponential
//! back-off until it succeeds or the caller's stop signal fires.
//!
//! A worker never exits because the database went away (DESIGN.md,
//! "Outages"): it logs the first failure, keeps retrying at growing
//! intervals (so a long outage logs a line every 10 s, not a flood), and
//! logs once more when the database answers again.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::shutdown::Shutdown;

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);

/// The back-off between tries through an outage.
pub(crate) fn outage_backoff() -> Backoff {
    Backoff::new(FIRST_PAUSE, LONGEST_PAUSE)
}

/// Runs `operation` until it succeeds; `None` if `stop` fired first.
pub(crate) fn retry_until_stopped<T>(
    stop: &Shutdown,
    what: &str,
    mut operation: impl FnMut() -> Result<T, Error>,
) -> Option<T> {
    let mut backoff = outage_backoff();
    let mut failures = 0u32;
    loop {
        match operation() {
            Ok(value) => {
                if failures > 0 {
                    log::info!("MongoDB answers again ({what}) after {failures} failed tries");
                }
                return Some(value);
            }
            Err(error) => {
                failures += 1;
                let pause = backoff.advance();
                log::warn!(
                    "{what}: {error}; retrying in {}",
                    crate::duration::format_duration(pause)
                );
                if stop.sleep(pause) {
                    log::warn!("{what}: gave up after {failures} failed tries because the worker is stopping");
                    return None;
                }
            }
        }
    }
}
