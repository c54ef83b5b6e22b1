//! The flow sweep: the slow path that makes sure no dependent waits forever.
//!
//! The common path needs none of it: a dependency's completer releases its
//! dependents. Every worker runs a sweeper thread that, every
//! [`SWEEP_EVERY`] (backing off to [`SWEEP_IDLE_EVERY`] while it finds
//! nothing):
//!
//! - links waiting jobs a producer inserted itself (no `linked` yet):
//!   `{status: "waiting", linked: {$exists: false}}` on `mongoq_waiting`;
//! - settles finished jobs still flagged `has_dependents`: a worker died
//!   between its outcome and the release, or the job ended by a path that
//!   does not settle (a lease expiry, a cancel at lease extension, a
//!   completion inside the handler's transaction): `mongoq_dependents`.
//!
//! and every [`AUDIT_EVERY`] reads one page of linked waiting jobs (in `_id`
//! order, resuming where the last page ended) and settles dependencies of
//! theirs that finished or are gone (deleted by hand, say). With nothing to
//! do each look is one query on an index that is empty.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::Hint;

use super::link::link;
use super::settle::{key, settle, Ended, Finished, Settled, CHUNK};
use super::{DEPENDENTS_INDEX, WAITING_INDEX};
use crate::error::Error;
use crate::queue::Documents;
use crate::queue::Queue;
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;

/// How often the sweep links and settles while it finds work.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often it looks while looks find nothing.
pub const SWEEP_IDLE_EVERY: Duration = Duration::from_secs(10);
/// How often the audit reads a page of waiting jobs.
pub const AUDIT_EVERY: Duration = Duration::from_secs(30);
/// How long after a job finished the sweep settles it, if its completer
/// did not (see [`Sweeper::pass`]).
pub const SETTLE_GRACE: Duration = Duration::from_secs(5);
/// Jobs one look takes at most; the next look takes the rest.
const PAGE: i64 = 1_000;

/// The sweep's state (one per worker).
pub struct Sweeper {
    queue: Queue,
    /// Where the audit's next page starts.
    cursor: Option<Bson>,
    last_audit: Option<Instant>,
    /// The last look found jobs to link or settle.
    found: bool,
    /// Told how many expired jobs each look cancelled.
    on_expired: Box<dyn Fn(u64) + Send>,
}

impl Sweeper {
    /// A sweeper for the queue's collection.
    pub fn new(queue: Queue) -> Sweeper {
        Sweeper {
            queue,
            cursor: None,
            last_audit: None,
            found: false,
            on_expired: Box::new(|_| {}),
        }
    }

    /// Calls `count` with the number of expired jobs each look cancels.
    #[must_use]
    pub fn on_expired(mut self, count: impl Fn(u64) + Send + 'static) -> Sweeper {
        self.on_expired = Box::new(count);
        self
    }

    /// Sweeps until `stop`: every [`SWEEP_EVERY`] while looks find work,
    /// backing off to [`SWEEP_IDLE_EVERY`] while they find none (an idle
    /// fleet then costs the server two empty seeks every 10 s). `released`
    /// is called when a look made jobs pending (the worker's fetcher can
    /// look at once); `leads` says whether this worker sweeps for its peers
    /// now (one of them does: the sweep is the same whoever makes it).
    pub fn run(mut self, stop: &Shutdown, released: impl Fn(), leads: impl Fn() -> bool) {
        let mut failing = false;
        let mut every = SWEEP_EVERY;
        loop {
            if stop.sleep(every) {
                return;
            }
            if !leads() {
                every = SWEEP_EVERY;
                continue;
            }
            let result = self.pass();
            every = if self.found {
                SWEEP_EVERY
            } else {
                (every * 2).min(SWEEP_IDLE_EVERY)
            };
            match result {
                Ok(settled) => {
                    if failing {
                        log::info!("flow sweep works again");
                    }
                    failing = false;
                    if settled.released > 0 {
                        released();
                    }
                }
                Err(error) if !failing => {
                    failing = true;
                    log::warn!("flow sweep failed: {error}; trying again every {SWEEP_EVERY:?}");
                }
                Err(error) => log::debug!("flow sweep failed again: {error}"),
            }
        }
    }

    /// One look: cancel expired jobs (see [`crate::expiry`]), link,
    /// settle, and the audit when it is due.
    pub fn pass(&mut self) -> Result<Settled, Error> {
        let mut total = Settled::default();
        let expired = crate::expiry::cancel_expired(&self.queue, self.queue.clock().passed())?;
        if expired.count > 0 {
            log::info!("the sweep cancelled {} expired jobs", expired.count);
            (self.on_expired)(expired.count);
            let ended: Vec<Finished> = expired
                .with_dependents
                .into_iter()
                .map(|(id, reason)| Finished {
                    id,
                    ended: Ended::Cancelled(reason),
                })
                .collect();
            total.add(settle(&self.queue, ended)?);
        }
        let unlinked = self.find(
            doc! {fields::STATUS: Status::Waiting, fields::LINKED: {"$exists": false}},
            doc! {fields::AFTER: 1, fields::IF_DEP_FAILS: 1, fields::DEPS_TOTAL: 1, fields::UNIQUE_KEY: 1},
            WAITING_INDEX,
        )?;
        if !unlinked.is_empty() {
            let linked = link(&self.queue, &unlinked)?;
            log::info!(
                "flow sweep linked {} waiting jobs inserted by a producer ({} missing dependencies, {} malformed)",
                unlinked.len(),
                linked.missing.len(),
                linked.malformed
            );
            total.add(linked.settled);
        }
        // Finished a while ago: the completer that wrote the outcome is
        // settling the ones that finished just now, and doing it twice
        // would only add work.
        let before = self.queue.now_ago(SETTLE_GRACE);
        let finished_before: Vec<Document> = Status::FINISHED
            .iter()
            .filter_map(|status| {
                Some(doc! {fields::STATUS: status.as_str(), status.finished_at()?: {"$lt": before}})
            })
            .collect();
        let flagged = self.find(
            doc! {fields::HAS_DEPENDENTS: true, "$or": finished_before},
            doc! {fields::STATUS: 1, fields::LAST_ERROR: 1},
            DEPENDENTS_INDEX,
        )?;
        self.found = expired.count > 0 || !unlinked.is_empty() || !flagged.is_empty();
        if !flagged.is_empty() {
            let finished: Vec<Finished> = flagged
                .iter()
                .filter_map(|job| {
                    Some(Finished {
                        id: job.get("_id")?.clone(),
                        ended: Ended::of_document(job)?,
                    })
                })
                .collect();
            log::info!(
                "flow sweep settles the dependents of {} finished jobs (their worker stopped before it did, or they ended by lease expiry)",
                finished.len()
            );
            total.add(settle(&self.queue, finished)?);
        }
        if self.last_audit.is_none_or(|at| at.elapsed() >= AUDIT_EVERY) {
            self.last_audit = Some(Instant::now());
            total.add(self.audit()?);
        }
        Ok(total)
    }

    fn find(
        &self,
        filter: Document,
        projection: Document,
        index: &str,
    ) -> Result<Vec<Document>, Error> {
        self.queue
            .collection()
            .find(filter)
            .projection(projection)
            .hint(Hint::Name(index.to_string()))
            .limit(PAGE)
            .run()
            .documents(&self.queue, "find (flow sweep)")
    }

    /// One page of linked waiting jobs: their dependencies not yet done
    /// that have finished or are gone are settled.
    fn audit(&mut self) -> Result<Settled, Error> {
        let mut filter = doc! {fields::STATUS: Status::Waiting, fields::LINKED: true};
        if let Some(cursor) = &self.cursor {
            filter.insert("_id", doc! {"$gt": cursor.clone()});
        }
        let page: Vec<Document> = self
            .queue
            .collection()
            .find(filter)
            .projection(doc! {fields::AFTER: 1, fields::DEPS_DONE: 1})
            .sort(doc! {"_id": 1})
            .hint(Hint::Name(WAITING_INDEX.to_string()))
            .limit(PAGE)
            .run()
            .documents(&self.queue, "find (flow audit)")?;
        self.cursor = if page.len() < PAGE as usize {
            None
        } else {
            page.last().and_then(|d| d.get("_id")).cloned()
        };
        let mut open: Vec<Bson> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for job in &page {
            let done: Vec<String> = job
                .get_array(fields::DEPS_DONE)
                .map(|d| d.iter().map(key).collect())
                .unwrap_or_default();
            for dep in job
                .get_array(fields::AFTER)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let k = key(dep);
                if !done.contains(&k) && seen.insert(k) {
                    open.push(dep.clone());
                }
            }
        }
        let mut finished = Vec::new();
        for chunk in open.chunks(CHUNK) {
            let found: Vec<Document> = self
                .queue
                .collection()
                .find(doc! {"_id": {"$in": chunk}})
                .projection(doc! {fields::STATUS: 1, fields::LAST_ERROR: 1})
                .run()
                .documents(&self.queue, "find (flow audit)")?;
            let keys: std::collections::HashMap<String, &Document> = found
                .iter()
                .map(|d| (d.get("_id").map(key).unwrap_or_default(), d))
                .collect();
            for dep in chunk {
                let ended = match keys.get(&key(dep)) {
                    None => Some(Ended::Missing),
                    Some(job) => Ended::of_document(job),
                };
                if let Some(ended) = ended {
                    finished.push(Finished {
                        id: dep.clone(),
                        ended,
                    });
                }
            }
        }
        if finished.is_empty() {
            return Ok(Settled::default());
        }
        log::info!(
            "flow audit found {} dependencies finished or gone whose dependents still waited; settling them",
            finished.len()
        );
        settle(&self.queue, finished)
    }
}
