//! Many workers, one collection: every job runs, exactly once when nothing
//! fails, counted through a side channel rather than assumed.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{tempfile, TestDb};

/// Workers that share a queue divide it (by `_id`, among the peers in the
/// registry) rather than race for its head: few claimed candidates are
/// lost to another worker, and each worker's `--report` says so.
#[test]
fn workers_sharing_a_queue_divide_it_and_lose_few_claims() {
    let db = TestDb::new("divide");
    db.enqueue_many(3_000, &[]);
    let reports: Vec<_> = (0..3)
        .map(|i| tempfile(&format!("{}-report-{i}.json", db.db)))
        .collect();
    let mut workers: Vec<_> = reports
        .iter()
        .map(|report| {
            db.spawn_worker(&[
                "--drain",
                "--threads",
                "4",
                "--batch-size",
                "100",
                "--simulate",
                "2ms..2ms",
                "--report",
                report.to_str().unwrap(),
            ])
        })
        .collect();
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(120));
    }
    assert_eq!(db.count(doc! {"status": "completed"}), 3_000);
    assert_eq!(
        db.count(doc! {"attempts": {"$ne": 1}}),
        0,
        "a job ran twice"
    );
    let (mut candidates, mut claimed, mut completed) = (0, 0, 0);
    for report in &reports {
        let text = std::fs::read_to_string(report).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let read = |key: &str| {
            json[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in {text}"))
        };
        assert!(read("round_trips") > 0, "{text}");
        candidates += read("claim_candidates");
        claimed += read("claimed");
        completed += read("completed");
    }
    assert_eq!(completed, 3_000);
    assert_eq!(claimed, 3_000);
    let lost = candidates - claimed;
    // Racing for the head of the queue loses about half; dividing it
    // loses what the peers claim before they know of each other, and at
    // the end of the drain.
    assert!(
        lost * 4 <= candidates,
        "{lost} of {candidates} claimed candidates were lost to other workers"
    );
}

#[test]
fn three_workers_of_four_threads_drain_5000_jobs_exactly_once() {
    let db = TestDb::new("three_workers");
    db.enqueue_many(5_000, &[]);
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    // Each run appends its job id as one short line (an atomic O_APPEND
    // write), so a job run twice shows up twice.
    let record = format!("printf '%s\\n' \"$MONGOQ_JOB_ID\" >> {}", ledger.display());
    let mut workers: Vec<_> = (0..3)
        .map(|i| {
            db.spawn_worker(&[
                "--drain",
                "--threads",
                "4",
                "--batch-size",
                "50",
                "--worker-id",
                &format!("w{i}"),
                "--exec",
                "sh",
                "-c",
                &record,
            ])
        })
        .collect();
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(300));
    }
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for id in text.lines() {
        *runs.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs ran more than once: {twice:?}");
    assert_eq!(runs.len(), 5_000, "every job ran");
    assert_eq!(
        db.count(doc! {"status": "completed", "attempts": 1}),
        5_000,
        "{:?}",
        db.by_status()
    );
    assert_eq!(db.count(doc! {"status": {"$ne": "completed"}}), 0);
    for job in db.all(doc! {}) {
        assert!(runs.contains_key(job.get_object_id("_id").unwrap().to_hex().as_str()));
    }
    let owners: Vec<String> = workers
        .iter()
        .map(crate::helpers::Worker::log_text)
        .collect();
    assert!(
        owners.iter().all(|log| log.contains("stopped:")),
        "every worker stopped cleanly"
    );
}

/// Peers read the queue once between them: the one whose turn it is reads
/// the keys of the next jobs and publishes them in `<collection>_windows`,
/// one document per part, and the others claim their parts from there. The
/// window's header names its queues and its parts, holds no ids itself,
/// and is left with no reader holding the turn.
#[test]
fn peers_share_one_read_ahead_window() {
    let db = TestDb::new("shared_window");
    db.enqueue_many(4_000, &[]);
    let mut workers: Vec<_> = (0..4)
        .map(|i| {
            db.spawn_worker(&[
                "--drain",
                "--threads",
                "2",
                "--batch-size",
                "200",
                "--worker-id",
                &format!("peer{i}"),
                "--simulate",
                "1ms..1ms",
            ])
        })
        .collect();
    // Alone it drains in 25-35 s on secantusd-py; beside the suite's bench
    // test it has taken over 120 s there.
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(300));
    }
    // Once on secantusd-py in CI, 838 of the 4,000 were not completed at
    // attempt 1: say which, to tell a job run twice from one left behind.
    let odd = db.all(doc! {"$or": [{"status": {"$ne": "completed"}}, {"attempts": {"$ne": 1}}]});
    assert_eq!(
        db.count(doc! {"status": "completed", "attempts": 1}),
        4_000,
        "{:?}; {} others, the first: {:?}; logs: {}",
        db.by_status(),
        odd.len(),
        odd.iter().take(3).collect::<Vec<_>>(),
        workers
            .iter()
            .map(crate::helpers::Worker::log_text)
            .map(|log| log.lines().rev().take(8).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let windows = db
        .database()
        .collection::<mongodb::bson::Document>(&format!("{}_windows", db.coll().name()));
    let window = windows
        .find_one(doc! {"_id": "default"})
        .run()
        .unwrap()
        .expect("the peers published a shared window");
    let epoch = window.get("epoch").and_then(mongodb::bson::Bson::as_i64);
    assert!(epoch.is_some_and(|e| e >= 1), "{window}");
    assert_eq!(
        window.get_array("queues").unwrap(),
        &vec![mongodb::bson::Bson::String("default".into())],
        "{window}"
    );
    assert!(!window.contains_key("reading_until"), "{window}");
    assert!(!window.contains_key("ids"), "the header is small: {window}");
    let parts = window.get("parts").and_then(mongodb::bson::Bson::as_i64);
    assert!(parts.is_some_and(|n| (1..=4).contains(&n)), "{window}");
    let written = windows
        .count_documents(doc! {"_id.window": "default", "token": window.get("token").unwrap()})
        .run()
        .unwrap();
    assert_eq!(
        Some(written as i64),
        parts,
        "one document per part: {window}"
    );
}
