//! Section 17, "groups": fair share between a queue's groups (issue 32).
//!
//! One group's backlog of [`BIG`] jobs is enqueued first, then [`SMALL`]
//! groups of [`EACH`] jobs; a fleet of [`PROCESSES`] `mongoq work`
//! processes of [`THREADS`] threads each (10 ms simulated jobs) starts on
//! it and drains it. Measured: how long the small groups' jobs wait from
//! the fleet's start to their own (p50, p99, max), the drain's rate (first
//! start to last completion) and the server's CPU per job. Side by side,
//! in interleaved rounds:
//!
//! - **without groups**: the same jobs in the same order, no `group`
//!   field (the small ones wait for the whole backlog);
//! - **with groups**: the big group and the small ones;
//! - **without groups, baseline binary**: when `MONGOQ_BENCH_BASELINE`
//!   names an older `mongoq`, the first drain again with it, so what a
//!   queue without groups costs the server can be read beside what it
//!   cost before fair share.
//!
//! Then [`MANY`] groups of a few jobs each, drained without a group limit,
//! with a group concurrency of 1, and as ordered groups (one at a time, in
//! enqueue order: a run in which any group's jobs started out of order, or
//! before the one before them ended, is not valid).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongoq::schema::fields;
use mongoq::{EnqueueOptions, Error, Queue};
use serde::Serialize;

use super::server::{median, median_of, median_rows, ServerMeter};
use super::Bench;

/// The big group's jobs (fewer when `--jobs` is below its default).
pub const BIG: usize = 50_000;
/// The small groups, and the jobs of each.
pub const SMALL: usize = 200;
pub const EACH: usize = 10;
const PROCESSES: usize = 4;
const THREADS: usize = 4;

/// One drain.
#[derive(Debug, Clone, Serialize)]
pub struct GroupsRow {
    pub mode: String,
    pub jobs: usize,
    /// The small groups' jobs: seconds from the fleet's start (or from
    /// their insert, when they come later) to theirs.
    pub small_wait_p50_s: f64,
    pub small_wait_p99_s: f64,
    pub small_wait_max_s: f64,
    /// From the fleet's start to the last completion.
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// Over the drain without groups (same binary) in the same round.
    pub vs_without_groups: f64,
    pub server_cpu_us_per_job: Option<f64>,
    /// With a group limit: the most group slot documents seen at once
    /// during the drain (sampled every 100 ms; one per group with jobs
    /// claimed or running, none per idle group).
    pub peak_slot_documents: Option<u64>,
}

#[derive(Clone)]
enum Mode {
    Plain,
    Grouped,
    /// The small groups enqueued [`LATE`] into the drain; their waits from
    /// their own insert.
    GroupedLate,
    Baseline(PathBuf),
    /// `groups` groups of `each` jobs (see [`MANY`]).
    Many {
        groups: usize,
        each: usize,
        limit: GroupLimit,
    },
}

/// What a drain of [`Mode::Many`] holds each group to.
#[derive(Clone, Copy, PartialEq)]
enum GroupLimit {
    None,
    /// A group concurrency of 1.
    One,
    /// Ordered groups (`mongoq limit QUEUE --ordered`).
    Ordered,
}

impl Mode {
    fn name(&self) -> String {
        match self {
            Mode::Plain => "without groups".into(),
            Mode::Grouped => "with groups".into(),
            Mode::GroupedLate => format!(
                "with groups, the small ones enqueued {} s into the drain",
                LATE.as_secs()
            ),
            Mode::Baseline(exe) => format!("without groups, baseline {}", short(exe)),
            Mode::Many {
                groups,
                each,
                limit,
            } => format!(
                "{} groups of {each}, {}",
                thousands(*groups),
                match limit {
                    GroupLimit::None => "no group limit",
                    GroupLimit::One => "group concurrency 1",
                    GroupLimit::Ordered => "ordered",
                }
            ),
        }
    }
}

/// The drains of many groups: (groups, jobs of each), each drained
/// without a group limit, with a group concurrency of 1 and ordered.
pub const MANY: [(usize, usize); 2] = [(1_000, 20), (10_000, 5)];

/// When the small groups arrive in [`Mode::GroupedLate`].
const LATE: Duration = Duration::from_secs(5);

impl Bench<'_> {
    pub(super) fn groups(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<GroupsRow>, Error> {
        let rounds = self.config.rounds.max(1);
        let mut modes = vec![Mode::Plain, Mode::Grouped, Mode::GroupedLate];
        if let Some(baseline) = std::env::var_os("MONGOQ_BENCH_BASELINE") {
            modes.push(Mode::Baseline(PathBuf::from(baseline)));
        }
        for (groups, each) in MANY {
            for limit in [GroupLimit::None, GroupLimit::One, GroupLimit::Ordered] {
                modes.push(Mode::Many {
                    groups,
                    each,
                    limit,
                });
            }
        }
        let mut runs = Vec::new();
        for round in 1..=rounds {
            let mut rows = Vec::new();
            for mode in &modes {
                progress(&format!("groups (round {round}/{rounds}): {}", mode.name()));
                rows.push(self.groups_drain(mode)?);
            }
            let plain = rows[0].jobs_per_second;
            let compared: Vec<f64> = modes
                .iter()
                .map(|mode| match mode {
                    // A drain of many groups against the same without a
                    // group limit.
                    Mode::Many { groups, each, .. } => {
                        let unlimited = Mode::Many {
                            groups: *groups,
                            each: *each,
                            limit: GroupLimit::None,
                        }
                        .name();
                        rows.iter()
                            .find(|r| r.mode == unlimited)
                            .map_or(plain, |r| r.jobs_per_second)
                    }
                    _ => plain,
                })
                .collect();
            for (row, base) in rows.iter_mut().zip(compared) {
                row.vs_without_groups = row.jobs_per_second / base;
            }
            runs.push(rows);
        }
        Ok(median_rows(&runs, |rows| GroupsRow {
            small_wait_p50_s: median(rows.iter().map(|r| r.small_wait_p50_s)),
            small_wait_p99_s: median(rows.iter().map(|r| r.small_wait_p99_s)),
            small_wait_max_s: median(rows.iter().map(|r| r.small_wait_max_s)),
            seconds: median(rows.iter().map(|r| r.seconds)),
            jobs_per_second: median(rows.iter().map(|r| r.jobs_per_second)),
            vs_without_groups: median(rows.iter().map(|r| r.vs_without_groups)),
            server_cpu_us_per_job: median_of(rows.iter().map(|r| r.server_cpu_us_per_job)),
            peak_slot_documents: rows.iter().filter_map(|r| r.peak_slot_documents).max(),
            ..rows[0].clone()
        }))
    }

    fn groups_drain(&self, mode: &Mode) -> Result<GroupsRow, Error> {
        let big = (self.config.jobs * 5 / 2).min(BIG);
        let queue = self.queue("bench_groups", None)?;
        let plain = !matches!(mode, Mode::Grouped | Mode::GroupedLate);
        let late = matches!(mode, Mode::GroupedLate);
        queue.ensure_indexes()?;
        let jobs = if let Mode::Many {
            groups,
            each,
            limit,
        } = mode
        {
            fill_many(&queue, *groups, *each)?;
            match limit {
                GroupLimit::None => {}
                GroupLimit::One => queue.set_group_concurrency("default", Some(1))?,
                GroupLimit::Ordered => queue.set_ordered("default", Some(false))?,
            }
            groups * each
        } else {
            fill_big(&queue, big, plain)?;
            if !late {
                fill_small(&queue, plain)?;
            }
            big + SMALL * EACH
        };
        let exe = match mode {
            Mode::Baseline(exe) => exe.clone(),
            _ => self.config.exe.clone(),
        };
        let meter = ServerMeter::start(&queue, self.config.server_pid);
        let slots = matches!(mode, Mode::Many { limit, .. } if *limit != GroupLimit::None)
            .then(|| SlotSampler::start(&queue));
        let started = DateTime::now();
        let clock = Instant::now();
        let mut children = Vec::new();
        for n in 0..PROCESSES {
            children.push(self.groups_worker(&exe, &queue, n)?);
        }
        let mut started = started;
        if late {
            std::thread::sleep(LATE);
            started = DateTime::now();
            fill_small(&queue, plain)?;
        }
        let mut failed = wait_all(children, clock + Duration::from_secs(1_800));
        let server = meter.per_job(&queue, jobs).cpu_us();
        let peak_slot_documents = slots.map(SlotSampler::stop);
        if failed.is_none() {
            failed = slots_left(&queue);
        }
        let ordered = matches!(
            mode,
            Mode::Many {
                limit: GroupLimit::Ordered,
                ..
            }
        );
        if failed.is_none() && ordered {
            failed = out_of_order(&queue);
        }
        let result = measure(&queue, started, jobs);
        for companion in [
            "",
            "_workers",
            "_queues",
            "_group_slots",
            "_windows",
            "_counts",
        ] {
            let name = format!("{}{companion}", queue.collection().name());
            let _ = queue.database().collection::<Document>(&name).drop().run();
        }
        if let Some(failed) = failed {
            return Err(Error::Invalid(format!(
                "bench groups ({}): {failed}",
                mode.name()
            )));
        }
        let (waits, mut seconds) = result?;
        if late {
            // The drain's length from the fleet's start.
            seconds += LATE.as_secs_f64();
        }
        Ok(GroupsRow {
            mode: mode.name(),
            jobs,
            small_wait_p50_s: percentile(&waits, 0.50),
            small_wait_p99_s: percentile(&waits, 0.99),
            small_wait_max_s: percentile(&waits, 1.0),
            seconds,
            jobs_per_second: jobs as f64 / seconds,
            vs_without_groups: 1.0,
            server_cpu_us_per_job: server,
            peak_slot_documents,
        })
    }

    fn groups_worker(
        &self,
        exe: &Path,
        queue: &Queue,
        n: usize,
    ) -> Result<std::process::Child, Error> {
        Command::new(exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args(["--collection", queue.collection().name(), "work"])
            .args([
                "--drain",
                "--threads",
                &THREADS.to_string(),
                "--max-attempts",
                "1",
            ])
            .args(["--simulate", "10ms..10ms", "--no-history"])
            .args([
                "--worker-id",
                &format!("bench-groups-{}-{n}", std::process::id()),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot run {}: {e}", exe.display())))
    }
}

/// Waits for the fleet's processes to exit; what went wrong, if anything.
fn wait_all(children: Vec<std::process::Child>, deadline: Instant) -> Option<String> {
    let mut failed = None;
    for (n, mut child) in children.into_iter().enumerate() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        failed = Some(format!("worker {n} exited with {status}"));
                    }
                    break;
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failed = Some(format!("worker {n} did not finish within 30 min"));
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    failed = Some(format!("worker {n}: {e}"));
                    break;
                }
            }
        }
    }
    failed
}

/// After a drain every group slot is given back, its document deleted: a
/// run that leaves one is not valid.
fn slots_left(queue: &Queue) -> Option<String> {
    let left = mongoq::groups::limits::slots_collection(queue)
        .count_documents(doc! {})
        .run()
        .unwrap_or(0);
    (left > 0).then(|| {
        format!("{left} group slot documents were left after the drain (every slot is given back when its job ends)")
    })
}

/// In an ordered drain each group's jobs (numbered `n` in enqueue order)
/// start in order, each after the one before it completed (within 5 ms):
/// the first group found otherwise, if any.
fn out_of_order(queue: &Queue) -> Option<String> {
    let read = || -> Result<Vec<Document>, mongodb::error::Error> {
        queue
            .collection()
            .find(doc! {})
            .projection(doc! {
                fields::GROUP: 1, "data.n": 1,
                fields::STARTED_AT: 1, fields::COMPLETED_AT: 1,
            })
            .sort(doc! {fields::GROUP: 1, "data.n": 1})
            .run()?
            .collect()
    };
    let jobs = match read() {
        Ok(jobs) => jobs,
        Err(e) => return Some(format!("cannot read the jobs to check their order: {e}")),
    };
    let mut previous: Option<(String, DateTime)> = None;
    for job in &jobs {
        let group = job.get_str(fields::GROUP).unwrap_or("").to_string();
        let (Ok(started), Ok(completed)) = (
            job.get_datetime(fields::STARTED_AT),
            job.get_datetime(fields::COMPLETED_AT),
        ) else {
            return Some(format!("a job did not complete: {job}"));
        };
        if let Some((last_group, last_completed)) = &previous {
            // Both are a worker's reading of the server's clock (each
            // within a few ms of it).
            if *last_group == group
                && started.timestamp_millis() + 5 < last_completed.timestamp_millis()
            {
                return Some(format!(
                    "group {group}: a job started before the one before it completed: {job}"
                ));
            }
        }
        previous = Some((group, *completed));
    }
    None
}

/// Counts the group slot documents every 100 ms, keeping the most seen.
struct SlotSampler {
    stop: mongoq::Shutdown,
    thread: std::thread::JoinHandle<u64>,
}

impl SlotSampler {
    fn start(queue: &Queue) -> SlotSampler {
        let stop = mongoq::Shutdown::new();
        let slots = mongoq::groups::limits::slots_collection(queue);
        let stopped = stop.clone();
        let thread = mongoq::sync::spawn("bench-slots", move || {
            let mut peak = 0;
            loop {
                if let Ok(n) = slots.count_documents(doc! {}).run() {
                    peak = peak.max(n);
                }
                if stopped.sleep(Duration::from_millis(100)) {
                    return peak;
                }
            }
        });
        SlotSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.request();
        self.thread.join().unwrap_or(0)
    }
}

/// Enqueues `jobs` (data, and the group when not `plain`).
fn insert(
    queue: &Queue,
    plain: bool,
    jobs: impl Iterator<Item = (Document, String)>,
) -> Result<(), Error> {
    let jobs = jobs.map(|(data, group)| {
        let options = EnqueueOptions {
            group: (!plain).then_some(group),
            ..EnqueueOptions::default()
        };
        (Bson::Document(data), options)
    });
    super::insert_jobs(queue, jobs)
}

/// Enqueues the big group's jobs; `plain`: with no `group`.
fn fill_big(queue: &Queue, big: usize, plain: bool) -> Result<(), Error> {
    insert(
        queue,
        plain,
        (0..big).map(|n| (doc! {"n": n as i64}, "big".to_string())),
    )
}

/// Enqueues `groups` groups of `each` jobs, interleaved as a busy
/// service's producers would.
fn fill_many(queue: &Queue, groups: usize, each: usize) -> Result<(), Error> {
    let jobs = (0..each).flat_map(move |n| {
        (0..groups).map(move |g| (doc! {"n": n as i64}, format!("customer-{g:05}")))
    });
    insert(queue, false, jobs)
}

/// 10000 → "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Enqueues the small groups' jobs (marked `small: true` in their data).
fn fill_small(queue: &Queue, plain: bool) -> Result<(), Error> {
    let jobs = (0..SMALL).flat_map(|g| {
        (0..EACH).map(move |n| {
            (
                doc! {"n": n as i64, "small": true},
                format!("customer-{g:03}"),
            )
        })
    });
    insert(queue, plain, jobs)
}

/// The small jobs' waits (seconds from `started` to each one's start,
/// sorted) and the drain's length (to the last completion); checks that
/// every job completed, once.
fn measure(queue: &Queue, started: DateTime, jobs: usize) -> Result<(Vec<f64>, f64), Error> {
    let jobs_coll = queue.collection();
    let done = jobs_coll
        .count_documents(doc! {fields::STATUS: "completed", fields::ATTEMPTS: 1})
        .run()
        .map_err(|e| queue.db_error("count (bench groups)", &e))?;
    if done != jobs as u64 {
        return Err(Error::Invalid(format!(
            "bench groups: {done} of {jobs} jobs completed at their first attempt: the run is not valid"
        )));
    }
    let seconds = |at: &DateTime| (at.timestamp_millis() - started.timestamp_millis()) as f64 / 1e3;
    let mut waits = Vec::new();
    for document in jobs_coll
        .find(doc! {"data.small": true})
        .projection(doc! {fields::STARTED_AT: 1})
        .run()
        .map_err(|e| queue.db_error("find (bench groups)", &e))?
    {
        let document: Document = document.map_err(|e| queue.db_error("find (bench groups)", &e))?;
        if let Ok(at) = document.get_datetime(fields::STARTED_AT) {
            waits.push(seconds(at));
        }
    }
    waits.sort_by(f64::total_cmp);
    let mut last = jobs_coll
        .find(doc! {})
        .sort(doc! {fields::COMPLETED_AT: -1})
        .limit(1)
        .projection(doc! {fields::COMPLETED_AT: 1})
        .run()
        .map_err(|e| queue.db_error("find (bench groups)", &e))?;
    let last = last
        .next()
        .transpose()
        .map_err(|e| queue.db_error("find (bench groups)", &e))?
        .and_then(|d| d.get_datetime(fields::COMPLETED_AT).ok().copied())
        .ok_or_else(|| Error::Invalid("bench groups: no completed_at".into()))?;
    Ok((waits, seconds(&last)))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[at - 1]
}

fn short(exe: &Path) -> String {
    exe.file_name().map_or_else(
        || exe.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The section's table.
pub fn render(rows: &[GroupsRow], out: &mut String) {
    use std::fmt::Write;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n17. groups: {} jobs ({} of one group, then {SMALL} groups of {EACH}), {PROCESSES} processes × {THREADS} threads, 10 ms jobs; waits from the fleet's start, or from the insert",
        rows[0].jobs,
        rows[0].jobs - SMALL * EACH,
    );
    let _ = writeln!(
        out,
        "   {:<58} {:>22} {:>9} {:>8} {:>14} {:>10}",
        "mode", "small groups wait p50/p99/max", "jobs/s", "vs", "server µs/job", "slot docs"
    );
    let _ = writeln!(
        out,
        "   (vs: the drain without groups; for many groups, the same groups without a group limit; slot docs: the most group slot documents seen at once)"
    );
    for r in rows {
        let waits = if r.small_wait_p50_s.is_nan() {
            "–".to_string()
        } else {
            format!(
                "{:.1} / {:.1} / {:.1} s",
                r.small_wait_p50_s, r.small_wait_p99_s, r.small_wait_max_s
            )
        };
        let _ = writeln!(
            out,
            "   {:<58} {:>22} {:>9.0} {:>7.2}× {:>14} {:>10}",
            r.mode,
            waits,
            r.jobs_per_second,
            r.vs_without_groups,
            r.server_cpu_us_per_job
                .map_or_else(|| "n/a".into(), |us| format!("{us:.0}")),
            r.peak_slot_documents
                .map_or_else(|| "–".into(), |n| format!("≤ {n}")),
        );
    }
}
