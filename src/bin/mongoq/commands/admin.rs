//! Operators' commands on single jobs and finished ones: `show`, `cancel`,
//! `retry-failed`, `purge`.

use std::process::ExitCode;

use mongoq::queue::{Cancel, RetrySelection};
use mongoq::Queue;

use crate::cli::{PurgeArgs, RetryFailedArgs};
use crate::error::{failure, usage, CommandError};

pub fn show(queue: &Queue, id: &str) -> Result<ExitCode, CommandError> {
    let job = queue.find_job(id)?;
    let json = mongoq::bson::Bson::Document(job).into_relaxed_extjson();
    println!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(queue: &Queue, id: &str) -> Result<ExitCode, CommandError> {
    match queue.cancel(id)? {
        Cancel::Cancelled => println!("job {id} cancelled: it will not run"),
        Cancel::Requested { owner } => println!(
            "job {id} is running on {owner}: marked to be cancelled; its worker drops it at the next lease extension (within a third of the lease)"
        ),
        Cancel::Finished { status } => {
            return Err(failure(format!("job {id} is {status}: only pending or running jobs can be cancelled")))
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retry_failed(queue: &Queue, args: &RetryFailedArgs) -> Result<ExitCode, CommandError> {
    let selection = match (&args.id, args.all, args.older_than) {
        (Some(id), _, _) => RetrySelection::Id(id.clone()),
        (None, true, _) => RetrySelection::All,
        (None, false, Some(age)) => RetrySelection::OlderThan(age),
        (None, false, None) => return Err(usage("give --id ID, --all or --older-than DURATION")),
    };
    let done = queue.retry_failed(&selection)?;
    if let RetrySelection::Id(id) = &selection {
        if done.retried == 0 && done.skipped_duplicates == 0 {
            let job = queue.find_job(id)?;
            let status = job.get_str("status").unwrap_or("(no status)");
            return Err(failure(format!(
                "job {id} is {status}, not failed: nothing to retry"
            )));
        }
    }
    println!("{} failed jobs are pending again", done.retried);
    if done.skipped_duplicates > 0 {
        println!(
            "{} left failed: a pending or running job already has their unique_key",
            done.skipped_duplicates
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn purge(queue: &Queue, args: &PurgeArgs) -> Result<ExitCode, CommandError> {
    let count = queue
        .purge(&args.status, args.older_than, args.dry_run)
        .map_err(|e| match e {
            mongoq::Error::Invalid(message) => usage(message),
            other => other.into(),
        })?;
    let age = mongoq::duration::format_duration(args.older_than);
    if args.dry_run {
        println!(
            "would delete {count} {} jobs finished more than {age} ago",
            args.status
        );
    } else {
        println!(
            "deleted {count} {} jobs finished more than {age} ago",
            args.status
        );
    }
    Ok(ExitCode::SUCCESS)
}
