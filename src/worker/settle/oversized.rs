//! Jobs too close to MongoDB's 16 MB document limit to be worked on.
//!
//! A claim adds the lease fields and an outcome adds a result or an error;
//! a producer's document just under 16 MB has no room for either, and the
//! server refuses the write. Such a job must not stop the claim (or the
//! completer) for every other job: it is marked `failed` on its own.

use mongodb::bson::{doc, Bson};

use crate::error::Error;
use crate::queue::Queue;
use crate::schema::{fields, id_text, Status};

/// The server codes for "the document would be over 16 MB after this
/// update" (10334, 17419, 17420).
pub(crate) fn is_too_large_code(code: i32) -> bool {
    matches!(code, 10334 | 17419 | 17420)
}

/// Whether a driver error is MongoDB refusing a document over 16 MB.
pub(crate) fn too_large(error: &mongodb::error::Error) -> bool {
    crate::error::server_code_is(error, is_too_large_code)
}

/// Marks `failed` a job that cannot take the fields a claim or an outcome
/// adds. `status: "failed"` is shorter than `"pending"`/`"running"`, so that
/// write fits; the reason is added only if it fits too.
pub(crate) fn fail_oversized(queue: &Queue, id: &Bson) -> Result<(), Error> {
    log::warn!(
        "job {} failed: the document is too close to MongoDB's 16 MB limit to be worked on (no room for the worker's fields); make `data` smaller",
        id_text(id)
    );
    queue
        .collection()
        .update_one(
            doc! {"_id": id.clone(), fields::STATUS: Status::any_of(&Status::ACTIVE)},
            doc! {"$set": {fields::STATUS: Status::Failed}, "$rename": crate::schema::recount()},
        )
        .run()
        .map_err(|e| queue.db_error("update (fail oversized)", &e))?;
    let _ = queue
        .collection()
        .update_one(
            doc! {"_id": id.clone()},
            doc! {"$set": {fields::LAST_ERROR: "document too large: no room under the 16 MB limit for the worker's fields"}},
        )
        .run();
    Ok(())
}
