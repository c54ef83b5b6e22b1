//! Firing: every worker serving a schedule's queue looks at the due
//! schedules about once a second, and the insert itself is the election.
//!
//! A tick's job has a deterministic `_id`, `NAME@<tick as RFC 3339>`, so
//! when two workers fire the same tick the second insert is a duplicate
//! key error, never a second job. The schedule's `last_tick` then moves
//! forward with a conditional update (it must still hold the value read),
//! so it only ever advances, and a tick at or before it is never fired
//! again, even after retention deleted its job. A worker that dies between
//! the insert and that update leaves `last_tick` behind: the next look
//! recomputes the same ticks, finds their jobs there, and moves it on.
//!
//! Time is the server's (`Queue::now`, see `crate::clock`), so a worker
//! whose clock is fast fires nothing early and one whose clock is slow
//! fires nothing twice. The cost of a look does not grow with the jobs:
//! one indexed query for the schedules due within the next second.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime as Utc8601, SecondsFormat, Utc};
use mongodb::bson::{doc, Bson, DateTime, Document};

use super::spec::utc_millis;
use super::store::{spec_of, CatchUp, Schedules};
use crate::error::Error;
use crate::queue::enqueue::{is_duplicate_key, new_job_document};
use crate::queue::EnqueueOptions;
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;

/// The longest a ticker sleeps between looks.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How late a tick may be and still count as on time (for `--catch-up none`).
const ON_TIME: Duration = Duration::from_secs(2);

/// What one look did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Jobs this worker inserted.
    pub fired: u64,
    /// Ticks skipped (missed under the catch-up policy, or overlapping).
    pub skipped: u64,
    /// Ticks a peer had fired first.
    pub lost: u64,
    /// How late (ms after its tick, on the server's clock) the latest tick
    /// this worker fired was.
    pub lag_ms: Option<i64>,
}

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

impl Schedules {
    /// Fires the due schedules of `queues`; returns what it did and how
    /// long until the next tick among them (at most [`LOOK_EVERY`]).
    pub fn fire_due(&self, queues: &[String]) -> Result<(Fired, Duration), Error> {
        if !self.queue.clock().is_measured() {
            // Never this host's clock: a fast one would fire ticks early.
            self.queue.measure_clock()?;
        }
        // A tick is due once it has certainly passed on the server's clock
        // (its reading less its uncertainty).
        let now = self.queue.clock().passed();
        let horizon = DateTime::from_millis(now.timestamp_millis() + LOOK_EVERY.as_millis() as i64);
        let cursor = self
            .collection()
            .find(doc! {
                "queue": {"$in": queues},
                "next_tick": {"$lte": horizon},
                "paused": {"$ne": true},
            })
            .sort(doc! {"next_tick": 1})
            .limit(1_000)
            .run()
            .map_err(|e| self.queue.db_error("find (due schedules)", &e))?;
        let mut total = Fired::default();
        let mut sleep = LOOK_EVERY;
        for document in cursor {
            let document = document.map_err(|e| self.queue.db_error("find (due schedules)", &e))?;
            let next = document
                .get_datetime("next_tick")
                .map_or(0, |t| t.timestamp_millis());
            if next > now.timestamp_millis() {
                sleep = sleep.min(Duration::from_millis(
                    (next - now.timestamp_millis()) as u64,
                ));
                continue;
            }
            match self.fire(&document, now) {
                Ok(fired) => {
                    total.fired += fired.fired;
                    total.skipped += fired.skipped;
                    total.lost += fired.lost;
                    total.lag_ms = total.lag_ms.max(fired.lag_ms);
                }
                Err(error) => log::warn!(
                    "schedule {}: {error}",
                    document.get_str("_id").unwrap_or("?")
                ),
            }
        }
        Ok((total, sleep))
    }

    /// Fires one due schedule's ticks as its catch-up policy says.
    fn fire(&self, schedule: &Document, now: DateTime) -> Result<Fired, Error> {
        let name = schedule.get_str("_id").unwrap_or_default().to_string();
        let spec = spec_of(schedule)?;
        let read_last = schedule.get("last_tick").cloned().unwrap_or(Bson::Null);
        let from = match &read_last {
            Bson::DateTime(t) => *t,
            _ => schedule.get_datetime("created_at").copied().unwrap_or(now),
        };
        let catch_up = schedule
            .get_str("catch_up")
            .ok()
            .and_then(CatchUp::parse)
            .unwrap_or_default();
        let max = match catch_up {
            CatchUp::All => schedule
                .get("max_catch_up")
                .and_then(crate::schema::integer)
                .map_or(100, |n| n.clamp(1, 10_000) as usize),
            CatchUp::One | CatchUp::None => 1,
        };
        let now_utc = utc_millis(now.timestamp_millis());
        // Everything due, to count what is skipped, then the ones to run.
        let all_due = spec.due(utc_millis(from.timestamp_millis()), now_utc, 100_000);
        let Some(latest) = all_due.last().copied() else {
            return self.advance(&name, &read_last, None, &spec, Fired::default());
        };
        let mut run: Vec<Utc8601<Utc>> = all_due.iter().rev().take(max).rev().copied().collect();
        if catch_up == CatchUp::None {
            run.retain(|tick| (now_utc - *tick).to_std().unwrap_or_default() <= ON_TIME);
        }
        let mut done = Fired {
            skipped: (all_due.len() - run.len()) as u64,
            ..Fired::default()
        };
        let no_overlap = schedule.get_bool("no_overlap").unwrap_or(false);
        let mut last_job = None;
        for tick in run {
            if no_overlap && self.previous_still_active(&name)? {
                done.skipped += 1;
                continue;
            }
            let fired_at = self.queue.now();
            let (id, inserted) = self.insert_tick(&name, schedule, tick, fired_at)?;
            if inserted {
                done.fired += 1;
                done.lag_ms = Some(fired_at.timestamp_millis() - tick.timestamp_millis());
            } else {
                done.lost += 1;
            }
            last_job = Some(id);
        }
        self.advance(&name, &read_last, Some((latest, last_job)), &spec, done)
    }

    /// Whether the schedule's latest job is still pending or running.
    fn previous_still_active(&self, name: &str) -> Result<bool, Error> {
        let active = self
            .queue
            .collection()
            .find_one(doc! {
                fields::SCHEDULE: name,
                fields::STATUS: {"$in": [Status::Pending, Status::Running]},
            })
            .projection(doc! {"_id": 1})
            .run()
            .map_err(|e| self.queue.db_error("find (schedule's running job)", &e))?;
        Ok(active.is_some())
    }

    /// Inserts the job of `tick`; false when a peer had inserted it.
    fn insert_tick(
        &self,
        name: &str,
        schedule: &Document,
        tick: Utc8601<Utc>,
        now: DateTime,
    ) -> Result<(Bson, bool), Error> {
        let id = Bson::String(format!(
            "{name}@{}",
            tick.to_rfc3339_opts(SecondsFormat::Millis, true)
        ));
        let options = EnqueueOptions {
            priority: schedule
                .get("priority")
                .and_then(crate::schema::integer)
                .unwrap_or(0),
            run_at: Some(now),
            max_attempts: schedule
                .get("max_attempts")
                .and_then(crate::schema::integer)
                .and_then(|n| u32::try_from(n).ok()),
            queue: schedule.get_str("queue").ok().map(ToString::to_string),
            unique_key: None,
        };
        let data = schedule.get("data").cloned().unwrap_or(Bson::Null);
        let mut job = new_job_document(mongodb::bson::oid::ObjectId::new(), data, &options, now);
        job.insert("_id", id.clone());
        job.insert(fields::SCHEDULE, name);
        job.insert(fields::TICK, DateTime::from_millis(tick.timestamp_millis()));
        match self.queue.collection().insert_one(job).run() {
            Ok(_) => Ok((id, true)),
            Err(error) if is_duplicate_key(&error) => Ok((id, false)),
            Err(error) => Err(self.queue.db_error("insert (scheduled job)", &error)),
        }
    }

    /// Moves `last_tick` to `latest` (when there is one) and `next_tick` on,
    /// only if `last_tick` still holds what was read.
    fn advance(
        &self,
        name: &str,
        read_last: &Bson,
        latest: Option<(Utc8601<Utc>, Option<Bson>)>,
        spec: &super::Spec,
        done: Fired,
    ) -> Result<Fired, Error> {
        let Some((latest, last_job)) = latest else {
            return Ok(done);
        };
        let next = spec
            .next_after(latest, Some(latest))
            .map_or(Bson::Null, |t| {
                Bson::DateTime(DateTime::from_millis(t.timestamp_millis()))
            });
        let mut set = doc! {
            "last_tick": DateTime::from_millis(latest.timestamp_millis()),
            "next_tick": next,
        };
        if let Some(id) = last_job {
            set.insert("last_job", id);
        }
        let advanced = self
            .collection()
            .update_one(
                doc! {"_id": name, "last_tick": read_last.clone()},
                doc! {"$set": set, "$inc": {"skipped": done.skipped as i64}},
            )
            .run()
            .map_err(|e| self.queue.db_error("update (schedule's last tick)", &e))?;
        if done.fired > 0 {
            self.collection()
                .update_one(
                    doc! {"_id": name},
                    doc! {"$inc": {"fired": done.fired as i64}},
                )
                .run()
                .map_err(|e| self.queue.db_error("update (schedule's count)", &e))?;
        }
        // A peer moved it first: its count of skipped ticks stands.
        Ok(if advanced.matched_count == 1 {
            done
        } else {
            Fired { skipped: 0, ..done }
        })
    }
}

/// A thread that fires the due schedules of `queues` until stopped.
pub struct Ticker {
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
    stats: Arc<TickerStats>,
}

impl Ticker {
    /// Starts it; it logs database errors and keeps looking.
    pub fn start(schedules: Schedules, queues: Vec<String>) -> Ticker {
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
            loop {
                let pause = match schedules.fire_due(&queues) {
                    Ok((fired, pause)) => {
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
                        log::warn!(
                            "schedules: could not look for due schedules (will retry): {error}"
                        );
                        LOOK_EVERY
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
