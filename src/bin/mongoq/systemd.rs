//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`), spoken
//! directly: one datagram per message to the socket named in
//! `NOTIFY_SOCKET`. No libsystemd, no unsafe code.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
//!
//! [`Notifier`] is the thread that speaks it for a running worker; `work`
//! owns it and stops it (joined) before exiting.

use std::os::unix::net::UnixDatagram;
use std::thread::JoinHandle;
use std::time::Duration;

use mongoq::sync::spawn;
use mongoq::{Monitor, Shutdown};

/// Sends `state` (e.g. `READY=1`, `WATCHDOG=1`, `STATUS=…`) to systemd.
/// Returns whether there was a socket to send to.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let path = path.to_string_lossy().into_owned();
    if let Some(name) = path.strip_prefix('@') {
        // An abstract socket (Linux): the name after the `@`.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &address)?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract NOTIFY_SOCKET needs Linux"));
        }
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// How often systemd wants `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the
/// watchdog is on and meant for this process (`WATCHDOG_PID`, if set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}

/// The thread that tells systemd about a running worker: `READY=1` once it
/// is connected and its indexes exist, `WATCHDOG=1` while every thread
/// makes progress, and a one-line `STATUS=`.
pub struct Notifier {
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread under systemd; outside it, starts nothing.
    pub fn start(monitor: Monitor) -> Notifier {
        let stop = Shutdown::new();
        let thread = std::env::var_os("NOTIFY_SOCKET").is_some().then(|| {
            let stop = stop.clone();
            spawn("mongoq-systemd", move || speak(&monitor, &stop))
        });
        Notifier { stop, thread }
    }

    /// Stops the thread and waits for it (it wakes within its tick).
    pub fn stop(mut self) {
        self.stop.request();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn send(state: &str) {
    if let Err(error) = notify(state) {
        log::warn!("cannot notify systemd ({state}): {error}");
    }
}

fn speak(monitor: &Monitor, stop: &Shutdown) {
    let watchdog = watchdog_interval();
    let tick = watchdog.map_or(Duration::from_secs(5), |w| w.min(Duration::from_secs(5)));
    while !monitor.is_ready() {
        if stop.sleep(Duration::from_millis(50)) {
            return;
        }
    }
    send("READY=1\nSTATUS=connected; claiming jobs");
    let mut last_status = String::new();
    loop {
        let health = monitor.health();
        if watchdog.is_some() {
            if health.live() {
                send("WATCHDOG=1");
            } else {
                log::error!(
                    "threads stalled ({}): not feeding the systemd watchdog, so systemd restarts this worker",
                    health.stalled.join(", ")
                );
            }
        }
        let report = monitor.report();
        let (running, held) = monitor.load();
        let status = match &health.database_error {
            Some(outage) => format!(
                "database unreachable for {:.0}s; retrying",
                outage.for_seconds
            ),
            None => format!(
                "{running} running, {held} held; {} completed, {} retried, {} failed",
                report.completed, report.retried, report.failed
            ),
        };
        if status != last_status {
            send(&format!("STATUS={status}"));
            last_status = status;
        }
        if stop.sleep(tick) {
            return;
        }
    }
}
