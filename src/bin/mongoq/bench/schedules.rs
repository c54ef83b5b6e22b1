//! Section 11, "schedules": [`SCHEDULES`] schedules ticking every second,
//! fired by [`WORKERS`] `mongoq work` processes for [`WINDOW`]. Reported:
//! how late each tick's job was inserted after its tick (the lag, on the
//! server's clock: its `run_at` less its `tick`), ticks fired against the
//! ticks due, and the server's CPU per tick (`--server-pid`).
//!
//! The schedules' queue is paused, so the workers fire ticks but run no
//! jobs: what is measured is the firing alone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongoq::schedule::{ScheduleDef, Schedules, Timing};
use mongoq::Error;
use serde::Serialize;

use super::probe::proc_cpu_ticks;
use super::Bench;

/// Schedules in the run.
pub const SCHEDULES: usize = 1_000;
/// Worker processes firing them.
pub const WORKERS: usize = 4;
/// How long the workers run.
pub const WINDOW: Duration = Duration::from_secs(12); // WARM_UP + COUNTED
/// The first seconds are the workers' start: not counted.
const WARM_UP: Duration = Duration::from_secs(3);
/// The counted part of the window.
const COUNTED: Duration = Duration::from_secs(9);

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub schedules: usize,
    pub workers: usize,
    /// Ticks due in the counted window, and the jobs made for them.
    pub ticks_due: u64,
    pub ticks_fired: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Server CPU per fired tick over the counted window (`--server-pid`).
    pub server_us_per_tick: Option<f64>,
}

impl Bench<'_> {
    pub(super) fn schedules(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<ScheduleRow>, Error> {
        progress(&format!(
            "schedules: {SCHEDULES} schedules every 1s, {WORKERS} workers, {} s",
            WINDOW.as_secs()
        ));
        let queue = self.queue("bench_schedules", None)?;
        queue.ensure_indexes()?;
        queue.pause("ticks", Some("bench: fire ticks, run no jobs"))?;
        let schedules = Schedules::new(&queue);
        let _ = schedules.collection().drop().run();
        for n in 0..SCHEDULES {
            let mut def =
                ScheduleDef::new(format!("s{n:04}"), Timing::Every(Duration::from_secs(1)));
            def.queue = Some("ticks".into());
            schedules.add(&def)?;
        }
        let children = (0..WORKERS)
            .map(|_| self.ticks_worker(queue.collection().name()))
            .collect::<Result<Vec<_>, Error>>()?;
        std::thread::sleep(WARM_UP);
        let from = queue.now().timestamp_millis();
        let cpu_before = self.config.server_pid.and_then(proc_cpu_ticks);
        let started = Instant::now();
        std::thread::sleep(COUNTED);
        let cpu_after = self.config.server_pid.and_then(proc_cpu_ticks);
        let seconds = started.elapsed().as_secs_f64();
        let to = queue.now().timestamp_millis();
        for child in &children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for mut child in children {
            let _ = child.wait();
        }
        // Ticks in [from, to - 1 s] are due and must have fired by `to`.
        let first = from.div_euclid(1_000) * 1_000 + 1_000;
        let last = (to - 1_000).div_euclid(1_000) * 1_000;
        let window = doc! {"schedule": {"$exists": true}, "tick": {
            "$gte": mongodb::bson::DateTime::from_millis(first),
            "$lte": mongodb::bson::DateTime::from_millis(last),
        }};
        let mut lags: Vec<f64> = queue
            .collection()
            .find(window)
            .projection(doc! {"tick": 1, "run_at": 1})
            .run()
            .map_err(|e| queue.db_error("find (scheduled jobs)", &e))?
            .filter_map(Result::ok)
            .filter_map(|job| {
                let tick = job.get_datetime("tick").ok()?.timestamp_millis();
                let fired = job.get_datetime("run_at").ok()?.timestamp_millis();
                Some((fired - tick) as f64)
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        let fired = lags.len() as u64;
        let at = |q: f64| {
            lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let ticks_due = (((last - first) / 1_000 + 1).max(0) as u64) * SCHEDULES as u64;
        let server_us_per_tick = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if fired > 0 => {
                // Ticks fired while the CPU was read, at the measured rate.
                let per_second = fired as f64 / ((last - first) as f64 / 1000.0 + 1.0);
                Some((after - before) as f64 / 100.0 * 1e6 / (per_second * seconds))
            }
            _ => None,
        };
        let _ = queue.collection().drop().run();
        let _ = schedules.collection().drop().run();
        let _ = queue.controls_collection().drop().run();
        let _ = queue.workers_collection().drop().run();
        Ok(vec![ScheduleRow {
            schedules: SCHEDULES,
            workers: WORKERS,
            ticks_due,
            ticks_fired: fired,
            lag_p50_ms: at(0.5),
            lag_p99_ms: at(0.99),
            lag_max_ms: lags.last().copied().unwrap_or(f64::NAN),
            server_us_per_tick,
        }])
    }
}

impl Bench<'_> {
    /// A `mongoq work` process serving the paused `ticks` queue.
    fn ticks_worker(&self, collection: &str) -> Result<std::process::Child, Error> {
        Command::new(&self.config.exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args(["--collection", collection, "work"])
            .args([
                "--queue",
                "ticks",
                "--threads",
                "1",
                "--simulate",
                "0ms..0ms",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display())))
    }
}

/// The section's table.
pub fn render(rows: &[ScheduleRow], out: &mut String) {
    use std::fmt::Write;
    for r in rows {
        let _ = writeln!(
            out,
            "\n11. schedules: {} schedules every 1s, {} worker processes (the queue paused: firing only)",
            r.schedules, r.workers
        );
        let _ = writeln!(
            out,
            "   ticks due {}, fired {} ({:.1} %); lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; server CPU per tick {}",
            r.ticks_due,
            r.ticks_fired,
            100.0 * r.ticks_fired as f64 / r.ticks_due.max(1) as f64,
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.lag_max_ms,
            r.server_us_per_tick
                .map_or_else(|| "n/a (give --server-pid)".to_string(), |us| format!("{us:.0} µs"))
        );
    }
}
