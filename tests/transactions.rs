//! The transactional outbox on the real server: a job enqueued in the
//! caller's transaction exists only if it commits; a handler's own writes
//! and the job's completion land together or not at all, fenced by the
//! lease; a standalone server is refused with a clear error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::sync::ClientSession;
use mongoq::{EnqueueOptions, Error, HandlerError, Job, Queue, Shutdown, Worker, WorkerConfig};

use crate::helpers::{OwnServer, TestDb};

/// Runs `body` in a transaction on `queue`'s client, again when the server
/// says the conflict was transient (as MongoDB's drivers recommend).
fn in_transaction(
    queue: &Queue,
    mut body: impl FnMut(&mut ClientSession) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut session = queue.start_session()?;
    for _ in 0..20 {
        session
            .start_transaction()
            .run()
            .map_err(|e| queue.db_error("startTransaction", &e))?;
        let done = body(&mut session).and_then(|()| {
            session
                .commit_transaction()
                .run()
                .map_err(|e| queue.db_error("commitTransaction", &e))
        });
        match done {
            Err(error) if error.is_transient() => {
                let _ = session.abort_transaction().run();
            }
            Err(error) => {
                let _ = session.abort_transaction().run();
                return Err(error);
            }
            Ok(()) => return Ok(()),
        }
    }
    panic!("the transaction kept conflicting");
}

/// The queue collection and `names` exist before any transaction (creating
/// a collection inside concurrent transactions conflicts, on MongoDB too).
fn collections(db: &TestDb, queue: &Queue, names: &[&str]) {
    queue.ensure_indexes().unwrap();
    for name in names {
        queue.database().create_collection(*name).run().unwrap();
    }
    let _ = db;
}

fn drain_config() -> WorkerConfig {
    WorkerConfig {
        threads: 4,
        drain: true,
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

#[test]
fn an_aborted_transaction_leaves_no_job_and_no_order_a_committed_one_both() {
    let db = TestDb::new("tx_outbox");
    let queue = db.queue();
    collections(&db, &queue, &["orders"]);
    // The business writes go through the queue's client: a transaction
    // spans one client's session.
    let orders = queue.database().collection::<Document>("orders");
    let mut session = queue.start_session().unwrap();

    session.start_transaction().run().unwrap();
    orders
        .insert_one(doc! {"_id": "o1"})
        .session(&mut session)
        .run()
        .unwrap();
    queue
        .enqueue_in(
            &mut session,
            Bson::Document(doc! {"receipt": "o1"}),
            &EnqueueOptions::default(),
        )
        .unwrap();
    session.abort_transaction().run().unwrap();
    assert_eq!(
        orders.count_documents(doc! {}).run().unwrap(),
        0,
        "no business write"
    );
    assert_eq!(db.count(doc! {}), 0, "no job");

    session.start_transaction().run().unwrap();
    orders
        .insert_one(doc! {"_id": "o2"})
        .session(&mut session)
        .run()
        .unwrap();
    let id = queue
        .enqueue_in(
            &mut session,
            Bson::Document(doc! {"receipt": "o2"}),
            &EnqueueOptions::default(),
        )
        .unwrap();
    // Invisible to workers (and everyone else) until the commit.
    assert_eq!(db.count(doc! {}), 0, "not visible before the commit");
    session.commit_transaction().run().unwrap();
    assert_eq!(orders.count_documents(doc! {"_id": "o2"}).run().unwrap(), 1);
    assert_eq!(db.count(doc! {"_id": id, "status": "pending"}), 1);

    let runs = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&runs);
    let worker = Worker::new(queue, drain_config(), move |_: &Job| {
        *counted.lock().unwrap() += 1;
        Ok(None)
    })
    .unwrap();
    assert_eq!(worker.run(&Shutdown::new()).completed, 1);
    assert_eq!(*runs.lock().unwrap(), 1, "the committed job ran once");
}

#[test]
fn a_handler_completes_its_job_and_writes_its_own_documents_atomically() {
    let db = TestDb::new("tx_complete");
    let queue = db.queue();
    let ids = queue
        .enqueue_many((0..20).map(Bson::Int32), &EnqueueOptions::default())
        .unwrap();
    collections(&db, &queue, &["receipts"]);
    let receipts = db.database().collection::<Document>("receipts");
    let in_handler = queue.clone();
    let worker = Worker::new(queue.clone(), drain_config(), move |job: &Job| {
        let receipts = in_handler.database().collection::<Document>("receipts");
        in_transaction(&in_handler, |session| {
            receipts
                .insert_one(doc! {"job": job.id.clone(), "n": job.data.clone()})
                .session(&mut *session)
                .run()
                .map_err(|e| in_handler.db_error("insert (receipt)", &e))?;
            job.complete_in(&in_handler, session, Some(Bson::String("sent".into())))
        })?;
        Ok(None)
    })
    .unwrap();
    let report = worker.run(&Shutdown::new());
    assert_eq!(report.completed, 20, "{report:?}");
    assert_eq!(
        report.outcome_writes, 0,
        "the worker wrote no outcome itself: {report:?}"
    );
    assert_eq!(receipts.count_documents(doc! {}).run().unwrap(), 20);
    for id in ids {
        let job = db.coll().find_one(doc! {"_id": id}).run().unwrap().unwrap();
        assert_eq!(job.get_str("status").unwrap(), "completed");
        assert_eq!(job.get_str("result").unwrap(), "sent");
        assert!(!job.contains_key("lease_token"), "the lease ended: {job}");
    }
}

#[test]
fn a_lease_taken_over_mid_transaction_lets_nothing_of_that_attempt_land() {
    let db = TestDb::new("tx_takeover");
    let queue = db.queue();
    collections(&db, &queue, &["receipts"]);
    let id = queue
        .enqueue(
            Bson::Document(doc! {"order": 7}),
            &EnqueueOptions::default(),
        )
        .unwrap();
    let (taken_tx, taken_rx) = crossbeam_channel::bounded::<()>(1);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let outcome: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = Arc::clone(&outcome);
    let in_handler = queue.clone();
    let worker = Worker::new(
        queue.clone(),
        WorkerConfig {
            threads: 1,
            drain: true,
            max_attempts: 1,
            ..WorkerConfig::default()
        },
        move |job: &Job| {
            let receipts = in_handler.database().collection::<Document>("receipts");
            let mut first = true;
            let done = in_transaction(&in_handler, |session| {
                receipts
                    .insert_one(doc! {"job": job.id.clone()})
                    .session(&mut *session)
                    .run()
                    .map_err(|e| in_handler.db_error("insert (receipt)", &e))?;
                if std::mem::take(&mut first) {
                    // Another worker takes the job over now (its lease expired).
                    taken_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
                job.complete_in(&in_handler, session, None)
            });
            match done {
                Err(error @ Error::LeaseLost(_)) => {
                    *seen.lock().unwrap() = Some(error.to_string());
                    Err(HandlerError::retry(error.to_string()))
                }
                other => panic!("the lease was lost, yet: {other:?}"),
            }
        },
    )
    .unwrap();
    let thief = {
        let db_coll = db.coll();
        std::thread::spawn(move || {
            taken_rx.recv().unwrap();
            // What a rescuing worker and its outcome leave: a new lease,
            // then its own completion.
            db_coll
                .update_one(
                    doc! {"_id": id},
                    doc! {"$set": {"status": "completed", "result": "by the other worker", "lease_token": ObjectId::new()}},
                )
                .run()
                .unwrap();
            go_tx.send(()).unwrap();
        })
    };
    let report = worker.run(&Shutdown::new());
    thief.join().unwrap();
    let said = outcome
        .lock()
        .unwrap()
        .clone()
        .expect("the handler saw the lost lease");
    assert!(said.contains("abort the transaction"), "{said}");
    let receipts = db.database().collection::<Document>("receipts");
    assert_eq!(
        receipts.count_documents(doc! {}).run().unwrap(),
        0,
        "its writes did not land"
    );
    let job = db.coll().find_one(doc! {"_id": id}).run().unwrap().unwrap();
    assert_eq!(job.get_str("status").unwrap(), "completed");
    assert_eq!(
        job.get_str("result").unwrap(),
        "by the other worker",
        "the other outcome stands"
    );
    assert_eq!(
        report.lost, 1,
        "its retry outcome was fenced off: {report:?}"
    );
}

#[test]
fn concurrent_transactional_enqueues_with_random_aborts_leave_exactly_the_committed_jobs() {
    let db = TestDb::new("tx_many");
    let queue = db.queue();
    collections(&db, &queue, &[]);
    let committed: Arc<Mutex<Vec<i64>>> = Arc::default();
    let producers: Vec<_> = (0..8)
        .map(|thread| {
            let queue: Queue = queue.clone();
            let committed = Arc::clone(&committed);
            std::thread::spawn(move || {
                let mut session = queue.start_session().unwrap();
                for i in 0..25_i64 {
                    let n = thread * 1_000 + i;
                    if rand::random::<bool>() {
                        in_transaction(&queue, |session| {
                            queue
                                .enqueue_in(session, Bson::Int64(n), &EnqueueOptions::default())
                                .map(|_| ())
                        })
                        .unwrap();
                        committed.lock().unwrap().push(n);
                    } else {
                        session.start_transaction().run().unwrap();
                        queue
                            .enqueue_in(&mut session, Bson::Int64(n), &EnqueueOptions::default())
                            .unwrap();
                        session.abort_transaction().run().unwrap();
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let mut committed = committed.lock().unwrap().clone();
    committed.sort_unstable();
    assert!(
        !committed.is_empty() && committed.len() < 200,
        "both outcomes happened"
    );
    assert_eq!(
        db.count(doc! {}) as usize,
        committed.len(),
        "exactly the committed jobs exist"
    );

    let runs: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let counted = Arc::clone(&runs);
    let worker = Worker::new(queue, drain_config(), move |job: &Job| {
        *counted
            .lock()
            .unwrap()
            .entry(job.data.as_i64().unwrap())
            .or_insert(0) += 1;
        Ok(None)
    })
    .unwrap();
    worker.run(&Shutdown::new());
    let runs = runs.lock().unwrap();
    let mut ran: Vec<i64> = runs.keys().copied().collect();
    ran.sort_unstable();
    assert_eq!(ran, committed, "the committed jobs ran, no other");
    assert!(runs.values().all(|n| *n == 1), "each once: {runs:?}");
}

#[test]
fn a_standalone_server_is_told_that_transactions_need_a_replica_set() {
    let server = OwnServer::start("tx_standalone", &["--standalone"]);
    let db = TestDb::on(&server.uri(), "tx_standalone");
    let Err(error) = db.queue().start_session() else {
        panic!("a standalone server cannot run transactions")
    };
    assert!(matches!(error, Error::NeedsReplicaSet(_)), "{error}");
    assert!(error.to_string().contains("replica set"), "{error}");
}
