//! One handler process of `--pipe`: its pipes, the two threads that read
//! them, the handshake, and how it ends.
//!
//! stdout is read by the handler thread itself, line by line through a
//! buffer, and a line over [`MAX_LINE`] is refused without being held. A
//! reader thread in between would cost every job two more thread wake-ups;
//! none is needed to stop waiting: a job past its deadline, or cancelled,
//! has its process group ended by the watchdog, which closes the pipe and
//! ends the read. Waits that need a timeout (the handshake) poll(2) first.
//!
//! stderr is read continuously on a thread of its own (a handler that
//! writes megabytes of logs never blocks on a full pipe), forwarded to the
//! worker's log tagged with the job it ran, and its tail kept for
//! `last_error`. That thread is not joined: a process the handler started
//! may hold stderr open after the handler died; the thread ends when that
//! one does (its process group is ended, see [`super::super::child`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

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
    stdout: Option<BufReader<ChildStdout>>,
    /// A job line and its newline, written with one call.
    outgoing: Vec<u8>,
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
        let stdout = child
            .stdout
            .take()
            .map(|pipe| BufReader::with_capacity(64 * 1024, pipe));
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
            stdout,
            outgoing: Vec::new(),
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
            if !self.readable_within(step) {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "it did not say {{\"ready\": true}} within {}",
                        crate::duration::format_duration(within)
                    ));
                }
                continue;
            }
            match self.recv() {
                Line::Text(line) => {
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
                Line::TooLong(head) => {
                    return Err(format!(
                        "its first line is over 16 MiB; it must be the handshake {{\"ready\": true}}; it starts: {}",
                        quote(&head)
                    ))
                }
                Line::Closed => {
                    return Err(format!("{} before its handshake", self.death()));
                }
            }
        }
    }

    /// Whether stdout has something to read (a line, or its end) now or
    /// within `timeout`.
    pub(crate) fn readable_within(&self, timeout: Duration) -> bool {
        let Some(stdout) = &self.stdout else {
            return true;
        };
        if !stdout.buffer().is_empty() {
            return true;
        }
        let mut fds = [PollFd::new(stdout.get_ref().as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::ZERO);
        // EINTR or an error: say readable, and let the read tell.
        poll(&mut fds, timeout).map_or(true, |n| n > 0)
    }

    /// What it wrote between jobs (what is there, without waiting for the
    /// rest of a line), or its stdout closing (a dead process); `None` when
    /// it is quiet, as it should be.
    pub(crate) fn stray(&mut self) -> Option<Line> {
        if !self.readable_within(Duration::ZERO) {
            return None;
        }
        let stdout = self.stdout.as_mut()?;
        Some(match stdout.fill_buf() {
            Ok([]) | Err(_) => Line::Closed,
            Ok(buffer) => Line::Text(buffer[..buffer.len().min(256)].to_vec()),
        })
    }

    /// Writes one job line (and its newline, in the same call).
    pub(crate) fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin is closed"))?;
        self.outgoing.clear();
        self.outgoing.extend_from_slice(line);
        self.outgoing.push(b'\n');
        stdin.write_all(&self.outgoing)
    }

    /// The next line of stdout (blocking until a line, or its end).
    pub(crate) fn recv(&mut self) -> Line {
        match self.stdout.as_mut() {
            Some(stdout) => {
                let line = read_line(stdout);
                if matches!(line, Line::TooLong(_) | Line::Closed) {
                    // The process is replaced; what else it writes is not read.
                    self.stdout = None;
                }
                line
            }
            None => Line::Closed,
        }
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

/// Reads one line (without its newline) from `reader`.
fn read_line(reader: &mut impl BufRead) -> Line {
    let mut line = Vec::new();
    loop {
        let (found, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => {
                // A last line without its newline still counts.
                return if line.is_empty() {
                    Line::Closed
                } else {
                    Line::Text(line)
                };
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
            return Line::TooLong(line);
        }
        if found {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Line::Text(line);
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
        let mut reader = BufReader::new(input);
        let mut lines = Vec::new();
        loop {
            let line = read_line(&mut reader);
            let end = !matches!(line, Line::Text(_));
            lines.push(line);
            if end {
                return lines;
            }
        }
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
