//! What time it is, for every timestamp mongoq writes or compares.
//!
//! One place, so that every lease, `run_at` bound, retry time and finished
//! timestamp comes from the same source.

use std::time::Duration;

use mongodb::bson::DateTime;

/// The current time as a BSON date.
pub(crate) fn now() -> DateTime {
    DateTime::now()
}

/// `now + duration` as a BSON date.
pub(crate) fn after(duration: Duration) -> DateTime {
    DateTime::from_millis(now().timestamp_millis() + duration.as_millis() as i64)
}

/// `now - duration` as a BSON date.
pub(crate) fn ago(duration: Duration) -> DateTime {
    DateTime::from_millis(now().timestamp_millis() - duration.as_millis() as i64)
}
