//! Documents from other producers with the wrong shape end `failed` with a
//! reason, and good jobs keep flowing past them.

use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::TestDb;

#[test]
fn malformed_documents_fail_with_a_reason_while_good_jobs_flow() {
    let db = TestDb::new("malformed");
    let bad = vec![
        (doc! {"status": "pending", "priority": 1}, "no `data` field"),
        (
            doc! {"data": 1, "status": "pending", "priority": "high"},
            "`priority` must be an integer, but it is a string (\"high\")",
        ),
        (
            doc! {"data": 1, "status": "pending", "run_at": "tomorrow"},
            "`run_at` must be a date",
        ),
        (
            doc! {"data": 1, "status": "pending", "max_attempts": -1},
            "`max_attempts` must be at least 1, but it is -1",
        ),
        (
            doc! {"data": 1, "status": "pending", "max_attempts": "many"},
            "`max_attempts` must be an integer",
        ),
        (
            doc! {"data": 1, "status": "pending", "attempts": "none"},
            "`attempts` is owned by the worker and must be a number",
        ),
    ];
    for (document, _) in &bad {
        db.coll().insert_one(document.clone()).run().unwrap();
    }
    db.coll()
        .insert_one(doc! {"data": "paused", "status": "paused"})
        .run()
        .unwrap();
    db.coll()
        .insert_one(doc! {"data": "no status"})
        .run()
        .unwrap();
    // The same payload enqueued twice is two jobs; both run.
    db.run(&["enqueue", r#"{"same": true}"#]);
    db.run(&["enqueue", r#"{"same": true}"#]);
    db.enqueue_many(50, &[]);
    let mut worker = db.spawn_worker(&["--drain", "--threads", "2", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"status": "completed"}), 52);
    assert_eq!(db.count(doc! {"data.same": true, "status": "completed"}), 2);
    assert_eq!(db.count(doc! {"status": "failed"}), bad.len() as u64);
    for (document, reason) in &bad {
        let mut filter = document.clone();
        filter.insert("status", "failed");
        let failed = db
            .coll()
            .find_one(filter)
            .run()
            .unwrap()
            .unwrap_or_else(|| panic!("{document} not failed"));
        let error = failed.get_str("last_error").unwrap();
        assert!(error.contains(reason), "{document}: {error}");
        assert!(failed.get_datetime("failed_at").is_ok());
    }
    assert_eq!(
        db.count(doc! {"status": "paused"}),
        1,
        "other statuses are left alone"
    );
    assert_eq!(
        db.count(doc! {"data": "no status", "status": {"$exists": false}}),
        1,
        "a document without status is not a job and is left alone"
    );
}

#[test]
fn a_job_too_close_to_16_mb_fails_and_the_rest_keep_flowing() {
    let db = TestDb::new("oversized");
    db.run(&["init"]);
    // Fits under the limit as inserted, nested 40 levels deep; the claim's
    // own fields would not fit.
    let mut data = mongodb::bson::Bson::String("x".repeat(16 * 1024 * 1024 - 110 - 40 * 8));
    for _ in 0..40 {
        data = mongodb::bson::Bson::Document(doc! {"n": data});
    }
    db.coll()
        .insert_one(doc! {"data": data, "status": "pending", "priority": 5})
        .run()
        .unwrap();
    db.enqueue_many(20, &[]);
    let mut worker = db.spawn_worker(&["--drain", "--threads", "2", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(120));
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        20,
        "{:?}",
        db.by_status()
    );
    assert_eq!(
        db.count(doc! {"status": "failed", "priority": 5}),
        1,
        "{:?}",
        db.by_status()
    );
    assert!(worker.log_text().contains("16 MB"), "{}", worker.log_text());
}
