//! `mongoq bench`: how fast mongoq drains a collection, against the
//! patterns people use instead, on the same server in the same run.
//!
//! Every scenario gets a fresh collection in the bench database and drops
//! it afterwards. Throughputs are measured by the clock; round trips by the
//! driver's command monitoring (every command sent counts as one). The
//! peers' patterns are run for a time budget from a full backlog (they can
//! take many minutes to drain one) and their rate is what they completed in
//! that time; mongoq and the ceiling drain the whole backlog. See
//! BENCHMARKS.md for the results and how to read them.

mod backlog;
mod bars;
mod flows;
mod groups;
mod handlers;
mod history;
mod peers;
mod probe;
mod python;
mod render;
mod scenarios;
mod schedules;
mod server;
mod snooze;

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime};
use mongodb::event::EventHandler;
use mongoq::queue::enqueue::new_job_document;
use mongoq::Error;
use mongoq::Shutdown;
use mongoq::{EnqueueOptions, Queue, QueueConfig};
use mongoq::{Worker, WorkerConfig};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use backlog::BacklogResults;
pub use bars::render_fleet_svg;
pub use flows::FlowRow;
pub use groups::GroupsRow;
pub use handlers::HandlerRow;
pub use history::HistoryRow;
pub use python::PythonRow;
pub use render::{render_svg, render_table};
pub use schedules::ScheduleRow;
pub use server::{ScaleFloor, ScaleRow, ServerWorkRow};
pub use snooze::SnoozeRow;

use peers::{ceiling_loop, completed, find_one_and_update_loop, original_loop};
use probe::{machine_description, server_description, Monitor};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Server to measure.
    pub uri: String,
    /// Database for the bench's throwaway collections.
    pub database: String,
    /// Backlog for the drain matrix and the 20,000 shape.
    pub jobs: usize,
    /// The small backlog shape.
    pub small_backlog: usize,
    /// Thread counts of the drain matrix.
    pub threads: Vec<usize>,
    /// Batch sizes of the drain matrix.
    pub batch_sizes: Vec<usize>,
    /// Threads for the peer comparison and cost scenarios.
    pub default_threads: usize,
    /// Batch size for the peer comparison and cost scenarios.
    pub default_batch: usize,
    /// Time budget for each peer pattern.
    pub peer_budget: Duration,
    /// Jobs inserted one at a time for the wake-up latency scenario.
    pub latency_jobs: usize,
    /// Their rate, per second.
    pub latency_rate: f64,
    /// Backlog for the memory scenario.
    pub memory_jobs: usize,
    /// How long the idle-CPU scenario watches.
    pub idle_time: Duration,
    /// Sections to run (`limits`, `drain`: drain and everything after it);
    /// empty runs all.
    pub only: Vec<String>,
    /// The `mongoq` binary, for the scenarios that run it as a process.
    pub exe: PathBuf,
    /// The server's process id, to read its CPU time (local servers only).
    pub server_pid: Option<u32>,
    /// Rounds of sections 8 and 9; each figure is the median of the rounds.
    pub rounds: usize,
}

/// One cell of the drain matrix.
#[derive(Debug, Clone, Serialize)]
pub struct DrainRow {
    pub threads: usize,
    pub batch_size: usize,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    pub round_trips_per_job: f64,
    /// Milliseconds spent waiting for replies, by command name.
    pub reply_wait_ms: BTreeMap<String, f64>,
}

/// A pattern's rate on one backlog shape.
#[derive(Debug, Clone, Serialize)]
pub struct PatternRow {
    pub pattern: String,
    pub backlog: usize,
    pub completed: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// Handler runs beyond one per job (the original design double-runs).
    pub duplicate_runs: usize,
    pub round_trips_per_job: f64,
    /// Milliseconds spent waiting for replies, by command name.
    pub reply_wait_ms: BTreeMap<String, f64>,
}

/// Enqueue rates.
#[derive(Debug, Clone, Serialize)]
pub struct EnqueueRow {
    pub method: String,
    pub jobs: usize,
    pub jobs_per_second: f64,
}

/// Insert-to-handler-start latency.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub mode: String,
    pub jobs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What it costs to run a worker.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    pub round_trips_per_job: f64,
    pub max_rss_mb_with_backlog: f64,
    pub backlog: usize,
    pub idle_cpu_percent: f64,
    pub idle_seconds: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    pub machine: String,
    pub server: String,
    pub drain: Vec<DrainRow>,
    pub patterns: Vec<PatternRow>,
    pub enqueue: Vec<EnqueueRow>,
    pub latency: Vec<LatencyRow>,
    pub cost: Option<CostRow>,
    pub limits: Vec<LimitRow>,
    pub server_work: Vec<ServerWorkRow>,
    pub scale: Vec<ScaleRow>,
    /// Section 9's floor: what the largest fleet's clients cost the server
    /// when they share nothing.
    pub scale_floor: Option<ScaleFloor>,
    pub handlers: Vec<HandlerRow>,
    pub schedules: Vec<ScheduleRow>,
    /// Section 12.
    pub flows: Vec<FlowRow>,
    /// Section 13: the Python client's enqueue.
    pub python: Vec<PythonRow>,
    /// Section 14: a snooze against a failed attempt.
    pub snooze: Vec<SnoozeRow>,
    /// Section 15: a big backlog, against the bare loop.
    pub backlog: BacklogResults,
    /// Section 16: what recording the history costs.
    pub history: Vec<HistoryRow>,
    /// Section 17: fair share between groups.
    pub groups: Vec<GroupsRow>,
}

/// What a fleet-wide limit costs: one drain per mode.
#[derive(Debug, Clone, Serialize)]
pub struct LimitRow {
    pub mode: String,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    pub claim_batches: u64,
    pub claim_attempts: u64,
    pub claim_round_trips: u64,
    /// Round trips taking slots or starts (0 for an unlimited queue).
    pub limit_round_trips: u64,
    /// Per claim made (a batch, or a claim that found nothing).
    pub limit_round_trips_per_claim: f64,
    /// The control thread's round trips (controls, heartbeat, slots), per job.
    pub control_round_trips_per_job: f64,
}

/// Runs every scenario; `progress` gets a short line as each starts.
pub fn run(config: &BenchConfig, progress: &mut dyn FnMut(&str)) -> Result<BenchResults, Error> {
    let bench = Bench {
        config,
        serial: AtomicU64::new(0),
    };
    let admin = bench.queue("bench_probe", None)?;
    let server = server_description(&admin)?;
    let mut results = BenchResults {
        machine: machine_description(),
        server,
        drain: Vec::new(),
        patterns: Vec::new(),
        enqueue: Vec::new(),
        latency: Vec::new(),
        cost: None,
        limits: Vec::new(),
        server_work: Vec::new(),
        scale: Vec::new(),
        scale_floor: None,
        handlers: Vec::new(),
        schedules: Vec::new(),
        flows: Vec::new(),
        python: Vec::new(),
        snooze: Vec::new(),
        backlog: BacklogResults::default(),
        history: Vec::new(),
        groups: Vec::new(),
    };
    let wanted = |section: &str| config.only.is_empty() || config.only.iter().any(|s| s == section);
    bench.sections_before_drain(&wanted, &mut results, progress)?;
    if !wanted("drain") {
        return Ok(results);
    }
    for &threads in &config.threads {
        for &batch in &config.batch_sizes {
            progress(&format!(
                "drain {} jobs, {threads} threads, batch {batch}",
                config.jobs
            ));
            results
                .drain
                .push(bench.drain(config.jobs, threads, batch)?);
        }
    }
    for backlog in [config.small_backlog, config.jobs] {
        let (threads, batch) = (config.default_threads, config.default_batch);
        progress(&format!("mongoq on a {backlog} backlog"));
        let row = bench.drain(backlog, threads, batch)?;
        results.patterns.push(PatternRow {
            pattern: "mongoq".into(),
            backlog,
            completed: backlog,
            seconds: row.seconds,
            jobs_per_second: row.jobs_per_second,
            duplicate_runs: 0,
            round_trips_per_job: row.round_trips_per_job,
            reply_wait_ms: row.reply_wait_ms.clone(),
        });
        for pattern in [
            Pattern::Original,
            Pattern::FindOneAndUpdate,
            Pattern::Ceiling,
        ] {
            progress(&format!("{} on a {backlog} backlog", pattern.name()));
            results
                .patterns
                .push(bench.pattern(pattern, backlog, threads, batch)?);
        }
    }
    progress("enqueue throughput");
    results.enqueue = bench.enqueue(config.jobs)?;
    for change_streams in [true, false] {
        progress(&format!(
            "wake-up latency, change streams {}",
            if change_streams { "on" } else { "off" }
        ));
        results.latency.push(bench.latency(change_streams)?);
    }
    progress("worker memory with a backlog, CPU while idle");
    let default_drain = results
        .drain
        .iter()
        .find(|r| r.threads == config.default_threads && r.batch_size == config.default_batch)
        .map_or_else(
            || bench.drain(config.jobs, config.default_threads, config.default_batch),
            |r| Ok(r.clone()),
        )?;
    let (rss, backlog) = bench.memory()?;
    let idle = bench.idle_cpu()?;
    results.cost = Some(CostRow {
        round_trips_per_job: default_drain.round_trips_per_job,
        max_rss_mb_with_backlog: rss,
        backlog,
        idle_cpu_percent: idle,
        idle_seconds: config.idle_time.as_secs_f64(),
    });
    Ok(results)
}

impl Bench<'_> {
    /// Sections 7 to 15, each when wanted.
    fn sections_before_drain(
        &self,
        wanted: &dyn Fn(&str) -> bool,
        results: &mut BenchResults,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        if wanted("limits") {
            results.limits = self.limits(progress)?;
        }
        if wanted("server") {
            results.server_work = self.server_work(progress)?;
        }
        if wanted("scale") {
            (results.scale, results.scale_floor) = self.scale_out(progress)?;
        }
        if wanted("handlers") {
            results.handlers = self.handlers(progress)?;
        }
        if wanted("schedules") {
            results.schedules = self.schedules(progress)?;
        }
        if wanted("flows") {
            results.flows = self.flows(progress)?;
        }
        if wanted("python") {
            results.python = self.python(progress)?;
        }
        if wanted("snooze") {
            results.snooze = self.snooze(progress)?;
        }
        if wanted("backlog") {
            results.backlog = self.backlog(progress)?;
        }
        if wanted("history") {
            results.history = self.history(progress)?;
        }
        if wanted("groups") {
            results.groups = self.groups(progress)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Pattern {
    Original,
    FindOneAndUpdate,
    Ceiling,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Original => "original design (find, then update)",
            Pattern::FindOneAndUpdate => "findOneAndUpdate per job (agenda, mongodb-queue)",
            Pattern::Ceiling => "ceiling (bare batched calls)",
        }
    }
}

/// Inserts `jobs` (data and options) as new pending jobs, in batches of
/// 1,000 documents.
fn insert_jobs(
    queue: &Queue,
    jobs: impl Iterator<Item = (Bson, EnqueueOptions)>,
) -> Result<(), Error> {
    let now = DateTime::now();
    let mut batch = Vec::with_capacity(1_000);
    for (data, options) in jobs {
        batch.push(new_job_document(ObjectId::new(), data, &options, now));
        if batch.len() == 1_000 {
            queue.insert_batch(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        queue.insert_batch(batch)?;
    }
    Ok(())
}

struct Bench<'a> {
    config: &'a BenchConfig,
    serial: AtomicU64,
}

impl Bench<'_> {
    /// A fresh collection's queue, optionally counting commands.
    fn queue(&self, name: &str, monitor: Option<Arc<Monitor>>) -> Result<Queue, Error> {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let collection = format!("{name}_{}_{n}", std::process::id());
        let queue = Queue::connect_with(
            &QueueConfig {
                uri: self.config.uri.clone(),
                database: self.config.database.clone(),
                collection,
            },
            |options| {
                if let Some(monitor) = monitor {
                    options.command_event_handler =
                        Some(EventHandler::callback(move |event| monitor.observe(event)));
                }
            },
        )?;
        let _ = queue.collection().drop().run();
        Ok(queue)
    }

    fn fill(queue: &Queue, n: usize) -> Result<(), Error> {
        queue.ensure_indexes()?;
        insert_jobs(
            queue,
            (0..n).map(|i| (Bson::Int64(i as i64), EnqueueOptions::default())),
        )
    }

    fn drain(&self, n: usize, threads: usize, batch: usize) -> Result<DrainRow, Error> {
        let monitor = Arc::new(Monitor::default());
        let queue = self.queue("bench_drain", Some(Arc::clone(&monitor)))?;
        Bench::fill(&queue, n)?;
        let config = WorkerConfig {
            threads,
            batch_size: batch,
            drain: true,
            // A draining worker is never idle, so the change stream would
            // only add its own polling to the count.
            change_streams: false,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), config, |_: &mongoq::Job| Ok(None))?;
        monitor.reset();
        let started = Instant::now();
        let report = worker.run(&Shutdown::new());
        let seconds = started.elapsed().as_secs_f64();
        let sent = monitor.sent();
        let done = completed(&queue)?;
        let _ = queue.collection().drop().run();
        if done != n as u64 || report.completed != n as u64 {
            return Err(Error::Invalid(format!(
                "bench drain completed {done} of {n} jobs (worker reported {}): the run is not valid",
                report.completed
            )));
        }
        Ok(DrainRow {
            threads,
            batch_size: batch,
            jobs: n,
            seconds,
            jobs_per_second: n as f64 / seconds,
            round_trips_per_job: sent as f64 / n as f64,
            reply_wait_ms: monitor.millis(),
        })
    }

    /// Section 7: the same drain unlimited, under a concurrency limit and
    /// under a rate limit that does not bind.
    fn limits(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<LimitRow>, Error> {
        let mut rows = Vec::new();
        for (mode, concurrency, rate) in [
            ("unlimited, unpaused", None, None),
            ("concurrency limit 8", Some(8), None),
            // High enough not to bind: what is measured is the limit's
            // overhead, not the limit.
            (
                "rate limit 100000/1s",
                None,
                Some(mongoq::queue::Rate {
                    count: 100_000,
                    per: Duration::from_secs(1),
                }),
            ),
        ] {
            progress(&format!("limits: {mode}"));
            rows.push(self.limited(mode, self.config.small_backlog, concurrency, rate)?);
        }
        Ok(rows)
    }

    /// Drains `n` jobs of a queue under a limit (or none) with the default
    /// settings, counting what the limit cost.
    fn limited(
        &self,
        mode: &str,
        n: usize,
        concurrency: Option<u32>,
        rate: Option<mongoq::queue::Rate>,
    ) -> Result<LimitRow, Error> {
        let queue = self.queue("bench_limits", None)?;
        Bench::fill(&queue, n)?;
        queue.set_concurrency("default", concurrency)?;
        queue.set_rate("default", rate)?;
        let config = WorkerConfig {
            threads: self.config.default_threads,
            batch_size: self.config.default_batch,
            drain: true,
            change_streams: false,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), config, |_: &mongoq::Job| Ok(None))?;
        let started = Instant::now();
        let report = worker.run(&Shutdown::new());
        let seconds = started.elapsed().as_secs_f64();
        let _ = queue.collection().drop().run();
        let _ = queue.controls_collection().drop().run();
        let _ = queue.workers_collection().drop().run();
        if report.completed != n as u64 {
            return Err(Error::Invalid(format!(
                "bench limits ({mode}) completed {} of {n} jobs: the run is not valid",
                report.completed
            )));
        }
        Ok(LimitRow {
            mode: mode.to_string(),
            jobs: n,
            seconds,
            jobs_per_second: n as f64 / seconds,
            claim_batches: report.claim_batches,
            claim_attempts: report.claim_attempts,
            claim_round_trips: report.claim_round_trips,
            limit_round_trips: report.limit_round_trips,
            limit_round_trips_per_claim: report.limit_round_trips as f64
                / report.claim_attempts.max(1) as f64,
            control_round_trips_per_job: report.control_round_trips as f64 / n as f64,
        })
    }

    fn pattern(
        &self,
        pattern: Pattern,
        backlog: usize,
        threads: usize,
        batch: usize,
    ) -> Result<PatternRow, Error> {
        let monitor = Arc::new(Monitor::default());
        let queue = self.queue("bench_peer", Some(Arc::clone(&monitor)))?;
        Bench::fill(&queue, backlog)?;
        monitor.reset();
        let deadline = Instant::now() + self.config.peer_budget;
        let runs = Mutex::new(Vec::<Bson>::new());
        let started = Instant::now();
        let collection = queue.collection().clone();
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let workers = if matches!(pattern, Pattern::Ceiling) {
            1
        } else {
            threads
        };
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let outcome = match pattern {
                        Pattern::Original => original_loop(&collection, deadline, &runs),
                        Pattern::FindOneAndUpdate => {
                            find_one_and_update_loop(&collection, deadline, &runs)
                        }
                        Pattern::Ceiling => ceiling_loop(&collection, deadline, batch, &runs),
                    };
                    if let Err(error) = outcome {
                        *failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(queue.db_error("bench pattern", &error));
                    }
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        if let Some(error) = failure.into_inner().unwrap_or(None) {
            return Err(error);
        }
        let runs = runs.into_inner().unwrap_or_default();
        let distinct: HashSet<String> = runs.iter().map(ToString::to_string).collect();
        let done = completed(&queue)? as usize;
        let sent = monitor.sent();
        let reply_wait_ms = monitor.millis();
        let _ = queue.collection().drop().run();
        Ok(PatternRow {
            pattern: pattern.name().into(),
            backlog,
            completed: done,
            seconds,
            jobs_per_second: done as f64 / seconds,
            duplicate_runs: runs.len() - distinct.len(),
            round_trips_per_job: if done == 0 {
                0.0
            } else {
                sent as f64 / done as f64
            },
            reply_wait_ms,
        })
    }
}
