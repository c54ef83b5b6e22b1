//! The ticker thread: the firing loop beside a worker (`mongoq work`
//! starts one; a library user may too), and its counts for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::firing::{Fired, Owner, LOOK_EVERY};
use super::store::Schedules;
use crate::shutdown::Shutdown;

/// How often the ticker re-reads the registry to divide the schedules.
const PEERS_EVERY: Duration = Duration::from_secs(5);

/// What a [`Ticker`] did so far, for `/metrics`.
#[derive(Debug, Default)]
pub struct TickerStats {
    fired: AtomicU64,
    skipped: AtomicU64,
    lost: AtomicU64,
    /// -1 until a tick was fired.
    lag_ms: AtomicI64,
}

impl TickerStats {
    fn record(&self, fired: &Fired) {
        self.fired.fetch_add(fired.fired, Relaxed);
        self.skipped.fetch_add(fired.skipped, Relaxed);
        self.lost.fetch_add(fired.lost, Relaxed);
        if let Some(lag) = fired.lag_ms {
            self.lag_ms.store(lag, Relaxed);
        }
    }

    /// The `mongoq_schedule_*` metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "mongoq_schedule_ticks_fired_total",
                "Schedule ticks this worker turned into jobs",
                self.fired.load(Relaxed),
            ),
            (
                "mongoq_schedule_ticks_skipped_total",
                "Schedule ticks skipped (missed under the catch-up policy, or overlapping)",
                self.skipped.load(Relaxed),
            ),
            (
                "mongoq_schedule_ticks_lost_total",
                "Schedule ticks another worker fired first",
                self.lost.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let lag = self.lag_ms.load(Relaxed);
        if lag >= 0 {
            let _ = writeln!(
                out,
                "# HELP mongoq_schedule_lag_seconds How late the last tick this worker fired was\n# TYPE mongoq_schedule_lag_seconds gauge\nmongoq_schedule_lag_seconds {:.3}",
                lag as f64 / 1000.0
            );
        }
        out
    }
}

/// A thread that fires the due schedules of `queues` until stopped.
pub struct Ticker {
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
    stats: Arc<TickerStats>,
}

impl Ticker {
    /// Starts it for the worker `worker_id` (its place among the live
    /// workers of the registry decides its share; `None`: it fires every
    /// schedule on time). It logs database errors and keeps looking.
    pub fn start(schedules: Schedules, queues: Vec<String>, worker_id: Option<String>) -> Ticker {
        let stop = Shutdown::new();
        let stopping = stop.clone();
        let stats = Arc::new(TickerStats {
            lag_ms: AtomicI64::new(-1),
            ..TickerStats::default()
        });
        let counted = Arc::clone(&stats);
        let thread = crate::sync::spawn("mongoq-schedules", move || {
            if let Err(error) = schedules.ensure_indexes() {
                log::warn!("schedules: could not create their indexes (will still look): {error}");
            }
            let mut owner = Owner::ALONE;
            // Through an outage: warn once, then back off quietly.
            let mut outage = crate::backoff::Backoff::new(LOOK_EVERY, Duration::from_secs(30));
            let mut failing = false;
            let mut peers_read: Option<Instant> = None;
            loop {
                if let Some(id) = &worker_id {
                    if peers_read.is_none_or(|at| at.elapsed() >= PEERS_EVERY) {
                        owner = place(&schedules, id).unwrap_or(owner);
                        peers_read = Some(Instant::now());
                    }
                }
                let pause = match schedules.fire_due(&queues, owner) {
                    Ok((fired, pause)) => {
                        if failing {
                            log::info!("schedules: the database answers again");
                            failing = false;
                            outage.reset();
                        }
                        counted.record(&fired);
                        if fired.fired > 0 || fired.skipped > 0 {
                            log::debug!(
                                "schedules: fired {}, skipped {}, {} fired by peers",
                                fired.fired,
                                fired.skipped,
                                fired.lost
                            );
                        }
                        pause
                    }
                    Err(error) => {
                        if failing {
                            log::debug!("schedules: still failing: {error}");
                        } else {
                            log::warn!(
                                "schedules: could not look for due schedules (will retry, backing off): {error}"
                            );
                            failing = true;
                        }
                        outage.advance()
                    }
                };
                if stopping.sleep(pause.max(Duration::from_millis(5))) {
                    return;
                }
            }
        });
        Ticker {
            stop,
            thread: Some(thread),
            stats,
        }
    }

    /// Its counts, for `/metrics`.
    pub fn stats(&self) -> Arc<TickerStats> {
        Arc::clone(&self.stats)
    }

    /// Stops it and waits for it.
    pub fn stop(mut self) {
        self.stop.request();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This worker's place among the live workers of the registry.
fn place(schedules: &Schedules, id: &str) -> Option<Owner> {
    let workers = match schedules.queue.workers() {
        Ok(workers) => workers,
        Err(error) => {
            log::debug!("schedules: could not read the registry (keeping the last share): {error}");
            return None;
        }
    };
    let mut live: Vec<&str> = workers
        .iter()
        .filter(|w| !w.late)
        .map(|w| w.id.as_str())
        .collect();
    live.sort_unstable();
    Some(match live.iter().position(|w| *w == id) {
        Some(index) => Owner {
            index,
            of: live.len(),
        },
        // Not registered yet: fire everything on time (a duplicate insert
        // is harmless; a missed tick is not).
        None => Owner::ALONE,
    })
}
