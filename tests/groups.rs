//! Groups within a queue (issue 32): a job's `group` from the command
//! line, the Rust API and a plain document, shown by `show`, handed to the
//! handlers, listed and filtered by the dashboard.

use mongodb::bson::{doc, Bson};

use crate::dashboard::{dashboard, get};
use crate::helpers::{stderr, stdout, TestDb};

#[test]
fn a_job_names_its_group_from_the_cli_the_api_and_a_plain_document() {
    let db = TestDb::new("groups_field");
    let acme = db.enqueue(&["--group", "acme", r#"{"n": 1}"#]);
    // Lines of stdin: every job in the group.
    let out = db.run_with_stdin(
        &["enqueue", "--quiet", "--group", "acme", "--queue", "mail"],
        "{\"n\": 2}\n{\"n\": 3}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The Rust API.
    let queue = db.queue();
    let api = queue
        .enqueue(
            Bson::Int32(4),
            &mongoq::EnqueueOptions {
                group: Some("initech".into()),
                ..Default::default()
            },
        )
        .unwrap();
    // A shell producer's plain document, one without a group, and one
    // whose group is not a string.
    db.coll()
        .insert_many([
            doc! {"data": 5, "status": "pending", "group": "globex"},
            doc! {"data": 6, "status": "pending"},
            doc! {"data": 7, "status": "pending", "group": 7},
        ])
        .run()
        .unwrap();
    assert_eq!(db.count(doc! {"group": "acme"}), 3);
    assert_eq!(db.count(doc! {"group": "acme", "queue": "mail"}), 2);
    assert_eq!(db.count(doc! {"_id": api, "group": "initech"}), 1);

    // A name that cannot name a group is refused, and nothing is inserted.
    let before = db.count(doc! {});
    for bad in ["", "a\u{7}b", &"x".repeat(201)] {
        let out = db.run(&["enqueue", "--group", bad, "{}"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--group") && stderr(&out).contains("not a valid group name"),
            "{}",
            stderr(&out)
        );
    }
    let refused = queue.enqueue(
        Bson::Int32(0),
        &mongoq::EnqueueOptions {
            group: Some(String::new()),
            ..Default::default()
        },
    );
    assert!(
        matches!(refused, Err(mongoq::Error::GroupName(_))),
        "{refused:?}"
    );
    assert_eq!(db.count(doc! {}), before);

    // `show` prints it.
    let out = db.run(&["show", &acme]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(r#""group": "acme""#),
        "{}",
        stdout(&out)
    );

    // The dashboard lists it, filters by it, and the job page links to
    // the group's jobs. Before the drain: the jobs are pending.
    let board = dashboard(&db, &[]);
    let (status, page) = get(&format!("{}/jobs?status=pending", board.base));
    assert_eq!(status, 200);
    assert!(page.contains("<th>group</th>"), "{page}");
    assert!(page.contains("<td>globex</td>"), "{page}");
    assert!(page.contains("<td>—</td>"), "a job without a group: {page}");
    let (_, page) = get(&format!(
        "{}/jobs?status=pending&queue=mail&group=acme",
        board.base
    ));
    assert_eq!(page.matches("<td>acme</td>").count(), 2, "{page}");
    assert!(!page.contains("<td>globex</td>"), "{page}");
    let (status, page) = get(&format!(
        "{}/job?id=%7B%22%24oid%22%3A%22{acme}%22%7D",
        board.base
    ));
    assert_eq!(status, 200);
    assert!(
        page.contains("group <a id=group href=\"/jobs?status=pending&amp;queue=default&amp;group=acme\"><b>acme</b></a>"),
        "{page}"
    );
    drop(board);

    // The handlers get it: `--exec` in its JSON (and `MONGOQ_GROUP`),
    // here handed back as the result.
    db.drain(&[
        "--queue",
        "default",
        "--queue",
        "mail",
        "--exec",
        "sh",
        "-c",
        r#"printf '{"job": %s, "env": "%s"}' "$(cat)" "$MONGOQ_GROUP""#,
    ]);
    for job in db.all(doc! {"group": {"$type": "string"}}) {
        let group = job.get_str("group").unwrap();
        let result = job
            .get_document("result")
            .unwrap_or_else(|_| panic!("{job:?}"));
        assert_eq!(job.get_str("status").unwrap(), "completed", "{job:?}");
        assert_eq!(
            result
                .get_document("job")
                .unwrap()
                .get_str("group")
                .unwrap(),
            group
        );
        assert_eq!(result.get_str("env").unwrap(), group);
    }
    let plain = db.all(doc! {"data": 6});
    let result = plain[0].get_document("result").unwrap();
    assert!(result.get_document("job").unwrap().get("group").is_none());
    assert_eq!(result.get_str("env").unwrap(), "");
    // A group that is not a string fails its job with the reason.
    let bad = &db.all(doc! {"group": 7})[0];
    assert_eq!(bad.get_str("status").unwrap(), "failed", "{bad:?}");
    assert!(
        bad.get_str("last_error")
            .unwrap()
            .contains("`group` must be a string"),
        "{bad:?}"
    );
}

/// What operators see of a queue's groups: `stats --groups` (text and
/// JSON), the dashboard's groups page linking each group to its jobs, and
/// `/metrics`' count of groups with a backlog.
#[test]
fn the_busiest_groups_of_a_queue_are_listed_for_operators() {
    let db = TestDb::new("groups_busiest");
    let out = db.run(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut jobs = Vec::new();
    for (group, n) in [("acme", 30), ("globex", 5), ("initech", 2)] {
        for i in 0..n {
            jobs.push(doc! {"data": i, "status": "pending", "queue": "mail", "group": group});
        }
    }
    jobs.push(doc! {"data": 0, "status": "running", "queue": "mail", "group": "globex"});
    for i in 0..4 {
        jobs.push(doc! {"data": i, "status": "pending", "queue": "mail"});
    }
    // Another queue's group, and finished jobs: not in the mail queue's list.
    jobs.push(doc! {"data": 0, "status": "pending", "queue": "other", "group": "acme"});
    jobs.push(doc! {"data": 0, "status": "completed", "queue": "mail", "group": "umbrella"});
    db.coll().insert_many(jobs).run().unwrap();

    let out = db.run(&["stats", "--groups", "mail", "--top", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("queue mail: 3 groups with pending or running jobs"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["acme", "30", "0", "–"], "{text}");
    assert_eq!(rows[1], ["globex", "5", "1", "–"], "{text}");
    assert_eq!(rows[2], ["(default", "group)", "4", "0", "–"], "{text}");
    assert!(text.contains("… and 1 more groups"), "{text}");

    let out = db.run(&["stats", "--groups", "mail", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["active_groups"], 3, "{json}");
    assert_eq!(json["groups"][2]["group"], "initech", "{json}");
    assert_eq!(json["groups"][2]["pending"], 2, "{json}");
    assert_eq!(json["default_group"]["pending"], 4, "{json}");
    assert_eq!(json["default_group"]["group"], serde_json::Value::Null);
    let out = db.run(&["stats", "--groups", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = db.run(&["stats", "--groups", "mail", "--watch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let board = dashboard(&db, &[]);
    let (status, page) = get(&format!("{}/queues", board.base));
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/groups?queue=mail\""), "{page}");
    // Each queue's busiest groups, inline in its row (three at most).
    assert!(
        page.contains("<a href=\"/jobs?status=pending&amp;queue=mail&amp;group=acme\">acme</a> 30 pending, 0 running<br><a href=\"/jobs?status=pending&amp;queue=mail&amp;group=globex\">globex</a> 5 pending, 1 running<br><a href=\"/jobs?status=pending&amp;queue=mail&amp;group=initech\">initech</a> 2 pending, 0 running<br></td>"),
        "{page}"
    );
    assert!(
        page.contains("<a href=\"/jobs?status=pending&amp;queue=other&amp;group=acme\">acme</a> 1 pending, 0 running<br></td>"),
        "{page}"
    );
    let (status, page) = get(&format!("{}/groups?queue=mail", board.base));
    assert_eq!(status, 200);
    assert!(page.contains("<b id=active-groups>3</b>"), "{page}");
    assert!(
        page.contains("<td>acme</td><td class=num><a href=\"/jobs?status=pending&amp;queue=mail&amp;group=acme\">30</a></td>"),
        "{page}"
    );
    assert!(page.contains("<td>(default group)</td><td class=num><a href=\"/jobs?status=pending&amp;queue=mail\">4</a>"), "{page}");
    assert!(!page.contains("umbrella"), "{page}");
    drop(board);

    // /metrics: groups with pending jobs over all queues (acme twice: in
    // two queues), sampled by a worker that serves neither queue.
    let addr = format!("127.0.0.1:{}", crate::helpers::free_port());
    let mut worker = db.spawn_worker(&[
        "--queue",
        "idle",
        "--metrics-addr",
        &addr,
        "--simulate",
        "0ms..0ms",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut response) = ureq::get(&format!("http://{addr}/metrics")).call() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            if body.contains("\nmongoq_queue_groups_with_backlog 4\n") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics never counted 4 groups with a backlog"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    worker.signal("TERM");
    worker.expect_success(std::time::Duration::from_secs(30));
}

/// Fair share: a group's big backlog, enqueued first, does not hold back
/// the small groups enqueued after it. The worker's first read stops at
/// its limit (ten batches of 10) inside the big group; the read for the
/// groups it did not meet finds the small ones, and starts go round-robin
/// among all 21 groups, so the 60 small jobs start among the first ~63
/// (without fair share they would start after the 600 big ones).
#[test]
fn a_big_groups_backlog_does_not_hold_back_the_small_groups_behind_it() {
    let db = TestDb::new("groups_fair");
    let big: Vec<_> = (0..600)
        .map(|n| doc! {"data": n, "status": "pending", "group": "big"})
        .collect();
    db.coll().insert_many(big).run().unwrap();
    db.coll().insert_many(groups_of("s", 20, 3)).run().unwrap();
    // One job per line, in the order they started (one thread, so the
    // order of the claims).
    let order = crate::helpers::tempfile(&format!("{}-order.txt", db.db));
    let script = format!("echo \"$MONGOQ_GROUP\" >> '{}'", order.display());
    db.drain(&[
        "--threads",
        "1",
        "--batch-size",
        "10",
        "--exec",
        "sh",
        "-c",
        &script,
    ]);
    let started: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(started.len(), 660, "every job ran once");
    assert_eq!(db.count(doc! {"status": "completed"}), 660);
    let last_small = started
        .iter()
        .rposition(|g| g != "big")
        .expect("small groups ran");
    assert!(
        last_small < 100,
        "the last small group's job started {}th of 660; order: {:?}",
        last_small + 1,
        &started[..=last_small.min(150)]
    );
    // Within the first round every group started once: the big group
    // first (its job heads the queue), then the small ones.
    let first_round: std::collections::HashSet<&String> = started[..21].iter().collect();
    assert_eq!(first_round.len(), 21, "{:?}", &started[..21]);
}

/// The workers of the fair-share drains: 2 threads, batches of 20, 10 ms
/// jobs, one attempt (a job run twice would show).
const FAIR_FLEET_FLAGS: [&str; 8] = [
    "--threads",
    "2",
    "--batch-size",
    "20",
    "--simulate",
    "10ms..10ms",
    "--max-attempts",
    "1",
];

/// `groups` pending groups (`{prefix}0`, `{prefix}1`, …) of `each` jobs.
fn groups_of(prefix: &str, groups: usize, each: i32) -> Vec<mongodb::bson::Document> {
    (0..groups)
        .flat_map(|g| {
            (0..each).map(
                move |n| doc! {"data": n, "status": "pending", "group": format!("{prefix}{g}")},
            )
        })
        .collect()
}

/// Named groups behind a backlog of jobs without a group: the first read
/// meets no named group, so the reader makes no extra read for groups (a
/// queue without groups costs what it did before them); the fleet's look
/// for new groups notices them within a look, and they run long before
/// the backlog drains. Counts: every job ran once.
#[test]
fn named_groups_behind_a_backlog_without_groups_are_noticed_by_the_look() {
    use std::time::{Duration, Instant};
    let db = TestDb::new("groups_behind_default");
    let plain: Vec<_> = (0..1_500)
        .map(|n| doc! {"data": n, "status": "pending"})
        .collect();
    db.coll().insert_many(plain).run().unwrap();
    db.coll().insert_many(groups_of("g", 10, 3)).run().unwrap();
    let mut worker = db.spawn_worker(&FAIR_FLEET_FLAGS);
    let deadline = Instant::now() + Duration::from_secs(120);
    let left_behind = loop {
        assert!(
            Instant::now() < deadline,
            "the named groups' jobs never all ran"
        );
        if db.count(doc! {"group": {"$exists": true}, "status": "completed"}) == 30 {
            break db.count(doc! {"group": {"$exists": false}, "status": "pending"});
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        left_behind >= 500,
        "the named groups ran only when {left_behind} of the 1,500 jobs without a group were left"
    );
    db.wait_for_count(
        doc! {"status": "completed"},
        1_530,
        Duration::from_secs(120),
    );
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
    assert_eq!(
        db.count(doc! {"attempts": {"$ne": 1}}),
        0,
        "every job ran once"
    );
}

/// Fair share across a fleet: three workers share one window (its parts
/// carry the groups), and a group that arrives while the big group's
/// backlog drains is noticed by the fleet's look, not after the backlog.
/// Counts: every job ran once, none lost.
#[test]
fn a_fleet_shares_fairly_and_notices_a_group_that_arrives_mid_drain() {
    let db = TestDb::new("groups_fleet");
    let big: Vec<_> = (0..3_000)
        .map(|n| doc! {"data": n, "status": "pending", "group": "big"})
        .collect();
    db.coll().insert_many(big).run().unwrap();
    let mut workers: Vec<_> = (0..3).map(|_| db.spawn_worker(&FAIR_FLEET_FLAGS)).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.count(doc! {"status": "completed"}) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Six workers' threads start ~600 jobs a second at most: the backlog
    // has seconds to go when the late groups arrive.
    let late: Vec<_> = (0..10)
        .flat_map(|g| {
            (0..2).map(move |n| doc! {"data": n, "status": "pending", "group": format!("late{g}")})
        })
        .collect();
    db.coll().insert_many(late).run().unwrap();
    db.wait_for_count(
        doc! {"group": {"$regex": "^late"}, "status": "completed"},
        20,
        std::time::Duration::from_secs(60),
    );
    let big_left = db.count(doc! {"group": "big", "status": "pending"});
    eprintln!("the late groups ran with {big_left} of the big group's jobs still pending");
    assert!(
        big_left > 300,
        "the late groups ran only after the big group's backlog: {big_left} of its jobs were left"
    );
    db.wait_for_count(
        doc! {"status": "completed"},
        3_020,
        std::time::Duration::from_secs(120),
    );
    for worker in &mut workers {
        worker.signal("TERM");
    }
    for worker in &mut workers {
        worker.expect_success(std::time::Duration::from_secs(30));
    }
    assert_eq!(
        db.count(doc! {"attempts": 1, "status": "completed"}),
        3_020,
        "each job ran once"
    );
}

/// Per-group concurrency, fleet-wide and exact: 3 processes × 8 threads on
/// 50 groups (5 of 100 jobs, 45 of 10), a group concurrency of 2 and an
/// override of 1 for one big group. A sampler counts each group's running
/// jobs on the server every few milliseconds: never more than the limit.
/// One worker is SIGKILLed mid-drain: its slots come back when its lease
/// runs out (its holder entry is dropped by the next take), and every job
/// completes.
#[test]
fn group_concurrency_holds_across_processes_and_a_killed_worker() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let db = TestDb::new("groups_limit");
    let out = db.run(&["limit", "default", "--group-concurrency", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = db.run(&["limit", "default", "--group", "big0", "--concurrency", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = db.run(&["limit"]);
    assert!(
        stdout(&listed).contains("each group at most 2 at once")
            && stdout(&listed).contains("group big0 at most 1"),
        "{}",
        stdout(&listed)
    );
    let mut jobs = Vec::new();
    for g in 0..5 {
        for n in 0..100 {
            jobs.push(doc! {"data": n, "status": "pending", "group": format!("big{g}")});
        }
    }
    for g in 0..45 {
        for n in 0..10 {
            jobs.push(doc! {"data": n, "status": "pending", "group": format!("small{g}")});
        }
    }
    let total = jobs.len() as u64;
    db.coll().insert_many(jobs).run().unwrap();
    // Operators see each group's limit.
    let out = db.run(&["stats", "--groups", "default", "--top", "100"]);
    let text = stdout(&out);
    let row = |group: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(group))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(row("big0"), vec!["big0", "100", "0", "1"], "{text}");
    assert_eq!(row("small3"), vec!["small3", "10", "0", "2"], "{text}");

    let stop = Arc::new(AtomicBool::new(false));
    let most: Arc<Mutex<HashMap<String, i32>>> = Arc::default();
    let sampler = {
        let (stop, most, coll) = (Arc::clone(&stop), Arc::clone(&most), db.coll());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                // Running: claimed and its lease not run out (a killed
                // worker's jobs stay `running` until a peer rescues them,
                // but no longer hold their group's slots once the lease
                // is past).
                let now = mongodb::bson::DateTime::now();
                let running = coll
                    .aggregate([
                        doc! {"$match": {"status": "running", "lease_until": {"$gt": now}}},
                        doc! {"$group": {"_id": "$group", "n": {"$sum": 1}}},
                    ])
                    .run()
                    .unwrap();
                for row in running {
                    let row = row.unwrap();
                    let group = row.get_str("_id").unwrap_or("?").to_string();
                    let n = row.get_i32("n").unwrap_or(0);
                    let mut most = most.lock().unwrap();
                    let seen = most.entry(group).or_insert(0);
                    *seen = (*seen).max(n);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };
    let flags = [
        "--threads",
        "8",
        "--simulate",
        "40ms..40ms",
        "--lease",
        "3s",
    ];
    let mut workers: Vec<_> = (0..3).map(|_| db.spawn_worker(&flags)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count(doc! {"status": "completed"}) < total / 3 {
        assert!(Instant::now() < deadline, "the fleet made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    workers[0].signal("KILL");
    workers[0].wait(Duration::from_secs(10));
    db.wait_for_count(
        doc! {"status": "completed"},
        total,
        Duration::from_secs(120),
    );
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    for worker in &mut workers[1..] {
        worker.signal("TERM");
        worker.expect_success(Duration::from_secs(30));
    }
    let most = most.lock().unwrap().clone();
    assert!(samples > 50, "the sampler ran {samples} times");
    for (group, n) in &most {
        let limit = if group == "big0" { 1 } else { 2 };
        assert!(
            *n <= limit,
            "group {group} had {n} jobs running at once: {most:?}"
        );
    }
    assert_eq!(
        most.get("big1"),
        Some(&2),
        "the limit was reached: {most:?}"
    );
    assert_eq!(db.count(doc! {"status": "completed"}), total, "none lost");
    // Attempts beyond the first: only jobs the killed worker held (its
    // eight running and the few it had claimed ahead), once each.
    assert_eq!(
        db.count(doc! {"attempts": {"$gt": 2}}),
        0,
        "a job ran three times"
    );
    assert!(
        db.count(doc! {"attempts": 2}) <= 100,
        "more jobs ran twice than the killed worker can have held"
    );
    // The live workers gave every slot back; only the killed worker's
    // entries may remain (a take of the group drops them, or the sweep
    // deletes the document once they are past).
    let slots = db
        .database()
        .collection::<mongodb::bson::Document>(&format!("{}_group_slots", db.coll().name()));
    let mut holding = std::collections::HashSet::new();
    for left in slots.find(doc! {"n": {"$gt": 0}}).run().unwrap() {
        let left = left.unwrap();
        for (holder, entry) in left.get_document("holders").unwrap() {
            let n = entry
                .as_document()
                .and_then(|e| e.get("n"))
                .and_then(mongodb::bson::Bson::as_i64);
            if n.unwrap_or(0) > 0 {
                holding.insert(holder.clone());
            }
        }
    }
    assert!(holding.len() <= 1, "slots still held by {holding:?}");
}

/// A group rate, fleet-wide: 8 processes × 2 threads, every group at most
/// 5 starts per second and one group at most 10: the busiest window of
/// each group's starts holds no more. A start is timed by the runner
/// itself (its attempt's span, exported over OTLP), not by a handler that
/// notes the time when the scheduler lets it run.
#[test]
fn a_group_rate_holds_across_eight_processes() {
    use std::time::Duration;
    let db = TestDb::alone("groups_rate");
    let out = db.run(&["limit", "default", "--group-rate", "5/1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = db.run(&["limit", "default", "--group", "vip", "--rate", "10/1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bad = db.run(&["limit", "default", "--group-rate", "5"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--group-rate"), "{}", stderr(&bad));
    let mut jobs = Vec::new();
    for group in ["a", "b", "c"] {
        for n in 0..15 {
            jobs.push(doc! {"data": n, "status": "pending", "group": group});
        }
    }
    for n in 0..30 {
        jobs.push(doc! {"data": n, "status": "pending", "group": "vip"});
    }
    db.coll().insert_many(jobs).run().unwrap();
    let port = crate::helpers::free_port();
    let received = crate::helpers::tempfile(&format!("{}-otlp", db.db));
    let _ = std::fs::remove_file(&received);
    let _receiver = crate::tracing::Receiver::start(&db, port, &received);
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut workers: Vec<_> = (0..8)
        .map(|_| db.spawn_worker_with_env(&["--threads", "2", "--simulate", "5ms..5ms"], &env))
        .collect();
    db.wait_for_count(doc! {"status": "completed"}, 75, Duration::from_secs(120));
    for worker in &workers {
        worker.signal("TERM");
    }
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(30));
    }
    let groups: std::collections::HashMap<String, String> = db
        .coll()
        .find(doc! {})
        .run()
        .unwrap()
        .map(|job| {
            let job = job.unwrap();
            let id = job.get_object_id("_id").unwrap().to_hex();
            (id, job.get_str("group").unwrap().to_string())
        })
        .collect();
    let mut starts: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
    for (span, _) in crate::tracing::spans(&received) {
        let id = crate::tracing::attribute(&span["attributes"], "messaging.message.id").unwrap();
        let nanos: i64 = span["startTimeUnixNano"]
            .as_str()
            .map(|n| n.parse().unwrap())
            .or_else(|| span["startTimeUnixNano"].as_i64())
            .unwrap_or_else(|| panic!("a span without its start: {span}"));
        starts
            .entry(groups[&id].clone())
            .or_default()
            .push(nanos / 1_000_000);
    }
    for (group, rate) in [("a", 5), ("b", 5), ("c", 5), ("vip", 10)] {
        let mut at = starts.remove(group).unwrap_or_default();
        at.sort_unstable();
        assert_eq!(
            at.len(),
            if group == "vip" { 30 } else { 15 },
            "group {group}: one span per job"
        );
        // A start comes within 50 ms of its reserved instant, reservations
        // of one window are spaced by the window and those 50 ms; 0.9 s
        // windows leave 0.1 s for the scheduler between the runner's check
        // and its span's clock reading on this loaded 2-core machine.
        let busiest = at
            .iter()
            .map(|first| {
                at.iter()
                    .filter(|s| **s >= *first && **s < first + 900)
                    .count()
            })
            .max()
            .unwrap_or(0);
        eprintln!("group {group}: busiest 0.9 s window {busiest} starts (rate {rate}/1s)");
        assert!(
            busiest <= rate,
            "group {group}: {busiest} starts in 0.9 s: {at:?}"
        );
        let span = at.last().unwrap() - at.first().unwrap();
        let least = (at.len() - rate) as i64 * 1_000 / rate as i64 - 200;
        assert!(
            span >= least,
            "group {group}: {} starts in {span} ms: {at:?}",
            at.len()
        );
        assert!(
            busiest >= rate / 2,
            "the rate set the pace of group {group}, not a lack of workers: {busiest}"
        );
    }
    assert_eq!(
        db.count(doc! {"attempts": 1, "status": "completed"}),
        75,
        "each job ran once"
    );
}

/// The ledger lines of an ordered test: (group, job id, start ms, end ms).
fn ordered_ledger(ledger: &std::path::Path) -> Vec<(String, String, i64, Option<i64>)> {
    let mut runs: Vec<(String, String, i64, Option<i64>)> = Vec::new();
    for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [group, id, kind, at] = parts[..] else {
            continue;
        };
        let at: i64 = at.parse().unwrap();
        match kind {
            "start" => runs.push((group.into(), id.into(), at, None)),
            _ => {
                if let Some(run) = runs.iter_mut().rev().find(|r| r.1 == id && r.3.is_none()) {
                    run.3 = Some(at);
                }
            }
        }
    }
    runs.sort_by_key(|r| r.2);
    runs
}

fn ordered_script(ledger: &std::path::Path, extra: &str) -> String {
    let file = ledger.display();
    format!(
        "printf '%s %s start %s\\n' \"$MONGOQ_GROUP\" \"$MONGOQ_JOB_ID\" \"$(date +%s%3N)\" >> '{file}'; {extra} sleep 0.02; printf '%s %s end %s\\n' \"$MONGOQ_GROUP\" \"$MONGOQ_JOB_ID\" \"$(date +%s%3N)\" >> '{file}'"
    )
}

/// Ordered groups: 200 jobs of one group run in order, one at a time,
/// with 3 workers racing for them (and another group's jobs beside), and
/// the worker running one of them SIGKILLed: that job runs again (its
/// lease runs out) before the next starts.
#[test]
fn an_ordered_group_runs_in_order_one_at_a_time_through_a_killed_worker() {
    use std::time::{Duration, Instant};
    let db = TestDb::new("groups_ordered");
    let out = db.run(&["limit", "default", "--ordered"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&db.run(&["limit"])).contains("ordered groups"));
    let jobs: Vec<_> = (0..200)
        .map(|n| doc! {"data": n, "status": "pending", "group": "acct"})
        .chain((0..50).map(|n| doc! {"data": n, "status": "pending", "group": "other"}))
        .collect();
    let ids = db.coll().insert_many(jobs).run().unwrap().inserted_ids;
    let order: std::collections::HashMap<String, i32> = (0..200)
        .map(|n| (ids[&(n as usize)].as_object_id().unwrap().to_hex(), n))
        .collect();
    let ledger = crate::helpers::tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    // Job 60's first run sleeps long enough to be killed for sure while its
    // handler runs (a 20 ms job could finish between the look and the
    // kill), and never writes its end: its rerun must run it again.
    let victim = ids[&60].as_object_id().unwrap().to_hex();
    let marker = crate::helpers::tempfile(&format!("{}-first-run", db.db));
    let _ = std::fs::remove_file(&marker);
    let slow = format!(
        "if [ \"$MONGOQ_JOB_ID\" = {victim} ] && mkdir '{}' 2>/dev/null; then sleep 8; exit 1; fi;",
        marker.display()
    );
    let script = ordered_script(&ledger, &slow);
    let names = ["ordered-a", "ordered-b", "ordered-c"];
    let mut workers: Vec<_> = names
        .iter()
        .map(|name| {
            db.spawn_worker(&[
                "--worker-id",
                name,
                "--threads",
                "4",
                "--lease",
                "3s",
                "--exec",
                "sh",
                "-c",
                &script,
            ])
        })
        .collect();
    // Kill the worker running job 60 once its handler has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed = loop {
        assert!(Instant::now() < deadline, "job 60 never started");
        let started = std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .contains(&format!("{victim} start"));
        if started {
            let running = db.all(doc! {"_id": ids[&60].clone(), "status": "running"});
            let owner = running
                .first()
                .and_then(|job| job.get_str("lease_owner").ok())
                .unwrap_or_default();
            let at = names
                .iter()
                .position(|n| *n == owner)
                .expect("job 60 runs on one of the workers");
            workers[at].signal("KILL");
            workers[at].wait(Duration::from_secs(10));
            break (at, victim.clone());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    db.wait_for_count(doc! {"status": "completed"}, 250, Duration::from_secs(120));
    for (at, worker) in workers.iter_mut().enumerate() {
        if at != killed.0 {
            worker.signal("TERM");
            worker.expect_success(Duration::from_secs(30));
        }
    }
    let runs: Vec<_> = ordered_ledger(&ledger)
        .into_iter()
        .filter(|r| r.0 == "acct")
        .collect();
    let sequence: Vec<i32> = runs.iter().map(|r| order[&r.1]).collect();
    let killed_n = order[&killed.1];
    // In order: 0, 1, …, 199, with the killed job twice in a row.
    let mut once = sequence.clone();
    once.dedup();
    assert_eq!(
        once,
        (0..200).collect::<Vec<i32>>(),
        "the group's jobs in the order they started"
    );
    let again: Vec<i32> = sequence
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert_eq!(
        again,
        vec![killed_n],
        "the killed job ({killed_n}) ran again right after its killed run, and only it"
    );
    // One at a time: each starts after the one before ended (the killed
    // run never ended; its rerun starts after its lease ran out).
    for pair in runs.windows(2) {
        if let Some(end) = pair[0].3 {
            assert!(
                pair[1].2 >= end,
                "{:?} started before {:?} ended",
                pair[1],
                pair[0]
            );
        }
    }
    // The other group's jobs the killed worker held ran twice too; of
    // this group only the killed job did.
    assert_eq!(
        db.all(doc! {"group": "acct", "attempts": {"$gt": 1}})
            .iter()
            .map(|job| job.get_object_id("_id").unwrap().to_hex())
            .collect::<Vec<_>>(),
        vec![killed.1.clone()],
        "only the killed job ran twice"
    );
}

/// A fleet drains many ordered groups and stops (`--drain`): each group's
/// jobs started in order, each after the one before it completed, each
/// ran once. A worker's window can still list jobs its peers ran since it
/// was read; those must not wait at its front for ever (they did: the
/// drain never ended).
#[test]
fn a_fleet_drains_many_ordered_groups_in_order_and_stops() {
    use std::time::Duration;
    let db = TestDb::new("groups_ordered_fleet");
    assert!(db.run(&["limit", "default", "--ordered"]).status.success());
    // Interleaved as producers would: every group's job 0, then job 1, …
    let jobs: Vec<_> = (0..4)
        .flat_map(|n| {
            (0..300).map(
                move |g| doc! {"data": {"n": n}, "status": "pending", "group": format!("g{g:03}")},
            )
        })
        .collect();
    db.coll().insert_many(jobs).run().unwrap();
    let mut workers: Vec<_> = (0..3)
        .map(|i| {
            db.spawn_worker(&[
                "--drain",
                "--threads",
                "4",
                "--worker-id",
                &format!("ordered-fleet-{i}"),
                "--simulate",
                "5ms..5ms",
            ])
        })
        .collect();
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(180));
    }
    assert_eq!(
        db.count(doc! {"status": "completed", "attempts": 1}),
        1_200,
        "{:?}",
        db.by_status()
    );
    let mut jobs = db.all(doc! {});
    jobs.sort_by_key(|job| {
        (
            job.get_str("group").unwrap().to_string(),
            job.get_document("data").unwrap().get_i32("n").unwrap(),
        )
    });
    for pair in jobs.windows(2) {
        if pair[0].get_str("group") != pair[1].get_str("group") {
            continue;
        }
        let completed = pair[0].get_datetime("completed_at").unwrap();
        let started = pair[1].get_datetime("started_at").unwrap();
        // Both times are the workers' reading of the server's clock
        // (each within a few ms of it).
        assert!(
            started.timestamp_millis() + 5 >= completed.timestamp_millis(),
            "{} started before {} completed",
            pair[1],
            pair[0]
        );
    }
}

/// A job of an ordered group that fails for good halts its group: the
/// jobs after it wait, `stats --groups` says which job halts it, the
/// metric counts it; `retry-failed` runs it again and the group goes on.
#[test]
fn a_failed_job_halts_its_ordered_group_until_it_is_retried() {
    use std::time::Duration;
    let db = TestDb::new("groups_halt");
    assert!(db.run(&["limit", "default", "--ordered"]).status.success());
    let jobs: Vec<_> = (0..5)
        .map(|n| doc! {"data": n, "status": "pending", "group": "h"})
        .collect();
    let ids = db.coll().insert_many(jobs).run().unwrap().inserted_ids;
    let id = |n: usize| ids[&n].as_object_id().unwrap().to_hex();
    let marker = crate::helpers::tempfile(&format!("{}-fixed", db.db));
    let _ = std::fs::remove_file(&marker);
    let ledger = crate::helpers::tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let fail = format!(
        "if [ \"$MONGOQ_JOB_ID\" = '{}' ] && [ ! -f '{}' ]; then exit 3; fi;",
        id(2),
        marker.display()
    );
    let script = ordered_script(&ledger, &fail);
    let addr = format!("127.0.0.1:{}", crate::helpers::free_port());
    let mut worker = db.spawn_worker(&[
        "--threads",
        "2",
        "--max-attempts",
        "1",
        "--metrics-addr",
        &addr,
        "--exec",
        "sh",
        "-c",
        &script,
    ]);
    db.wait_for_count(doc! {"status": "failed"}, 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        2,
        "jobs 0 and 1 ran"
    );
    assert_eq!(db.count(doc! {"status": "pending"}), 2, "jobs 3 and 4 wait");
    let text = stdout(&db.run(&["stats", "--groups", "default"]));
    assert!(
        text.contains(&format!("group h is HALTED: job {} failed for good", id(2))),
        "{text}"
    );
    // The dashboard's groups page says so too, and links the job.
    let board = dashboard(&db, &[]);
    let (status, page) = get(&format!("{}/groups?queue=default", board.base));
    assert_eq!(status, 200);
    assert!(
        page.contains("Group <b>h</b> is halted") && page.contains(&format!("/job?id={}", id(2))),
        "{page}"
    );
    // And the Queues page, in the queue's row (limit 1: it is ordered).
    let (status, page) = get(&format!("{}/queues", board.base));
    assert_eq!(status, 200);
    assert!(
        page.contains("group=h\">h</a> 2 pending, 0 running (limit 1)<br> <a class=err href=\"/groups?queue=default\">1 halted</a>"),
        "{page}"
    );
    drop(board);
    // `show` says why a job after it waits.
    let shown = db.run(&["show", &id(3)]);
    assert!(
        stderr(&shown).contains(&format!(
            "its ordered group h is HALTED: job {} failed for good",
            id(2)
        )),
        "{}",
        stderr(&shown)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut response) = ureq::get(&format!("http://{addr}/metrics")).call() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            if body.contains("\nmongoq_queue_halted_groups 1\n") {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the metrics never counted the halted group"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&marker, "").unwrap();
    let out = db.run(&["retry-failed", "--id", &id(2)]);
    assert!(out.status.success(), "{}", stderr(&out));
    db.wait_for_count(doc! {"status": "completed"}, 5, Duration::from_secs(60));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
    let started: Vec<String> = ordered_ledger(&ledger).into_iter().map(|r| r.1).collect();
    assert_eq!(
        started,
        vec![id(0), id(1), id(2), id(2), id(3), id(4)],
        "in order, the failed job again before the rest"
    );
}

/// A drain of an ordered queue ends when all that is left waits behind
/// halted groups: the other groups drained, the halted groups' later jobs
/// stay pending for the operator, and the log says why. In group `p` a
/// job of a higher priority enqueued later comes first: its failure halts
/// the job enqueued before it.
#[test]
fn a_drain_ends_leaving_a_halted_groups_jobs_pending() {
    let db = TestDb::new("groups_halt_drain");
    assert!(db.run(&["limit", "default", "--ordered"]).status.success());
    let jobs: Vec<_> = (0..4)
        .map(|n| doc! {"data": n, "status": "pending", "group": "h"})
        .chain((0..3).map(|n| doc! {"data": n, "status": "pending", "group": "g"}))
        .chain([
            doc! {"data": "first in", "status": "pending", "group": "p"},
            doc! {"data": "urgent", "status": "pending", "group": "p", "priority": 3},
        ])
        .collect();
    let ids = db.coll().insert_many(jobs).run().unwrap().inserted_ids;
    let id = |n: usize| ids[&n].as_object_id().unwrap().to_hex();
    let script = format!(
        "case \"$MONGOQ_JOB_ID\" in {}|{}) exit 3;; esac",
        id(1),
        id(8)
    );
    let worker = db.drain(&["--threads", "2", "--exec", "sh", "-c", &script]);
    assert_eq!(db.count(doc! {"group": "g", "status": "completed"}), 3);
    assert_eq!(db.count(doc! {"group": "h", "status": "completed"}), 1);
    assert_eq!(db.count(doc! {"group": "h", "status": "failed"}), 1);
    assert_eq!(
        db.count(doc! {"group": "h", "status": "pending", "attempts": {"$in": [0, null]}}),
        2,
        "the jobs after the failed one wait, never started"
    );
    assert_eq!(
        db.count(doc! {"group": "p", "status": "failed", "priority": 3}),
        1
    );
    assert_eq!(
        db.count(doc! {"group": "p", "status": "pending", "attempts": {"$in": [0, null]}}),
        1,
        "the job enqueued first waits behind the urgent one that failed"
    );
    let log = worker.log_text();
    assert!(
        log.contains("2 ordered group(s) halted by a failed job"),
        "{log}"
    );
}

/// Weights: a group with a weight of 3 takes three turns for each of an
/// unweighted group's, here 3 of every 4 starts while both have jobs.
#[test]
fn a_weighted_group_gets_its_weight_in_turns() {
    let db = TestDb::new("groups_weight");
    let out = db.run(&["limit", "default", "--group", "gold", "--weight", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&db.run(&["limit"])).contains("group gold weight 3"));
    let jobs: Vec<_> = (0..100)
        .map(|n| doc! {"data": n, "status": "pending", "group": "std"})
        .chain((0..100).map(|n| doc! {"data": n, "status": "pending", "group": "gold"}))
        .collect();
    db.coll().insert_many(jobs).run().unwrap();
    let order = crate::helpers::tempfile(&format!("{}-order.txt", db.db));
    let _ = std::fs::remove_file(&order);
    let script = format!("echo \"$MONGOQ_GROUP\" >> '{}'", order.display());
    db.drain(&[
        "--threads",
        "1",
        "--batch-size",
        "8",
        "--exec",
        "sh",
        "-c",
        &script,
    ]);
    let started: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(started.len(), 200, "every job ran once");
    let gold = started[..80].iter().filter(|g| *g == "gold").count();
    assert!(
        (54..=66).contains(&gold),
        "gold started {gold} of the first 80 (weight 3 of 4: 60)"
    );
}
