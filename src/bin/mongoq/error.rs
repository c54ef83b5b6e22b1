//! The binary's errors: what to tell the user, and the exit code.
//!
//! The library's typed errors become a message and a code here, once: a bad
//! flag or setting is a usage error (2), bad input data 65 (sysexits'
//! EX_DATAERR), anything else that failed 1. The codes are named so that a
//! script's author can find them in one place (and in the README).

use std::process::ExitCode;

/// Exit codes, as scripts see them.
pub mod exit {
    /// The command failed (database unreachable, job not found, …).
    pub const FAILURE: u8 = 1;
    /// A flag or setting is wrong: fix the command line.
    pub const USAGE: u8 = 2;
    /// The input data is not valid (sysexits' EX_DATAERR).
    pub const BAD_INPUT: u8 = 65;
    /// `enqueue --wait --timeout` gave up; the job stays queued (as
    /// coreutils' `timeout`).
    pub const TIMEOUT: u8 = 124;
    /// `work` got a second stop signal and exited at once.
    pub const SECOND_SIGNAL: i32 = 130;
}

/// A failed command: what to tell the user, and the exit code.
#[derive(Debug)]
pub struct CommandError {
    message: String,
    code: u8,
}

impl CommandError {
    /// A failure with its message and exit code.
    pub fn new(message: impl Into<String>, code: u8) -> CommandError {
        CommandError {
            message: message.into(),
            code,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<mongoq::Error> for CommandError {
    fn from(error: mongoq::Error) -> Self {
        // A setting or name the user gave is a usage error: their command
        // line, not the database, needs fixing.
        let code = match &error {
            mongoq::Error::Config { .. }
            | mongoq::Error::QueueName(_)
            | mongoq::Error::InvalidUri { .. } => exit::USAGE,
            _ => exit::FAILURE,
        };
        CommandError::new(error.to_string(), code)
    }
}

/// A usage error (exit 2): a flag is wrong.
pub fn usage(message: impl Into<String>) -> CommandError {
    CommandError::new(message, exit::USAGE)
}

/// A bad-input error (exit 65): the data given is not valid.
pub fn bad_input(message: impl Into<String>) -> CommandError {
    CommandError::new(message, exit::BAD_INPUT)
}

/// A failure (exit 1).
pub fn failure(message: impl Into<String>) -> CommandError {
    CommandError::new(message, exit::FAILURE)
}
