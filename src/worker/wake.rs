//! Waking an idle worker when work arrives.
//!
//! An idle fetcher sleeps between polls, backing off up to
//! `--poll-interval`. Where the deployment supports change streams (replica
//! sets and sharded clusters; not standalone servers), a watcher thread
//! follows inserts of pending jobs and updates that make a job pending, and
//! rings the [`Doorbell`] so the fetcher claims at once instead of at its
//! next poll. Polling stays on regardless: a job whose `run_at` arrives
//! produces no event, and a change stream can break. Where change streams
//! are not available the watcher logs that once and the worker polls.
//!
//! The stream is open only while the worker is idle, or was within the
//! last [`KEEP_OPEN`]: a busy worker claims again as soon as it has room,
//! so events would wake nobody, and the server would filter every write of
//! the queue (two or more per job) for a stream no one needs. When the
//! fetcher next finds nothing, the watcher opens the stream and rings once,
//! so a job inserted before the stream opened is claimed by that look.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};

use crate::backoff::Backoff;
use crate::queue::Queue;
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;
use crate::sync::lock;

/// How long one `getMore` of the stream waits for an event: an idle worker
/// asks the server this often (events come back at once). Stopping does
/// not wait for it: the thread is left to end with its `getMore`.
pub(crate) const AWAIT: Duration = Duration::from_secs(10);

/// How long after the fetcher last found nothing the stream stays open.
pub(crate) const KEEP_OPEN: Duration = Duration::from_secs(5);

/// A latch the watcher rings and the fetcher waits on; the fetcher also
/// tells it when it found nothing, which is when a stream is wanted.
#[derive(Default)]
pub(crate) struct Doorbell {
    state: Mutex<Bell>,
    bell: Condvar,
    wanted: Condvar,
    /// A change stream is open: every write that makes a job pending rings.
    watching: AtomicBool,
}

#[derive(Default)]
struct Bell {
    rung: bool,
    /// When the fetcher last found nothing to claim.
    idle_at: Option<Instant>,
    /// The fetcher is waiting for a ring now (however long the wait).
    waiting: bool,
}

impl Bell {
    /// The fetcher found nothing within the last [`KEEP_OPEN`].
    fn wanted(&self) -> bool {
        self.waiting || self.idle_at.is_some_and(|at| at.elapsed() < KEEP_OPEN)
    }
}

impl Doorbell {
    /// Wakes a waiting fetcher (or makes its next wait return at once).
    pub(crate) fn ring(&self) {
        lock(&self.state).rung = true;
        self.bell.notify_all();
    }

    /// Waits up to `timeout` for a ring; returns whether one came. Clears it.
    /// Waiting means the fetcher found nothing: a stream is wanted.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut state = lock(&self.state);
        state.idle_at = Some(Instant::now());
        state.waiting = true;
        self.wanted.notify_all();
        let (mut state, _) = self
            .bell
            .wait_timeout_while(state, timeout, |state| !state.rung)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.waiting = false;
        state.idle_at = Some(Instant::now());
        std::mem::replace(&mut state.rung, false)
    }

    /// Whether the fetcher found nothing within the last [`KEEP_OPEN`]:
    /// the worker is idle.
    pub(crate) fn wanted(&self) -> bool {
        lock(&self.state).wanted()
    }

    /// Whether a change stream is open now, so that a write making a job
    /// pending rings the bell.
    pub(crate) fn watching(&self) -> bool {
        self.watching.load(Relaxed)
    }

    /// Waits up to `timeout` for the fetcher to find nothing; returns
    /// whether a stream is wanted now.
    fn wait_until_wanted(&self, timeout: Duration) -> bool {
        let state = lock(&self.state);
        let (state, _) = self
            .wanted
            .wait_timeout_while(state, timeout, |state| !state.wanted())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.wanted()
    }
}

/// Events that can make a job claimable.
fn pipeline() -> Vec<Document> {
    let status_path = format!("fullDocument.{}", fields::STATUS);
    let updated_status = format!("updateDescription.updatedFields.{}", fields::STATUS);
    vec![
        doc! {"$match": {"$or": [
            {"operationType": "insert", status_path.clone(): Status::Pending},
            {"operationType": "update", updated_status: Status::Pending},
            {"operationType": "replace", status_path: Status::Pending},
        ]}},
        // The driver needs `operationType` to decode an event; nothing else
        // is read, so nothing else travels.
        doc! {"$project": {"_id": 1, "operationType": 1}},
    ]
}

/// The watcher thread: while the fetcher is idle, rings `doorbell` on
/// every event, until `stop` fires. Returns early (the worker then just
/// polls) if change streams are not supported; reopens the stream after
/// other errors.
pub(crate) fn watch(queue: &Queue, doorbell: &Doorbell, stop: &Shutdown) {
    let mut reopen = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !stop.is_requested() {
        if !doorbell.wait_until_wanted(Duration::from_millis(200)) {
            continue;
        }
        let stream = queue
            .collection()
            .watch()
            .pipeline(pipeline())
            .max_await_time(AWAIT)
            .run();
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) if unsupported(&error) => {
                log::info!(
                    "change streams are not available on this deployment ({}); polling only",
                    first_line(&queue.db_error("watch", &error).to_string())
                );
                return;
            }
            Err(error) => {
                log::warn!(
                    "cannot open a change stream (will retry): {}",
                    queue.db_error("watch", &error)
                );
                if stop.sleep(reopen.advance()) {
                    return;
                }
                continue;
            }
        };
        log::debug!("watching for new jobs with a change stream");
        reopen.reset();
        // A job inserted before the stream opened made no event: look once.
        doorbell.watching.store(true, Relaxed);
        doorbell.ring();
        while !stop.is_requested() && doorbell.wanted() {
            match stream.next_if_any() {
                Ok(Some(_)) => doorbell.ring(),
                Ok(None) => {}
                Err(error) => {
                    log::warn!(
                        "change stream broke (will reopen): {}",
                        queue.db_error("watch", &error)
                    );
                    break;
                }
            }
        }
        doorbell.watching.store(false, Relaxed);
        // Dropping the stream closes its cursor on the server.
    }
}

/// Standalone servers refuse `$changeStream` (code 40573); so do servers
/// too old or configured without it.
fn unsupported(error: &mongodb::error::Error) -> bool {
    if let mongodb::error::ErrorKind::Command(command) = error.kind.as_ref() {
        return matches!(command.code, 40573 | 40324 | 136 | 115);
    }
    let text = error.to_string();
    text.contains("only supported on replica sets") || text.contains("not supported")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_wanted_only_after_the_fetcher_found_nothing() {
        let bell = Doorbell::default();
        assert!(!bell.wanted());
        assert!(!bell.wait_until_wanted(Duration::from_millis(10)));
        bell.ring();
        assert!(bell.wait(Duration::from_secs(5)));
        assert!(bell.wanted());
        assert!(bell.wait_until_wanted(Duration::from_millis(10)));
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Doorbell::default();
        bell.ring();
        assert!(bell.wait(Duration::from_secs(5)));
        assert!(!bell.wait(Duration::from_millis(1)));
    }
}
