//! The worker as a service: metrics and health over HTTP (and through an
//! outage), systemd notification and watchdog, `stats --watch`, and the
//! dashboard served read-only beside the metrics.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::helpers::{free_port, stderr, stdout, tempfile, OwnServer, TestDb};

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// The value of a metric line `name value` (exact name, labels included),
/// for metrics that count.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .parse::<f64>()
        .unwrap() as u64
}

#[test]
fn metrics_and_health_are_served_over_http_and_report_outages() {
    let mut server = OwnServer::start("metrics", &[]);
    let db = TestDb::on(
        &format!("{}/?directConnection=true", server.uri()),
        "metrics",
    );
    let out = db.run_with_stdin(&["enqueue", "-q"], &"{}\n".repeat(30));
    assert!(out.status.success(), "{}", stderr(&out));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = db.spawn_worker(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--lease",
        "2s",
        "--threads",
        "2",
        "--simulate",
        "1ms..3ms",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 30, Duration::from_secs(30));
    // The queue depth is sampled every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = get(&format!("{base}/metrics"));
        assert_eq!(status, 200);
        if text.contains("mongoq_queue_jobs{status=\"completed\"} 30") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "depth never showed 30 completed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(metric(&text, "mongoq_jobs_claimed_total"), 30);
    assert_eq!(metric(&text, "mongoq_jobs_completed_total"), 30);
    assert_eq!(metric(&text, "mongoq_jobs_failed_total"), 0);
    assert_eq!(metric(&text, "mongoq_handler_duration_seconds_count"), 30);
    assert_eq!(
        metric(
            &text,
            "mongoq_handler_duration_seconds_bucket{le=\"0.001\"}"
        ),
        0
    );
    assert_eq!(
        metric(&text, "mongoq_handler_duration_seconds_bucket{le=\"+Inf\"}"),
        30
    );
    assert!(metric(&text, "mongoq_claim_duration_seconds_count") >= 1);
    assert!(metric(&text, "mongoq_claim_round_trips_total") >= 1);
    assert!(metric(&text, "mongoq_queue_jobs{status=\"pending\"}") == 0);
    assert_eq!(metric(&text, "mongoq_up"), 1);
    for name in [
        "mongoq_lease_extensions_total",
        "mongoq_lease_rescues_total",
        "mongoq_jobs_retried_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter")),
            "{name} missing"
        );
    }
    let (status, body) = get(&format!("{base}/healthz"));
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true);
    assert!(health["database_error"].is_null());
    assert_eq!(get(&format!("{base}/nope")).0, 404);
    let (status, body) = get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(!body.contains("<html"), "no dashboard unless asked: {body}");

    // An outage: unhealthy (503) with the reason, but alive; healthy again after.
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = get(&format!("{base}/healthz"));
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "healthz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(health["database_error"]["error"].is_string(), "{body}");
    assert_eq!(
        get(&format!("{base}/livez")).0,
        200,
        "an outage is not death"
    );
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&format!("{base}/healthz")).0 != 200 {
        assert!(Instant::now() < deadline, "never healthy again");
        std::thread::sleep(Duration::from_millis(200));
    }
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));

    // A taken port is a clear start-up error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = db.run(&["work", "--metrics-addr", &addr, "--drain"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

/// The `ExecStart=` line of the shipped unit, with the binary, the test's
/// flags and a handler swapped in for the install paths.
fn unit_exec_start(handler: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/mongoq.service"
    ))
    .unwrap();
    assert!(
        unit.contains("\nType=notify\n"),
        "the unit must use Type=notify"
    );
    assert!(
        unit.contains("\nWatchdogSec="),
        "the unit must set WatchdogSec"
    );
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace()
        .map(|word| match word {
            "/usr/local/bin/mongoq" => env!("CARGO_BIN_EXE_mongoq").to_string(),
            "/usr/local/lib/mongoq/handle-job" => handler.to_string(),
            "$MONGOQ_ARGS" => "--poll-interval=100ms".to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[test]
fn under_systemd_the_worker_notifies_ready_watchdog_status_and_stopping() {
    let db = TestDb::new("systemd");
    db.enqueue(&["{}"]);
    let socket_path = tempfile(&format!("{}-notify.sock", db.db));
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let exec = unit_exec_start("true");
    let log = tempfile(&format!("{}-systemd.log", db.db));
    let mut child = Command::new(&exec[0])
        .args(["--db", &db.db])
        .args(&exec[1..])
        .env("MONGODB_URI", &db.uri)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut messages: Vec<String> = Vec::new();
    let mut buffer = [0u8; 4096];
    let receive = |messages: &mut Vec<String>, buffer: &mut [u8]| {
        let n = socket.recv(buffer).unwrap_or_else(|e| {
            panic!(
                "no notify message ({e}); got {messages:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    };
    receive(&mut messages, &mut buffer);
    assert!(messages[0].starts_with("READY=1\n"), "{messages:?}");
    // WATCHDOG_USEC of 1 s: a ping every half second.
    let started = Instant::now();
    while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        receive(&mut messages, &mut buffer);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("STATUS=")),
        "{messages:?}"
    );
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(20));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    while !messages.iter().any(|m| m == "STOPPING=1") {
        receive(&mut messages, &mut buffer);
    }
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&socket_path);
}

#[test]
fn stats_watch_refreshes_until_interrupted() {
    let db = TestDb::new("watch");
    db.enqueue(&["{}"]);
    let child = db
        .mongoq()
        .args(["stats", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    db.run(&["enqueue", "{}"]);
    // Several refreshes' worth: a frame is four queries (counts, controls,
    // eligible, oldest), which a loaded secantusd-py answers in hundreds
    // of milliseconds.
    std::thread::sleep(Duration::from_millis(2_500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let frames = text.matches(&format!("queue {}.queue", db.db)).count();
    assert!(frames >= 4, "{frames} refreshes:\n{text}");
    let pending = |n: u32| format!("{:<10} {n:>10}", "pending");
    assert!(text.contains(&pending(1)), "{text}");
    assert!(text.contains(&pending(2)), "the new job shows up:\n{text}");
    assert!(text.contains("/s"), "rates after the first frame:\n{text}");
}

#[test]
fn the_worker_can_serve_the_dashboard_read_only_beside_its_metrics() {
    let db = TestDb::new("metrics_dashboard");
    db.enqueue(&["{}"]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut worker = db.spawn_worker(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--metrics-dashboard",
        "--simulate",
        "0ms..0ms",
    ]);
    db.wait_for_count(doc! {"status": "completed"}, 1, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", worker.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, page) = get(&format!("{base}/"));
    assert_eq!(status, 200);
    assert!(page.contains("<b>1</b><span>completed</span>"), "{page}");
    let (_, page) = get(&format!("{base}/jobs?status=completed"));
    assert!(
        !page.contains("method=post"),
        "read-only: no actions: {page}"
    );
    let job = page
        .split("<a href=\"/job?id=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, page) = get(&format!("{base}/job?id={job}"));
    assert_eq!(status, 200);
    assert!(
        page.contains("status <b>completed</b>") && !page.contains("method=post"),
        "{page}"
    );
    assert!(get(&format!("{base}/metrics"))
        .1
        .contains("mongoq_jobs_completed_total 1"));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
}
