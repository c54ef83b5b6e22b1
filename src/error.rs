//! Errors at the library's boundary.
//!
//! Each message says what went wrong and what to do about it, and never
//! carries a password: everything that quotes a URI or a driver error goes
//! through [`crate::redact`] first.

/// What can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string could not be used.
    #[error("invalid MongoDB URI `{uri}`: {reason}. Pass a URI like mongodb://user:password@host:27017/?replicaSet=rs0 with --uri or MONGODB_URI")]
    InvalidUri {
        /// The URI, password redacted.
        uri: String,
        /// Why the driver refused it, password redacted.
        reason: String,
    },
    /// A database operation failed (server unreachable, not authorized, …).
    #[error("MongoDB {operation} failed on {uri}: {reason}")]
    Database {
        /// What mongoq was doing.
        operation: &'static str,
        /// The URI, password redacted.
        uri: String,
        /// The driver's message, password redacted, with a hint where one helps.
        reason: String,
    },
    /// A job with the same `unique_key` is already pending or running.
    #[error("not enqueued: a pending or running job already has unique_key `{unique_key}`{}", existing.as_ref().map(|id| format!(" (job {id})")).unwrap_or_default())]
    Duplicate {
        /// The key.
        unique_key: String,
        /// The `_id` of the job holding it, if it could be read.
        existing: Option<String>,
    },
    /// No job has that `_id`.
    #[error("no job has _id {0} (ids are the 24-hex ObjectId printed by enqueue, or the _id the producer chose)")]
    NotFound(String),
    /// A setting of the worker or the queue is not usable; `setting` names
    /// it as the command line spells it (`--lease`), so the CLI's message
    /// points at the flag to fix.
    #[error("{setting}: {reason}")]
    Config {
        /// The setting, as its flag (`--lease`, `--threads`, …).
        setting: &'static str,
        /// What is wrong and what would do.
        reason: String,
    },
    /// A queue name that cannot name a queue.
    #[error("`{0}` is not a valid queue name: use 1 to 200 printable characters, e.g. `emails`")]
    QueueName(String),
    /// A value handed to the library is not usable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A [`Error::Config`] for `setting`.
    pub fn config(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Config {
            setting,
            reason: reason.into(),
        }
    }
}

/// Whether the server refused an operation with a code `matches` accepts:
/// a write error, a command error, or any write error of an `insertMany`.
pub(crate) fn server_code_is(error: &mongodb::error::Error, matches: impl Fn(i32) -> bool) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => matches(write.code),
        ErrorKind::Command(command) => matches(command.code),
        ErrorKind::InsertMany(many) => many
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| matches(e.code))),
        _ => false,
    }
}

/// The useful part of a driver error: it ends its text with labels and a
/// hex dump of the raw server reply, which tell a person nothing.
pub(crate) fn trim_driver_message(message: &str) -> &str {
    message
        .find(", labels: {")
        .map_or(message, |end| &message[..end])
}

/// Adds a hint for the driver errors people meet most.
pub(crate) fn hint_for(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("not authorized") || lower.contains("unauthorized") {
        " (the user needs the readWrite role on this database; see README, \"Least privilege\")"
    } else if lower.contains("authentication failed") || lower.contains("kind: authentication") {
        " (check the user name and password in the URI, and authSource)"
    } else if lower.contains("server selection timeout") || lower.contains("connection refused") {
        " (is the server running and reachable at that address? check --uri / MONGODB_URI)"
    } else {
        ""
    }
}
