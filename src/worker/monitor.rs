//! A view of a running worker from any thread: health for `/healthz` and
//! systemd's watchdog, the counters, the load, and the Prometheus text.
//!
//! It holds `Arc`s of the worker's pieces, so reading never waits on a
//! worker thread and it stays valid after [`crate::Worker::run`] returns.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::handlers::Handler;
use crate::queue::Queue;
use crate::sync::lock;
use crate::worker::control::Controls;
use crate::worker::health::liveness::{Health, HealthReport};
use crate::worker::health::metrics::{render, Depth, Histogram, Load};
use crate::worker::health::report::{Counters, Report};
use crate::worker::lease::held::Leases;
use crate::worker::lease::running::Running;

/// A thread that showed no progress for this long is stalled (a driver
/// call hung on a dead connection, say). Every wait in the worker's loops
/// is far shorter; a database outage is not a stall.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// Metrics, health and readiness of a [`crate::Worker`], from any thread.
#[derive(Clone)]
pub struct Monitor {
    pub(super) queue: Queue,
    pub(super) threads: usize,
    pub(super) health: Arc<Health>,
    pub(super) counters: Arc<Counters>,
    pub(super) running: Arc<Running>,
    pub(super) leases: Arc<Leases>,
    pub(super) handler_seconds: Arc<Histogram>,
    pub(super) claim_seconds: Arc<Histogram>,
    pub(super) depth: Arc<Mutex<Option<Depth>>>,
    pub(super) controls: Arc<Controls>,
    pub(super) handler: Arc<dyn Handler>,
}

impl Monitor {
    /// Liveness, readiness and database reachability.
    pub fn health(&self) -> HealthReport {
        let mut report = self.health.report(STALL_AFTER);
        report.handler = self.handler.health();
        report
    }

    /// Indexes are in place and the threads are running.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// What the worker did so far.
    pub fn report(&self) -> Report {
        self.counters.snapshot(false)
    }

    /// Samples the queue's depth (counts by status) for the metrics; call
    /// it every few seconds from a thread of your own.
    pub fn sample_depth(&self) -> Result<(), Error> {
        let stats = self.queue.stats()?;
        let groups_with_backlog = self.queue.groups_with_backlog()?;
        let mut halted_groups = 0;
        for control in self.queue.controls()? {
            if control.ordered && !control.continue_on_failure {
                halted_groups += crate::groups::ordered::halted(&self.queue, &control.queue)?.len();
            }
        }
        *lock(&self.depth) = Some(Depth {
            sampled: Instant::now(),
            stats,
            groups_with_backlog,
            halted_groups: halted_groups as u64,
        });
        Ok(())
    }

    /// Jobs running now and jobs held (running or waiting for a thread).
    pub fn load(&self) -> (usize, usize) {
        (self.running.count(), self.leases.held())
    }

    /// The Prometheus text exposition of this worker's metrics.
    pub fn metrics_text(&self) -> String {
        let (running, held) = self.load();
        let load = Load {
            running: running as u64,
            held: held as u64,
            threads: self.threads as u64,
        };
        let depth = lock(&self.depth).clone();
        render(
            &self.report(),
            &load,
            &self.handler_seconds,
            &self.claim_seconds,
            &self.health(),
            depth.as_ref(),
            &self.controls_now(),
        )
    }

    /// The controls of this worker's queues, handlers' pauses that ended
    /// taken off.
    fn controls_now(&self) -> Vec<crate::queue::QueueControl> {
        let now = self.queue.clock().now().timestamp_millis();
        let mut controls = self.controls.all();
        for control in &mut controls {
            if control.paused_until.is_some_and(|until| until <= now) {
                control.paused_until = None;
            }
        }
        controls
    }
}
