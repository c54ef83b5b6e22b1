//! mongoq: a distributed job queue in one MongoDB collection, and a
//! synchronous, crash-proof worker that drains it.
//!
//! Producers insert `{data, status: "pending"}` (from `mongosh`, a shell
//! script, any driver, or [`Queue::enqueue`]). Workers claim batches
//! atomically under a lease, run a [`Handler`] on N OS threads, and write
//! each outcome back fenced by the lease token. Jobs are never lost: a
//! crashed worker's leases expire and another worker runs its jobs again,
//! so handlers must be idempotent (delivery is at-least-once).
//!
//! ```no_run
//! use mongoq::{Queue, QueueConfig, Shutdown, Worker, WorkerConfig};
//! use mongoq::bson::{doc, Bson};
//!
//! let queue = Queue::connect(&QueueConfig::new("mongodb://localhost:27017"))?;
//! queue.enqueue(Bson::Document(doc! {"email": "ada@example.com"}), &Default::default())?;
//!
//! let config = WorkerConfig { threads: 4, drain: true, ..WorkerConfig::default() };
//! let worker = Worker::new(queue, config, |job: &mongoq::Job| {
//!     println!("sending {}", job.data);
//!     Ok(None)
//! })?;
//! let report = worker.run(&Shutdown::new());
//! assert_eq!(report.failed, 0);
//! # Ok::<(), mongoq::Error>(())
//! ```
//!
//! The contract (document schema, statuses, guarantees) is in DESIGN.md;
//! the binary's flags are in README.md.

// The rooms of a job's life: it is enqueued into the queue, claimed and run
// by a worker, its handler does the work, and the schema says what every
// stage writes. DESIGN.md has the module map.
pub mod counts;
pub mod expiry;
pub(crate) mod fleet;
pub mod flow;
pub mod groups;
pub mod handlers;
pub mod history;
pub mod queue;
pub mod schedule;
pub mod schema;
pub mod trace;
pub mod worker;

pub mod backoff;
pub mod clock;
pub mod duration;
pub mod error;
pub mod job;
pub mod progress;
pub mod redact;
pub mod shutdown;
pub mod sync;
pub mod text;

pub use counts::Stats;
pub use error::Error;
pub use handlers::{Handler, HandlerError, HandlerResult};
pub use job::Job;
pub use queue::{EnqueueOptions, Queue, QueueConfig};
pub use schema::Status;
pub use shutdown::Shutdown;
pub use worker::{Monitor, Report, Worker, WorkerConfig};

/// The BSON types jobs are made of, re-exported from the driver.
pub use mongodb::bson;

/// Cases per property test: 100,000 unless `PROPTEST_CASES` says otherwise
/// (a longer round: `PROPTEST_CASES=1000000 cargo test --release --lib`).
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}
