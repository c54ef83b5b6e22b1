//! `--exec PROGRAM [ARGS…]`: one process per job.
//!
//! The job reaches the program as JSON on stdin and as two environment
//! variables (`MONGOQ_JOB_ID`, `MONGOQ_ATTEMPT`); it never appears in argv
//! and no shell is involved, so data such as `; rm -rf /` stays data.
//! Exit 0 is success and stdout becomes `result` (parsed as JSON when it is
//! JSON); any other exit is a failure whose stderr tail becomes
//! `last_error`. Output is read as it comes and kept only up to a bound, so a
//! program that writes gigabytes neither blocks on a full pipe nor grows
//! the worker's memory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::Bson;

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
        let input = serde_json::to_vec(&job.to_json())
            .map_err(|e| HandlerError::permanent(format!("cannot encode the job as JSON: {e}")))?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("MONGOQ_JOB_ID", job.id_text())
            .env("MONGOQ_ATTEMPT", job.attempt.to_string())
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
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let child = Arc::new(Mutex::new(child));
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(key, (job.id.clone(), Arc::clone(&child)));

        // Feeding stdin and draining both outputs each get a thread: a
        // program may read its input only after writing a lot of output, and
        // a single thread doing these in turn would deadlock on a full pipe.
        let (status, out, err) = std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A program that exits without reading its input is fine.
                    let _ = stdin.write_all(&input);
                }
            });
            let out = scope.spawn(move || read_bounded(stdout, MAX_STDOUT, false));
            let err = scope.spawn(move || read_bounded(stderr, MAX_STDERR_TAIL, true));
            let status = self.wait(&child);
            (
                status,
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        });
        lock(&self.running).remove(&key);

        let status = status?;
        if status.success() {
            Ok(Some(result_from_stdout(&out)))
        } else {
            let tail = String::from_utf8_lossy(&err.bytes).trim().to_string();
            let how = describe_exit(status);
            Err(HandlerError::retry(if tail.is_empty() {
                format!("`{}` {how}", self.program.display())
            } else {
                format!("`{}` {how}: {tail}", self.program.display())
            }))
        }
    }

    /// Waits for the child, killing it at the timeout. Polls with a short,
    /// growing sleep: std has no wait-with-timeout, and a millisecond of
    /// latency is nothing next to a process start.
    fn wait(&self, child: &Mutex<Child>) -> Result<ExitStatus, HandlerError> {
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
                    kill_group(&mut child);
                    let _ = child.wait();
                    return Err(HandlerError::retry(format!(
                        "`{}` timed out after {} and was killed (--timeout)",
                        self.program.display(),
                        crate::duration::format_duration(timeout)
                    )));
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
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
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    total: usize,
}

/// Reads everything, keeping the first (or, with `tail`, the last) `limit`
/// bytes.
fn read_bounded(source: Option<impl Read>, limit: usize, tail: bool) -> Captured {
    let mut captured = Captured::default();
    let Some(mut source) = source else {
        return captured;
    };
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match source.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
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
    captured
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

fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited abnormally".to_string(),
    }
}

/// Finds `program` as a path or on `PATH`, like a shell would (without one).
fn resolve(program: &str) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            path.is_file()
        }
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_keep_head_or_tail() {
        let data: Vec<u8> = (0..100u8).collect();
        let head = read_bounded(Some(&data[..]), 10, false);
        assert_eq!(head.bytes, (0..10u8).collect::<Vec<_>>());
        assert_eq!(head.total, 100);
        let tail = read_bounded(Some(&data[..]), 10, true);
        assert_eq!(tail.bytes, (90..100u8).collect::<Vec<_>>());
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
