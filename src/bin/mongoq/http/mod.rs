//! A small synchronous HTTP/1.1 server for metrics, health and the
//! dashboard: OS threads and blocking sockets, no async runtime.
//!
//! It is deliberately narrow: one request per connection (`Connection:
//! close`), bounded request sizes, read and write timeouts, and a fixed
//! pool of threads fed by a bounded channel, so a flood is turned away with
//! `503` instead of spawning threads. [`Server::stop`] ends the accept loop
//! and joins every thread it started.

mod request;
mod response;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mongoq::sync::spawn;

pub use request::{value_of, Request};
pub use response::Response;

use request::read_request;
use response::write_response;

/// How long a client may take to send its request or read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting for a thread before new ones get `503`.
const BACKLOG: usize = 64;

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

    /// Stops accepting, lets the handler threads finish the requests they
    /// hold (each bounded by the I/O timeout), and joins every thread.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(); one connection wakes it to see
        // the flag. Failure means it is not accepting anyway.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Binds `addr` now (so a taken port is an error at start-up, not later)
/// and serves it with `threads` threads until [`Server::stop`].
pub fn serve(addr: &str, threads: usize, handler: Handler) -> Result<Server, HttpError> {
    let bind_error = |source| HttpError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(BACKLOG);
    let mut handles: Vec<JoinHandle<()>> = (0..threads.max(1))
        .map(|index| {
            let rx = rx.clone();
            let handler = Arc::clone(&handler);
            spawn(&format!("mongoq-http-{index}"), move || {
                for stream in rx {
                    handle_connection(stream, &handler);
                }
            })
        })
        .collect();
    let accepting = Arc::clone(&stopping);
    handles.push(spawn("mongoq-http-accept", move || {
        for stream in listener.incoming() {
            if accepting.load(Ordering::SeqCst) {
                // Dropping the sender lets the handler threads drain and end.
                break;
            }
            let Ok(stream) = stream else { continue };
            if let Err(crossbeam_channel::TrySendError::Full(mut stream)) = tx.try_send(stream) {
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                let _ = write_response(
                    &mut stream,
                    &Response::text(503, "busy: too many connections, try again\n"),
                    false,
                );
            }
        }
    }));
    Ok(Server {
        addr: local,
        stopping,
        threads: handles,
    })
}

fn handle_connection(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (response, head_only) = match read_request(&mut stream) {
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
