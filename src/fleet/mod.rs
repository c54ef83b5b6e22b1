//! What the workers of a fleet share through the server so that adding a
//! worker does not add to what each job costs it.
//!
//! - [`window`]: one read-ahead of a queue for all the workers serving it
//!   (`<collection>_windows`), instead of one each;
//! - [`share`]: how the live workers of a queue divide its jobs among
//!   themselves, and which of them leads a duty done once for all;
//! - [`limits`]: fleet-wide concurrency slots and rate starts
//!   (`<collection>_queues`), taken with each claim.
//!
//! It may import the queue and the shared helpers, never the worker: the
//! worker uses the fleet, not the other way round.

pub(crate) mod limits;
pub(crate) mod share;
pub(crate) mod window;
