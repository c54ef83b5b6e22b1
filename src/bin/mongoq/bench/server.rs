//! Sections 8 and 9 of the bench: the work the *server* does per job, and
//! workers that share one backlog.
//!
//! mongoq's own CPU per job is small, so the database decides how fast a
//! queue drains. These sections fill a backlog the way the most common
//! producer does (`{data, status: "pending"}` documents, inserted by a
//! script), with the indexes `mongoq init` creates, and drain it with
//! `mongoq work --drain` processes at default flags, and with the bare
//! batched loop a person would write by hand. They report the server's CPU
//! per job (from `/proc/PID/stat` when `--server-pid` names the server's
//! process), the index keys and documents it examined (`serverStatus`
//! `metrics.queryExecutor`, where the server reports them), throughput,
//! round trips, and, for several workers, how many claimed candidates other
//! workers took first.

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::sync::Collection;
use mongoq::schema::{fields, integer, Status};
use mongoq::{Error, Queue};
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

mod floor;
pub use floor::ScaleFloor;

use super::probe::{proc_cpu_ticks, Monitor};
use super::Bench;
use mongoq::{Shutdown, Worker, WorkerConfig};
use std::sync::Arc;

/// Linux reports process CPU time in `/proc` in units of `USER_HZ`, which
/// is 100 on every mainstream kernel configuration.
const TICKS_PER_SECOND: f64 = 100.0;

/// Thread counts of section 8's mongoq rows.
const THREADS: [usize; 2] = [2, 8];
/// Worker processes of section 9, and the threads each runs.
const PROCESSES: [usize; 4] = [1, 2, 4, 8];
const THREADS_EACH: usize = 2;

/// What one drain measured, in sections 8 and 9 alike.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// The server process's CPU (user + system) per job, in µs.
    pub server_cpu_us_per_job: Option<f64>,
    /// Index keys and documents the server examined per job.
    pub keys_examined_per_job: Option<f64>,
    pub docs_examined_per_job: Option<f64>,
    pub round_trips_per_job: f64,
    /// Jobs whose handler ran more than once.
    pub run_twice: u64,
}

impl Drain {
    /// `jobs` drained in `seconds` with `round_trips`, what the server did
    /// meanwhile, and the jobs that ran twice.
    pub(super) fn new(
        jobs: usize,
        seconds: f64,
        server: ServerWork,
        round_trips: u64,
        run_twice: u64,
    ) -> Drain {
        Drain {
            seconds,
            jobs_per_second: jobs as f64 / seconds,
            server_cpu_us_per_job: server.cpu,
            keys_examined_per_job: server.keys,
            docs_examined_per_job: server.docs,
            round_trips_per_job: round_trips as f64 / jobs as f64,
            run_twice,
        }
    }

    /// The medians of the same drain over several rounds (jobs run twice:
    /// their sum).
    pub(super) fn median(drains: &[&Drain]) -> Drain {
        Drain {
            seconds: median(drains.iter().map(|d| d.seconds)),
            jobs_per_second: median(drains.iter().map(|d| d.jobs_per_second)),
            server_cpu_us_per_job: median_of(drains.iter().map(|d| d.server_cpu_us_per_job)),
            keys_examined_per_job: median_of(drains.iter().map(|d| d.keys_examined_per_job)),
            docs_examined_per_job: median_of(drains.iter().map(|d| d.docs_examined_per_job)),
            round_trips_per_job: median(drains.iter().map(|d| d.round_trips_per_job)),
            run_twice: drains.iter().map(|d| d.run_twice).sum(),
        }
    }
}

/// One drain of section 8.
#[derive(Debug, Clone, Serialize)]
pub struct ServerWorkRow {
    pub pattern: String,
    pub backlog: usize,
    pub threads: usize,
    #[serde(flatten)]
    pub drain: Drain,
}

/// One fleet size of section 9.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub processes: usize,
    pub threads_each: usize,
    pub jobs: usize,
    /// Throughput over the one-process row's.
    pub vs_one_process: f64,
    #[serde(flatten)]
    pub drain: Drain,
    /// Jobs the claims asked for, and those another worker took first.
    pub candidates: u64,
    pub lost_to_others: u64,
    pub lost_percent: f64,
}

/// What the server did between [`ServerMeter::start`] and [`ServerMeter::per_job`].
pub(super) struct ServerMeter {
    ticks: Option<u64>,
    scanned: Option<(i64, i64)>,
    pid: Option<u32>,
}

impl ServerMeter {
    pub(super) fn start(queue: &Queue, pid: Option<u32>) -> ServerMeter {
        ServerMeter {
            ticks: pid.and_then(proc_cpu_ticks),
            scanned: scanned(queue),
            pid,
        }
    }

    /// Server CPU µs, keys examined and documents examined, each per job.
    pub(super) fn per_job(&self, queue: &Queue, jobs: usize) -> ServerWork {
        let jobs = jobs.max(1) as f64;
        let cpu = match (self.ticks, self.pid.and_then(proc_cpu_ticks)) {
            (Some(before), Some(after)) => {
                Some((after - before) as f64 / TICKS_PER_SECOND * 1e6 / jobs)
            }
            _ => None,
        };
        let (keys, docs) = match (self.scanned, scanned(queue)) {
            (Some(before), Some(after)) => (
                Some((after.0 - before.0) as f64 / jobs),
                Some((after.1 - before.1) as f64 / jobs),
            ),
            _ => (None, None),
        };
        ServerWork { cpu, keys, docs }
    }
}

/// What the server did per job, where it could be read.
pub(super) struct ServerWork {
    cpu: Option<f64>,
    keys: Option<f64>,
    docs: Option<f64>,
}

impl ServerWork {
    /// The server's CPU per job, in µs, where its process could be read.
    pub(super) fn cpu_us(&self) -> Option<f64> {
        self.cpu
    }
}

/// `serverStatus`'s `metrics.queryExecutor.{scanned, scannedObjects}`
/// (index keys and documents examined), where the server reports them.
fn scanned(queue: &Queue) -> Option<(i64, i64)> {
    let status = queue
        .client()
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .run()
        .ok()?;
    let executor = status
        .get_document("metrics")
        .ok()?
        .get_document("queryExecutor")
        .ok()?;
    Some((
        integer(executor.get("scanned")?)?,
        integer(executor.get("scannedObjects")?)?,
    ))
}

/// What one `mongoq work --report` process wrote.
#[derive(Default)]
struct ProcessReport {
    completed: u64,
    claimed: u64,
    candidates: u64,
    round_trips: u64,
}

impl Bench<'_> {
    /// Section 8: the bare loop and mongoq at 2 and 8 threads, on the small
    /// and the large backlog.
    pub(super) fn server_work(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<ServerWorkRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<ServerWorkRow>> = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            for backlog in [self.config.small_backlog, self.config.jobs] {
                progress(&format!(
                    "server work (round {round}/{rounds}): bare batched loop, {backlog} backlog"
                ));
                rows.push(self.bare(backlog)?);
                for threads in THREADS {
                    for results in [false, true] {
                        let what = if results { ", a result per job" } else { "" };
                        progress(&format!(
                            "server work (round {round}/{rounds}): mongoq --threads {threads}{what}, {backlog} backlog"
                        ));
                        rows.push(self.in_process(backlog, threads, results)?);
                    }
                }
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| ServerWorkRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            ..rows[0].clone()
        }))
    }

    /// mongoq at default flags in this process, timed from `run` to its
    /// return (a process's start-up would swamp a 2,000-job drain). With
    /// `results`, every job returns a small result (`{"n": data}`), as most
    /// real handlers do.
    fn in_process(
        &self,
        backlog: usize,
        threads: usize,
        results: bool,
    ) -> Result<ServerWorkRow, Error> {
        let monitor = Arc::new(Monitor::default());
        let queue = self.shell_backlog_with("bench_server", backlog, Some(Arc::clone(&monitor)))?;
        let (report, seconds, sent, server) =
            self.drain_here(&queue, &monitor, threads, backlog, results)?;
        let (done, run_twice) = settle(&queue)?;
        if done != backlog || report.completed != backlog as u64 {
            return Err(Error::Invalid(format!(
                "bench drain completed {done} of {backlog} jobs (worker reported {}): the run is not valid",
                report.completed
            )));
        }
        Ok(ServerWorkRow {
            pattern: if results {
                "mongoq (default flags), a result per job".into()
            } else {
                "mongoq (default flags)".into()
            },
            backlog,
            threads,
            drain: Drain::new(backlog, seconds, server, sent, run_twice),
        })
    }

    /// Drains `queue` (its `jobs` no-op jobs) with a worker of `threads` in
    /// this process, timed from `run` to its return; returns its report,
    /// the seconds, the commands sent and the server's work per job.
    pub(super) fn drain_here(
        &self,
        queue: &Queue,
        monitor: &Monitor,
        threads: usize,
        jobs: usize,
        results: bool,
    ) -> Result<(mongoq::Report, f64, u64, ServerWork), Error> {
        let config = WorkerConfig {
            threads,
            drain: true,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), config, move |job: &mongoq::Job| {
            Ok(results.then(|| Bson::Document(doc! {"n": job.data.clone()})))
        })?;
        monitor.reset();
        let meter = ServerMeter::start(queue, self.config.server_pid);
        let started = Instant::now();
        let report = worker.run(&Shutdown::new());
        let seconds = started.elapsed().as_secs_f64();
        // The meter's own serverStatus is one command.
        let sent = monitor.sent().saturating_sub(1);
        Ok((report, seconds, sent, meter.per_job(queue, jobs)))
    }

    /// Section 9: 1, 2, 4 and 8 worker processes on one large backlog, and
    /// the floor for the largest (the same jobs, its clients sharing
    /// nothing), interleaved over the rounds.
    pub(super) fn scale_out(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Vec<ScaleRow>, Option<ScaleFloor>), Error> {
        let rounds = self.config.rounds.max(1);
        let largest = PROCESSES[PROCESSES.len() - 1];
        let mut runs: Vec<Vec<ScaleRow>> = Vec::new();
        let mut floors: Vec<ScaleFloor> = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            for processes in PROCESSES {
                progress(&format!(
                    "scale-out (round {round}/{rounds}): {processes} processes × {THREADS_EACH} threads, {} backlog",
                    self.config.jobs
                ));
                rows.push(self.fleet(processes)?);
            }
            runs.push(rows);
            progress(&format!(
                "scale-out (round {round}/{rounds}): the floor, {largest} clients sharing nothing"
            ));
            floors.push(self.floor(largest)?);
        }
        let mut rows = median_rows(&runs, |rows| ScaleRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            candidates: median(rows.iter().map(|r| r.candidates as f64)) as u64,
            lost_to_others: median(rows.iter().map(|r| r.lost_to_others as f64)) as u64,
            lost_percent: median(rows.iter().map(|r| r.lost_percent)),
            ..rows[0].clone()
        });
        let one = rows.first().map_or(1.0, |r| r.drain.jobs_per_second);
        for row in &mut rows {
            row.vs_one_process = row.drain.jobs_per_second / one;
        }
        let floor =
            (!floors.is_empty()).then(|| ScaleFloor::median(&floors.iter().collect::<Vec<_>>()));
        Ok((rows, floor))
    }

    /// One drain of the large backlog by `processes` worker processes.
    fn fleet(&self, processes: usize) -> Result<ScaleRow, Error> {
        let queue = self.shell_backlog("bench_scale", self.config.jobs)?;
        let (drain, reports) = self.processes(&queue, self.config.jobs, processes, THREADS_EACH)?;
        let candidates: u64 = reports.iter().map(|r| r.candidates).sum();
        let claimed: u64 = reports.iter().map(|r| r.claimed).sum();
        let lost = candidates.saturating_sub(claimed);
        Ok(ScaleRow {
            processes,
            threads_each: THREADS_EACH,
            jobs: self.config.jobs,
            vs_one_process: 1.0,
            drain,
            candidates,
            lost_to_others: lost,
            lost_percent: 100.0 * lost as f64 / candidates.max(1) as f64,
        })
    }

    /// A fresh collection holding `n` jobs as a shell script inserts them:
    /// `{data, status: "pending"}`, nothing else, with mongoq's indexes.
    fn shell_backlog(&self, name: &str, n: usize) -> Result<Queue, Error> {
        self.shell_backlog_with(name, n, None)
    }

    fn shell_backlog_with(
        &self,
        name: &str,
        n: usize,
        monitor: Option<Arc<Monitor>>,
    ) -> Result<Queue, Error> {
        let queue = self.queue(name, monitor)?;
        queue.ensure_indexes()?;
        let mut batch = Vec::with_capacity(1_000);
        for i in 0..n {
            batch.push(doc! {"data": {"n": i as i64}, fields::STATUS: Status::Pending});
            if batch.len() == 1_000 || i + 1 == n {
                queue
                    .collection()
                    .insert_many(std::mem::take(&mut batch))
                    .run()
                    .map_err(|e| queue.db_error("insert (bench backlog)", &e))?;
            }
        }
        Ok(queue)
    }

    /// The hand-written loop of issue 14, one thread: find a batch of
    /// pending ids, `updateMany` them to running with a token, `updateMany`
    /// them to completed. No leases, fencing, retries or priorities.
    fn bare(&self, backlog: usize) -> Result<ServerWorkRow, Error> {
        let queue = self.shell_backlog("bench_bare", backlog)?;
        let collection = queue.collection();
        let batch = self.config.default_batch;
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let started = Instant::now();
        let round_trips =
            bare_loop(collection, batch).map_err(|e| queue.db_error("bench bare loop", &e))?;
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(&queue, backlog);
        let done = super::peers::completed(&queue)? as usize;
        let _ = collection.drop().run();
        if done != backlog {
            return Err(Error::Invalid(format!(
                "bench bare loop completed {done} of {backlog} jobs: the run is not valid"
            )));
        }
        Ok(ServerWorkRow {
            pattern: format!("bare batched loop (batch {batch}, 1 thread)"),
            backlog,
            threads: 1,
            drain: Drain::new(backlog, seconds, server, round_trips, 0),
        })
    }

    /// Drains `queue`'s `n` jobs with `count` `mongoq work --drain`
    /// processes started together, each with `threads` threads and no-op
    /// jobs, and checks every job completed once.
    fn processes(
        &self,
        queue: &Queue,
        n: usize,
        count: usize,
        threads: usize,
    ) -> Result<(Drain, Vec<ProcessReport>), Error> {
        let dir = std::env::temp_dir().join(format!(
            "mongoq-bench-{}-{}",
            std::process::id(),
            queue.collection().name()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let meter = ServerMeter::start(queue, self.config.server_pid);
        let started = Instant::now();
        let children = (0..count)
            .map(|i| self.spawn_worker(queue, threads, &dir.join(format!("{i}.json"))))
            .collect::<Result<Vec<Child>, Error>>()?;
        wait_all(children)?;
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(queue, n);
        let reports = (0..count)
            .map(|i| read_report(&dir.join(format!("{i}.json"))))
            .collect::<Result<Vec<_>, Error>>()?;
        let _ = std::fs::remove_dir_all(&dir);
        let (done, run_twice) = settle(queue)?;
        let reported: u64 = reports.iter().map(|r| r.completed).sum();
        if done != n || reported != n as u64 {
            return Err(Error::Invalid(format!(
                "{count} bench workers completed {done} of {n} jobs (they reported {reported}): the run is not valid"
            )));
        }
        let round_trips: u64 = reports.iter().map(|r| r.round_trips).sum();
        Ok((
            Drain::new(n, seconds, server, round_trips, run_twice),
            reports,
        ))
    }

    fn spawn_worker(
        &self,
        queue: &Queue,
        threads: usize,
        report: &PathBuf,
    ) -> Result<Child, Error> {
        Command::new(&self.config.exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args(["--collection", queue.collection().name(), "work", "--drain"])
            .args(["--threads", &threads.to_string(), "--simulate", "0s..0s"])
            .arg("--report")
            .arg(report)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display())))
    }
}

/// Waits for every bench worker process; an error if one failed.
fn wait_all(children: Vec<Child>) -> Result<(), Error> {
    for mut child in children {
        let status = child.wait().map_err(|e| Error::Invalid(e.to_string()))?;
        if !status.success() {
            return Err(Error::Invalid(format!(
                "a bench worker process exited with {status}"
            )));
        }
    }
    Ok(())
}

/// Row `i` of every round, combined by `combine` (medians, in practice).
pub(super) fn median_rows<T>(runs: &[Vec<T>], combine: impl Fn(&[&T]) -> T) -> Vec<T> {
    let count = runs.first().map_or(0, Vec::len);
    (0..count)
        .map(|i| combine(&runs.iter().filter_map(|run| run.get(i)).collect::<Vec<_>>()))
        .collect()
}

/// The median (of an even count, the mean of the middle two).
pub(super) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

/// The median of `values` when every one is present; `None` when any is
/// missing (a round that could not measure it).
pub(super) fn median_if_all(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.collect();
    values.map(|values| median(values.into_iter()))
}

/// The median of the values present; `None` when none is.
pub(super) fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().collect();
    (!present.is_empty()).then(|| median(present.into_iter()))
}

/// Jobs completed, and jobs that ran more than once; then drops the
/// queue's collections.
fn settle(queue: &Queue) -> Result<(usize, u64), Error> {
    let collection = queue.collection();
    let done = super::peers::completed(queue)? as usize;
    let run_twice = collection
        .count_documents(doc! {fields::ATTEMPTS: {"$gt": 1}})
        .run()
        .map_err(|e| queue.db_error("count", &e))?;
    let _ = collection.drop().run();
    let _ = queue.controls_collection().drop().run();
    let _ = queue.workers_collection().drop().run();
    let windows = format!("{}_windows", collection.name());
    let _ = queue
        .database()
        .collection::<Document>(&windows)
        .drop()
        .run();
    Ok((done, run_twice))
}

fn read_report(path: &PathBuf) -> Result<ProcessReport, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Invalid(format!(
            "a bench worker wrote no report at {}: {e}",
            path.display()
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("bad report at {}: {e}", path.display())))?;
    let read = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(ProcessReport {
        completed: read("completed"),
        claimed: read("claimed"),
        candidates: read("claim_candidates"),
        round_trips: read("round_trips"),
    })
}

/// The bare loop's rounds until nothing is pending; returns round trips.
fn bare_loop(collection: &Collection<Document>, batch: usize) -> mongodb::error::Result<u64> {
    let mut round_trips = 0;
    loop {
        let ids: Vec<Bson> = collection
            .find(doc! {fields::STATUS: Status::Pending})
            .projection(doc! {"_id": 1})
            .limit(batch as i64)
            .run()?
            .filter_map(|d| d.ok().and_then(|d| d.get("_id").cloned()))
            .collect();
        round_trips += 1;
        if ids.is_empty() {
            return Ok(round_trips);
        }
        let token = ObjectId::new();
        collection
            .update_many(
                doc! {"_id": {"$in": &ids}, fields::STATUS: Status::Pending},
                doc! {"$set": {fields::STATUS: Status::Running, fields::LEASE_TOKEN: token}},
            )
            .run()?;
        collection
            .update_many(
                doc! {"_id": {"$in": &ids}, fields::LEASE_TOKEN: token},
                doc! {"$set": {fields::STATUS: Status::Completed, fields::COMPLETED_AT: DateTime::now()}},
            )
            .run()?;
        round_trips += 2;
    }
}
