//! One clock for the fleet: workers whose wall clocks are minutes off
//! (libfaketime) still judge leases, rescue and `run_at` by the server's
//! clock. Counted: runs per job, rescues, starts before `run_at`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};

use crate::helpers::{stderr, stdout, tempfile, TestDb, Worker};

/// libfaketime, from Debian's `faketime` package (scripts/test.sh installs
/// it). Preloaded into mongoq itself rather than through the `faketime`
/// wrapper, which forks: a signal must reach the worker, not the wrapper.
pub(crate) fn libfaketime() -> String {
    let found = Command::new("sh")
        .args(["-c", "ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 2>/dev/null | head -1"])
        .output()
        .expect("sh runs");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "libfaketime is missing: run the suite with scripts/test.sh, which installs Debian's faketime"
    );
    path
}

/// `mongoq work ARGS` under a wall clock shifted by `offset` (`+120s`,
/// `-120s`, or `0s`). The monotonic clock is left alone, as on a real host
/// whose wall clock is wrong.
fn skewed_worker(db: &TestDb, offset: &str, id: &str, args: &[&str]) -> Worker {
    let log = tempfile(&format!("{}-{id}.log", db.db));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("MONGODB_URI", &db.uri)
        .env("RUST_LOG", "info")
        .args(["--db", &db.db, "work", "--worker-id", id])
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Worker { child, log }
}

/// A handler that records `JOB_ID WORKER REAL_MS` (the real time, read by a
/// `date` started without libfaketime) and then sleeps.
fn recorder(ledger: &Path, worker: &str, sleep: &str) -> String {
    format!(
        "printf '%s %s %s\\n' \"$MONGOQ_JOB_ID\" {worker} \"$(env -u LD_PRELOAD -u FAKETIME date +%s%3N)\" >> {}; sleep {sleep}",
        ledger.display()
    )
}

fn ledger(path: &Path) -> Vec<(String, String, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn skewed_workers_run_each_job_once_and_no_delayed_job_early() {
    let db = TestDb::new("clock_skew");
    assert!(db.run(&["init"]).status.success());
    let path = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&path);

    // Jobs of 4 s under 3 s leases: every lease must be extended, and a
    // worker judging time by its own clock would find the others' leases
    // expired (+2 min) or write leases already expired (−2 min).
    let mut workers: Vec<Worker> = [("+0s", "true"), ("+120s", "fast"), ("-120s", "slow")]
        .into_iter()
        .map(|(offset, name)| {
            let handler = recorder(&path, name, "4");
            skewed_worker(
                &db,
                offset,
                name,
                // One job per claim keeps each worker's holding small, so all
                // three take part.
                &[
                    "--threads",
                    "2",
                    "--batch-size",
                    "1",
                    "--lease",
                    "3s",
                    "--poll-interval",
                    "200ms",
                    "--exec",
                    "sh",
                    "-c",
                    &handler,
                ],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers.iter().all(|w| w.log_text().contains("starting")) {
        assert!(Instant::now() < deadline, "workers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    db.enqueue_many(12, &[]);
    let delayed = db.run(&["enqueue", "--delay", "15s", r#"{"delayed": true}"#]);
    assert!(delayed.status.success(), "{}", stderr(&delayed));
    let delayed_id = stdout(&delayed).trim().to_string();
    db.wait_for_count(doc! {"status": "completed"}, 13, Duration::from_secs(90));
    crate::helpers::stop_all(&mut workers);

    let runs = ledger(&path);
    let mut per_job: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in &runs {
        *per_job.entry(id.as_str()).or_insert(0) += 1;
    }
    assert_eq!(per_job.len(), 13, "every job ran: {runs:?}");
    let twice: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "jobs ran more than once while their workers lived: {twice:?}"
    );
    let by: std::collections::BTreeSet<&str> = runs.iter().map(|(_, w, _)| w.as_str()).collect();
    assert!(
        by.contains("fast") && by.contains("slow"),
        "both skewed workers ran jobs: {by:?}"
    );

    let rescued = db.count(doc! {"errors": {"$exists": true}});
    assert_eq!(rescued, 0, "no live lease was rescued");
    for worker in &workers {
        assert!(
            !worker.log_text().contains("rescued"),
            "{}",
            worker.log_text()
        );
    }

    // The delayed job started no sooner than its run_at (server time), by
    // the real clock.
    let job = db
        .coll()
        .find_one(doc! {"_id": mongodb::bson::oid::ObjectId::parse_str(&delayed_id).unwrap()})
        .run()
        .unwrap()
        .unwrap();
    let run_at = job.get_datetime("run_at").unwrap().timestamp_millis();
    let started = runs
        .iter()
        .find(|(id, _, _)| *id == delayed_id)
        .map(|(_, _, at)| *at)
        .expect("the delayed job ran");
    assert!(
        started >= run_at,
        "the delayed job started {} ms before its run_at",
        run_at - started
    );
    // The fast worker's log says its clock is off.
    assert!(
        workers[1]
            .log_text()
            .contains("ahead of the database server"),
        "{}",
        workers[1].log_text()
    );
}

#[test]
fn a_slow_clocked_worker_that_dies_is_rescued_only_after_its_lease() {
    let db = TestDb::new("clock_rescue");
    assert!(db.run(&["init"]).status.success());
    db.enqueue_many(1, &[]);
    let path = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&path);
    let mut slow = skewed_worker(
        &db,
        "-120s",
        "slow",
        &[
            "--threads",
            "1",
            "--lease",
            "3s",
            "--exec",
            "sh",
            "-c",
            &recorder(&path, "slow", "60"),
        ],
    );
    db.wait_for_count(
        doc! {"status": "running", "lease_owner": "slow"},
        1,
        Duration::from_secs(30),
    );
    // Let the lease be extended at least once, then kill the worker.
    std::thread::sleep(Duration::from_millis(1_500));
    let lease_until = db
        .coll()
        .find_one(doc! {})
        .run()
        .unwrap()
        .unwrap()
        .get_datetime("lease_until")
        .unwrap()
        .timestamp_millis();
    slow.signal("KILL");
    let _ = slow.wait(Duration::from_secs(5));
    let killed_at = Instant::now();

    let mut fast = skewed_worker(
        &db,
        "+120s",
        "fast",
        &[
            "--threads",
            "1",
            "--lease",
            "3s",
            "--drain",
            "--exec",
            "sh",
            "-c",
            &recorder(&path, "fast", "0"),
        ],
    );
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(60));
    fast.expect_success(Duration::from_secs(30));
    assert!(
        killed_at.elapsed() >= Duration::from_millis(500),
        "the rescue took time: the lease had time left"
    );

    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    let errors = job
        .get_array("errors")
        .expect("the rescue left an error entry");
    let rescue = errors[0].as_document().unwrap();
    assert!(
        rescue.get_str("error").unwrap().contains("lease expired"),
        "{rescue}"
    );
    assert_eq!(rescue.get_str("worker").unwrap(), "fast");
    let rescued_at = match rescue.get("at") {
        Some(Bson::DateTime(at)) => at.timestamp_millis(),
        other => panic!("no rescue time: {other:?}"),
    };
    assert!(
        rescued_at >= lease_until,
        "rescued {} ms before the lease ran out",
        lease_until - rescued_at
    );
    let runs = ledger(&path);
    assert_eq!(
        runs.len(),
        2,
        "ran once by the dead worker, once after rescue: {runs:?}"
    );
}
