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

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ReturnDocument;
use mongodb::sync::Collection;
use serde::Serialize;

use crate::error::Error;
use crate::job::fields;
use crate::queue::{new_job_document, EnqueueOptions, Queue, QueueConfig};
use crate::shutdown::Shutdown;
use crate::worker::{Worker, WorkerConfig};

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
    /// The `mongoq` binary, for the scenarios that run it as a process.
    pub exe: PathBuf,
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

/// Counts the commands a client sends and how long each kind took to be
/// answered (the driver's command monitoring), to see where time goes.
#[derive(Default)]
struct Monitor {
    commands: AtomicU64,
    millis: Mutex<BTreeMap<String, f64>>,
}

impl Monitor {
    fn observe(&self, event: CommandEvent) {
        match event {
            CommandEvent::Started(_) => {
                self.commands.fetch_add(1, Ordering::Relaxed);
            }
            CommandEvent::Succeeded(done) => self.add(&done.command_name, done.duration),
            CommandEvent::Failed(failed) => self.add(&failed.command_name, failed.duration),
            _ => {}
        }
    }

    fn add(&self, name: &str, took: Duration) {
        let mut millis = self
            .millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *millis.entry(name.to_string()).or_insert(0.0) += took.as_secs_f64() * 1000.0;
    }

    fn reset(&self) {
        self.commands.store(0, Ordering::Relaxed);
        self.millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn sent(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    fn millis(&self) -> BTreeMap<String, f64> {
        self.millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
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
    };
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
        let now = DateTime::now();
        let options = EnqueueOptions::default();
        let mut batch = Vec::with_capacity(1_000);
        for i in 0..n {
            batch.push(new_job_document(
                ObjectId::new(),
                Bson::Int64(i as i64),
                &options,
                now,
            ));
            if batch.len() == 1_000 {
                queue.insert_batch(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            queue.insert_batch(batch)?;
        }
        Ok(())
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
        let worker = Worker::new(queue.clone(), config, |_: &crate::Job| Ok(None))?;
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

    fn enqueue(&self, n: usize) -> Result<Vec<EnqueueRow>, Error> {
        let mut rows = Vec::new();
        // `mongoq enqueue` reading stdin, as a shell pipeline would.
        let queue = self.queue("bench_enqueue", None)?;
        let mut input = String::with_capacity(n * 12);
        for i in 0..n {
            use std::fmt::Write as _;
            let _ = writeln!(input, "{{\"n\": {i}}}");
        }
        let started = Instant::now();
        let mut child = Command::new(&self.config.exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args([
                "--collection",
                queue.collection().name(),
                "enqueue",
                "--quiet",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display()))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| Error::Invalid(format!("cannot feed mongoq enqueue: {e}")))?;
        }
        let status = child.wait().map_err(|e| Error::Invalid(e.to_string()))?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success()
            || queue.collection().count_documents(doc! {}).run().ok() != Some(n as u64)
        {
            return Err(Error::Invalid(
                "mongoq enqueue did not insert every job".into(),
            ));
        }
        rows.push(EnqueueRow {
            method: "mongoq enqueue (stdin)".into(),
            jobs: n,
            jobs_per_second: n as f64 / seconds,
        });
        let _ = queue.collection().drop().run();

        let queue = self.queue("bench_enqueue", None)?;
        let started = Instant::now();
        queue.enqueue_many(
            (0..n).map(|i| Bson::Int64(i as i64)),
            &EnqueueOptions::default(),
        )?;
        rows.push(EnqueueRow {
            method: "Queue::enqueue_many (library)".into(),
            jobs: n,
            jobs_per_second: n as f64 / started.elapsed().as_secs_f64(),
        });
        let _ = queue.collection().drop().run();

        let queue = self.queue("bench_enqueue", None)?;
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let docs: Vec<Document> = chunk
                .iter()
                .map(|i| doc! {"data": *i as i64, "status": "pending"})
                .collect();
            queue
                .collection()
                .insert_many(docs)
                .run()
                .map_err(|e| queue.db_error("insert", &e))?;
        }
        rows.push(EnqueueRow {
            method: "bare insert_many of {data, status} (reference)".into(),
            jobs: n,
            jobs_per_second: n as f64 / started.elapsed().as_secs_f64(),
        });
        let _ = queue.collection().drop().run();
        Ok(rows)
    }

    fn latency(&self, change_streams: bool) -> Result<LatencyRow, Error> {
        let queue = self.queue("bench_latency", None)?;
        queue.ensure_indexes()?;
        let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
        let recorder = Arc::clone(&samples);
        let config = WorkerConfig {
            threads: 2,
            change_streams,
            ..WorkerConfig::default()
        };
        let poll = config.poll_interval;
        let worker = Worker::new(queue.clone(), config, move |job: &crate::Job| {
            if let Some(sent) = job.data.as_document().and_then(|d| d.get_f64("t").ok()) {
                let waited = epoch_ms() - sent;
                recorder
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(waited);
            }
            Ok(None)
        })?;
        let shutdown = Shutdown::new();
        let stopper = shutdown.clone();
        let handle = std::thread::spawn(move || worker.run(&stopper));
        // Let the worker start, find nothing, and settle into idle polling.
        std::thread::sleep(Duration::from_secs(2));
        let gap = Duration::from_secs_f64(1.0 / self.config.latency_rate);
        for _ in 0..self.config.latency_jobs {
            queue.enqueue(
                Bson::Document(doc! {"t": epoch_ms()}),
                &EnqueueOptions::default(),
            )?;
            std::thread::sleep(gap);
        }
        let deadline = Instant::now() + poll * 3 + Duration::from_secs(5);
        while samples.lock().map_or(0, |s| s.len()) < self.config.latency_jobs
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        shutdown.request();
        let _ = handle.join();
        let _ = queue.collection().drop().run();
        let mut samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        if samples.len() < self.config.latency_jobs {
            return Err(Error::Invalid(format!(
                "latency: only {} of {} jobs ran",
                samples.len(),
                self.config.latency_jobs
            )));
        }
        samples.sort_by(f64::total_cmp);
        Ok(LatencyRow {
            mode: if change_streams {
                "change stream".into()
            } else {
                format!(
                    "polling only (--poll-interval {})",
                    crate::duration::format_duration(poll)
                )
            },
            jobs: samples.len(),
            p50_ms: percentile(&samples, 0.50),
            p99_ms: percentile(&samples, 0.99),
            max_ms: samples.last().copied().unwrap_or(0.0),
        })
    }

    /// Peak RSS of a `mongoq work` process draining a large backlog.
    fn memory(&self) -> Result<(f64, usize), Error> {
        let n = self.config.memory_jobs;
        let queue = self.queue("bench_memory", None)?;
        Bench::fill(&queue, n)?;
        let mut child = self.worker_process(
            queue.collection().name(),
            &["--drain", "--simulate", "0ms..0ms", "--no-change-stream"],
        )?;
        let mut peak_kb = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(kb) = proc_status_kb(child.id(), "VmRSS:") {
                peak_kb = peak_kb.max(kb);
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let _ = queue.collection().drop().run();
        Ok((peak_kb as f64 / 1024.0, n))
    }

    /// CPU used by an idle `mongoq work` (change stream on, default polling).
    fn idle_cpu(&self) -> Result<f64, Error> {
        let queue = self.queue("bench_idle", None)?;
        queue.ensure_indexes()?;
        let mut child =
            self.worker_process(queue.collection().name(), &["--simulate", "0ms..0ms"])?;
        std::thread::sleep(Duration::from_secs(2));
        let before = proc_cpu_ticks(child.id());
        std::thread::sleep(self.config.idle_time);
        let after = proc_cpu_ticks(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let _ = queue.collection().drop().run();
        let (Some(before), Some(after)) = (before, after) else {
            return Err(Error::Invalid(
                "cannot read the worker's CPU time from /proc".into(),
            ));
        };
        // Linux reports CPU time in clock ticks of 1/100 s.
        let seconds = (after - before) as f64 / 100.0;
        Ok(100.0 * seconds / self.config.idle_time.as_secs_f64())
    }

    fn worker_process(
        &self,
        collection: &str,
        args: &[&str],
    ) -> Result<std::process::Child, Error> {
        Command::new(&self.config.exe)
            .args([
                "--uri",
                &self.config.uri,
                "--db",
                &self.config.database,
                "--collection",
                collection,
                "work",
            ])
            .args(["--threads", &self.config.default_threads.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display())))
    }
}

fn completed(queue: &Queue) -> Result<u64, Error> {
    queue
        .collection()
        .count_documents(doc! {fields::STATUS: fields::COMPLETED})
        .run()
        .map_err(|e| queue.db_error("count", &e))
}

fn record(runs: &Mutex<Vec<Bson>>, id: Bson) {
    runs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(id);
}

/// The blog post's loop: find a pending job, work, save it completed. Two
/// threads can find the same job and both run it; counted as duplicates.
fn original_loop(
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
fn find_one_and_update_loop(
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
fn ceiling_loop(
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

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = proc_meminfo_gib().map_or_else(String::new, |g| format!(", {g:.0} GiB RAM"));
    format!(
        "{cpus} CPUs ({model}){memory}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn proc_meminfo_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0 / 1024.0)
}

fn server_description(queue: &Queue) -> Result<String, Error> {
    let info = queue
        .database()
        .run_command(doc! {"buildInfo": 1})
        .run()
        .map_err(|e| queue.db_error("buildInfo", &e))?;
    let version = info.get_str("version").unwrap_or("unknown");
    let hello = queue.database().run_command(doc! {"hello": 1}).run().ok();
    let topology = match hello {
        Some(h) if h.get_str("setName").is_ok() => "replica set",
        Some(h) if h.get_str("msg").ok() == Some("isdbgrid") => "sharded (mongos)",
        _ => "standalone",
    };
    Ok(format!(
        "MongoDB-compatible server reporting version {version}, {topology}, at {}",
        queue.redacted_uri()
    ))
}

/// The results as a plain-text report.
#[allow(clippy::too_many_lines)] // one report, written top to bottom
pub fn render_table(results: &BenchResults) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {}\nserver:  {}\n",
        results.machine, results.server
    );
    let _ = writeln!(out, "1. drain throughput (no-op jobs, one worker)");
    let _ = writeln!(
        out,
        "   {:>7} {:>6} {:>7} {:>9} {:>12}",
        "threads", "batch", "jobs", "jobs/s", "trips/job"
    );
    for r in &results.drain {
        let _ = writeln!(
            out,
            "   {:>7} {:>6} {:>7} {:>9.0} {:>12.4}",
            r.threads, r.batch_size, r.jobs, r.jobs_per_second, r.round_trips_per_job
        );
    }
    let _ = writeln!(
        out,
        "\n2-3. patterns on the same server (same threads and batch size)"
    );
    let _ = writeln!(
        out,
        "   {:<52} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "pattern", "backlog", "done", "jobs/s", "dup runs", "trips/job", "mongoq ×"
    );
    for r in &results.patterns {
        let mongoq = results
            .patterns
            .iter()
            .find(|m| m.pattern == "mongoq" && m.backlog == r.backlog)
            .map_or(0.0, |m| m.jobs_per_second);
        let ratio = if r.jobs_per_second > 0.0 {
            mongoq / r.jobs_per_second
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "   {:<52} {:>7} {:>9} {:>9.0} {:>10} {:>10.3} {:>9.1}",
            r.pattern,
            r.backlog,
            r.completed,
            r.jobs_per_second,
            r.duplicate_runs,
            r.round_trips_per_job,
            ratio
        );
    }
    let _ = writeln!(
        out,
        "\n   where the time goes: ms waiting for replies per 1,000 jobs, by command"
    );
    for r in &results.patterns {
        let per_k = |ms: f64| ms * 1000.0 / r.completed.max(1) as f64;
        let parts: Vec<String> = r
            .reply_wait_ms
            .iter()
            .map(|(name, ms)| format!("{name} {:.0}", per_k(*ms)))
            .collect();
        let _ = writeln!(
            out,
            "   {:<52} {:>7}  {}",
            r.pattern,
            r.backlog,
            parts.join(", ")
        );
    }
    let _ = writeln!(out, "\n4. enqueue throughput");
    for r in &results.enqueue {
        let _ = writeln!(
            out,
            "   {:<52} {:>7} jobs {:>9.0} jobs/s",
            r.method, r.jobs, r.jobs_per_second
        );
    }
    let _ = writeln!(out, "\n5. wake-up latency (insert to handler start)");
    for r in &results.latency {
        let _ = writeln!(
            out,
            "   {:<40} n={:<4} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            r.mode, r.jobs, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    if let Some(c) = &results.cost {
        let _ = writeln!(out, "\n6. cost");
        let _ = writeln!(
            out,
            "   round trips per job (default settings): {:.4}",
            c.round_trips_per_job
        );
        let _ = writeln!(
            out,
            "   worker peak RSS with a {} job backlog: {:.1} MB",
            c.backlog, c.max_rss_mb_with_backlog
        );
        let _ = writeln!(
            out,
            "   idle worker CPU over {:.0} s: {:.2}%",
            c.idle_seconds, c.idle_cpu_percent
        );
    }
    out
}

/// A line chart of drain jobs/s against batch size, one line per thread count.
#[allow(clippy::too_many_lines)] // one SVG document, written top to bottom
pub fn render_svg(results: &BenchResults) -> String {
    use std::fmt::Write;
    let (width, height, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 150.0);
    let mut batches: Vec<usize> = results.drain.iter().map(|r| r.batch_size).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut threads: Vec<usize> = results.drain.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let max_rate = results
        .drain
        .iter()
        .map(|r| r.jobs_per_second)
        .fold(1.0, f64::max)
        * 1.1;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |i: usize| {
        left + if batches.len() > 1 {
            plot_w * i as f64 / (batches.len() - 1) as f64
        } else {
            plot_w / 2.0
        }
    };
    let y = |rate: f64| top + plot_h * (1.0 - rate / max_rate);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">mongoq drain throughput ({} no-op jobs)</text>"#,
        left + plot_w / 2.0,
        results.drain.first().map_or(0, |r| r.jobs)
    );
    for step in 0..=5 {
        let rate = max_rate * f64::from(step) / 5.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{rate:.0}</text>"##,
            left + plot_w,
            left - 6.0,
            y(rate) + 4.0,
            y = y(rate)
        );
    }
    for (i, b) in batches.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{b}</text>"#,
            x(i),
            top + plot_h + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">--batch-size</text>"#,
        left + plot_w / 2.0,
        height - 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">jobs/s</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (k, t) in threads.iter().enumerate() {
        let color = colors[k % colors.len()];
        let points: Vec<String> = batches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                results
                    .drain
                    .iter()
                    .find(|r| r.threads == *t && r.batch_size == *b)
                    .map(|r| format!("{:.1},{:.1}", x(i), y(r.jobs_per_second)))
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(svg, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        let ly = top + 20.0 * k as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">--threads {t}</text>"#,
            width - right + 15.0,
            width - right + 40.0,
            width - right + 46.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
