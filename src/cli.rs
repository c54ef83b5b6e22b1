//! The command line: flags only. [`crate::commands`] turns them into the
//! library's validated configuration; the library never sees clap types.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mongoq::duration::{parse_duration, parse_duration_range};

/// A distributed job queue in one MongoDB collection.
#[derive(Debug, Parser)]
#[command(name = "mongoq", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the queue lives; accepted by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// MongoDB connection string (auth, TLS, replica set and w=majority go here)
    #[arg(
        long,
        env = "MONGODB_URI",
        hide_env_values = true,
        default_value = "mongodb://localhost:27017",
        global = true
    )]
    pub uri: String,
    /// Database holding the queue
    #[arg(long, default_value = "distributed_queue", global = true)]
    pub db: String,
    /// Collection holding the queue
    #[arg(long, default_value = "queue", global = true)]
    pub collection: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the indexes the queue needs (idempotent) and list the indexes
    Init,
    /// Add jobs: one from the JSON argument, or one per line of JSON on stdin
    Enqueue(EnqueueArgs),
    /// Run jobs until SIGTERM/SIGINT (or, with --drain, until none is left)
    Work(WorkArgs),
    /// Show job counts by status, eligible vs scheduled, oldest eligible job
    Stats(StatsArgs),
    /// Measure throughput, latency and cost against the server (uses its own database)
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Database for the bench's throwaway collections (never the queue's)
    #[arg(long, default_value = "mongoq_bench")]
    pub bench_db: String,
    /// Backlog for the drain matrix and the large backlog shape
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub jobs: u32,
    /// The small backlog shape
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub small_backlog: u32,
    /// Thread counts of the drain matrix, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub threads: Vec<usize>,
    /// Batch sizes of the drain matrix, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,250,500")]
    pub batch_sizes: Vec<usize>,
    /// Batch size for the pattern comparison and cost scenarios [default: work's default]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub compare_batch_size: Option<u32>,
    /// Time budget of each peer pattern
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub peer_budget: Duration,
    /// Jobs inserted one at a time for the wake-up latency scenario
    #[arg(long, default_value_t = 50)]
    pub latency_jobs: usize,
    /// Their rate, per second
    #[arg(long, default_value_t = 10.0)]
    pub latency_rate: f64,
    /// Backlog for the memory scenario
    #[arg(long, default_value_t = 100_000)]
    pub memory_jobs: usize,
    /// How long the idle-CPU scenario watches
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Write the throughput chart (SVG) here
    #[arg(long, default_value = "bench-chart.svg")]
    pub chart: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job's data as JSON (extended JSON such as {"$date": …} works);
    /// without it, one job per line of stdin
    pub json: Option<String>,
    /// Higher runs first
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// Run no sooner than this long from now (e.g. 30s, 5m)
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339, e.g. 2026-12-01T09:00:00Z)
    #[arg(long)]
    pub run_at: Option<String>,
    /// Attempts before the job is marked failed (default: the worker's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Print only the number of jobs enqueued, not their ids
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Handler threads [default: number of CPUs]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Most jobs claimed per round trip
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// How long a claimed job is held without renewal; renewed every third
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Longest wait between polls when the queue is idle
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Attempts before a job is marked failed (jobs may set their own)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt, with jitter
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest delay between retries
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How long running jobs may finish after SIGTERM/SIGINT
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Name in lease_owner and logs [default: host:pid]
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Exit 0 once no job is eligible and none is running
    #[arg(long)]
    pub drain: bool,
    /// Do not watch a change stream for new jobs; only poll
    #[arg(long)]
    pub no_change_stream: bool,
    /// Handler: sleep a random time in MIN..MAX, like the original demo [default: 1s..5s]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_duration_range, conflicts_with = "exec")]
    pub simulate: Option<(Duration, Duration)>,
    /// Kill an --exec program that runs longer than this
    #[arg(long, value_parser = parse_duration, requires = "exec")]
    pub timeout: Option<Duration>,
    /// Handler: run PROGRAM [ARGS...] per job, job JSON on stdin (must be the last option)
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...")]
    pub exec: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}
