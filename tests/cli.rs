//! The command line: init, enqueue, stats, every way to hold it wrong, and
//! the shell completions and man page that describe it.

use std::process::Command;

use mongodb::bson::{doc, Bson};

use crate::helpers::{int, stderr, stdout, tempfile, TestDb};

#[test]
fn init_creates_the_queue_indexes_and_is_idempotent() {
    let db = TestDb::new("init");
    for _ in 0..2 {
        let out = db.run(&["init"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        for index in [
            "mongoq_claim_by_queue",
            "mongoq_lease_token",
            "mongoq_lease_expiry",
        ] {
            assert!(text.contains(index), "{index} missing from: {text}");
        }
    }
}

#[test]
fn enqueue_one_job_with_options_prints_its_id() {
    let db = TestDb::new("enqueue_one");
    let out = db.run(&[
        "enqueue",
        r#"{"to": "ada@example.com"}"#,
        "--priority",
        "-3",
        "--delay",
        "1h",
        "--max-attempts",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_object_id("_id").unwrap().to_hex(), id);
    assert_eq!(
        job.get_document("data").unwrap(),
        &doc! {"to": "ada@example.com"}
    );
    assert_eq!(job.get_str("status").unwrap(), "pending");
    assert_eq!(int(&job, "priority"), -3);
    assert_eq!(int(&job, "max_attempts"), 2);
    let run_at = job.get_datetime("run_at").unwrap().timestamp_millis();
    let in_an_hour = mongodb::bson::DateTime::now().timestamp_millis() + 3_600_000;
    assert!(
        (run_at - in_an_hour).abs() < 60_000,
        "run_at {run_at} is not about an hour away"
    );
}

#[test]
fn enqueue_from_stdin_streams_lines_and_run_at_is_honoured() {
    let db = TestDb::new("enqueue_stdin");
    let out = db.run_with_stdin(
        &["enqueue", "--run-at", "2030-01-01T00:00:00Z"],
        "{\"a\": 1}\n\n[1, 2]\n\"text\"\n{\"when\": {\"$date\": \"2026-01-01T00:00:00Z\"}}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().count(),
        4,
        "one id per job, blank lines skipped"
    );
    let jobs = db.all(doc! {});
    assert_eq!(jobs.len(), 4);
    assert_eq!(
        jobs[1].get("data"),
        Some(&Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)]))
    );
    assert!(matches!(
        jobs[3].get_document("data").unwrap().get("when"),
        Some(Bson::DateTime(_))
    ));
    for job in &jobs {
        assert_eq!(
            job.get_datetime("run_at")
                .unwrap()
                .try_to_rfc3339_string()
                .unwrap(),
            "2030-01-01T00:00:00Z"
        );
    }
    let stats = db.run(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["counts"]["pending"], 4);
    assert_eq!(stats["scheduled"], 4);
    assert_eq!(stats["eligible"], 0);
}

#[test]
fn a_bad_stdin_line_is_reported_by_number_and_earlier_lines_are_kept() {
    let db = TestDb::new("enqueue_bad_line");
    let mut input: String = (0..1_500).map(|i| format!("{{\"n\": {i}}}\n")).collect();
    input.push_str("{\"n\": oops}\n{\"n\": \"after\"}\n");
    let out = db.run_with_stdin(&["enqueue", "--quiet"], &input);
    assert_eq!(
        out.status.code(),
        Some(65),
        "exit code says the input was bad"
    );
    let message = stderr(&out);
    assert!(message.contains("line 1501"), "{message}");
    assert!(
        message.contains("1500 jobs before it were enqueued"),
        "{message}"
    );
    assert_eq!(
        db.count(doc! {}),
        1_500,
        "lines before the bad one are not lost, none after is read"
    );
}

#[test]
fn stats_counts_every_status_and_the_oldest_eligible_job() {
    let db = TestDb::new("stats");
    db.coll()
        .insert_many(vec![
            doc! {"data": 1, "status": "pending"},
            doc! {"data": 2, "status": "paused"},
            doc! {"data": 3, "status": "failed"},
        ])
        .run()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let out = db.run(&["stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (status, n) in [
        ("pending", 1),
        ("running", 0),
        ("completed", 0),
        ("failed", 1),
        ("paused", 1),
    ] {
        assert_eq!(stats["counts"][status], n, "{status} in {stats}");
    }
    assert_eq!(stats["eligible"], 1);
    assert!(
        stats["oldest_eligible_age_seconds"].as_f64().unwrap() >= 1.0,
        "{stats}"
    );
    let table = stdout(&db.run(&["stats"]));
    assert!(
        table.contains("paused") && table.contains("oldest eligible job has waited"),
        "{table}"
    );
}

fn assert_clean_failure(out: &std::process::Output, expect: &str) {
    let message = stderr(out);
    assert!(!out.status.success(), "should fail: {message}");
    assert!(!message.contains("panicked"), "must not panic: {message}");
    assert!(
        message.contains(expect),
        "expected `{expect}` in: {message}"
    );
}

#[test]
fn bad_flags_are_clear_errors_not_panics() {
    let db = TestDb::new("bad_flags");
    assert_clean_failure(&db.run(&["work", "--threads", "0"]), "--threads");
    assert_clean_failure(&db.run(&["work", "--lease", "30"]), "no unit");
    assert_clean_failure(
        &db.run(&["work", "--poll-interval", "fast"]),
        "--poll-interval",
    );
    assert_clean_failure(
        &db.run(&["work", "--simulate", "5s..1s"]),
        "minimum is larger",
    );
    assert_clean_failure(
        &db.run(&["work", "--exec", "/no/such/program"]),
        "not found",
    );
    assert_clean_failure(&db.run(&["work", "--timeout", "1s"]), "--exec and --pipe");
    assert_clean_failure(
        &db.run(&["work", "--pipe", "/no/such/handler"]),
        "not found",
    );
    assert_clean_failure(
        &db.run(&["work", "--pipe-max-jobs", "0", "--pipe", "sh"]),
        "--pipe-max-jobs",
    );
    assert_clean_failure(&db.run(&["work", "--pipe-max-jobs", "5"]), "--pipe");
    assert_clean_failure(
        &db.run(&["enqueue", "--run-at", "tomorrow", "{}"]),
        "RFC 3339",
    );
    assert_clean_failure(&db.run(&["enqueue", "{not json"]), "not valid JSON");
    assert_clean_failure(
        &db.run(&["enqueue", "--max-attempts", "0", "{}"]),
        "--max-attempts",
    );
    assert_clean_failure(&db.run(&["frobnicate"]), "frobnicate");
    assert_eq!(
        db.count(doc! {}),
        0,
        "nothing was enqueued by a failed command"
    );
}

#[test]
fn bad_uris_are_clear_errors_and_never_show_the_password() {
    let db = TestDb::new("bad_uri");
    let cases = [
        ("not-a-uri", "invalid MongoDB URI"),
        (
            "mongodb://alice:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=300",
            "is the server running",
        ),
        (
            "mongodb://alice:hunter2@127.0.0.1:1/?tls=maybe",
            "invalid MongoDB URI",
        ),
    ];
    for (uri, expect) in cases {
        let out = db.mongoq().args(["--uri", uri, "stats"]).output().unwrap();
        assert_clean_failure(&out, expect);
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("hunter2"), "password leaked for {uri}: {all}");
    }
    let out = db
        .mongoq()
        .env("MONGODB_URI", "mongodb://bob:s3cr3t@127.0.0.1:1/")
        .args(["--help"])
        .output()
        .unwrap();
    assert!(
        !stdout(&out).contains("s3cr3t"),
        "--help must not show the URI from the environment"
    );
}

#[test]
fn a_worker_that_cannot_reach_its_server_logs_without_the_password_and_stops_cleanly() {
    let db = TestDb::new("work_redacted");
    let mut worker = db.spawn_worker(&[
        "--uri",
        "mongodb://alice:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=200",
        "--simulate",
        "0ms..0ms",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    worker.signal("TERM");
    assert!(
        worker.wait(std::time::Duration::from_secs(10)).success(),
        "an outage is not a crash"
    );
    let log = worker.log_text();
    assert!(
        log.contains("retrying in"),
        "the outage is logged and retried: {log}"
    );
    assert!(log.contains("alice:****@127.0.0.1:1"), "{log}");
    assert!(
        !log.contains("hunter2"),
        "password leaked into the log: {log}"
    );
}

#[test]
fn a_password_with_a_broken_percent_escape_is_one_clear_error_not_a_panic() {
    let db = TestDb::new("bad_escape");
    for uri in [
        "mongodb://u:p%aé@127.0.0.1:1/",
        "mongodb://u:hunter%2@127.0.0.1:1/",
    ] {
        let out = db.mongoq().args(["--uri", uri, "stats"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "a usage error: {}",
            stderr(&out)
        );
        let message = stderr(&out);
        assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
        assert!(message.contains("starts no %XX escape"), "{message}");
        assert!(message.contains("%25"), "says how to fix it: {message}");
        assert!(
            !message.contains("panicked") && !message.contains("hunter"),
            "{message}"
        );
    }
}

#[test]
fn the_same_rules_refuse_a_bad_worker_setting_on_the_command_line() {
    let db = TestDb::new("bad_settings");
    assert_clean_failure(&db.run(&["work", "--lease", "500ms"]), "--lease");
    assert_clean_failure(
        &db.run(&["work", "--poll-interval", "0s"]),
        "--poll-interval",
    );
    assert_clean_failure(
        &db.run(&["work", "--backoff-base", "2h", "--backoff-max", "1h"]),
        "--backoff-base",
    );
    assert_clean_failure(&db.run(&["work", "--queue", ""]), "not a valid queue name");
}

#[test]
fn database_errors_are_one_line_without_driver_dumps() {
    let db = TestDb::new("one_line_errors");
    for uri in [
        "mongodb://alice:hunter2@127.0.0.1:1/?serverSelectionTimeoutMS=300",
        "mongodb://alice:hunter2@127.0.0.1:1/?replicaSet=rs0&serverSelectionTimeoutMS=300",
    ] {
        let out = db.mongoq().args(["--uri", uri, "stats"]).output().unwrap();
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{message}");
        assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
        for dump in [
            "labels: {",
            "Topology: {",
            "source: None",
            "server response",
            "Kind:",
        ] {
            assert!(
                !message.contains(dump),
                "driver dump `{dump}` in: {message}"
            );
        }
        assert!(
            message.contains("no available servers (127.0.0.1:1: I/O error: Connection refused"),
            "says which server and why: {message}"
        );
        assert!(
            message.contains("is the server running"),
            "says what to do: {message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
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
