//! The worker's health: what each thread last did ([`liveness`], read by
//! `/healthz` and systemd's watchdog), the counters of its [`report`], and
//! the histograms and Prometheus text of its [`metrics`].
//!
//! It imports no other stage: every stage reports to it.

pub(crate) mod liveness;
pub(crate) mod metrics;
pub(crate) mod report;
