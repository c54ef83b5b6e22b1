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

pub mod admin;
pub mod bench;
pub mod dashboard;
pub mod duration;
pub mod error;
pub mod exec;
pub mod handler;
pub mod http;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod retry;
pub mod shutdown;
pub mod simulate;
pub mod stats;
pub mod systemd;
pub mod worker;

mod claim;
mod lease;
mod outage;
mod outcome;
mod wake;

pub use error::Error;
pub use handler::{Handler, HandlerError, HandlerResult};
pub use job::Job;
pub use queue::{EnqueueOptions, Queue, QueueConfig};
pub use shutdown::Shutdown;
pub use stats::Stats;
pub use worker::{Monitor, Report, Worker, WorkerConfig};

/// The BSON types jobs are made of, re-exported from the driver.
pub use mongodb::bson;
