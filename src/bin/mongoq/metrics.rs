//! The worker's HTTP endpoints: `/metrics` (Prometheus), `/healthz`
//! (ready, alive, database reachable) and `/livez` (alive), with the
//! read-only dashboard's pages beside them when asked; and the sampler
//! thread that refreshes the queue depth the metrics show.

use mongoq::schedule::TickerStats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mongoq::sync::spawn;
use mongoq::{Monitor, Shutdown};

use crate::http::{serve, Handler, HttpError, Request, Response, Server};

/// How often the metrics' queue depth is sampled, at most.
pub const DEPTH_EVERY: Duration = Duration::from_secs(5);

/// A sample waits at least this many times what the last one took: counting
/// a big collection costs the server seconds, and a timer must not keep it
/// busy doing that (at most 1/20 of its time; `mongoq_queue_sample_age_seconds`
/// says how old the sample is).
pub const DEPTH_SHARE: u32 = 20;

/// The metrics endpoint of a running worker: its HTTP server and the
/// depth sampler, stopped and joined together.
pub struct MetricsServer {
    server: Server,
    sampler_stop: Shutdown,
    sampler: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `/metrics` (Prometheus) and `/healthz` on `addr`, and samples
    /// the queue depth every few seconds for the metrics. With `pages`,
    /// every other path is served by it (the read-only dashboard).
    pub fn start(
        addr: &str,
        monitor: Monitor,
        pages: Option<Handler>,
        schedules: Option<Arc<TickerStats>>,
    ) -> Result<MetricsServer, HttpError> {
        let handler_monitor = monitor.clone();
        let server = serve(
            addr,
            2,
            Arc::new(move |request: &Request| {
                endpoint(&handler_monitor, schedules.as_deref(), request).unwrap_or_else(|| {
                    match &pages {
                        Some(pages) => pages(request),
                        None => index(request),
                    }
                })
            }),
        )?;
        let sampler_stop = Shutdown::new();
        let stop = sampler_stop.clone();
        let sampler = spawn("mongoq-depth", move || loop {
            let started = std::time::Instant::now();
            if let Err(error) = monitor.sample_depth() {
                log::debug!("queue depth sample failed: {error}");
            }
            if stop.sleep(DEPTH_EVERY.max(started.elapsed() * DEPTH_SHARE)) {
                return;
            }
        });
        Ok(MetricsServer {
            server,
            sampler_stop,
            sampler,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops the sampler and the server, joining their threads.
    pub fn stop(self) {
        self.sampler_stop.request();
        self.server.stop();
        let _ = self.sampler.join();
    }
}

/// The worker's own endpoints; `None` for any other path.
fn endpoint(
    monitor: &Monitor,
    schedules: Option<&TickerStats>,
    request: &Request,
) -> Option<Response> {
    let path = request.path.as_str();
    if !["/metrics", "/healthz", "/livez"].contains(&path) {
        return None;
    }
    if let Some(refused) = only_get(request) {
        return Some(refused);
    }
    Some(match path {
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            monitor.metrics_text() + &schedules.map(TickerStats::metrics_text).unwrap_or_default(),
        ),
        "/healthz" => {
            let health = monitor.health();
            Response::json(if health.healthy() { 200 } else { 503 }, &health)
        }
        _ => {
            let health = monitor.health();
            Response::json(if health.live() { 200 } else { 503 }, &health)
        }
    })
}

/// Every other path when the dashboard's pages are not served.
fn index(request: &Request) -> Response {
    if let Some(refused) = only_get(request) {
        return refused;
    }
    if request.path == "/" {
        Response::text(
            200,
            "mongoq worker: /metrics (Prometheus), /healthz (ready, alive, database reachable), /livez (alive)\n",
        )
    } else {
        Response::text(404, "not found: try /metrics or /healthz\n")
    }
}

/// `405` for anything but GET and HEAD.
fn only_get(request: &Request) -> Option<Response> {
    (request.method != "GET" && request.method != "HEAD")
        .then(|| Response::text(405, "only GET\n").with_header("Allow", "GET, HEAD"))
}
