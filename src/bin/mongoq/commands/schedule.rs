//! `mongoq schedule add|list|remove|pause|resume`: the fleet's schedules
//! (see `mongoq::schedule`), as an operator edits them while workers run.

use std::process::ExitCode;

use mongoq::bson::DateTime;
use mongoq::schedule::{CatchUp, ScheduleDef, ScheduleInfo, Schedules, Spec, Timing};
use mongoq::Queue;

use super::enqueue::parse_data;
use crate::cli::{ScheduleAddArgs, ScheduleCommand};
use crate::error::{failure, usage, CommandError};

pub fn schedule(queue: &Queue, command: &ScheduleCommand) -> Result<ExitCode, CommandError> {
    let schedules = Schedules::new(queue);
    match command {
        ScheduleCommand::Add(args) => add(&schedules, args),
        ScheduleCommand::List(args) => list(&schedules, args.json),
        ScheduleCommand::Remove(args) => {
            if !schedules.remove(&args.name)? {
                return Err(failure(format!("no schedule is named {}", args.name)));
            }
            println!("schedule {} removed (the jobs it created stay)", args.name);
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Pause(args) | ScheduleCommand::Resume(args) => {
            let pause = matches!(command, ScheduleCommand::Pause(_));
            if !schedules.set_paused(&args.name, pause)? {
                return Err(failure(format!("no schedule is named {}", args.name)));
            }
            println!(
                "schedule {} {}",
                args.name,
                if pause { "paused" } else { "resumed from now" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(schedules: &Schedules, args: &ScheduleAddArgs) -> Result<ExitCode, CommandError> {
    let timing = match (&args.cron, args.every) {
        (Some(expr), _) => {
            // Checked here too, so a typo is a usage error naming the flag.
            Spec::cron(expr, args.tz.as_deref()).map_err(|e| usage(e.to_string()))?;
            Timing::Cron {
                expr: expr.clone(),
                tz: args.tz.clone(),
            }
        }
        (None, Some(every)) => {
            if every.as_secs() == 0 {
                return Err(usage("--every must be at least 1s"));
            }
            Timing::Every(every)
        }
        (None, None) => return Err(usage("give --cron EXPR or --every DURATION")),
    };
    let mut def = ScheduleDef::new(args.name.clone(), timing);
    def.queue.clone_from(&args.queue);
    if let Some(data) = &args.data {
        def.data = parse_data(data).map_err(|e| usage(format!("--data is {e}")))?;
    }
    def.priority = args.priority;
    def.max_attempts = args.max_attempts;
    def.catch_up = CatchUp::parse(&args.catch_up).unwrap_or_default();
    def.max_catch_up = args.max_catch_up;
    def.no_overlap = args.no_overlap;
    let next = schedules.add(&def)?;
    println!(
        "schedule {} saved; next tick {}",
        args.name,
        next.map_or_else(|| "never".to_string(), rfc3339)
    );
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
}

fn list(schedules: &Schedules, json: bool) -> Result<ExitCode, CommandError> {
    let all = schedules.list()?;
    if json {
        let rows: Vec<serde_json::Value> = all.iter().map(ScheduleInfo::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no schedules (add one with `mongoq schedule add NAME --every 5m`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<34} {:<10} {:<25} {:<25} {:>6} {:>7}  last job",
        "name", "timing", "queue", "next tick", "last tick", "fired", "skipped"
    );
    for s in &all {
        let next = if s.paused {
            "paused".to_string()
        } else {
            s.next_tick.map_or_else(|| "never".into(), rfc3339)
        };
        println!(
            "{:<20} {:<34} {:<10} {:<25} {:<25} {:>6} {:>7}  {}",
            s.name,
            s.describe,
            s.queue,
            next,
            s.last_tick.map_or_else(|| "-".into(), rfc3339),
            s.fired,
            s.skipped,
            s.last_job
                .as_ref()
                .map_or_else(|| "-".into(), |(_, status)| status.clone())
        );
    }
    Ok(ExitCode::SUCCESS)
}
