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

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Document};

use crate::backoff::Backoff;
use crate::queue::Queue;
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;
use crate::sync::lock;

/// A latch the watcher rings and the fetcher waits on.
#[derive(Default)]
pub(crate) struct Doorbell {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Doorbell {
    /// Wakes a waiting fetcher (or makes its next wait return at once).
    pub(crate) fn ring(&self) {
        *lock(&self.rung) = true;
        self.bell.notify_all();
    }

    /// Waits up to `timeout` for a ring; returns whether one came. Clears it.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let rung = lock(&self.rung);
        let (mut rung, _) = self
            .bell
            .wait_timeout_while(rung, timeout, |rung| !*rung)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *rung, false)
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

/// The watcher thread: rings `doorbell` on every event until `stop` fires.
/// Returns early (the worker then just polls) if change streams are not
/// supported; reopens the stream after other errors.
pub(crate) fn watch(queue: &Queue, doorbell: &Doorbell, stop: &Shutdown) {
    let mut reopen = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !stop.is_requested() {
        let stream = queue
            .collection()
            .watch()
            .pipeline(pipeline())
            .max_await_time(Duration::from_millis(500))
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
        while !stop.is_requested() {
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
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Doorbell::default();
        bell.ring();
        assert!(bell.wait(Duration::from_secs(5)));
        assert!(!bell.wait(Duration::from_millis(1)));
    }
}
