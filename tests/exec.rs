//! `--exec`: one program per job, job JSON on stdin, never in argv or a shell.

use std::time::Duration;

use mongodb::bson::{doc, Bson};

use crate::helpers::{int, tempfile, TestDb};

fn drain(db: &TestDb, args: &[&str]) {
    db.drain(args);
}

#[test]
fn success_stores_stdout_as_result_and_passes_id_and_attempt_in_env() {
    let db = TestDb::new("exec_ok");
    let id = String::from_utf8(db.run(&["enqueue", r#"{"k": "v"}"#]).stdout).unwrap();
    drain(
        &db,
        &[
            "--exec",
            "sh",
            "-c",
            "printf '{\"id\": \"%s\", \"attempt\": %s}' \"$MONGOQ_JOB_ID\" \"$MONGOQ_ATTEMPT\"",
        ],
    );
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
    let result = job.get_document("result").unwrap();
    assert_eq!(result.get_str("id").unwrap(), id.trim());
    assert_eq!(int(result, "attempt"), 1);
}

#[test]
fn plain_text_stdout_is_kept_as_a_string() {
    let db = TestDb::new("exec_text");
    db.run(&["enqueue", "{}"]);
    drain(&db, &["--exec", "echo", "all good"]);
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get("result"), Some(&Bson::String("all good".into())));
}

#[test]
fn failure_keeps_the_stderr_tail_and_exit_status() {
    let db = TestDb::new("exec_fail");
    db.run(&["enqueue", "{}"]);
    drain(
        &db,
        &[
            "--exec",
            "sh",
            "-c",
            "echo 'cannot reach smtp.example.com' >&2; exit 7",
        ],
    );
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "failed");
    let error = job.get_str("last_error").unwrap();
    assert!(
        error.contains("exited with status 7") && error.contains("cannot reach smtp.example.com"),
        "{error}"
    );
}

#[test]
fn a_program_past_its_timeout_is_killed_and_the_attempt_fails() {
    let db = TestDb::new("exec_timeout");
    db.run(&["enqueue", "{}"]);
    let started = std::time::Instant::now();
    drain(&db, &["--timeout", "500ms", "--exec", "sleep", "30"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "failed");
    assert!(
        job.get_str("last_error")
            .unwrap()
            .contains("timed out after 500ms"),
        "{job}"
    );
}

#[test]
fn shell_metacharacters_in_data_stay_data() {
    let db = TestDb::new("exec_meta");
    let marker = tempfile(&format!("{}-pwned", db.db));
    let _ = std::fs::remove_file(&marker);
    let hostile = format!(
        "$(touch {m}); `touch {m}`; touch {m} && echo \"'\" | rm -rf /nonexistent",
        m = marker.display()
    );
    let data = serde_json::json!({"cmd": hostile, "arg": "--exec"}).to_string();
    db.run(&["enqueue", &data]);
    // `cat` echoes stdin: the result is the job JSON exactly as sent.
    drain(&db, &["--exec", "cat"]);
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "completed", "{job}");
    let echoed = job
        .get_document("result")
        .unwrap()
        .get_document("data")
        .unwrap();
    assert_eq!(echoed.get_str("cmd").unwrap(), hostile);
    assert!(!marker.exists(), "job data was executed");
}

#[test]
fn huge_output_is_bounded() {
    let db = TestDb::new("exec_huge");
    db.run(&["enqueue", "{}"]);
    drain(&db, &["--exec", "sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x; head -c 3000000 /dev/zero | tr '\\0' y >&2; exit 1"]);
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    let error = job.get_str("last_error").unwrap();
    assert!(
        error.len() < 10_000,
        "stderr tail must be bounded, got {} bytes",
        error.len()
    );
    assert!(error.ends_with("yyyy"), "keeps the end of stderr");
}

#[test]
fn a_program_killed_by_a_signal_is_a_failed_attempt() {
    let db = TestDb::new("exec_signal");
    db.run(&["enqueue", "{}"]);
    drain(&db, &["--exec", "sh", "-c", "kill -9 $$"]);
    let job = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "failed");
    assert!(
        job.get_str("last_error")
            .unwrap()
            .contains("killed by signal 9"),
        "{job}"
    );
}
