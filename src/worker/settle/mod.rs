//! Settling: what became of each attempt, written back to its job.
//!
//! A handler thread turns what its handler answered into an [`outcome`]
//! (completed with a result, a retry at a time the [`retry`] policy picks,
//! failed for good, handed back); the [`completer`] thread writes them,
//! fenced by lease token and batched, and releases the leases they held.
//! A job too close to MongoDB's 16 MB limit to take the worker's fields is
//! failed with the reason ([`oversized`]).
//!
//! It may import [`super::lease`] and [`super::health`], never
//! [`super::claim`].

pub(crate) mod completer;
pub(crate) mod outcome;
pub(crate) mod oversized;
pub mod retry;
