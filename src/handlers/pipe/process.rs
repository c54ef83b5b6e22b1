//! One handler process of `--pipe`: its pipes, the two threads that read
//! them, the handshake, and how it ends.
//!
//! stdout is read line by line on a thread of its own into a channel, so
//! the handler thread waits on the channel, never on a pipe, and a line
//! over [`MAX_LINE`] is refused without being held. stderr is read
//! continuously on another thread (a handler that writes megabytes of logs
//! never blocks on a full pipe), forwarded to the worker's log tagged with
//! the job it ran, and its tail kept for `last_error`.
//!
//! Neither reader is joined: a process the handler started may hold a pipe
//! open after the handler died; the reader ends when that one does (its
//! process group is ended, see [`super::super::child`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::protocol::{parse, quote, Message, MAX_LINE};
use crate::handlers::child::{describe_exit, end_group, group_of, wait_within, Tail, TERM_GRACE};
use crate::shutdown::Shutdown;
use crate::sync::lock;

/// stderr kept (its end) for `last_error`.
pub const STDERR_TAIL: usize = 3 * 1024;

/// Longest stderr line forwarded to the log as one line.
const LOG_LINE: usize = 4 * 1024;

/// What the stdout reader saw.
#[derive(Debug)]
pub(crate) enum Line {
    /// One line, without its newline.
    Text(Vec<u8>),
    /// A line longer than [`MAX_LINE`]; its start.
    TooLong(Vec<u8>),
    /// stdout closed (the process exited, or closed it).
    Closed,
}

/// The stderr side: its tail and the tag its lines are logged with.
struct Stderr {
    tail: Mutex<Tail>,
    tag: Mutex<String>,
    closed: AtomicBool,
}

/// A started handler process.
pub(crate) struct Process {
    child: Child,
    pgid: i32,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
    stderr: Arc<Stderr>,
    /// Which slot (handler thread's process) this is.
    pub(crate) slot: usize,
    /// Jobs it answered.
    pub(crate) jobs: u64,
    label: String,
}

impl Process {
    /// Starts `program` in a process group of its own, with piped stdio.
    pub(crate) fn spawn(program: &Path, args: &[String], slot: usize) -> std::io::Result<Process> {
        let mut child = Command::new(program)
            .args(args)
            .env("MONGOQ_PIPE_SLOT", slot.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let pgid = group_of(&child).unwrap_or_default();
        let label = format!("pipe[{slot}] pid {}", child.id());
        let (tx, lines) = crossbeam_channel::bounded(64);
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || read_lines(stdout, &tx));
        }
        let stderr = Arc::new(Stderr {
            tail: Mutex::new(Tail::new(STDERR_TAIL)),
            tag: Mutex::new(label.clone()),
            closed: AtomicBool::new(false),
        });
        if let Some(pipe) = child.stderr.take() {
            let shared = Arc::clone(&stderr);
            std::thread::spawn(move || read_stderr(pipe, &shared));
        }
        Ok(Process {
            stdin: child.stdin.take(),
            child,
            pgid,
            lines,
            stderr,
            slot,
            jobs: 0,
            label,
        })
    }

    /// The process group to signal while the process is held unreaped.
    pub(crate) fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Waits for `{"ready": true}` for up to `within` (or until `stop`).
    /// Any other line, or an exit first, is a start failure with a reason.
    pub(crate) fn await_ready(&mut self, within: Duration, stop: &Shutdown) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if stop.is_requested() {
                return Err("the worker is stopping".into());
            }
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match self.lines.recv_timeout(step) {
                Ok(Line::Text(line)) => {
                    return match parse(&line) {
                        Ok(Message::Ready) => Ok(()),
                        Ok(_) => Err(format!(
                            "its first line must be the handshake {{\"ready\": true}}, but it is {}",
                            quote(&line)
                        )),
                        Err(violation) => Err(format!(
                            "its first line must be the handshake {{\"ready\": true}}: {violation}"
                        )),
                    };
                }
                Ok(Line::TooLong(head)) => {
                    return Err(format!(
                        "its first line is over 16 MiB; it must be the handshake {{\"ready\": true}}; it starts: {}",
                        quote(&head)
                    ))
                }
                Ok(Line::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} before its handshake", self.death()));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "it did not say {{\"ready\": true}} within {}",
                            crate::duration::format_duration(within)
                        ));
                    }
                }
            }
        }
    }

    /// A line written between jobs, or its stdout closing (a dead process).
    pub(crate) fn stray(&self) -> Option<Line> {
        self.lines.try_recv().ok()
    }

    /// Writes one job line.
    pub(crate) fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        stdin.write_all(line)?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// The next line of stdout (blocking).
    pub(crate) fn recv(&self) -> Line {
        self.lines.recv().unwrap_or(Line::Closed)
    }

    /// Tags stderr lines with the job now running (or none); a new job
    /// starts a fresh tail, so `last_error` quotes only what it wrote.
    pub(crate) fn set_job(&self, job: Option<&str>) {
        *lock(&self.stderr.tag) = match job {
            Some(id) => {
                lock(&self.stderr.tail).clear();
                format!("{} job {id}", self.label)
            }
            None => self.label.clone(),
        };
    }

    /// The end of what it wrote on stderr (waiting briefly for the pipe to
    /// close when the process is gone, so its last words are in).
    pub(crate) fn stderr_tail(&self) -> String {
        let deadline = Instant::now() + Duration::from_millis(300);
        while !self.stderr.closed.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        lock(&self.stderr.tail).text()
    }

    /// How it died, with its stderr tail, once its stdout closed: waits up
    /// to a second for its exit, then ends its group. Reaps it.
    pub(crate) fn death(&mut self) -> String {
        let status = wait_within(&mut self.child, Duration::from_secs(1));
        // Whatever it started goes too (it may hold stderr open).
        end_group(self.pgid, Some(&mut self.child), TERM_GRACE);
        let status = status.or_else(|| self.child.try_wait().ok().flatten());
        let how = status.map_or_else(
            || "closed its stdout and was stopped".to_string(),
            describe_exit,
        );
        let tail = self.stderr_tail();
        if tail.is_empty() {
            how
        } else {
            format!("{how}: {tail}")
        }
    }

    /// Ends it: closes stdin (a handler's cue to exit), waits up to `grace`,
    /// then TERM and KILL to its group. Returns its exit status if known.
    pub(crate) fn end(mut self, grace: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let status = wait_within(&mut self.child, grace);
        end_group(self.pgid, Some(&mut self.child), TERM_GRACE);
        status.or_else(|| self.child.try_wait().ok().flatten())
    }

    /// Ends it now: TERM and KILL to its group, without waiting for EOF.
    pub(crate) fn kill(mut self) {
        drop(self.stdin.take());
        end_group(self.pgid, Some(&mut self.child), TERM_GRACE);
        let _ = self.child.try_wait();
    }
}

/// Reads stdout into `lines`, one message per line, until it closes.
fn read_lines(stdout: impl Read, lines: &Sender<Line>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        let (found, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    // A last line without its newline still counts.
                    let _ = lines.send(Line::Text(std::mem::take(&mut line)));
                }
                let _ = lines.send(Line::Closed);
                return;
            }
            Ok(buffer) => {
                if let Some(at) = buffer.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&buffer[..at]);
                    (true, at + 1)
                } else {
                    line.extend_from_slice(buffer);
                    (false, buffer.len())
                }
            }
        };
        reader.consume(used);
        if line.len() > MAX_LINE {
            line.truncate(256);
            let _ = lines.send(Line::TooLong(line));
            // The process is replaced; what else it writes is not read.
            return;
        }
        if found {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if lines.send(Line::Text(std::mem::take(&mut line))).is_err() {
                return;
            }
        }
    }
}

/// Reads stderr to its end: keeps the tail, logs each line with its tag.
fn read_stderr(pipe: impl Read, stderr: &Stderr) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line = Vec::new();
    loop {
        let used = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buffer) => {
                lock(&stderr.tail).push(buffer);
                let mut rest = buffer;
                while let Some(at) = rest.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&rest[..at]);
                    log_line(stderr, &line);
                    line.clear();
                    rest = &rest[at + 1..];
                }
                line.extend_from_slice(rest);
                if line.len() >= LOG_LINE {
                    log_line(stderr, &line);
                    line.clear();
                }
                buffer.len()
            }
        };
        reader.consume(used);
    }
    if !line.is_empty() {
        log_line(stderr, &line);
    }
    stderr.closed.store(true, Ordering::Release);
}

fn log_line(stderr: &Stderr, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if !text.is_empty() {
        log::info!(target: "mongoq::pipe", "{}: {text}", lock(&stderr.tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<Line> {
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(input, &tx);
        rx.try_iter().collect()
    }

    #[test]
    fn stdout_is_cut_into_lines_and_ends_closed() {
        let lines = lines_of(b"{\"a\":1}\r\n{\"b\":2}\nlast");
        let texts: Vec<String> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["{\"a\":1}", "{\"b\":2}", "last"]);
        assert!(matches!(lines.last(), Some(Line::Closed)));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_by_its_start() {
        let big = vec![b'x'; MAX_LINE + 10];
        let lines = lines_of(&big);
        assert!(matches!(&lines[0], Line::TooLong(head) if head.len() == 256));
        assert_eq!(lines.len(), 1);
    }
}
