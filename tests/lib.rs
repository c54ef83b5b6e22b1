//! The integration suite: one test binary, a module per area, every test
//! against the real server that `scripts/test.sh` starts (its URI in
//! `MONGOQ_TEST_URI`), each in a database of its own, driving the real
//! `mongoq` binary wherever a user would.

#![allow(clippy::format_collect, clippy::manual_assert, clippy::too_many_lines)]

mod helpers;
mod turns;

mod admin;
mod backlog;
mod cli;
mod clock;
mod concurrency;
mod counts;
mod dashboard;
mod exec;
mod faults;
mod fleet;
mod flow;
mod groups;
mod history;
mod library;
mod lifecycle;
mod malformed;
mod mongosh;
mod not_now;
mod package;
mod perf;
mod pipe;
mod python;
mod queues;
mod schedule;
mod security;
mod service;
mod siege;
mod structure;
mod tracing;
mod transactions;
