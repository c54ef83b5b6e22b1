//! `mongoq dashboard`: serve the web dashboard until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use mongoq::{Queue, Shutdown};

use crate::cli::DashboardArgs;
use crate::error::{failure, usage, CommandError};

/// `mongoq dashboard`: serve until SIGINT/SIGTERM.
pub fn dashboard(queue: Queue, args: &DashboardArgs) -> Result<ExitCode, CommandError> {
    let token = args.auth_token.clone().filter(|t| !t.is_empty());
    if let Some(token) = &token {
        if token.len() < 16 {
            return Err(usage(
                "--auth-token must be at least 16 characters (e.g. `openssl rand -hex 16`)",
            ));
        }
    }
    let config = crate::dashboard::DashboardConfig {
        read_only: args.read_only,
        auth_token: token.clone(),
        allowed_hosts: allowed_hosts(&args.listen, &args.allow_hosts),
    };
    let redacted = queue.redacted_uri();
    let server = crate::http::serve(&args.listen, 4, crate::dashboard::handler(queue, config))
        .map_err(|e| usage(e.to_string()))?;
    let bound = server.addr();
    if !bound.ip().is_loopback() && token.is_none() {
        log::warn!(
            "the dashboard listens on {bound}, beyond this host, without --auth-token: anyone who can reach it can {}",
            if args.read_only { "read every job" } else { "read, retry, cancel and delete jobs" }
        );
    }
    log::info!(
        "dashboard on http://{bound}/ for {redacted}{}{}",
        if args.read_only { " (read-only)" } else { "" },
        if token.is_some() {
            "; open /login?token=… once to sign in"
        } else {
            ""
        }
    );
    let stop = Shutdown::new();
    let signalled = stop.clone();
    ctrlc::set_handler(move || signalled.request())
        .map_err(|e| failure(format!("cannot install the signal handler: {e}")))?;
    while !stop.sleep(Duration::from_secs(3600)) {}
    server.stop();
    Ok(ExitCode::SUCCESS)
}

/// The host names a dashboard without a token answers to: the one it was
/// told to listen on and the operator's `--allow-host` names.
pub fn allowed_hosts(listen: &str, extra: &[String]) -> Vec<String> {
    std::iter::once(crate::dashboard::host_name(listen).to_string())
        .chain(extra.iter().cloned())
        .collect()
}
