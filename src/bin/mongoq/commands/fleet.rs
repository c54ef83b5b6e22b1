//! The fleet as one: `workers` (the registry), `pause`/`resume` a queue,
//! and `limit` (fleet-wide concurrency and rate per queue). All of it is
//! state in MongoDB, so it holds across hosts and worker restarts.

use std::process::ExitCode;

use mongoq::queue::{QueueControl, Rate, WorkerInfo};
use mongoq::Queue;

use crate::cli::{LimitArgs, PauseArgs, ResumeArgs, WorkersArgs};
use crate::error::{usage, CommandError};

fn json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub fn workers(queue: &Queue, args: &WorkersArgs) -> Result<ExitCode, CommandError> {
    let workers = queue.workers()?;
    if args.json {
        json(&workers);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_workers(queue, &workers));
    Ok(ExitCode::SUCCESS)
}

fn render_workers(queue: &Queue, workers: &[WorkerInfo]) -> String {
    use std::fmt::Write as _;
    let now = queue.now().timestamp_millis();
    let mut out = String::new();
    if workers.is_empty() {
        out.push_str("no worker is registered\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>8} {:>5} {:>10} {:>8} {:>8}  queues",
        "worker", "threads", "running", "held", "completed", "failed", "seen"
    );
    for w in workers {
        let seen = format!("{:.0}s ago", (now - w.last_seen).max(0) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "{:<28} {:>7} {:>8} {:>5} {:>10} {:>8} {:>8}  {}{}",
            w.id,
            w.threads,
            w.running,
            w.held,
            w.completed,
            w.failed,
            seen,
            w.queues.join(","),
            if w.late {
                "  LATE (not seen for a while; its leases expire)"
            } else {
                ""
            }
        );
    }
    out
}

pub fn pause(queue: &Queue, args: &PauseArgs) -> Result<ExitCode, CommandError> {
    queue.pause(&args.queue, args.reason.as_deref())?;
    println!(
        "queue {} paused: no worker starts its jobs (running ones finish) until `mongoq resume {}`",
        args.queue, args.queue
    );
    Ok(ExitCode::SUCCESS)
}

pub fn resume(queue: &Queue, args: &ResumeArgs) -> Result<ExitCode, CommandError> {
    queue.resume(&args.queue)?;
    println!("queue {} resumed", args.queue);
    Ok(ExitCode::SUCCESS)
}

pub fn limit(queue: &Queue, args: &LimitArgs) -> Result<ExitCode, CommandError> {
    let Some(name) = &args.queue else {
        let controls = queue.controls()?;
        if args.json {
            json(&controls);
        } else {
            print!("{}", render_controls(&controls, queue.now()));
        }
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(group) = &args.group {
        if args.clear {
            queue.set_group_limit(name, group, None, None, None)?;
            println!("queue {name}, group {group}: the queue's limits for every group");
            return Ok(ExitCode::SUCCESS);
        }
        // What is not given keeps its value.
        let own = queue
            .controls_of(std::slice::from_ref(name))?
            .into_iter()
            .flat_map(|c| c.group_overrides)
            .find(|o| &o.group == group);
        let concurrency = args
            .concurrency
            .or(own.as_ref().and_then(|o| o.concurrency));
        let rate = match &args.rate {
            Some(rate) => Some(Rate::parse(rate)?),
            None => own.as_ref().and_then(|o| o.rate),
        };
        let weight = args.weight.or(own.as_ref().and_then(|o| o.weight));
        queue.set_group_limit(name, group, concurrency, rate, weight)?;
        let mut said = Vec::new();
        if let Some(n) = concurrency {
            said.push(format!("at most {n} jobs run at once"));
        }
        if let Some(rate) = rate {
            said.push(format!("at most {rate} job starts"));
        }
        if let Some(weight) = weight {
            said.push(format!("{weight} turns per round of fair share"));
        }
        println!(
            "queue {name}, group {group}: {}, fleet-wide",
            said.join(" and ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.clear {
        queue.set_concurrency(name, None)?;
        queue.set_rate(name, None)?;
        queue.set_group_concurrency(name, None)?;
        queue.set_group_rate(name, None)?;
        queue.set_ordered(name, None)?;
        for own in queue
            .controls_of(std::slice::from_ref(name))?
            .into_iter()
            .flat_map(|c| c.group_overrides)
        {
            queue.set_group_limit(name, &own.group, None, None, None)?;
        }
        println!("queue {name}: no limits");
        return Ok(ExitCode::SUCCESS);
    }
    if args.ordered {
        queue.set_ordered(name, Some(args.continue_on_failure))?;
        println!(
            "queue {name}: each group's jobs start one at a time, in order; a job that fails for good {}",
            if args.continue_on_failure {
                "does not stop its group"
            } else {
                "halts its group until it is retried or cancelled"
            }
        );
    }
    if let Some(concurrency) = args.group_concurrency {
        queue.set_group_concurrency(name, Some(concurrency))?;
        println!("queue {name}: at most {concurrency} jobs of each group run at once, fleet-wide");
    }
    if let Some(rate) = &args.group_rate {
        let rate = Rate::parse(rate)
            .map_err(|e| usage(e.to_string().replacen("--rate", "--group-rate", 1)))?;
        queue.set_group_rate(name, Some(rate))?;
        println!("queue {name}: at most {rate} job starts of each group, fleet-wide");
    }
    if let Some(concurrency) = args.concurrency {
        queue.set_concurrency(name, Some(concurrency))?;
        println!("queue {name}: at most {concurrency} jobs run at once, fleet-wide");
    }
    if let Some(rate) = &args.rate {
        let rate = Rate::parse(rate)?;
        queue.set_rate(name, Some(rate))?;
        println!("queue {name}: at most {rate} job starts, fleet-wide");
    }
    Ok(ExitCode::SUCCESS)
}

/// The controlled queues as a table (also used by `stats`).
pub fn render_controls(controls: &[QueueControl], now: mongoq::bson::DateTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if controls.is_empty() {
        out.push_str("no queue is paused or limited\n");
        return out;
    }
    for c in controls {
        let mut parts = Vec::new();
        if c.paused {
            parts.push(match &c.reason {
                Some(reason) => format!("PAUSED ({reason})"),
                None => "PAUSED".to_string(),
            });
        }
        if let Some((until, reason)) = c.handler_pause_at(now.timestamp_millis()) {
            let left =
                std::time::Duration::from_millis((until - now.timestamp_millis()).unsigned_abs());
            parts.push(format!(
                "PAUSED by a handler until {} ({} from now): {reason}",
                mongoq::bson::DateTime::from_millis(until)
                    .try_to_rfc3339_string()
                    .unwrap_or_default(),
                mongoq::duration::format_duration(left)
            ));
        }
        if let Some(limit) = c.concurrency {
            parts.push(format!("concurrency {}/{limit} in use", c.in_use));
        }
        if let Some(rate) = c.rate {
            parts.push(format!("rate {rate}"));
        }
        if c.ordered {
            parts.push(if c.continue_on_failure {
                "ordered groups (a failure does not halt)".to_string()
            } else {
                "ordered groups".to_string()
            });
        }
        if let Some(limit) = c.group_concurrency {
            parts.push(format!("each group at most {limit} at once"));
        }
        if let Some(rate) = c.group_rate {
            parts.push(format!("each group rate {rate}"));
        }
        for own in &c.group_overrides {
            if let Some(limit) = own.concurrency {
                parts.push(format!("group {} at most {limit}", own.group));
            }
            if let Some(rate) = own.rate {
                parts.push(format!("group {} rate {rate}", own.group));
            }
            if let Some(weight) = own.weight {
                parts.push(format!("group {} weight {weight}", own.group));
            }
        }
        if parts.is_empty() {
            parts.push("no limits".into());
        }
        let _ = writeln!(out, "  {:<20} {}", c.queue, parts.join(", "));
    }
    out
}
