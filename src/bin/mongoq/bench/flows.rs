//! Section 12, "flows": what dependencies cost the server, drained in this
//! process by one worker (2 threads, no-op jobs), in interleaved rounds:
//!
//! - **plain**: [`JOBS`] jobs with no dependencies (the cost every job
//!   pays; compare it with section 8's rows and with the same section
//!   of a build without flows);
//! - **pairs**: [`JOBS`] / 2 jobs, each released by one dependency (a
//!   flow of pairs);
//! - **fan-in**: [`JOBS`] − 1 dependencies and one job waiting for all:
//!   also how long after the last completion it was released.
//!
//! The extra server CPU per edge (one id in one job's `after`) is the
//! drain's CPU less the plain drain's per job, times the jobs, over the
//! edges: for pairs, that is the cost of each released dependent.

use std::sync::Arc;

use mongodb::bson::{doc, Document};
use mongoq::flow::{Flow, FlowStep};
use mongoq::schema::fields;
use mongoq::{Error, Queue};
use serde::Serialize;

use super::probe::Monitor;
use super::server::{median_if_all, median_rows, Drain};
use super::Bench;

/// Jobs per drain.
pub const JOBS: usize = 2_000;
const THREADS: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct FlowRow {
    pub shape: String,
    pub jobs: usize,
    /// Jobs that waited for another, and the ids in their `after` lists.
    pub dependents: usize,
    pub edges: usize,
    #[serde(flatten)]
    pub drain: Drain,
    /// Server CPU per edge beyond what plain jobs cost.
    pub extra_server_us_per_edge: Option<f64>,
    /// Fan-in: from the last dependency's completion to the release.
    pub release_after_last_ms: Option<f64>,
}

#[derive(Clone, Copy)]
enum Shape {
    Plain,
    Pairs,
    FanIn,
}

impl Bench<'_> {
    pub(super) fn flows(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<FlowRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut runs: Vec<Vec<FlowRow>> = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            for shape in [Shape::Plain, Shape::Pairs, Shape::FanIn] {
                progress(&format!("flows (round {round}/{rounds}): {}", shape.name()));
                rows.push(self.flow_drain(shape)?);
            }
            // The extra per dependent, against this round's plain drain.
            let plain = rows[0].drain.server_cpu_us_per_job;
            for row in &mut rows[1..] {
                row.extra_server_us_per_edge = match (row.drain.server_cpu_us_per_job, plain) {
                    (Some(cpu), Some(plain)) => {
                        Some((cpu - plain) * row.jobs as f64 / row.edges.max(1) as f64)
                    }
                    _ => None,
                };
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| FlowRow {
            drain: Drain::median(&rows.iter().map(|r| &r.drain).collect::<Vec<_>>()),
            extra_server_us_per_edge: median_if_all(
                rows.iter().map(|r| r.extra_server_us_per_edge),
            ),
            release_after_last_ms: median_if_all(rows.iter().map(|r| r.release_after_last_ms)),
            ..rows[0].clone()
        }))
    }

    fn flow_drain(&self, shape: Shape) -> Result<FlowRow, Error> {
        let monitor = Arc::new(Monitor::default());
        let queue = self.queue("bench_flows", Some(Arc::clone(&monitor)))?;
        queue.ensure_indexes()?;
        let (dependents, edges) = fill(&queue, shape)?;
        let (report, seconds, sent, server) =
            self.drain_here(&queue, &monitor, THREADS, JOBS, false)?;
        let jobs: Vec<Document> = queue
            .collection()
            .find(doc! {})
            .projection(doc! {fields::STATUS: 1, fields::ATTEMPTS: 1, fields::COMPLETED_AT: 1, fields::RELEASED_AT: 1, fields::AFTER: 1})
            .run()
            .and_then(Iterator::collect)
            .map_err(|e| queue.db_error("find (bench flows)", &e))?;
        let _ = queue.collection().drop().run();
        let _ = queue.workers_collection().drop().run();
        let done = jobs
            .iter()
            .filter(|j| j.get_str(fields::STATUS) == Ok("completed"))
            .count();
        if done != JOBS || report.completed != JOBS as u64 {
            return Err(Error::Invalid(format!(
                "bench flow drain ({}) completed {done} of {JOBS} jobs (worker reported {}): the run is not valid",
                shape.name(),
                report.completed
            )));
        }
        let run_twice = jobs
            .iter()
            .filter(|j| {
                j.get(fields::ATTEMPTS)
                    .and_then(mongoq::schema::integer)
                    .unwrap_or(1)
                    > 1
            })
            .count() as u64;
        let release_after_last_ms = matches!(shape, Shape::FanIn).then(|| {
            let last = jobs
                .iter()
                .filter(|j| !j.contains_key(fields::AFTER))
                .filter_map(|j| j.get_datetime(fields::COMPLETED_AT).ok())
                .map(|at| at.timestamp_millis())
                .max()
                .unwrap_or(0);
            let released = jobs
                .iter()
                .find(|j| j.contains_key(fields::AFTER))
                .and_then(|j| j.get_datetime(fields::RELEASED_AT).ok())
                .map_or(0, |at| at.timestamp_millis());
            (released - last) as f64
        });
        Ok(FlowRow {
            shape: shape.name().into(),
            jobs: JOBS,
            dependents,
            edges,
            drain: Drain::new(JOBS, seconds, server, sent, run_twice),
            extra_server_us_per_edge: None,
            release_after_last_ms,
        })
    }
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Plain => "plain jobs (no dependencies)",
            Shape::Pairs => "pairs (each second job waits for the first)",
            Shape::FanIn => "fan-in (one job waits for all others)",
        }
    }
}

/// Inserts the shape's jobs; returns how many wait for another, and the
/// edges.
fn fill(queue: &Queue, shape: Shape) -> Result<(usize, usize), Error> {
    let step = |name: String, after: Vec<String>| FlowStep {
        name,
        data: serde_json::json!({}),
        after,
        if_dep_fails: None,
        queue: None,
        priority: 0,
        max_attempts: None,
    };
    let steps: Vec<FlowStep> = match shape {
        Shape::Plain => {
            queue.enqueue_many(
                (0..JOBS).map(|n| mongodb::bson::Bson::Int64(n as i64)),
                &mongoq::EnqueueOptions::default(),
            )?;
            return Ok((0, 0));
        }
        Shape::Pairs => (0..JOBS / 2)
            .flat_map(|n| {
                [
                    step(format!("p{n}"), Vec::new()),
                    step(format!("c{n}"), vec![format!("p{n}")]),
                ]
            })
            .collect(),
        Shape::FanIn => (0..JOBS - 1)
            .map(|n| step(format!("d{n}"), Vec::new()))
            .chain(std::iter::once(step(
                "all".into(),
                (0..JOBS - 1).map(|n| format!("d{n}")).collect(),
            )))
            .collect(),
    };
    let dependents = steps.iter().filter(|s| !s.after.is_empty()).count();
    let edges = steps.iter().map(|s| s.after.len()).sum();
    queue.enqueue_flow(&Flow {
        queue: None,
        jobs: steps,
    })?;
    Ok((dependents, edges))
}

/// The section's table.
pub fn render(rows: &[FlowRow], out: &mut String) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n12. flows: {JOBS} no-op jobs drained by one worker ({THREADS} threads), in this process"
    );
    let _ = writeln!(
        out,
        "   {:<46} {:>10} {:>12} {:>12} {:>16} {:>14}",
        "shape", "jobs/s", "server µs/job", "round trips/job", "extra µs/edge", "release after"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "   {:<46} {:>10.0} {:>12} {:>12.4} {:>16} {:>14}",
            r.shape,
            r.drain.jobs_per_second,
            r.drain
                .server_cpu_us_per_job
                .map_or_else(|| "n/a".into(), |us| format!("{us:.0}")),
            r.drain.round_trips_per_job,
            r.extra_server_us_per_edge
                .map_or_else(|| "–".into(), |us| format!("{us:.0}")),
            r.release_after_last_ms
                .map_or_else(|| "–".into(), |ms| format!("{ms:.0} ms")),
        );
    }
}
