//! `mongoq work`: flags become a validated [`WorkerConfig`], the handler is
//! chosen, the metrics server and the systemd notifier start beside the
//! worker, and stop signals become the worker's shutdown.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongoq::handlers::{ExecHandler, PipeConfig, PipeHandler, SimulateHandler};
use mongoq::schedule::{Schedules, Ticker};
use mongoq::worker::RetryPolicy;
use mongoq::{Handler, Queue, Shutdown, Worker, WorkerConfig};

use crate::cli::WorkArgs;
use crate::error::{exit, failure, usage, CommandError};
use crate::metrics::MetricsServer;
use crate::systemd::{self, Notifier};

/// The flags as a worker configuration (validated by the caller).
fn worker_config(args: &WorkArgs) -> WorkerConfig {
    let defaults = WorkerConfig::default();
    WorkerConfig {
        threads: args.threads.map_or(defaults.threads, |n| n as usize),
        history: !args.no_history,
        batch_size: args.batch_size as usize,
        lease: args.lease,
        poll_interval: args.poll_interval,
        max_attempts: args.max_attempts,
        max_snoozes: args.max_snoozes,
        shutdown_grace: args.shutdown_grace,
        worker_id: args.worker_id.clone().unwrap_or(defaults.worker_id),
        drain: args.drain,
        retry: RetryPolicy {
            base: args.backoff_base,
            max: args.backoff_max,
        },
        change_streams: !args.no_change_stream,
        queues: if args.queues.is_empty() {
            defaults.queues
        } else {
            args.queues.clone()
        },
    }
}

fn handler(args: WorkArgs, threads: usize) -> Result<Arc<dyn Handler>, CommandError> {
    if args.timeout.is_some() && args.exec.is_none() && args.pipe.is_none() {
        return Err(usage(
            "--timeout applies to --exec and --pipe programs; give one of them (put it last), or drop --timeout",
        ));
    }
    if let Some(mut command) = args.pipe {
        let program = command.remove(0);
        let mut config = PipeConfig::new(program, command, threads);
        config.timeout = args.timeout;
        config.max_jobs = args.pipe_max_jobs;
        return Ok(Arc::new(PipeHandler::new(config)?));
    }
    if let Some(mut command) = args.exec {
        let program = command.remove(0);
        let handler = ExecHandler::new(&program, command, args.timeout)?;
        return Ok(Arc::new(handler));
    }
    let (min, max) = args
        .simulate
        .unwrap_or((Duration::from_secs(1), Duration::from_secs(5)));
    Ok(Arc::new(SimulateHandler { min, max }))
}

pub fn work(queue: Queue, args: WorkArgs, commands: &AtomicU64) -> Result<ExitCode, CommandError> {
    let config = worker_config(&args);
    let report_path = args.report.clone();
    config.validate()?;
    let metrics_addr = args.metrics_addr.clone();
    let pages = args.metrics_dashboard.then(|| {
        crate::dashboard::handler(
            queue.clone(),
            crate::dashboard::DashboardConfig {
                read_only: true,
                auth_token: None,
                allowed_hosts: super::dashboard::allowed_hosts(
                    args.metrics_addr.as_deref().unwrap_or_default(),
                    &args.allow_hosts,
                ),
            },
        )
    });
    let threads = config.threads;
    let queues = config.queues.clone();
    let worker_id = config.worker_id.clone();
    let worker = Worker::with_shared_handler(queue.clone(), config, handler(args, threads)?)?;
    let monitor = worker.monitor();
    // Every worker fires the due schedules of its queues (the insert of a
    // tick's job is the election; see mongoq::schedule).
    let ticker = Ticker::start(Schedules::new(&queue), queues, Some(worker_id));
    let metrics = match metrics_addr {
        Some(addr) => {
            let server = MetricsServer::start(&addr, monitor.clone(), pages, Some(ticker.stats()))
                .map_err(|e| usage(e.to_string()))?;
            let bound = server.addr();
            log::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
            Some(server)
        }
        None => None,
    };
    let notifier = Notifier::start(monitor);
    let shutdown = Shutdown::new();
    let signalled = shutdown.clone();
    ctrlc::set_handler(move || {
        let _ = systemd::notify("STOPPING=1");
        if signalled.is_requested() {
            log::warn!(
                "second stop signal: exiting now; held jobs run again after their leases expire"
            );
            std::process::exit(exit::SECOND_SIGNAL);
        }
        log::info!("stop signal received: finishing running jobs (a second signal exits at once)");
        signalled.request();
    })
    .map_err(|e| failure(format!("cannot install the signal handler: {e}")))?;
    let report = worker.run(&shutdown);
    ticker.stop();
    let _ = systemd::notify("STOPPING=1");
    notifier.stop();
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    log::debug!("report: {report:?}");
    if let Some(path) = report_path {
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        if let Some(fields) = json.as_object_mut() {
            fields.insert(
                "round_trips".into(),
                commands.load(Ordering::Relaxed).into(),
            );
        }
        std::fs::write(&path, format!("{json}\n")).map_err(|e| {
            failure(format!(
                "cannot write the report to {}: {e} (choose another path with --report)",
                path.display()
            ))
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
