//! What the workers of a fleet share through the server so that adding a
//! worker does not add to what each job costs it.
//!
//! - [`window`]: one read-ahead of a queue for all the workers serving it
//!   (`<collection>_windows`), instead of one each.

pub(crate) mod window;
