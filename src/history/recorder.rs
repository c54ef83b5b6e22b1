//! A worker's history not yet written: tallies by queue and minute, filled
//! by the completer as outcomes are written and emptied by the control
//! thread's flush (see [`super::store`]). A flush that fails gives its
//! tallies back, so a server outage delays the history and loses none.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use mongodb::bson::DateTime;

use super::tally::{Event, Tally};

/// One minute in milliseconds.
pub const MINUTE_MS: i64 = 60_000;

/// A queue's name and the start of a minute (milliseconds since the epoch).
pub type Minute = (String, i64);

/// Tallies by queue and minute, shared by the threads that record and the
/// one that flushes.
#[derive(Debug, Default)]
pub struct Recorder {
    minutes: Mutex<BTreeMap<Minute, Tally>>,
}

/// The start of the minute `at` falls in.
pub fn minute_of(at: DateTime) -> i64 {
    at.timestamp_millis().div_euclid(MINUTE_MS) * MINUTE_MS
}

impl Recorder {
    /// Counts `event` of a job of `queue` at `at` (server time).
    pub fn record(
        &self,
        queue: &str,
        at: DateTime,
        event: Event,
        wait: Option<Duration>,
        run: Option<Duration>,
    ) {
        self.lock()
            .entry((queue.to_string(), minute_of(at)))
            .or_default()
            .add(event, wait, run);
    }

    /// Everything recorded since the last take.
    pub fn take(&self) -> BTreeMap<Minute, Tally> {
        std::mem::take(&mut *self.lock())
    }

    /// Tallies a flush could not write, merged back for the next one.
    pub fn give_back(&self, tallies: BTreeMap<Minute, Tally>) {
        let mut minutes = self.lock();
        for (minute, tally) in tallies {
            minutes.entry(minute).or_default().merge(&tally);
        }
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Minute, Tally>> {
        self.minutes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_one_minute_share_a_tally_and_a_failed_flush_loses_none() {
        let recorder = Recorder::default();
        let at = DateTime::from_millis(10 * MINUTE_MS + 59_999);
        recorder.record("mail", at, Event::Completed, None, None);
        recorder.record(
            "mail",
            DateTime::from_millis(10 * MINUTE_MS),
            Event::Failed,
            None,
            None,
        );
        recorder.record(
            "mail",
            DateTime::from_millis(11 * MINUTE_MS),
            Event::Completed,
            None,
            None,
        );
        recorder.record("sms", at, Event::Completed, None, None);
        let taken = recorder.take();
        assert_eq!(taken.len(), 3);
        let first = &taken[&("mail".to_string(), 10 * MINUTE_MS)];
        assert_eq!((first.completed, first.failed), (1, 1));
        assert!(recorder.is_empty());
        recorder.record("sms", at, Event::Completed, None, None);
        recorder.give_back(taken);
        let again = recorder.take();
        assert_eq!(again[&("sms".to_string(), 10 * MINUTE_MS)].completed, 2);
        assert_eq!(minute_of(DateTime::from_millis(-1)), -MINUTE_MS);
    }
}
