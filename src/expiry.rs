//! Jobs that expire: not started by `expires_at`, never started.
//!
//! A producer sets `expires_at` (a date; `enqueue --expires-in 10m` or
//! `--expires-at`, or a plain field from `mongosh`). Three places keep the
//! promise, each by the server's clock ([`crate::clock`]):
//!
//! - **the claim** repeats [`alive_condition`] with the latest the server's
//!   time may be, so no worker takes a job that may have expired, whatever
//!   its host's clock says;
//! - **the start**: a handler thread about to start a claimed job that
//!   expired while it waited in the channel ends it instead
//!   (`Kind::Expired`, fenced by its lease like any outcome);
//! - **the sweep** (a step of the workers' sweeper, one peer at a time)
//!   cancels pending and waiting jobs whose expiry has certainly passed,
//!   with one pipeline `updateMany` on the `mongoq_expiry` index, so a job
//!   of a paused queue, or of a queue no worker serves now, ends too.
//!
//! An expired job ends `cancelled` (it did not fail: nothing ran), with
//! `expired: true` (what `stats` counts) and `last_error` naming the
//! expiry; its dependents are settled as for any cancelled job (the sweep
//! settles finished jobs still flagged `has_dependents`). It imports the
//! queue only.

use mongodb::bson::{doc, Bson, DateTime};
use mongodb::options::Hint;

use crate::error::Error;
use crate::queue::indexes::EXPIRY_INDEX;
use crate::queue::Queue;
use crate::schema::{fields, Status};

/// Jobs one sweep step cancels at most; the next step takes the rest.
const PAGE: usize = 10_000;

/// The `expires_at` condition of a job that has not expired by `latest`
/// (a job without one, or with one after it). A value that is not a date
/// matches too: the worker fails it as malformed, with the reason.
pub fn alive_condition(latest: DateTime) -> Bson {
    Bson::Document(doc! {"$not": {"$lte": latest}})
}

/// Why an expired job ended: the text the sweep's pipeline writes too
/// (milliseconds always three digits, as `$dateToString`'s `%L`).
pub fn reason(expires_at: DateTime) -> String {
    let millis = expires_at.timestamp_millis();
    let second = DateTime::from_millis(millis - millis.rem_euclid(1_000));
    let text = second.try_to_rfc3339_string().unwrap_or_default();
    format!(
        "expired: not started by its expires_at {}.{:03}Z",
        text.trim_end_matches('Z'),
        millis.rem_euclid(1_000)
    )
}

/// What a sweep step cancelled.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    /// Jobs cancelled because they expired.
    pub(crate) count: u64,
    /// Those that other jobs wait for, with the reason: their dependents
    /// are to be settled now.
    pub(crate) with_dependents: Vec<(Bson, String)>,
}

/// Cancels pending and waiting jobs whose `expires_at` is at or before
/// `passed` (a time that has certainly passed on the server). One seek on
/// an empty index when nothing expired.
pub(crate) fn cancel_expired(queue: &Queue, passed: DateTime) -> Result<Expired, Error> {
    let filter = doc! {
        fields::STATUS: Status::any_of(&[Status::Pending, Status::Waiting]),
        fields::EXPIRES_AT: {"$lte": passed},
    };
    let found: Vec<mongodb::bson::Document> = queue
        .collection()
        .find(filter.clone())
        .projection(doc! {fields::EXPIRES_AT: 1, fields::HAS_DEPENDENTS: 1})
        .limit(PAGE as i64)
        .hint(Hint::Name(EXPIRY_INDEX.into()))
        .run()
        .and_then(Iterator::collect)
        .map_err(|e| queue.db_error("find (expiry)", &e))?;
    if found.is_empty() {
        return Ok(Expired::default());
    }
    let ids: Vec<Bson> = found.iter().filter_map(|d| d.get("_id").cloned()).collect();
    let with_dependents = found
        .iter()
        .filter(|d| d.get_bool(fields::HAS_DEPENDENTS) == Ok(true))
        .filter_map(|d| {
            Some((
                d.get("_id")?.clone(),
                reason(*d.get_datetime(fields::EXPIRES_AT).ok()?),
            ))
        })
        .collect();
    let mut filter = filter;
    filter.insert("_id", doc! {"$in": ids});
    // A pipeline update (MongoDB 4.2+), so that each job's reason names
    // its own expiry.
    let [was, uncount] = crate::schema::recount_stages();
    let update = vec![
        was,
        uncount,
        doc! {"$set": {
            fields::STATUS: Status::Cancelled,
            fields::CANCELLED_AT: passed,
            fields::EXPIRED: true,
            fields::LAST_ERROR: {"$concat": [
                "expired: not started by its expires_at ",
                {"$dateToString": {"date": format!("${}", fields::EXPIRES_AT), "format": "%Y-%m-%dT%H:%M:%S.%LZ"}},
            ]},
        }},
    ];
    let result = queue
        .collection()
        .update_many(filter, update)
        .run()
        .map_err(|e| queue.db_error("update (expiry)", &e))?;
    Ok(Expired {
        count: result.modified_count,
        with_dependents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_expiry_as_the_sweep_writes_it() {
        let at = DateTime::parse_rfc3339_str("2026-12-04T10:00:00.250Z").unwrap();
        assert_eq!(
            reason(at),
            "expired: not started by its expires_at 2026-12-04T10:00:00.250Z"
        );
    }
}
