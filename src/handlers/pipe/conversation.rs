//! One job on a pipe handler's process: take a live process, send the job
//! line, read progress and the answer, and turn whatever breaks into a
//! failed attempt with a reason and a replaced process.

use std::time::{Duration, Instant};

/// How long a wait for a handler's line goes before checking whether its
/// process was killed.
const READ_STEP: Duration = Duration::from_millis(250);

use mongodb::bson::Bson;
use serde_json::Value;

use super::pool::{Busy, Pool, Stop};
use super::process::{Line, Process};
use super::protocol::{self, parse, Message, Violation};
use crate::handlers::child::TERM_GRACE;
use crate::handlers::exec::job_json;
use crate::handlers::{HandlerError, HandlerResult};
use crate::job::Job;
use crate::sync::lock;

/// How a job's conversation with its process ended.
enum Ending {
    /// The process answered: it can take the next job.
    Answered(HandlerResult),
    /// The process broke (died, or broke the protocol): replace it.
    Broken(Broken),
}

enum Broken {
    Closed,
    Violation(Violation),
}

impl Pool {
    pub(super) fn handle(&self, job: &Job) -> HandlerResult {
        let json = job_json(job, self.config.timeout);
        let line = protocol::job_line(&json);
        let expected = json["id"].clone();
        // A process found dead between jobs is replaced and another tried;
        // that is no fault of this job's, so it costs no attempt.
        for _ in 0..=self.config.processes {
            let mut process = self.checkout()?;
            if let Some(stray) = process.stray() {
                let why = match stray {
                    Line::Closed => format!("it {} between jobs", process.death()),
                    Line::Text(text) | Line::TooLong(text) => format!(
                        "it wrote on stdout between jobs (stdout carries only answers): {}",
                        protocol::quote(&text)
                    ),
                };
                self.replace(process, &why, true);
                continue;
            }
            process.set_job(Some(&job.id_text()));
            let deadline = self.config.timeout.map(|t| Instant::now() + t);
            lock(&self.busy).insert(
                process.slot,
                Busy {
                    id: job.id.clone(),
                    pgid: process.pgid(),
                    deadline,
                    stop: None,
                    killed: None,
                },
            );
            if let Err(error) = process.send(&line) {
                let stop = lock(&self.busy)
                    .remove(&process.slot)
                    .and_then(|b| b.stop.map(|(why, _)| why));
                if stop.is_some() {
                    // Stopped while the job was being written (a process
                    // that does not read its stdin, past --timeout).
                    return Err(self.broken(process, Broken::Closed, stop));
                }
                let why = format!(
                    "it could not be given the job ({error}); it {}",
                    process.death()
                );
                self.replace(process, &why, true);
                continue;
            }
            let ending = self.converse(&mut process, job, &expected);
            // Off the watchdog's list before the process is reaped below.
            let stop = lock(&self.busy)
                .remove(&process.slot)
                .and_then(|b| b.stop.map(|(why, _)| why));
            process.set_job(None);
            return match ending {
                Ending::Answered(result) => {
                    process.jobs += 1;
                    lock(&self.backoff[process.slot]).reset();
                    self.give_back(process);
                    result
                }
                Ending::Broken(broken) => Err(self.broken(process, broken, stop)),
            };
        }
        Err(HandlerError::unstarted(format!(
            "no `{}` process could take the job: each was found dead",
            self.program.display()
        )))
    }

    /// Reads the process's lines for `job` until its answer, or until it
    /// breaks. Progress lines go onto the job.
    fn converse(&self, process: &mut Process, job: &Job, expected: &Value) -> Ending {
        loop {
            // Waits in steps, so that a process whose group was killed
            // while something outside it holds its stdout cannot hold the
            // job (a line under way is read whole below).
            if !process.readable_within(READ_STEP) {
                if self.abandoned(process.slot) {
                    return Ending::Broken(Broken::Closed);
                }
                continue;
            }
            let line = match process.recv() {
                Line::Text(line) => line,
                Line::TooLong(head) => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        "a line is over the 16 MiB limit",
                        &head,
                    )))
                }
                Line::Closed => return Ending::Broken(Broken::Closed),
            };
            let message = match parse(&line) {
                Ok(message) => message,
                Err(violation) => return Ending::Broken(Broken::Violation(violation)),
            };
            match message.id() {
                None => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        "the handshake is said once, at start, not while a job runs",
                        &line,
                    )))
                }
                Some(id) if id != expected => {
                    return Ending::Broken(Broken::Violation(Violation::new(
                        format!("the line is about job {id}, but the job running is {expected}"),
                        &line,
                    )))
                }
                Some(_) => {}
            }
            match message {
                Message::Progress { fraction, note, .. } => {
                    job.set_progress(fraction, note.as_deref());
                }
                Message::Done { result, .. } => {
                    return Ending::Answered(Ok(Some(result_bson(result))));
                }
                Message::Failed {
                    error,
                    retry,
                    retry_after,
                    ..
                } => {
                    let mut failed = if retry {
                        HandlerError::retry(error)
                    } else {
                        HandlerError::permanent(error)
                    };
                    if let Some(seconds) = retry_after {
                        failed = failed.after(std::time::Duration::from_secs_f64(seconds));
                    }
                    return Ending::Answered(Err(failed));
                }
                Message::Pause {
                    seconds, reason, ..
                } => {
                    return Ending::Answered(Err(HandlerError::pause_queue(
                        std::time::Duration::from_secs_f64(seconds),
                        reason,
                    )));
                }
                Message::Snooze { seconds, .. } => {
                    return Ending::Answered(Err(HandlerError::snooze(
                        std::time::Duration::from_secs_f64(seconds),
                    )));
                }
                Message::Ready => unreachable!("the handshake has no id"),
            }
        }
    }

    /// The error of an attempt whose process broke, and its replacement.
    fn broken(&self, mut process: Process, broken: Broken, stop: Option<Stop>) -> HandlerError {
        let program = self.program.display().to_string();
        let message = match (stop, broken) {
            (Some(Stop::Timeout), _) => format!(
                "`{program}` timed out after {} (--timeout): TERM went to its process group, KILL {} later; the process is replaced",
                crate::duration::format_duration(self.config.timeout.unwrap_or_default()),
                crate::duration::format_duration(TERM_GRACE)
            ),
            (Some(Stop::Cancel), _) => "cancelled by an operator while running; its process was stopped".to_string(),
            (Some(Stop::Abort), _) => "stopped: the worker shut down before the job finished".to_string(),
            (None, Broken::Closed) => {
                let death = process.death();
                if death.starts_with("exited with status 0") {
                    format!(
                        "`{program}` {death} before answering the job; a --pipe handler exits only when its stdin closes (to replace processes now and then, use --pipe-max-jobs); the process is replaced"
                    )
                } else {
                    format!("`{program}` {death} while running the job; the process is replaced")
                }
            }
            (None, Broken::Violation(violation)) => {
                format!("`{program}` broke the --pipe protocol ({violation}); the process is replaced")
            }
        };
        // A timed-out or cancelled process was stopped on purpose: it is
        // replaced at once. A crash or a violation backs off.
        let failed = stop.is_none();
        self.replace(process, &message, failed);
        HandlerError::retry(message)
    }
}

/// A handler's `result` JSON as stored: extended JSON is read as BSON
/// (`{"$date": …}` becomes a date), anything else is kept as it is.
fn result_bson(result: Value) -> Bson {
    Bson::try_from(result.clone()).unwrap_or_else(|_| Bson::String(result.to_string()))
}
