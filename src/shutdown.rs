//! The shutdown flag every thread of a worker watches.
//!
//! A flag alone would make sleeping threads notice it only when they wake;
//! a condition variable lets every wait (idle polling, outage back-off,
//! lease keeping) end the moment shutdown is requested.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A cloneable "please stop" signal with interruptible sleeps.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shutdown {
    /// A signal not yet requested.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks every holder to stop; wakes all sleepers. Idempotent.
    pub fn request(&self) {
        let _guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.inner.requested.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
    }

    /// Whether stop was requested.
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` or until stop is requested; returns whether it was.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = self
            .inner
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if self.is_requested() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .inner
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wakes_a_sleeper_early() {
        let shutdown = Shutdown::new();
        let sleeper = shutdown.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || sleeper.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        shutdown.request();
        assert!(handle.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn sleep_runs_out_when_not_requested() {
        assert!(!Shutdown::new().sleep(Duration::from_millis(5)));
    }
}
