//! The bench's report: a text table and an SVG chart of throughput.

use super::BenchResults;

/// The results as a plain-text report.
#[allow(clippy::too_many_lines)] // one report, written top to bottom
pub fn render_table(results: &BenchResults) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {}\nserver:  {}\n",
        results.machine, results.server
    );
    let _ = writeln!(out, "1. drain throughput (no-op jobs, one worker)");
    let _ = writeln!(
        out,
        "   {:>7} {:>6} {:>7} {:>9} {:>12}",
        "threads", "batch", "jobs", "jobs/s", "trips/job"
    );
    for r in &results.drain {
        let _ = writeln!(
            out,
            "   {:>7} {:>6} {:>7} {:>9.0} {:>12.4}",
            r.threads, r.batch_size, r.jobs, r.jobs_per_second, r.round_trips_per_job
        );
    }
    let _ = writeln!(
        out,
        "\n2-3. patterns on the same server (same threads and batch size)"
    );
    let _ = writeln!(
        out,
        "   {:<52} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "pattern", "backlog", "done", "jobs/s", "dup runs", "trips/job", "mongoq ×"
    );
    for r in &results.patterns {
        let mongoq = results
            .patterns
            .iter()
            .find(|m| m.pattern == "mongoq" && m.backlog == r.backlog)
            .map_or(0.0, |m| m.jobs_per_second);
        let ratio = if r.jobs_per_second > 0.0 {
            mongoq / r.jobs_per_second
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "   {:<52} {:>7} {:>9} {:>9.0} {:>10} {:>10.3} {:>9.1}",
            r.pattern,
            r.backlog,
            r.completed,
            r.jobs_per_second,
            r.duplicate_runs,
            r.round_trips_per_job,
            ratio
        );
    }
    let _ = writeln!(
        out,
        "\n   where the time goes: ms waiting for replies per 1,000 jobs, by command"
    );
    for r in &results.patterns {
        let per_k = |ms: f64| ms * 1000.0 / r.completed.max(1) as f64;
        let parts: Vec<String> = r
            .reply_wait_ms
            .iter()
            .map(|(name, ms)| format!("{name} {:.0}", per_k(*ms)))
            .collect();
        let _ = writeln!(
            out,
            "   {:<52} {:>7}  {}",
            r.pattern,
            r.backlog,
            parts.join(", ")
        );
    }
    let _ = writeln!(out, "\n4. enqueue throughput");
    for r in &results.enqueue {
        let _ = writeln!(
            out,
            "   {:<52} {:>7} jobs {:>9.0} jobs/s",
            r.method, r.jobs, r.jobs_per_second
        );
    }
    let _ = writeln!(out, "\n5. wake-up latency (insert to handler start)");
    for r in &results.latency {
        let _ = writeln!(
            out,
            "   {:<40} n={:<4} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            r.mode, r.jobs, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    if let Some(c) = &results.cost {
        let _ = writeln!(out, "\n6. cost");
        let _ = writeln!(
            out,
            "   round trips per job (default settings): {:.4}",
            c.round_trips_per_job
        );
        let _ = writeln!(
            out,
            "   worker peak RSS with a {} job backlog: {:.1} MB",
            c.backlog, c.max_rss_mb_with_backlog
        );
        let _ = writeln!(
            out,
            "   idle worker CPU over {:.0} s: {:.2}%",
            c.idle_seconds, c.idle_cpu_percent
        );
    }
    if !results.limits.is_empty() {
        let _ = writeln!(
            out,
            "\n7. what fleet-wide limits cost (one worker, default settings)"
        );
        let _ = writeln!(
            out,
            "   {:<22} {:>6} {:>8} {:>8} {:>12} {:>12} {:>14}",
            "mode", "jobs", "jobs/s", "claims", "claim trips", "limit trips", "limit/claim"
        );
        for r in &results.limits {
            let _ = writeln!(
                out,
                "   {:<22} {:>6} {:>8.0} {:>8} {:>12} {:>12} {:>14.2}",
                r.mode,
                r.jobs,
                r.jobs_per_second,
                r.claim_attempts,
                r.claim_round_trips,
                r.limit_round_trips,
                r.limit_round_trips_per_claim
            );
        }
        let _ = writeln!(
            out,
            "   control thread (controls, heartbeat, slot upkeep): {:.4} round trips per job in the unlimited run (per second, not per job)",
            results.limits.first().map_or(0.0, |r| r.control_round_trips_per_job)
        );
    }
    server_sections(results, &mut out);
    super::handlers::render(&results.handlers, &mut out);
    super::schedules::render(&results.schedules, &mut out);
    super::flows::render(&results.flows, &mut out);
    super::python::render(&results.python, &mut out);
    super::snooze::render(&results.snooze, &mut out);
    super::backlog::render(&results.backlog, &mut out);
    super::history::render(&results.history, &mut out);
    super::groups::render(&results.groups, &mut out);
    out
}

/// Sections 8 and 9: server work per job, and workers sharing a backlog.
fn server_sections(results: &BenchResults, out: &mut String) {
    use std::fmt::Write;
    let shown = |v: Option<f64>, width: usize| {
        v.map_or_else(
            || format!("{:>width$}", "n/a"),
            |v| format!("{v:>width$.1}"),
        )
    };
    if !results.server_work.is_empty() {
        let _ = writeln!(
            out,
            "\n8. server work per job (shell-inserted {{data, status}} jobs, mongoq's indexes, no-op jobs)"
        );
        let _ = writeln!(
            out,
            "   {:<40} {:>7} {:>7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>6}",
            "pattern",
            "backlog",
            "threads",
            "jobs/s",
            "srv µs/job",
            "keys/job",
            "docs/job",
            "trips/job",
            "vs bare",
            "twice"
        );
        for r in &results.server_work {
            let bare = results
                .server_work
                .iter()
                .find(|b| b.threads == 1 && b.backlog == r.backlog)
                .map_or(r.drain.jobs_per_second, |b| b.drain.jobs_per_second);
            let _ = writeln!(
                out,
                "   {:<40} {:>7} {:>7} {:>8.0} {} {} {} {:>9.4} {:>8.2} {:>6}",
                r.pattern,
                r.backlog,
                r.threads,
                r.drain.jobs_per_second,
                shown(r.drain.server_cpu_us_per_job, 10),
                shown(r.drain.keys_examined_per_job, 9),
                shown(r.drain.docs_examined_per_job, 9),
                r.drain.round_trips_per_job,
                r.drain.jobs_per_second / bare,
                r.drain.run_twice
            );
        }
    }
    if !results.scale.is_empty() {
        let _ = writeln!(out, "\n9. scale-out: worker processes sharing one backlog");
        let _ = writeln!(
            out,
            "   {:>9} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9} {:>6}",
            "processes",
            "threads",
            "jobs",
            "jobs/s",
            "vs one",
            "srv µs/job",
            "candidates",
            "lost %",
            "trips/job",
            "twice"
        );
        for r in &results.scale {
            let _ = writeln!(
                out,
                "   {:>9} {:>7} {:>7} {:>8.0} {:>8.2} {} {:>10} {:>8.2} {:>9.4} {:>6}",
                r.processes,
                r.threads_each,
                r.jobs,
                r.drain.jobs_per_second,
                r.vs_one_process,
                shown(r.drain.server_cpu_us_per_job, 10),
                r.candidates,
                r.lost_percent,
                r.drain.round_trips_per_job,
                r.drain.run_twice
            );
        }
        if let Some(floor) = &results.scale_floor {
            render_floor(out, floor, results.scale.first());
        }
    }
}

/// Section 9's floor: the same jobs, by clients that share nothing.
fn render_floor(out: &mut String, floor: &super::ScaleFloor, one: Option<&super::ScaleRow>) {
    use std::fmt::Write;
    let shown =
        |v: Option<f64>| v.map_or_else(|| format!("{:>10}", "n/a"), |v| format!("{v:>10.1}"));
    let cpu = |d: &super::server::Drain| d.server_cpu_us_per_job;
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".to_string(),
    };
    let _ = writeln!(
        out,
        "\n   the floor: what {} clients at once cost the server, sharing nothing ({} jobs)",
        floor.processes, floor.jobs
    );
    let _ = writeln!(
        out,
        "   {:<46} {:>8} {:>10} {:>14}",
        "", "jobs/s", "srv µs/job", "vs one"
    );
    let rows = [
        (
            "bare writes, 1 connection",
            &floor.writes_one,
            "1".to_string(),
        ),
        (
            "bare writes, one share per connection",
            &floor.writes_many,
            ratio(cpu(&floor.writes_many), cpu(&floor.writes_one)),
        ),
        (
            "mongoq processes, each on its own collection",
            &floor.mongoq_apart,
            ratio(cpu(&floor.mongoq_apart), one.and_then(|r| cpu(&r.drain))),
        ),
    ];
    for (name, drain, vs) in rows {
        let _ = writeln!(
            out,
            "   {:<46} {:>8.0} {} {:>14}",
            name,
            drain.jobs_per_second,
            shown(drain.server_cpu_us_per_job),
            vs
        );
    }
}

/// A line chart of drain jobs/s against batch size, one line per thread count.
#[allow(clippy::too_many_lines)] // one SVG document, written top to bottom
pub fn render_svg(results: &BenchResults) -> String {
    use std::fmt::Write;
    let (width, height, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 150.0);
    let mut batches: Vec<usize> = results.drain.iter().map(|r| r.batch_size).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut threads: Vec<usize> = results.drain.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let max_rate = results
        .drain
        .iter()
        .map(|r| r.jobs_per_second)
        .fold(1.0, f64::max)
        * 1.1;
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let x = |i: usize| {
        left + if batches.len() > 1 {
            plot_w * i as f64 / (batches.len() - 1) as f64
        } else {
            plot_w / 2.0
        }
    };
    let y = |rate: f64| top + plot_h * (1.0 - rate / max_rate);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">mongoq drain throughput ({} no-op jobs)</text>"#,
        left + plot_w / 2.0,
        results.drain.first().map_or(0, |r| r.jobs)
    );
    for step in 0..=5 {
        let rate = max_rate * f64::from(step) / 5.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{rate:.0}</text>"##,
            left + plot_w,
            left - 6.0,
            y(rate) + 4.0,
            y = y(rate)
        );
    }
    for (i, b) in batches.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{b}</text>"#,
            x(i),
            top + plot_h + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">--batch-size</text>"#,
        left + plot_w / 2.0,
        height - 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">jobs/s</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (k, t) in threads.iter().enumerate() {
        let color = colors[k % colors.len()];
        let points: Vec<String> = batches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                results
                    .drain
                    .iter()
                    .find(|r| r.threads == *t && r.batch_size == *b)
                    .map(|r| format!("{:.1},{:.1}", x(i), y(r.jobs_per_second)))
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(svg, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        let ly = top + 20.0 * k as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">--threads {t}</text>"#,
            width - right + 15.0,
            width - right + 40.0,
            width - right + 46.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
