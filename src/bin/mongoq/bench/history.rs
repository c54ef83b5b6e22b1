//! Section 16, "history": what observing the queue costs, side by side in
//! interleaved rounds: the same [`JOBS`] no-op jobs drained by one worker
//! ([`THREADS`] threads, in this process) with `--no-history`, with the
//! history on (the default), and with the history and OpenTelemetry traces
//! of every attempt (100% sampled) exported over OTLP/HTTP to a sink in
//! this process that answers each export at once. The worker writes its
//! tallies every 20 s and when it stops, so a drain of a few seconds pays
//! one write: per job, more than a steady worker pays (three writes a
//! minute whatever its throughput), never less.

use std::time::Instant;

use mongodb::bson::doc;
use mongoq::schema::fields;
use mongoq::{Error, Shutdown, Worker, WorkerConfig};
use serde::Serialize;

use super::server::{median_if_all, median_rows, Drain, ServerMeter};
use super::Bench;

/// What a drain records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nothing,
    History,
    Traces,
}

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
    /// Jobs per second against the drain without history.
    pub throughput_ratio: Option<f64>,
    /// Spans the sink received (traces only).
    pub spans_exported: u64,
}

impl Bench<'_> {
    pub(super) fn history(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<HistoryRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<HistoryRow>> = Vec::new();
        for round in 1..=rounds {
            // Rotate which goes first, so none always meets a server
            // warmed (or tired) by another.
            let mut order = vec![Mode::Nothing, Mode::History, Mode::Traces];
            order.rotate_left(round % 3);
            let mut rows = Vec::new();
            for mode in order {
                progress(&format!(
                    "history (round {round}/{rounds}): {}",
                    mode_name(mode)
                ));
                rows.push((mode as u8, self.history_drain(mode)?));
            }
            rows.sort_by_key(|(mode, _)| *mode);
            let mut rows: Vec<HistoryRow> = rows.into_iter().map(|(_, row)| row).collect();
            let off_cpu = rows[0].drain.server_cpu_us_per_job;
            let off_rate = rows[0].drain.jobs_per_second;
            for row in &mut rows {
                row.server_ratio = match (row.drain.server_cpu_us_per_job, off_cpu) {
                    (Some(cpu), Some(off)) if off > 0.0 => Some(cpu / off),
                    _ => None,
                };
                row.throughput_ratio =
                    (off_rate > 0.0).then(|| row.drain.jobs_per_second / off_rate);
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| HistoryRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            server_ratio: median_if_all(rows.iter().map(|r| r.server_ratio)),
            throughput_ratio: median_if_all(rows.iter().map(|r| r.throughput_ratio)),
            ..rows[0].clone()
        }))
    }

    fn history_drain(&self, mode: Mode) -> Result<HistoryRow, Error> {
        let on = mode != Mode::Nothing;
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
        let sink = (mode == Mode::Traces).then(Sink::start).transpose()?;
        let tracing = sink
            .as_ref()
            .map(|sink| mongoq::trace::Tracing::to_endpoint(&sink.endpoint))
            .transpose()?;
        let worker =
            Worker::new(queue.clone(), config, |_: &mongoq::Job| Ok(None))?.with_tracing(tracing);
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
        let spans_exported = sink.map_or(0, Sink::stop);
        if done != jobs as u64 || recorded != wanted {
            return Err(Error::Invalid(format!(
                "bench history drain ({}) completed {done} of {jobs} jobs and recorded {recorded} (wanted {wanted}): the run is not valid",
                mode_name(mode)
            )));
        }
        let round_trips = report.claim_round_trips + report.outcome_writes;
        Ok(HistoryRow {
            mode: mode_name(mode).into(),
            jobs,
            minutes_written,
            drain: Drain::new(jobs, seconds, server, round_trips, 0),
            server_ratio: None,
            throughput_ratio: None,
            spans_exported,
        })
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Nothing => "--no-history",
        Mode::History => "history on (the default)",
        Mode::Traces => "history + traces (100% sampled)",
    }
}

/// An OTLP/HTTP endpoint in this process that reads each export whole and
/// answers 200 at once, counting the bytes it got: the exporter's own cost,
/// without a collector's.
struct Sink {
    endpoint: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sink {
    fn start() -> Result<Sink, Error> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Invalid(format!("bench: cannot listen for traces: {e}")))?;
        let port = listener.local_addr().map_or(0, |a| a.port());
        listener.set_nonblocking(true).ok();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut requests = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).ok();
                let mut reader = BufReader::new(stream);
                // Keep-alive: requests one after another on the connection.
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    let mut ok = false;
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            ok = true;
                            break;
                        }
                        if let Some(value) =
                            line.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    let mut body = vec![0; length];
                    if !ok || reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    requests += 1;
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(reply).is_err() {
                        break;
                    }
                }
            }
            requests
        });
        Ok(Sink {
            endpoint: format!("http://127.0.0.1:{port}/v1/traces"),
            stop,
            thread,
        })
    }

    /// Stops it; returns how many exports it answered.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
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
        "\n16. history and traces: {} no-op jobs drained by one worker ({THREADS} threads), in this process",
        rows[0].jobs
    );
    let _ = writeln!(
        out,
        "   {:<34} {:>10} {:>12} {:>14} {:>16} {:>10} {:>9}",
        "mode", "jobs/s", "vs none", "server µs/job", "vs no history", "minutes", "exports"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "   {:<34} {:>10.0} {:>12} {:>14} {:>16} {:>10} {:>9}",
            r.mode,
            r.drain.jobs_per_second,
            r.throughput_ratio
                .map_or_else(|| "–".into(), |x| format!("{x:.3}×")),
            r.drain
                .server_cpu_us_per_job
                .map_or_else(|| "n/a".into(), |us| format!("{us:.1}")),
            r.server_ratio
                .map_or_else(|| "–".into(), |x| format!("{x:.3}×")),
            r.minutes_written,
            r.spans_exported,
        );
    }
}
