//! Which documents are jobs a worker may take, and in what order. The
//! claim, `--drain`'s check, `stats` and the metrics all ask the same
//! question, so they share these filters, written to stay on the claim
//! index (`status`, `queue`, `priority`, `run_at`, `_id`).

use mongodb::bson::{doc, Bson, DateTime, Document};

use crate::error::Error;
use crate::schema::{fields, Status};

/// The filter for pending jobs whose time has come. A missing or null
/// `run_at` (a document from `mongosh` with only `data` and `status`) is
/// eligible; `$not: {$gt}` keeps that in one index range on `run_at`.
/// A `run_at` of the wrong type also matches, so the worker claims it and
/// fails it with a reason instead of leaving it pending forever.
pub fn eligible_filter(now: DateTime) -> Document {
    doc! {fields::STATUS: Status::Pending, fields::RUN_AT: {"$not": {"$gt": now}}}
}

/// [`eligible_filter`] for the jobs of `queues` only.
pub fn eligible_in(queues: &[String], now: DateTime) -> Document {
    let mut filter = eligible_filter(now);
    filter.insert(fields::QUEUE, queue_condition(queues));
    filter
}

/// The sort of the queue: priority first, then age.
pub fn queue_order() -> Document {
    doc! {fields::PRIORITY: -1, fields::RUN_AT: 1, "_id": 1}
}

/// The `queue` condition matching jobs of the named queues. Jobs that name
/// no queue (or `null`) belong to `default`.
pub fn queue_condition(queues: &[String]) -> Bson {
    let mut names: Vec<Bson> = queues.iter().map(|q| Bson::String(q.clone())).collect();
    if queues.iter().any(|q| q == fields::DEFAULT_QUEUE) {
        names.push(Bson::Null);
    }
    Bson::Document(doc! {"$in": names})
}

/// Checks a group name given on the command line or to the library (the
/// same rule as a queue's name).
pub fn validate_group_name(name: &str) -> Result<(), Error> {
    if validate_queue_name(name).is_err() {
        return Err(Error::GroupName(name.to_string()));
    }
    Ok(())
}

/// Checks a queue name given on the command line or to the library.
pub fn validate_queue_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::QueueName(name.to_string()));
    }
    Ok(())
}
