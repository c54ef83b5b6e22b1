//! What the claim's read-ahead window holds, and the ranges it is read in.

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

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

/// A job in the window: its raw BSON (compact: a parsed document costs
/// several times its size) and what the claim reads of it.
pub(crate) struct Slot {
    pub(crate) id: Bson,
    pub(crate) attempts: Bson,
    /// Its rank in queue order: its `priority`, where none counts as 0.
    pub(crate) rank: Bson,
    pub(crate) raw: RawDocumentBuf,
}

impl Slot {
    pub(crate) fn new(raw: RawDocumentBuf) -> Slot {
        let field = |name: &str| {
            raw.get(name)
                .ok()
                .flatten()
                .and_then(|value| Bson::try_from(value.to_raw_bson()).ok())
                .unwrap_or(Bson::Null)
        };
        let priority = field(fields::PRIORITY);
        Slot {
            id: field("_id"),
            attempts: field(fields::ATTEMPTS),
            rank: match priority {
                Bson::Null => Bson::Int64(0),
                other => integer(&other).map_or(other, Bson::Int64),
            },
            raw,
        }
    }
}
