//! What the process handlers (`--exec`, `--pipe`) share about child
//! processes: finding the program, ending a process group, and saying how a
//! process ended.
//!
//! Every handler program runs in a process group of its own (its pid is
//! the group's id), so a signal reaches whatever it started too: a shell's
//! background child that holds the output pipes open would otherwise keep
//! a job (or a worker's shutdown) waiting for as long as it lives.
//!
//! The group id is only signalled while its leader is not yet reaped (the
//! caller holds the unwaited [`Child`]) or right after reaping it, in the
//! same thread: the kernel does not reuse a pid while a group of that id
//! still has members, so a signal never reaches an unrelated group.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a process group gets between TERM and KILL.
pub const TERM_GRACE: Duration = Duration::from_millis(500);

/// The process group id of `child` (its pid: it was started as the leader
/// of a group of its own).
pub(crate) fn group_of(child: &Child) -> Option<i32> {
    i32::try_from(child.id()).ok()
}

/// Sends `signal` to every process of group `pgid`; false when none is left.
pub(crate) fn signal_group(pgid: i32, signal: Signal) -> bool {
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

/// Whether group `pgid` still has a process (a zombie leader counts).
fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Ends what is left of group `pgid`: TERM, then KILL once `grace` has
/// passed with any of it still there. `leader`, when the caller still holds
/// it unreaped, is reaped while waiting (a zombie leader would otherwise
/// look alive). Returns whether anything was left to signal.
pub(crate) fn end_group(pgid: i32, leader: Option<&mut Child>, grace: Duration) -> bool {
    if !signal_group(pgid, Signal::SIGTERM) {
        if let Some(leader) = leader {
            let _ = leader.try_wait();
        }
        return false;
    }
    let deadline = Instant::now() + grace;
    let mut leader = leader;
    loop {
        if let Some(child) = leader.as_deref_mut() {
            let _ = child.try_wait();
        }
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL);
            if let Some(child) = leader {
                let _ = child.wait();
            }
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal).map_or(String::new(), |s| format!(" ({s})"));
        return format!("was killed by signal {signal}{name}");
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited abnormally".to_string(),
    }
}

/// Waits up to `within` for `child` to exit, reaping it; `None` if it is
/// still running then.
pub(crate) fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Finds `program` as a path or on `PATH`, like a shell would (without one).
pub(crate) fn resolve(program: &str) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

/// The last `limit` bytes of what was written, as text for `last_error`.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    limit: usize,
}

impl Tail {
    pub(crate) fn new(limit: usize) -> Tail {
        Tail {
            bytes: Vec::new(),
            limit,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_bytes() {
        let mut tail = Tail::new(5);
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.text(), "world");
        tail.clear();
        assert_eq!(tail.text(), "");
    }

    #[test]
    fn exits_are_described_with_status_or_signal() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn programs_resolve_by_path_or_name() {
        assert!(resolve("sh").is_some());
        assert!(resolve("/no/such/program").is_none());
        assert!(resolve("definitely-not-a-command-xyz").is_none());
    }
}
