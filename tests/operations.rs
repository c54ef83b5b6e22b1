//! What operators use: admin commands, named queues, unique jobs,
//! retention, metrics and health, systemd notification, stats --watch,
//! shell completions and the man page.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime};

use crate::helpers::{free_port, int, mongosh, stderr, stdout, tempfile, OwnServer, TestDb};

fn enqueue(db: &TestDb, args: &[&str]) -> String {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    let out = db.run(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn oid(text: &str) -> ObjectId {
    ObjectId::parse_str(text).unwrap_or_else(|_| panic!("not an id: {text}"))
}

fn ago(seconds: i64) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() - seconds * 1000)
}

#[test]
fn show_prints_the_whole_job_and_unknown_ids_are_an_error() {
    let db = TestDb::new("show");
    let id = enqueue(&db, &["--priority", "4", r#"{"to": "<ada>"}"#]);
    let out = db.run(&["show", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["_id"]["$oid"], id);
    assert_eq!(shown["data"]["to"], "<ada>");
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["priority"], 4);
    assert!(shown["run_at"]["$date"].is_string(), "{shown}");

    db.coll()
        .insert_one(doc! {"_id": "report-7", "data": 1, "status": "pending"})
        .run()
        .unwrap();
    let out = db.run(&["show", "report-7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"report-7\""));

    let out = db.run(&["show", &ObjectId::new().to_hex()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no job has _id"), "{}", stderr(&out));
}

#[test]
fn cancel_stops_a_pending_job_from_running_and_refuses_finished_ones() {
    let db = TestDb::new("cancel_pending");
    let cancelled = enqueue(&db, &["{}"]);
    let kept = enqueue(&db, &["{}"]);
    let out = db.run(&["cancel", &cancelled]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("will not run"));
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    assert!(worker.wait(Duration::from_secs(30)).success());
    let job = db
        .coll()
        .find_one(doc! {"_id": oid(&cancelled)})
        .run()
        .unwrap()
        .unwrap();
    assert_eq!(job.get_str("status").unwrap(), "cancelled", "{job}");
    assert!(job.get_datetime("cancelled_at").is_ok());
    assert_eq!(int(&job, "attempts"), 0, "a cancelled job never ran: {job}");
    assert_eq!(db.count(doc! {"_id": oid(&kept), "status": "completed"}), 1);

    let out = db.run(&["cancel", &kept]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is completed"), "{}", stderr(&out));
}

#[test]
fn cancel_drops_a_running_job_at_its_next_lease_extension() {
    let db = TestDb::new("cancel_running");
    let id = enqueue(&db, &["{}"]);
    let marker = tempfile(&format!("{}-ran", db.db));
    let _ = std::fs::remove_file(&marker);
    let script = format!("echo run >> {}; sleep 60", marker.display());
    let mut worker = db.spawn_worker(&[
        "--lease",
        "3s",
        "--threads",
        "1",
        "--exec",
        "sh",
        "-c",
        &script,
    ]);
    db.wait_for_count(doc! {"status": "running"}, 1, Duration::from_secs(20));
    let out = db.run(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("is running on"), "{}", stdout(&out));
    // Leases are extended every second here; the job is dropped then.
    db.wait_for_count(doc! {"status": "cancelled"}, 1, Duration::from_secs(15));
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    for field in [
        "lease_owner",
        "lease_token",
        "lease_until",
        "cancel_requested",
    ] {
        assert!(job.get(field).is_none(), "{field} left on {job}");
    }
    // The worker killed the program and did not run the job again.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(db.count(doc! {"status": "cancelled", "attempts": 1}), 1);
    let runs = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "the job ran again");
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker must keep running: {}",
        worker.log_text()
    );
    assert!(
        worker.log_text().contains("was cancelled while running"),
        "{}",
        worker.log_text()
    );
    worker.signal("TERM");
    assert!(worker.wait(Duration::from_secs(30)).success());
}

#[test]
fn retry_failed_by_id_all_or_age_gives_fresh_attempts() {
    let db = TestDb::new("retry_failed");
    let failed = |id: &str, failed_at: DateTime| {
        doc! {"_id": id, "data": 1, "status": "failed", "attempts": 5, "failed_at": failed_at,
        "last_error": "boom", "errors": [{"attempt": 5, "error": "boom"}]}
    };
    db.coll()
        .insert_many([
            failed("old", ago(7200)),
            failed("recent", ago(60)),
            failed("other", ago(60)),
            doc! {"_id": "done", "data": 1, "status": "completed"},
        ])
        .run()
        .unwrap();

    let out = db.run(&["retry-failed", "--older-than", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 failed jobs are pending again"),
        "{}",
        stdout(&out)
    );
    let old = db
        .coll()
        .find_one(doc! {"_id": "old"})
        .run()
        .unwrap()
        .unwrap();
    assert_eq!(old.get_str("status").unwrap(), "pending");
    assert_eq!(int(&old, "attempts"), 0);
    assert!(old.get("failed_at").is_none());
    assert_eq!(old.get_array("errors").unwrap().len(), 1, "history kept");

    let out = db.run(&["retry-failed", "--id", "recent"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.count(doc! {"_id": "recent", "status": "pending"}), 1);

    let out = db.run(&["retry-failed", "--id", "done"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not failed"), "{}", stderr(&out));

    let out = db.run(&["retry-failed", "--all"]);
    assert!(out.status.success());
    assert_eq!(db.count(doc! {"status": "failed"}), 0);

    let out = db.run(&["retry-failed"]);
    assert_eq!(out.status.code(), Some(2), "a selection is required");

    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    assert!(worker.wait(Duration::from_secs(30)).success());
    assert_eq!(db.count(doc! {"status": "completed", "attempts": 1}), 3);
}

#[test]
fn purge_deletes_only_old_finished_jobs_of_one_status() {
    let db = TestDb::new("purge");
    db.coll()
        .insert_many([
            doc! {"data": 1, "status": "completed", "completed_at": ago(10 * 86_400)},
            doc! {"data": 2, "status": "completed", "completed_at": ago(10 * 86_400)},
            doc! {"data": 3, "status": "completed", "completed_at": ago(60)},
            doc! {"data": 4, "status": "failed", "failed_at": ago(10 * 86_400)},
            doc! {"data": 5, "status": "pending"},
        ])
        .run()
        .unwrap();
    let out = db.run(&[
        "purge",
        "--status",
        "completed",
        "--older-than",
        "7d",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("would delete 2"), "{}", stdout(&out));
    assert_eq!(db.count(doc! {}), 5);
    let out = db.run(&["purge", "--status", "completed", "--older-than", "7d"]);
    assert!(stdout(&out).contains("deleted 2"), "{}", stdout(&out));
    assert_eq!(db.count(doc! {"status": "completed"}), 1);
    assert_eq!(db.count(doc! {"status": "failed"}), 1);
    let out = db.run(&["purge", "--status", "pending", "--older-than", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("never purged"), "{}", stderr(&out));
    assert_eq!(db.count(doc! {"status": "pending"}), 1);
}

#[test]
fn named_queues_each_worker_pool_takes_only_its_own_jobs() {
    let db = TestDb::new("queues");
    for _ in 0..5 {
        enqueue(&db, &["--queue", "emails", "{}"]);
        enqueue(&db, &["--queue", "images", "{}"]);
        enqueue(&db, &["{}"]);
    }
    // A mongosh-style document naming a queue, and one whose queue is not a string.
    db.coll()
        .insert_many([
            doc! {"data": 1, "status": "pending", "queue": "emails"},
            doc! {"data": 2, "status": "pending", "queue": 5},
        ])
        .run()
        .unwrap();
    // `cat` hands the job's JSON back as its result.
    let mut emails = db.spawn_worker(&["--drain", "--queue", "emails", "--exec", "cat"]);
    assert!(
        emails.wait(Duration::from_secs(30)).success(),
        "{}",
        emails.log_text()
    );
    assert_eq!(db.count(doc! {"queue": "emails", "status": "completed"}), 6);
    assert_eq!(
        db.count(doc! {"queue": "emails", "result.queue": "emails"}),
        6,
        "the job JSON names its queue: {:?}",
        db.all(doc! {"queue": "emails"})
    );
    assert_eq!(db.count(doc! {"queue": "images", "status": "pending"}), 5);
    assert_eq!(db.count(doc! {"queue": null, "status": "pending"}), 5);
    // Without --queue a worker takes the default queue only.
    let mut default = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    assert!(default.wait(Duration::from_secs(30)).success());
    assert_eq!(db.count(doc! {"queue": null, "status": "completed"}), 5);
    assert_eq!(db.count(doc! {"queue": "images", "status": "pending"}), 5);
    // Several queues in one pool.
    let mut both = db.spawn_worker(&[
        "--drain",
        "--queue",
        "images",
        "--queue",
        "default",
        "--simulate",
        "0ms..0ms",
    ]);
    assert!(both.wait(Duration::from_secs(30)).success());
    assert_eq!(db.count(doc! {"queue": "images", "status": "completed"}), 5);
    // The unroutable document was failed with the reason, not left forever.
    let bad = db
        .coll()
        .find_one(doc! {"queue": 5})
        .run()
        .unwrap()
        .unwrap();
    assert_eq!(bad.get_str("status").unwrap(), "failed", "{bad}");
    assert!(bad
        .get_str("last_error")
        .unwrap()
        .contains("`queue` must be a string"));

    let out = db.run(&["work", "--queue", "", "--drain"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a valid queue name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unique_key_allows_one_pending_or_running_job_per_key() {
    let db = TestDb::new("unique");
    let out = db.run(&["init"]);
    assert!(
        stdout(&out).contains("mongoq_unique_key"),
        "{}",
        stdout(&out)
    );
    let first = enqueue(&db, &["--unique-key", "invoice-42", r#"{"n": 1}"#]);
    let out = db.run(&["enqueue", "--unique-key", "invoice-42", r#"{"n": 2}"#]);
    assert!(out.status.success(), "a duplicate is skipped, not an error");
    assert!(
        stderr(&out).contains(&format!(
            "already has unique_key `invoice-42` (job {first})"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(db.count(doc! {"unique_key": "invoice-42"}), 1);

    // The index decides, so racing producers cannot both win.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let mut command = db.mongoq();
            command
                .args([
                    "enqueue",
                    "--unique-key",
                    "race",
                    &format!("{{\"i\": {i}}}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command.spawn().unwrap()
        })
        .collect();
    for mut racer in racers {
        assert!(racer.wait().unwrap().success());
    }
    assert_eq!(db.count(doc! {"unique_key": "race"}), 1);

    // mongosh producers get MongoDB's duplicate key error.
    let out = Command::new(mongosh())
        .args([
            "--quiet",
            &format!("{}/{}", db.uri, db.db),
            "--eval",
            "db.queue.insertOne({data: 3, status: 'pending', unique_key: 'invoice-42'})",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E11000") || stdout(&out).contains("E11000")
    );

    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    assert!(worker.wait(Duration::from_secs(30)).success());
    assert_eq!(
        db.count(doc! {"unique_key": "invoice-42", "status": "completed"}),
        1
    );
    if !server_maintains_partial_indexes_on_update(&db) {
        crate::helpers::not_checked(
            "operations::unique_key_allows_one_pending_or_running_job_per_key (a finished job frees its unique_key)",
            "this server keeps a document in a partial index after an update takes it out of the filter (MongoDB removes it); see RELIABILITY.md",
        );
        return;
    }
    // Once the job is done, the key is free again.
    let again = enqueue(&db, &["--unique-key", "invoice-42", r#"{"n": 4}"#]);
    assert_ne!(again, first);
    assert_eq!(db.count(doc! {"unique_key": "invoice-42"}), 2);

    // A failed job whose key was taken meanwhile stays failed on retry.
    db.coll()
        .update_one(
            doc! {"_id": oid(&first)},
            doc! {"$set": {"status": "failed"}},
        )
        .run()
        .unwrap();
    let out = db.run(&["retry-failed", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 left failed"), "{}", stdout(&out));
    assert_eq!(db.count(doc! {"_id": oid(&first), "status": "failed"}), 1);
}

/// Whether an update that takes a document out of a partial unique index's
/// filter also takes it out of the index, as MongoDB documents.
fn server_maintains_partial_indexes_on_update(db: &TestDb) -> bool {
    let probe = db
        .database()
        .collection::<mongodb::bson::Document>("partial_probe");
    let model = mongodb::IndexModel::builder()
        .keys(doc! {"k": 1})
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .partial_filter_expression(doc! {"k": {"$exists": true}, "s": "p"})
                .build(),
        )
        .build();
    probe.create_index(model).run().unwrap();
    probe.insert_one(doc! {"k": 1, "s": "p"}).run().unwrap();
    probe
        .update_one(doc! {"k": 1}, doc! {"$set": {"s": "done"}})
        .run()
        .unwrap();
    probe.insert_one(doc! {"k": 1, "s": "p"}).run().is_ok()
}

#[test]
fn retention_deletes_finished_jobs_by_ttl_and_never_pending_ones() {
    let db = TestDb::new("retention");
    let out = db.run(&["init", "--retain-completed", "1s", "--retain-failed", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("completed jobs are deleted 1.0s after completed_at"),
        "{}",
        stdout(&out)
    );
    let queue = db.queue();
    let retention = queue.retention().unwrap();
    assert_eq!(retention[0].keep, Some(Duration::from_secs(1)));
    assert_eq!(
        retention[2].keep, None,
        "cancelled jobs are kept unless asked"
    );
    // Changing it updates the index in place.
    let out = db.run(&["init", "--retain-failed", "2s"]);
    assert!(
        stdout(&out).contains("failed jobs are deleted 2.0s after failed_at"),
        "{}",
        stdout(&out)
    );

    enqueue(&db, &["{}"]);
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    assert!(worker.wait(Duration::from_secs(30)).success());
    db.coll()
        .insert_many([
            doc! {"data": "old failure", "status": "failed", "failed_at": ago(3600)},
            // Retried after failing: pending, with a stale failed_at it must survive.
            doc! {"data": "retried", "status": "pending", "failed_at": ago(3600), "completed_at": ago(3600)},
        ])
        .run()
        .unwrap();
    assert_eq!(db.count(doc! {}), 3);
    // MongoDB's TTL monitor runs about once a minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    while db.count(doc! {"status": {"$in": ["completed", "failed"]}}) > 0 {
        assert!(
            Instant::now() < deadline,
            "finished jobs were not deleted: {:?}",
            db.by_status()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(db.count(doc! {"status": "pending"}), 1);

    let out = db.run(&["init", "--retain-completed", "forever"]);
    assert!(
        stdout(&out).contains("completed jobs are kept forever"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("mongoq_retain_completed"));
    let out = db.run(&["init", "--retain-completed", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// The value of a metric line `name value` (exact name, labels included),
/// for metrics that count.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn metrics_and_health_are_served_over_http_and_report_outages() {
    let mut server = OwnServer::start("metrics", &[]);
    let db = TestDb::on(
        &format!("{}/?directConnection=true", server.uri()),
        "metrics",
    );
    let out = db.run_with_stdin(&["enqueue", "-q"], &"{}\n".repeat(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = db.spawn_worker(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--lease",
        "2s",
        "--threads",
        "2",
        "--simulate",
        "1ms..3ms",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 30, Duration::from_secs(30));
    // The queue depth is sampled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = get(&format!("{base}/metrics"));
        assert_eq!(status, 200);
        if text.contains("mongoq_queue_jobs{status=\"completed\"} 30") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "depth never showed 30 completed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(metric(&text, "mongoq_jobs_claimed_total"), 30);
    assert_eq!(metric(&text, "mongoq_jobs_completed_total"), 30);
    assert_eq!(metric(&text, "mongoq_jobs_failed_total"), 0);
    assert_eq!(metric(&text, "mongoq_handler_duration_seconds_count"), 30);
    assert_eq!(
        metric(
            &text,
            "mongoq_handler_duration_seconds_bucket{le=\"0.001\"}"
        ),
        0
    );
    assert_eq!(
        metric(&text, "mongoq_handler_duration_seconds_bucket{le=\"+Inf\"}"),
        30
    );
    assert!(metric(&text, "mongoq_claim_duration_seconds_count") >= 1);
    assert!(metric(&text, "mongoq_claim_round_trips_total") >= 1);
    assert!(metric(&text, "mongoq_queue_jobs{status=\"pending\"}") == 0);
    assert_eq!(metric(&text, "mongoq_up"), 1);
    for name in [
        "mongoq_lease_extensions_total",
        "mongoq_lease_rescues_total",
        "mongoq_jobs_retried_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter")),
            "{name} missing"
        );
    }
    let (status, body) = get(&format!("{base}/healthz"));
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true);
    assert!(health["database_error"].is_null());
    assert_eq!(get(&format!("{base}/nope")).0, 404);
    let (status, body) = get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(!body.contains("<html"), "no dashboard unless asked: {body}");

    // An outage: unhealthy (503) with the reason, but alive; healthy again after.
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = get(&format!("{base}/healthz"));
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "healthz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(health["database_error"]["error"].is_string(), "{body}");
    assert_eq!(
        get(&format!("{base}/livez")).0,
        200,
        "an outage is not death"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{base}/healthz")).0 != 200 {
        assert!(Instant::now() < deadline, "never healthy again");
        std::thread::sleep(Duration::from_millis(200));
    }
    worker.signal("TERM");
    assert!(worker.wait(Duration::from_secs(30)).success());

    // A taken port is a clear start-up error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = db.run(&["work", "--metrics-addr", &addr, "--drain"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

/// The `ExecStart=` line of the shipped unit, with the binary, the test's
/// flags and a handler swapped in for the install paths.
fn unit_exec_start(handler: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/mongoq.service"
    ))
    .unwrap();
    assert!(
        unit.contains("\nType=notify\n"),
        "the unit must use Type=notify"
    );
    assert!(
        unit.contains("\nWatchdogSec="),
        "the unit must set WatchdogSec"
    );
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace()
        .map(|word| match word {
            "/usr/local/bin/mongoq" => env!("CARGO_BIN_EXE_mongoq").to_string(),
            "/usr/local/lib/mongoq/handle-job" => handler.to_string(),
            "$MONGOQ_ARGS" => "--poll-interval=100ms".to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn under_systemd_the_worker_notifies_ready_watchdog_status_and_stopping() {
    let db = TestDb::new("systemd");
    enqueue(&db, &["{}"]);
    let socket_path = tempfile(&format!("{}-notify.sock", db.db));
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let exec = unit_exec_start("true");
    let log = tempfile(&format!("{}-systemd.log", db.db));
    let mut child = Command::new(&exec[0])
        .args(["--db", &db.db])
        .args(&exec[1..])
        .env("MONGODB_URI", &db.uri)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    let mut buffer = [0u8; 4096];
    let receive = |messages: &mut Vec<String>, buffer: &mut [u8]| {
        let n = socket.recv(buffer).unwrap_or_else(|e| {
            panic!(
                "no notify message ({e}); got {messages:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    };
    receive(&mut messages, &mut buffer);
    assert!(messages[0].starts_with("READY=1\n"), "{messages:?}");
    // WATCHDOG_USEC of 1 s: a ping every half second.
    let started = Instant::now();
    while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        receive(&mut messages, &mut buffer);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("STATUS=")),
        "{messages:?}"
    );
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(20));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    while !messages.iter().any(|m| m == "STOPPING=1") {
        receive(&mut messages, &mut buffer);
    }
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&socket_path);
}

#[test]
fn stats_watch_refreshes_until_interrupted() {
    let db = TestDb::new("watch");
    enqueue(&db, &["{}"]);
    let child = db
        .mongoq()
        .args(["stats", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    db.run(&["enqueue", "{}"]);
    // Several refreshes' worth: a frame is four queries (counts, controls,
    // eligible, oldest), which a loaded secantusd-py answers in hundreds
    // of milliseconds.
    std::thread::sleep(Duration::from_millis(2_500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let frames = text.matches(&format!("queue {}.queue", db.db)).count();
    assert!(frames >= 4, "{frames} refreshes:\n{text}");
    let pending = |n: u32| format!("{:<10} {n:>10}", "pending");
    assert!(text.contains(&pending(1)), "{text}");
    assert!(text.contains(&pending(2)), "the new job shows up:\n{text}");
    assert!(text.contains("/s"), "rates after the first frame:\n{text}");
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let commands = [
        "init",
        "enqueue",
        "work",
        "stats",
        "show",
        "cancel",
        "retry-failed",
        "purge",
        "bench",
        "completions",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_mongoq"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        for command in commands {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
        assert!(
            script.contains("metrics-addr"),
            "{shell} completion lacks work's flags"
        );
    }
    let bash = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let path = tempfile("mongoq.bash");
    std::fs::write(&path, &bash.stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));

    let out = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = stdout(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH mongoq 1"),
        "{page}"
    );
    for command in commands {
        let heading = format!(".SH \"MONGOQ {}\"", command.to_uppercase());
        assert!(page.contains(&heading), "man page lacks {heading}");
    }
    for flag in [
        "metrics\\-addr",
        "retain\\-completed",
        "unique\\-key",
        "older\\-than",
    ] {
        assert!(page.contains(flag), "man page lacks --{flag}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_worker_can_serve_the_dashboard_read_only_beside_its_metrics() {
    let db = TestDb::new("metrics_dashboard");
    enqueue(&db, &["{}"]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = db.spawn_worker(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--metrics-dashboard",
        "--simulate",
        "0ms..0ms",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", worker.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, page) = get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<b>1</b><span>completed</span>"), "{page}");
    let (_, page) = get(&format!("{base}/jobs?status=completed"));
    assert!(
        !page.contains("method=post"),
        "read-only: no actions: {page}"
    );
    let job = page
        .split("<a href=\"/job?id=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, page) = get(&format!("{base}/job?id={job}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("status <b>completed</b>") && !page.contains("method=post"),
        "{page}"
    );
    assert!(get(&format!("{base}/metrics"))
        .1
        .contains("mongoq_jobs_completed_total 1"));
    worker.signal("TERM");
    assert!(worker.wait(Duration::from_secs(30)).success());
}

#[test]
fn show_and_cancel_take_any_id_a_producer_used_as_extended_json() {
    let db = TestDb::new("json_ids");
    db.coll()
        .insert_many([
            doc! {"_id": {"k": 1}, "data": 1, "status": "pending"},
            doc! {"_id": 1.5, "data": 2, "status": "pending"},
            doc! {"_id": "plain text", "data": 3, "status": "pending"},
        ])
        .run()
        .unwrap();
    let shown = db.run(&["show", r#"{"k": 1}"#]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(stdout(&shown).contains("\"data\": 1"), "{}", stdout(&shown));
    let shown = db.run(&["show", "plain text"]);
    assert!(stdout(&shown).contains("\"data\": 3"), "{}", stdout(&shown));
    // An operator typed as an id is an exact value (which no job can
    // have), not a query matching every job.
    let shown = db.run(&["show", r#"{"$gt": 0}"#]);
    assert_eq!(shown.status.code(), Some(1), "{}", stdout(&shown));
    assert!(
        stderr(&shown).contains("no job has _id"),
        "{}",
        stderr(&shown)
    );

    let cancelled = db.run(&["cancel", "1.5"]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert_eq!(db.count(doc! {"_id": 1.5, "status": "cancelled"}), 1);
    let cancelled = db.run(&["cancel", r#"{"k": 1}"#]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert_eq!(db.count(doc! {"_id": {"k": 1}, "status": "cancelled"}), 1);
    assert_eq!(
        db.count(doc! {"status": "pending"}),
        1,
        "nothing else was touched"
    );
    let missing = db.run(&["show", "null"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
}

/// `mongoq bench --only server,scale` runs the bare loop, mongoq, 1 to 8
/// worker processes, and the floor (8 clients sharing nothing) on small
/// backlogs, validates every drain (each job completed once), and writes
/// both charts.
#[test]
fn bench_measures_server_work_and_scale_out() {
    let db = TestDb::new("bench_smoke");
    let chart = tempfile(&format!("{}-chart.svg", db.db));
    let out = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .args(["--uri", &db.uri, "bench", "--bench-db", &db.db])
        .args([
            "--only",
            "server,scale",
            "--jobs",
            "400",
            "--small-backlog",
            "200",
            "--rounds",
            "1",
        ])
        .arg("--chart")
        .arg(&chart)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("8. server work per job"), "{text}");
    assert!(text.contains("bare batched loop"), "{text}");
    assert!(text.contains("mongoq (default flags)"), "{text}");
    assert!(text.contains("9. scale-out"), "{text}");
    let processes: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("9. scale-out"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(processes, ["1", "2", "4", "8"], "{text}");
    assert!(text.contains("the floor: what 8 clients at once"), "{text}");
    for row in [
        "bare writes, 1 connection",
        "bare writes, one share per connection",
        "mongoq processes, each on its own collection",
    ] {
        assert!(text.contains(row), "{row}: {text}");
    }
    let fleet = std::fs::read_to_string(chart.with_extension("fleet.svg")).unwrap();
    assert!(fleet.contains("by worker processes"), "{fleet}");
}
