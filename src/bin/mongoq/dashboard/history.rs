//! The History page (`/history?range=1h|24h|7d&queue=NAME`): from the
//! queue's history (see [`mongoq::history`]), which outlives the jobs,
//! charts of what became of attempts per step and of wait and run time
//! p50/p95, for all queues or one. Server-rendered SVG, like the
//! overview's chart: no script or font from outside.

use std::fmt::Write as _;
use std::time::Duration;

use mongoq::duration::format_duration;
use mongoq::history::{self, History, Point, Tally, BOUNDS_MS};
use mongoq::text::percent_encode;
use mongoq::Error;

use super::html::{esc, page};
use super::Dashboard;
use crate::http::{Request, Response};

/// The ranges the page offers, and the default (the first).
const RANGES: [(&str, Duration); 3] = [
    ("1h", Duration::from_secs(3600)),
    ("24h", Duration::from_secs(24 * 3600)),
    ("7d", Duration::from_secs(7 * 24 * 3600)),
];
/// Most steps a chart shows: 1 min over an hour, 15 min over a day, 2 h
/// over a week.
const POINTS: u32 = 96;
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 140.0;

impl Dashboard {
    pub(super) fn history(&self, request: &Request) -> Result<Response, Error> {
        let (range_name, range) = request
            .param("range")
            .and_then(|wanted| RANGES.iter().find(|(name, _)| *name == wanted))
            .copied()
            .unwrap_or(RANGES[0]);
        let queue = request.param("queue").filter(|q| !q.is_empty());
        let step = history::step_for(range, POINTS);
        let (from, to) = history::window(self.queue.now(), range, step);
        let store = History::new(&self.queue);
        let points = store.read(from, to, step, queue)?;
        let queues = store.queues(from)?;
        let link = |range: &str, queue: Option<&str>| {
            let mut href = format!("/history?range={range}");
            if let Some(queue) = queue {
                let _ = write!(href, "&amp;queue={}", percent_encode(queue));
            }
            href
        };
        let mut body = String::from("<div id=live><p class=filters>Range: ");
        for (name, _) in RANGES {
            let current = if name == range_name {
                " class=current"
            } else {
                ""
            };
            let _ = write!(
                body,
                "<a{current} href=\"{}\">{name}</a> ",
                link(name, queue)
            );
        }
        body.push_str(" · Queue: ");
        let _ = write!(
            body,
            "<a{} href=\"{}\">all</a> ",
            if queue.is_none() {
                " class=current"
            } else {
                ""
            },
            link(range_name, None)
        );
        for name in &queues {
            let current = if Some(name.as_str()) == queue {
                " class=current"
            } else {
                ""
            };
            let _ = write!(
                body,
                "<a{current} href=\"{}\">{}</a> ",
                link(range_name, Some(name)),
                esc(name)
            );
        }
        let scope = queue.map_or_else(|| "all queues".to_string(), |q| format!("queue {}", esc(q)));
        let mut total = Tally::default();
        for point in &points {
            total.merge(&point.tally);
        }
        let _ = write!(
            body,
            "</p><p>{scope}, the last {range_name} in steps of {}: <b id=total-completed>{}</b> completed, <b>{}</b> failed, <b>{}</b> retried, <b>{}</b> cancelled, <b>{}</b> snoozed.</p>",
            format_duration(step),
            total.completed,
            total.failed,
            total.retried,
            total.cancelled,
            total.snoozed
        );
        let caption = (range_name, step);
        body.push_str("<h2>Completed and failed</h2>");
        body.push_str(&bars(&points, caption));
        body.push_str("<h2>Wait time (eligible to started), p50 and p95</h2>");
        body.push_str(&lines(&points, caption, "wait", |t| &t.wait));
        body.push_str("<h2>Run time, p50 and p95</h2>");
        body.push_str(&lines(&points, caption, "run", |t| &t.run));
        body.push_str("<p>Percentiles are bucket bounds (1, 2, 5, 10, 20, 50 ms … 1 day); history is kept for the retention <code>mongoq init --retain-metrics</code> sets (30 days unless changed).</p></div>");
        Ok(Response::html(
            200,
            page("History", "/history", &body, true),
        ))
    }
}

/// Completed (green) and failed (red) per step, stacked.
fn bars(points: &[Point], (range, step): (&str, Duration)) -> String {
    let top = points
        .iter()
        .map(|p| p.tally.completed + p.tally.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let width = WIDTH / points.len().max(1) as f64;
    let mut svg = frame("throughput", "completed and failed jobs per step");
    for (n, point) in points.iter().enumerate() {
        let (completed, failed) = (point.tally.completed, point.tally.failed);
        let x = n as f64 * width;
        let h_completed = completed as f64 / top as f64 * HEIGHT;
        let h_failed = failed as f64 / top as f64 * HEIGHT;
        let _ = write!(
            svg,
            "<rect x={x:.1} y={:.1} width={:.1} height={h_completed:.1} fill=\"#3a9\"><title>{completed} completed</title></rect><rect x={x:.1} y={:.1} width={:.1} height={h_failed:.1} fill=\"#d44\"><title>{failed} failed</title></rect>",
            HEIGHT - h_completed,
            (width - 1.0).max(0.5),
            HEIGHT - h_completed - h_failed,
            (width - 1.0).max(0.5),
        );
    }
    finish(
        svg,
        range,
        &format!("peak {top} per {}", format_duration(step)),
    )
}

/// p50 (solid) and p95 (dashed) of a distribution per step, on a log scale
/// from 1 ms to the largest bound seen; steps without attempts are gaps.
fn lines(
    points: &[Point],
    (range, _): (&str, Duration),
    name: &str,
    distribution: impl Fn(&Tally) -> &mongoq::history::Distribution,
) -> String {
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).max(1.0);
    // The top is the power of ten above the highest p95 (10 ms at least).
    let highest = points
        .iter()
        .filter_map(|p| distribution(&p.tally).percentile(0.95))
        .map(ms)
        .fold(1.0_f64, f64::max);
    let top = 10f64.powf((highest * 1.01).log10().ceil()).max(10.0);
    let y = |value: f64| HEIGHT - value.log10() / top.log10() * (HEIGHT - 8.0);
    let width = WIDTH / points.len().max(1) as f64;
    let mut svg = frame(name, &format!("{name} time p50 and p95 per step"));
    // Grid lines at the bucket bounds that are powers of ten.
    for bound in BOUNDS_MS.iter().map(|b| *b as f64).filter(|b| *b <= top) {
        if (bound.log10().fract()).abs() < 1e-9 {
            let _ = write!(
                svg,
                "<line x1=0 x2={WIDTH} y1={0:.1} y2={0:.1} stroke=\"#ddd\"/><text x=2 y={2:.1}>{1}</text>",
                y(bound),
                format_duration(Duration::from_millis(bound as u64)),
                y(bound) - 2.0,
            );
        }
    }
    for (q, style) in [(0.5, ""), (0.95, " stroke-dasharray=\"4 3\"")] {
        let mut path = String::new();
        for (n, point) in points.iter().enumerate() {
            let Some(value) = distribution(&point.tally).percentile(q) else {
                continue;
            };
            let x = (n as f64 + 0.5) * width;
            let command = if path.is_empty() { 'M' } else { 'L' };
            let _ = write!(path, "{command}{x:.1} {:.1} ", y(ms(value)));
            let _ = write!(
                svg,
                "<circle cx={x:.1} cy={:.1} r=2 fill=\"#357\"><title>p{} ≤ {}</title></circle>",
                y(ms(value)),
                (q * 100.0) as u32,
                format_duration(value)
            );
        }
        if !path.is_empty() {
            let _ = write!(
                svg,
                "<path d=\"{}\" fill=none stroke=\"#357\" stroke-width=1.5{style}/>",
                path.trim_end()
            );
        }
    }
    finish(
        svg,
        range,
        &format!(
            "p50 solid, p95 dashed; top {}",
            format_duration(Duration::from_millis(top as u64))
        ),
    )
}

fn frame(id: &str, label: &str) -> String {
    format!(
        "<svg id=chart-{id} class=chart viewBox=\"0 0 {WIDTH} {}\" role=img aria-label=\"{label}\">",
        HEIGHT + 20.0
    )
}

fn finish(mut svg: String, range: &str, note: &str) -> String {
    let _ = write!(
        svg,
        "<text x=0 y={0}>{range} ago</text><text x={WIDTH} y={0} text-anchor=end>now · {note}</text></svg>",
        HEIGHT + 16.0,
    );
    svg
}
