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
    assert!(
        worker.wait(Duration::from_secs(60)).success(),
        "{}",
        worker.log_text()
    );
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
    assert!(worker.wait(Duration::from_secs(60)).success());
    assert_eq!(db.count(doc! {"status": "completed"}), 2);
}
