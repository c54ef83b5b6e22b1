//! Section 15, "backlog": a big backlog of plain `{data, status}`
//! documents (a shell script's backfill, after `mongoq init`), drained for
//! a time budget from a fresh fill by:
//!
//! - **the bare loop**: one thread; find 500 pending `_id`s sorted by
//!   `priority` and `_id`, claim them with one `updateMany`, complete them
//!   with another (what a careful script does, with no leases);
//! - **mongoq, one worker** (2 threads, no-op jobs);
//! - **mongoq, a fleet of 4 workers** (2 threads each), in this process.
//!
//! For each: when the first job completed, the longest time with no
//! completion while jobs were pending (from the first completion to the
//! end of the budget), the average drain over the budget, and the server's
//! CPU per job. The bare loop's batch interval (the median time between its
//! batches) is the yardstick of the gaps. Then what it takes to count the
//! backlog: `mongoq stats`, the dashboard's overview and Queues page (the
//! pages themselves, rendered as a request would), and the sample
//! `/metrics` takes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongoq::{Error, Queue, QueueConfig, Shutdown, Worker, WorkerConfig};
use serde::Serialize;

use super::server::{median, median_of, median_rows, ServerMeter};
use super::Bench;
use crate::dashboard::{handler, DashboardConfig};
use crate::http::Request;

/// The backlogs measured (at most 50 × `--jobs`).
pub const BACKLOGS: [usize; 2] = [100_000, 1_000_000];
const THREADS: usize = 2;
const BATCH: usize = 500;
const FLEET: usize = 4;

/// One drain of a backlog.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogRow {
    pub backlog: usize,
    pub runner: String,
    /// How long it ran (the budget, or less when it drained everything).
    pub seconds: f64,
    /// Seconds from its start to the first completion.
    pub first_completion_s: Option<f64>,
    /// The longest time with no completion while jobs were pending.
    pub longest_gap_s: Option<f64>,
    /// The median time between batches (the bare loop's yardstick).
    pub batch_interval_s: Option<f64>,
    pub completed: usize,
    pub jobs_per_second: f64,
    pub server_cpu_us_per_job: Option<f64>,
}

/// What counting the full backlog took.
#[derive(Debug, Clone, Serialize)]
pub struct CountRow {
    pub backlog: usize,
    /// Read once a worker counted the jobs (else: right after the fill,
    /// before any worker ran).
    pub counted: bool,
    /// How long counting what the drain left took, after it (counted
    /// rows only).
    pub counting_s: Option<f64>,
    pub stats_s: f64,
    /// What that `stats` said it left out (jobs not counted yet, past its
    /// budget); `None`: it was exact.
    pub not_counted_yet: Option<u64>,
    /// `stats --exact`, which counts them all.
    pub exact_stats_s: f64,
    pub overview_s: f64,
    pub queues_page_s: f64,
    pub metrics_sample_s: f64,
}

/// Section 15's results.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BacklogResults {
    pub drains: Vec<BacklogRow>,
    pub counts: Vec<CountRow>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Bare,
    One,
    Fleet,
}

impl Runner {
    fn name(self) -> String {
        match self {
            Runner::Bare => "bare loop (find 500, claim, complete)".into(),
            Runner::One => format!("mongoq, 1 worker × {THREADS} threads"),
            Runner::Fleet => format!("mongoq, {FLEET} workers × {THREADS} threads"),
        }
    }
}

/// When each job (or batch of jobs) completed, in seconds from the start.
#[derive(Default)]
struct Timeline {
    done: Mutex<Vec<(f64, usize)>>,
}

impl Timeline {
    fn record(&self, at: Instant, start: Instant, jobs: usize) {
        let seconds = at.saturating_duration_since(start).as_secs_f64();
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((seconds, jobs));
    }

    /// First completion, longest gap (to `end` when jobs were left), the
    /// median interval between completions, and the jobs completed.
    fn summary(&self, end: f64, left: bool) -> (Option<f64>, Option<f64>, Option<f64>, usize) {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        done.sort_by(|a, b| a.0.total_cmp(&b.0));
        let completed = done.iter().map(|d| d.1).sum();
        let first = done.first().map(|d| d.0);
        let mut gaps: Vec<f64> = done.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let interval = (!gaps.is_empty()).then(|| median(gaps.iter().copied()));
        if left {
            if let Some(last) = done.last() {
                gaps.push(end - last.0);
            }
        }
        let longest = gaps.into_iter().reduce(f64::max);
        (first, longest, interval, completed)
    }
}

impl Bench<'_> {
    pub(super) fn backlog(&self, progress: &mut dyn FnMut(&str)) -> Result<BacklogResults, Error> {
        let rounds = self.config.rounds.max(1);
        let mut results = BacklogResults::default();
        let mut backlogs: Vec<usize> = BACKLOGS
            .iter()
            .map(|b| (*b).min(self.config.jobs.max(1) * 50))
            .collect();
        backlogs.dedup();
        for backlog in backlogs {
            let budget = budget(backlog);
            let mut runs: Vec<Vec<BacklogRow>> = Vec::new();
            let mut counts = Vec::new();
            let mut counted = Vec::new();
            for round in 1..=rounds {
                let mut rows = Vec::new();
                for runner in [Runner::Bare, Runner::One, Runner::Fleet] {
                    progress(&format!(
                        "backlog {backlog} (round {round}/{rounds}): {}",
                        runner.name()
                    ));
                    let queue = self.queue("bench_backlog", None)?;
                    fill_plain(&queue, backlog)?;
                    if runner == Runner::One {
                        counts.push(count_times(&queue, backlog, false)?);
                    }
                    rows.push(self.backlog_drain(&queue, runner, backlog, budget)?);
                    if runner == Runner::One {
                        // The worker counted while it drained; the rest is
                        // counted here, as the next worker would.
                        let started = Instant::now();
                        count_everything(&queue)?;
                        let mut row = count_times(&queue, backlog, true)?;
                        row.counting_s = Some(started.elapsed().as_secs_f64());
                        counted.push(row);
                    }
                    let _ = queue.collection().drop().run();
                }
                runs.push(rows);
            }
            results.drains.extend(median_rows(&runs, |rows| BacklogRow {
                seconds: median(rows.iter().map(|r| r.seconds)),
                first_completion_s: median_of(rows.iter().map(|r| r.first_completion_s)),
                longest_gap_s: median_of(rows.iter().map(|r| r.longest_gap_s)),
                batch_interval_s: median_of(rows.iter().map(|r| r.batch_interval_s)),
                completed: median(rows.iter().map(|r| r.completed as f64)) as usize,
                jobs_per_second: median(rows.iter().map(|r| r.jobs_per_second)),
                server_cpu_us_per_job: median_of(rows.iter().map(|r| r.server_cpu_us_per_job)),
                ..rows[0].clone()
            }));
            for rows in [&counts, &counted] {
                results.counts.push(CountRow {
                    backlog,
                    counted: rows.iter().any(|c| c.counted),
                    counting_s: median_of(rows.iter().map(|c| c.counting_s)),
                    stats_s: median(rows.iter().map(|c: &CountRow| c.stats_s)),
                    not_counted_yet: median_of(
                        rows.iter().map(|c| c.not_counted_yet.map(|n| n as f64)),
                    )
                    .map(|n| n as u64),
                    exact_stats_s: median(rows.iter().map(|c| c.exact_stats_s)),
                    overview_s: median(rows.iter().map(|c| c.overview_s)),
                    queues_page_s: median(rows.iter().map(|c| c.queues_page_s)),
                    metrics_sample_s: median(rows.iter().map(|c| c.metrics_sample_s)),
                });
            }
        }
        Ok(results)
    }

    fn backlog_drain(
        &self,
        queue: &Queue,
        runner: Runner,
        backlog: usize,
        budget: Duration,
    ) -> Result<BacklogRow, Error> {
        let timeline = Arc::new(Timeline::default());
        let meter = ServerMeter::start(queue, self.config.server_pid);
        let start = Instant::now();
        match runner {
            Runner::Bare => bare_loop(queue, start + budget, &timeline)?,
            Runner::One | Runner::Fleet => {
                let workers = if runner == Runner::Fleet { FLEET } else { 1 };
                let config = QueueConfig {
                    uri: self.config.uri.clone(),
                    database: self.config.database.clone(),
                    collection: queue.collection().name().to_string(),
                };
                run_workers(&config, workers, budget, start, &timeline)?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let left = any_pending(queue)?;
        let (first, longest, interval, completed) = timeline.summary(seconds, left);
        let server = meter.per_job(queue, completed.max(1));
        Ok(BacklogRow {
            backlog,
            runner: runner.name(),
            seconds,
            first_completion_s: first,
            longest_gap_s: longest,
            batch_interval_s: interval.filter(|_| runner == Runner::Bare),
            completed,
            jobs_per_second: completed as f64 / seconds,
            server_cpu_us_per_job: server.cpu_us(),
        })
    }
}

/// How long each runner gets: enough for the bare loop's first batches at
/// a million (seconds each on a server whose reads cost what they match).
fn budget(backlog: usize) -> Duration {
    if backlog >= 500_000 {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(30)
    }
}

/// Whether jobs were left pending (so the end of the budget closes a gap).
fn any_pending(queue: &Queue) -> Result<bool, Error> {
    let pending = queue
        .collection()
        .find_one(doc! {"status": "pending"})
        .projection(doc! {"_id": 1})
        .run()
        .map_err(|e| queue.db_error("find", &e))?;
    Ok(pending.is_some())
}

/// `n` documents as a shell script inserts them, after the indexes exist.
fn fill_plain(queue: &Queue, n: usize) -> Result<(), Error> {
    queue.ensure_indexes()?;
    for start in (0..n).step_by(10_000) {
        let documents: Vec<Document> = (start..n.min(start + 10_000))
            .map(|i| doc! {"data": i as i64, "status": "pending"})
            .collect();
        queue
            .collection()
            .insert_many(documents)
            .run()
            .map_err(|e| queue.db_error("insert", &e))?;
    }
    Ok(())
}

/// The bare loop, until `deadline` or nothing is pending.
fn bare_loop(queue: &Queue, deadline: Instant, timeline: &Timeline) -> Result<(), Error> {
    let collection = queue.collection();
    let start = Instant::now();
    while Instant::now() < deadline {
        let ids: Vec<Bson> = collection
            .find(doc! {"status": "pending"})
            .sort(doc! {"priority": -1, "_id": 1})
            .projection(doc! {"_id": 1})
            .limit(BATCH as i64)
            .run()
            .map_err(|e| queue.db_error("find", &e))?
            .filter_map(|d| d.ok().and_then(|d| d.get("_id").cloned()))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        collection
            .update_many(
                doc! {"_id": {"$in": &ids}, "status": "pending"},
                doc! {"$set": {"status": "running", "lease_until": now}, "$inc": {"attempts": 1}},
            )
            .run()
            .map_err(|e| queue.db_error("update", &e))?;
        let done = collection
            .update_many(
                doc! {"_id": {"$in": &ids}, "status": "running"},
                doc! {"$set": {"status": "completed", "completed_at": DateTime::now()}},
            )
            .run()
            .map_err(|e| queue.db_error("update", &e))?;
        timeline.record(Instant::now(), start, done.modified_count as usize);
    }
    Ok(())
}

/// `workers` mongoq workers in this process (each its own client and
/// worker id, so they share the queue as separate processes do), stopped
/// at the end of `budget` or when the backlog is drained.
fn run_workers(
    config: &QueueConfig,
    workers: usize,
    budget: Duration,
    start: Instant,
    timeline: &Arc<Timeline>,
) -> Result<(), Error> {
    let shutdown = Shutdown::new();
    let mut threads = Vec::new();
    for n in 0..workers {
        // `RUST_LOG=mongoq::commands=debug`: the workers' commands, as the
        // CLI logs them (what a stall waited for).
        let queue = Queue::connect_with(config, |options| {
            if log::log_enabled!(target: "mongoq::commands", log::Level::Debug) {
                let trace = mongoq::queue::commands::CommandLog::default();
                options.command_event_handler =
                    Some(mongodb::event::EventHandler::callback(move |event| {
                        trace.observe(&event);
                    }));
            }
        })?;
        let timeline = Arc::clone(timeline);
        let config = WorkerConfig {
            threads: THREADS,
            batch_size: BATCH,
            drain: true,
            worker_id: format!("bench-backlog-{}-{n}", std::process::id()),
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue, config, move |_job: &mongoq::Job| {
            timeline.record(Instant::now(), start, 1);
            Ok(None)
        })?;
        let stop = shutdown.clone();
        threads.push(std::thread::spawn(move || worker.run(&stop)));
    }
    let stopper = shutdown.clone();
    let timer = std::thread::spawn(move || {
        let _ = stopper.sleep(budget);
        stopper.request();
    });
    for thread in threads {
        let _ = thread.join();
    }
    shutdown.request();
    let _ = timer.join();
    Ok(())
}

/// Runs rounds of the counts' reconciler until every job is counted.
fn count_everything(queue: &Queue) -> Result<(), Error> {
    let counts = mongoq::counts::Counts::new(queue);
    loop {
        match counts.reconcile_with(mongoq::counts::BATCH, Duration::ZERO)? {
            mongoq::counts::Reconciled::Counted { more: false, .. } => return Ok(()),
            mongoq::counts::Reconciled::Counted { .. } => {}
            // A lock the stopped worker left: it expires.
            mongoq::counts::Reconciled::Busy => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How long `stats`, the overview, the Queues page and the metrics' sample
/// take on the full backlog.
fn count_times(queue: &Queue, backlog: usize, counted: bool) -> Result<CountRow, Error> {
    let time = |f: &dyn Fn() -> Result<(), Error>| -> Result<f64, Error> {
        let started = Instant::now();
        f()?;
        Ok(started.elapsed().as_secs_f64())
    };
    let pages = handler(queue.clone(), DashboardConfig::default());
    let page = |path: &str| {
        let request = Request {
            method: "GET".into(),
            path: path.into(),
            query: Vec::new(),
            headers: vec![("host".into(), "localhost".into())],
            body: Vec::new(),
        };
        let response = pages(&request);
        if response.status == 200 {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "the dashboard answered {path} with {}",
                response.status
            )))
        }
    };
    let started = Instant::now();
    let stats = queue.stats()?;
    let stats_s = started.elapsed().as_secs_f64();
    Ok(CountRow {
        backlog,
        counted,
        counting_s: None,
        stats_s,
        not_counted_yet: stats.not_counted_yet,
        exact_stats_s: time(&|| queue.stats_exact().map(|_| ()))?,
        overview_s: time(&|| page("/"))?,
        queues_page_s: time(&|| page("/queues"))?,
        metrics_sample_s: time(&|| queue.stats().map(|_| ()))?,
    })
}

/// Section 15 as text, with the bars as ratios to the bare loop.
pub fn render(results: &BacklogResults, out: &mut String) {
    use std::fmt::Write;
    if results.drains.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n15. backlog: plain {{data, status}} documents after `mongoq init`, each runner from a fresh fill for a time budget"
    );
    let secs = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
    let mut backlogs: Vec<usize> = results.counts.iter().map(|c| c.backlog).collect();
    backlogs.dedup();
    for backlog in backlogs {
        let rows: Vec<&BacklogRow> = results
            .drains
            .iter()
            .filter(|r| r.backlog == backlog)
            .collect();
        let _ = writeln!(
            out,
            "   {backlog} jobs          {:>8} {:>10} {:>10} {:>9} {:>8} {:>13}",
            "ran s", "first s", "gap s", "done", "jobs/s", "server µs/job"
        );
        for r in &rows {
            let _ = writeln!(
                out,
                "   {:<42} {:>5.0} {:>10} {:>10} {:>9} {:>8.0} {:>13}",
                r.runner,
                r.seconds,
                secs(r.first_completion_s),
                secs(r.longest_gap_s),
                r.completed,
                r.jobs_per_second,
                r.server_cpu_us_per_job
                    .map_or_else(|| "n/a".into(), |us| format!("{us:.0}")),
            );
        }
        if let Some(bare) = rows.iter().find(|r| r.batch_interval_s.is_some()) {
            let _ = writeln!(
                out,
                "   the bare loop's batch interval: {} s",
                secs(bare.batch_interval_s)
            );
            for r in rows.iter().filter(|r| r.batch_interval_s.is_none()) {
                let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                    _ => "–".into(),
                };
                let _ = writeln!(
                    out,
                    "   {}: first completion {} of the loop's first batch (bar ≤ 1.5×), longest gap {} of its interval (bar ≤ 2×), drain {:.1}× (bar ≥ 1×)",
                    r.runner,
                    ratio(r.first_completion_s, bare.first_completion_s),
                    ratio(r.longest_gap_s, bare.batch_interval_s),
                    r.jobs_per_second / bare.jobs_per_second.max(f64::MIN_POSITIVE),
                );
            }
        }
        for c in results.counts.iter().filter(|c| c.backlog == backlog) {
            let when = if c.counted {
                format!(
                    "counted (the rest after the drain in {:.0} s)",
                    c.counting_s.unwrap_or(0.0)
                )
            } else {
                "right after the fill, nothing counted".to_string()
            };
            let said = c.not_counted_yet.map_or_else(
                || "exact".to_string(),
                |n| format!("leaving out about {n} not counted yet"),
            );
            let _ = writeln!(
                out,
                "   {backlog} jobs, {when}: stats {:.2} s ({said}; --exact {:.2} s), overview {:.2} s, Queues page {:.2} s, /metrics sample {:.2} s (bar ≤ 2 s)",
                c.stats_s, c.exact_stats_s, c.overview_s, c.queues_page_s, c.metrics_sample_s
            );
        }
    }
}
