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
    /// A group name that cannot name a group.
    #[error("`{0}` is not a valid group name: use 1 to 200 printable characters, e.g. `acme`")]
    GroupName(String),
    /// A queue name that cannot name a queue.
    #[error("`{0}` is not a valid queue name: use 1 to 200 printable characters, e.g. `emails`")]
    QueueName(String),
    /// A transaction ran into another write (MongoDB labels the error
    /// `TransientTransactionError`): abort it and run it again.
    #[error("MongoDB {operation} failed: {reason} (a transient transaction error: abort the transaction and run it again)")]
    Transient {
        /// What mongoq was doing.
        operation: &'static str,
        /// The driver's message.
        reason: String,
    },
    /// The job's lease was lost (its lease expired and another worker took
    /// it, or an operator cancelled it): nothing of this attempt may land.
    #[error("job {0} is no longer held by this worker (its lease was lost or it was cancelled); abort the transaction: nothing of this attempt may land")]
    LeaseLost(String),
    /// Transactions need a replica set or a sharded cluster.
    #[error("MongoDB transactions need a replica set or a sharded cluster, and {0} is a standalone server; run it as a (one-node) replica set to enqueue or complete jobs in a transaction")]
    NeedsReplicaSet(String),
    /// A value handed to the library is not usable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether the whole transaction should be run again (the server said
    /// so with `TransientTransactionError`).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

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

/// A driver error as one line a person can act on: what failed and why,
/// without the driver's debug dump (`Topology: { … }`, `labels: {}`,
/// `source: None`, hex replies).
pub(crate) fn describe_driver_error(error: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    let text = match error.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => server_selection(message),
        ErrorKind::Command(command) => {
            format!(
                "{} (code {} {})",
                command.message, command.code, command.code_name
            )
        }
        ErrorKind::Write(WriteFailure::WriteError(write)) => {
            format!("{} (code {})", write.message, write.code)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => {
            format!(
                "write concern not satisfied: {} (code {})",
                concern.message, concern.code
            )
        }
        ErrorKind::InsertMany(many) => match many.write_errors.as_deref() {
            Some([first, ..]) => format!(
                "{} (code {}; {} documents refused)",
                first.message,
                first.code,
                many.write_errors.as_ref().map_or(0, Vec::len)
            ),
            _ => many
                .write_concern_error
                .as_ref()
                .map_or_else(|| "insert failed".to_string(), |c| c.message.clone()),
        },
        ErrorKind::Io(io) => format!("I/O error: {io}"),
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        other => other.to_string(),
    };
    let text = trim_driver_message(&text);
    text.lines().next().unwrap_or(text).trim().to_string()
}

/// "Server selection timeout: No available servers. Topology: { … Servers:
/// [ { Address: A, …, Error: E, … } ] }" → "server selection timeout: no
/// available servers (A: E)".
fn server_selection(message: &str) -> String {
    let Some((head, topology)) = message.split_once(". Topology:") else {
        return message.to_string();
    };
    let mut servers = Vec::new();
    for part in topology.split("Address: ").skip(1) {
        let address = part.split(',').next().unwrap_or("").trim();
        let error = part.split_once("Error: ").map(|(_, rest)| {
            let rest = rest.trim_start_matches("Kind: ");
            let end = [", labels:", " }", ", source:"]
                .iter()
                .filter_map(|marker| rest.find(marker))
                .min()
                .unwrap_or(rest.len());
            rest[..end].trim().to_string()
        });
        servers.push(match error {
            Some(error) => format!("{address}: {error}"),
            None => address.to_string(),
        });
    }
    let head = head.trim_start_matches("Kind: ").to_lowercase();
    if servers.is_empty() {
        head
    } else {
        format!("{head} ({})", servers.join("; "))
    }
}

/// The useful part of a driver error: it ends its text with labels and a
/// hex dump of the raw server reply, which tell a person nothing.
pub(crate) fn trim_driver_message(message: &str) -> &str {
    [", labels: {", ", source: None", ", server response:"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_selection_dump_becomes_one_line() {
        let dump = "Server selection timeout: No available servers. Topology: { Type: ReplicaSetNoPrimary, Set Name: secantus, Max Set Version: 1, Servers: [ { Address: 127.0.0.1:45709, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {} } ] }";
        assert_eq!(
            server_selection(dump),
            "server selection timeout: no available servers (127.0.0.1:45709: I/O error: Connection refused (os error 111))"
        );
        assert_eq!(server_selection("plain"), "plain");
    }

    #[test]
    fn driver_tails_are_trimmed() {
        assert_eq!(trim_driver_message("bad, labels: {}, source: None"), "bad");
        assert_eq!(trim_driver_message("bad, source: None"), "bad");
    }
}
