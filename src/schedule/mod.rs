//! Recurring jobs: schedules kept as documents in `<collection>_schedules`,
//! each tick becoming exactly one job across the fleet, with no leader.
//!
//! - [`spec`]: when a schedule ticks (pure, unit-tested across DST);
//! - [`store`]: the schedule documents and the operators' calls on them;
//! - [`firing`]: the look every worker takes about once a second, where
//!   the insert of a tick's job (a deterministic `_id`) is the election;
//! - [`ticker`]: the thread that takes those looks, and its counts.
//!
//! It may import `queue`, `schema` and `clock`, never `worker` or `flow`:
//! `mongoq work` starts a ticker beside the worker.

pub mod firing;
pub mod spec;
pub mod store;
pub mod ticker;

pub use firing::{Fired, Owner};
pub use spec::{Spec, SpecError};
pub use store::{CatchUp, ScheduleDef, ScheduleInfo, Schedules, Timing};
pub use ticker::{Ticker, TickerStats};
