//! Who may use the test server at a time. Every test that opens a
//! database on it takes a shared turn; a test that measures mongoq's own
//! latency (a pause seen by every worker within 0.2 s) or that loads the
//! server and both cores for a minute (a 100,000-job backlog) takes the
//! server alone, so a number it asserts measures mongoq and not its
//! neighbours. A test waiting to run alone holds back tests that have not
//! started; the ones running finish first.
//!
//! A thread that already holds a turn takes nested ones freely (a test
//! may open more than one database), so nothing here waits on itself.

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct State {
    /// Tests holding a shared turn.
    sharing: usize,
    /// A test holds the server alone.
    alone: bool,
    /// Tests waiting to run alone (they go before new shared turns).
    waiting_alone: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    sharing: 0,
    alone: false,
    waiting_alone: 0,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Turns this thread holds (the first one counts in [`STATE`]).
    static HELD: Cell<usize> = const { Cell::new(0) };
}

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A turn on the test server, given back when dropped.
pub struct Turn {
    /// What the turn took in [`STATE`] (nothing when nested).
    took: Took,
}

#[derive(Clone, Copy, PartialEq)]
enum Took {
    Nothing,
    Shared,
    Alone,
}

impl Turn {
    /// A turn beside the other shared ones.
    pub fn shared() -> Turn {
        if HELD.get() > 0 {
            return Turn::nested();
        }
        let mut state = state();
        while state.alone || state.waiting_alone > 0 {
            state = CHANGED.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.sharing += 1;
        HELD.set(1);
        Turn { took: Took::Shared }
    }

    /// The server alone: waits until no other test holds a turn.
    pub fn alone() -> Turn {
        assert_eq!(
            HELD.get(),
            0,
            "take the server alone before opening any database"
        );
        let mut state = state();
        state.waiting_alone += 1;
        while state.alone || state.sharing > 0 {
            state = CHANGED.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting_alone -= 1;
        state.alone = true;
        HELD.set(1);
        Turn { took: Took::Alone }
    }

    fn nested() -> Turn {
        HELD.set(HELD.get() + 1);
        Turn {
            took: Took::Nothing,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        HELD.set(HELD.get().saturating_sub(1));
        if self.took == Took::Nothing {
            return;
        }
        let mut state = state();
        match self.took {
            Took::Shared => state.sharing -= 1,
            Took::Alone => state.alone = false,
            Took::Nothing => {}
        }
        drop(state);
        CHANGED.notify_all();
    }
}
