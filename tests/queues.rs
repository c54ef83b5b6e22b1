//! Named queues (each worker pool takes only its own) and unique keys (at
//! most one pending or running job per key).

use std::process::{Command, Stdio};
use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{mongosh, oid, stderr, stdout, TestDb};

#[test]
fn named_queues_each_worker_pool_takes_only_its_own_jobs() {
    let db = TestDb::new("queues");
    for _ in 0..5 {
        db.enqueue(&["--queue", "emails", "{}"]);
        db.enqueue(&["--queue", "images", "{}"]);
        db.enqueue(&["{}"]);
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
    emails.expect_success(Duration::from_secs(30));
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
    default.expect_success(Duration::from_secs(30));
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
    both.expect_success(Duration::from_secs(30));
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
    let first = db.enqueue(&["--unique-key", "invoice-42", r#"{"n": 1}"#]);
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
    worker.expect_success(Duration::from_secs(30));
    assert_eq!(
        db.count(doc! {"unique_key": "invoice-42", "status": "completed"}),
        1
    );
    if !server_maintains_partial_indexes_on_update(&db) {
        crate::helpers::not_checked(
            "queues::unique_key_allows_one_pending_or_running_job_per_key (a finished job frees its unique_key)",
            "this server keeps a document in a partial index after an update takes it out of the filter (MongoDB removes it); see RELIABILITY.md",
        );
        return;
    }
    // Once the job is done, the key is free again.
    let again = db.enqueue(&["--unique-key", "invoice-42", r#"{"n": 4}"#]);
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
