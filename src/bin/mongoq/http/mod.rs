//! A small synchronous HTTP/1.1 server for metrics, health and the
//! dashboard: OS threads and sockets, no async runtime.
//!
//! **Slow clients cannot hold it.** One intake thread owns every connection
//! until its request is whole: it waits on all of them at once with
//! `poll(2)` over non-blocking sockets, appends what arrives, and parses
//! ([`request::parse`]). A request must be whole within
//! [`REQUEST_DEADLINE`] of its connection (else `408`), at most
//! [`MAX_WAITING`] connections may be half-read (a new one beyond that
//! drops the oldest), and the handler threads see only whole requests, so
//! fifty idle or byte-a-second clients cost fifty file descriptors and no
//! thread. When every handler is busy and [`BACKLOG`] whole requests wait,
//! the next is answered `503` at once.
//!
//! Deliberately narrow otherwise: one request per connection (`Connection:
//! close`), bounded sizes, a write timeout. I chose this over a crate: the
//! small synchronous servers (tiny_http and the like) give each connection
//! a thread or a blocking read, which is the very thing a slow client
//! exploits; this is one `poll` loop we can read in one sitting.
//! [`Server::stop`] ends the intake and joins every thread it started.

mod request;
mod response;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mongoq::sync::spawn;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use request::{value_of, Request};
pub use response::Response;

use request::{parse, MAX_BODY, MAX_HEAD};
use response::write_response;

/// How long a client has, from connecting, to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// Half-read connections kept at once; a new one beyond drops the oldest.
pub const MAX_WAITING: usize = 256;
/// Whole requests waiting for a handler thread before new ones get `503`.
pub const BACKLOG: usize = 64;
/// How long writing a response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The intake's longest wait, so it notices a stop this quickly.
const TICK: Duration = Duration::from_millis(100);

/// What serves requests; runs on several threads at once.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound (taken, not local, not an address).
    #[error("cannot listen on {addr}: {source} (choose another HOST:PORT, or free that one)")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A running server: its address, and the handle that stops it.
pub struct Server {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// The address it listens on (the real port when `:0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the intake (within [`TICK`]), lets the handler threads answer
    /// the requests they hold, and joins every thread.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A whole request (or the status to refuse it with) and its connection.
struct Work {
    stream: TcpStream,
    request: Result<Request, u16>,
}

/// Binds `addr` now (so a taken port is an error at start-up, not later)
/// and serves it with `threads` handler threads until [`Server::stop`].
pub fn serve(addr: &str, threads: usize, handler: Handler) -> Result<Server, HttpError> {
    let bind_error = |source| HttpError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded::<Work>(BACKLOG);
    let mut handles: Vec<JoinHandle<()>> = (0..threads.max(1))
        .map(|index| {
            let rx: Receiver<Work> = rx.clone();
            let handler = Arc::clone(&handler);
            spawn(&format!("mongoq-http-{index}"), move || {
                for work in rx {
                    answer(work, &handler);
                }
            })
        })
        .collect();
    let stop = Arc::clone(&stopping);
    handles.push(spawn("mongoq-http-intake", move || {
        Intake::new(listener, tx).run(&stop);
    }));
    Ok(Server {
        addr: local,
        stopping,
        threads: handles,
    })
}

/// A connection whose request is not whole yet.
struct Waiting {
    stream: TcpStream,
    received: Vec<u8>,
    since: Instant,
}

/// The intake thread's state: the listener and the half-read connections.
struct Intake {
    listener: TcpListener,
    waiting: Vec<Waiting>,
    handlers: Sender<Work>,
}

impl Intake {
    fn new(listener: TcpListener, handlers: Sender<Work>) -> Intake {
        Intake {
            listener,
            waiting: Vec::new(),
            handlers,
        }
    }

    /// Until `stop`: wait for any socket to be readable (or the nearest
    /// deadline), accept, read, hand over whole requests, expire the slow.
    /// Returning drops the sender, so the handler threads drain and end.
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let ready = self.wait();
            // Back to front: a finished connection is swapped out with the
            // last one, which was already seen. Accepting comes after, as it
            // may shed the oldest and so move every index.
            for index in (0..self.waiting.len()).rev() {
                if ready.get(index + 1).copied().unwrap_or(false) {
                    self.read(index);
                }
            }
            self.expire();
            if ready.first().copied().unwrap_or(false) {
                self.accept();
            }
        }
    }

    /// Which sockets are readable: the listener first, then each waiting
    /// connection in order.
    fn wait(&self) -> Vec<bool> {
        let nearest = self
            .waiting
            .iter()
            .map(|w| REQUEST_DEADLINE.saturating_sub(w.since.elapsed()))
            .min()
            .unwrap_or(TICK)
            .min(TICK);
        let readable = PollFlags::POLLIN;
        let mut fds: Vec<PollFd> = std::iter::once(PollFd::new(self.listener.as_fd(), readable))
            .chain(
                self.waiting
                    .iter()
                    .map(|w| PollFd::new(w.stream.as_fd(), readable)),
            )
            .collect();
        let timeout = PollTimeout::try_from(nearest).unwrap_or(PollTimeout::ZERO);
        if poll(&mut fds, timeout).is_err() {
            // EINTR (a signal): just go round again.
            return Vec::new();
        }
        fds.iter().map(|fd| fd.any().unwrap_or(true)).collect()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.waiting.len() >= MAX_WAITING {
                        // Shed the oldest half-read connection: a flood of
                        // slow clients cannot lock out a fresh one.
                        self.waiting.remove(0);
                    }
                    self.waiting.push(Waiting {
                        stream,
                        received: Vec::new(),
                        since: Instant::now(),
                    });
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                // Out of file descriptors, a reset before accept: try later.
                Err(_) => return,
            }
        }
    }

    /// Reads what arrived on waiting connection `index`; hands it over when
    /// the request is whole or can never be.
    fn read(&mut self, index: usize) {
        let mut buffer = [0u8; 4096];
        let waiting = &mut self.waiting[index];
        let open = loop {
            match waiting.stream.read(&mut buffer) {
                // The client went away before finishing its request.
                Ok(0) => break false,
                Ok(n) => {
                    waiting.received.extend_from_slice(&buffer[..n]);
                    if waiting.received.len() > MAX_HEAD + MAX_BODY {
                        break true;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break true,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if !open {
            self.waiting.swap_remove(index);
            return;
        }
        let request = match parse(&waiting.received) {
            Ok(None) => return,
            Ok(Some(request)) => Ok(request),
            Err(status) => Err(status),
        };
        let Waiting { stream, .. } = self.waiting.swap_remove(index);
        self.hand_over(Work { stream, request });
    }

    fn hand_over(&self, work: Work) {
        match self.handlers.try_send(work) {
            Ok(()) => {}
            Err(TrySendError::Full(work) | TrySendError::Disconnected(work)) => {
                refuse(work.stream, 503, "busy: too many requests, try again\n");
            }
        }
    }

    /// Answers `408` to connections past their deadline and drops them.
    fn expire(&mut self) {
        let (late, on_time): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.since.elapsed() >= REQUEST_DEADLINE);
        self.waiting = on_time;
        for waiting in late {
            refuse(
                waiting.stream,
                408,
                "request timeout: send the whole request within 3s\n",
            );
        }
    }
}

/// Best-effort short answer from the intake thread: never blocks it (the
/// socket stays non-blocking; a client not reading just misses it).
fn refuse(mut stream: TcpStream, status: u16, text: &str) {
    let _ = write_response(&mut stream, &Response::text(status, text), false);
}

/// A handler thread's part: run the handler on a whole request and write
/// the answer.
fn answer(work: Work, handler: &Handler) {
    let Work {
        mut stream,
        request,
    } = work;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (response, head_only) = match request {
        Ok(request) => {
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&request)));
            (
                caught.unwrap_or_else(|_| Response::text(500, "internal error\n")),
                request.method == "HEAD",
            )
        }
        Err(status) => (
            Response::text(status, format!("bad request ({status})\n")),
            false,
        ),
    };
    let _ = write_response(&mut stream, &response, head_only);
}
