//! `mongoq enqueue`: one job from the argument, or one per line of stdin,
//! streamed in batches of 1,000 so memory stays at one batch.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use mongoq::bson::{Bson, DateTime};
use mongoq::flow::{Flow, IfDepFails};
use mongoq::queue::admin::id_value;
use mongoq::queue::Waited;
use mongoq::{EnqueueOptions, Queue};

use crate::cli::EnqueueArgs;
use crate::error::{bad_input, exit, usage, CommandError};

/// A time given as RFC 3339 (`flag`) or as a duration from now: from now
/// on the server's clock, like every time the workers compare it with.
fn instant(
    queue: &Queue,
    flag: &str,
    text: Option<&str>,
    from_now: Option<std::time::Duration>,
) -> Result<Option<DateTime>, CommandError> {
    match (text, from_now) {
        (Some(text), _) => DateTime::parse_rfc3339_str(text).map(Some).map_err(|e| {
            usage(format!(
                "{flag} `{text}` is not an RFC 3339 time such as 2026-12-01T09:00:00Z: {e}"
            ))
        }),
        (None, Some(duration)) => Ok(Some(queue.clock_after(duration))),
        (None, None) => Ok(None),
    }
}

fn enqueue_options(queue: &Queue, args: &EnqueueArgs) -> Result<EnqueueOptions, CommandError> {
    let run_at = instant(queue, "--run-at", args.run_at.as_deref(), args.delay)?;
    if let Some(queue) = &args.queue {
        mongoq::queue::validate_queue_name(queue).map_err(|e| usage(format!("--queue: {e}")))?;
    }
    if let Some(group) = &args.group {
        mongoq::queue::validate_group_name(group).map_err(|e| usage(format!("--group: {e}")))?;
    }
    let expires_at = instant(
        queue,
        "--expires-at",
        args.expires_at.as_deref(),
        args.expires_in,
    )?;
    let if_dep_fails = match &args.if_dep_fails {
        Some(choice) => IfDepFails::parse(choice).map_err(|e| usage(e.to_string()))?,
        None => IfDepFails::Cancel,
    };
    let traceparent = match &args.traceparent {
        Some(text) if !mongoq::trace::is_traceparent(text) => {
            return Err(usage(format!(
                "--traceparent `{text}` is not a W3C traceparent such as 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 (version, trace id, parent span id, flags)"
            )))
        }
        Some(text) => Some(text.trim().to_string()),
        None => std::env::var("TRACEPARENT")
            .ok()
            .filter(|text| mongoq::trace::is_traceparent(text)),
    };
    Ok(EnqueueOptions {
        priority: args.priority,
        run_at,
        max_attempts: args.max_attempts,
        queue: args.queue.clone(),
        group: args.group.clone(),
        unique_key: args.unique_key.clone(),
        after: args.after.iter().map(|id| id_value(id)).collect(),
        if_dep_fails,
        expires_at,
        traceparent,
    })
}

/// `--debounce`: prints the id of the job that holds the data (stdout) and
/// what became of it (stderr).
fn debounce(
    queue: &Queue,
    data: Bson,
    options: &EnqueueOptions,
    window: std::time::Duration,
    quiet: bool,
) -> Result<ExitCode, CommandError> {
    let window_text = mongoq::duration::format_duration(window);
    let id = match queue.enqueue_debounced(data, options, window)? {
        mongoq::queue::Debounced::Inserted(id) => {
            eprintln!("mongoq: debounce: enqueued job {}; it runs in {window_text} unless another enqueue of its key comes first", id.to_hex());
            id.to_hex()
        }
        mongoq::queue::Debounced::Replaced(id) => {
            let id = mongoq::schema::id_text(&id);
            eprintln!("mongoq: debounce: replaced the data of pending job {id}; it runs in {window_text} unless another enqueue of its key comes first");
            id
        }
    };
    println!("{}", if quiet { "1".to_string() } else { id });
    Ok(ExitCode::SUCCESS)
}

/// `--throttle`: prints the id of the job kept (stdout) and whether this
/// enqueue was it or was dropped (stderr); exits 0 either way.
fn throttle(
    queue: &Queue,
    data: Bson,
    options: &EnqueueOptions,
    window: std::time::Duration,
    quiet: bool,
) -> Result<ExitCode, CommandError> {
    let (id, kept) = match queue.enqueue_throttled(data, options, window)? {
        mongoq::queue::Throttled::Kept(id) => {
            eprintln!(
                "mongoq: throttle: enqueued job {}; enqueues of its key are dropped for {}",
                id.to_hex(),
                mongoq::duration::format_duration(window)
            );
            (id.to_hex(), true)
        }
        mongoq::queue::Throttled::Dropped(id) => {
            let id = mongoq::schema::id_text(&id);
            eprintln!("mongoq: throttle: dropped; job {id} of this key was kept and its window has not passed");
            (id, false)
        }
    };
    println!(
        "{}",
        if quiet {
            u8::from(kept).to_string()
        } else {
            id
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn parse_data(text: &str) -> Result<Bson, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    Bson::try_from(value).map_err(|e| format!("not valid extended JSON ({e})"))
}

/// `--wait`: the job's result on stdout and exit 0, its error on stderr
/// and exit 1, or exit 124 when `--timeout` passes first.
fn wait(
    queue: &Queue,
    id: mongoq::bson::oid::ObjectId,
    args: &EnqueueArgs,
) -> Result<ExitCode, CommandError> {
    // Without --timeout, wait as long as it takes (a century is forever
    // for a shell script).
    let timeout = args
        .timeout
        .unwrap_or(std::time::Duration::from_secs(100 * 365 * 86_400));
    match queue.wait(&Bson::ObjectId(id), timeout)? {
        Waited::Completed(result) => {
            println!("{}", result.into_relaxed_extjson());
            Ok(ExitCode::SUCCESS)
        }
        Waited::Failed(error) => {
            eprintln!("mongoq: job {} failed: {error}", id.to_hex());
            Ok(ExitCode::from(exit::FAILURE))
        }
        Waited::TimedOut => {
            eprintln!(
                "mongoq: job {} is not finished after {}; it stays queued",
                id.to_hex(),
                mongoq::duration::format_duration(timeout)
            );
            Ok(ExitCode::from(exit::TIMEOUT))
        }
    }
}

/// `--flow FILE`: the graph, checked whole, then inserted at once; prints
/// each job's name and id.
fn enqueue_flow(queue: &Queue, path: &Path, args: &EnqueueArgs) -> Result<ExitCode, CommandError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_input(format!("cannot read the flow file {}: {e}", path.display())))?;
    let mut flow = Flow::from_json(&text)
        .map_err(|e| bad_input(format!("{}: {e}; nothing was enqueued", path.display())))?;
    if flow.queue.is_none() {
        flow.queue.clone_from(&args.queue);
    }
    let inserted = queue.enqueue_flow(&flow)?;
    if args.quiet {
        println!("{}", inserted.jobs.len());
    } else {
        let mut stdout = std::io::stdout().lock();
        for (name, id) in &inserted.jobs {
            let _ = writeln!(stdout, "{name}\t{}", id.to_hex());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn enqueue(queue: &Queue, args: &EnqueueArgs) -> Result<ExitCode, CommandError> {
    if let Some(path) = &args.flow {
        return enqueue_flow(queue, path, args);
    }
    let options = enqueue_options(queue, args)?;
    if let Some(json) = &args.json {
        let data = parse_data(json).map_err(|reason| bad_input(format!("the job data is {reason}; pass one JSON value, e.g. '{{\"to\": \"ada@example.com\"}}'")))?;
        if let Some(window) = args.debounce {
            return debounce(queue, data, &options, window, args.quiet);
        }
        if let Some(window) = args.throttle {
            return throttle(queue, data, &options, window, args.quiet);
        }
        let id = match queue.enqueue(data, &options) {
            Ok(id) => id,
            Err(duplicate @ mongoq::Error::Duplicate { .. }) => {
                // Like River's and Oban's unique jobs: a duplicate is not an
                // error for the producer, the job it wanted is already queued
                // (and with --wait, that job's result is what it waits for).
                eprintln!("mongoq: {duplicate}");
                let existing = match &duplicate {
                    mongoq::Error::Duplicate { existing, .. } => existing
                        .as_deref()
                        .and_then(|id| mongoq::bson::oid::ObjectId::parse_str(id).ok()),
                    _ => None,
                };
                match existing {
                    Some(id) if args.wait => return wait(queue, id, args),
                    _ => {
                        if args.quiet {
                            println!("0");
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            Err(error) => return Err(error.into()),
        };
        if args.wait {
            return wait(queue, id, args);
        }
        if args.quiet {
            println!("1");
        } else {
            println!("{}", id.to_hex());
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Stream stdin: parse a line, buffer it, insert every 1,000. Memory stays
    // at one batch however long the input is.
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut batch: Vec<Bson> = Vec::with_capacity(1_000);
    let mut total = 0usize;
    let mut flush = |batch: &mut Vec<Bson>, total: &mut usize| -> Result<(), CommandError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids = queue.enqueue_many(batch.drain(..), &options)?;
        *total += ids.len();
        if !args.quiet {
            for id in ids {
                let _ = writeln!(stdout, "{}", id.to_hex());
            }
        }
        Ok(())
    };
    for (index, line) in stdin.lines().enumerate() {
        let number = index + 1;
        let line =
            line.map_err(|e| bad_input(format!("cannot read stdin at line {number}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_data(&line) {
            Ok(data) => batch.push(data),
            Err(reason) => {
                flush(&mut batch, &mut total)?;
                return Err(bad_input(format!(
                        "line {number} is {reason}. The {total} jobs before it were enqueued and nothing after it was read; fix the line and resume with `tail -n +{number} FILE | mongoq enqueue`"
                    )));
            }
        }
        if batch.len() == 1_000 {
            flush(&mut batch, &mut total)?;
        }
    }
    flush(&mut batch, &mut total)?;
    if args.quiet {
        println!("{total}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    mod properties {
        use super::*;
        use crate::fuzz_cases;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

            /// Any line of a producer's input is a job or a clear refusal.
            #[test]
            fn any_line_is_a_job_or_a_reason(line in "\\PC{0,60}|\\{\"[$a-z]{1,8}\": ?[-0-9a-z\"{}\\[\\].,:]{0,30}\\}") {
                if let Err(reason) = parse_data(&line) {
                    prop_assert!(reason.starts_with("not valid"), "{reason}");
                }
            }

            /// Extended JSON that mongoq (or mongosh) writes reads back.
            #[test]
            fn written_extended_json_reads_back(n in any::<i64>(), text in "\\PC{0,20}", millis in -1_000_000_000_000i64..4_000_000_000_000) {
                let value = Bson::Document(mongodb::bson::doc! {
                    "n": n, "text": text, "at": DateTime::from_millis(millis),
                    "id": mongodb::bson::oid::ObjectId::new(),
                });
                let json = value.clone().into_relaxed_extjson().to_string();
                prop_assert_eq!(parse_data(&json).unwrap(), value);
            }
        }
    }
}
