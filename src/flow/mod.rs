//! Jobs that wait for other jobs: dependencies, fan-in, and failure that
//! propagates, with no parent that waits forever.
//!
//! A dependent is a document with `status: "waiting"` and `after: [ids]`
//! (a `mongosh` producer may insert exactly that). No worker claims it: the
//! claim reads `pending` jobs only. It becomes `pending` when every id of
//! `after` is in its `deps_done`.
//!
//! **Release is driven by completion.** A job that some waiting job waits on
//! carries `has_dependents: true`. The completer sees the flag on the copy it
//! claimed and, after writing the outcome, [`settle`]s the job: one pipeline
//! update adds it to its dependents' `deps_done` and flips to `pending` the
//! ones whose `after` is now covered. The flip is computed by the server
//! from the document as it is at that instant, so when the last two
//! dependencies complete on two workers at once exactly one of the two
//! updates sees both and releases; the other sees one. Jobs without
//! dependents pay nothing: no flag, no extra write.
//!
//! **Linking** ([`link`]) puts the flag on a dependent's dependencies, then
//! reads their statuses and settles the ones already finished. A dependency
//! claimed before its flag was set is written with a filter that refuses a
//! flagged document (`has_dependents: {$ne: true}`); the completer sees the
//! miss, finds the flag, and settles. So, for any dependent, either linking
//! saw its dependency finished, or the dependency's completion saw the flag.
//!
//! **Failure propagates.** A dependency that ends `failed` or `cancelled`,
//! or does not exist, cancels its waiting dependents (a `last_error` naming
//! it), and their dependents in turn; a dependent with `if_dep_fails: "run"`
//! counts it as done instead.
//!
//! **Nothing waits forever** ([`sweep`]): every worker, every 2 s (10 s
//! while it finds nothing), links
//! waiting jobs a producer inserted (`linked` missing) and settles finished
//! jobs still flagged (a worker died between its completion write and the
//! release, or the job finished by a path that does not settle: a lease
//! expiry, a cancel at lease extension); every 30 s it audits a page of
//! waiting jobs for dependencies that are gone. Each is one query on a
//! partial index that holds only waiting or flagged jobs.
//!
//! - [`settle`]: release or cancel the dependents of finished jobs;
//! - [`link`]: flag a dependent's dependencies, enqueue with `after`;
//! - [`results`]: the dependencies' results a dependent's handler sees;
//! - [`graph`]: `enqueue --flow`, a small graph inserted at once;
//! - [`sweep`]: the thread that backs all of this up.
//!
//! It may import `queue`, `job` and `schema`, never `worker`: the worker
//! calls into flows (its completer settles, its sweeper thread runs), not
//! the other way round.

mod cancel;
mod graph;
pub mod link;
pub mod results;
pub mod settle;
pub mod sweep;

pub use crate::job::DepResult;
pub use crate::queue::enqueue::IfDepFails;
pub use graph::{Flow, FlowError, FlowStep, InsertedFlow};
pub use link::{Links, LINKS_SHOWN};
pub use settle::Settled;
pub use sweep::Sweeper;

/// Most dependencies one job may wait on.
pub const MAX_AFTER: usize = 10_000;

/// The flows' indexes, which `mongoq init` creates with the others.
pub use crate::queue::indexes::{AFTER_INDEX, DEPENDENTS_INDEX, WAITING_INDEX};
