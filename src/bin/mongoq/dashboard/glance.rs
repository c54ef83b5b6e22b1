//! Every queue's busiest groups for the Queues page, read on the pace of
//! the metrics' depth sample rather than on every refresh: the page
//! refreshes every few seconds in every open browser, and aggregating a
//! queue's grouped jobs costs the server in proportion to them.
//!
//! A read is started by the page that finds the last one stale (older than
//! [`DEPTH_EVERY`], or than [`DEPTH_SHARE`] times what it took: the depth
//! sample's own pace), on a thread of its own;
//! pages meanwhile show the last one. Only the first page waits for it,
//! at most [`FIRST_WAIT`]. Nobody looking costs nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mongoq::groups::Busiest;
use mongoq::sync::{lock, spawn};
use mongoq::Queue;

use crate::metrics::{DEPTH_EVERY, DEPTH_SHARE};

/// How many groups of each queue the Queues page lists.
pub(super) const PER_QUEUE: usize = 3;

/// How long the first page waits for the first read.
const FIRST_WAIT: Duration = Duration::from_millis(1500);

/// What a page shows: each queue's busiest groups, or why there are none.
pub(super) type Seen = Result<Arc<BTreeMap<String, Busiest>>, String>;

/// The last glance and whether a read is under way.
#[derive(Default)]
pub(super) struct Glance {
    state: Mutex<State>,
    read: Condvar,
}

#[derive(Default)]
struct State {
    /// When the last read ended, what it took, what it saw.
    last: Option<(Instant, Duration, Seen)>,
    reading: bool,
}

impl Glance {
    /// The last glance (`None` while the first read is still under way),
    /// starting a new read if it is stale.
    pub(super) fn seen(self: &Arc<Self>, queue: &Queue) -> Option<Seen> {
        let mut state = lock(&self.state);
        let stale = state
            .last
            .as_ref()
            .is_none_or(|(at, took, _)| at.elapsed() >= DEPTH_EVERY.max(*took * DEPTH_SHARE));
        if stale && !state.reading {
            state.reading = true;
            let glance = Arc::clone(self);
            let queue = queue.clone();
            spawn("mongoq-glance", move || {
                let started = Instant::now();
                // A read that panicked must not leave `reading` set (no
                // page would start another).
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    queue.groups_at_a_glance(PER_QUEUE)
                }));
                let seen = match read {
                    Ok(read) => read.map(Arc::new).map_err(|e| e.to_string()),
                    Err(_) => Err("the read of the busiest groups failed".to_string()),
                };
                let mut state = lock(&glance.state);
                state.last = Some((Instant::now(), started.elapsed(), seen));
                state.reading = false;
                glance.read.notify_all();
            });
        }
        if state.last.is_none() {
            let (waited, _) = self
                .read
                .wait_timeout_while(state, FIRST_WAIT, |s| s.reading)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state = waited;
        }
        state.last.as_ref().map(|(_, _, seen)| seen.clone())
    }
}
