//! The cost scenarios of the bench: enqueue rate, wake-up latency, memory
//! on a large backlog, idle CPU, and running `mongoq work` as a process.

use mongodb::bson::{doc, Bson, Document};
use mongoq::EnqueueOptions;
use mongoq::Error;
use mongoq::Shutdown;
use mongoq::{Worker, WorkerConfig};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::probe::{epoch_ms, percentile, proc_cpu_ticks, proc_status_kb};
use super::{Bench, EnqueueRow, LatencyRow};

impl Bench<'_> {
    pub(super) fn enqueue(&self, n: usize) -> Result<Vec<EnqueueRow>, Error> {
        let mut rows = Vec::new();
        // `mongoq enqueue` reading stdin, as a shell pipeline would.
        let queue = self.queue("bench_enqueue", None)?;
        let mut input = String::with_capacity(n * 12);
        for i in 0..n {
            use std::fmt::Write as _;
            let _ = writeln!(input, "{{\"n\": {i}}}");
        }
        let started = Instant::now();
        let mut child = Command::new(&self.config.exe)
            .args(["--uri", &self.config.uri, "--db", &self.config.database])
            .args([
                "--collection",
                queue.collection().name(),
                "enqueue",
                "--quiet",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display()))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| Error::Invalid(format!("cannot feed mongoq enqueue: {e}")))?;
        }
        let status = child.wait().map_err(|e| Error::Invalid(e.to_string()))?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success()
            || queue.collection().count_documents(doc! {}).run().ok() != Some(n as u64)
        {
            return Err(Error::Invalid(
                "mongoq enqueue did not insert every job".into(),
            ));
        }
        rows.push(EnqueueRow {
            method: "mongoq enqueue (stdin)".into(),
            jobs: n,
            jobs_per_second: n as f64 / seconds,
        });
        let _ = queue.collection().drop().run();

        let queue = self.queue("bench_enqueue", None)?;
        let started = Instant::now();
        queue.enqueue_many(
            (0..n).map(|i| Bson::Int64(i as i64)),
            &EnqueueOptions::default(),
        )?;
        rows.push(EnqueueRow {
            method: "Queue::enqueue_many (library)".into(),
            jobs: n,
            jobs_per_second: n as f64 / started.elapsed().as_secs_f64(),
        });
        let _ = queue.collection().drop().run();

        let queue = self.queue("bench_enqueue", None)?;
        let started = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
            let docs: Vec<Document> = chunk
                .iter()
                .map(|i| doc! {"data": *i as i64, "status": "pending"})
                .collect();
            queue
                .collection()
                .insert_many(docs)
                .run()
                .map_err(|e| queue.db_error("insert", &e))?;
        }
        rows.push(EnqueueRow {
            method: "bare insert_many of {data, status} (reference)".into(),
            jobs: n,
            jobs_per_second: n as f64 / started.elapsed().as_secs_f64(),
        });
        let _ = queue.collection().drop().run();
        Ok(rows)
    }

    pub(super) fn latency(&self, change_streams: bool) -> Result<LatencyRow, Error> {
        let queue = self.queue("bench_latency", None)?;
        queue.ensure_indexes()?;
        let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
        let recorder = Arc::clone(&samples);
        let config = WorkerConfig {
            threads: 2,
            change_streams,
            ..WorkerConfig::default()
        };
        let poll = config.poll_interval;
        let worker = Worker::new(queue.clone(), config, move |job: &mongoq::Job| {
            if let Some(sent) = job.data.as_document().and_then(|d| d.get_f64("t").ok()) {
                let waited = epoch_ms() - sent;
                recorder
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(waited);
            }
            Ok(None)
        })?;
        let shutdown = Shutdown::new();
        let stopper = shutdown.clone();
        let handle = std::thread::spawn(move || worker.run(&stopper));
        // Let the worker start, find nothing, and settle into idle polling.
        std::thread::sleep(Duration::from_secs(2));
        let gap = Duration::from_secs_f64(1.0 / self.config.latency_rate);
        for _ in 0..self.config.latency_jobs {
            queue.enqueue(
                Bson::Document(doc! {"t": epoch_ms()}),
                &EnqueueOptions::default(),
            )?;
            std::thread::sleep(gap);
        }
        let deadline = Instant::now() + poll * 3 + Duration::from_secs(5);
        while samples.lock().map_or(0, |s| s.len()) < self.config.latency_jobs
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        shutdown.request();
        let _ = handle.join();
        let _ = queue.collection().drop().run();
        let mut samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        if samples.len() < self.config.latency_jobs {
            return Err(Error::Invalid(format!(
                "latency: only {} of {} jobs ran",
                samples.len(),
                self.config.latency_jobs
            )));
        }
        samples.sort_by(f64::total_cmp);
        Ok(LatencyRow {
            mode: if change_streams {
                "change stream".into()
            } else {
                format!(
                    "polling only (--poll-interval {})",
                    mongoq::duration::format_duration(poll)
                )
            },
            jobs: samples.len(),
            p50_ms: percentile(&samples, 0.50),
            p99_ms: percentile(&samples, 0.99),
            max_ms: samples.last().copied().unwrap_or(0.0),
        })
    }

    /// Peak RSS of a `mongoq work` process draining a large backlog.
    pub(super) fn memory(&self) -> Result<(f64, usize), Error> {
        let n = self.config.memory_jobs;
        let queue = self.queue("bench_memory", None)?;
        Bench::fill(&queue, n)?;
        let mut child = self.worker_process(
            queue.collection().name(),
            &["--drain", "--simulate", "0ms..0ms", "--no-change-stream"],
        )?;
        let mut peak_kb = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(kb) = proc_status_kb(child.id(), "VmRSS:") {
                peak_kb = peak_kb.max(kb);
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let _ = queue.collection().drop().run();
        Ok((peak_kb as f64 / 1024.0, n))
    }

    /// CPU used by an idle `mongoq work` (change stream on, default polling).
    pub(super) fn idle_cpu(&self) -> Result<f64, Error> {
        let queue = self.queue("bench_idle", None)?;
        queue.ensure_indexes()?;
        let mut child =
            self.worker_process(queue.collection().name(), &["--simulate", "0ms..0ms"])?;
        std::thread::sleep(Duration::from_secs(2));
        let before = proc_cpu_ticks(child.id());
        std::thread::sleep(self.config.idle_time);
        let after = proc_cpu_ticks(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let _ = queue.collection().drop().run();
        let (Some(before), Some(after)) = (before, after) else {
            return Err(Error::Invalid(
                "cannot read the worker's CPU time from /proc".into(),
            ));
        };
        // Linux reports CPU time in clock ticks of 1/100 s.
        let seconds = (after - before) as f64 / 100.0;
        Ok(100.0 * seconds / self.config.idle_time.as_secs_f64())
    }

    pub(super) fn worker_process(
        &self,
        collection: &str,
        args: &[&str],
    ) -> Result<std::process::Child, Error> {
        Command::new(&self.config.exe)
            .args([
                "--uri",
                &self.config.uri,
                "--db",
                &self.config.database,
                "--collection",
                collection,
                "work",
            ])
            .args(["--threads", &self.config.default_threads.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Invalid(format!("cannot run {}: {e}", self.config.exe.display())))
    }
}
