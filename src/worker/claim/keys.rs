//! What the claim's read-ahead reads of a job, and the ranges it reads in.

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

use crate::fleet::window::Key;
use crate::queue::filters::queue_order;
use crate::schema::{fields, integer};

/// The read-ahead's ranges of `priority`, each with its sort, in queue
/// order: first a `priority` that is not a number (claimed only to be
/// failed with the reason); then above 0; then 0 and none merged by age (a
/// shell producer's job has no `priority` and ranks as 0; the two are
/// exact ranges of the claim index, which the server merges in `run_at`,
/// `_id` order); then below 0.
pub(crate) fn priority_ranges() -> [(Document, Document); 4] {
    let by_age = doc! {fields::RUN_AT: 1, "_id": 1};
    [
        (
            doc! {"$exists": true, "$not": {"$type": ["number", "null"]}},
            queue_order(),
        ),
        (doc! {"$gt": 0}, queue_order()),
        (doc! {"$in": [0, Bson::Null]}, by_age),
        (doc! {"$lt": 0}, queue_order()),
    ]
}

/// What the read-ahead reads of a job: its key in the window, and its
/// `attempts` (checked to be a number before a claim's `$inc` meets it).
pub(crate) fn key_of(raw: &RawDocumentBuf) -> (Key, Bson) {
    let field = |name: &str| {
        raw.get(name)
            .ok()
            .flatten()
            .and_then(|value| Bson::try_from(value.to_raw_bson()).ok())
            .unwrap_or(Bson::Null)
    };
    let rank = match field(fields::PRIORITY) {
        Bson::Null => Bson::Int64(0),
        other => integer(&other).map_or(other, Bson::Int64),
    };
    (
        Key {
            id: field("_id"),
            rank,
        },
        field(fields::ATTEMPTS),
    )
}

/// The fields a read-ahead reads: only what the claim needs. The bodies of
/// the jobs a claim wins are read back by its token.
pub(crate) fn key_projection() -> Document {
    doc! {"_id": 1, fields::PRIORITY: 1, fields::ATTEMPTS: 1}
}
