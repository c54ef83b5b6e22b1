//! `mongoq stats --history`: the queue's history as a table (or JSON), one
//! row per step: what became of attempts, and wait and run time
//! percentiles (each the bound of the bucket that holds it, shown `≤`).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use mongoq::duration::format_duration;
use mongoq::history::{self, History, Point, Tally, EVENTS};
use mongoq::Queue;

use crate::cli::StatsArgs;
use crate::error::{usage, CommandError};

/// Rows a table shows at most unless `--step` says otherwise.
const ROWS: u32 = 60;
/// Rows `--step` may ask for at most.
const MAX_ROWS: u64 = 10_000;

pub fn history(queue: &Queue, args: &StatsArgs) -> Result<ExitCode, CommandError> {
    let step = args
        .step
        .unwrap_or_else(|| history::step_for(args.since, ROWS));
    if step < Duration::from_secs(60) || !step.as_secs().is_multiple_of(60) {
        return Err(usage(
            "--step must be a whole number of minutes (the history is kept per minute), e.g. --step 5m",
        ));
    }
    if args.since.as_secs() / step.as_secs() > MAX_ROWS {
        return Err(usage(format!(
            "--since {} in steps of {} is more than {MAX_ROWS} rows; give a longer --step",
            format_duration(args.since),
            format_duration(step)
        )));
    }
    let (from, to) = history::window(queue.now(), args.since, step);
    let scope = args.history_queue.as_deref();
    let points = History::new(queue).read(from, to, step, scope)?;
    let mut total = Tally::default();
    for point in &points {
        total.merge(&point.tally);
    }
    let name = scope.map_or_else(|| "all queues".to_string(), |q| format!("queue {q}"));
    if args.json {
        let value = serde_json::json!({
            "queue": scope,
            "from": from.try_to_rfc3339_string().unwrap_or_default(),
            "to": to.try_to_rfc3339_string().unwrap_or_default(),
            "step_seconds": step.as_secs(),
            "points": points.iter().map(|p| point_json(Some(p), &p.tally)).collect::<Vec<_>>(),
            "total": point_json(None, &total),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "history of {name}, the last {} in steps of {} (UTC; wait: eligible to started; times are bucket bounds)",
        format_duration(args.since),
        format_duration(step)
    );
    print!("{:<17}", "step");
    for event in EVENTS {
        print!(" {:>10}", event.name());
    }
    println!(
        " {:>9} {:>9} {:>9} {:>9}",
        "wait p50", "wait p95", "run p50", "run p95"
    );
    for point in &points {
        println!("{}", row(&start_of(point), &point.tally));
    }
    println!("{}", row("total", &total));
    Ok(ExitCode::SUCCESS)
}

/// `2026-12-05 03:38` for a step's start.
fn start_of(point: &Point) -> String {
    let text = point.at.try_to_rfc3339_string().unwrap_or_default();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

fn row(label: &str, tally: &Tally) -> String {
    let mut line = format!("{label:<17}");
    for event in EVENTS {
        let _ = write!(line, " {:>10}", tally.count(event));
    }
    for value in [
        tally.wait.percentile(0.5),
        tally.wait.percentile(0.95),
        tally.run.percentile(0.5),
        tally.run.percentile(0.95),
    ] {
        let shown = value.map_or_else(|| "-".to_string(), |d| format!("≤{}", format_duration(d)));
        let _ = write!(line, " {shown:>9}");
    }
    line
}

fn point_json(point: Option<&Point>, tally: &Tally) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let mut value = serde_json::json!({
        "wait_p50_ms": ms(tally.wait.percentile(0.5)),
        "wait_p95_ms": ms(tally.wait.percentile(0.95)),
        "wait_mean_ms": ms(tally.wait.mean()),
        "run_p50_ms": ms(tally.run.percentile(0.5)),
        "run_p95_ms": ms(tally.run.percentile(0.95)),
        "run_mean_ms": ms(tally.run.mean()),
        "wait_buckets": tally.wait.counts.to_vec(),
        "run_buckets": tally.run.counts.to_vec(),
    });
    for event in EVENTS {
        value[event.name()] = tally.count(event).into();
    }
    if let Some(point) = point {
        value["at"] = point.at.try_to_rfc3339_string().unwrap_or_default().into();
    }
    value
}
