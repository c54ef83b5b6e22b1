//! What the bench measures with: command monitoring (round trips per
//! command), `/proc` readings (CPU ticks, RSS, memory), and descriptions of
//! the machine and the server for the report.

use mongodb::bson::doc;
use mongodb::event::command::CommandEvent;
use mongoq::Error;
use mongoq::Queue;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counts the commands a client sends and how long each kind took to be
/// answered (the driver's command monitoring), to see where time goes.
#[derive(Default)]
pub(super) struct Monitor {
    commands: AtomicU64,
    millis: Mutex<BTreeMap<String, f64>>,
}

impl Monitor {
    pub(super) fn observe(&self, event: CommandEvent) {
        match event {
            CommandEvent::Started(_) => {
                self.commands.fetch_add(1, Ordering::Relaxed);
            }
            CommandEvent::Succeeded(done) => self.add(&done.command_name, done.duration),
            CommandEvent::Failed(failed) => self.add(&failed.command_name, failed.duration),
            _ => {}
        }
    }

    fn add(&self, name: &str, took: Duration) {
        let mut millis = self
            .millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *millis.entry(name.to_string()).or_insert(0.0) += took.as_secs_f64() * 1000.0;
    }

    pub(super) fn reset(&self) {
        self.commands.store(0, Ordering::Relaxed);
        self.millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    pub(super) fn sent(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    pub(super) fn millis(&self) -> BTreeMap<String, f64> {
        self.millis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub(super) fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(super) fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = proc_meminfo_gib().map_or_else(String::new, |g| format!(", {g:.0} GiB RAM"));
    format!(
        "{cpus} CPUs ({model}){memory}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

pub(super) fn proc_meminfo_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0 / 1024.0)
}

pub(super) fn server_description(queue: &Queue) -> Result<String, Error> {
    let info = queue
        .database()
        .run_command(doc! {"buildInfo": 1})
        .run()
        .map_err(|e| queue.db_error("buildInfo", &e))?;
    let version = info.get_str("version").unwrap_or("unknown");
    let hello = queue.database().run_command(doc! {"hello": 1}).run().ok();
    let topology = match hello {
        Some(h) if h.get_str("setName").is_ok() => "replica set",
        Some(h) if h.get_str("msg").ok() == Some("isdbgrid") => "sharded (mongos)",
        _ => "standalone",
    };
    Ok(format!(
        "MongoDB-compatible server reporting version {version}, {topology}, at {}",
        queue.redacted_uri()
    ))
}
