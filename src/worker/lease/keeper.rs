//! The keeper thread: keeps this worker's leases alive, drops jobs an
//! operator cancelled, writes the progress running jobs reported (at most
//! once a second each, see [`crate::progress`]), and rescues expired leases
//! of any worker.
//!
//! It is not the fetcher: a fetcher blocked in a slow claim must not let
//! leases lapse. Extensions run every third of the lease, so two can fail
//! in a row before a healthy worker's job is at risk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, Bson};

use crate::clock::REFRESH;
use crate::error::Error;
use crate::fleet::share::Share;
use crate::handlers::Handler;
use crate::progress::{Progress, PROGRESS_EVERY};
use crate::queue::Queue;
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;
use crate::worker::health::liveness::{Beat, Health};
use crate::worker::health::report::Counters;
use crate::worker::lease::held::{extend, rescue_expired, Leases};
use crate::worker::lease::running::{drop_cancelled, Running};

/// The duty of rescuing expired leases, which one worker of the peers
/// does for all (see [`Share::leads`]).
const RESCUE: &str = "rescue";

/// The keeper thread and what it owns.
pub(crate) struct Keeper {
    pub(crate) queue: Queue,
    pub(crate) owner: String,
    pub(crate) lease: Duration,
    /// The jobs this worker holds, whose leases it extends.
    pub(crate) leases: Arc<Leases>,
    /// The jobs running now, told when an operator cancels one.
    pub(crate) running: Arc<Running>,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) health: Arc<Health>,
    /// The peers: one of them rescues expired leases for all.
    pub(crate) share: Arc<Share>,
}

impl Keeper {
    /// Extends and rescues until `stop` fires. Failures are logged and
    /// retried at the next tick: a missed extension is harmless while the
    /// lease has time left, and the tick is a third of the lease.
    pub(crate) fn run(&self, stop: &Shutdown) {
        let extend_every = (self.lease / 3).max(Duration::from_millis(50));
        let rescue_every =
            (self.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        let mut next_rescue = Instant::now();
        let mut next_clock = Instant::now() + REFRESH;
        let mut next_extend = Instant::now();
        loop {
            self.health.beat(Beat::Keeper);
            self.write_progress();
            let tokens = self.leases.tokens();
            if !tokens.is_empty() && Instant::now() >= next_extend {
                next_extend = Instant::now() + extend_every.min(rescue_every);
                match self
                    .health
                    .track(extend(&self.queue, &self.owner, &tokens, self.lease))
                {
                    Ok(matched) => {
                        Counters::add(&self.counters.lease_extensions, matched);
                        log::debug!("extended {matched} leases under {} claims", tokens.len());
                    }
                    Err(error) => log::warn!("could not extend leases (will retry): {error}"),
                }
                self.health.beat(Beat::Keeper);
                match self
                    .health
                    .track(drop_cancelled(&self.queue, &self.owner, &tokens))
                {
                    Ok(ids) if !ids.is_empty() => {
                        Counters::add(&self.counters.cancelled, ids.len() as u64);
                        self.running.cancel(&ids, self.handler.as_ref());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        log::warn!("could not check for cancelled jobs (will retry): {error}");
                    }
                }
            }
            if Instant::now() >= next_rescue && self.share.leads(RESCUE) {
                self.health.beat(Beat::Keeper);
                match self.health.track(rescue_expired(&self.queue, &self.owner)) {
                    Ok(0) => {}
                    Ok(n) => {
                        Counters::add(&self.counters.rescued, n);
                        log::warn!(
                            "rescued {n} jobs whose leases had expired; they will run again"
                        );
                    }
                    Err(error) => {
                        log::warn!("could not rescue expired leases (will retry): {error}");
                    }
                }
                next_rescue = Instant::now() + rescue_every;
            }
            if Instant::now() >= next_clock {
                // The server's clock, re-read so that this host's monotonic
                // clock cannot drift from it for long.
                self.health.beat(Beat::Keeper);
                if let Err(error) = self.health.track(self.queue.measure_clock()) {
                    log::warn!("could not re-read the server's clock (will retry): {error}");
                }
                next_clock = Instant::now() + REFRESH;
            }
            if stop.sleep(extend_every.min(rescue_every).min(PROGRESS_EVERY)) {
                return;
            }
        }
    }

    /// Writes the progress reported since the last tick, one fenced update
    /// per job that reported any (none when no handler reports progress).
    fn write_progress(&self) {
        for (key, attempt, progress) in self.running.unwritten_progress() {
            self.health.beat(Beat::Keeper);
            let written = self.health.track(write_progress(
                &self.queue,
                &self.owner,
                (&key.id, key.token),
                attempt,
                &progress,
                self.lease,
            ));
            if let Err(error) = written {
                log::warn!("could not write a job's progress (the next report will be): {error}");
            }
        }
    }
}

/// Writes `progress` of attempt `attempt` onto job `id` held under `token`
/// by `owner`, extending its lease by `lease`. Returns whether the job was
/// still this worker's to write.
fn write_progress(
    queue: &Queue,
    owner: &str,
    (id, token): (&Bson, ObjectId),
    attempt: u32,
    progress: &Progress,
    lease: Duration,
) -> Result<bool, Error> {
    let clock = queue.clock();
    let result = queue
        .collection()
        .update_one(
            doc! {
                "_id": id.clone(),
                fields::LEASE_TOKEN: token,
                fields::STATUS: Status::Running,
                fields::LEASE_OWNER: owner,
            },
            doc! {"$set": {
                fields::PROGRESS: {
                    "fraction": progress.fraction,
                    "note": progress.note.clone().map_or(Bson::Null, Bson::String),
                    "attempt": i64::from(attempt),
                    "at": clock.now(),
                },
                fields::LEASE_UNTIL: clock.after(lease),
            }},
        )
        .run()
        .map_err(|e| queue.db_error("update (job progress)", &e))?;
    Ok(result.matched_count == 1)
}
