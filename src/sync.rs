//! Thread plumbing every room of the crate shares: a lock that survives a
//! panicked holder, named threads, and bounded joins.
//!
//! A handler that panics is caught (it fails one attempt), but a panic
//! inside a critical section would still poison a mutex; the worker's data
//! behind these locks (counts, maps of running jobs) stays consistent after
//! any single statement, so taking the poisoned value is safe and keeps the
//! worker alive instead of cascading the panic to every thread.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Locks `mutex`, taking the value even if a holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a named OS thread. The name shows in `top -H`, in panics and in
/// the "left behind" warning of a bounded join.
pub fn spawn<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .expect("the OS refused to start a thread")
}

/// Polls `done` every 10 ms until it holds or `deadline` passes; returns
/// whether it held.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Joins `handle` if it ends by `deadline`; otherwise logs that the thread
/// is left behind (it holds nothing the exit needs) and returns.
pub fn join_or_leave<T>(handle: JoinHandle<T>, deadline: Instant) {
    if wait_until(deadline, || handle.is_finished()) {
        let _ = handle.join();
    } else {
        log::warn!(
            "thread {} did not stop in time and is left behind",
            handle.thread().name().unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(7));
        let holder = std::sync::Arc::clone(&mutex);
        let _ = std::thread::spawn(move || {
            let _guard = holder.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 7);
    }

    #[test]
    fn a_thread_past_its_deadline_is_left_behind() {
        let stuck = spawn("stuck", || std::thread::sleep(Duration::from_millis(300)));
        let started = Instant::now();
        join_or_leave(stuck, Instant::now() + Duration::from_millis(20));
        assert!(started.elapsed() < Duration::from_millis(250));
    }
}
