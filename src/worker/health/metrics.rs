//! The worker's Prometheus metrics: lock-free histograms the threads
//! record into, and the text exposition a scrape gets.
//!
//! Everything here is read from atomics the worker's threads update as they
//! go; a scrape never waits on a worker thread. Queue depth needs the
//! database, so a sampler thread refreshes it every few seconds and scrapes
//! read the last sample.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::counts::Stats;
use crate::queue::QueueControl;
use crate::worker::health::liveness::HealthReport;
use crate::worker::health::report::Report;

/// Upper bounds (seconds) of the handler duration histogram's buckets.
pub const HANDLER_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the claim duration histogram's buckets.
pub const ROUND_TRIP_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A Prometheus histogram with fixed buckets, updated without locks.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = self
                .bounds
                .get(index)
                .map_or_else(|| "+Inf".to_string(), ToString::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// What the worker holds now, for the gauges.
pub(crate) struct Load {
    pub(crate) running: u64,
    pub(crate) held: u64,
    pub(crate) threads: u64,
}

/// The counters: name, help, value.
fn counter_rows(c: &Report) -> [(&'static str, &'static str, u64); 15] {
    [
        (
            "mongoq_jobs_claimed_total",
            "Jobs this worker claimed.",
            c.claimed,
        ),
        (
            "mongoq_jobs_completed_total",
            "Jobs this worker completed.",
            c.completed,
        ),
        (
            "mongoq_jobs_retried_total",
            "Attempts that failed and were scheduled again.",
            c.retried,
        ),
        (
            "mongoq_jobs_failed_total",
            "Jobs that failed for good (attempts exhausted, permanent errors, malformed).",
            c.failed,
        ),
        (
            "mongoq_jobs_snoozed_total",
            "Attempts whose handler snoozed the job (run again later, attempt not charged).",
            c.snoozed,
        ),
        (
            "mongoq_jobs_expired_total",
            "Jobs this worker ended because they expired before they started (claimed, or by its sweep).",
            c.expired,
        ),
        (
            "mongoq_jobs_released_total",
            "Claimed jobs handed back unstarted at shutdown.",
            c.released,
        ),
        (
            "mongoq_jobs_cancelled_total",
            "Running jobs dropped because an operator cancelled them.",
            c.cancelled,
        ),
        (
            "mongoq_dependents_released_total",
            "Waiting jobs this worker's outcomes made pending (their last dependency finished).",
            c.dependents_released,
        ),
        (
            "mongoq_dependents_cancelled_total",
            "Waiting jobs cancelled because a dependency failed, was cancelled or is gone.",
            c.dependents_cancelled,
        ),
        (
            "mongoq_outcomes_lost_total",
            "Outcomes not written because the lease was lost or the job cancelled.",
            c.lost,
        ),
        (
            "mongoq_lease_extensions_total",
            "Job leases extended (one per job per extension).",
            c.lease_extensions,
        ),
        (
            "mongoq_lease_rescues_total",
            "Expired leases (of any worker) this worker rescued.",
            c.rescued,
        ),
        (
            "mongoq_claim_round_trips_total",
            "Database round trips made to claim jobs.",
            c.claim_round_trips,
        ),
        (
            "mongoq_outcome_writes_total",
            "Database round trips made to write outcomes.",
            c.outcome_writes,
        ),
    ]
}

/// The queue's depth as last sampled (see `Monitor::sample_depth`).
#[derive(Debug, Clone)]
pub(crate) struct Depth {
    pub(crate) sampled: Instant,
    pub(crate) stats: Stats,
    /// Named groups with pending jobs, over all queues.
    pub(crate) groups_with_backlog: u64,
    /// Groups of ordered queues halted by a job that failed for good.
    pub(crate) halted_groups: u64,
}

/// Renders the Prometheus text exposition (format 0.0.4).
pub(crate) fn render(
    report: &Report,
    load: &Load,
    handler: &Histogram,
    claim: &Histogram,
    health: &HealthReport,
    depth: Option<&Depth>,
    controls: &[QueueControl],
) -> String {
    let c = load;
    let mut gauge_rows: Vec<(&str, &str, f64)> = vec![
        (
            "mongoq_jobs_running",
            "Jobs this worker's threads are running now.",
            c.running as f64,
        ),
        (
            "mongoq_jobs_held",
            "Jobs this worker holds leases on (running or about to run).",
            c.held as f64,
        ),
        ("mongoq_threads", "Handler threads.", c.threads as f64),
        (
            "mongoq_up",
            "1 when the worker is healthy (ready, alive, reaching the database).",
            f64::from(u8::from(health.healthy())),
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, help, value) in counter_rows(report) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    handler.render(
        &mut out,
        "mongoq_handler_duration_seconds",
        "How long handlers took per attempt.",
    );
    claim.render(&mut out, "mongoq_claim_duration_seconds", "Duration of each claim: usually one round trip, two when the read-ahead window is refilled.");
    if let Some(depth) = depth {
        render_depth(&mut out, depth, &mut gauge_rows);
    }
    render_controls(&mut out, controls);
    for (name, help, value) in gauge_rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

/// The controls of this worker's queues, one gauge family each, labelled
/// by queue.
/// A handler's pause that ended has no `paused_until` here (the monitor
/// takes it off).
fn render_controls(out: &mut String, controls: &[QueueControl]) {
    type Value = fn(&QueueControl) -> Option<f64>;
    let families: [(&str, &str, Value); 5] = [
        (
            "mongoq_queue_paused",
            "1 when the queue is paused fleet-wide (by an operator, or by a handler until mongoq_queue_paused_until_seconds).",
            |c| Some(f64::from(u8::from(c.paused || c.paused_until.is_some()))),
        ),
        (
            "mongoq_queue_paused_until_seconds",
            "When a handler's pause of the queue ends (Unix seconds, server time), while one holds.",
            |c| c.paused_until.map(|until| until as f64 / 1000.0),
        ),
        (
            "mongoq_queue_concurrency_limit",
            "The queue's fleet-wide concurrency limit.",
            |c| c.concurrency.map(f64::from),
        ),
        (
            "mongoq_queue_concurrency_in_use",
            "Concurrency slots of the queue taken now, fleet-wide.",
            |c| c.concurrency.map(|_| f64::from(c.in_use)),
        ),
        (
            "mongoq_queue_rate_limit_per_second",
            "The queue's fleet-wide start rate limit, per second.",
            |c| c.rate.map(|r| f64::from(r.count) / r.per.as_secs_f64()),
        ),
    ];
    for (name, help, value) in families {
        let rows: Vec<(String, f64)> = controls
            .iter()
            .filter_map(|c| value(c).map(|v| (label_value(&c.queue), v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (queue, value) in rows {
            let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {value}");
        }
    }
}

/// Escapes a Prometheus label value.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The queue's depth as sampled: counts by status, and gauges added to
/// `gauge_rows`.
fn render_depth<'a>(
    out: &mut String,
    depth: &'a Depth,
    gauge_rows: &mut Vec<(&'a str, &'a str, f64)>,
) {
    let Depth {
        sampled,
        stats,
        groups_with_backlog,
        halted_groups,
    } = depth;
    let _ = writeln!(out, "# HELP mongoq_queue_jobs Jobs in the collection by status (all queues), sampled every few seconds.\n# TYPE mongoq_queue_jobs gauge");
    for (status, count) in &stats.counts {
        let _ = writeln!(
            out,
            "mongoq_queue_jobs{{status=\"{}\"}} {count}",
            label_value(status)
        );
    }
    gauge_rows.extend([
            (
                "mongoq_queue_eligible_jobs",
                "Pending jobs whose run_at has come, in queues not paused.",
                stats.eligible as f64,
            ),
            (
                "mongoq_queue_paused_jobs",
                "Pending jobs whose run_at has come, held by a paused queue.",
                stats.paused as f64,
            ),
            (
                "mongoq_queue_scheduled_jobs",
                "Pending jobs whose run_at is in the future.",
                stats.scheduled as f64,
            ),
            (
                "mongoq_queue_expired_jobs",
                "Cancelled jobs in the collection that expired before they started (expires_at).",
                stats.expired as f64,
            ),
            (
                "mongoq_queue_oldest_eligible_age_seconds",
                "How long the oldest eligible job has waited (0 when none).",
                stats.oldest_eligible_age_seconds.unwrap_or(0.0),
            ),
            (
                "mongoq_queue_not_counted_jobs",
                "About how many jobs the queue counts leave out: inserted directly and not counted by a worker yet (0: the counts are exact).",
                stats.not_counted_yet.unwrap_or(0) as f64,
            ),
            (
                "mongoq_queue_groups_with_backlog",
                "Named groups (the jobs' group field) with pending jobs, over all queues.",
                *groups_with_backlog as f64,
            ),
            (
                "mongoq_queue_halted_groups",
                "Groups of ordered queues halted by a job that failed for good (they go on once it is retried or cancelled).",
                *halted_groups as f64,
            ),
            (
                "mongoq_queue_sample_age_seconds",
                "Age of the queue depth sample.",
                sampled.elapsed().as_secs_f64(),
            ),
        ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let histogram = Histogram::new(&HANDLER_BUCKETS);
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(7));
        histogram.observe(Duration::from_secs(600));
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"60\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_count 3\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
