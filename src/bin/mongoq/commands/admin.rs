//! Operators' commands on single jobs and finished ones: `show`, `cancel`,
//! `retry-failed`, `purge`.

use std::process::ExitCode;

use mongoq::queue::{Cancel, RetrySelection};
use mongoq::schema::{fields, id_text};
use mongoq::Queue;

use crate::cli::{PurgeArgs, RetryFailedArgs};
use crate::error::{failure, usage, CommandError};

pub fn show(queue: &Queue, id: &str) -> Result<ExitCode, CommandError> {
    let job = queue.find_job(id)?;
    // What a waiting job waits for goes to stderr: stdout stays the
    // document, for scripts that parse it.
    if job.get_str(fields::STATUS) == Ok("waiting") {
        eprintln!("mongoq: {}", waiting_note(queue, &job)?);
    }
    if job.get_str(fields::STATUS) == Ok("pending") {
        if let Some((first, status)) = mongoq::groups::ordered::ahead_of(queue, &job)? {
            let group = job.get_str(fields::GROUP).unwrap_or_default();
            let first = id_text(&first);
            if status == "failed" {
                eprintln!("mongoq: its ordered group {group} is HALTED: job {first} failed for good (mongoq retry-failed --id {first}, or mongoq cancel {first}, lets the group go on)");
            } else {
                eprintln!("mongoq: its ordered group {group} runs job {first} ({status}) first");
            }
        }
    }
    let json = mongoq::bson::Bson::Document(job).into_relaxed_extjson();
    println!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// "waits for 2 of 3 jobs: ID (running), ID (pending)", or why a waiting
/// job without `after` has not started.
fn waiting_note(queue: &Queue, job: &mongoq::bson::Document) -> Result<String, CommandError> {
    if job.get(fields::AFTER).is_none() {
        return Ok(if job.get(fields::FLOW).is_some() {
            "this job starts a flow whose insert did not finish (the enqueue stopped before its last write); `mongoq cancel` it, and enqueue the flow again".into()
        } else {
            "this job is waiting but has no `after` list; a worker's flow sweep fails it with a reason within seconds".into()
        });
    }
    if job.get_bool(fields::LINKED) != Ok(true) {
        return Ok("waiting to be linked to its dependencies by a worker's flow sweep (within seconds of a worker running)".into());
    }
    let links = queue.dependencies_of(job)?;
    let done: Vec<String> = match job.get(fields::DEPS_DONE) {
        Some(mongoq::bson::Bson::Array(done)) => done.iter().map(id_text).collect(),
        _ => Vec::new(),
    };
    let open: Vec<String> = links
        .waits_on
        .iter()
        .filter(|(id, _)| !done.contains(&id_text(id)))
        .map(|(id, status)| format!("{} ({status})", id_text(id)))
        .collect();
    let shown: Vec<&str> = open.iter().take(20).map(String::as_str).collect();
    Ok(format!(
        "waits for {} of {} jobs: {}{}",
        open.len(),
        links.waits_on.len(),
        shown.join(", "),
        if open.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    ))
}

pub fn cancel(queue: &Queue, id: &str) -> Result<ExitCode, CommandError> {
    match queue.cancel(id)? {
        Cancel::Cancelled { dependents: 0 } => println!("job {id} cancelled: it will not run"),
        Cancel::Cancelled { dependents } => println!(
            "job {id} cancelled: it will not run, nor will the {dependents} waiting jobs that depended on it (cancelled too)"
        ),
        Cancel::Requested { owner } => println!(
            "job {id} is running on {owner}: marked to be cancelled; its worker drops it at the next lease extension (within a third of the lease), and the jobs waiting on it are cancelled then"
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
