//! Faults: the database restarting under a worker, a network cut longer than
//! the lease, workers killed again and again, and a standalone server
//! without change streams. Each test owns its server process (on a free
//! port, with its own data directory) so it can stop and start it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson};

use crate::helpers::{tempfile, OwnServer, TestDb};

/// A loopback TCP proxy that can be paused: while paused no byte crosses in
/// either direction, as in a network partition (connections stay open).
struct Proxy {
    port: u16,
    paused: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let paused = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&paused);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let gate = Arc::clone(&gate);
                    std::thread::spawn(move || pump(from, to, &gate));
                }
            }
        });
        Proxy { port, paused }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, paused: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Reads a ledger of job ids (one line per handler run).
/// Handler runs per job id, from a ledger of `ID WORKER_PID` lines.
fn runs(ledger: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut runs = std::collections::HashMap::new();
    for (id, _) in ledger_lines(ledger) {
        *runs.entry(id).or_insert(0) += 1;
    }
    runs
}

fn ledger_lines(ledger: &std::path::Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (id, pid) = line.split_once(' ')?;
            Some((id.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// An `--exec` handler that appends `JOB_ID WORKER_PID` as one short line
/// (an atomic O_APPEND write), so a job run twice shows up twice, with who
/// ran it.
fn ledger_command(ledger: &std::path::Path) -> String {
    format!(
        "printf '%s %s\\n' \"$MONGOQ_JOB_ID\" \"$PPID\" >> {}",
        ledger.display()
    )
}

#[test]
fn the_database_restarting_mid_run_delays_jobs_and_loses_none() {
    let mut server = OwnServer::start("restart", &[]);
    // Outages shorter than server selection are absorbed by the driver
    // (the operation waits and succeeds); a 1 s timeout makes this 3 s
    // outage reach mongoq's own retry loop, which is what is under test.
    let db = TestDb::on(
        &format!("{}/?serverSelectionTimeoutMS=1000", server.uri()),
        "restart",
    );
    db.enqueue_many(1_500, &[]);
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let mut worker = db.spawn_worker(&[
        "--drain",
        "--threads",
        "4",
        "--batch-size",
        "50",
        "--exec",
        "sh",
        "-c",
        &ledger_command(&ledger),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&ledger).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "worker made no progress:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker must ride out the outage:\n{}",
        worker.log_text()
    );
    server.restart();
    worker.expect_success(Duration::from_secs(180));
    let log = worker.log_text();
    assert!(log.contains("retrying in"), "the outage is logged: {log}");
    assert!(
        log.contains("MongoDB answers again"),
        "the recovery is logged: {log}"
    );
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        1_500,
        "{:?}",
        db.by_status()
    );
    let runs = runs(&ledger);
    assert_eq!(runs.len(), 1_500, "every job ran");
    let twice = runs.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "no job ran twice: leases outlived the outage");
}

#[test]
fn a_network_cut_longer_than_the_lease_cannot_overwrite_the_takeover() {
    let server = OwnServer::start("partition", &[]);
    let proxy = Proxy::start(server.port);
    let db = TestDb::on(&server.uri(), "partition");
    db.run(&["enqueue", "{}"]);
    let cut_off_log = tempfile(&format!("{}-cut.log", db.db));
    let cut_off = db
        .mongoq()
        .env(
            "MONGODB_URI",
            format!(
                // directConnection: otherwise the driver learns the real
                // address from the replica-set hello and goes around the proxy.
                "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=60000&heartbeatFrequencyMS=500",
                proxy.port
            ),
        )
        .args([
            "work",
            "--threads",
            "1",
            "--lease",
            "1s",
            "--worker-id",
            "cut-off",
            "--no-change-stream",
        ])
        .args(["--exec", "sh", "-c", "sleep 3; echo '\"cut-off\"'"])
        .stderr(std::fs::File::create(&cut_off_log).unwrap())
        .spawn()
        .unwrap();
    // Killed on drop, even if an assertion fails first.
    let mut cut_off = crate::helpers::Worker {
        child: cut_off,
        log: cut_off_log.clone(),
    };
    db.wait_for_count(
        doc! {"status": "running", "lease_owner": "cut-off"},
        1,
        Duration::from_secs(30),
    );
    proxy.pause(true);
    std::thread::sleep(Duration::from_millis(1_500));
    let mut other = db.spawn_worker(&[
        "--drain",
        "--threads",
        "1",
        "--worker-id",
        "other",
        "--exec",
        "sh",
        "-c",
        "echo '\"other\"'",
    ]);
    other.expect_success(Duration::from_secs(30));
    let done = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(
        done.get("result"),
        Some(&Bson::String("other".into())),
        "{done}"
    );
    proxy.pause(false);
    let log_path = tempfile(&format!("{}-cut.log", db.db));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("leases were lost")
    {
        assert!(
            Instant::now() < deadline,
            "cut-off worker never reported its lost lease:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = db.coll().find_one(doc! {}).run().unwrap().unwrap();
    assert_eq!(
        after.get("result"),
        Some(&Bson::String("other".into())),
        "fencing failed: {after}"
    );
    assert_eq!(after.get("completed_at"), done.get("completed_at"));
    // Once reconnected it is an ordinary worker again: it stops cleanly.
    cut_off.signal("TERM");
    cut_off.expect_success(Duration::from_secs(60));
}

#[test]
fn workers_killed_again_and_again_lose_no_job() {
    let db = TestDb::new("kill_rounds");
    db.enqueue_many(2_000, &[]);
    let ledger = tempfile(&format!("{}-ledger", db.db));
    let _ = std::fs::remove_file(&ledger);
    let record = ledger_command(&ledger);
    let args = [
        "--threads",
        "4",
        "--batch-size",
        "20",
        "--lease",
        "2s",
        "--exec",
        "sh",
        "-c",
        record.as_str(),
    ];
    let mut survivor = db.spawn_worker(&args);
    let mut killed = std::collections::HashSet::new();
    for _ in 0..10 {
        let mut victim = db.spawn_worker(&args);
        std::thread::sleep(Duration::from_millis(400 + rand::random::<u64>() % 400));
        victim.signal("KILL");
        killed.insert(victim.pid());
        victim.wait(Duration::from_secs(5));
    }
    survivor.signal("TERM");
    survivor.expect_success(Duration::from_secs(30));
    // The finisher is never killed: a long lease keeps a loaded server's
    // slow extension from letting its own jobs be rescued (and run twice).
    let mut finisher = db.spawn_worker(&[
        "--drain",
        "--threads",
        "4",
        "--lease",
        "10s",
        "--exec",
        "sh",
        "-c",
        record.as_str(),
    ]);
    finisher.expect_success(Duration::from_secs(180));
    assert_eq!(
        db.count(doc! {"status": "completed"}),
        2_000,
        "{:?}",
        db.by_status()
    );
    let runs = runs(&ledger);
    assert_eq!(runs.len(), 2_000, "every job ran at least once");
    // A job may run again only because a worker that ran it was killed
    // before its outcome was written: of each job's runs, all but the last
    // must be by killed workers.
    let mut by_job: std::collections::HashMap<String, Vec<u32>> = std::collections::HashMap::new();
    for (id, pid) in ledger_lines(&ledger) {
        by_job.entry(id).or_default().push(pid);
    }
    for (id, pids) in by_job.iter().filter(|(_, pids)| pids.len() > 1) {
        // A shell whose worker was SIGKILLed before the shell read its
        // parent is re-parented to init and records PPID 1: that run, too,
        // belongs to a killed worker (live workers are never PID 1).
        let by_killed = pids
            .iter()
            .filter(|pid| killed.contains(pid) || **pid == 1)
            .count();
        assert!(
            by_killed >= pids.len() - 1,
            "job {id} ran {} times, by workers {pids:?}; killed: {killed:?}",
            pids.len()
        );
    }
}

#[test]
fn a_standalone_server_without_change_streams_is_polled() {
    let server = OwnServer::start("standalone", &["--standalone"]);
    let db = TestDb::on(&server.uri(), "standalone");
    db.enqueue_many(20, &[]);
    // Not --drain: a draining worker never opens a stream. An idle one
    // tries, learns the server has none, and polls.
    let mut worker = db.spawn_worker(&["--threads", "2", "--simulate", "0ms..0ms"]);
    db.wait_for_count(doc! {"status": "completed"}, 20, Duration::from_secs(60));
    db.enqueue_many(5, &[]);
    db.wait_for_count(doc! {"status": "completed"}, 25, Duration::from_secs(60));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(60));
    assert!(
        worker
            .log_text()
            .contains("change streams are not available"),
        "{}",
        worker.log_text()
    );
}
