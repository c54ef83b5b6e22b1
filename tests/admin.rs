//! What operators do to jobs: show, cancel (pending, running, by any id
//! a producer used), retry failed jobs, purge and retention.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime};

use crate::helpers::{ago, int, oid, stderr, stdout, tempfile, TestDb};

#[test]
fn show_prints_the_whole_job_and_unknown_ids_are_an_error() {
    let db = TestDb::new("show");
    let id = db.enqueue(&["--priority", "4", r#"{"to": "<ada>"}"#]);
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
    let cancelled = db.enqueue(&["{}"]);
    let kept = db.enqueue(&["{}"]);
    let out = db.run(&["cancel", &cancelled]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("will not run"));
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(30));
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
    let id = db.enqueue(&["{}"]);
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
    worker.expect_success(Duration::from_secs(30));
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
    worker.expect_success(Duration::from_secs(30));
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

    db.enqueue(&["{}"]);
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(30));
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
