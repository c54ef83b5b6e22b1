//! Authentication and TLS from the URI, and secrets kept out of output.

use std::process::Command;
use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{stderr, stdout, tempfile, OwnServer, TestDb};

#[test]
fn a_least_privilege_user_on_an_auth_server_runs_the_queue_and_bad_credentials_are_clear() {
    // The first user is created before auth is switched on (some servers
    // have MongoDB's localhost exception, some do not), then the server is
    // restarted with --auth on the same data.
    let mut server = OwnServer::start("auth", &[]);
    mongodb::sync::Client::with_uri_str(server.uri())
        .unwrap()
        .database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "r00tpw", "roles": ["root"]})
        .run()
        .unwrap();
    server.stop();
    server.restart_with(&["--auth"]);
    let root = mongodb::sync::Client::with_uri_str(format!(
        "mongodb://root:r00tpw@127.0.0.1:{}/?authSource=admin",
        server.port
    ))
    .unwrap();
    root.database("admin")
        .run_command(doc! {"createUser": "worker", "pwd": "S3cret-pw", "roles": [{"role": "readWrite", "db": "authq"}]})
        .run()
        .unwrap();
    let uri = format!(
        "mongodb://worker:S3cret-pw@127.0.0.1:{}/?authSource=admin",
        server.port
    );
    let db = TestDb::on_with_admin(
        &uri,
        "authq",
        &format!(
            "mongodb://root:r00tpw@127.0.0.1:{}/?authSource=admin",
            server.port
        ),
    );
    db.enqueue_many(30, &[]);
    let mut worker = db.spawn_worker(&["--drain", "--threads", "2", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"status": "completed"}), 30);
    let stats = db.run(&["stats"]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    for text in [worker.log_text(), stdout(&stats), stderr(&stats)] {
        assert!(!text.contains("S3cret-pw"), "password leaked: {text}");
    }

    let wrong = db
        .mongoq()
        .env("MONGODB_URI", uri.replace("S3cret-pw", "wrong-pw"))
        .args(["stats"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let message = stderr(&wrong);
    assert!(message.to_lowercase().contains("auth"), "{message}");
    assert!(
        !message.contains("wrong-pw") && !message.contains("panicked"),
        "{message}"
    );

    // A worker pointed at a database it may not use says why and keeps
    // trying (the grant may come); it stops cleanly.
    let denied_log = tempfile(&format!("{}-denied.log", std::process::id()));
    let mut denied = crate::helpers::Worker {
        child: Command::new(env!("CARGO_BIN_EXE_mongoq"))
            .env("MONGODB_URI", &db.uri)
            .args(["--db", "not_granted", "work", "--simulate", "0ms..0ms"])
            .stderr(std::fs::File::create(&denied_log).unwrap())
            .spawn()
            .unwrap(),
        log: denied_log,
    };
    std::thread::sleep(Duration::from_millis(1_500));
    denied.signal("TERM");
    denied.expect_success(Duration::from_secs(20));
    let log = denied.log_text();
    assert!(
        log.contains("not authorized") && log.contains("readWrite"),
        "{log}"
    );
    assert!(!log.contains("S3cret-pw"), "{log}");
    let elsewhere = Command::new(env!("CARGO_BIN_EXE_mongoq"))
        .env("MONGODB_URI", &db.uri)
        .args(["--db", "not_granted", "enqueue", "{}"])
        .output()
        .unwrap();
    assert!(!elsewhere.status.success());
    assert!(
        stderr(&elsewhere).contains("not authorized"),
        "{}",
        stderr(&elsewhere)
    );
    assert!(
        stderr(&elsewhere).contains("readWrite"),
        "the hint names the role: {}",
        stderr(&elsewhere)
    );
}

#[test]
fn tls_from_the_uri() {
    let dir = tempfile(&format!("tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // rustls wants a CA and a server certificate it signed, with the IP in
    // subjectAltName; a self-signed leaf is refused.
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (ca_key, ca, key, csr, cert, ext) = (
        file("ca.key"),
        file("ca.pem"),
        file("server.key"),
        file("server.csr"),
        file("server.pem"),
        file("server.ext"),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mongoq test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    let server = OwnServer::start("tls", &["--tls-cert-file", &cert, "--tls-key-file", &key]);
    let uri = format!(
        "mongodb://127.0.0.1:{}/?tls=true&tlsCAFile={ca}",
        server.port
    );
    let db = TestDb::on(&uri, "tls");
    db.enqueue_many(10, &[]);
    let mut worker = db.spawn_worker(&["--drain", "--simulate", "0ms..0ms"]);
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(db.count(doc! {"status": "completed"}), 10);
    // Without trusting the certificate, the connection is refused clearly.
    let untrusted = db
        .mongoq()
        .env(
            "MONGODB_URI",
            format!(
                "mongodb://127.0.0.1:{}/?tls=true&serverSelectionTimeoutMS=1000",
                server.port
            ),
        )
        .args(["stats"])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    assert!(
        !stderr(&untrusted).contains("panicked"),
        "{}",
        stderr(&untrusted)
    );
}
