//! Python on both ends (`clients/python`, the `mongoq` package): the
//! producer client writes the documents `mongoq enqueue` writes, field by
//! field; a Python producer and a `--pipe` Python handler run jobs end to
//! end; `wait`, `get`, `cancel` and the errors; the outbox inside a
//! transaction; and the client on Debian's own pymongo.
//!
//! The client runs on `MONGOQ_PYTHON` (a virtual environment with pymongo
//! that scripts/test.sh makes), with the checkout's `clients/python` on
//! `PYTHONPATH`, so the code under test is this tree's.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use crate::helpers::{
    int, not_checked, output_within, stderr, stdout, tempfile, TestDb, COMMAND_LIMIT,
};

/// The Python with pymongo that scripts/test.sh installs.
fn python() -> String {
    std::env::var("MONGOQ_PYTHON").expect(
        "MONGOQ_PYTHON is not set: run the suite with scripts/test.sh, which installs pymongo for the Python client's tests",
    )
}

fn client_dir() -> String {
    format!("{}/clients/python", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the Python `body` with `python` against `db` (its URI in
/// `MONGODB_URI`, its name in `DB`); asserts it exits 0 and returns what it
/// printed.
fn run_python_with(python: &str, db: &TestDb, name: &str, body: &str) -> String {
    let path = tempfile(&format!("{}-{name}.py", db.db));
    std::fs::write(&path, body).unwrap();
    let out = output_within(
        Command::new(python)
            .arg(&path)
            .env("PYTHONPATH", client_dir())
            .env("MONGODB_URI", &db.uri)
            .env("DB", &db.db),
        None,
        COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "{name}.py failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn run_python(db: &TestDb, name: &str, body: &str) -> String {
    run_python_with(&python(), db, name, body)
}

/// The JSON object the script printed last.
fn printed(output: &str) -> serde_json::Value {
    let line = output
        .lines()
        .last()
        .expect("the script printed its answer");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {output}"))
}

fn oid(text: &str) -> ObjectId {
    ObjectId::parse_str(text.trim()).unwrap_or_else(|e| panic!("not an id `{text}`: {e}"))
}

fn job(db: &TestDb, id: ObjectId) -> Document {
    db.coll()
        .find_one(doc! {"_id": id})
        .run()
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} is not in {}", db.db))
}

/// A document with ids replaced by the names `labels` gives them (in
/// values and inside strings such as `last_error`), so documents of two
/// databases compare; every other value, its BSON type included, is kept.
fn labelled(value: &Bson, labels: &HashMap<ObjectId, String>) -> Bson {
    match value {
        Bson::ObjectId(id) => Bson::String(
            labels
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("unlabelled id {id}")),
        ),
        Bson::String(text) => Bson::String(labels.iter().fold(text.clone(), |t, (id, label)| {
            t.replace(&id.to_hex(), label)
        })),
        Bson::Array(items) => Bson::Array(items.iter().map(|v| labelled(v, labels)).collect()),
        Bson::Document(document) => Bson::Document(
            document
                .iter()
                .map(|(k, v)| (k.clone(), labelled(v, labels)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Asserts the two writers stored the same document for `what`: the same
/// fields, each with the same value and BSON type, ids compared by label;
/// `_id` and the server-stamped instants aside, and `run_at` within 5 s
/// where it was computed from "now" (equal where the producer gave it), and
/// `expires_at` likewise where `--expires-in` computed it.
fn assert_same(what: &str, cli: &Document, py: &Document, labels: &HashMap<ObjectId, String>) {
    const STAMPED: [&str; 2] = ["released_at", "cancelled_at"];
    let label = what;
    let keys = |d: &Document| -> Vec<String> {
        let mut k: Vec<String> = d.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(cli),
        keys(py),
        "{what}: the fields differ\ncli: {cli}\npy:  {py}"
    );
    for (field, value) in cli {
        let other = py.get(field).unwrap();
        if field == "_id" {
            continue;
        }
        if STAMPED.contains(&field.as_str()) {
            assert!(
                matches!((value, other), (Bson::DateTime(_), Bson::DateTime(_))),
                "{what}: {field} is a date in both: {value} / {other}"
            );
            continue;
        }
        if field == "run_at"
            || field == "throttle_until"
            || (field == "expires_at" && label == "delayed")
        {
            let (Bson::DateTime(a), Bson::DateTime(b)) = (value, other) else {
                panic!("{what}: {field} is a date in both: {value} / {other}");
            };
            assert!(
                (a.timestamp_millis() - b.timestamp_millis()).abs() < 5_000,
                "{what}: {field} {a} / {b}"
            );
            continue;
        }
        assert_eq!(
            labelled(value, labels),
            labelled(other, labels),
            "{what}: field `{field}` differs (types count)\ncli: {cli}\npy:  {py}"
        );
    }
}

#[test]
fn the_client_and_the_cli_write_the_same_documents() {
    let cli = TestDb::new("py_schema_cli");
    let py = TestDb::new("py_schema_py");
    // Data of types JSON and Python map alike (strings, booleans, arrays,
    // documents): numbers differ by language (JSON's are int64 through the
    // CLI, Python's small ints int32), which is the producer's data, not
    // the job's envelope.
    let data = r#"{"to": "ada@example.com", "tags": ["a", "b"], "ok": true, "nested": {"k": "v"}}"#;
    let mut labels: HashMap<ObjectId, String> = HashMap::new();
    let mut cli_ids: HashMap<&str, ObjectId> = HashMap::new();
    let mut enqueue = |name: &'static str, args: &[&str]| {
        let id = oid(&cli.enqueue(args));
        labels.insert(id, name.to_string());
        cli_ids.insert(name, id);
        id
    };
    enqueue(
        "every_option",
        &[
            data,
            "--queue",
            "emails",
            "--priority",
            "7",
            "--run-at",
            "2030-01-01T00:00:00Z",
            "--max-attempts",
            "4",
            "--unique-key",
            "order-1",
            "--expires-at",
            "2031-01-01T00:00:00Z",
        ],
    );
    enqueue(
        "delayed",
        &[
            data,
            "--delay",
            "1h",
            "--priority",
            "-3",
            "--expires-in",
            "2h",
        ],
    );
    enqueue("plain", &[data]);
    enqueue(
        "debounced",
        &[
            data,
            "--unique-key",
            "deb-1",
            "--debounce",
            "1h",
            "--queue",
            "q2",
        ],
    );
    enqueue(
        "throttled",
        &[
            data,
            "--unique-key",
            "thr-1",
            "--throttle",
            "1h",
            "--priority",
            "3",
        ],
    );
    let dep_pending = enqueue("dep_pending", &[data]);
    let dep_done = enqueue("dep_done", &[data]);
    let dep_failed = enqueue("dep_failed", &[data]);
    let finish = |db: &TestDb, id: ObjectId, status: &str| {
        db.coll()
            .update_one(
                doc! {"_id": id},
                doc! {"$set": {"status": status, "last_error": "card declined"}},
            )
            .run()
            .unwrap();
    };
    finish(&cli, dep_done, "completed");
    finish(&cli, dep_failed, "failed");
    let pending_hex = dep_pending.to_hex();
    let done_hex = dep_done.to_hex();
    let failed_hex = dep_failed.to_hex();
    enqueue(
        "waits",
        &[
            data,
            "--after",
            &pending_hex,
            "--after",
            &done_hex,
            "--if-dep-fails",
            "run",
            "--queue",
            "reports",
        ],
    );
    enqueue("released", &[data, "--after", &done_hex]);
    enqueue("cancelled", &[data, "--after", &failed_hex]);
    let lines = "{\"line\": \"one\"}\n{\"line\": \"two\"}\n";
    let out = cli.run_with_stdin(
        &[
            "enqueue",
            "--queue",
            "bulk",
            "--priority",
            "-2",
            "--max-attempts",
            "9",
        ],
        lines,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bulk: Vec<ObjectId> = stdout(&out).lines().map(oid).collect();
    for (n, id) in bulk.iter().enumerate() {
        labels.insert(*id, format!("bulk{n}"));
    }
    let flow = r#"{"queue": "reports", "jobs": [
        {"name": "fetch-a", "data": {"url": "a"}, "priority": 2, "max_attempts": 3},
        {"name": "fetch-b", "data": {"url": "b"}, "queue": "fetching"},
        {"name": "merge", "data": {"k": "v"}, "after": ["fetch-a", "fetch-b"], "if_dep_fails": "run"}
    ]}"#;
    let flow_file = tempfile(&format!("{}-flow.json", cli.db));
    std::fs::write(&flow_file, flow).unwrap();
    let out = cli.run(&["enqueue", "--flow", &flow_file.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for line in stdout(&out).lines() {
        let (name, id) = line.split_once('\t').unwrap();
        labels.insert(oid(id), format!("flow:{name}"));
        cli_ids.insert(
            match name {
                "fetch-a" => "flow:fetch-a",
                "fetch-b" => "flow:fetch-b",
                _ => "flow:merge",
            },
            oid(id),
        );
    }
    let cli_flow_id = job(&cli, cli_ids["flow:merge"])
        .get_document("flow")
        .unwrap()
        .get_object_id("id")
        .unwrap();
    labels.insert(cli_flow_id, "the flow".into());

    let answer = printed(&run_python(
        &py,
        "schema",
        &format!(
            r#"import datetime, json, os
from mongoq import Queue
q = Queue(os.environ["MONGODB_URI"], db=os.environ["DB"])
data = json.loads({data:?})
ids = {{}}
ids["every_option"] = q.enqueue(data, queue="emails", priority=7,
    run_at=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc), max_attempts=4, unique_key="order-1",
    expires_at=datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc))
ids["delayed"] = q.enqueue(data, delay=3600, priority=-3, expires_in=datetime.timedelta(hours=2))
ids["plain"] = q.enqueue(data)
deb = q.debounce(data, "deb-1", 3600, queue="q2")
assert not deb.replaced and q.debounce(data, "deb-1", 3600, queue="q2") == (deb.id, True)
ids["debounced"] = deb.id
thr = q.throttle(data, "thr-1", 3600, priority=3)
assert thr.kept and q.throttle(data, "thr-1", 3600, priority=3) == (thr.id, False)
ids["throttled"] = thr.id
for name in ("dep_pending", "dep_done", "dep_failed"):
    ids[name] = q.enqueue(data)
q.collection.update_one({{"_id": ids["dep_done"]}}, {{"$set": {{"status": "completed", "last_error": "card declined"}}}})
q.collection.update_one({{"_id": ids["dep_failed"]}}, {{"$set": {{"status": "failed", "last_error": "card declined"}}}})
ids["waits"] = q.enqueue(data, after=[ids["dep_pending"], str(ids["dep_done"])], if_dep_fails="run", queue="reports")
ids["released"] = q.enqueue(data, after=[ids["dep_done"]])
ids["cancelled"] = q.enqueue(data, after=[ids["dep_failed"]])
for n, i in enumerate(q.enqueue_many([{{"line": "one"}}, {{"line": "two"}}], queue="bulk", priority=-2, max_attempts=9)):
    ids["bulk%d" % n] = i
flow = q.enqueue_flow(json.loads({flow:?}))
for name, i in flow.jobs.items():
    ids["flow:" + name] = i
ids["the flow"] = flow.flow
print(json.dumps({{k: str(v) for k, v in ids.items()}}))
"#
        ),
    ));
    let py_ids: HashMap<String, ObjectId> = answer
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), oid(v.as_str().unwrap())))
        .collect();
    for (label, id) in &py_ids {
        labels.insert(*id, label.clone());
    }
    let mut compared = 0;
    for (id, label) in labels.clone() {
        if label == "the flow" || py_ids.get(&label) == Some(&id) {
            continue;
        }
        let py_id = py_ids
            .get(&label)
            .unwrap_or_else(|| panic!("the client made no `{label}`"));
        assert_same(&label, &job(&cli, id), &job(&py, *py_id), &labels);
        compared += 1;
    }
    assert_eq!(compared, 16, "every scenario compared");
    // The scenarios did what they name, in both (so the comparison is of
    // documents that mean something).
    let py_job = |label: &str| job(&py, py_ids[label]);
    assert_eq!(py_job("waits").get_str("status"), Ok("waiting"));
    assert_eq!(py_job("waits").get_bool("linked"), Ok(true));
    assert_eq!(py_job("dep_pending").get_bool("has_dependents"), Ok(true));
    assert_eq!(py_job("released").get_str("status"), Ok("pending"));
    assert_eq!(py_job("cancelled").get_str("status"), Ok("cancelled"));
    assert!(py_job("cancelled")
        .get_str("last_error")
        .unwrap()
        .contains("card declined"));
    assert_eq!(py_job("flow:fetch-a").get_str("status"), Ok("pending"));
    assert_eq!(py_job("flow:merge").get_str("status"), Ok("waiting"));
    assert_eq!(py_job("every_option").get_i64("priority"), Ok(7));
}

/// A `--pipe` handler on the package (`from mongoq import serve`) that logs
/// each run to `runs`.
fn handler(db: &TestDb, runs: &Path) -> String {
    let path = tempfile(&format!("{}-handler.py", db.db));
    std::fs::write(
        &path,
        format!(
            r#"from mongoq import serve, Permanent

def handle(job):
    with open({runs:?}, "a") as f:
        f.write(job["id"]["$oid"] + "\n")
    data = job["data"]
    if data.get("kind") == "permanent":
        raise Permanent("no such customer")
    if data.get("kind") == "merge":
        return {{"sum": sum(d["result"]["double"] for d in job["deps"])}}
    return {{"double": 2 * data["n"]}}

serve(handle)
"#,
            runs = runs.display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn a_python_producer_and_a_python_handler_run_jobs_end_to_end() {
    let db = TestDb::new("py_end_to_end");
    let runs = tempfile(&format!("{}-runs", db.db));
    let handler = handler(&db, &runs);
    let python = python();
    let mut worker = db.spawn_worker_with_env(
        &[
            "--threads",
            "3",
            "--max-attempts",
            "2",
            "--pipe",
            &python,
            &handler,
        ],
        &[("PYTHONPATH", &client_dir())],
    );
    let answer = printed(&run_python(
        &db,
        "producer",
        r#"import json, os
from mongoq import Queue, JobFailed
q = Queue(os.environ["MONGODB_URI"], db=os.environ["DB"])
ids = q.enqueue_many([{"n": n} for n in range(60)])
one = q.enqueue({"n": 100}, priority=5)
bad = q.enqueue({"kind": "permanent"})
flow = q.enqueue_flow({"jobs": [
    {"name": "a", "data": {"n": 1}},
    {"name": "b", "data": {"n": 2}},
    {"name": "merge", "data": {"kind": "merge"}, "after": ["a", "b"]},
]})
results = [q.wait(i, timeout=120) for i in ids]
assert results == [{"double": 2 * n} for n in range(60)], results
assert q.wait(one, timeout=120) == {"double": 200}
try:
    q.wait(bad, timeout=120)
    raise SystemExit("wait returned for a failed job")
except JobFailed as failed:
    assert failed.status == "failed" and "no such customer" in failed.error, failed
merged = q.wait(flow["merge"], timeout=120)
print(json.dumps({"merged": merged, "ids": [str(i) for i in ids + [one, bad] + list(flow.jobs.values())]}))
"#,
    ));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(60));
    assert_eq!(answer["merged"], serde_json::json!({"sum": 6}));
    let ids = answer["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 65);
    // Every job ran, none lost, none ran twice, each ended as it should.
    let ran = std::fs::read_to_string(&runs).unwrap();
    for id in ids {
        let id = oid(id.as_str().unwrap());
        let document = job(&db, id);
        let times = ran.lines().filter(|l| *l == id.to_hex()).count();
        assert_eq!(times, 1, "job {id} ran {times} times: {document}");
        assert_eq!(int(&document, "attempts"), 1, "{document}");
        let expected = if document.get_document("data").unwrap().get_str("kind") == Ok("permanent")
        {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(document.get_str("status"), Ok(expected), "{document}");
    }
    assert_eq!(db.count(doc! {}), 65, "no job lost or added");
}

#[test]
fn wait_get_cancel_and_bad_input_from_python() {
    let db = TestDb::new("py_api");
    db.queue().ensure_indexes().unwrap(); // the unique_key index, as `mongoq init` makes it
    let out = run_python(
        &db,
        "api",
        r#"import datetime, os
from bson import ObjectId
from mongoq import Queue, DuplicateJob, InvalidJob, JobFailed, JobNotFound, WaitTimeout
q = Queue(os.environ["MONGODB_URI"], db=os.environ["DB"])

def refused(call, *words):
    try:
        call()
    except InvalidJob as error:
        assert all(w in str(error) for w in words), (str(error), words)
        return
    raise AssertionError("accepted: %r" % (words,))

job = q.enqueue({"x": 1}, unique_key="k")
try:
    q.wait(job, timeout=0.3)
    raise AssertionError("wait returned")
except WaitTimeout as timeout:
    assert isinstance(timeout, TimeoutError)
assert q.get(str(job))["status"] == "pending"
assert q.get(ObjectId()) is None
try:
    q.enqueue({"x": 2}, unique_key="k")
    raise AssertionError("a second job with the key")
except DuplicateJob as duplicate:
    assert duplicate.existing == job, duplicate.existing
assert q.cancel(job) == "cancelled"
try:
    q.wait(job, timeout=5)
except JobFailed as failed:
    assert failed.status == "cancelled" and "operator" in failed.error, failed
assert q.cancel(job) == "finished"
running = q.enqueue({"x": 3})
q.collection.update_one({"_id": running}, {"$set": {"status": "running", "lease_owner": "w", "lease_token": "t"}})
assert q.cancel(str(running)) == "requested"
assert q.get(running)["cancel_requested"] is True
try:
    q.cancel(ObjectId())
    raise AssertionError("cancelled a job that does not exist")
except JobNotFound:
    pass

before = q.collection.count_documents({})
refused(lambda: q.enqueue({}, delay=1, run_at=datetime.datetime.now()), "delay or run_at")
refused(lambda: q.enqueue({}, queue=""), "queue name")
refused(lambda: q.enqueue({}, priority="high"), "priority")
refused(lambda: q.enqueue({}, max_attempts=0), "max_attempts")
refused(lambda: q.enqueue({}, delay=-1), "delay")
refused(lambda: q.enqueue({}, after=[job], if_dep_fails="maybe"), "if_dep_fails", "'run'")
refused(lambda: q.enqueue({}, after=[job], unique_key="k2"), "unique_key")
refused(lambda: q.enqueue({}, after=[ObjectId()]), "does not exist", "nothing was enqueued")
refused(lambda: q.enqueue({"x": {1, 2}}), "BSON")
refused(lambda: q.enqueue_flow({"jobs": [{"name": "a", "after": ["b"]}, {"name": "b", "after": ["a"]}]}), "cycle", "a → b → a")
refused(lambda: q.enqueue_flow({"jobs": [{"name": "a", "after": ["zz"]}]}), "`zz`")
refused(lambda: q.enqueue_flow({"jobs": [{"name": "a"}, {"name": "a"}]}), "unique")
refused(lambda: q.enqueue_flow({"jobs": [{"name": "a", "colour": "red"}]}), "colour")
assert q.collection.count_documents({}) == before, "a refused job left something"

stats = q.stats()
assert stats["counts"]["cancelled"] == 1 and stats["counts"]["running"] == 1, stats
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    // The client's stats are `mongoq stats --json`'s numbers.
    db.enqueue(&["{}", "--delay", "1h"]);
    db.enqueue(&["{}"]);
    let cli = db.run(&["stats", "--json"]);
    assert!(cli.status.success(), "{}", stderr(&cli));
    let cli: serde_json::Value = serde_json::from_str(&stdout(&cli)).unwrap();
    let py = printed(&run_python(
        &db,
        "stats",
        r#"import json, os
from mongoq import Queue
print(json.dumps(Queue(os.environ["MONGODB_URI"], db=os.environ["DB"]).stats()))
"#,
    ));
    for field in ["counts", "eligible", "paused", "scheduled", "expired"] {
        assert_eq!(cli[field], py[field], "{field}: cli {cli} / py {py}");
    }
}

#[test]
fn enqueue_inside_a_transaction_exists_only_if_it_commits() {
    let db = TestDb::new("py_transaction");
    db.queue().ensure_indexes().unwrap();
    let answer = printed(&run_python(
        &db,
        "outbox",
        r#"import json, os
from mongoq import Queue
q = Queue(os.environ["MONGODB_URI"], db=os.environ["DB"])
orders = q.collection.database["orders"]
orders.insert_one({"_id": "seed"})

def in_transaction(body, end):
    with q.client.start_session() as session:
        session.start_transaction()
        made = body(session)
        getattr(session, end)()
        return made

def abort(s):
    orders.insert_one({"_id": 1}, session=s)
    flow = q.enqueue_flow({"jobs": [{"name": "a"}, {"name": "b", "after": ["a"]}]}, session=s)
    q.enqueue_many([{"order": 0}, {"order": 0}], session=s)
    return q.enqueue({"order": 1}, session=s), flow

aborted, aborted_flow = in_transaction(abort, "abort_transaction")
assert q.get(aborted) is None and orders.find_one({"_id": 1}) is None
assert q.collection.count_documents({}) == 0, "the aborted flow and jobs left nothing"

def commit(s):
    orders.insert_one({"_id": 2}, session=s)
    first = q.enqueue({"order": 2}, session=s)
    rest = q.enqueue_many([{"order": 3}, {"order": 4}], session=s)
    after = q.enqueue({"order": 5}, after=[first], session=s)
    return [first] + rest + [after]

committed = in_transaction(commit, "commit_transaction")
assert orders.find_one({"_id": 2}) is not None
print(json.dumps({"aborted": str(aborted), "committed": [str(i) for i in committed]}))
"#,
    ));
    let aborted = oid(answer["aborted"].as_str().unwrap());
    assert_eq!(
        db.count(doc! {"_id": aborted}),
        0,
        "the aborted job is not there"
    );
    let committed: Vec<ObjectId> = answer["committed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| oid(v.as_str().unwrap()))
        .collect();
    assert_eq!(db.count(doc! {}), 4, "exactly the committed jobs");
    // The dependent enqueued in the transaction is linked by a worker's
    // flow sweep after the commit, and runs after its dependency.
    let mut worker = db.spawn_worker(&["--threads", "2", "--simulate", "1ms"]);
    db.wait_for_count(doc! {"status": "completed"}, 4, Duration::from_secs(120));
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(60));
    for id in &committed {
        assert_eq!(job(&db, *id).get_str("status"), Ok("completed"));
    }
    let first = job(&db, committed[0]);
    let after = job(&db, committed[3]);
    assert!(
        after.get_datetime("started_at").unwrap() >= first.get_datetime("completed_at").unwrap(),
        "the dependent started after its dependency completed: {first} / {after}"
    );
}

#[test]
fn the_client_runs_on_debians_pymongo() {
    let debian = "/usr/bin/python3";
    let has_pymongo = Command::new(debian)
        .args(["-c", "import pymongo"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pymongo {
        not_checked(
            "the client on Debian's pymongo",
            "/usr/bin/python3 has no pymongo (scripts/test.sh installs python3-pymongo with apt)",
        );
        return;
    }
    let db = TestDb::new("py_debian");
    let out = run_python_with(
        debian,
        &db,
        "debian",
        r#"import os
from mongoq import Queue
q = Queue(os.environ["MONGODB_URI"], db=os.environ["DB"])
first = q.enqueue({"n": 1}, priority=2)
q.enqueue_many([{"n": n} for n in range(3)])
q.enqueue({"n": 9}, after=[first])
q.enqueue_flow({"jobs": [{"name": "a"}, {"name": "b", "after": ["a"]}]})
counts = q.stats()["counts"]
assert counts["pending"] == 5 and counts["waiting"] == 2, counts
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(db.count(doc! {"priority": {"$type": "long"}}), 7);
}

#[test]
fn the_python_unit_tests_pass() {
    let out = output_within(
        Command::new(python())
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(format!("{}/tests", client_dir()))
            .env("PYTHONPATH", client_dir()),
        None,
        COMMAND_LIMIT,
    );
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("OK") && !said.contains("Ran 0 tests"),
        "{said}"
    );
}

/// `mongoq bench --only python` runs the client shipped in the binary
/// against a raw `insert_many`, both inserting every job (the script
/// checks the count), and prints section 13.
#[test]
fn the_bench_compares_enqueue_many_with_a_raw_insert_many() {
    let db = TestDb::new("py_bench");
    let chart = tempfile(&format!("{}-chart.svg", db.db));
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_mongoq"))
            .args(["--uri", &db.uri, "bench", "--bench-db", &db.db])
            .args(["--only", "python", "--rounds", "1", "--chart"])
            .arg(&chart)
            .env("MONGOQ_PYTHON", python()),
        None,
        COMMAND_LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("13. python: 10000 jobs"), "{text}");
    for row in [
        "insert_many of the documents",
        "Queue.enqueue_many of the data",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row `{row}`: {text}"));
        let ratio: f64 = line
            .split_whitespace()
            .last()
            .and_then(|r| r.trim_end_matches('×').parse().ok())
            .unwrap_or_else(|| panic!("no ratio in `{line}`"));
        assert!(ratio > 0.0, "{line}");
    }
}

/// The package's annotations hold (`mypy --strict`), so `py.typed` tells
/// users' type checkers the truth.
#[test]
fn the_python_package_type_checks_strictly() {
    let out = output_within(
        Command::new(python())
            .args(["-m", "mypy", "--strict", "--no-incremental", "mongoq"])
            .current_dir(client_dir()),
        None,
        COMMAND_LIMIT,
    );
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Success: no issues found"), "{said}");
}
