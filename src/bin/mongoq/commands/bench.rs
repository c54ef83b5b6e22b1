//! `mongoq bench`: runs the scenarios of [`crate::bench`], prints the
//! table (or JSON) and writes the chart.

use std::io::Write;
use std::process::ExitCode;

use mongoq::WorkerConfig;

use crate::cli::BenchArgs;
use crate::error::{failure, usage, CommandError};

pub fn bench(uri: &str, args: &BenchArgs) -> Result<ExitCode, CommandError> {
    if args.threads.contains(&0) || args.batch_sizes.contains(&0) || args.latency_rate <= 0.0 {
        return Err(usage(
            "--threads, --batch-sizes and --latency-rate must be positive",
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| failure(format!("cannot find the mongoq binary: {e}")))?;
    let defaults = WorkerConfig::default();
    let config = crate::bench::BenchConfig {
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
        only: args.only.clone(),
        exe,
        server_pid: args.server_pid,
        rounds: args.rounds as usize,
    };
    let started = std::time::Instant::now();
    let mut progress = |step: &str| {
        eprint!(
            "\r\x1b[2K[{:>5.0}s] {step}",
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    };
    let results = crate::bench::run(&config, &mut progress)?;
    eprintln!("\r\x1b[2K[{:>5.0}s] done", started.elapsed().as_secs_f64());
    std::fs::write(&args.chart, crate::bench::render_svg(&results)).map_err(|e| {
        failure(format!(
            "cannot write the chart to {}: {e} (choose another path with --chart)",
            args.chart.display()
        ))
    })?;
    let mut charts = args.chart.display().to_string();
    if let Some(svg) = crate::bench::render_fleet_svg(&results) {
        let path = args.chart.with_extension("fleet.svg");
        std::fs::write(&path, svg).map_err(|e| {
            failure(format!(
                "cannot write the chart to {}: {e} (choose another path with --chart)",
                path.display()
            ))
        })?;
        charts = format!("{charts}, {}", path.display());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    } else {
        print!("{}", crate::bench::render_table(&results));
        println!("\ncharts: {charts}");
    }
    Ok(ExitCode::SUCCESS)
}
