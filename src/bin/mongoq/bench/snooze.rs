//! Section 14, "snooze": what a handler's "not now" costs the server
//! against a failed attempt, drained in this process by one worker (2
//! threads, no-op jobs), in interleaved rounds:
//!
//! - **plain**: [`JOBS`] jobs that complete at once;
//! - **half snoozed once**: every second job snoozes once (0 s), then
//!   completes: one more claim and one more outcome statement per snooze;
//! - **half failed once**: every second job fails its first attempt
//!   (`retry_after` 0 s, so neither waits), then completes.
//!
//! The extra server CPU per snooze (or failure) is the drain's CPU per job
//! less the plain drain's, times the jobs, over the snoozes (failures).

use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongoq::schema::fields;
use mongoq::{Error, HandlerError, Queue, Shutdown, Worker, WorkerConfig};
use serde::Serialize;

use super::server::{median_if_all, median_rows, Drain, ServerMeter};
use super::Bench;

/// Jobs per drain (fewer when `--jobs` asks for fewer).
pub const JOBS: usize = 2_000;
const THREADS: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct SnoozeRow {
    pub mode: String,
    pub jobs: usize,
    /// Snoozes (or failed attempts) the drain wrote.
    pub not_now: usize,
    #[serde(flatten)]
    pub drain: Drain,
    /// Server CPU per snooze (or failure) beyond what plain jobs cost.
    pub extra_server_us_each: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Snoozed,
    Failed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain jobs",
            Mode::Snoozed => "half snoozed once (HandlerError::snooze)",
            Mode::Failed => "half failed once (a retried attempt)",
        }
    }
}

impl Bench<'_> {
    pub(super) fn snooze(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<SnoozeRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<SnoozeRow>> = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            for mode in [Mode::Plain, Mode::Snoozed, Mode::Failed] {
                progress(&format!("snooze (round {round}/{rounds}): {}", mode.name()));
                rows.push(self.snooze_drain(mode)?);
            }
            let plain = rows[0].drain.server_cpu_us_per_job;
            for row in &mut rows[1..] {
                row.extra_server_us_each = match (row.drain.server_cpu_us_per_job, plain) {
                    (Some(cpu), Some(plain)) => {
                        Some((cpu - plain) * row.jobs as f64 / row.not_now.max(1) as f64)
                    }
                    _ => None,
                };
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| SnoozeRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            extra_server_us_each: median_if_all(rows.iter().map(|r| r.extra_server_us_each)),
            ..rows[0].clone()
        }))
    }

    fn snooze_drain(&self, mode: Mode) -> Result<SnoozeRow, Error> {
        let jobs = self.config.jobs.clamp(2, JOBS);
        let queue = self.queue("bench_snooze", None)?;
        queue.ensure_indexes()?;
        queue.enqueue_many(
            (0..jobs).map(|n| mongodb::bson::Bson::Int64(n as i64)),
            &mongoq::EnqueueOptions::default(),
        )?;
        let config = WorkerConfig {
            threads: THREADS,
            drain: true,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), config, move |job: &mongoq::Job| {
            let second = matches!(job.data, mongodb::bson::Bson::Int64(n) if n % 2 == 1);
            match mode {
                Mode::Snoozed if second && job.snoozes == 0 => {
                    Err(HandlerError::snooze(Duration::ZERO))
                }
                Mode::Failed if second && job.attempt == 1 => {
                    Err(HandlerError::retry("not yet").after(Duration::ZERO))
                }
                _ => Ok(None),
            }
        })?;
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let started = Instant::now();
        let report = worker.run(&Shutdown::new());
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(&queue, jobs);
        let done = count(&queue, doc! {fields::STATUS: "completed"})?;
        let snoozed = count(&queue, doc! {fields::SNOOZES: 1})?;
        let _ = queue.collection().drop().run();
        let _ = queue.workers_collection().drop().run();
        let not_now = match mode {
            Mode::Plain => 0,
            Mode::Snoozed => snoozed,
            Mode::Failed => report.retried as usize,
        };
        if done != jobs || (mode != Mode::Plain && not_now != jobs / 2) {
            return Err(Error::Invalid(format!(
                "bench snooze drain ({}) completed {done} of {jobs} jobs with {not_now} of {} snoozes or failures: the run is not valid",
                mode.name(),
                jobs / 2
            )));
        }
        let round_trips = report.claim_round_trips + report.outcome_writes;
        Ok(SnoozeRow {
            mode: mode.name().into(),
            jobs,
            not_now,
            drain: Drain::new(jobs, seconds, server, round_trips, 0),
            extra_server_us_each: None,
        })
    }
}

fn count(queue: &Queue, filter: mongodb::bson::Document) -> Result<usize, Error> {
    queue
        .collection()
        .count_documents(filter)
        .run()
        .map(|n| n as usize)
        .map_err(|e| queue.db_error("count (bench snooze)", &e))
}

/// The section's table.
pub fn render(rows: &[SnoozeRow], out: &mut String) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n14. snooze: {} no-op jobs drained by one worker ({THREADS} threads), in this process",
        rows[0].jobs
    );
    let _ = writeln!(
        out,
        "   {:<46} {:>10} {:>14} {:>18}",
        "mode", "jobs/s", "server µs/job", "extra µs each"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "   {:<46} {:>10.0} {:>14} {:>18}",
            r.mode,
            r.drain.jobs_per_second,
            r.drain
                .server_cpu_us_per_job
                .map_or_else(|| "n/a".into(), |us| format!("{us:.0}")),
            r.extra_server_us_each
                .map_or_else(|| "–".into(), |us| format!("{us:.0}")),
        );
    }
    if let [_, snoozed, failed] = rows {
        if let (Some(s), Some(f)) = (snoozed.extra_server_us_each, failed.extra_server_us_each) {
            let _ = writeln!(
                out,
                "   a snooze costs the server {:.2}× what a failed attempt does",
                s / f
            );
        }
    }
}
