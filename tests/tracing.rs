//! OpenTelemetry traces: a real OTLP/HTTP receiver (Python's standard
//! library, decoding the JSON encoding) sees one span per attempt, a child
//! of the producer's `traceparent`, and handlers see the attempt's own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{free_port, stderr, stdout, tempfile, TestDb};
use crate::pipe::{helper_dir, python, script};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on `port` that appends each request's JSON body,
/// one per line, to `file`; killed when dropped.
pub(crate) struct Receiver(Child);

impl Receiver {
    pub(crate) fn start(db: &TestDb, port: u16, file: &std::path::Path) -> Receiver {
        let code = format!(
            r#"import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open({file:?}, "ab") as f:
            f.write(self.path.encode() + b" " + body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{{}}")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", {port}), H)
print("ready", flush=True)
server.serve_forever()
"#,
            file = file.display().to_string()
        );
        let path = script(db, "otlp_receiver.py", &code);
        let mut child = Command::new(python())
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the receiver did not start");
        Receiver(child)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every span the receiver got: `(span, its resource's attributes)`.
pub(crate) fn spans(file: &std::path::Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut all = Vec::new();
    for line in text.lines() {
        let (path, body) = line.split_once(' ').unwrap();
        assert_eq!(path, "/v1/traces", "{line}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        for resource in json["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    all.push((span.clone(), resource["resource"]["attributes"].clone()));
                }
            }
        }
    }
    all
}

/// An attribute's value as text (`stringValue`, or `intValue`).
pub(crate) fn attribute(attributes: &serde_json::Value, key: &str) -> Option<String> {
    let found = attributes
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?
        .get("value")?
        .clone();
    found
        .get("stringValue")
        .and_then(|v| v.as_str().map(str::to_string))
        .or_else(|| {
            found
                .get("intValue")
                .map(|v| v.to_string().trim_matches('"').to_string())
        })
}

/// Three jobs of one trace (one fails its first attempt) and one without:
/// five spans, the traced ones children of the producer's span with the
/// queue, job id, attempt, outcome and wait; the `--pipe` handler saw each
/// attempt's own `traceparent`, and an `--exec` program gets it as
/// `TRACEPARENT`.
#[test]
fn each_attempt_is_a_span_under_the_producers_trace_and_handlers_see_it() {
    let db = TestDb::new("tracing");
    let port = free_port();
    let received = tempfile(&format!("{}-otlp", db.db));
    let _ = std::fs::remove_file(&received);
    let _receiver = Receiver::start(&db, port, &received);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let mut ids = Vec::new();
    for data in [r#"{"n": 1}"#, r#"{"n": 2, "fail": true}"#, r#"{"n": 3}"#] {
        let out = db.run(&["enqueue", "--traceparent", &traceparent, data]);
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }
    let out = db.run(&["enqueue", "--traceparent", "00-nonsense", "{}"]);
    assert_eq!(out.status.code(), Some(2), "a bad traceparent is refused");
    assert!(stderr(&out).contains("--traceparent"), "{}", stderr(&out));
    let untraced = db.enqueue(&[r#"{"n": 4}"#]);
    let seen = tempfile(&format!("{}-seen", db.db));
    let handler = script(
        &db,
        "traced.py",
        &format!(
            r#"from mongoq import serve

def handle(job):
    with open({seen:?}, "a") as f:
        f.write("%s %d %s\n" % (job["id"]["$oid"], job["attempt"], job.get("traceparent")))
    if job["data"].get("fail") and job["attempt"] == 1:
        raise Exception("the first attempt fails")
    return None

serve(handle)
"#,
            seen = seen.display().to_string()
        ),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("PYTHONPATH", helper_dir()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_string()),
        ("OTEL_SERVICE_NAME", "mongoq-under-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let handler = handler.display().to_string();
    let mut worker = db.spawn_worker_with_env(
        &[
            "--drain",
            "--threads",
            "2",
            "--max-attempts",
            "2",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "100ms",
            "--pipe",
            python(),
            &handler,
        ],
        &env,
    );
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"status": "completed"}), 4);

    let spans = spans(&received);
    assert_eq!(spans.len(), 5, "one span per attempt: {spans:?}");
    let mut by_attempt: HashMap<(String, String), serde_json::Value> = HashMap::new();
    for (span, resource) in &spans {
        assert_eq!(
            attribute(resource, "service.name").as_deref(),
            Some("mongoq-under-test")
        );
        let attributes = &span["attributes"];
        let id = attribute(attributes, "messaging.message.id").unwrap();
        let attempt = attribute(attributes, "mongoq.attempt").unwrap();
        assert_eq!(span["name"], "process default", "{span}");
        assert_eq!(
            attribute(attributes, "messaging.destination.name").as_deref(),
            Some("default")
        );
        assert!(attribute(attributes, "mongoq.wait_ms").is_some(), "{span}");
        let outcome = attribute(attributes, "mongoq.outcome").unwrap();
        let span_trace = span["traceId"].as_str().unwrap().to_lowercase();
        if id == untraced {
            assert_ne!(
                span_trace, TRACE,
                "a job without a traceparent has a trace of its own"
            );
            assert!(
                span["parentSpanId"].as_str().unwrap_or("").is_empty(),
                "{span}"
            );
        } else {
            assert!(ids.contains(&id), "{id}");
            assert_eq!(span_trace, TRACE, "{span}");
            assert_eq!(
                span["parentSpanId"].as_str().unwrap().to_lowercase(),
                PARENT
            );
            let wanted = if id == ids[1] && attempt == "1" {
                "retried"
            } else {
                "completed"
            };
            assert_eq!(outcome, wanted, "{span}");
        }
        by_attempt.insert((id, attempt), span.clone());
    }
    // The handler saw each attempt's own span as its parent.
    let text = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let span = &by_attempt[&(parts[0].to_string(), parts[1].to_string())];
        let fields: Vec<&str> = parts[2].split('-').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(
            fields[1],
            span["traceId"].as_str().unwrap().to_lowercase(),
            "{line}"
        );
        assert_eq!(
            fields[2],
            span["spanId"].as_str().unwrap().to_lowercase(),
            "{line}"
        );
    }

    // `--exec`: the attempt's traceparent in TRACEPARENT.
    db.enqueue(&["--traceparent", &traceparent, "{}"]);
    let env_file = tempfile(&format!("{}-exec-env", db.db));
    let record = format!("printf '%s\\n' \"$TRACEPARENT\" > {}", env_file.display());
    let mut exec = db.spawn_worker_with_env(&["--drain", "--exec", "sh", "-c", &record], &env);
    exec.expect_success(Duration::from_secs(60));
    let got = std::fs::read_to_string(&env_file).unwrap();
    assert!(got.starts_with(&format!("00-{TRACE}-")), "{got}");
    assert!(
        !got.contains(PARENT),
        "the attempt's span, not the producer's: {got}"
    );
}
