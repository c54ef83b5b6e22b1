//! Transactions: the transactional outbox. A job enqueued inside the
//! caller's MongoDB transaction exists (and wakes workers) only if that
//! transaction commits, together with the caller's own writes; a handler
//! can write its own documents and the job's completion atomically
//! ([`Job::complete_in`]), fenced by the lease token like every outcome.
//!
//! This gives exactly-once effects *inside* the database (a retried
//! attempt sees either all of a committed attempt's writes, with the job
//! completed, or none of them) and at-least-once outside it (an email sent
//! by an attempt whose transaction then failed is sent again).
//!
//! Transactions need a replica set or a sharded cluster; on a standalone
//! server [`Queue::start_session`] says so ([`Error::NeedsReplicaSet`]).

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::sync::ClientSession;

use super::enqueue::{is_duplicate_key, new_job_document, EnqueueOptions};
use super::Queue;
use crate::error::Error;
use crate::job::Job;
use crate::schema::{completed_update, fenced, id_text};

impl Queue {
    /// A session on the queue's client for the caller's transactions.
    /// Refuses a standalone server, which cannot run transactions.
    pub fn start_session(&self) -> Result<ClientSession, Error> {
        let hello = self
            .database()
            .run_command(doc! {"hello": 1})
            .run()
            .map_err(|e| self.db_error("hello", &e))?;
        let replicated = hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
        if !replicated {
            return Err(Error::NeedsReplicaSet(self.redacted_uri()));
        }
        self.client()
            .start_session()
            .run()
            .map_err(|e| self.db_error("startSession", &e))
    }

    /// Enqueues one job inside `session`'s transaction: workers see it only
    /// once the transaction commits (its change-stream event fires then).
    pub fn enqueue_in(
        &self,
        session: &mut ClientSession,
        data: Bson,
        options: &EnqueueOptions,
    ) -> Result<ObjectId, Error> {
        let id = ObjectId::new();
        let document = new_job_document(id, data, options, self.now());
        match self
            .collection()
            .insert_one(document)
            .session(&mut *session)
            .run()
        {
            Ok(_) => Ok(id),
            Err(error) if is_duplicate_key(&error) => Err(Error::Duplicate {
                unique_key: options.unique_key.clone().unwrap_or_default(),
                existing: None,
            }),
            Err(error) => Err(self.db_error("insert (in transaction)", &error)),
        }
    }

    /// Enqueues many jobs inside `session`'s transaction (1,000 per round
    /// trip); returns their ids in order.
    pub fn enqueue_many_in(
        &self,
        session: &mut ClientSession,
        data: impl IntoIterator<Item = Bson>,
        options: &EnqueueOptions,
    ) -> Result<Vec<ObjectId>, Error> {
        self.in_batches(data, options, |documents: Vec<Document>| {
            self.collection()
                .insert_many(documents)
                .session(&mut *session)
                .run()
                .map(|_| ())
                .map_err(|e| self.db_error("insert (in transaction)", &e))
        })
    }
}

impl Job {
    /// Completes this job inside `session`'s transaction, with `result`,
    /// fenced by this attempt's lease: if the lease was lost (another worker
    /// took the job over, or it was cancelled) nothing matches and the
    /// error is [`Error::LeaseLost`]; abort the transaction then, so none of
    /// the attempt's writes land and the other worker's outcome stands.
    ///
    /// A job changed since the transaction began (the keeper extended its
    /// lease, or another worker took it) makes this [`Error::Transient`]:
    /// abort and run the transaction again; the next run sees the change
    /// (and then [`Error::LeaseLost`] if the job was taken).
    ///
    /// After committing, return `Ok` from the handler: the worker sees the
    /// job settled and writes nothing more. (If the transaction aborts,
    /// return `Err`: the attempt is retried as any failed one.)
    pub fn complete_in(
        &self,
        queue: &Queue,
        session: &mut ClientSession,
        result: Option<Bson>,
    ) -> Result<(), Error> {
        let done = queue
            .collection()
            .update_one(
                fenced(&self.id, self.lease_token),
                completed_update(queue.clock().now(), result),
            )
            .session(&mut *session)
            .run()
            .map_err(|e| queue.db_error("update (complete in transaction)", &e))?;
        if done.matched_count == 0 {
            return Err(Error::LeaseLost(id_text(&self.id)));
        }
        self.settled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
