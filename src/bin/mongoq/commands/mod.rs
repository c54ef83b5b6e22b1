//! The binary's commands: each file turns parsed flags into validated
//! library configuration, calls the library, and prints for people or
//! scripts. This file only dispatches.

mod admin;
mod bench;
pub mod dashboard;
mod docs;
mod enqueue;
mod fleet;
mod history;
mod init;
mod schedule;
pub mod stats;
mod work;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mongodb::event::{command::CommandEvent, EventHandler};
use mongoq::{Queue, QueueConfig};

use crate::cli::{Cli, Command};
use crate::error::CommandError;

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match &cli.command {
        Command::Bench(args) => return bench::bench(&cli.global.uri, args),
        Command::Completions(args) => return Ok(docs::completions(args.shell)),
        Command::Man => return docs::man(),
        _ => {}
    }
    // `work --report` counts the commands it sends; nothing else pays for
    // command monitoring.
    let commands = Arc::new(AtomicU64::new(0));
    let counting = matches!(&cli.command, Command::Work(args) if args.report.is_some());
    let counter = Arc::clone(&commands);
    let queue = Queue::connect_with(
        &QueueConfig {
            uri: cli.global.uri,
            database: cli.global.db,
            collection: cli.global.collection,
        },
        |options| {
            // `RUST_LOG=mongoq::commands=debug`: every command's shape and
            // time (see `mongoq::queue::commands`).
            let traced = log::log_enabled!(target: "mongoq::commands", log::Level::Debug);
            if counting || traced {
                let trace = traced.then(mongoq::queue::commands::CommandLog::default);
                options.command_event_handler = Some(EventHandler::callback(move |event| {
                    if matches!(event, CommandEvent::Started(_)) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(trace) = &trace {
                        trace.observe(&event);
                    }
                }));
            }
        },
    )?;
    match cli.command {
        Command::Init(args) => init::init(&queue, &args),
        Command::Enqueue(args) => enqueue::enqueue(&queue, &args),
        Command::Work(args) => work::work(queue, args, &commands),
        Command::Stats(args) if args.watch => stats::watch_stats(&queue, args.interval),
        Command::Stats(args) if args.history => history::history(&queue, &args),
        Command::Stats(args) if args.groups.is_some() => stats::groups(&queue, &args),
        Command::Stats(args) => stats::stats(&queue, &args),
        Command::Show(args) => admin::show(&queue, &args.id),
        Command::Cancel(args) => admin::cancel(&queue, &args.id),
        Command::RetryFailed(args) => admin::retry_failed(&queue, &args),
        Command::Purge(args) => admin::purge(&queue, &args),
        Command::Dashboard(args) => dashboard::dashboard(queue, &args),
        Command::Workers(args) => fleet::workers(&queue, &args),
        Command::Pause(args) => fleet::pause(&queue, &args),
        Command::Resume(args) => fleet::resume(&queue, &args),
        Command::Limit(args) => fleet::limit(&queue, &args),
        Command::Schedule(command) => schedule::schedule(&queue, &command),
        Command::Bench(_) | Command::Completions(_) | Command::Man => {
            unreachable!("handled above")
        }
    }
}
