//! `--pipe`: long-lived handler processes, their protocol, and every fault
//! the issue names, on the real server with the real binary. Each test
//! counts: every job completed or failed with a reason, none lost, and no
//! job run more often than its attempts (the handlers log each run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use crate::helpers::{free_port, int, tempfile, TestDb, Worker};

/// The Python that starts quickly (not a version manager's shim).
pub(crate) fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub(crate) fn helper_dir() -> String {
    format!("{}/clients/python", env!("CARGO_MANIFEST_DIR"))
}

/// Writes an executable script for this test.
pub(crate) fn script(db: &TestDb, name: &str, body: &str) -> PathBuf {
    let path = tempfile(&format!("{}-{name}", db.db));
    std::fs::write(&path, body).unwrap();
    std::process::Command::new("chmod")
        .args(["+x", &path.display().to_string()])
        .status()
        .unwrap();
    path
}

/// `mongoq work ARGS` with the Python helper importable.
fn worker(db: &TestDb, args: &[&str]) -> Worker {
    db.spawn_worker_with_env(args, &[("PYTHONPATH", &helper_dir())])
}

/// Drains with 2 threads and 1 attempt unless `args` say otherwise, with
/// the helper on `PYTHONPATH`.
fn drain(db: &TestDb, args: &[&str]) -> Worker {
    db.drain_with_env(args, &[("PYTHONPATH", &helper_dir())])
}

fn enqueue(db: &TestDb, data: &[serde_json::Value]) {
    db.enqueue_json(data);
}

/// Every job ended (completed or failed with a reason), none is left
/// behind, and no job ran more often than its recorded attempts.
fn assert_accounted(db: &TestDb, runs: &Path, expected: usize) -> Vec<Document> {
    let jobs = db.all(doc! {});
    assert_eq!(jobs.len(), expected, "jobs lost or added");
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    for job in &jobs {
        let status = job.get_str("status").unwrap();
        assert!(
            status == "completed" || status == "failed",
            "a job was left {status}: {job}"
        );
        if status == "failed" {
            assert!(
                !job.get_str("last_error").unwrap_or("").is_empty(),
                "failed without a reason: {job}"
            );
        }
        let id = match job.get("_id") {
            Some(Bson::ObjectId(oid)) => oid.to_hex(),
            other => panic!("unexpected id {other:?}"),
        };
        let times = ran.lines().filter(|line| line.contains(&id)).count() as i64;
        assert!(
            times <= int(job, "attempts"),
            "job {id} ran {times} times in {} attempts",
            int(job, "attempts")
        );
    }
    jobs
}

/// A Python handler on the helper that logs each run to `runs` and acts on
/// `data.kind`.
fn python_handler(db: &TestDb, runs: &Path) -> PathBuf {
    script(
        db,
        "handler.py",
        &format!(
            r#"import os, sys, time
from mongoq_handler import serve, progress, Permanent

RUNS = {runs:?}

def handle(job):
    with open(RUNS, "a") as f:
        f.write(job["id"]["$oid"] + "\n")
    kind = job["data"].get("kind", "ok")
    if kind == "raise":
        raise ValueError("no such customer")
    if kind == "permanent":
        raise Permanent("bad input: give an email")
    if kind == "print":
        print("a stray print in the handler")
        os.system("echo a subprocess writing to its stdout")
    if kind == "progress":
        progress(0.5, "half way")
        time.sleep(2.5)
    return {{"pid": os.getpid(), "n": job["data"].get("n")}}

serve(handle)
"#,
            runs = runs.display().to_string()
        ),
    )
}

#[test]
fn a_python_handler_runs_many_jobs_per_process_with_results_and_failures() {
    let db = TestDb::new("pipe_python");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = python_handler(&db, &runs);
    let mut data: Vec<serde_json::Value> = (0..200).map(|n| serde_json::json!({"n": n})).collect();
    data.push(serde_json::json!({"kind": "raise"}));
    data.push(serde_json::json!({"kind": "permanent"}));
    data.push(serde_json::json!({"kind": "print"}));
    enqueue(&db, &data);
    let handler = handler.display().to_string();
    drain(
        &db,
        &[
            "--max-attempts",
            "2",
            "--backoff-base",
            "10ms",
            "--pipe",
            python(),
            &handler,
        ],
    );
    let jobs = assert_accounted(&db, &runs, 203);
    let completed: Vec<&Document> = jobs
        .iter()
        .filter(|j| j.get_str("status") == Ok("completed"))
        .collect();
    assert_eq!(completed.len(), 201, "{:?}", db.by_status());
    let pids: std::collections::BTreeSet<i64> = completed
        .iter()
        .map(|j| int(j.get_document("result").unwrap(), "pid"))
        .collect();
    assert!(pids.len() <= 2, "one process per thread, got pids {pids:?}");
    let failed = |kind: &str| {
        jobs.iter()
            .find(|j| j.get_document("data").unwrap().get_str("kind") == Ok(kind))
            .unwrap()
            .clone()
    };
    let raised = failed("raise");
    assert_eq!(raised.get_str("status").unwrap(), "failed");
    assert_eq!(int(&raised, "attempts"), 2, "an exception is retried");
    assert_eq!(
        raised.get_str("last_error").unwrap(),
        "ValueError: no such customer"
    );
    let permanent = failed("permanent");
    assert_eq!(int(&permanent, "attempts"), 1, "Permanent is not retried");
    assert_eq!(
        permanent.get_str("last_error").unwrap(),
        "bad input: give an email"
    );
    let printed = failed("print");
    assert_eq!(printed.get_str("status").unwrap(), "completed", "{printed}");
}

#[test]
fn progress_is_stored_on_the_running_job() {
    let db = TestDb::new("pipe_progress");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = python_handler(&db, &runs).display().to_string();
    enqueue(&db, &[serde_json::json!({"kind": "progress"})]);
    let mut worker = worker(
        &db,
        &["--drain", "--threads", "1", "--pipe", python(), &handler],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let progress = loop {
        let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
        if let Ok(progress) = job.get_document("progress") {
            assert_eq!(job.get_str("status").unwrap(), "running", "{job}");
            break progress.clone();
        }
        assert!(Instant::now() < deadline, "no progress written: {job}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!((progress.get_f64("fraction").unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(progress.get_str("note").unwrap(), "half way");
    assert_eq!(int(&progress, "attempt"), 1);
    worker.expect_success(Duration::from_secs(60));
    let out = db.run(&["show", &first_id(&db)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("half way"),
        "mongoq show prints the progress"
    );
    assert_accounted(&db, &runs, 1);
}

fn first_id(db: &TestDb) -> String {
    match db
        .coll()
        .find_one(doc! {})
        .run()
        .unwrap()
        .unwrap()
        .get("_id")
    {
        Some(Bson::ObjectId(oid)) => oid.to_hex(),
        other => panic!("{other:?}"),
    }
}

/// A shell handler that logs each run and does what `data.kind` says:
/// `die` (stderr, then exit 3), `orphan` (exit 4, leaving a child that
/// holds stdout open), `answer-then-exit`, `signal` (kill -9 itself), `sleep`,
/// `sleep-deaf` (ignores TERM), `garbage` (a line that is not JSON),
/// `other-id`, `nan`, `huge` (a 17 MiB line), `noisy` (10 MB of stderr).
fn shell_handler(db: &TestDb, runs: &Path) -> PathBuf {
    script(
        db,
        "handler.sh",
        &format!(
            r#"#!/bin/sh
echo '{{"ready": true}}'
while IFS= read -r job; do
  id=${{job%%,\"attempt\"*}}; id=${{id#\{{\"id\":}}
  echo "$id" >> {runs}
  case "$job" in
    *'"kind":"die"'*) echo "disk full: cannot write /var/tmp/x" >&2; exit 3 ;;
    *'"kind":"orphan"'*) ( sleep 30 ) & exit 4 ;;
    *'"kind":"escape"'*) setsid sleep 30 & sleep 0.2; kill -9 $$ ;;
    *'"kind":"answer-then-exit"'*) printf '{{"id":%s,"ok":true}}\n' "$id"; exit 0 ;;
    *'"kind":"signal"'*) kill -9 $$ ;;
    *'"kind":"sleep-deaf"'*) trap '' TERM; sleep 30 ;;
    *'"kind":"sleep"'*) sleep 30 ;;
    *'"kind":"garbage"'*) echo "Traceback (most recent call last): oops" ;;
    *'"kind":"other-id"'*) echo '{{"id": {{"$oid": "000000000000000000000000"}}, "ok": true}}' ;;
    *'"kind":"nan"'*) printf '{{"id":%s,"ok":true,"result":NaN}}\n' "$id" ;;
    *'"kind":"huge"'*) head -c 17000000 /dev/zero | tr '\0' x; echo ;;
    *'"kind":"noisy"'*) head -c 10000000 /dev/zero | tr '\0' e | fold -w 1000 >&2; printf '{{"id":%s,"ok":true}}\n' "$id" ;;
    *) printf '{{"id":%s,"ok":true,"result":"pid %s"}}\n' "$id" "$$" ;;
  esac
done
"#,
            runs = runs.display()
        ),
    )
}

fn job_of<'a>(jobs: &'a [Document], kind: &str) -> &'a Document {
    jobs.iter()
        .find(|j| j.get_document("data").unwrap().get_str("kind") == Ok(kind))
        .unwrap_or_else(|| panic!("no job of kind {kind}"))
}

#[test]
fn a_process_that_dies_or_breaks_the_protocol_fails_only_its_job_and_is_replaced() {
    let db = TestDb::new("pipe_faults");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = shell_handler(&db, &runs).display().to_string();
    let kinds = [
        "die", "orphan", "escape", "signal", "garbage", "other-id", "nan", "huge", "noisy",
    ];
    let mut data: Vec<serde_json::Value> = kinds
        .iter()
        .map(|k| serde_json::json!({"kind": k}))
        .collect();
    data.extend((0..40).map(|n| serde_json::json!({"n": n})));
    enqueue(&db, &data);
    let started = Instant::now();
    let worker = drain(&db, &["--pipe", &handler]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead process's background child held the job: {:?}",
        started.elapsed()
    );
    let jobs = assert_accounted(&db, &runs, kinds.len() + 40);
    let error = |kind: &str| {
        let job = job_of(&jobs, kind);
        assert_eq!(job.get_str("status").unwrap(), "failed", "{job}");
        job.get_str("last_error").unwrap().to_string()
    };
    let died = error("die");
    assert!(
        died.contains("exited with status 3")
            && died.contains("disk full: cannot write /var/tmp/x"),
        "{died}"
    );
    assert!(
        error("signal").contains("killed by signal 9"),
        "{}",
        error("signal")
    );
    assert!(
        error("escape").contains("killed by signal 9"),
        "{}",
        error("escape")
    );
    assert!(
        error("orphan").contains("exited with status 4"),
        "{}",
        error("orphan")
    );
    let garbage = error("garbage");
    assert!(
        garbage.contains("protocol violation")
            && garbage.contains("`Traceback (most recent call last): oops`"),
        "{garbage}"
    );
    let other = error("other-id");
    assert!(
        other.contains("is about job") && other.contains("000000000000000000000000"),
        "{other}"
    );
    assert!(error("nan").contains("not JSON"), "{}", error("nan"));
    let huge = error("huge");
    assert!(
        huge.contains("over the 16 MiB limit") && huge.contains("`xxxx"),
        "{huge}"
    );
    assert!(
        huge.len() < 4096,
        "the quote is bounded: {} bytes",
        huge.len()
    );
    assert_eq!(
        job_of(&jobs, "noisy").get_str("status").unwrap(),
        "completed",
        "10 MB of stderr does not block the handler"
    );
    let completed = jobs
        .iter()
        .filter(|j| j.get_str("status") == Ok("completed"))
        .count();
    assert_eq!(
        completed, 41,
        "every other job completed on replaced processes"
    );
    let log = worker.log_text();
    assert!(log.contains("replacing"), "replacements are logged:\n{log}");
    let noisy_id = match job_of(&jobs, "noisy").get("_id") {
        Some(Bson::ObjectId(oid)) => oid.to_hex(),
        _ => unreachable!(),
    };
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("job {noisy_id}")) && l.contains("eeee")),
        "stderr lines are forwarded to the log tagged with the job id"
    );
}

#[test]
fn a_process_that_exits_after_answering_is_replaced_and_the_next_job_runs() {
    let db = TestDb::new("pipe_exit0");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = shell_handler(&db, &runs).display().to_string();
    enqueue(
        &db,
        &[
            serde_json::json!({"kind": "answer-then-exit"}),
            serde_json::json!({"n": 1}),
        ],
    );
    // Not --drain: a retried job is not yet eligible when the queue looks empty.
    let mut worker = worker(
        &db,
        &[
            "--threads",
            "1",
            "--max-attempts",
            "2",
            "--backoff-base",
            "10ms",
            "--pipe",
            &handler,
        ],
    );
    db.wait_for_count(doc! {"status": "completed"}, 2, Duration::from_secs(30));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
    let jobs = assert_accounted(&db, &runs, 2);
    for job in &jobs {
        assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
    }
    // The job given to the exiting process, if it got there first, was
    // charged an attempt with a reason that says what to do.
    let next = jobs
        .iter()
        .find(|j| j.get_document("data").unwrap().get("n").is_some())
        .unwrap();
    if int(next, "attempts") == 2 {
        let error = next.get_str("last_error").unwrap();
        assert!(
            error.contains("exits only when its stdin closes"),
            "{error}"
        );
    }
}

#[test]
fn a_job_past_its_timeout_is_stopped_term_then_kill() {
    let db = TestDb::new("pipe_timeout");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = shell_handler(&db, &runs).display().to_string();
    enqueue(
        &db,
        &[
            serde_json::json!({"kind": "sleep"}),
            serde_json::json!({"kind": "sleep-deaf"}),
            serde_json::json!({"n": 1}),
        ],
    );
    let started = Instant::now();
    drain(&db, &["--timeout", "500ms", "--pipe", &handler]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let jobs = assert_accounted(&db, &runs, 3);
    for kind in ["sleep", "sleep-deaf"] {
        let job = job_of(&jobs, kind);
        assert_eq!(job.get_str("status").unwrap(), "failed");
        assert!(
            job.get_str("last_error")
                .unwrap()
                .contains("timed out after 500ms"),
            "{job}"
        );
    }
}

#[test]
fn a_program_that_never_starts_burns_no_attempt_and_healthz_says_so() {
    let db = TestDb::new("pipe_never");
    enqueue(
        &db,
        &[serde_json::json!({"n": 1}), serde_json::json!({"n": 2})],
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = worker(
        &db,
        &[
            "--threads",
            "2",
            "--metrics-addr",
            &addr,
            "--pipe",
            "sh",
            "-c",
            "echo 'ModuleNotFoundError: No module named requests' >&2; exit 1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some((503, body)) = get(&format!("http://{addr}/healthz")) {
            if body.contains("No module named requests") {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "healthz never reported the handler"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["handler"]["live"], 0, "{body}");
    assert_eq!(health["handler"]["slots"], 2, "{body}");
    // Several restarts later, still nothing claimed: no attempt burned.
    std::thread::sleep(Duration::from_secs(2));
    for job in db.all(doc! {}) {
        assert_eq!(job.get_str("status").unwrap(), "pending", "{job}");
        assert!(
            job.get("attempts")
                .is_none_or(|a| a == &Bson::Int32(0) || a == &Bson::Int64(0)),
            "{job}"
        );
    }
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
    let log = worker.log_text();
    assert!(
        log.contains("could not start") && log.contains("before its handshake"),
        "{log}"
    );
}

fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

#[test]
fn pipe_max_jobs_recycles_processes_between_jobs() {
    let db = TestDb::new("pipe_recycle");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = shell_handler(&db, &runs).display().to_string();
    enqueue(
        &db,
        &(0..20)
            .map(|n| serde_json::json!({"n": n}))
            .collect::<Vec<_>>(),
    );
    drain(
        &db,
        &["--threads", "1", "--pipe-max-jobs", "5", "--pipe", &handler],
    );
    let jobs = assert_accounted(&db, &runs, 20);
    let mut per_pid = std::collections::BTreeMap::<String, usize>::new();
    for job in &jobs {
        assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
        *per_pid
            .entry(job.get_str("result").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_pid.len(), 4, "{per_pid:?}");
    assert!(per_pid.values().all(|&n| n == 5), "{per_pid:?}");
}

/// A process that never finishes a job: its pid, and the pid of a
/// background child it started, are written to `pids`; the id of each job
/// it starts to `runs`.
fn stubborn_handler(db: &TestDb, pids: &Path, runs: &Path) -> PathBuf {
    script(
        db,
        "stubborn.sh",
        &format!(
            r#"#!/bin/sh
sleep 300 &
echo "$$ $!" >> {pids}
echo '{{"ready": true}}'
while IFS= read -r job; do
  id=$(printf '%s' "$job" | sed 's/^{{"id":{{"[$]oid":"\([0-9a-f]*\)".*/\1/')
  echo "$id" >> {runs}
  sleep 300
done
"#,
            pids = pids.display(),
            runs = runs.display()
        ),
    )
}

/// Waits until `path` has `n` lines; returns them.
fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, want {n}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gone(pid: &str) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn cancel_and_shutdown_end_the_whole_process_group() {
    let db = TestDb::new("pipe_cancel");
    let pids = tempfile(&format!("{}-pids", db.db));
    let runs = tempfile(&format!("{}-runs", db.db));
    let _ = std::fs::remove_file(&pids);
    let _ = std::fs::remove_file(&runs);
    let handler = stubborn_handler(&db, &pids, &runs).display().to_string();
    enqueue(
        &db,
        &[serde_json::json!({"n": 1}), serde_json::json!({"n": 2})],
    );
    let mut worker = worker(
        &db,
        &[
            "--threads",
            "1",
            "--lease",
            "3s",
            "--shutdown-grace",
            "1s",
            "--pipe",
            &handler,
        ],
    );
    let running = wait_for_lines(&runs, 1).remove(0);
    let out = db.run(&["cancel", &running]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.wait_for_count(doc! {"status": "cancelled"}, 1, Duration::from_secs(30));
    // The next job runs on a new process.
    let started = wait_for_lines(&runs, 2);
    assert_ne!(started[1], running);
    let first = wait_for_lines(&pids, 2).remove(0);
    let first: Vec<&str> = first.split(' ').collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(gone(first[0]) && gone(first[1])) {
        assert!(
            Instant::now() < deadline,
            "the cancelled job's process group lives on: {first:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: the running job outlives the 1 s grace; the worker exits
    // and takes the whole group with it.
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
    let all = std::fs::read_to_string(&pids).unwrap();
    for pid in all.split_whitespace() {
        assert!(
            gone(pid),
            "process {pid} outlived the worker:\n{}",
            worker.log_text()
        );
    }
    let job = db
        .coll()
        .find_one(doc! {"status": {"$ne": "cancelled"}})
        .run()
        .unwrap()
        .unwrap();
    assert_eq!(
        job.get_str("status").unwrap(),
        "pending",
        "handed back: {job}"
    );
    assert!(
        job.get_str("last_error").unwrap().contains("interrupted"),
        "{job}"
    );
}

#[test]
fn exec_settles_when_its_program_exits_even_if_a_child_holds_its_output() {
    let db = TestDb::new("exec_hostage");
    let pids = tempfile(&format!("{}-bg", db.db));
    let _ = std::fs::remove_file(&pids);
    enqueue(
        &db,
        &(0..3)
            .map(|n| serde_json::json!({"n": n}))
            .collect::<Vec<_>>(),
    );
    let program = format!("( sleep 20 ) & echo $! >> {}; echo done", pids.display());
    let started = Instant::now();
    drain(&db, &["--exec", "sh", "-c", &program]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "jobs waited for the background child: {took:?}"
    );
    let jobs = db.all(doc! {});
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
        assert_eq!(job.get_str("result").unwrap(), "done");
        let completed = job.get_datetime("completed_at").unwrap().timestamp_millis();
        let started = job.get_datetime("started_at").unwrap().timestamp_millis();
        assert!(
            completed - started < 2_000,
            "settled {} ms after the start",
            completed - started
        );
    }
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !gone(pid) {
            assert!(
                Instant::now() < deadline,
                "background child {pid} was left running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_python_helper_installs_with_pip_and_serves_from_a_virtualenv() {
    let db = TestDb::new("pipe_pip");
    // A copy, so that the build leaves nothing in the repository.
    let source = tempfile(&format!("{}-src", db.db));
    let venv = tempfile(&format!("{}-venv", db.db));
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(&source).unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-r", &format!("{}/.", helper_dir())])
        .arg(&source)
        .status()
        .unwrap();
    assert!(copied.success(), "cp -r clients/python");
    let _ = std::fs::remove_dir_all(source.join("build"));
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    };
    let made = run(python(), &["-m", "venv", &venv.display().to_string()]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = venv.join("bin/pip").display().to_string();
    let source = source.display().to_string();
    // The venv's own setuptools when it has one (no download), else pip
    // fetches it from PyPI as usual.
    let mut installed = run(
        &pip,
        &["install", "--quiet", "--no-build-isolation", &source],
    );
    if !installed.status.success() {
        installed = run(&pip, &["install", "--quiet", &source]);
    }
    assert!(
        installed.status.success(),
        "pip install ./clients/python failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let handler = script(
        &db,
        "installed.py",
        "from mongoq_handler import serve\nserve(lambda job: {\"doubled\": job[\"data\"][\"n\"] * 2})\n",
    );
    // The same distribution holds the producer client, with pymongo.
    let client = run(
        &venv.join("bin/python").display().to_string(),
        &[
            "-c",
            "import mongoq, mongoq.client; assert mongoq.Queue is mongoq.client.Queue; print(mongoq.__version__)",
        ],
    );
    assert!(
        client.status.success() && String::from_utf8_lossy(&client.stdout).trim() == "0.2.0",
        "the installed client: {}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    enqueue(&db, &[serde_json::json!({"n": 21})]);
    let python = venv.join("bin/python").display().to_string();
    let mut worker = db
        .mongoq()
        .env_remove("PYTHONPATH")
        .args(["work", "--drain", "--threads", "1", "--pipe", &python])
        .arg(&handler)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the worker did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
    assert_eq!(int(job.get_document("result").unwrap(), "doubled"), 42);
}
