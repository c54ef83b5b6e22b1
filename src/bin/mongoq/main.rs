//! The `mongoq` binary: parse flags, install the logger, run a command,
//! turn its error into a message and an exit code. Everything it does is
//! in the rooms below; the queue and the worker are the `mongoq` library.

mod bench;
mod cli;
mod commands;
mod dashboard;
mod error;
mod http;
mod metrics;
mod systemd;

/// Cases per property test: 100,000 unless `PROPTEST_CASES` says otherwise
/// (a longer round: `PROPTEST_CASES=1000000 cargo test --release --lib --bins properties`).
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // The bench runs workers in-process; their per-run lines would bury its
    // progress line, so it logs warnings only unless RUST_LOG says otherwise.
    let default_level = if matches!(cli.command, cli::Command::Bench(_)) {
        "warn"
    } else {
        "info"
    };
    // Milliseconds: a claim, a read or a stall is told apart from the next
    // in the log (see `mongoq::commands` in the README).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mongoq: {error}");
            error.exit_code()
        }
    }
}
