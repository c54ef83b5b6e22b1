//! Section 16, "history": what recording the queue's history costs, side
//! by side in interleaved rounds: the same [`JOBS`] no-op jobs drained by
//! one worker ([`THREADS`] threads, in this process) with the history on
//! (the default) and with `--no-history`. The worker writes its tallies
//! every 20 s and when it stops, so a drain of a few seconds pays one
//! write: per job, more than a steady worker pays (three writes a minute
//! whatever its throughput), never less.

use std::time::Instant;

use mongodb::bson::doc;
use mongoq::schema::fields;
use mongoq::{Error, Shutdown, Worker, WorkerConfig};
use serde::Serialize;

use super::server::{median, median_rows, Drain, ServerMeter};
use super::Bench;

/// Jobs per drain (fewer when `--jobs` asks for fewer).
pub const JOBS: usize = 20_000;
const THREADS: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub mode: String,
    pub jobs: usize,
    /// History documents the drain left (0 without history).
    pub minutes_written: u64,
    #[serde(flatten)]
    pub drain: Drain,
    /// Server CPU per job against the drain without history (1.0: the same).
    pub server_ratio: Option<f64>,
}

impl Bench<'_> {
    pub(super) fn history(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<HistoryRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<HistoryRow>> = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            // Alternate which goes first, so neither always meets a
            // server warmed (or tired) by the other.
            let order = if round % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                progress(&format!(
                    "history (round {round}/{rounds}): {}",
                    mode_name(on)
                ));
                rows.push(self.history_drain(on)?);
            }
            rows.sort_by_key(|row| row.minutes_written > 0);
            let off = rows[0].drain.server_cpu_us_per_job;
            for row in &mut rows {
                row.server_ratio = match (row.drain.server_cpu_us_per_job, off) {
                    (Some(cpu), Some(off)) if off > 0.0 => Some(cpu / off),
                    _ => None,
                };
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| HistoryRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            server_ratio: rows
                .iter()
                .all(|r| r.server_ratio.is_some())
                .then(|| median(rows.iter().filter_map(|r| r.server_ratio))),
            ..rows[0].clone()
        }))
    }

    fn history_drain(&self, on: bool) -> Result<HistoryRow, Error> {
        let jobs = self.config.jobs.clamp(2, JOBS);
        let queue = self.queue("bench_history", None)?;
        queue.ensure_indexes()?;
        queue.enqueue_many(
            (0..jobs).map(|n| mongodb::bson::Bson::Int64(n as i64)),
            &mongoq::EnqueueOptions::default(),
        )?;
        let config = WorkerConfig {
            threads: THREADS,
            drain: true,
            history: on,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(queue.clone(), config, |_: &mongoq::Job| Ok(None))?;
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let started = Instant::now();
        let report = worker.run(&Shutdown::new());
        let seconds = started.elapsed().as_secs_f64();
        let server = meter.per_job(&queue, jobs);
        let history = mongoq::history::History::new(&queue);
        let done = queue
            .collection()
            .count_documents(doc! {fields::STATUS: "completed"})
            .run()
            .map_err(|e| queue.db_error("count (bench history)", &e))?;
        let (from, to) = mongoq::history::window(
            queue.now(),
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(60),
        );
        let recorded: u64 = history
            .read(from, to, std::time::Duration::from_secs(60), None)?
            .iter()
            .map(|p| p.tally.completed)
            .sum();
        let minutes_written = history
            .collection()
            .count_documents(doc! {})
            .run()
            .map_err(|e| queue.db_error("count (bench history)", &e))?;
        let _ = queue.collection().drop().run();
        let _ = queue.workers_collection().drop().run();
        let _ = history.collection().drop().run();
        let wanted = if on { jobs as u64 } else { 0 };
        if done != jobs as u64 || recorded != wanted {
            return Err(Error::Invalid(format!(
                "bench history drain ({}) completed {done} of {jobs} jobs and recorded {recorded} (wanted {wanted}): the run is not valid",
                mode_name(on)
            )));
        }
        let round_trips = report.claim_round_trips + report.outcome_writes;
        Ok(HistoryRow {
            mode: mode_name(on).into(),
            jobs,
            minutes_written,
            drain: Drain::new(jobs, seconds, server, round_trips, 0),
            server_ratio: None,
        })
    }
}

fn mode_name(on: bool) -> &'static str {
    if on {
        "history on (the default)"
    } else {
        "--no-history"
    }
}

/// The section's table.
pub fn render(rows: &[HistoryRow], out: &mut String) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n16. history: {} no-op jobs drained by one worker ({THREADS} threads), in this process",
        rows[0].jobs
    );
    let _ = writeln!(
        out,
        "   {:<28} {:>10} {:>14} {:>16} {:>10}",
        "mode", "jobs/s", "server µs/job", "vs no history", "minutes"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "   {:<28} {:>10.0} {:>14} {:>16} {:>10}",
            r.mode,
            r.drain.jobs_per_second,
            r.drain
                .server_cpu_us_per_job
                .map_or_else(|| "n/a".into(), |us| format!("{us:.1}")),
            r.server_ratio
                .map_or_else(|| "–".into(), |x| format!("{x:.3}×")),
            r.minutes_written,
        );
    }
}
