//! `mongoq stats`: counts by status, eligible vs scheduled, the oldest
//! eligible job; `--watch` redraws it with rates.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mongoq::{Queue, Shutdown};

use crate::cli::StatsArgs;
use crate::error::{failure, usage, CommandError};

pub fn stats(queue: &Queue, args: &StatsArgs) -> Result<ExitCode, CommandError> {
    if args.recount {
        let counters = mongoq::counts::Counts::new(queue).recount()?;
        let jobs: i64 = counters.values().flat_map(|keys| keys.values()).sum();
        eprintln!(
            "recounted {jobs} counted jobs in {} queues; jobs not counted yet are added as they are read",
            counters.len()
        );
    }
    let stats = if args.exact {
        queue.stats_exact()?
    } else {
        queue.stats()?
    };
    let controls = queue.controls()?;
    let schedules = mongoq::schedule::Schedules::new(queue).list()?;
    if args.json {
        let mut value = serde_json::to_value(&stats).unwrap_or_default();
        value["controls"] = serde_json::to_value(&controls).unwrap_or_default();
        value["schedules"] = schedules
            .iter()
            .map(mongoq::schedule::ScheduleInfo::to_json)
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_stats(queue, &stats, None));
    if !controls.is_empty() {
        print!(
            "queues\n{}",
            super::fleet::render_controls(&controls, queue.now())
        );
    }
    if !schedules.is_empty() {
        println!("schedules");
        for s in &schedules {
            let next = if s.paused {
                "paused".to_string()
            } else {
                s.next_tick
                    .and_then(|t| t.try_to_rfc3339_string().ok())
                    .unwrap_or_else(|| "never".into())
            };
            println!(
                "  {:<20} {:<34} next {next}  fired {}, skipped {}",
                s.name, s.describe, s.fired, s.skipped
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stats --groups QUEUE`: the queue's busiest groups.
pub fn groups(queue: &Queue, args: &StatsArgs) -> Result<ExitCode, CommandError> {
    let name = args.groups.clone().unwrap_or_default();
    mongoq::queue::validate_queue_name(&name).map_err(|e| usage(format!("--groups: {e}")))?;
    let busiest = queue.busiest_groups(&name, args.top)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&busiest).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_groups(&name, &busiest));
    Ok(ExitCode::SUCCESS)
}

/// The groups table of `stats --groups`.
pub fn render_groups(queue: &str, busiest: &mongoq::groups::Busiest) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "queue {queue}: {} groups with pending or running jobs",
        busiest.active_groups
    );
    let _ = writeln!(
        out,
        "  {:<30} {:>10} {:>10} {:>8}",
        "group", "pending", "running", "limit"
    );
    let default = &busiest.default_group;
    for load in busiest.groups.iter().chain(std::iter::once(default)) {
        let _ = writeln!(
            out,
            "  {:<30} {:>10} {:>10} {:>8}",
            mongoq::groups::group_label(load.group.as_deref()),
            load.pending,
            load.running,
            load.limit
                .map_or_else(|| "–".to_string(), |n| n.to_string())
        );
    }
    let more = busiest
        .active_groups
        .saturating_sub(busiest.groups.len() as u64);
    if more > 0 {
        let _ = writeln!(out, "  … and {more} more groups (--top N lists more)");
    }
    for (group, job) in &busiest.halted {
        let _ = writeln!(
            out,
            "  group {group} is HALTED: job {job} failed for good (mongoq retry-failed --id {job}, or mongoq cancel {job}, lets the group go on)"
        );
    }
    if let Some(left_out) = busiest.not_counted_yet {
        let _ = writeln!(
            out,
            "  the default group's numbers may be short: {}",
            not_counted_note(left_out)
        );
    }
    out
}

/// The stats table; with the previous sample and its age, rates too.
pub fn render_stats(
    queue: &Queue,
    stats: &mongoq::Stats,
    previous: Option<(&mongoq::Stats, Duration)>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "queue {}.{}",
        queue.database().name(),
        queue.collection().name()
    );
    for (status, count) in &stats.counts {
        let rate = previous
            .and_then(|(before, elapsed)| {
                let was = before.counts.get(status).copied().unwrap_or(0);
                (elapsed.as_secs_f64() > 0.0)
                    .then(|| (*count as f64 - was as f64) / elapsed.as_secs_f64())
            })
            .map(|rate| format!("  {rate:+.1}/s"))
            .unwrap_or_default();
        if status == "pending" {
            let paused = if stats.paused > 0 {
                format!(", held by paused queues {}", stats.paused)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {status:<10} {count:>10}{rate}  (eligible now {}{paused}, scheduled later {})",
                stats.eligible, stats.scheduled
            );
        } else if status == "cancelled" && stats.expired > 0 {
            let _ = writeln!(
                out,
                "  {status:<10} {count:>10}{rate}  (expired before they started {})",
                stats.expired
            );
        } else if status == "waiting" && *count > 0 {
            let _ = writeln!(
                out,
                "  {status:<10} {count:>10}{rate}  (for other jobs to finish)"
            );
        } else {
            let _ = writeln!(out, "  {status:<10} {count:>10}{rate}");
        }
    }
    if let Some(left_out) = stats.not_counted_yet {
        let _ = writeln!(out, "  {}", not_counted_note(left_out));
    }
    match stats.oldest_eligible_age_seconds {
        Some(age) => {
            let _ = writeln!(
                out,
                "  oldest eligible job has waited {}",
                mongoq::duration::format_duration(Duration::from_secs_f64(age))
            );
        }
        None => {
            let _ = writeln!(out, "  no job is eligible");
        }
    }
    out
}

/// What the counts leave out when the jobs not counted yet were too many to
/// count within a read's budget (see `mongoq::Stats::not_counted_yet`).
pub fn not_counted_note(left_out: u64) -> String {
    format!(
        "these counts leave out about {left_out} jobs inserted directly that no worker has counted yet (a worker counts them in the background; `mongoq stats --exact` counts them now)"
    )
}

/// `stats --watch`: redraw in place on a terminal, append otherwise, until
/// SIGINT/SIGTERM (exit 0).
pub fn watch_stats(queue: &Queue, interval: Duration) -> Result<ExitCode, CommandError> {
    let stop = Shutdown::new();
    let signalled = stop.clone();
    ctrlc::set_handler(move || signalled.request())
        .map_err(|e| failure(format!("cannot install the signal handler: {e}")))?;
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<(mongoq::Stats, Instant)> = None;
    while !stop.is_requested() {
        let stats = queue.stats()?;
        let now = Instant::now();
        let table = render_stats(
            queue,
            &stats,
            previous.as_ref().map(|(s, at)| (s, now - *at)),
        );
        let stamp = queue.now().try_to_rfc3339_string().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home, clear: redraw in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = write!(
            out,
            "{stamp}  (every {}, Ctrl-C to stop)\n{table}",
            mongoq::duration::format_duration(interval)
        );
        if !terminal {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        previous = Some((stats, now));
        stop.sleep(interval);
    }
    Ok(ExitCode::SUCCESS)
}
