//! Recurring jobs: schedules kept as documents in `<collection>_schedules`,
//! each tick becoming exactly one job across the fleet, with no leader.
//!
//! [`spec`] says when a schedule ticks (pure, unit-tested across DST).

pub mod spec;

pub use spec::{Spec, SpecError};
