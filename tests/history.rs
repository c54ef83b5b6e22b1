//! The queue's history (`<collection>_metrics`): written by every worker,
//! merged across the fleet, read by `stats --history` and the dashboard,
//! and still there after the jobs are purged.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongoq::history::tally::bucket_of;

use crate::helpers::{stderr, stdout, tempfile, TestDb};
use crate::pipe::{helper_dir, python, script};

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn bucket_ms(ms: f64) -> usize {
    bucket_of(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
}

/// `stats --history --json` of `args`, parsed.
fn history_json(db: &TestDb, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["stats", "--history", "--json"];
    all.extend(args);
    let out = db.run(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// 300 jobs on 3 workers (30 fail twice: one retry, then failed); the
/// jobs are purged; the history still counts every attempt exactly, and
/// its percentiles of wait and run time are within one bucket of what the
/// handler measured.
#[test]
fn the_history_outlives_purged_jobs_and_merges_three_workers() {
    let db = TestDb::new("history_fleet");
    let log = tempfile(&format!("{}-attempts", db.db));
    let handler = script(
        &db,
        "history.py",
        &format!(
            r#"import time
from mongoq import serve

def handle(job):
    started = time.time()
    time.sleep(0.03)
    with open({log:?}, "a") as f:
        f.write("%s %d %.4f %.4f\n" % (job["id"]["$oid"], job["attempt"], started, time.time()))
    if job["data"].get("fail"):
        raise Exception("this one fails")
    return None

serve(handle)
"#,
            log = log.display().to_string()
        ),
    );
    let data: Vec<serde_json::Value> = (0..300)
        .map(|n| serde_json::json!({"n": n, "fail": n % 10 == 0}))
        .collect();
    db.enqueue_json(&data);
    // When each job became eligible (its first attempt's wait counts from it).
    let eligible: HashMap<String, f64> = db
        .coll()
        .find(doc! {})
        .run()
        .unwrap()
        .map(|d| {
            let d = d.unwrap();
            let id = d.get_object_id("_id").unwrap().to_hex();
            let at = d.get_datetime("run_at").unwrap().timestamp_millis() as f64 / 1000.0;
            (id, at)
        })
        .collect();
    let handler = handler.display().to_string();
    let mut workers: Vec<crate::helpers::Worker> = (0..3)
        .map(|n| {
            let id = format!("history-{n}");
            db.spawn_worker_with_env(
                &[
                    "--drain",
                    "--threads",
                    "2",
                    "--worker-id",
                    &id,
                    "--max-attempts",
                    "2",
                    "--backoff-base",
                    "50ms",
                    "--backoff-max",
                    "100ms",
                    "--pipe",
                    python(),
                    &handler,
                ],
                &[("PYTHONPATH", &helper_dir())],
            )
        })
        .collect();
    for worker in &mut workers {
        worker.expect_success(Duration::from_secs(180));
    }
    assert_eq!(db.count(doc! {"status": "completed"}), 270);
    assert_eq!(db.count(doc! {"status": "failed"}), 30);
    let out = db.run(&["purge", "--status", "completed", "--older-than", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = db.run(&["purge", "--status", "failed", "--older-than", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.count(doc! {}), 0, "the jobs are gone");

    // Merged over the 3 workers: one document per queue and minute.
    let metrics = db
        .database()
        .collection::<Document>(&format!("{}_metrics", db.coll().name()));
    let minutes: Vec<Document> = metrics
        .find(doc! {})
        .run()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!minutes.is_empty() && minutes.len() <= 5, "{minutes:?}");
    let history = history_json(&db, &["--since", "1h"]);
    let total = &history["total"];
    assert_eq!(total["completed"], 270, "{total}");
    assert_eq!(total["failed"], 30, "{total}");
    assert_eq!(total["retried"], 30, "{total}");
    assert_eq!(total["cancelled"], 0, "{total}");
    assert_eq!(total["snoozed"], 0, "{total}");
    let queue = history_json(&db, &["--since", "2h", "--queue", "default"]);
    assert_eq!(queue["total"]["completed"], 270);
    let other = history_json(&db, &["--since", "2h", "--queue", "nothing-here"]);
    assert_eq!(other["total"]["completed"], 0);

    // What the handler measured, attempt by attempt.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs = Vec::new();
    let mut waits = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (started, ended): (f64, f64) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
        runs.push((ended - started) * 1000.0);
        if parts[1] == "1" {
            waits.push((started - eligible[parts[0]]) * 1000.0);
        }
    }
    assert_eq!(runs.len(), 330, "every attempt ran once");
    let shown = |name: &str| {
        let ms = total[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {total}"));
        bucket_ms(ms as f64)
    };
    for (name, truth) in [
        ("run_p50_ms", bucket_ms(quantile(&mut runs, 0.5))),
        ("run_p95_ms", bucket_ms(quantile(&mut runs, 0.95))),
        ("wait_p50_ms", bucket_ms(quantile(&mut waits, 0.5))),
    ] {
        assert!(
            shown(name).abs_diff(truth) <= 1,
            "{name}: bucket {} against {truth} measured by the handler: {total}",
            shown(name)
        );
    }
    // The table says the same.
    let out = db.run(&["stats", "--history", "--since", "10m"]);
    let table = stdout(&out);
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("total") && last.split_whitespace().nth(1) == Some("270"),
        "{table}"
    );
}

/// The overview's chart and the History page read the history, for each
/// range, for all queues and for one; a bad range falls back to an hour.
#[test]
fn the_dashboards_history_pages_render_each_range() {
    let db = TestDb::new("history_pages");
    // The dashboard runs on this machine, as the test does: one clock.
    let minute = mongodb::bson::DateTime::now().timestamp_millis() / 60_000 * 60_000;
    let at = mongodb::bson::DateTime::from_millis(minute);
    let earlier = mongodb::bson::DateTime::from_millis(minute - 3 * 3_600_000);
    let metrics = db
        .database()
        .collection::<Document>(&format!("{}_metrics", db.coll().name()));
    metrics
        .insert_many([
            doc! {"_id": {"q": "mail", "m": at}, "q": "mail", "at": at, "completed": 7, "failed": 2,
            "wait": {"b5": 9, "ms": 300}, "run": {"b8": 9, "ms": 3000}},
            doc! {"_id": {"q": "sms<x>", "m": at}, "q": "sms<x>", "at": at, "completed": 3},
            doc! {"_id": {"q": "mail", "m": earlier}, "q": "mail", "at": earlier, "completed": 100},
        ])
        .run()
        .unwrap();
    let dash = crate::dashboard::dashboard(&db, &[]);
    let (status, page) = crate::dashboard::get(&format!("{}/", dash.base));
    assert_eq!(status, 200);
    assert!(page.contains("last hour: 10 completed, 2 failed"), "{page}");
    for (range, completed) in [("1h", 10), ("24h", 110), ("7d", 110), ("bogus", 10)] {
        let (status, page) = crate::dashboard::get(&format!("{}/history?range={range}", dash.base));
        assert_eq!(status, 200, "{range}");
        assert!(
            page.contains(&format!("<b id=total-completed>{completed}</b>")),
            "{range}: {page}"
        );
        for chart in ["chart-throughput", "chart-wait", "chart-run"] {
            assert!(
                page.contains(&format!("<svg id={chart}")),
                "{range}: {page}"
            );
        }
        assert!(
            page.contains("sms&lt;x&gt;"),
            "queue names are escaped: {page}"
        );
    }
    let (_, page) = crate::dashboard::get(&format!("{}/history?range=1h&queue=mail", dash.base));
    assert!(page.contains("<b id=total-completed>7</b>"), "{page}");
    assert!(
        page.contains("p50 ≤ 50ms"),
        "the wait's p50 is its bucket's bound: {page}"
    );
    assert!(page.contains("p50 ≤ 500ms"), "the run's p50: {page}");
    db.coll()
        .insert_one(doc! {"data": 1, "status": "pending", "queue": "mail"})
        .run()
        .unwrap();
    let (_, page) = crate::dashboard::get(&format!("{}/queues", dash.base));
    assert!(
        page.contains("href=\"/history?queue=mail\""),
        "each queue links to its history: {page}"
    );
}

/// `mongoq bench --only history`: the three drains side by side, the
/// ratios, and the traced one exported its spans.
#[test]
fn the_bench_compares_a_drain_with_and_without_history() {
    let db = TestDb::new("history_bench");
    let text = crate::helpers::bench_section(&db, "history", 200);
    assert!(
        text.contains("16. history and traces: 200 no-op jobs"),
        "{text}"
    );
    assert!(text.contains("--no-history"), "{text}");
    assert!(text.contains("history on (the default)"), "{text}");
    let traces = text
        .lines()
        .find(|line| line.contains("history + traces (100% sampled)"))
        .unwrap_or_else(|| panic!("{text}"));
    let exports: u64 = traces.split_whitespace().last().unwrap().parse().unwrap();
    assert!(exports >= 1, "the traced drain exported its spans: {text}");
}

/// The History page in a real browser: its three charts render, and its
/// refresh script replaces the live part without breaking them.
#[test]
fn the_history_page_renders_in_a_real_browser() {
    let Some(chromium) = crate::dashboard::chromium() else {
        return;
    };
    let db = TestDb::new("history_browser");
    let minute = mongodb::bson::DateTime::now().timestamp_millis() / 60_000 * 60_000;
    let at = mongodb::bson::DateTime::from_millis(minute);
    db.database()
        .collection::<Document>(&format!("{}_metrics", db.coll().name()))
        .insert_one(
            doc! {"_id": {"q": "mail", "m": at}, "q": "mail", "at": at, "completed": 5,
            "failed": 1, "wait": {"b5": 6, "ms": 180}, "run": {"b9": 6, "ms": 4000}},
        )
        .run()
        .unwrap();
    let dash = crate::dashboard::dashboard(&db, &[]);
    let dom = crate::dashboard::browse(
        &chromium,
        &["--virtual-time-budget=7000", "--dump-dom"],
        &format!("{}/history?range=24h&queue=mail", dash.base),
    );
    for chart in ["chart-throughput", "chart-wait", "chart-run"] {
        assert!(
            dom.contains(&format!("<svg id=\"{chart}\"")),
            "{chart}: {dom}"
        );
    }
    assert!(dom.contains("<b id=\"total-completed\">5</b>"), "{dom}");
    assert!(
        !dom.contains("id=\"updated\">now<"),
        "the refresh script ran and replaced the live part: {dom}"
    );
}

/// Bad history flags are clear errors with the usage exit code.
#[test]
fn bad_history_flags_say_what_to_give() {
    let db = TestDb::new("history_flags");
    for (args, says) in [
        (
            vec!["stats", "--history", "--step", "30s"],
            "--step must be a whole number of minutes",
        ),
        (
            vec!["stats", "--history", "--since", "10000d", "--step", "1m"],
            "give a longer --step",
        ),
        (vec!["stats", "--queue", "mail"], "--history"),
        (
            vec!["init", "--retain-metrics", "10m"],
            "must be at least 1h",
        ),
    ] {
        let out = db.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
