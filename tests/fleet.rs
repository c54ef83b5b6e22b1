//! The fleet as one, on the real server with 3 worker processes × 8
//! threads: a global concurrency limit (peak from the handlers' own start
//! and end times), a global rate limit (every 1 s window), pause and
//! resume, slots of a SIGKILLed worker coming back, the registry, and
//! waiting for a result.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use crate::helpers::{stderr, stdout, tempfile, TestDb, Worker};

/// A handler that appends `JOB start MS`, sleeps, then `JOB end MS`.
fn timed(ledger: &Path, sleep: &str) -> String {
    let file = ledger.display();
    format!(
        "printf '%s start %s\\n' \"$MONGOQ_JOB_ID\" \"$(date +%s%3N)\" >> {file}; sleep {sleep}; printf '%s end %s\\n' \"$MONGOQ_JOB_ID\" \"$(date +%s%3N)\" >> {file}"
    )
}

/// `(job, start, end)` from a ledger (end is `None` while running).
fn intervals(ledger: &Path) -> Vec<(String, i64, Option<i64>)> {
    let mut starts: Vec<(String, i64)> = Vec::new();
    let mut ends: HashMap<String, i64> = HashMap::new();
    for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(kind), Some(at)) = (parts.first(), parts.get(1), parts.get(2)) else {
            continue;
        };
        let Ok(at) = at.parse::<i64>() else { continue };
        match *kind {
            "start" => starts.push(((*id).to_string(), at)),
            "end" => {
                ends.insert((*id).to_string(), at);
            }
            _ => {}
        }
    }
    starts
        .into_iter()
        .map(|(id, start)| {
            let end = ends.get(&id).copied();
            (id, start, end)
        })
        .collect()
}

fn fleet(db: &TestDb, args: &[&str]) -> Vec<Worker> {
    (0..3)
        .map(|i| {
            let id = format!("{}-w{i}", db.db);
            let mut all = vec!["--worker-id", id.as_str(), "--threads", "8"];
            all.extend_from_slice(args);
            db.spawn_worker(&all)
        })
        .collect()
}

fn stop(workers: &mut [Worker]) {
    for worker in workers.iter() {
        worker.signal("TERM");
    }
    for worker in workers.iter_mut() {
        worker.expect_success(Duration::from_secs(60));
    }
}

#[test]
fn a_concurrency_limit_holds_across_the_fleet() {
    let db = TestDb::new("fleet_concurrency");
    assert!(db
        .run(&["limit", "default", "--concurrency", "3"])
        .status
        .success());
    db.enqueue_many(24, &[]);
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let handler = timed(&ledger, "0.3");
    let mut workers = fleet(&db, &["--exec", "sh", "-c", &handler]);
    db.wait_for_count(doc! {"status": "completed"}, 24, Duration::from_secs(120));
    stop(&mut workers);
    let runs = intervals(&ledger);
    assert_eq!(runs.len(), 24, "each job ran once: {runs:?}");
    // The peak of jobs running at once, from the handlers' own times.
    let mut events: Vec<(i64, i32)> = Vec::new();
    for (_, start, end) in &runs {
        events.push((*start, 1));
        events.push((end.expect("every run ended"), -1));
    }
    // At the same millisecond an end comes before a start.
    events.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    eprintln!(
        "concurrency 3: observed peak {peak} running at once over {} runs",
        runs.len()
    );
    assert!(peak <= 3, "{peak} jobs ran at once under a limit of 3");
    assert!(
        peak >= 2,
        "the limit, not a lack of workers, set the pace (peak {peak})"
    );
    let control = db
        .database()
        .collection::<mongodb::bson::Document>("queue_queues")
        .find_one(doc! {"_id": "default"})
        .run()
        .unwrap()
        .unwrap();
    assert!(
        control
            .get_document("holders")
            .is_ok_and(Document::is_empty),
        "workers that stopped left no entry: {control}"
    );
    assert_eq!(
        control
            .get("in_use")
            .and_then(Bson::as_i64)
            .or_else(|| control.get("in_use").and_then(Bson::as_i32).map(i64::from)),
        Some(0),
        "every slot was given back: {control}"
    );
}

#[test]
fn a_rate_limit_holds_in_every_window() {
    let db = TestDb::new("fleet_rate");
    assert!(db
        .run(&["limit", "default", "--rate", "20/1s"])
        .status
        .success());
    db.enqueue_many(300, &[]);
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let handler = timed(&ledger, "0");
    let mut workers = fleet(&db, &["--exec", "sh", "-c", &handler]);
    // Long enough for more starts than one window allows (else the limit
    // was never tested): at most 30 s on a slow, loaded server.
    let deadline = Instant::now() + Duration::from_secs(30);
    while intervals(&ledger).len() < 45 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut workers);
    let mut starts: Vec<i64> = intervals(&ledger).into_iter().map(|(_, s, _)| s).collect();
    starts.sort_unstable();
    assert!(
        starts.len() > 20,
        "the rate allowed work to happen: {} starts",
        starts.len()
    );
    let busiest = starts
        .iter()
        .map(|first| {
            starts
                .iter()
                .filter(|s| **s >= *first && **s < first + 1_000)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "rate 20/1s: {} starts in ~6 s, busiest 1 s window {busiest}",
        starts.len()
    );
    assert!(
        busiest <= 20,
        "{busiest} starts in one 1 s window under 20/1s"
    );
    assert_eq!(db.count(doc! {"status": "running"}), 0);
    let completed = db.count(doc! {"status": "completed"});
    assert_eq!(
        completed as usize,
        starts.len(),
        "every start completed; the rest wait"
    );
}

#[test]
fn a_paused_queue_starts_nothing_until_resumed() {
    let db = TestDb::new("fleet_pause");
    assert!(db
        .run(&["pause", "default", "--reason", "deploy"])
        .status
        .success());
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let handler = timed(&ledger, "0.2");
    let mut workers = fleet(
        &db,
        &["--poll-interval", "200ms", "--exec", "sh", "-c", &handler],
    );
    db.enqueue_many(40, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        intervals(&ledger).is_empty(),
        "nothing started while paused"
    );
    assert_eq!(db.count(doc! {"status": "pending", "attempts": 0}), 40);
    let stats = stdout(&db.run(&["stats"]));
    assert!(stats.contains("PAUSED (deploy)"), "{stats}");

    assert!(db.run(&["resume", "default"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while intervals(&ledger).len() < 5 {
        assert!(Instant::now() < deadline, "nothing started after resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Pause mid-run: within about a second no new job starts.
    assert!(db.run(&["pause", "default"]).status.success());
    let paused_at = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    let late: Vec<i64> = intervals(&ledger)
        .into_iter()
        .map(|(_, s, _)| s)
        .filter(|s| *s > paused_at + 1_000)
        .collect();
    assert!(
        late.is_empty(),
        "{} jobs started more than 1 s after the pause",
        late.len()
    );
    assert_eq!(
        db.count(doc! {"status": "running"}),
        0,
        "running jobs finished"
    );
    assert!(db.run(&["resume", "default"]).status.success());
    db.wait_for_count(doc! {"status": "completed"}, 40, Duration::from_secs(60));
    stop(&mut workers);
    // Claimed but unstarted jobs went back without counting an attempt.
    assert_eq!(
        db.count(doc! {"attempts": 1}),
        40,
        "every job used exactly one attempt"
    );
    assert_eq!(intervals(&ledger).len(), 40);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn slots_of_a_killed_worker_come_back_after_its_lease() {
    let db = TestDb::new("fleet_kill_slots");
    assert!(db
        .run(&["limit", "default", "--concurrency", "2"])
        .status
        .success());
    db.enqueue_many(4, &[]);
    let mut doomed = db.spawn_worker(&[
        "--worker-id",
        "doomed",
        "--threads",
        "4",
        "--lease",
        "3s",
        "--exec",
        "sleep",
        "60",
    ]);
    db.wait_for_count(doc! {"status": "running"}, 2, Duration::from_secs(30));
    let controls = db
        .database()
        .collection::<mongodb::bson::Document>("queue_queues");
    let control = controls
        .find_one(doc! {"_id": "default"})
        .run()
        .unwrap()
        .unwrap();
    assert!(
        control
            .get_document("holders")
            .unwrap()
            .contains_key("doomed"),
        "{control}"
    );
    doomed.signal("KILL");
    let _ = doomed.wait(Duration::from_secs(5));
    let killed = Instant::now();
    let mut heir = db.spawn_worker(&[
        "--worker-id",
        "heir",
        "--threads",
        "4",
        "--lease",
        "3s",
        "--drain",
        "--simulate",
        "0ms..0ms",
    ]);
    heir.expect_success(Duration::from_secs(90));
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "slots came back only after the lease"
    );
    assert_eq!(db.count(doc! {"status": "completed"}), 4);
    let control = controls
        .find_one(doc! {"_id": "default"})
        .run()
        .unwrap()
        .unwrap();
    assert!(
        !control
            .get_document("holders")
            .unwrap()
            .contains_key("doomed"),
        "{control}"
    );
    assert_eq!(
        control.get("in_use").map(ToString::to_string).as_deref(),
        Some("0"),
        "{control}"
    );
    assert!(
        heir.log_text().contains("took back 2 concurrency slots"),
        "{}",
        heir.log_text()
    );
}

#[test]
fn workers_lists_exactly_the_live_workers() {
    let db = TestDb::new("fleet_registry");
    let mut workers = fleet(&db, &["--simulate", "0ms..0ms"]);
    let ids: Vec<String> = (0..3).map(|i| format!("{}-w{i}", db.db)).collect();
    let listed = |db: &TestDb| -> Vec<(String, bool)> {
        let out = db.run(&["workers", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().unwrap().to_string(),
                    w["late"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&db).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "workers did not register: {:?}",
            listed(&db)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = listed(&db);
    assert_eq!(
        all,
        ids.iter().map(|id| (id.clone(), false)).collect::<Vec<_>>()
    );
    let out = stdout(&db.run(&["workers", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["threads"], 8, "{out}");
    assert_eq!(list[0]["queues"][0], "default", "{out}");
    // A clean stop leaves the registry.
    workers[1].signal("TERM");
    workers[1].expect_success(Duration::from_secs(30));
    assert_eq!(
        listed(&db),
        vec![(ids[0].clone(), false), (ids[2].clone(), false)]
    );
    // A killed worker stays, marked late once its heartbeats stop.
    workers[2].signal("KILL");
    let _ = workers[2].wait(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed(&db) != vec![(ids[0].clone(), false), (ids[2].clone(), true)] {
        assert!(
            Instant::now() < deadline,
            "the killed worker was not marked late: {:?}",
            listed(&db)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    stop(&mut workers[..1]);
}

#[test]
fn enqueue_wait_prints_the_result_or_the_error_or_times_out() {
    let db = TestDb::new("fleet_wait");
    let mut worker = db.spawn_worker(&[
        "--max-attempts",
        "1",
        "--exec",
        "sh",
        "-c",
        r#"if grep -q fail; then echo 'broken on purpose' >&2; exit 3; fi; echo '{"sent": true}'"#,
    ]);
    let ok = db.run(&["enqueue", "--wait", "--timeout", "30s", r#"{"to": "ada"}"#]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(stdout(&ok).trim(), r#"{"sent":true}"#);
    let failed = db.run(&["enqueue", "--wait", "--timeout", "30s", r#"{"fail": true}"#]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("broken on purpose"),
        "{}",
        stderr(&failed)
    );
    let slow = db.run(&[
        "enqueue",
        "--wait",
        "--timeout",
        "1s",
        "--queue",
        "nobody",
        "{}",
    ]);
    assert_eq!(slow.status.code(), Some(124), "{}", stderr(&slow));
    assert!(stderr(&slow).contains("stays queued"), "{}", stderr(&slow));
    assert_eq!(db.count(doc! {"queue": "nobody", "status": "pending"}), 1);
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
}
