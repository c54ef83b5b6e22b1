//! `mongoq init`: create the indexes (the queue's and the schedules';
//! idempotent), set retention, list both.

use std::process::ExitCode;

use mongoq::{Queue, Status};

use crate::cli::{InitArgs, Keep};
use crate::error::CommandError;

pub fn init(queue: &Queue, args: &InitArgs) -> Result<ExitCode, CommandError> {
    queue.ensure_indexes()?;
    // The schedules' indexes too (one is on the queue's collection), so the
    // first worker on a big collection does not build one at its start.
    mongoq::schedule::Schedules::new(queue).ensure_indexes()?;
    let history = mongoq::history::History::new(queue);
    match args.retain_metrics {
        Some(keep) => history.set_retention(keep)?,
        None => history.ensure_indexes()?,
    }
    let indexes = queue.index_names()?;
    let wanted = [
        (Status::Completed, args.retain_completed),
        (Status::Failed, args.retain_failed),
        (Status::Cancelled, args.retain_cancelled),
    ];
    let before = queue.retention()?;
    let mut recount = false;
    for (status, keep) in wanted {
        if let Some(keep) = keep {
            let keep = match keep {
                Keep::For(duration) => Some(duration),
                Keep::Forever => None,
            };
            // A status whose TTL deleted jobs unseen was counted directly;
            // kept counts of it start again from the jobs themselves.
            let had_ttl = before
                .iter()
                .any(|r| r.status == status && r.keep.is_some());
            recount |= had_ttl && keep.is_none();
            queue.set_retention(status, keep)?;
        }
    }
    if recount {
        mongoq::counts::Counts::new(queue).recount()?;
    }
    let indexes = if wanted.iter().any(|(_, keep)| keep.is_some()) {
        queue.index_names()?
    } else {
        indexes
    };
    println!(
        "indexes on {}.{}: {}",
        queue.database().name(),
        queue.collection().name(),
        indexes.join(", ")
    );
    if let Some(keep) = history.retention()? {
        println!(
            "history (per-minute counts in {}) is kept {}",
            history.collection().name(),
            mongoq::duration::format_duration(keep)
        );
    }
    for retention in queue.retention()? {
        match retention.keep {
            Some(keep) => println!(
                "{} jobs are deleted {} after {}",
                retention.status,
                mongoq::duration::format_duration(keep),
                retention.field
            ),
            None => println!("{} jobs are kept forever", retention.status),
        }
    }
    Ok(ExitCode::SUCCESS)
}
