//! HTTP that keeps answering: with 50 idle and byte-a-second connections
//! held open, `/healthz`, `/metrics` and the dashboard still answer within
//! a second; a request head that takes too long gets 408; and a dashboard
//! without a token answers only to its own host names (DNS rebinding).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{free_port, TestDb};

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mongoq ARGS` in the background on `db`, killed on drop, once `port`
/// listens.
fn serve(db: &TestDb, args: &[&str], port: u16) -> Running {
    let running = Running(
        db.mongoq()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    running
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One raw request; returns the status and how long the answer took.
fn request(port: u16, path: &str, host: &str) -> (u16, Duration, String) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed(), answer)
}

/// 25 connections that send nothing and 25 that send one byte a second.
struct Siege {
    idle: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
    drip: Option<std::thread::JoinHandle<()>>,
}

impl Siege {
    fn start(port: u16) -> Siege {
        let idle = (0..25)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut slow: Vec<TcpStream> = (0..25)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let dripping = Arc::clone(&stop);
        let drip = std::thread::spawn(move || {
            let head = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
            let mut at = 0;
            while !dripping.load(Ordering::SeqCst) {
                for stream in &mut slow {
                    let _ = stream.write_all(&head[at % head.len()..=at % head.len()]);
                }
                at += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Siege {
            idle,
            stop,
            drip: Some(drip),
        }
    }
}

impl Drop for Siege {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(drip) = self.drip.take() {
            let _ = drip.join();
        }
    }
}

/// While besieged for longer than the request deadline, every path answers
/// within a second, every time.
fn answers_under_siege(port: u16, paths: &[&str]) {
    let mut siege = Siege::start(port);
    std::thread::sleep(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_secs(5);
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while Instant::now() < until {
        for path in paths {
            let (status, took, answer) = request(port, path, "localhost");
            assert_eq!(status, 200, "{path} under siege: {answer}");
            slowest = slowest.max(took);
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(asked >= 10, "asked only {asked} times");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer under siege took {slowest:?}"
    );
    // The idle clients were given up on, with 408, after the deadline.
    let mut answer = String::new();
    let idle = &mut siege.idle[0];
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = idle.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "an idle client got: {answer:?}"
    );
}

#[test]
fn a_worker_metrics_and_pages_answer_under_siege() {
    let db = TestDb::new("siege_worker");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "work",
        "--simulate",
        "0ms..0ms",
        "--metrics-dashboard",
        "--metrics-addr",
        &listen,
    ];
    let _worker = serve(&db, &args, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(port, "/healthz", "localhost").0 != 200 {
        assert!(Instant::now() < deadline, "the worker never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    answers_under_siege(port, &["/healthz", "/metrics", "/"]);
}

#[test]
fn the_dashboard_answers_under_siege() {
    let db = TestDb::new("siege_dashboard");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = serve(&db, &["dashboard", "--listen", &listen], port);
    answers_under_siege(port, &["/", "/jobs?status=pending"]);
}

#[test]
fn without_a_token_the_dashboard_answers_only_its_own_host_names() {
    let db = TestDb::new("host_check");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = serve(
        &db,
        &[
            "dashboard",
            "--allow-host",
            "queue.example",
            "--listen",
            &listen,
        ],
        port,
    );
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "127.0.0.1.evil.example",
    ] {
        let (status, _, answer) = request(port, "/", host);
        assert_eq!(status, 421, "Host {host}: {answer}");
        assert!(!answer.contains("csrf"), "no page, no CSRF token: {answer}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "queue.example".into(),
        format!("[::1]:{port}"),
    ] {
        let (status, _, answer) = request(port, "/", &host);
        assert_eq!(status, 200, "Host {host}: {answer}");
    }
    // No Host at all (HTTP/1.0 by hand) is refused too.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
}

#[test]
fn with_a_token_the_dashboard_checks_the_token_not_the_host() {
    let db = TestDb::new("host_token");
    let port = free_port();
    let token = "0123456789abcdef0123";
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = serve(
        &db,
        &["dashboard", "--auth-token", token, "--listen", &listen],
        port,
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: dash.example\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, _, _) = request(port, "/", "dash.example");
    assert_eq!(status, 401, "no token, no page");
}
