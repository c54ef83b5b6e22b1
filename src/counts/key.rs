//! What a job is counted under, and how names become field names of the
//! ledger.
//!
//! A job's *key* is its `status`, with two refinements: a cancelled job
//! that expired (`expired: true`) is counted under `expired` (so that
//! `stats` can say how many expired without counting them), and a job whose
//! `status` is missing or not a string is counted under `(no status)`.
//! Pure: unit-tested without a server.

use mongodb::bson::{Bson, Document};

use crate::schema::{fields, Status};

/// The key of cancelled jobs that expired before they started.
pub const EXPIRED: &str = "expired";
/// The key of jobs whose `status` is missing or not a string.
pub const NO_STATUS: &str = "(no status)";

/// The key of a job with this `status` and `expired` field.
pub fn key_of_parts(status: Option<&Bson>, expired: Option<&Bson>) -> String {
    match status {
        Some(Bson::String(status)) if status == Status::Cancelled.as_str() => {
            if expired == Some(&Bson::Boolean(true)) {
                EXPIRED.to_string()
            } else {
                status.clone()
            }
        }
        Some(Bson::String(status)) => status.clone(),
        _ => NO_STATUS.to_string(),
    }
}

/// The key of a job as read (its `status` and `expired`).
pub fn key_of(job: &Document) -> String {
    key_of_parts(job.get(fields::STATUS), job.get(fields::EXPIRED))
}

/// The status a key counts towards (`expired` jobs are `cancelled`).
pub fn status_of_key(key: &str) -> &str {
    if key == EXPIRED {
        Status::Cancelled.as_str()
    } else {
        key
    }
}

/// The queue a job belongs to: its `queue`, or `default` when it names
/// none (or names one with something other than a string).
pub fn queue_of(job: &Document) -> String {
    queue_named(job.get(fields::QUEUE))
}

/// The queue a `queue` value names (as a `$group` key gives it back).
pub fn queue_named(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::String(queue)) => queue.clone(),
        _ => fields::DEFAULT_QUEUE.to_string(),
    }
}

/// A queue name or key as a field name of the ledger: `.` and `$` cannot
/// appear in one, and an empty name cannot be one, so they (and `%`, the
/// escape) are written `%2E`, `%24`, `%25`, and the empty name `%`.
pub fn escape(name: &str) -> String {
    if name.is_empty() {
        return "%".to_string();
    }
    name.replace('%', "%25")
        .replace('.', "%2E")
        .replace('$', "%24")
}

/// The name [`escape`] wrote.
pub fn unescape(field: &str) -> String {
    if field == "%" {
        return String::new();
    }
    field
        .replace("%2E", ".")
        .replace("%24", "$")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn a_key_is_the_status_with_expired_and_missing_ones_apart() {
        assert_eq!(key_of(&doc! {"status": "pending"}), "pending");
        assert_eq!(key_of(&doc! {"status": "cancelled"}), "cancelled");
        assert_eq!(
            key_of(&doc! {"status": "cancelled", "expired": true}),
            EXPIRED
        );
        // Only a cancelled job counts as expired.
        assert_eq!(
            key_of(&doc! {"status": "pending", "expired": true}),
            "pending"
        );
        assert_eq!(key_of(&doc! {"data": 1}), NO_STATUS);
        assert_eq!(key_of(&doc! {"status": 3}), NO_STATUS);
        assert_eq!(key_of(&doc! {"status": "paused"}), "paused");
        assert_eq!(status_of_key(EXPIRED), "cancelled");
        assert_eq!(status_of_key("failed"), "failed");
    }

    #[test]
    fn queues_default_when_named_by_nothing_or_not_a_string() {
        assert_eq!(queue_of(&doc! {"queue": "mail"}), "mail");
        assert_eq!(queue_of(&doc! {}), "default");
        assert_eq!(queue_of(&doc! {"queue": null}), "default");
        assert_eq!(queue_of(&doc! {"queue": 7}), "default");
    }

    #[test]
    fn any_name_round_trips_through_a_field_name() {
        for name in ["mail", "a.b", "$x", "50%", "%2E", "", "%", "a.$%b"] {
            let field = escape(name);
            assert!(!field.contains('.') && !field.starts_with('$') && !field.is_empty());
            assert_eq!(unescape(&field), name, "{field}");
        }
    }
}
