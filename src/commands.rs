//! The binary's commands: turn parsed flags into validated library
//! configuration, call the library, and print for people or scripts.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mongoq::bson::{Bson, DateTime};
use mongoq::exec::ExecHandler;
use mongoq::retry::RetryPolicy;
use mongoq::simulate::SimulateHandler;
use mongoq::{EnqueueOptions, Handler, Queue, QueueConfig, Shutdown, Worker, WorkerConfig};

use crate::cli::{BenchArgs, Cli, Command, EnqueueArgs, InitArgs, Keep, StatsArgs, WorkArgs};

/// Exit code for input that is not valid (sysexits' EX_DATAERR).
pub(crate) const EXIT_BAD_INPUT: u8 = 65;
/// Exit code after a second stop signal.
const EXIT_SECOND_SIGNAL: i32 = 130;

/// A failed command: what to tell the user, and the exit code.
#[derive(Debug)]
pub struct CommandError {
    message: String,
    code: u8,
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<mongoq::Error> for CommandError {
    fn from(error: mongoq::Error) -> Self {
        CommandError {
            message: error.to_string(),
            code: 1,
        }
    }
}

impl CommandError {
    pub(crate) fn new(message: impl Into<String>, code: u8) -> CommandError {
        CommandError {
            message: message.into(),
            code,
        }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> CommandError {
    CommandError {
        message: message.into(),
        code: 2,
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CommandError> {
    match &cli.command {
        Command::Bench(args) => return bench(&cli.global.uri, args),
        Command::Completions(args) => return Ok(crate::ops::completions(args.shell)),
        Command::Man => return crate::ops::man(),
        _ => {}
    }
    let queue = Queue::connect(&QueueConfig {
        uri: cli.global.uri,
        database: cli.global.db,
        collection: cli.global.collection,
    })?;
    match cli.command {
        Command::Init(args) => init(&queue, &args),
        Command::Enqueue(args) => enqueue(&queue, &args),
        Command::Work(args) => work(queue, args),
        Command::Stats(args) if args.watch => crate::ops::watch_stats(&queue, args.interval),
        Command::Stats(args) => stats(&queue, &args),
        Command::Show(args) => crate::ops::show(&queue, &args.id),
        Command::Cancel(args) => crate::ops::cancel(&queue, &args.id),
        Command::RetryFailed(args) => crate::ops::retry_failed(&queue, &args),
        Command::Purge(args) => crate::ops::purge(&queue, &args),
        Command::Dashboard(args) => crate::ops::dashboard(queue, &args),
        Command::Bench(_) | Command::Completions(_) | Command::Man => {
            unreachable!("handled above")
        }
    }
}

fn init(queue: &Queue, args: &InitArgs) -> Result<ExitCode, CommandError> {
    let indexes = queue.ensure_indexes()?;
    let wanted = [
        (mongoq::job::fields::COMPLETED, args.retain_completed),
        (mongoq::job::fields::FAILED, args.retain_failed),
        (mongoq::job::fields::CANCELLED, args.retain_cancelled),
    ];
    for (status, keep) in wanted {
        if let Some(keep) = keep {
            let keep = match keep {
                Keep::For(duration) => Some(duration),
                Keep::Forever => None,
            };
            queue.set_retention(status, keep)?;
        }
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

fn enqueue_options(args: &EnqueueArgs) -> Result<EnqueueOptions, CommandError> {
    let run_at = match (&args.run_at, args.delay) {
        (Some(text), _) => Some(DateTime::parse_rfc3339_str(text).map_err(|e| {
            usage(format!(
                "--run-at `{text}` is not an RFC 3339 time such as 2026-12-01T09:00:00Z: {e}"
            ))
        })?),
        (None, Some(delay)) => Some(DateTime::from_millis(
            DateTime::now().timestamp_millis() + delay.as_millis() as i64,
        )),
        (None, None) => None,
    };
    if let Some(queue) = &args.queue {
        mongoq::job::validate_queue_name(queue).map_err(|e| usage(format!("--queue: {e}")))?;
    }
    Ok(EnqueueOptions {
        priority: args.priority,
        run_at,
        max_attempts: args.max_attempts,
        queue: args.queue.clone(),
        unique_key: args.unique_key.clone(),
    })
}

fn parse_data(text: &str) -> Result<Bson, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    Bson::try_from(value).map_err(|e| format!("not valid extended JSON ({e})"))
}

fn enqueue(queue: &Queue, args: &EnqueueArgs) -> Result<ExitCode, CommandError> {
    let options = enqueue_options(args)?;
    if let Some(json) = &args.json {
        let data = parse_data(json).map_err(|reason| CommandError {
            message: format!("the job data is {reason}; pass one JSON value, e.g. '{{\"to\": \"ada@example.com\"}}'"),
            code: EXIT_BAD_INPUT,
        })?;
        let id = match queue.enqueue(data, &options) {
            Ok(id) => id,
            Err(duplicate @ mongoq::Error::Duplicate { .. }) => {
                // Like River's and Oban's unique jobs: a duplicate is not an
                // error for the producer, the job it wanted is already queued.
                eprintln!("mongoq: {duplicate}");
                if args.quiet {
                    println!("0");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(error) => return Err(error.into()),
        };
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
        let line = line.map_err(|e| CommandError {
            message: format!("cannot read stdin at line {number}: {e}"),
            code: EXIT_BAD_INPUT,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_data(&line) {
            Ok(data) => batch.push(data),
            Err(reason) => {
                flush(&mut batch, &mut total)?;
                return Err(CommandError {
                    message: format!(
                        "line {number} is {reason}. The {total} jobs before it were enqueued and nothing after it was read; fix the line and resume with `tail -n +{number} FILE | mongoq enqueue`"
                    ),
                    code: EXIT_BAD_INPUT,
                });
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

fn worker_config(args: &WorkArgs) -> WorkerConfig {
    let defaults = WorkerConfig::default();
    WorkerConfig {
        threads: args.threads.map_or(defaults.threads, |n| n as usize),
        batch_size: args.batch_size as usize,
        lease: args.lease,
        poll_interval: args.poll_interval,
        max_attempts: args.max_attempts,
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

fn handler(args: WorkArgs) -> Result<Arc<dyn Handler>, CommandError> {
    if let Some(mut command) = args.exec {
        let program = command.remove(0);
        let handler = ExecHandler::new(&program, command, args.timeout).map_err(usage)?;
        return Ok(Arc::new(handler));
    }
    let (min, max) = args
        .simulate
        .unwrap_or((Duration::from_secs(1), Duration::from_secs(5)));
    Ok(Arc::new(SimulateHandler { min, max }))
}

fn work(queue: Queue, args: WorkArgs) -> Result<ExitCode, CommandError> {
    if args.lease < Duration::from_secs(1) {
        return Err(usage(
            "--lease must be at least 1s: leases are renewed every third of it",
        ));
    }
    if args.poll_interval.is_zero() {
        return Err(usage("--poll-interval must be more than 0s"));
    }
    for name in &args.queues {
        mongoq::job::validate_queue_name(name).map_err(|e| usage(format!("--queue: {e}")))?;
    }
    let config = worker_config(&args);
    let metrics_addr = args.metrics_addr.clone();
    let pages = args.metrics_dashboard.then(|| {
        mongoq::dashboard::handler(
            queue.clone(),
            mongoq::dashboard::DashboardConfig {
                read_only: true,
                auth_token: None,
            },
        )
    });
    let worker = Worker::with_shared_handler(queue, config, handler(args)?)?;
    let monitor = worker.monitor();
    if let Some(addr) = metrics_addr {
        let bound = crate::ops::serve_metrics(&addr, monitor.clone(), pages).map_err(usage)?;
        log::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    }
    crate::ops::notify_systemd(monitor);
    let shutdown = Shutdown::new();
    let signalled = shutdown.clone();
    ctrlc::set_handler(move || {
        let _ = mongoq::systemd::notify("STOPPING=1");
        if signalled.is_requested() {
            log::warn!(
                "second stop signal: exiting now; held jobs run again after their leases expire"
            );
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
        log::info!("stop signal received: finishing running jobs (a second signal exits at once)");
        signalled.request();
    })
    .map_err(|e| CommandError {
        message: format!("cannot install the signal handler: {e}"),
        code: 1,
    })?;
    let report = worker.run(&shutdown);
    let _ = mongoq::systemd::notify("STOPPING=1");
    log::debug!("report: {report:?}");
    Ok(ExitCode::SUCCESS)
}

fn stats(queue: &Queue, args: &StatsArgs) -> Result<ExitCode, CommandError> {
    let stats = queue.stats()?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_stats(queue, &stats, None));
    Ok(ExitCode::SUCCESS)
}

/// The stats table; with the previous sample and its age, rates too.
pub(crate) fn render_stats(
    queue: &Queue,
    stats: &mongoq::Stats,
    previous: Option<(&mongoq::Stats, Duration)>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "queue {}.{}",
        queue.database().name(),
        queue.collection().name()
    );
    for (status, count) in &stats.counts {
        let rate = previous
            .and_then(|(before, elapsed)| {
                let was = before.counts.get(status).copied().unwrap_or(0);
                (elapsed.as_secs_f64() > 0.0)
                    .then(|| (*count as f64 - was as f64) / elapsed.as_secs_f64())
            })
            .map(|rate| format!("  {rate:+.1}/s"))
            .unwrap_or_default();
        if status == "pending" {
            let _ = writeln!(
                out,
                "  {status:<10} {count:>10}{rate}  (eligible now {}, scheduled later {})",
                stats.eligible, stats.scheduled
            );
        } else {
            let _ = writeln!(out, "  {status:<10} {count:>10}{rate}");
        }
    }
    match stats.oldest_eligible_age_seconds {
        Some(age) => {
            let _ = writeln!(
                out,
                "  oldest eligible job has waited {}",
                mongoq::duration::format_duration(Duration::from_secs_f64(age))
            );
        }
        None => {
            let _ = writeln!(out, "  no job is waiting");
        }
    }
    out
}

fn bench(uri: &str, args: &BenchArgs) -> Result<ExitCode, CommandError> {
    if args.threads.contains(&0) || args.batch_sizes.contains(&0) || args.latency_rate <= 0.0 {
        return Err(usage(
            "--threads, --batch-sizes and --latency-rate must be positive",
        ));
    }
    let exe = std::env::current_exe().map_err(|e| CommandError {
        message: format!("cannot find the mongoq binary: {e}"),
        code: 1,
    })?;
    let defaults = WorkerConfig::default();
    let config = mongoq::bench::BenchConfig {
        uri: uri.to_string(),
        database: args.bench_db.clone(),
        jobs: args.jobs as usize,
        small_backlog: args.small_backlog as usize,
        threads: args.threads.clone(),
        batch_sizes: args.batch_sizes.clone(),
        default_threads: defaults.threads,
        default_batch: args
            .compare_batch_size
            .map_or(defaults.batch_size, |n| n as usize),
        peer_budget: args.peer_budget,
        latency_jobs: args.latency_jobs,
        latency_rate: args.latency_rate,
        memory_jobs: args.memory_jobs,
        idle_time: args.idle,
        exe,
    };
    let started = std::time::Instant::now();
    let mut progress = |step: &str| {
        eprint!(
            "\r\x1b[2K[{:>5.0}s] {step}",
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    };
    let results = mongoq::bench::run(&config, &mut progress)?;
    eprintln!("\r\x1b[2K[{:>5.0}s] done", started.elapsed().as_secs_f64());
    std::fs::write(&args.chart, mongoq::bench::render_svg(&results)).map_err(|e| CommandError {
        message: format!(
            "cannot write the chart to {}: {e} (choose another path with --chart)",
            args.chart.display()
        ),
        code: 1,
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    } else {
        print!("{}", mongoq::bench::render_table(&results));
        println!("\nchart: {}", args.chart.display());
    }
    Ok(ExitCode::SUCCESS)
}
