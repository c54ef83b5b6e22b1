//! Jobs inserted by the real shell client, as a producer script would.

use std::process::Command;
use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{mongosh, TestDb};

#[test]
fn documents_inserted_by_mongosh_run() {
    let db = TestDb::new("mongosh");
    let script =
        "for (let i = 0; i < 20; i++) { db.queue.insertOne({data: {i: i}, status: 'pending'}) }";
    let out = Command::new(mongosh())
        .args([
            "--quiet",
            &format!("{}/{}", db.uri, db.db),
            "--eval",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mongosh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.count(doc! {"status": "pending"}), 20);
    let mut worker = db.spawn_worker(&["--drain", "--threads", "2", "--simulate", "0ms..5ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(
        db.count(doc! {"status": "completed", "attempts": 1}),
        20,
        "{:?}",
        db.by_status()
    );
}

#[test]
fn the_enqueue_script_inserts_jobs_with_mongosh() {
    let db = TestDb::new("enqueue_script");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/enqueue.sh");
    let out = Command::new(script)
        .env("MONGODB_URI", &db.uri)
        .env("MONGOQ_DB", &db.db)
        .env("MONGOSH", mongosh())
        .args(["--priority", "3", r#"{"to": "ada"}"#, r#"{"to": "bob"}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.count(doc! {"status": "pending", "priority": 3}), 2);
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"status": "completed"}), 2);
}

#[test]
fn the_enqueue_script_covers_bulk_delayed_queued_and_unique_jobs() {
    let db = TestDb::new("enqueue_script_ops");
    assert!(db.run(&["init"]).status.success());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/enqueue.sh");
    let run = |args: &[&str], input: Option<&str>| {
        use std::io::Write;
        let mut child = Command::new(script)
            .env("MONGODB_URI", &db.uri)
            .env("MONGOQ_DB", &db.db)
            .env("MONGOSH", mongosh())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    // Bulk from stdin, delayed an hour.
    let out = run(
        &["--delay", "3600"],
        Some("{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db.count(doc! {"run_at": {"$gt": mongodb::bson::DateTime::now()}}),
        3
    );
    // A named queue and a unique key; the second insert is skipped, exit 0.
    let args = [
        "--queue",
        "emails",
        "--unique-key",
        "welcome-7",
        r#"{"to": 7}"#,
    ];
    let first = run(&args, None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run(&args, None);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("skipped 1"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    assert_eq!(
        db.count(doc! {"unique_key": "welcome-7", "queue": "emails"}),
        1
    );
    let mut worker = db.spawn_worker(&["--drain", "--queue", "emails", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"queue": "emails", "status": "completed"}), 1);
    assert_eq!(db.count(doc! {"status": "pending"}), 3, "delayed jobs wait");
}
