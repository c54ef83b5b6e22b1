//! Leases: what this worker holds and keeping it.
//!
//! [`held`] counts the jobs held under each claim token, and holds the
//! extension and rescue writes; the [`keeper`] thread runs them every third
//! of the lease, and drops the jobs an operator cancelled; [`running`] is
//! the registry of the jobs the handler threads are running now (what a
//! cancel or the end of the grace period stops).
//!
//! It may import [`super::health`], never [`super::claim`] or
//! [`super::settle`].

pub(crate) mod held;
pub(crate) mod keeper;
pub(crate) mod running;
