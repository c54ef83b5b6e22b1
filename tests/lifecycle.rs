//! A job's life under the worker: completion, retries, order, shutdown,
//! crashes, and fencing of a worker that lost its lease.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};

use crate::helpers::{int, stderr, TestDb};

#[test]
fn enqueue_work_completed_with_result() {
    let db = TestDb::new("complete");
    let out = db.run(&["enqueue", r#"{"x": 41}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut worker = db.spawn_worker(&[
        "--drain",
        "--threads",
        "2",
        "--exec",
        "sh",
        "-c",
        "echo '{\"answer\": 42}'",
    ]);
    worker.expect_success(Duration::from_secs(30));
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
    assert_eq!(job.get_document("result").unwrap(), &doc! {"answer": 42});
    assert_eq!(int(&job, "attempts"), 1);
    assert!(job.get_datetime("completed_at").is_ok() && job.get_datetime("started_at").is_ok());
    for field in ["lease_owner", "lease_token", "lease_until"] {
        assert!(
            job.get(field).is_none(),
            "{field} must be gone once the job is done: {job}"
        );
    }
}

#[test]
fn a_failing_handler_retries_with_growing_delays_then_fails_with_its_errors() {
    let db = TestDb::new("retries");
    db.run(&["enqueue", "{}"]);
    let mut worker = db.spawn_worker(&[
        "--max-attempts",
        "4",
        "--backoff-base",
        "300ms",
        "--poll-interval",
        "50ms",
        "--threads",
        "1",
        "--exec",
        "sh",
        "-c",
        "echo \"boom on attempt $MONGOQ_ATTEMPT\" >&2; exit 3",
    ]);
    db.wait_for_count(doc! {"status": "failed"}, 1, Duration::from_secs(30));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(10));
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(int(&job, "attempts"), 4);
    assert!(
        job.get_str("last_error")
            .unwrap()
            .contains("boom on attempt 4"),
        "{job}"
    );
    assert!(
        job.get_str("last_error")
            .unwrap()
            .contains("exited with status 3"),
        "{job}"
    );
    let errors = job.get_array("errors").unwrap();
    assert_eq!(errors.len(), 4, "one error per attempt: {job}");
    let times: Vec<i64> = errors
        .iter()
        .map(|e| {
            e.as_document()
                .unwrap()
                .get_datetime("at")
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Nominal delays 300, 600, 1200 ms with jitter in [0.5, 1.5): the third
    // is always longer than the first, and the first is at least 150 ms.
    assert!(gaps[0] >= 150, "first retry waited only {}ms", gaps[0]);
    assert!(gaps[2] > gaps[0], "delays must grow: {gaps:?}");
    assert!(job.get_datetime("failed_at").is_ok());
}

#[test]
fn higher_priority_runs_first() {
    let db = TestDb::new("priority");
    for (data, priority) in [("low", "0"), ("high", "10"), ("mid", "5")] {
        db.run(&["enqueue", &format!("\"{data}\""), "--priority", priority]);
    }
    let mut worker = db.spawn_worker(&[
        "--drain",
        "--threads",
        "1",
        "--batch-size",
        "1",
        "--simulate",
        "20ms..20ms",
    ]);
    worker.expect_success(Duration::from_secs(30));
    let mut jobs = db.all(doc! {"status": "completed"});
    jobs.sort_by_key(|j| j.get_datetime("completed_at").unwrap().timestamp_millis());
    let order: Vec<&str> = jobs.iter().map(|j| j.get_str("data").unwrap()).collect();
    assert_eq!(order, ["high", "mid", "low"]);
}

#[test]
fn a_job_without_priority_runs_as_priority_0_and_is_not_rewritten() {
    let db = TestDb::new("no_priority");
    db.queue().ensure_indexes().unwrap();
    // As a shell script inserts them: `none` has no `priority` at all.
    for document in [
        doc! {"data": "below", "status": "pending", "priority": -1},
        doc! {"data": "none", "status": "pending"},
        doc! {"data": "above", "status": "pending", "priority": 1},
        doc! {"data": "zero", "status": "pending", "priority": 0},
    ] {
        db.coll().insert_one(document).run().unwrap();
    }
    let mut worker = db.spawn_worker(&[
        "--drain",
        "--threads",
        "1",
        "--batch-size",
        "1",
        "--simulate",
        "20ms..20ms",
    ]);
    worker.expect_success(Duration::from_secs(30));
    let mut jobs = db.all(doc! {"status": "completed"});
    jobs.sort_by_key(|j| j.get_datetime("completed_at").unwrap().timestamp_millis());
    let order: Vec<&str> = jobs.iter().map(|j| j.get_str("data").unwrap()).collect();
    // `none` and `zero` rank alike (in either order: workers start a claim
    // at a random place among jobs of one priority).
    assert_eq!(order.len(), 4);
    assert_eq!((order[0], order[3]), ("above", "below"), "{order:?}");
    assert_eq!(
        db.count(doc! {"data": "none", "priority": {"$exists": true}}),
        0,
        "the worker wrote a priority into a producer's document"
    );
}

#[test]
fn sigterm_mid_run_exits_zero_within_grace_and_leaves_nothing_running() {
    let db = TestDb::new("sigterm");
    db.enqueue_many(40, &[]);
    let mut worker = db.spawn_worker(&[
        "--threads",
        "2",
        "--batch-size",
        "20",
        "--simulate",
        "400ms..400ms",
        "--shutdown-grace",
        "5s",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 2, Duration::from_secs(30));
    worker.signal("TERM");
    let started = Instant::now();
    let status = worker.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit code {status:?}; log:\n{}",
        worker.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        db.count(doc! {"status": "running"}),
        0,
        "{:?}",
        db.by_status()
    );
    let completed = db.count(doc! {"status": "completed"});
    let pending = db.all(doc! {"status": "pending"});
    assert_eq!(completed + pending.len() as u64, 40, "{:?}", db.by_status());
    assert!(
        !pending.is_empty(),
        "the test wants jobs still pending at the signal"
    );
    for job in &pending {
        assert_eq!(
            int(job, "attempts"),
            0,
            "a job handed back unstarted keeps its attempt: {job}"
        );
        assert!(job.get("lease_token").is_none());
    }
}

/// A worker of 2 threads (with `flags`) whose handlers each mark their
/// start, then run for 30 s, once both have started. A job is `running`
/// from its claim, a moment before a thread starts it (a signal in that
/// moment hands it back unstarted, with nothing left to wait for), so a
/// test of what a signal does to running handlers waits for both marks.
fn worker_with_two_handlers_started(db: &TestDb, flags: &[&str]) -> crate::helpers::Worker {
    db.enqueue_many(2, &[]);
    let started_dir = crate::helpers::tempfile(&format!("{}-started", db.db));
    let _ = std::fs::remove_dir_all(&started_dir);
    std::fs::create_dir_all(&started_dir).unwrap();
    let handler = format!(
        "touch {}/\"$MONGOQ_JOB_ID\"; exec sleep 30",
        started_dir.display()
    );
    let mut args = vec!["--threads", "2"];
    args.extend_from_slice(flags);
    args.extend(["--exec", "sh", "-c", &handler]);
    let worker = db.spawn_worker(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&started_dir).unwrap().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "both handlers did not start: {:?}; log:\n{}",
            db.by_status(),
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&started_dir);
    worker
}

#[test]
fn sigterm_past_the_grace_period_hands_running_jobs_back() {
    let db = TestDb::new("grace");
    let mut worker = worker_with_two_handlers_started(&db, &["--shutdown-grace", "1s"]);
    worker.signal("TERM");
    let started = Instant::now();
    worker.expect_success(Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        db.count(doc! {"status": "pending"}),
        2,
        "{:?}",
        db.by_status()
    );
    assert!(
        worker.log_text().contains("grace period"),
        "{}",
        worker.log_text()
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let db = TestDb::new("second_signal");
    let mut worker = worker_with_two_handlers_started(&db, &["--shutdown-grace", "60s"]);
    worker.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    worker.signal("INT");
    let status = worker.wait(Duration::from_secs(5));
    assert!(
        !status.success(),
        "the second signal should end the worker at once, not after its handlers; log:\n{}",
        worker.log_text()
    );
}

#[test]
fn kill_9_mid_run_and_every_job_still_completes_via_lease_expiry() {
    let db = TestDb::new("kill9");
    db.enqueue_many(30, &[]);
    let mut victim = db.spawn_worker(&[
        "--threads",
        "4",
        "--lease",
        "2s",
        "--simulate",
        "300ms..300ms",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 4, Duration::from_secs(30));
    victim.signal("KILL");
    victim.wait(Duration::from_secs(5));
    let orphaned = db.count(doc! {"status": "running"});
    assert!(orphaned > 0, "the kill should leave running jobs behind");
    let mut rescuer = db.spawn_worker(&[
        "--drain",
        "--threads",
        "4",
        "--lease",
        "2s",
        "--simulate",
        "10ms..10ms",
    ]);
    rescuer.expect_success(Duration::from_secs(60));
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        30,
        "{:?}",
        db.by_status()
    );
    let rerun = db.count(doc! {"attempts": 2});
    assert_eq!(
        rerun, orphaned,
        "each orphaned job ran once more, no other job did"
    );
    assert!(
        rescuer.log_text().contains("rescued"),
        "{}",
        rescuer.log_text()
    );
}

#[test]
fn a_worker_whose_lease_was_taken_over_cannot_write_its_outcome() {
    let db = TestDb::new("fencing");
    db.run(&["enqueue", "{}"]);
    let mut stale = db.spawn_worker(&[
        "--threads",
        "1",
        "--lease",
        "1s",
        "--worker-id",
        "stale",
        "--exec",
        "sh",
        "-c",
        "sleep 1.5; echo '\"stale\"'",
    ]);
    db.wait_for_count(
        doc! {"status": "running", "lease_owner": "stale"},
        1,
        Duration::from_secs(30),
    );
    stale.signal("STOP");
    std::thread::sleep(Duration::from_millis(1_500));
    let mut fresh = db.spawn_worker(&[
        "--drain",
        "--threads",
        "1",
        "--lease",
        "5s",
        "--worker-id",
        "fresh",
        "--exec",
        "sh",
        "-c",
        "echo '\"fresh\"'",
    ]);
    fresh.expect_success(Duration::from_secs(30));
    let done = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(done.get("result"), Some(&Bson::String("fresh".into())));
    stale.signal("CONT");
    // The stale worker's program finishes and it tries to write "stale".
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stale.log_text().contains("leases were lost") {
        assert!(
            Instant::now() < deadline,
            "stale worker never reported its lost lease:\n{}",
            stale.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(
        after.get("result"),
        Some(&Bson::String("fresh".into())),
        "{after}"
    );
    assert_eq!(after.get("completed_at"), done.get("completed_at"));
    assert_eq!(after.get_str("status").unwrap(), "completed");
    stale.signal("TERM");
    stale.expect_success(Duration::from_secs(10));
}

#[test]
fn an_idle_worker_wakes_on_a_change_stream_event_long_before_its_next_poll() {
    let db = TestDb::new("wake");
    db.run(&["init"]);
    let mut worker = db.spawn_worker(&[
        "--threads",
        "1",
        "--poll-interval",
        "60s",
        "--simulate",
        "0ms..0ms",
    ]);
    // Idle polls back off from 60s/16: at about 0s, 3.75s, then 11.25s.
    std::thread::sleep(Duration::from_secs(5));
    let enqueued = Instant::now();
    db.run(&["enqueue", "{}"]);
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(4));
    assert!(enqueued.elapsed() < Duration::from_secs(4));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(10));
}

/// A worker with nothing pending and a change stream open polls only once
/// per ten poll intervals: every write that makes a job pending rings it.
/// A delayed job enqueued then rings it too, and from then on it polls
/// every interval again (a job waits for its `run_at`), so the job runs
/// soon after its `run_at`, not at the next quiet look (10 s here).
#[test]
fn a_quiet_worker_runs_a_delayed_job_enqueued_while_it_waits() {
    let db = TestDb::new("quiet_delayed");
    db.run(&["init"]);
    let mut worker = db.spawn_worker(&["--threads", "1", "--simulate", "0ms..0ms"]);
    // Long enough to find nothing pending and go quiet (its stream open).
    std::thread::sleep(Duration::from_secs(3));
    let enqueued = Instant::now();
    db.run(&["enqueue", "{}", "--delay", "2s"]);
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(8));
    let took = enqueued.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "the delayed job completed {took:?} after it was enqueued"
    );
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(10));
}

/// A quiet worker (nothing pending in the queue it may claim, `other`)
/// whose other queue is paused is woken when that queue is resumed (the
/// control thread rings it when the controls change), not at its next
/// quiet look (10 s here): the resume is seen within the idle refresh (5 s).
#[test]
fn a_quiet_worker_runs_a_paused_queues_job_once_it_is_resumed() {
    let db = TestDb::new("quiet_resume");
    db.run(&["init"]);
    db.run(&["pause", "default"]);
    db.run(&["enqueue", "{}"]);
    let mut worker = db.spawn_worker(&[
        "--threads",
        "1",
        "--queue",
        "default",
        "--queue",
        "other",
        "--simulate",
        "0ms..0ms",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(db.count(doc! {"status": "pending"}), 1, "paused: not run");
    let resumed = Instant::now();
    db.run(&["resume", "default"]);
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(9));
    assert!(resumed.elapsed() < Duration::from_secs(9));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(10));
}
