//! Progress a running job reports (`Job::set_progress`, a pipe handler's
//! `{"id": …, "progress": 0.4, "note": "…"}` lines): plain data beside
//! [`crate::Job`], with no database in it. The keeper writes it
//! (`worker::lease::keeper`).
//!
//! A handler may report progress thousands of times a second; the database
//! sees at most one write per job per [`PROGRESS_EVERY`]. The handler only
//! replaces the latest value in the job's [`ProgressCell`] (a lock and a
//! flag, no I/O); the worker's keeper thread, which already wakes to extend
//! leases, writes the cells that changed since its last look. Each write is
//! fenced like an outcome (this job, this claim, still running, this
//! owner) and pushes the job's `lease_until` forward too, so it doubles as
//! that job's lease extension.
//!
//! Stored as `progress: {fraction, note, attempt, at}`. It is left in place
//! when the attempt ends, so a failed or retried job shows how far its last
//! attempt got; `attempt` says which one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;

/// The most often one job's progress is written.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Longest progress note stored, in bytes.
pub const MAX_NOTE_BYTES: usize = 512;

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// How much is done, from 0.0 to 1.0.
    pub fraction: f64,
    /// What the job is doing now, for a person.
    pub note: Option<String>,
}

/// The latest progress of one running job, and whether it is unwritten.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell {
    latest: Mutex<Option<Progress>>,
    dirty: AtomicBool,
}

impl ProgressCell {
    /// Replaces the latest progress (clamped to 0..=1; NaN is ignored) and
    /// cuts the note to [`MAX_NOTE_BYTES`].
    pub(crate) fn set(&self, fraction: f64, note: Option<&str>) {
        if fraction.is_nan() {
            return;
        }
        let note = note.map(|n| crate::text::truncate(n.to_string(), MAX_NOTE_BYTES, "…"));
        *lock(&self.latest) = Some(Progress {
            fraction: fraction.clamp(0.0, 1.0),
            note,
        });
        self.dirty.store(true, Ordering::Release);
    }

    /// The latest progress if it changed since the last call.
    pub(crate) fn take_unwritten(&self) -> Option<Progress> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            lock(&self.latest).clone()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_keeps_the_latest_and_hands_it_out_once() {
        let cell = ProgressCell::default();
        assert_eq!(cell.take_unwritten(), None);
        cell.set(0.2, None);
        cell.set(1.7, Some("almost"));
        let latest = cell.take_unwritten().unwrap();
        assert!((latest.fraction - 1.0).abs() < f64::EPSILON);
        assert_eq!(latest.note.as_deref(), Some("almost"));
        assert_eq!(cell.take_unwritten(), None);
        cell.set(f64::NAN, None);
        assert_eq!(cell.take_unwritten(), None);
    }

    #[test]
    fn long_notes_are_cut() {
        let cell = ProgressCell::default();
        cell.set(0.5, Some(&"x".repeat(10_000)));
        assert!(cell.take_unwritten().unwrap().note.unwrap().len() <= MAX_NOTE_BYTES + 4);
    }
}
