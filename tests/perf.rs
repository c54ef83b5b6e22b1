//! `mongoq bench` measures what it says on a real server (a short run).
//! Its module sorts after `concurrency`, so that on the slower test server
//! its eight worker processes do not run beside the concurrency tests.

use std::process::Command;

use crate::helpers::{stderr, stdout, tempfile, TestDb};

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
