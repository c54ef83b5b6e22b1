//! The chart of sections 8 and 9: the server's CPU per job by pattern, and
//! throughput by the number of worker processes, as horizontal bars.

use std::fmt::Write as _;

use super::BenchResults;

/// One bar: its label, its value, and the value's text.
struct Bar {
    label: String,
    value: f64,
    text: String,
}

/// Both panels in one SVG, or `None` when neither section ran.
pub fn render_fleet_svg(results: &BenchResults) -> Option<String> {
    let work: Vec<Bar> = results
        .server_work
        .iter()
        .filter_map(|r| {
            let cpu = r.drain.server_cpu_us_per_job?;
            Some(Bar {
                label: format!(
                    "{} · {} jobs · {} thr",
                    short(&r.pattern),
                    r.backlog,
                    r.threads
                ),
                value: cpu,
                text: format!("{cpu:.0} µs"),
            })
        })
        .collect();
    let scale: Vec<Bar> = results
        .scale
        .iter()
        .map(|r| Bar {
            label: format!("{} × mongoq work (2 threads)", r.processes),
            value: r.drain.jobs_per_second,
            text: format!(
                "{:.0} jobs/s ({:.2}×)",
                r.drain.jobs_per_second, r.vs_one_process
            ),
        })
        .collect();
    if work.is_empty() && scale.is_empty() {
        return None;
    }
    let mut svg = String::new();
    let mut y = 30.0;
    let rows = work.len() + scale.len();
    let height = 90.0 + 26.0 * rows as f64 + 60.0;
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"820\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (title, bars, color) in [
        (
            "8. server CPU per job (µs, lower is better)",
            &work,
            "#1f77b4",
        ),
        (
            "9. drain throughput by worker processes (jobs/s, higher is better)",
            &scale,
            "#2ca02c",
        ),
    ] {
        if bars.is_empty() {
            continue;
        }
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{y:.0}\" font-size=\"14\" font-weight=\"bold\">{title}</text>"
        );
        y += 14.0;
        let max = bars.iter().map(|b| b.value).fold(1.0, f64::max);
        for bar in bars {
            let width = 330.0 * bar.value / max;
            let _ = write!(
                svg,
                "<text x=\"10\" y=\"{:.0}\">{}</text>\n<rect x=\"330\" y=\"{:.0}\" width=\"{width:.1}\" height=\"18\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n",
                y + 13.0,
                escape(&bar.label),
                y,
                335.0 + width,
                y + 13.0,
                escape(&bar.text)
            );
            y += 26.0;
        }
        y += 30.0;
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// The pattern's name without its parenthesis.
fn short(pattern: &str) -> &str {
    pattern.split(" (").next().unwrap_or(pattern)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
