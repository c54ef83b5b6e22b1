//! The command line: flags only. [`crate::commands`] turns them into the
//! library's validated configuration; the library never sees clap types.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mongoq::duration::{parse_duration, parse_duration_range};

/// `mongoq --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MONGOQ_COMMIT"),
    ")"
);

/// A distributed job queue in one MongoDB collection.
#[derive(Debug, Parser)]
#[command(name = "mongoq", version = VERSION, about, long_about = None)]
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
    /// Create the indexes the queue needs (idempotent), set retention, list the indexes
    Init(InitArgs),
    /// Add jobs: one from the JSON argument, or one per line of JSON on stdin
    Enqueue(EnqueueArgs),
    /// Run jobs until SIGTERM/SIGINT (or, with --drain, until none is left)
    Work(WorkArgs),
    /// Show job counts by status, eligible vs scheduled, oldest eligible job
    Stats(StatsArgs),
    /// Print one job's whole document, readable
    Show(ShowArgs),
    /// Cancel a job: a pending one never runs; a running one is dropped at its next lease extension
    Cancel(CancelArgs),
    /// Put failed jobs back to pending with fresh attempts
    RetryFailed(RetryFailedArgs),
    /// Delete finished jobs older than a given age
    Purge(PurgeArgs),
    /// Serve the web dashboard: see and steer the queue from a browser
    Dashboard(DashboardArgs),
    /// List the workers of the fleet (the registry): live, and late ones
    Workers(WorkersArgs),
    /// Pause a queue fleet-wide: no worker starts its jobs until resumed
    Pause(PauseArgs),
    /// Resume a paused queue
    Resume(ResumeArgs),
    /// Set, clear or list fleet-wide limits: concurrency and rate per queue and per group, ordered groups, group weights
    Limit(LimitArgs),
    /// Recurring jobs: add, list, remove, pause and resume fleet-wide schedules
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Measure throughput, latency and cost against the server (uses its own database)
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `mongoq man > /usr/local/share/man/man1/mongoq.1`
    Man,
}

/// How long finished jobs are kept: a duration, or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    For(Duration),
    Forever,
}

fn parse_keep(text: &str) -> Result<Keep, String> {
    match text.trim() {
        "forever" | "off" | "never" => Ok(Keep::Forever),
        other => match parse_duration(other)? {
            d if d.as_secs() == 0 => Err("must be at least 1s (or `forever`)".into()),
            d => Ok(Keep::For(d)),
        },
    }
}

/// `--retain-metrics`: at least an hour (the history is kept per minute,
/// and the dashboard's shortest chart shows an hour).
fn parse_history_keep(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        keep if keep < Duration::from_secs(3600) => Err(
            "must be at least 1h (the dashboard's shortest chart shows an hour), e.g. 30d".into(),
        ),
        keep => Ok(keep),
    }
}

#[derive(Debug, Args)]
#[allow(clippy::struct_field_names)] // the flags are --retain-*
pub struct InitArgs {
    /// Delete completed jobs this long after completed_at (TTL index); `forever` keeps them
    #[arg(long, value_name = "DURATION|forever", value_parser = parse_keep)]
    pub retain_completed: Option<Keep>,
    /// Delete failed jobs this long after failed_at (TTL index); `forever` keeps them
    #[arg(long, value_name = "DURATION|forever", value_parser = parse_keep)]
    pub retain_failed: Option<Keep>,
    /// Delete cancelled jobs this long after cancelled_at (TTL index); `forever` keeps them
    #[arg(long, value_name = "DURATION|forever", value_parser = parse_keep)]
    pub retain_cancelled: Option<Keep>,
    /// Keep the queue's history (per-minute counts and wait and run times in
    /// <collection>_metrics) this long (TTL index) [default: 30d]
    #[arg(long, value_name = "DURATION", value_parser = parse_history_keep)]
    pub retain_metrics: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve on (keep it on localhost unless --auth-token is set)
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: String,
    /// Show only: hide and refuse retry, cancel and delete
    #[arg(long)]
    pub read_only: bool,
    /// Require this token (Authorization: Bearer, or open /login?token=… once)
    #[arg(long, env = "MONGOQ_DASHBOARD_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Without a token, also answer requests for this host name (repeat;
    /// IP addresses and localhost are always answered)
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The queue (`default` names jobs that name none)
    pub queue: String,
    /// Why, shown by stats and the dashboard
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The queue
    pub queue: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").multiple(true).args(["concurrency", "rate", "clear", "group_concurrency", "group_rate", "ordered", "weight"])))]
#[allow(clippy::struct_excessive_bools)] // on/off flags: --ordered, --continue-on-failure, --clear, --json
pub struct LimitArgs {
    /// The queue; without it, list every queue's limits
    #[arg(requires = "change")]
    pub queue: Option<String>,
    /// At most N jobs of the queue run at once, across all workers (with --group: of that group)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub concurrency: Option<u32>,
    /// At most N jobs of the queue start in any window of DURATION, e.g. 100/1m (with --group: of that group)
    #[arg(long, value_name = "N/DURATION")]
    pub rate: Option<String>,
    /// At most N jobs of each group of the queue run at once, across all workers
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000), conflicts_with = "group")]
    pub group_concurrency: Option<u32>,
    /// At most N jobs of each group of the queue start in any window of DURATION, across all workers
    #[arg(long, value_name = "N/DURATION", conflicts_with = "group")]
    pub group_rate: Option<String>,
    /// One group's own limits instead of the queue's for every group (with --concurrency N, --rate N/DURATION, --weight N, or --clear)
    #[arg(long, value_name = "NAME", requires = "queue")]
    pub group: Option<String>,
    /// With --group: the group takes N turns in a row per round of fair share (default 1)
    #[arg(long, value_name = "N", requires = "group", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub weight: Option<u32>,
    /// Each group's jobs start one at a time, in order; a job that fails for good halts its group until retried or cancelled
    #[arg(long, conflicts_with = "group")]
    pub ordered: bool,
    /// With --ordered: a job that fails for good does not halt its group
    #[arg(long, requires = "ordered")]
    pub continue_on_failure: bool,
    /// Remove the queue's limits (with --group: that group's own limits)
    #[arg(long, conflicts_with_all = ["concurrency", "rate", "group_concurrency", "group_rate", "ordered"])]
    pub clear: bool,
    /// Print JSON instead of a table (when listing)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job's _id (24-hex ObjectId as printed by enqueue, or the producer's own _id)
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job's _id
    pub id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all", "older_than"])))]
pub struct RetryFailedArgs {
    /// Retry this failed job
    #[arg(long)]
    pub id: Option<String>,
    /// Retry every failed job
    #[arg(long)]
    pub all: bool,
    /// Retry failed jobs that failed more than this long ago (e.g. 1h)
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Which finished jobs: completed, failed or cancelled
    #[arg(long)]
    pub status: String,
    /// Only jobs that finished more than this long ago (e.g. 7d; 0s for all)
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Duration,
    /// Count what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
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
    /// Run only these sections: limits, server, scale, handlers, schedules, flows, python, snooze, backlog, history, groups, drain (drain runs every section after it too)
    #[arg(long, value_delimiter = ',', value_name = "SECTION,...")]
    pub only: Vec<String>,
    /// The server's process id, to measure its CPU per job (a server on this machine)
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Rounds of the sections that repeat (server work, scale-out, handlers, flows, python, snooze, backlog, history, groups), interleaved; each figure is their median
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Write the throughput chart (SVG) here; sections 8 and 9 go beside it as NAME.fleet.svg
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
    /// Never start the job if it has not started this long from now (e.g.
    /// 10m): it ends cancelled, with the reason
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// Never start the job after this time (RFC 3339): it ends cancelled,
    /// with the reason
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// The W3C traceparent of the trace the job belongs to: its attempts'
    /// spans are its children [default: $TRACEPARENT, if valid]
    #[arg(long, value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Put the job(s) in this named queue [default: the default queue]
    #[arg(long)]
    pub queue: Option<String>,
    /// Put the job(s) in this group of the queue: a customer, a tenant
    /// (the `group` field) [default: the queue's default group]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Refuse the job when a pending or running job has this key (single job only)
    #[arg(long, requires = "json")]
    pub unique_key: Option<String>,
    /// With --unique-key: the last of a burst runs, once, this long after
    /// the burst (replaces the pending job's data and pushes its start)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "unique_key", conflicts_with_all = ["throttle", "delay", "run_at", "wait"])]
    pub debounce: Option<Duration>,
    /// With --unique-key: the first runs, and enqueues of the key are
    /// dropped for this long after it
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "unique_key", conflicts_with = "wait")]
    pub throttle: Option<Duration>,
    /// Print only the number of jobs enqueued, not their ids
    #[arg(long, short)]
    pub quiet: bool,
    /// Wait until the job is completed (print its result, exit 0) or failed
    /// (its error on stderr, exit 1); single job only
    #[arg(long, requires = "json")]
    pub wait: bool,
    /// Give up waiting after this long (exit 124; the job stays queued)
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
    /// Wait for this job (its _id) to complete first; repeat for several.
    /// The job is `waiting` until all have completed
    #[arg(long, value_name = "ID")]
    pub after: Vec<String>,
    /// What a dependency that fails or is cancelled does to this job:
    /// cancel it too, or run it anyway
    #[arg(long, value_name = "cancel|run", requires = "after")]
    pub if_dep_fails: Option<String>,
    /// Insert the graph of jobs in FILE ({"jobs": [{"name", "data",
    /// "after": [names]}]}) at once: none runs before all are in
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "after", "unique_key", "wait", "delay", "run_at"])]
    pub flow: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // on/off flags: --drain, --no-change-stream, --no-history, …
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
    /// Snoozes a job may take (its handler said "not now", no attempt
    /// charged); one more fails it, with the reason
    #[arg(long, default_value_t = mongoq::worker::DEFAULT_MAX_SNOOZES, value_name = "N")]
    pub max_snoozes: u32,
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
    /// Do not record the queue's history (per-minute counts and wait and
    /// run times in <collection>_metrics, for `stats --history` and the
    /// dashboard's charts)
    #[arg(long)]
    pub no_history: bool,
    /// Take jobs from this named queue; repeat for several [default: default]
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    /// Serve Prometheus metrics (/metrics) and health (/healthz) on HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Also serve the dashboard's pages, read-only, on --metrics-addr
    #[arg(long, requires = "metrics_addr")]
    pub metrics_dashboard: bool,
    /// With --metrics-dashboard, also answer requests for this host name
    /// (repeat; IP addresses and localhost are always answered)
    #[arg(
        long = "allow-host",
        value_name = "NAME",
        requires = "metrics_dashboard"
    )]
    pub allow_hosts: Vec<String>,
    /// Handler: sleep a random time in MIN..MAX (or DUR exactly), like the original demo [default: 1s..5s]
    #[arg(long, value_name = "MIN..MAX|DUR", value_parser = parse_duration_range, conflicts_with_all = ["exec", "pipe"])]
    pub simulate: Option<(Duration, Duration)>,
    /// Stop a job's --exec or --pipe program that runs longer than this
    /// (TERM to its process group, KILL 500ms later)
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// With --pipe: replace a handler process after it ran N jobs
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "pipe")]
    pub pipe_max_jobs: Option<u64>,
    /// When the worker stops, write what it did (counts and round trips) to PATH as JSON
    #[arg(long, value_name = "PATH")]
    pub report: Option<std::path::PathBuf>,
    /// Handler: run PROGRAM [ARGS...] per job, job JSON on stdin (must be the last option)
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...")]
    pub exec: Option<Vec<String>>,
    /// Handler: keep one PROGRAM [ARGS...] per thread running, fed jobs as
    /// JSON lines on stdin, answering on stdout (must be the last option)
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARGS]...", conflicts_with = "exec")]
    pub pipe: Option<Vec<String>>,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // --json, --watch, --history, --recount
pub struct StatsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Refresh in place until interrupted
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// Refresh period with --watch
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "watch")]
    pub interval: Duration,
    /// Print the history instead: per step, completed, failed, retried,
    /// cancelled and snoozed, and wait and run time p50/p95 (kept in
    /// <collection>_metrics past the jobs' own retention)
    #[arg(long, conflicts_with = "watch")]
    pub history: bool,
    /// With --history: only this named queue [default: all queues]
    #[arg(long = "queue", value_name = "NAME", requires = "history")]
    pub history_queue: Option<String>,
    /// With --history: how far back
    #[arg(long, default_value = "1h", value_parser = parse_duration, requires = "history")]
    pub since: Duration,
    /// With --history: one row per this long [default: a round step giving at most 60 rows]
    #[arg(long, value_parser = parse_duration, requires = "history")]
    pub step: Option<Duration>,
    /// Count every job again and replace the kept counts (after jobs were
    /// deleted or their status changed by hand; reads every job once)
    #[arg(long, conflicts_with_all = ["watch", "history"])]
    pub recount: bool,
    /// Count every job not counted yet, however long it takes (by default
    /// a read gives that pass 1.5 s; past it, the counts are the kept ones
    /// and say how many jobs they leave out, until a worker counts them)
    #[arg(long, conflicts_with_all = ["watch", "history"])]
    pub exact: bool,
    /// Print the busiest groups of this queue instead: pending and running
    /// jobs per group, most pending first, and its default group
    #[arg(long, value_name = "QUEUE", conflicts_with_all = ["watch", "history", "recount", "exact"])]
    pub groups: Option<String>,
    /// With --groups: how many groups to list
    #[arg(long, value_name = "N", default_value_t = 20, requires = "groups")]
    pub top: usize,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule, or update the one of that name
    Add(ScheduleAddArgs),
    /// List the schedules: next tick, last tick, their last job's status
    List(ScheduleListArgs),
    /// Remove a schedule (the jobs it created stay)
    Remove(ScheduleNameArgs),
    /// Pause a schedule: no tick fires until resumed
    Pause(ScheduleNameArgs),
    /// Resume a paused schedule from now (ticks missed while paused are not run)
    Resume(ScheduleNameArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("timing").required(true).args(["cron", "every"])))]
pub struct ScheduleAddArgs {
    /// The schedule's name (its jobs carry `schedule: NAME`)
    pub name: String,
    /// A cron expression: 5 fields, an optional 6th (seconds) first, or @hourly, @daily…
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in [default: UTC]
    #[arg(long, value_name = "ZONE", requires = "cron")]
    pub tz: Option<String>,
    /// Tick every DURATION instead (at whole multiples of it since 1970-01-01T00:00Z)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// The queue its jobs go to [default: the default queue]
    #[arg(long)]
    pub queue: Option<String>,
    /// Each job's data as JSON (extended JSON works) [default: {}]
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Each job's priority
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i64,
    /// Each job's attempts before failed [default: the worker's]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Ticks missed while no worker ran: none (skip), one (run the latest once), all
    #[arg(long, default_value = "one", value_parser = ["none", "one", "all"])]
    pub catch_up: String,
    /// With --catch-up all: run at most this many missed ticks
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_catch_up: u32,
    /// Skip a tick while the previous tick's job is still pending or running
    #[arg(long)]
    pub no_overlap: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleListArgs {
    /// Print JSON (dates as RFC 3339 UTC strings)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleNameArgs {
    /// The schedule's name
    pub name: String,
}
