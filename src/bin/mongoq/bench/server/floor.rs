//! Section 9's floor: what the server spends per job when several clients
//! share *nothing*: no job, and for mongoq processes no collection.
//!
//! A fleet's server CPU per job against one worker's mixes two costs: what
//! sharing one backlog costs (reading who takes what, lost claims), which
//! mongoq can cut, and what the server itself pays for serving several
//! clients at once (concurrent transactions, more sessions and cursors, a
//! busier allocator), which no client can. Two measurements isolate the
//! second:
//!
//! - **bare writes**: the two writes every job needs (claim, complete; one
//!   `updateMany` each per batch, by `_id`), with the ids read beforehand
//!   so that no query's price depends on the backlog, by one connection and
//!   by `processes` connections at once, each writing its own interleaved
//!   share of the same collection (as mongoq divides a queue);
//! - **mongoq alone**: `processes` `mongoq work --drain` processes at
//!   once, each alone on a collection of its own (nothing shared).

use std::thread;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::sync::{Client, Collection};
use mongoq::schema::{fields, Status};
use mongoq::{Error, Queue};
use serde::Serialize;

use super::{settle, wait_all, Bench, Drain, ServerMeter, THREADS_EACH};

/// The floor, for one fleet size.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleFloor {
    pub processes: usize,
    pub jobs: usize,
    /// The bare writes of all `jobs` by one connection.
    pub writes_one: Drain,
    /// The same writes by `processes` connections at once, each its own
    /// interleaved share of the jobs.
    pub writes_many: Drain,
    /// `processes` `mongoq work --drain` processes at once, each alone on
    /// its own collection of `jobs / processes`.
    pub mongoq_apart: Drain,
}

impl ScaleFloor {
    pub(in crate::bench) fn median(floors: &[&ScaleFloor]) -> ScaleFloor {
        let pick = |f: fn(&ScaleFloor) -> &Drain| {
            Drain::median(&floors.iter().map(|x| f(x)).collect::<Vec<_>>())
        };
        ScaleFloor {
            processes: floors[0].processes,
            jobs: floors[0].jobs,
            writes_one: pick(|f| &f.writes_one),
            writes_many: pick(|f| &f.writes_many),
            mongoq_apart: pick(|f| &f.mongoq_apart),
        }
    }
}

impl Bench<'_> {
    /// One round of the floor for `processes` workers.
    pub(super) fn floor(&self, processes: usize) -> Result<ScaleFloor, Error> {
        let jobs = self.config.jobs;
        let writes_one = self.bare_writes(1)?;
        let writes_many = self.bare_writes(processes)?;
        let mongoq_apart = self.mongoq_apart(processes)?;
        Ok(ScaleFloor {
            processes,
            jobs,
            writes_one,
            writes_many,
            mongoq_apart,
        })
    }

    /// `processes` backlogs of `jobs / processes` (what is left over goes to
    /// the first), `jobs` in all.
    fn backlogs(&self, name: &str, processes: usize) -> Result<Vec<(Queue, usize)>, Error> {
        let each = self.config.jobs / processes;
        (0..processes)
            .map(|i| {
                let n = if i == 0 {
                    self.config.jobs - each * (processes - 1)
                } else {
                    each
                };
                Ok((self.shell_backlog(name, n)?, n))
            })
            .collect()
    }

    /// Claims and completes every job of a fresh backlog by `writers`
    /// connections at once, writer `w` taking every `writers`-th job.
    fn bare_writes(&self, writers: usize) -> Result<Drain, Error> {
        let jobs = self.config.jobs;
        let queue = self.shell_backlog("bench_floor_writes", jobs)?;
        let ids: Vec<Bson> = queue.find_ids(doc! {}, "find (bench floor ids)")?;
        let batch = self.config.default_batch;
        let name = queue.collection().name().to_string();
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let started = std::time::Instant::now();
        let round_trips = thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let share: Vec<Bson> = ids.iter().skip(w).step_by(writers).cloned().collect();
                    let name = &name;
                    scope.spawn(move || -> Result<u64, String> {
                        // A client of its own, as a separate process has.
                        let client =
                            Client::with_uri_str(&self.config.uri).map_err(|e| e.to_string())?;
                        let collection = client.database(&self.config.database).collection(name);
                        write_batches(&collection, &share, batch).map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "a writer panicked".to_string())?)
                .sum::<Result<u64, String>>()
        })
        .map_err(|e| Error::Invalid(format!("bench floor, bare writes: {e}")))?;
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(&queue, jobs);
        let (done, _) = settle(&queue)?;
        if done != jobs {
            return Err(Error::Invalid(format!(
                "bench floor: the bare writes completed {done} of {jobs} jobs: the run is not valid"
            )));
        }
        Ok(Drain::new(jobs, seconds, server, round_trips, 0))
    }

    fn mongoq_apart(&self, processes: usize) -> Result<Drain, Error> {
        let backlogs = self.backlogs("bench_floor_mongoq", processes)?;
        let dir = std::env::temp_dir().join(format!("mongoq-bench-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let meter = ServerMeter::start(&backlogs[0].0, self.config.server_pid);
        let started = std::time::Instant::now();
        let children = backlogs
            .iter()
            .enumerate()
            .map(|(i, (queue, _))| {
                self.spawn_worker(queue, THREADS_EACH, &dir.join(format!("{i}.json")))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        wait_all(children)?;
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(&backlogs[0].0, self.config.jobs);
        let mut round_trips = 0;
        let mut run_twice = 0;
        for (i, (queue, n)) in backlogs.iter().enumerate() {
            round_trips += super::read_report(&dir.join(format!("{i}.json")))?.round_trips;
            let (done, twice) = settle(queue)?;
            run_twice += twice;
            if done != *n {
                return Err(Error::Invalid(format!(
                    "bench floor: a worker alone completed {done} of {n} jobs: the run is not valid"
                )));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Drain::new(
            self.config.jobs,
            seconds,
            server,
            round_trips,
            run_twice,
        ))
    }
}

/// Section 8's bare loop without its read: claim and complete `ids` in
/// batches (two `updateMany`s each). Returns the round trips.
fn write_batches(
    collection: &Collection<Document>,
    ids: &[Bson],
    batch: usize,
) -> mongodb::error::Result<u64> {
    let mut round_trips = 0;
    for ids in ids.chunks(batch.max(1)) {
        let token = ObjectId::new();
        collection
            .update_many(
                doc! {"_id": {"$in": ids}, fields::STATUS: Status::Pending},
                doc! {"$set": {fields::STATUS: Status::Running, fields::LEASE_TOKEN: token}},
            )
            .run()?;
        collection
            .update_many(
                doc! {"_id": {"$in": ids}, fields::LEASE_TOKEN: token},
                doc! {"$set": {fields::STATUS: Status::Completed, fields::COMPLETED_AT: DateTime::now()}},
            )
            .run()?;
        round_trips += 2;
    }
    Ok(round_trips)
}
