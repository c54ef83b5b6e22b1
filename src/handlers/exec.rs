//! `--exec PROGRAM [ARGS…]`: one process per job.
//!
//! The job reaches the program as JSON on stdin and as two environment
//! variables (`MONGOQ_JOB_ID`, `MONGOQ_ATTEMPT`); it never appears in argv
//! and no shell is involved, so data such as `; rm -rf /` stays data.
//! Exit 0 is success and stdout becomes `result` (parsed as JSON when it is
//! JSON); any other exit is a failure whose stderr tail becomes
//! `last_error`. Exit 75 (`EX_TEMPFAIL`, "try again later") with a JSON
//! object on stdout says how long: `{"snooze": SECONDS}` runs the job again
//! then without charging the attempt, `{"retry_after": SECONDS}` is a
//! failure whose next attempt waits that long instead of the back-off, and
//! `{"pause": SECONDS, "reason": "…"}` pauses the job's queue fleet-wide
//! that long (the job runs again when it ends). Output is read as it comes and kept only up to a bound, so a
//! program that writes gigabytes neither blocks on a full pipe nor grows
//! the worker's memory.
//!
//! The job is over when the program exits: its outcome is settled within a
//! second even if something it started still holds its output open, and
//! what is left of its process group gets TERM, then KILL.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::Bson;

use super::child::{describe_exit, end_group, group_of, resolve, signal_group, TERM_GRACE};
use crate::error::Error;
use crate::handlers::{Handler, HandlerError, HandlerResult};
use crate::job::Job;
use crate::sync::lock;

/// Stdout kept for `result`.
pub const MAX_STDOUT: usize = 256 * 1024;
/// Stderr kept (the end of it) for `last_error`; with the message around
/// it, this stays under the 4 KiB bound on stored error text.
pub const MAX_STDERR_TAIL: usize = 3 * 1024;

/// Programs running now, by a per-run key, with their job's id.
type Running = HashMap<u64, (Bson, Arc<Mutex<Child>>)>;

/// Runs a program per job.
pub struct ExecHandler {
    program: PathBuf,
    args: Vec<String>,
    timeout: Option<Duration>,
    /// Children running now, with the id of their job.
    running: Mutex<Running>,
    next_key: AtomicU64,
}

impl ExecHandler {
    /// Checks that `program` can be found now, so a typo is a start-up error
    /// rather than every job failing.
    pub fn new(
        program: &str,
        args: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecHandler, Error> {
        let resolved = resolve(program).ok_or_else(|| {
            Error::config(
                "--exec",
                format!("program `{program}` not found (give a path, or a name on PATH) or not executable"),
            )
        })?;
        Ok(ExecHandler {
            program: resolved,
            args,
            timeout,
            running: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
        })
    }

    fn run(&self, job: &Job) -> HandlerResult {
        let input = serde_json::to_vec(&job_json(job, self.timeout))
            .map_err(|e| HandlerError::permanent(format!("cannot encode the job as JSON: {e}")))?;
        let mut command = Command::new(&self.program);
        if let Some(traceparent) = job.traceparent() {
            // Its spans nest under the attempt's (see crate::trace).
            command.env("TRACEPARENT", traceparent);
        }
        let mut child = command
            .args(&self.args)
            .env("MONGOQ_JOB_ID", job.id_text())
            .env("MONGOQ_ATTEMPT", job.attempt.to_string())
            .env("MONGOQ_QUEUE", &job.queue)
            .env("MONGOQ_GROUP", job.group.as_deref().unwrap_or(""))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill reaches what it started too
            // (a shell's children hold the output pipes open otherwise).
            .process_group(0)
            .spawn()
            .map_err(|e| {
                HandlerError::retry(format!("cannot start `{}`: {e}", self.program.display()))
            })?;
        let pgid = group_of(&child);
        let stdin = child.stdin.take();
        let stdout = Reader::start(child.stdout.take(), MAX_STDOUT, false);
        let stderr = Reader::start(child.stderr.take(), MAX_STDERR_TAIL, true);
        // Feeding stdin gets a thread of its own: a program may read its
        // input only after writing a lot of output. None of these threads is
        // joined: a background process the program started may hold a pipe
        // open long after the program exited, and the job must not wait
        // for it (the pipe's reader ends when that process does).
        if let Some(mut stdin) = stdin {
            std::thread::spawn(move || {
                // A program that exits without reading its input is fine.
                let _ = stdin.write_all(&input);
            });
        }
        let child = Arc::new(Mutex::new(child));
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(key, (job.id.clone(), Arc::clone(&child)));
        let status = self.wait(&child, pgid);
        lock(&self.running).remove(&key);
        // The program is gone; its outputs usually close with it. What is
        // left of its process group (a background child still holding them)
        // gets TERM, then KILL, and the outcome is settled within a second
        // of the exit either way.
        if !(stdout.finished_within(OUTPUT_GRACE) && stderr.finished_within(OUTPUT_GRACE)) {
            if let Some(pgid) = pgid {
                if end_group(pgid, None, TERM_GRACE) {
                    log::warn!(
                        "job {}: `{}` exited, but processes it started still held its output; they were stopped",
                        job.id_text(),
                        self.program.display()
                    );
                }
            }
            stdout.finished_within(OUTPUT_GRACE);
            stderr.finished_within(OUTPUT_GRACE);
        } else if let Some(pgid) = pgid {
            end_group(pgid, None, TERM_GRACE);
        }
        let (out, err) = (stdout.captured(), stderr.captured());

        let status = status?;
        if status.success() {
            Ok(Some(result_from_stdout(&out)))
        } else {
            let tail = String::from_utf8_lossy(&err.bytes).trim().to_string();
            let how = describe_exit(status);
            let failed = HandlerError::retry(if tail.is_empty() {
                format!("`{}` {how}", self.program.display())
            } else {
                format!("`{}` {how}: {tail}", self.program.display())
            });
            Err(match status.code() {
                Some(TEMPFAIL) => not_now(failed, &out.bytes),
                _ => failed,
            })
        }
    }

    /// Waits for the child, ending its group at the timeout (TERM, then
    /// KILL after [`TERM_GRACE`]). Polls with a short, growing sleep: std
    /// has no wait-with-timeout, and a millisecond of latency is nothing
    /// next to a process start.
    fn wait(&self, child: &Mutex<Child>, pgid: Option<i32>) -> Result<ExitStatus, HandlerError> {
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(status) = lock(child)
                .try_wait()
                .map_err(|e| HandlerError::retry(format!("cannot wait for the program: {e}")))?
            {
                return Ok(status);
            }
            if let Some(timeout) = self.timeout {
                if started.elapsed() >= timeout {
                    let mut child = lock(child);
                    match pgid {
                        Some(pgid) => {
                            end_group(pgid, Some(&mut child), TERM_GRACE);
                        }
                        None => {
                            let _ = child.kill();
                        }
                    }
                    let _ = child.wait();
                    return Err(HandlerError::retry(format!(
                        "`{}` timed out after {} and was stopped (--timeout: TERM to its process group, KILL {} later)",
                        self.program.display(),
                        crate::duration::format_duration(timeout),
                        crate::duration::format_duration(TERM_GRACE)
                    )));
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// The job as the program reads it: [`Job::to_json`], plus `deadline` (RFC
/// 3339, UTC, by this host's clock) when a timeout applies.
pub(crate) fn job_json(job: &Job, timeout: Option<Duration>) -> serde_json::Value {
    let mut json = job.to_json();
    if let (Some(timeout), Some(fields)) = (timeout, json.as_object_mut()) {
        let deadline =
            mongodb::bson::DateTime::from_system_time(std::time::SystemTime::now() + timeout);
        if let Ok(text) = deadline.try_to_rfc3339_string() {
            fields.insert("deadline".into(), text.into());
        }
    }
    json
}

/// How long after a program's exit its output pipes may take to close.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// A pipe read to its end on a thread of its own, keeping a bounded part.
struct Reader {
    captured: Arc<Mutex<Captured>>,
    done: crossbeam_channel::Receiver<()>,
}

impl Reader {
    fn start(source: Option<impl Read + Send + 'static>, limit: usize, tail: bool) -> Reader {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let shared = Arc::clone(&captured);
        std::thread::spawn(move || {
            read_bounded(source, limit, tail, &shared);
            let _ = done_tx.send(());
        });
        Reader { captured, done }
    }

    /// Whether the pipe reached its end, waiting up to `within`.
    fn finished_within(&self, within: Duration) -> bool {
        !matches!(
            self.done.recv_timeout(within),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        )
    }

    /// What was read so far.
    fn captured(&self) -> Captured {
        let captured = lock(&self.captured);
        Captured {
            bytes: captured.bytes.clone(),
            total: captured.total,
        }
    }
}

impl Handler for ExecHandler {
    fn handle(&self, job: &Job) -> HandlerResult {
        self.run(job)
    }

    fn abort(&self) {
        for (_, child) in lock(&self.running).values() {
            kill_group(&mut lock(child));
        }
    }

    fn cancel(&self, job_id: &Bson) {
        for (id, child) in lock(&self.running).values() {
            if id == job_id {
                kill_group(&mut lock(child));
            }
        }
    }
}

/// Kills the program and every process in its group.
fn kill_group(child: &mut Child) {
    if let Some(pgid) = group_of(child) {
        signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    total: usize,
}

/// Reads everything into `into`, keeping the first (or, with `tail`, the
/// last) `limit` bytes.
fn read_bounded(source: Option<impl Read>, limit: usize, tail: bool, into: &Mutex<Captured>) {
    let Some(mut source) = source else {
        return;
    };
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match source.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut captured = lock(into);
                captured.total += n;
                if tail {
                    captured.bytes.extend_from_slice(&buffer[..n]);
                    if captured.bytes.len() > limit {
                        let cut = captured.bytes.len() - limit;
                        captured.bytes.drain(..cut);
                    }
                } else if captured.bytes.len() < limit {
                    let room = limit - captured.bytes.len();
                    captured.bytes.extend_from_slice(&buffer[..n.min(room)]);
                }
            }
        }
    }
}

/// The exit status that says "not now" (sysexits.h's `EX_TEMPFAIL`).
pub const TEMPFAIL: i32 = 75;

/// What an exit 75 asks for, from the JSON object on stdout: a snooze, a
/// failure with its own wait, or (without either) a plain failure whose
/// message says what was missing.
fn not_now(failed: HandlerError, stdout: &[u8]) -> HandlerError {
    let answer: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(stdout).ok();
    let seconds = |field: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get(field))
            .and_then(serde_json::Value::as_f64)
            .filter(|s| (0.0..=super::pipe::protocol::MAX_WAIT_SECONDS).contains(s))
            .map(Duration::from_secs_f64)
    };
    if let Some(delay) = seconds("pause") {
        let reason = answer
            .as_ref()
            .and_then(|a| a.get("reason"))
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| failed.message.clone(), String::from);
        return HandlerError::pause_queue(delay, reason);
    }
    if let Some(delay) = seconds("snooze") {
        return HandlerError::snooze(delay);
    }
    if let Some(delay) = seconds("retry_after") {
        return failed.after(delay);
    }
    HandlerError {
        message: format!(
            "{} (exit 75 asks for a wait: print {{\"snooze\": SECONDS}}, {{\"retry_after\": SECONDS}} or {{\"pause\": SECONDS}} on stdout; retried after the back-off)",
            failed.message
        ),
        ..failed
    }
}

/// JSON stdout becomes structured `result`; other text is kept as a string;
/// output past the bound is noted rather than silently cut.
fn result_from_stdout(out: &Captured) -> Bson {
    if out.total > out.bytes.len() {
        let head = String::from_utf8_lossy(&out.bytes);
        return Bson::String(format!(
            "{head}…[truncated: {} bytes of output, {} kept]",
            out.total,
            out.bytes.len()
        ));
    }
    let text = String::from_utf8_lossy(&out.bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Bson::Null;
    }
    serde_json::from_str::<serde_json::Value>(trimmed)
        .ok()
        .and_then(|value| Bson::try_from(value).ok())
        .unwrap_or_else(|| Bson::String(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_75_says_how_long_on_stdout() {
        let failed = || HandlerError::retry("`job.sh` exited with status 75");
        let snooze = not_now(failed(), br#"{"snooze": 30}"#);
        assert_eq!(snooze.snooze, Some(Duration::from_secs(30)));
        let pause = not_now(failed(), br#"{"pause": 3, "reason": "429"}"#);
        assert!(pause.pause_queue && pause.snooze == Some(Duration::from_secs(3)));
        assert_eq!(pause.message, "429");
        let after = not_now(failed(), b"{\"retry_after\": 2.5}\n");
        assert_eq!(after.retry_after, Some(Duration::from_millis(2500)));
        assert_eq!(after.snooze, None);
        assert_eq!(after.message, failed().message);
        for unclear in [
            &b"later"[..],
            b"{\"snooze\": \"30s\"}",
            b"{\"snooze\": -1}",
            b"",
        ] {
            let plain = not_now(failed(), unclear);
            assert_eq!((plain.snooze, plain.retry_after), (None, None));
            assert!(
                plain.message.contains("exit 75 asks for a wait"),
                "{}",
                plain.message
            );
        }
    }

    #[test]
    fn bounded_reads_keep_head_or_tail() {
        let data: Vec<u8> = (0..100u8).collect();
        let head = Mutex::new(Captured::default());
        read_bounded(Some(&data[..]), 10, false, &head);
        let head = head.into_inner().unwrap();
        assert_eq!(head.bytes, (0..10u8).collect::<Vec<_>>());
        assert_eq!(head.total, 100);
        let tail = Mutex::new(Captured::default());
        read_bounded(Some(&data[..]), 10, true, &tail);
        assert_eq!(
            tail.into_inner().unwrap().bytes,
            (90..100u8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn stdout_json_becomes_structured_result() {
        let out = Captured {
            bytes: br#"{"ok": 1}"#.to_vec(),
            total: 9,
        };
        assert_eq!(
            result_from_stdout(&out),
            Bson::Document(mongodb::bson::doc! {"ok": 1})
        );
        let text = Captured {
            bytes: b"done\n".to_vec(),
            total: 5,
        };
        assert_eq!(result_from_stdout(&text), Bson::String("done".into()));
    }

    #[test]
    fn missing_programs_are_refused_up_front() {
        assert!(ExecHandler::new("/no/such/program", vec![], None).is_err());
        assert!(ExecHandler::new("definitely-not-a-command-xyz", vec![], None).is_err());
        assert!(ExecHandler::new("sh", vec![], None).is_ok());
    }
}
