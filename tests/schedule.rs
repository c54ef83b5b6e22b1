//! Schedules on the real server with real workers: one job per tick across
//! the fleet, the catch-up policies, `--no-overlap`, and workers whose
//! clocks are minutes off. Counted from the jobs themselves: their `_id`
//! is `NAME@TICK`, their `tick` the nominal instant, their `run_at` the
//! server's time when the tick fired.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};

use crate::clock::libfaketime;
use crate::helpers::{stderr, stdout, TestDb, Worker};

fn add(db: &TestDb, args: &[&str]) {
    let mut all = vec!["schedule", "add"];
    all.extend_from_slice(args);
    let out = db.run(&all);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn jobs_of(db: &TestDb, name: &str) -> Vec<Document> {
    db.coll()
        .find(doc! {"schedule": name})
        .sort(doc! {"tick": 1})
        .run()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn tick_ms(job: &Document) -> i64 {
    job.get_datetime("tick").unwrap().timestamp_millis()
}

fn stop(mut workers: Vec<Worker>) {
    crate::helpers::stop_all(&mut workers);
}

/// No tick has two jobs, and each job fired at or after its tick by the
/// server's clock (`run_at` is when it fired).
fn assert_once_and_never_early(jobs: &[Document]) {
    let ticks: BTreeSet<i64> = jobs.iter().map(tick_ms).collect();
    assert_eq!(ticks.len(), jobs.len(), "a tick fired twice: {jobs:?}");
    for job in jobs {
        let fired = job.get_datetime("run_at").unwrap().timestamp_millis();
        assert!(
            fired >= tick_ms(job),
            "fired {} ms early: {job}",
            tick_ms(job) - fired
        );
    }
}

#[test]
fn three_workers_make_one_job_per_tick_one_second_apart() {
    let db = TestDb::new("sched_three");
    add(&db, &["beat", "--every", "1s", "--data", r#"{"k": 1}"#]);
    let workers: Vec<Worker> = (0..3)
        .map(|_| db.spawn_worker(&["--threads", "1", "--simulate", "0ms..0ms"]))
        .collect();
    std::thread::sleep(Duration::from_secs(10));
    stop(workers);
    let jobs = jobs_of(&db, "beat");
    assert!(jobs.len() >= 8, "only {} ticks fired in 10 s", jobs.len());
    assert_once_and_never_early(&jobs);
    for pair in jobs.windows(2) {
        assert_eq!(
            tick_ms(&pair[1]) - tick_ms(&pair[0]),
            1_000,
            "ticks are 1 s apart"
        );
    }
    for (n, job) in jobs.iter().enumerate() {
        // The last tick may fire as the workers stop: a later worker runs it.
        if n + 1 < jobs.len() {
            assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
        }
        assert_eq!(job.get_document("data").unwrap().get_i32("k").unwrap(), 1);
        assert_eq!(tick_ms(job) % 1_000, 0, "--every ticks on whole seconds");
    }
    let out = db.run(&["schedule", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["name"], "beat");
    assert_eq!(list[0]["fired"], jobs.len() as i64, "{list}");
    assert!(list[0]["next_tick"].as_str().unwrap().ends_with('Z'));
}

/// How late a job fired after its tick, in ms.
fn lateness(job: &Document) -> i64 {
    job.get_datetime("run_at").unwrap().timestamp_millis() - tick_ms(job)
}

/// Adds `name` (every 5 s) while no worker runs, waits at least 12 s and
/// until its latest tick is 2.5–4 s old (late, not on time), then runs one
/// worker for 3.5 s; returns the jobs that fired late, and the skipped count.
fn missed_ticks(db: &TestDb, name: &str, policy: &str) -> (Vec<Document>, i64) {
    add(
        db,
        &[
            name,
            "--every",
            "5s",
            "--catch-up",
            policy,
            "--max-catch-up",
            "2",
        ],
    );
    let added = db.queue().now().timestamp_millis();
    loop {
        let now = db.queue().now().timestamp_millis();
        if now - added >= 12_000 && (2_500..4_000).contains(&(now % 5_000)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = db.spawn_worker(&["--threads", "1", "--simulate", "0ms..0ms"]);
    std::thread::sleep(Duration::from_millis(3_500));
    stop(vec![worker]);
    let jobs = jobs_of(db, name);
    assert_once_and_never_early(&jobs);
    let late: Vec<Document> = jobs.into_iter().filter(|j| lateness(j) > 2_000).collect();
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&db.run(&["schedule", "list", "--json"]))).unwrap();
    let skipped = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["skipped"]
        .as_i64()
        .unwrap();
    (late, skipped)
}

#[test]
fn catch_up_none_skips_missed_ticks() {
    let db = TestDb::new("sched_none");
    let (late, skipped) = missed_ticks(&db, "none", "none");
    assert!(
        late.is_empty(),
        "--catch-up none ran missed ticks: {late:?}"
    );
    assert!(
        skipped >= 2,
        "missed ticks are counted as skipped: {skipped}"
    );
}

#[test]
fn catch_up_one_runs_the_latest_missed_tick_once() {
    let db = TestDb::new("sched_one");
    let (late, skipped) = missed_ticks(&db, "one", "one");
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(
        skipped >= 1,
        "the older missed ticks are skipped: {skipped}"
    );
}

#[test]
fn catch_up_all_runs_the_missed_ticks_up_to_the_limit() {
    let db = TestDb::new("sched_all");
    let (late, _) = missed_ticks(&db, "all", "all");
    assert_eq!(late.len(), 2, "--max-catch-up 2: {late:?}");
    assert_eq!(
        tick_ms(&late[1]) - tick_ms(&late[0]),
        5_000,
        "the latest two"
    );
}

#[test]
fn no_overlap_never_has_two_jobs_pending_or_running() {
    let db = TestDb::new("sched_overlap");
    add(&db, &["slow", "--every", "1s", "--no-overlap"]);
    let workers: Vec<Worker> = (0..2)
        .map(|_| db.spawn_worker(&["--threads", "2", "--simulate", "3s..3s"]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut most = 0;
    while Instant::now() < deadline {
        let active = db.count(doc! {"schedule": "slow", "status": {"$in": ["pending", "running"]}});
        most = most.max(active);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(workers);
    assert_eq!(
        most, 1,
        "at most one of its jobs pending or running at a time"
    );
    let jobs = jobs_of(&db, "slow");
    assert!(
        (2..=5).contains(&jobs.len()),
        "3 s jobs on a 1 s schedule for 10 s: {}",
        jobs.len()
    );
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&db.run(&["schedule", "list", "--json"]))).unwrap();
    assert!(list[0]["skipped"].as_i64().unwrap() >= 4, "{list}");
}

#[test]
fn workers_two_minutes_fast_or_slow_fire_nothing_early_and_nothing_twice() {
    let db = TestDb::new("sched_skew");
    add(&db, &["skewed", "--every", "1s"]);
    let lib = libfaketime();
    let workers: Vec<Worker> = ["+120s", "-120s", "+0s"]
        .iter()
        .map(|offset| {
            db.spawn_worker_with_env(
                &["--threads", "1", "--simulate", "0ms..0ms"],
                &[
                    ("LD_PRELOAD", lib.as_str()),
                    ("FAKETIME", offset),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(8));
    stop(workers);
    let jobs = jobs_of(&db, "skewed");
    assert!(jobs.len() >= 6, "only {} ticks fired in 8 s", jobs.len());
    assert_once_and_never_early(&jobs);
    for pair in jobs.windows(2) {
        assert_eq!(
            tick_ms(&pair[1]) - tick_ms(&pair[0]),
            1_000,
            "no tick skipped or doubled"
        );
    }
}

#[test]
fn schedules_are_edited_paused_resumed_and_removed() {
    let db = TestDb::new("sched_ops");
    add(
        &db,
        &[
            "report",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--queue",
            "reports",
        ],
    );
    add(
        &db,
        &[
            "report",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Europe/Berlin",
            "--queue",
            "reports",
        ],
    );
    let list = stdout(&db.run(&["schedule", "list"]));
    assert!(
        list.contains("cron 0 3 * * * (Europe/Berlin)"),
        "add updates: {list}"
    );
    assert_eq!(list.lines().count(), 2, "one schedule of that name: {list}");
    assert!(db.run(&["schedule", "pause", "report"]).status.success());
    assert!(stdout(&db.run(&["schedule", "list"])).contains("paused"));
    assert!(db.run(&["schedule", "resume", "report"]).status.success());
    assert!(db.run(&["schedule", "remove", "report"]).status.success());
    let out = db.run(&["schedule", "remove", "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no schedule is named report"));
    for (args, expect) in [
        (
            vec!["schedule", "add", "x", "--cron", "99 * * * *"],
            "not a cron expression",
        ),
        (
            vec![
                "schedule",
                "add",
                "x",
                "--cron",
                "0 * * * *",
                "--tz",
                "Mars/Base",
            ],
            "IANA",
        ),
        (vec!["schedule", "add", "x"], "--cron"),
        (vec!["schedule", "add", "x", "--every", "0s"], "at least 1s"),
        (
            vec!["schedule", "add", "x", "--every", "1s", "--data", "{nope"],
            "--data",
        ),
    ] {
        let out = db.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_worker_reports_schedule_metrics_and_stats_lists_schedules() {
    let db = TestDb::new("sched_metrics");
    add(&db, &["pulse", "--every", "1s"]);
    let port = crate::helpers::free_port();
    let worker = db.spawn_worker(&[
        "--threads",
        "1",
        "--simulate",
        "0ms..0ms",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    db.wait_for_count(doc! {"schedule": "pulse"}, 3, Duration::from_secs(30));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let text = agent
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    stop(vec![worker]);
    let fired = text
        .lines()
        .find_map(|l| l.strip_prefix("mongoq_schedule_ticks_fired_total "))
        .unwrap_or_else(|| panic!("no fired counter in:\n{text}"));
    assert!(fired.parse::<u64>().unwrap() >= 2, "{text}");
    let lag: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mongoq_schedule_lag_seconds "))
        .unwrap_or_else(|| panic!("no lag gauge in:\n{text}"))
        .parse()
        .unwrap();
    assert!((0.0..1.5).contains(&lag), "lag {lag}");
    let out = db.run(&["stats"]);
    assert!(
        stdout(&out).contains("schedules") && stdout(&out).contains("pulse"),
        "{}",
        stdout(&out)
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&db.run(&["stats", "--json"]))).unwrap();
    assert_eq!(json["schedules"][0]["name"], "pulse", "{json}");
}

#[test]
fn killed_workers_lose_no_tick_and_deleted_jobs_are_not_fired_again() {
    let db = TestDb::new("sched_crash");
    add(&db, &["steady", "--every", "1s", "--catch-up", "all"]);
    let args = ["--threads", "1", "--simulate", "0ms..0ms"];
    let workers: Vec<Worker> = (0..2).map(|_| db.spawn_worker(&args)).collect();
    std::thread::sleep(Duration::from_secs(3));
    for worker in &workers {
        worker.signal("KILL");
    }
    drop(workers);
    // Retention (or an operator) deletes what ran so far: those ticks
    // must not fire again.
    assert!(!jobs_of(&db, "steady").is_empty());
    // The schedule's last tick at the kill: a worker killed between a
    // job's insert and this update leaves it one look behind (the next
    // look finds that job and moves on), never ahead.
    let last_handled = db
        .database()
        .collection::<Document>("queue_schedules")
        .find_one(doc! {"_id": "steady"})
        .run()
        .unwrap()
        .unwrap()
        .get_datetime("last_tick")
        .unwrap()
        .timestamp_millis();
    db.coll()
        .delete_many(doc! {"schedule": "steady"})
        .run()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let worker = db.spawn_worker(&args);
    std::thread::sleep(Duration::from_secs(3));
    stop(vec![worker]);
    let jobs = jobs_of(&db, "steady");
    assert_once_and_never_early(&jobs);
    let ticks: Vec<i64> = jobs.iter().map(tick_ms).collect();
    assert!(
        ticks.iter().all(|&t| t > last_handled),
        "a handled tick fired again after its job was deleted: {ticks:?} (last tick {last_handled})"
    );
    // Every tick since the kill is there, once: caught up, none lost.
    assert_eq!(
        ticks[0],
        last_handled + 1_000,
        "the first tick after the kill: {ticks:?}"
    );
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1_000),
        "no gap: {ticks:?}"
    );
    assert!(ticks.len() >= 4, "{ticks:?}");
}

/// A server whose clock starts at `start` (UTC) and runs on from there.
fn server_at(name: &str, start: &str) -> crate::helpers::OwnServer {
    let lib = libfaketime();
    let at = format!("@{start}");
    crate::helpers::OwnServer::start_with_env(
        name,
        &[],
        &[
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", at.as_str()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("TZ", "UTC"),
        ],
    )
}

/// The ticks (ms since the epoch) of schedule `name` after a worker served
/// it for `run` on a server whose clock starts at `start`.
fn ticks_on_a_server_at(start: &str, name: &str, cron: &str, run: Duration) -> Vec<i64> {
    let mut server = server_at(name, start);
    let db = TestDb::on(&server.uri(), name);
    add(&db, &[name, "--cron", cron, "--tz", "Europe/Berlin"]);
    let worker = db.spawn_worker(&["--threads", "1", "--simulate", "0ms"]);
    std::thread::sleep(run);
    stop(vec![worker]);
    let jobs = jobs_of(&db, name);
    assert_once_and_never_early(&jobs);
    let ticks = jobs.iter().map(tick_ms).collect();
    // secantusd-rs spins a core while its clock is faked: stop it now.
    server.stop();
    ticks
}

fn utc_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn across_the_fall_back_in_berlin_a_wildcard_schedule_runs_on_real_time() {
    // 03:00 CEST becomes 02:00 CET at 01:00:00Z. Every 5 s is a wildcard
    // entry: it goes on through the repeated hour (the ticks before this
    // change skipped it whole).
    let ticks = ticks_on_a_server_at(
        "2026-10-25 00:59:45",
        "dst_fall",
        "*/5 * * * * *",
        Duration::from_secs(25),
    );
    let turn = utc_ms("2026-10-25T01:00:00Z");
    assert!(
        ticks.iter().any(|&t| t < turn) && ticks.iter().filter(|&&t| t >= turn).count() >= 2,
        "ticks on both sides of the change: {ticks:?}"
    );
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 5_000, "none skipped: {ticks:?}");
    }
}

#[test]
fn across_the_spring_gap_in_berlin_a_fixed_time_runs_right_after_it() {
    // 02:00 CET jumps to 03:00 CEST at 01:00:00Z: 02:30:00 never happens,
    // and a fixed-time entry for it runs at 03:00:00 CEST.
    let ticks = ticks_on_a_server_at(
        "2026-03-29 00:59:50",
        "dst_spring",
        "0 30 2 * * *",
        Duration::from_secs(15),
    );
    assert_eq!(ticks, [utc_ms("2026-03-29T01:00:00Z")]);
}
