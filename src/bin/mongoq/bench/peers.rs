//! The patterns people use instead of mongoq, measured beside it: the
//! original blog loop (find, then save), one findOneAndUpdate per job, and
//! the batched ceiling loop without leases.

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::sync::Collection;
use mongoq::schema::{fields, Status};
use mongoq::Error;
use mongoq::Queue;
use std::sync::Mutex;
use std::time::Instant;

pub(super) fn completed(queue: &Queue) -> Result<u64, Error> {
    queue
        .collection()
        .count_documents(doc! {fields::STATUS: Status::Completed})
        .run()
        .map_err(|e| queue.db_error("count", &e))
}

pub(super) fn record(runs: &Mutex<Vec<Bson>>, id: Bson) {
    runs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(id);
}

/// The blog post's loop: find a pending job, work, save it completed. Two
/// threads can find the same job and both run it; counted as duplicates.
pub(super) fn original_loop(
    collection: &Collection<Document>,
    deadline: Instant,
    runs: &Mutex<Vec<Bson>>,
) -> mongodb::error::Result<()> {
    while Instant::now() < deadline {
        let Some(job) = collection.find_one(doc! {"status": "pending"}).run()? else {
            return Ok(());
        };
        let id = job.get("_id").cloned().unwrap_or(Bson::Null);
        record(runs, id.clone());
        collection
            .update_one(doc! {"_id": id}, doc! {"$set": {"status": "completed"}})
            .run()?;
    }
    Ok(())
}

/// Claim one job per round trip with findOneAndUpdate, then complete it.
pub(super) fn find_one_and_update_loop(
    collection: &Collection<Document>,
    deadline: Instant,
    runs: &Mutex<Vec<Bson>>,
) -> mongodb::error::Result<()> {
    while Instant::now() < deadline {
        let now = DateTime::now();
        let claimed = collection
            .find_one_and_update(
                doc! {"status": "pending", "run_at": {"$lte": now}},
                doc! {"$set": {"status": "running", "lease_until": now}, "$inc": {"attempts": 1}},
            )
            .sort(doc! {"priority": -1, "run_at": 1, "_id": 1})
            .return_document(ReturnDocument::After)
            .run()?;
        let Some(job) = claimed else {
            return Ok(());
        };
        let id = job.get("_id").cloned().unwrap_or(Bson::Null);
        record(runs, id.clone());
        collection
            .update_one(
                doc! {"_id": id, "status": "running"},
                doc! {"$set": {"status": "completed", "completed_at": DateTime::now()}},
            )
            .run()?;
    }
    Ok(())
}

/// The fastest plain client: query a batch of ids, claim them with one
/// updateMany, complete them with another. No leases kept, no fencing.
pub(super) fn ceiling_loop(
    collection: &Collection<Document>,
    deadline: Instant,
    batch: usize,
    runs: &Mutex<Vec<Bson>>,
) -> mongodb::error::Result<()> {
    while Instant::now() < deadline {
        let now = DateTime::now();
        let ids: Vec<Bson> = collection
            .find(doc! {"status": "pending", "run_at": {"$lte": now}})
            .sort(doc! {"priority": -1, "run_at": 1, "_id": 1})
            .projection(doc! {"_id": 1})
            .limit(batch as i64)
            .run()?
            .filter_map(|d| d.ok().and_then(|d| d.get("_id").cloned()))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        collection
            .update_many(
                doc! {"_id": {"$in": &ids}, "status": "pending"},
                doc! {"$set": {"status": "running", "lease_until": now}, "$inc": {"attempts": 1}},
            )
            .run()?;
        for id in &ids {
            record(runs, id.clone());
        }
        collection
            .update_many(
                doc! {"_id": {"$in": &ids}, "status": "running"},
                doc! {"$set": {"status": "completed", "completed_at": DateTime::now()}},
            )
            .run()?;
    }
    Ok(())
}
