//! Big backlogs (issue 36): what a worker asks the server while it drains
//! one, counted from its own command log (`RUST_LOG=mongoq::commands=debug`
//! logs every command's shape, see `mongoq::queue::commands`).

use mongodb::bson::{doc, Document};

use crate::helpers::TestDb;

/// The backlog the issue names.
const BACKLOG: usize = 100_000;

/// What one command of a worker's command log was.
#[derive(Debug, PartialEq)]
enum Sent {
    /// A claim's `updateMany` of a batch by `_id`.
    Claim,
    /// A `find` of eligible jobs (the claim's condition on `run_at`) not
    /// pinned to `_id`s or one job (`limit` 1): a read whose cost can grow
    /// with the backlog.
    BacklogRead,
    /// An `aggregate` or `count` of the queue's jobs: a scan.
    Scan,
    Other,
}

fn classify(shape: &str) -> Sent {
    let on_queue = |verb: &str| shape.starts_with(&format!("{verb} queue "));
    if on_queue("update")
        && shape.contains("q:{_id:{$in:")
        && shape.contains("u:{$set:{status:?, lease_owner:?, lease_token:?")
    {
        return Sent::Claim;
    }
    if on_queue("aggregate") || on_queue("count") {
        return Sent::Scan;
    }
    if on_queue("find") && shape.contains("run_at:{$not:{$gt:?}}") {
        let pinned = shape.contains("filter={_id:")
            || shape.contains("lease_token:")
            || shape.contains(" limit=1 ")
            || shape.ends_with(" limit=1");
        if !pinned {
            return Sent::BacklogRead;
        }
    }
    Sent::Other
}

/// The shapes of the commands a worker logged, in order.
fn commands_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("mongoq::commands]"))
        .filter_map(|line| line.split_once(" ms ").map(|(_, shape)| shape.to_string()))
        .collect()
}

#[test]
fn a_worker_reads_the_backlog_once_per_many_claims_and_never_counts_it() {
    let db = TestDb::new("backlog_reads");
    let out = db.run(&["init"]);
    assert!(out.status.success(), "{out:?}");
    // A shell script's backfill: plain `{data, status}` documents.
    for start in (0..BACKLOG).step_by(10_000) {
        let documents: Vec<Document> = (start..start + 10_000)
            .map(|i| doc! {"data": i as i64, "status": "pending"})
            .collect();
        db.coll().insert_many(documents).run().unwrap();
    }
    let worker = db.drain_with_env(
        &["--simulate", "0ms..0ms", "--batch-size", "500"],
        &[("RUST_LOG", "warn,mongoq::commands=debug")],
    );
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        BACKLOG as u64,
        "every job ran"
    );
    let commands = commands_in(&worker.log_text());
    assert!(
        commands.len() > 100,
        "the worker logged its commands: {} lines",
        commands.len()
    );
    let count = |kind: Sent| commands.iter().filter(|c| classify(c) == kind).count();
    let claims = count(Sent::Claim);
    let reads = count(Sent::BacklogRead);
    let scans: Vec<&String> = commands
        .iter()
        .filter(|c| classify(c) == Sent::Scan)
        .collect();
    // 100,000 jobs in batches of at most 500.
    assert!(claims >= BACKLOG / 500, "{claims} claims");
    // One read fills a window of many batches: never a second read per
    // claim (the first bounded read and the last, empty one aside).
    assert!(
        reads <= claims / 2 + 2,
        "{reads} backlog-sized reads for {claims} claims:\n{}",
        commands
            .iter()
            .filter(|c| classify(c) == Sent::BacklogRead)
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(scans.is_empty(), "a worker counted the queue: {scans:?}");
    eprintln!("{BACKLOG} jobs: {claims} claims, {reads} backlog-sized reads");
}

#[test]
fn the_command_log_tells_claims_reads_and_scans_apart() {
    assert_eq!(
        classify("update queue updates=[1] {q:{_id:{$in:[500]}, status:?, run_at:{$not:{$gt:?}}}, u:{$set:{status:?, lease_owner:?, lease_token:?}}}"),
        Sent::Claim
    );
    assert_eq!(
        classify("find queue filter={status:?, run_at:{$not:{$gt:?}}, queue:{$in:[2]}} sort={priority:?, run_at:?, _id:?} limit=40000 projection={_id:?}"),
        Sent::BacklogRead
    );
    assert_eq!(
        classify("find queue filter={status:?, priority:{$gt:?}} limit=1 projection={_id:?}"),
        Sent::Other
    );
    assert_eq!(
        classify("find queue filter={lease_token:?, status:?} sort={priority:?}"),
        Sent::Other
    );
    assert_eq!(
        classify("aggregate queue pipeline=[{$group:{_id:?}}]"),
        Sent::Scan
    );
}
