//! The operators' commands (show, cancel, retry-failed, purge, stats
//! --watch, completions, man) and the worker's operational threads
//! (metrics endpoint, systemd notification).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use mongoq::admin::{Cancel, RetrySelection};
use mongoq::http::{Request, Response};
use mongoq::{Monitor, Queue, Shutdown};

use crate::cli::{Cli, DashboardArgs, PurgeArgs, RetryFailedArgs};
use crate::commands::{usage, CommandError};

/// How often the metrics' queue depth is sampled.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

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
            return Err(CommandError::new(
                format!("job {id} is {status}: only pending or running jobs can be cancelled"),
                1,
            ))
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
            return Err(CommandError::new(
                format!("job {id} is {status}, not failed: nothing to retry"),
                1,
            ));
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

/// `stats --watch`: redraw in place on a terminal, append otherwise, until
/// SIGINT/SIGTERM (exit 0).
pub fn watch_stats(queue: &Queue, interval: Duration) -> Result<ExitCode, CommandError> {
    let stop = Shutdown::new();
    let signalled = stop.clone();
    ctrlc::set_handler(move || signalled.request())
        .map_err(|e| CommandError::new(format!("cannot install the signal handler: {e}"), 1))?;
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<(mongoq::Stats, Instant)> = None;
    while !stop.is_requested() {
        let stats = queue.stats()?;
        let now = Instant::now();
        let table = crate::commands::render_stats(
            queue,
            &stats,
            previous.as_ref().map(|(s, at)| (s, now - *at)),
        );
        let stamp = mongoq::bson::DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_default();
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

pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "mongoq", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man() -> Result<ExitCode, CommandError> {
    let command = Cli::command();
    let mut out = std::io::stdout().lock();
    let fail = |e: std::io::Error| CommandError::new(format!("cannot write the man page: {e}"), 1);
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .map_err(fail)?;
    // One section per subcommand, so every flag is in the page.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        writeln!(out, ".SH \"MONGOQ {}\"", name.to_uppercase()).map_err(fail)?;
        let sub = sub.clone().bin_name(format!("mongoq {name}"));
        let man = clap_mangen::Man::new(sub);
        let mut section = Vec::new();
        man.render_synopsis_section(&mut section).map_err(fail)?;
        man.render_description_section(&mut section).map_err(fail)?;
        man.render_options_section(&mut section).map_err(fail)?;
        // Its headings become subsections of this command's section.
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.write_all(section.as_bytes()).map_err(fail)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves `/metrics` (Prometheus) and `/healthz` on `addr`, and samples the
/// queue depth every few seconds for the metrics.
/// With `pages`, every other path is served by it (the read-only dashboard).
pub fn serve_metrics(
    addr: &str,
    monitor: Monitor,
    pages: Option<mongoq::http::Handler>,
) -> Result<std::net::SocketAddr, String> {
    let handler_monitor = monitor.clone();
    let bound = mongoq::http::serve(
        addr,
        2,
        Arc::new(move |request: &Request| {
            endpoint(&handler_monitor, request).unwrap_or_else(|| match &pages {
                Some(pages) => pages(request),
                None => index(request),
            })
        }),
    )?;
    std::thread::Builder::new()
        .name("mongoq-depth".into())
        .spawn(move || loop {
            if let Err(error) = monitor.sample_depth() {
                log::debug!("queue depth sample failed: {error}");
            }
            std::thread::sleep(DEPTH_EVERY);
        })
        .map_err(|e| format!("cannot start the depth sampler: {e}"))?;
    Ok(bound)
}

/// The worker's own endpoints; `None` for any other path.
fn endpoint(monitor: &Monitor, request: &Request) -> Option<Response> {
    let path = request.path.as_str();
    if !["/metrics", "/healthz", "/livez"].contains(&path) {
        return None;
    }
    if let Some(refused) = only_get(request) {
        return Some(refused);
    }
    Some(match path {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            monitor.metrics_text(),
        ),
        "/healthz" => {
            let health = monitor.health();
            Response::json(if health.healthy() { 200 } else { 503 }, &health)
        }
        _ => {
            let health = monitor.health();
            Response::json(if health.live() { 200 } else { 503 }, &health)
        }
    })
}

/// Every other path when the dashboard's pages are not served.
fn index(request: &Request) -> Response {
    if let Some(refused) = only_get(request) {
        return refused;
    }
    if request.path == "/" {
        Response::text(
            200,
            "mongoq worker: /metrics (Prometheus), /healthz (ready, alive, database reachable), /livez (alive)\n",
        )
    } else {
        Response::text(404, "not found: try /metrics or /healthz\n")
    }
}

/// `405` for anything but GET and HEAD.
fn only_get(request: &Request) -> Option<Response> {
    (request.method != "GET" && request.method != "HEAD")
        .then(|| Response::text(405, "only GET\n").with_header("Allow", "GET, HEAD"))
}

/// Under systemd (`Type=notify`): `READY=1` once the worker is connected
/// and its indexes exist, `WATCHDOG=1` while every thread makes progress,
/// and a one-line `STATUS=`. Does nothing outside systemd.
pub fn notify_systemd(monitor: Monitor) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = mongoq::systemd::watchdog_interval();
    let tick = watchdog.map_or(Duration::from_secs(5), |w| w.min(Duration::from_secs(5)));
    let spawned = std::thread::Builder::new()
        .name("mongoq-systemd".into())
        .spawn(move || {
            while !monitor.is_ready() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let send = |state: &str| {
                if let Err(error) = mongoq::systemd::notify(state) {
                    log::warn!("cannot notify systemd ({state}): {error}");
                }
            };
            send("READY=1\nSTATUS=connected; claiming jobs");
            let mut last_status = String::new();
            loop {
                let health = monitor.health();
                if watchdog.is_some() {
                    if health.live() {
                        send("WATCHDOG=1");
                    } else {
                        log::error!(
                            "threads stalled ({}): not feeding the systemd watchdog, so systemd restarts this worker",
                            health.stalled.join(", ")
                        );
                    }
                }
                let report = monitor.report();
                let (running, held) = monitor.load();
                let status = match &health.database_error {
                    Some(outage) => format!(
                        "database unreachable for {:.0}s; retrying",
                        outage.for_seconds
                    ),
                    None => format!(
                        "{running} running, {held} held; {} completed, {} retried, {} failed",
                        report.completed, report.retried, report.failed
                    ),
                };
                if status != last_status {
                    send(&format!("STATUS={status}"));
                    last_status = status;
                }
                std::thread::sleep(tick);
            }
        });
    if let Err(error) = spawned {
        log::warn!("cannot start the systemd notifier: {error}");
    }
}

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
    let config = mongoq::dashboard::DashboardConfig {
        read_only: args.read_only,
        auth_token: token.clone(),
    };
    let redacted = queue.redacted_uri();
    let bound = mongoq::http::serve(&args.listen, 4, mongoq::dashboard::handler(queue, config))
        .map_err(usage)?;
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
        .map_err(|e| CommandError::new(format!("cannot install the signal handler: {e}"), 1))?;
    while !stop.sleep(Duration::from_secs(3600)) {}
    Ok(ExitCode::SUCCESS)
}
