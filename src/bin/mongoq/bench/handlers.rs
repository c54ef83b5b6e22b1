//! Section 10, "handlers": what a handler written in Python or shell costs
//! per job through `--exec` (a process per job) and `--pipe` (long-lived
//! processes), against `--simulate 0ms..0ms` (the engine alone).
//!
//! Each row is a `mongoq work --drain --threads 2` process on a fresh
//! backlog of [`HANDLER_JOBS`] no-op jobs. Its drain time is read from the
//! jobs themselves (the first `started_at` to the last `completed_at`, on
//! the server's clock), so the worker's own start (connecting, indexes)
//! does not count against the fast rows; the worker's peak RSS is sampled
//! from `/proc` while it runs. The Python rows name the interpreter used.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};
use mongoq::Error;
use serde::Serialize;

use super::probe::proc_status_kb;
use super::server::{median_of, ServerMeter};
use super::Bench;

/// Jobs per row.
pub const HANDLER_JOBS: usize = 2_000;

/// The Python helper (`mongoq.handler`, standard library only), shipped
/// inside the binary so the bench runs anywhere; written out under its
/// first name, `mongoq_handler`.
const HELPER: &str = include_str!("../../../../clients/python/mongoq/handler.py");

/// One handler's drain.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerRow {
    pub handler: String,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// This row's rate over `--simulate 0ms..0ms`'s, in the same run.
    pub vs_simulate: f64,
    /// The worker's peak resident memory (its handler processes not counted).
    pub worker_rss_mb: f64,
    /// The server's CPU per job while the worker ran (its start included),
    /// where `--server-pid` names the server.
    pub server_cpu_us_per_job: Option<f64>,
}

/// The Python that starts fastest: the system one (a version manager's
/// shim on PATH can cost 100 ms a start).
fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// Writes the handler programs into `dir`; returns (label, handler flags).
fn handlers(dir: &Path) -> Result<Vec<(String, Vec<String>)>, Error> {
    let write = |name: &str, text: &str| -> Result<String, Error> {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))?;
        Ok(path.display().to_string())
    };
    write("mongoq_handler.py", HELPER)?;
    // No-op jobs: each handler reads its job and returns no result. One
    // more row returns a result, which costs the server a write of its own
    // per job (a null result is written for a whole claim at once).
    let exec_py = write("exec.py", "import json, sys\njob = json.load(sys.stdin)\n")?;
    let pipe_py = |name: &str, returns: &str| {
        write(
            name,
            &format!(
                "import sys\nsys.path.insert(0, {dir:?})\nfrom mongoq_handler import serve\nserve(lambda job: {returns})\n",
                dir = dir.display().to_string()
            ),
        )
    };
    let pipe_py_none = pipe_py("pipe.py", "None")?;
    let pipe_py_result = pipe_py("pipe_result.py", "{\"n\": job[\"data\"]}")?;
    let exec_sh = write("exec.sh", "read -r job || :\n")?;
    let pipe_sh = write(
        "pipe.sh",
        "echo '{\"ready\": true}'\nwhile IFS= read -r job; do\n  id=${job%%,\\\"attempt\\\"*}; id=${id#\\{\\\"id\\\":}\n  printf '{\"id\":%s,\"ok\":true}\\n' \"$id\"\ndone\n",
    )?;
    let py = python();
    let flags = |words: &[&str]| words.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(vec![
        (
            "--simulate 0ms..0ms".into(),
            flags(&["--simulate", "0ms..0ms"]),
        ),
        (
            format!("--exec {py} (a script)"),
            flags(&["--exec", &py, &exec_py]),
        ),
        (
            format!("--pipe {py} (the helper)"),
            flags(&["--pipe", &py, &pipe_py_none]),
        ),
        (
            format!("--pipe {py} (the helper, with a result)"),
            flags(&["--pipe", &py, &pipe_py_result]),
        ),
        (
            "--exec sh (a 1-line script)".into(),
            flags(&["--exec", "/bin/sh", &exec_sh]),
        ),
        (
            "--pipe sh (a while-read loop)".into(),
            flags(&["--pipe", "/bin/sh", &pipe_sh]),
        ),
    ])
}

impl Bench<'_> {
    /// Section 10: every handler row on a fresh backlog.
    pub(super) fn handlers(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<HandlerRow>, Error> {
        let dir =
            std::env::temp_dir().join(format!("mongoq-bench-handlers-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let handlers = handlers(&dir)?;
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<HandlerRow>> = vec![Vec::new(); handlers.len()];
        for round in 1..=rounds {
            for ((label, flags), runs) in handlers.iter().zip(&mut runs) {
                progress(&format!(
                    "handlers: {label}, {HANDLER_JOBS} jobs (round {round} of {rounds})"
                ));
                runs.push(self.handler_drain(label, flags)?);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        // Each figure is its median over the interleaved rounds.
        let mut rows: Vec<HandlerRow> = runs
            .into_iter()
            .map(|mut runs| {
                runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
                let mut row = runs[runs.len() / 2].clone();
                let mut rss: Vec<f64> = runs.iter().map(|r| r.worker_rss_mb).collect();
                rss.sort_by(f64::total_cmp);
                row.worker_rss_mb = rss[rss.len() / 2];
                row.server_cpu_us_per_job = median_of(runs.iter().map(|r| r.server_cpu_us_per_job));
                row
            })
            .collect();
        let simulate = rows.first().map_or(1.0, |r| r.jobs_per_second);
        for row in &mut rows {
            row.vs_simulate = row.jobs_per_second / simulate;
        }
        Ok(rows)
    }

    fn handler_drain(&self, label: &str, flags: &[String]) -> Result<HandlerRow, Error> {
        let queue = self.queue("bench_handlers", None)?;
        Bench::fill(&queue, HANDLER_JOBS)?;
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let mut child = Command::new(&self.config.exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args(["--collection", queue.collection().name(), "work"])
            .args(["--drain", "--threads", "2", "--max-attempts", "1"])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display()))
            })?;
        let mut peak_kb = 0u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(kb) = proc_status_kb(child.id(), "VmRSS:") {
                peak_kb = peak_kb.max(kb);
            }
            if let Some(status) = child.try_wait().ok().flatten() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let server = meter.per_job(&queue, HANDLER_JOBS);
        let span = drain_span(&queue)?;
        let done = queue
            .collection()
            .count_documents(doc! {"status": "completed"})
            .run()
            .map_err(|e| queue.db_error("count", &e))?;
        let _ = queue.collection().drop().run();
        if !status.is_some_and(|s| s.success()) || done != HANDLER_JOBS as u64 {
            return Err(Error::Invalid(format!(
                "bench handlers ({label}) completed {done} of {HANDLER_JOBS} jobs: the run is not valid"
            )));
        }
        let seconds = span.max(0.001);
        Ok(HandlerRow {
            handler: label.to_string(),
            jobs: HANDLER_JOBS,
            seconds,
            jobs_per_second: HANDLER_JOBS as f64 / seconds,
            vs_simulate: 1.0,
            worker_rss_mb: peak_kb as f64 / 1024.0,
            server_cpu_us_per_job: server.cpu_us(),
        })
    }
}

/// Seconds from the first job's start to the last one's completion.
fn drain_span(queue: &mongoq::Queue) -> Result<f64, Error> {
    let mut cursor = queue
        .collection()
        .aggregate([doc! {"$group": {
            "_id": Bson::Null,
            "first": {"$min": "$started_at"},
            "last": {"$max": "$completed_at"},
        }}])
        .run()
        .map_err(|e| queue.db_error("aggregate (drain span)", &e))?;
    let group = cursor
        .next()
        .transpose()
        .map_err(|e| queue.db_error("aggregate (drain span)", &e))?
        .unwrap_or_default();
    match (group.get_datetime("first"), group.get_datetime("last")) {
        (Ok(first), Ok(last)) => {
            Ok((last.timestamp_millis() - first.timestamp_millis()) as f64 / 1000.0)
        }
        _ => Err(Error::Invalid(
            "bench handlers: the jobs carry no started_at/completed_at".into(),
        )),
    }
}

/// The section's table.
pub fn render(rows: &[HandlerRow], out: &mut String) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n10. handlers: {HANDLER_JOBS} no-op jobs, 2 threads, one worker (drain: first start to last completion; medians of the rounds)"
    );
    let _ = writeln!(
        out,
        "   {:<52} {:>8} {:>9} {:>12} {:>12} {:>11}",
        "handler", "seconds", "jobs/s", "× simulate", "worker RSS", "srv µs/job"
    );
    for r in rows {
        let cpu = r
            .server_cpu_us_per_job
            .map_or_else(|| "n/a".to_string(), |c| format!("{c:.1}"));
        let _ = writeln!(
            out,
            "   {:<52} {:>8.2} {:>9.0} {:>11.2}× {:>9.1} MB {:>11}",
            r.handler, r.seconds, r.jobs_per_second, r.vs_simulate, r.worker_rss_mb, cpu
        );
    }
    let row = |tag: &str| rows.iter().find(|r| r.handler.ends_with(tag));
    if let (Some(with), Some(without)) = (row("(the helper, with a result)"), row("(the helper)")) {
        let cpu = with
            .server_cpu_us_per_job
            .zip(without.server_cpu_us_per_job)
            .map_or_else(String::new, |(a, b)| {
                format!(", {:.2}× its server CPU per job", a / b)
            });
        let _ = writeln!(
            out,
            "   --pipe Python with a result over without: {:.2}× the drain{cpu}",
            with.jobs_per_second / without.jobs_per_second
        );
    }
    let ratio = |a: &str, b: &str| {
        let rate = |tag: &str| {
            rows.iter()
                .find(|r| r.handler.ends_with(tag))
                .map(|r| r.jobs_per_second)
        };
        rate(a).zip(rate(b)).map(|(a, b)| a / b)
    };
    if let Some(python) = ratio("(the helper)", "(a script)") {
        let _ = writeln!(out, "   --pipe Python over --exec Python: {python:.1}×");
    }
    if let Some(shell) = ratio("(a while-read loop)", "(a 1-line script)") {
        let _ = writeln!(out, "   --pipe sh over --exec sh: {shell:.1}×");
    }
}
