//! Shared test plumbing: a database per test on the real server, the
//! `mongoq` binary with that database preset, and polling helpers.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::sync::{Client, Collection};

use crate::turns::Turn;

/// The server `scripts/test.sh` started. A test without one fails loudly:
/// it never passes by testing nothing.
pub fn server_uri() -> String {
    std::env::var("MONGOQ_TEST_URI").expect(
        "MONGOQ_TEST_URI is not set: run the suite with scripts/test.sh, which starts the test server",
    )
}

/// How long a `mongoq` command a test runs to completion may take: far
/// more than any needs on a loaded server, so that one that hangs fails
/// its test with what it printed, instead of holding the suite forever.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Runs `command` to completion with `input` (if any) on stdin; kills it
/// and panics, showing what it printed, if it runs longer than `limit`.
pub fn output_within(command: &mut Command, input: Option<String>, limit: Duration) -> Output {
    use std::io::{Read, Write};
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()))
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = exit_within(&mut child, limit) else {
        panic!(
            "{command:?} ran longer than {limit:?}; it printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout.join().unwrap()),
            String::from_utf8_lossy(&stderr.join().unwrap())
        );
    };
    if let Some(writer) = writer {
        writer.join().unwrap().unwrap();
    }
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits for `child` to exit; kills it and returns `None` if it has not
/// within `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One test's own database on the test server, dropped at the end.
pub struct TestDb {
    pub uri: String,
    pub db: String,
    client: Client,
    /// When the test took its database (its time is noted when it ends:
    /// see [`TestDb::drop`]).
    created: std::time::Instant,
    /// Given back after the database is dropped (fields drop last).
    _turn: Turn,
}

impl TestDb {
    pub fn new(name: &str) -> TestDb {
        TestDb::on(&server_uri(), name)
    }

    /// A database on the test server, which this test has alone until it
    /// ends (see [`crate::turns`]): for a test that asserts a latency, or
    /// one that loads the server for a minute.
    pub fn alone(name: &str) -> TestDb {
        let turn = Turn::alone();
        let db = format!("t_{name}_{}_{}", std::process::id(), rand::random::<u32>());
        TestDb::with_turn(&server_uri(), &db, &server_uri(), turn)
    }

    /// A database on a server of the test's own.
    pub fn on(uri: &str, name: &str) -> TestDb {
        let db = format!("t_{name}_{}_{}", std::process::id(), rand::random::<u32>());
        TestDb::on_with_admin(uri, &db, uri)
    }

    /// The database `db` (exactly that name), which `mongoq` reaches with
    /// `uri` while the test inspects it with `admin_uri` (more rights).
    pub fn on_with_admin(uri: &str, db: &str, admin_uri: &str) -> TestDb {
        TestDb::with_turn(uri, db, admin_uri, Turn::shared())
    }

    fn with_turn(uri: &str, db: &str, admin_uri: &str, turn: Turn) -> TestDb {
        let uri = uri.to_string();
        let client = Client::with_uri_str(admin_uri).expect("the test URI is valid");
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .run()
            .unwrap_or_else(|e| panic!("the test server at {uri} does not answer: {e}"));
        let db = db.to_string();
        TestDb {
            uri,
            db,
            client,
            created: std::time::Instant::now(),
            _turn: turn,
        }
    }

    pub fn database(&self) -> mongodb::sync::Database {
        self.client.database(&self.db)
    }

    pub fn coll(&self) -> Collection<Document> {
        self.client.database(&self.db).collection("queue")
    }

    pub fn queue(&self) -> mongoq::Queue {
        mongoq::Queue::connect(&mongoq::QueueConfig {
            uri: self.uri.clone(),
            database: self.db.clone(),
            collection: "queue".into(),
        })
        .unwrap()
    }

    /// `mongoq` with this database and the test server preset.
    pub fn mongoq(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mongoq"));
        command
            .env("MONGODB_URI", &self.uri)
            .env("RUST_LOG", "info")
            .args(["--db", &self.db]);
        command
    }

    /// Runs `mongoq ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        output_within(self.mongoq().args(args), None, COMMAND_LIMIT)
    }

    /// Runs `mongoq ARGS` with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        output_within(
            self.mongoq().args(args),
            Some(input.to_string()),
            COMMAND_LIMIT,
        )
    }

    /// Starts `mongoq work ARGS` in the background, logs to a file.
    pub fn spawn_worker(&self, args: &[&str]) -> Worker {
        self.spawn_worker_with_env(args, &[])
    }

    /// [`TestDb::spawn_worker`] with these environment variables set too.
    pub fn spawn_worker_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Worker {
        // One log per worker, so that several of one test keep theirs.
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = tempfile(&format!("{}-worker-{n}.log", self.db));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .mongoq()
            .envs(env.iter().copied())
            .arg("work")
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    pub fn count(&self, filter: Document) -> u64 {
        self.coll().count_documents(filter).run().unwrap()
    }

    pub fn all(&self, filter: Document) -> Vec<Document> {
        self.coll()
            .find(filter)
            .sort(doc! {"_id": 1})
            .run()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn enqueue_many(&self, n: usize, args: &[&str]) {
        let input: String = (0..n).map(|i| format!("{{\"n\": {i}}}\n")).collect();
        let mut all = vec!["enqueue", "--quiet"];
        all.extend_from_slice(args);
        let out = self.run_with_stdin(&all, &input);
        assert!(
            out.status.success(),
            "enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n.to_string());
    }

    /// `mongoq enqueue ARGS…` (a JSON document and flags): asserts that it
    /// succeeded and returns what it printed, trimmed (the job's id).
    pub fn enqueue(&self, args: &[&str]) -> String {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(out.status.success(), "enqueue failed: {}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// `mongoq enqueue --quiet` of these documents, one JSON line each.
    pub fn enqueue_json(&self, data: &[serde_json::Value]) {
        let input: String = data.iter().map(|d| format!("{d}\n")).collect();
        let out = self.run_with_stdin(&["enqueue", "--quiet"], &input);
        assert!(out.status.success(), "enqueue failed: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), data.len().to_string());
    }

    /// `mongoq work --drain ARGS…`, with `--threads 2 --max-attempts 1`
    /// unless `args` set them; waits for it to exit 0 (within 120 s) and
    /// returns it, for its log.
    pub fn drain(&self, args: &[&str]) -> Worker {
        self.drain_with_env(args, &[])
    }

    /// [`TestDb::drain`] with these environment variables for the worker.
    pub fn drain_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut all = vec!["--drain"];
        for (flag, default) in [("--threads", "2"), ("--max-attempts", "1")] {
            if !args.contains(&flag) {
                all.extend([flag, default]);
            }
        }
        all.extend_from_slice(args);
        let mut worker = self.spawn_worker_with_env(&all, env);
        worker.expect_success(Duration::from_secs(120));
        worker
    }

    /// Waits until `filter` matches `n` documents; panics with the counts by
    /// status if it does not within `timeout`.
    pub fn wait_for_count(&self, filter: Document, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.count(filter.clone());
            if count == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {n} documents matching {filter}, have {count}; by status: {:?}",
                self.by_status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn by_status(&self) -> Vec<(String, u64)> {
        ["pending", "running", "completed", "failed"]
            .iter()
            .map(|s| ((*s).to_string(), self.count(doc! {"status": *s})))
            .collect()
    }
}

impl Drop for TestDb {
    /// Drops the database, and notes the test's time in
    /// `MONGOQ_TEST_TIMES` when set (`scripts/test.sh` lists the slowest).
    fn drop(&mut self) {
        let _ = self.client.database(&self.db).drop().run();
        if let Some(path) = std::env::var_os("MONGOQ_TEST_TIMES") {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let line = format!(
                "{:.1} {test} {}\n",
                self.created.elapsed().as_secs_f64(),
                self.db
            );
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = file.write_all(line.as_bytes());
            }
        }
    }
}

/// A `mongoq work` process.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for exit; panics if it takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        exit_within(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "worker did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            )
        })
    }

    /// Waits for exit and asserts it succeeded, showing the log if not.
    pub fn expect_success(&mut self, timeout: Duration) {
        assert!(self.wait(timeout).success(), "{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM to every worker, then each must exit 0 within 30 s.
pub fn stop_all(workers: &mut [Worker]) {
    for worker in workers.iter() {
        worker.signal("TERM");
    }
    for worker in workers {
        worker.expect_success(Duration::from_secs(30));
    }
}

/// `mongoq bench --only SECTION --rounds 1 --jobs JOBS` in the test's
/// database; asserts it succeeded and returns its table.
pub fn bench_section(db: &TestDb, section: &str, jobs: usize) -> String {
    let chart = tempfile(&format!("{}-chart.svg", db.db));
    let jobs = jobs.to_string();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_mongoq"))
            .args(["--uri", &db.uri, "bench", "--bench-db", &db.db])
            .args([
                "--only", section, "--rounds", "1", "--jobs", &jobs, "--chart",
            ])
            .arg(&chart),
        None,
        COMMAND_LIMIT,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}{text}", stderr(&out));
    text
}

pub fn tempfile(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("mongoq-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A date field of a job, in ms since the epoch.
pub fn millis(job: &Document, field: &str) -> i64 {
    job.get_datetime(field)
        .unwrap_or_else(|_| panic!("{field} is not a date: {job}"))
        .timestamp_millis()
}

pub fn int(document: &Document, field: &str) -> i64 {
    match document.get(field) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        other => panic!("{field} is not an integer in {document}: {other:?}"),
    }
}

/// mongosh, as installed by scripts/test.sh.
pub fn mongosh() -> String {
    std::env::var("MONGOQ_MONGOSH").expect(
        "MONGOQ_MONGOSH is not set: run the suite with scripts/test.sh, which installs mongosh",
    )
}

/// The test server's program (`MONGOQ_SERVER_BIN` from scripts/test.sh:
/// secantusd-rs or secantusd-py).
pub fn server_bin() -> String {
    std::env::var("MONGOQ_SERVER_BIN").unwrap_or_else(|_| "secantusd-rs".into())
}

/// Which test server the suite runs on (`rs` or `py`).
pub fn server_kind() -> String {
    std::env::var("MONGOQ_TEST_SERVER").unwrap_or_else(|_| "rs".into())
}

/// Records that `what` was not checked on this server and why: printed
/// now and, through `MONGOQ_SKIP_LOG`, listed by scripts/test.sh at the
/// end of the run, so no skip is silent.
pub fn not_checked(what: &str, reason: &str) {
    let line = format!("NOT CHECKED on {}: {what}: {reason}", server_kind());
    eprintln!("{line}");
    if let Ok(path) = std::env::var("MONGOQ_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A test server of the test's own.
pub struct OwnServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl OwnServer {
    pub fn start(name: &str, extra: &[&str]) -> OwnServer {
        OwnServer::start_with_env(name, extra, &[])
    }

    /// A server of its own with these environment variables (e.g.
    /// libfaketime's, to put its clock at a date).
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> OwnServer {
        let port = free_port();
        let dir = tempfile(&format!("server-{name}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = OwnServer {
            port,
            dir,
            extra: extra.iter().map(ToString::to_string).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new(server_bin())
            .args(["--port", &self.port.to_string(), "--storage-path"])
            .arg(&self.dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be on PATH ({e}): run the suite with scripts/test.sh",
                    server_bin()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "own test server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same data with these arguments from now on.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(ToString::to_string).collect();
        self.restart();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `ObjectId` from the hex a command printed.
pub fn oid(text: &str) -> mongodb::bson::oid::ObjectId {
    mongodb::bson::oid::ObjectId::parse_str(text).unwrap_or_else(|_| panic!("not an id: {text}"))
}

/// The instant `seconds` ago, by this host's clock.
pub fn ago(seconds: i64) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - seconds * 1000,
    )
}
