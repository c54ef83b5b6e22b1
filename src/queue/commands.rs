//! Command shapes: what a command asked the server, without its values.
//!
//! `RUST_LOG=mongoq::commands=debug` logs every command a process sends
//! with its shape and how long the server took; a big-backlog stall is then
//! one grep away from the query that caused it. The shape keeps field names
//! and operators and drops every value (a value is `?`, an array `[n]`), as
//! MongoDB's own query shapes do, so no job data, id or credential reaches a
//! log. Tests use the same shapes to count the queries a worker makes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use mongodb::bson::{Bson, Document};
use mongodb::event::command::CommandEvent;

/// The fields of a command that say what it reads or writes; the rest
/// (session ids, cluster time, `$db`, …) say nothing about its cost.
const TOLD: [&str; 10] = [
    "filter",
    "sort",
    "limit",
    "hint",
    "projection",
    "pipeline",
    "query",
    "updates",
    "deletes",
    "documents",
];

/// The shape of `command` (as a `CommandStartedEvent` carries it): its
/// name and target, then its filter, sort, limit and the like, with every
/// value replaced by `?`. An update or delete shows its first statement
/// and how many there were.
#[must_use]
pub fn shape(name: &str, command: &Document) -> String {
    let mut out = name.to_string();
    if let Some(Bson::String(target)) = command.get(name) {
        let _ = write!(out, " {target}");
    }
    for field in TOLD {
        let Some(value) = command.get(field) else {
            continue;
        };
        let _ = write!(out, " {field}=");
        match (field, value) {
            ("updates" | "deletes" | "documents", Bson::Array(items)) => {
                let _ = write!(out, "[{}]", items.len());
                if let (Some(Bson::Document(first)), false) = (items.first(), field == "documents")
                {
                    out.push(' ');
                    document(&mut out, first);
                }
            }
            ("limit", Bson::Int32(_) | Bson::Int64(_)) => {
                let _ = write!(out, "{value}");
            }
            _ => value_shape(&mut out, value),
        }
    }
    out
}

fn document(out: &mut String, document: &Document) {
    out.push('{');
    for (i, (key, value)) in document.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        out.push(':');
        value_shape(out, value);
    }
    out.push('}');
}

fn value_shape(out: &mut String, value: &Bson) {
    match value {
        Bson::Document(inner) => document(out, inner),
        Bson::Array(items) if items.iter().all(|i| matches!(i, Bson::Document(_))) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value_shape(out, item);
            }
            out.push(']');
        }
        Bson::Array(items) => {
            let _ = write!(out, "[{}]", items.len());
        }
        _ => out.push('?'),
    }
}

/// Logs each command's shape and duration at debug level on the
/// `mongoq::commands` target (see the module doc): hand it every event of
/// the driver's command monitoring.
#[derive(Default)]
pub struct CommandLog {
    started: Mutex<HashMap<i32, String>>,
}

impl CommandLog {
    /// Notes a started command, or logs a finished one.
    pub fn observe(&self, event: &CommandEvent) {
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (request, took, failed) = match event {
            CommandEvent::Started(event) => {
                started.insert(event.request_id, shape(&event.command_name, &event.command));
                return;
            }
            CommandEvent::Succeeded(event) => (event.request_id, event.duration, ""),
            CommandEvent::Failed(event) => (event.request_id, event.duration, " (failed)"),
            _ => return,
        };
        let shape = started.remove(&request).unwrap_or_default();
        log::debug!(
            target: "mongoq::commands",
            "{:>8.1} ms {shape}{failed}",
            took.as_secs_f64() * 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn a_shape_keeps_names_and_operators_and_drops_every_value() {
        let command = doc! {
            "find": "queue",
            "filter": {"status": "pending", "run_at": {"$lte": 5}, "_id": {"$in": [1, 2, 3]}, "data.secret": "hunter2"},
            "sort": {"priority": -1, "_id": 1},
            "limit": 500_i64,
            "lsid": {"id": "x"},
        };
        let shape = shape("find", &command);
        assert_eq!(
            shape,
            "find queue filter={status:?, run_at:{$lte:?}, _id:{$in:[3]}, data.secret:?} sort={priority:?, _id:?} limit=500"
        );
        assert!(!shape.contains("hunter2") && !shape.contains("lsid"));
    }

    #[test]
    fn a_write_shows_its_first_statement_and_how_many() {
        let command = doc! {
            "update": "queue",
            "updates": [{"q": {"_id": 1}, "u": {"$set": {"status": "completed"}}}, {"q": {"_id": 2}, "u": {}}],
        };
        assert_eq!(
            shape("update", &command),
            "update queue updates=[2] {q:{_id:?}, u:{$set:{status:?}}}"
        );
        let insert = doc! {"insert": "queue", "documents": [{"data": "secret"}]};
        assert_eq!(shape("insert", &insert), "insert queue documents=[1]");
    }
}
