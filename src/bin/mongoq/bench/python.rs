//! Section 13, "python": the Python client's `Queue.enqueue_many` against a
//! raw pymongo `insert_many` of the same documents, in one run, in
//! interleaved rounds (`clients/python/benchmarks/enqueue_many.py`).
//!
//! The client's files ship inside the binary, like the `--pipe` helper of
//! section 10, so the bench measures this build's client wherever it runs;
//! only a Python with pymongo is needed: `MONGOQ_PYTHON`, else Debian's
//! `/usr/bin/python3`, else `python3` on PATH.

use std::path::Path;
use std::process::Command;

use mongoq::Error;
use serde::Serialize;

use super::server::median;
use super::Bench;

/// Jobs per insert, each way.
pub const JOBS: usize = 10_000;

/// The package, as `clients/python/mongoq` holds it.
const PACKAGE: [(&str, &str); 8] = [
    (
        "__init__.py",
        include_str!("../../../../clients/python/mongoq/__init__.py"),
    ),
    (
        "_clock.py",
        include_str!("../../../../clients/python/mongoq/_clock.py"),
    ),
    (
        "_documents.py",
        include_str!("../../../../clients/python/mongoq/_documents.py"),
    ),
    (
        "_ids.py",
        include_str!("../../../../clients/python/mongoq/_ids.py"),
    ),
    (
        "client.py",
        include_str!("../../../../clients/python/mongoq/client.py"),
    ),
    (
        "errors.py",
        include_str!("../../../../clients/python/mongoq/errors.py"),
    ),
    (
        "handler.py",
        include_str!("../../../../clients/python/mongoq/handler.py"),
    ),
    ("py.typed", ""),
];
const SCRIPT: &str = include_str!("../../../../clients/python/benchmarks/enqueue_many.py");

/// One way of inserting, the median of the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct PythonRow {
    pub method: String,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// This row's rate over the raw `insert_many`'s, in the same run.
    pub vs_insert_many: f64,
    /// The interpreter and pymongo that ran it.
    pub python: String,
}

/// The Python to run the client with, and whether it has pymongo.
fn python() -> Result<String, Error> {
    let candidates: Vec<String> = match std::env::var("MONGOQ_PYTHON") {
        Ok(chosen) => vec![chosen],
        Err(_) => vec!["/usr/bin/python3".into(), "python3".into()],
    };
    for python in &candidates {
        let has_pymongo = Command::new(python)
            .args(["-c", "import pymongo"])
            .output()
            .is_ok_and(|out| out.status.success());
        if has_pymongo {
            return Ok(python.clone());
        }
    }
    Err(Error::Invalid(format!(
        "section 13 (python) needs a Python with pymongo, and {} has none: `apt install python3-pymongo`, or set MONGOQ_PYTHON to a Python that has it",
        candidates.join(" nor ")
    )))
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text)
        .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))
}

impl Bench<'_> {
    pub(super) fn python(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<PythonRow>, Error> {
        let python = python()?;
        let dir = std::env::temp_dir().join(format!("mongoq-bench-python-{}", std::process::id()));
        let package = dir.join("mongoq");
        std::fs::create_dir_all(&package)
            .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", package.display())))?;
        for (name, text) in PACKAGE {
            write(&package.join(name), text)?;
        }
        let script = dir.join("enqueue_many.py");
        write(&script, SCRIPT)?;
        // Five pairs per round of the other sections: each insert takes a
        // tenth of a second, so one pair is noise.
        let rounds = self.config.rounds.max(1) * 5;
        progress(&format!(
            "python: enqueue_many of {JOBS} jobs against insert_many, {rounds} rounds ({python})"
        ));
        let out = Command::new(&python)
            .arg(&script)
            .arg(&self.config.uri)
            .arg(&self.config.database)
            .arg(JOBS.to_string())
            .arg(rounds.to_string())
            .env("PYTHONPATH", &dir)
            .output()
            .map_err(|e| Error::Invalid(format!("cannot run {python}: {e}")))?;
        let _ = std::fs::remove_dir_all(&dir);
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "section 13 (python) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let said: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::Invalid(format!(
                "section 13 (python) printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        let seconds = |way: &str| {
            median(
                said[way]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_f64),
            )
        };
        let version = format!(
            "{} (pymongo {})",
            said["python"].as_str().unwrap_or("?"),
            said["pymongo"].as_str().unwrap_or("?")
        );
        let raw = seconds("insert_many");
        let rows = [
            ("insert_many of the documents (pymongo, raw)", raw),
            (
                "Queue.enqueue_many of the data (mongoq client)",
                seconds("enqueue_many"),
            ),
        ];
        Ok(rows
            .into_iter()
            .map(|(method, secs)| PythonRow {
                method: method.into(),
                jobs: JOBS,
                seconds: secs,
                jobs_per_second: JOBS as f64 / secs,
                vs_insert_many: raw / secs,
                python: version.clone(),
            })
            .collect())
    }
}

pub fn render(rows: &[PythonRow], out: &mut String) {
    use std::fmt::Write;
    let Some(first) = rows.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\n13. python: {JOBS} jobs enqueued from Python, medians of interleaved rounds ({})",
        first.python
    );
    let _ = writeln!(
        out,
        "   {:<50} {:>10} {:>10} {:>16}",
        "method", "seconds", "jobs/s", "vs insert_many"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "   {:<50} {:>10.3} {:>10.0} {:>15.2}×",
            r.method, r.seconds, r.jobs_per_second, r.vs_insert_many
        );
    }
}
