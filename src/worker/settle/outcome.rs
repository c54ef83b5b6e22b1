//! Outcomes of attempts, and writing them back: fenced and batched.
//!
//! Every write is **fenced**: its filter is `{_id, lease_token, status:
//! "running"}`, so a worker that lost a job's lease (its process was
//! paused, its network cut, and another worker took the job over) matches
//! nothing and cannot overwrite the other worker's outcome.
//!
//! Writes are **batched**: the [`crate::worker::settle::completer`] thread takes every
//! outcome that is waiting and writes them all in one `update` command (a
//! documented command that works on standalone servers, replica sets and
//! sharded clusters). The outcomes of one claim that change every job the
//! same way (a completion, with or without a result, and a hand-back) are
//! one `multi` statement per claim token: a completion's result rides in a
//! pipeline that gives each job its own, so a handler that returns
//! something costs the server about what one that returns nothing does.
//! The rest (retries, failures) are one statement per job. Under load
//! outcomes pile up while a write is in flight, so batches grow by
//! themselves; when idle, an outcome is written at once.

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use crate::error::Error;
use crate::queue::{Queue, WriteError};
use crate::schema::{
    completed_pipeline, completed_update, count, fenced, fields, id_text, push_error, sized_result,
    unset_lease, Status,
};
use crate::worker::lease::held::JobKey;
use crate::worker::settle::oversized::{fail_oversized, is_too_large_code};

/// The shared kind of hand-backs (see `Outcome::shared_kind`).
const RELEASED: u8 = 1;
/// The shared kind of snoozes (of one delay: see `Shared::delay`).
const SNOOZED: u8 = 2;
/// Most jobs one shared statement writes: a completion with results finds
/// each document's result by the position of its `_id` in the statement's
/// list, so the server's work per statement grows with the square of this
/// (on secantusd-rs, 512 a statement cost twice the server CPU per job of
/// no results, 48 about the same); the statements of a flush still go in
/// one command.
pub(crate) const SHARED_IDS: usize = 32;
/// Most bytes of results one shared completion carries (the command stays
/// far below MongoDB's 16 MB).
pub(crate) const SHARED_RESULT_BYTES: usize = 2 * 1024 * 1024;

/// Outcomes of one claim written by one `updateMany`.
struct Shared<'a> {
    kind: u8,
    token: ObjectId,
    dependents: bool,
    /// Snoozes: the delay every member asked for (their `run_at` is the
    /// write's instant plus it, so one statement writes them all).
    delay: std::time::Duration,
    members: Vec<&'a Outcome>,
    /// Each member's result as stored (null for none), in `members`' order.
    results: Vec<Bson>,
    /// The results' size, as [`crate::schema::sized_result`] counts it.
    bytes: usize,
}

/// Longest error text stored.
pub(crate) const MAX_ERROR_BYTES: usize = 4 * 1024;
/// Most statements in one `update` command (the server allows 100,000).
pub(crate) const MAX_STATEMENTS: usize = 1_000;

/// What to write for one job: which job, under which claim, and what
/// became of its attempt.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) key: JobKey,
    pub(crate) kind: Kind,
    /// What the history counts of it (see [`crate::history`]); `None` for
    /// outcomes it does not count (a job handed back unstarted).
    pub(crate) timing: Option<Timing>,
}

/// An attempt as the history counts it: its job's queue, how long the job
/// had waited when it started, and how long it ran (if it ran).
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) queue: String,
    pub(crate) wait: Option<std::time::Duration>,
    pub(crate) run: Option<std::time::Duration>,
    /// An operator cancelled the job while it ran: whatever its handler
    /// returned, the attempt counts as cancelled.
    pub(crate) cancelled: bool,
}

/// What became of an attempt.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// Ran and succeeded.
    Completed { result: Option<Bson> },
    /// Failed; runs again at `run_at`.
    Retry {
        attempt: u32,
        error: String,
        run_at: DateTime,
    },
    /// Failed for good (attempts exhausted, permanent error, malformed).
    Failed { attempt: u32, error: String },
    /// The handler said "not now": pending again `delay` after the write
    /// (on the server's clock), the attempt not charged, `snoozes` counted.
    /// The snoozes of one claim with one delay are one statement.
    Snoozed {
        delay: std::time::Duration,
        /// The handler paused this queue as long, saying why: the
        /// completer writes the pause before the outcome.
        pause: Option<(String, String)>,
    },
    /// Claimed but expired before it started: `cancelled`, `expired`, the
    /// attempt not counted.
    Expired { expires_at: DateTime },
    /// Claimed but never started (shutdown): back to pending, attempt not counted.
    Released,
    /// Started but cut off by shutdown: back to pending now, attempt counted.
    Interrupted { error: String },
    /// The handler completed the job in its own transaction
    /// ([`crate::Job::complete_in`]): nothing more to write.
    Settled,
}

impl Outcome {
    /// What became of job `key`'s attempt.
    pub(crate) fn new(key: JobKey, kind: Kind) -> Outcome {
        Outcome {
            key,
            kind,
            timing: None,
        }
    }

    /// The same outcome, counted by the history with `timing`.
    pub(crate) fn timed(mut self, timing: Timing) -> Outcome {
        self.timing = Some(timing);
        self
    }

    /// Whether the handler's transaction wrote it already.
    pub(crate) fn is_settled(&self) -> bool {
        matches!(self.kind, Kind::Settled)
    }

    /// The fenced update statement for this outcome.
    fn statement(&self, worker: &str, at: DateTime) -> Document {
        let key = &self.key;
        let mut filter = fenced(&key.id, key.token);
        if self.returns_to_pending() {
            filter.insert(fields::CANCEL_REQUESTED, doc! {"$ne": true});
        }
        if self.ends_job() && !key.dependents {
            filter.insert(fields::HAS_DEPENDENTS, doc! {"$ne": true});
        }
        doc! {"q": filter, "u": self.update(worker, at), "multi": false}
    }

    /// Whether this outcome puts the job back to `pending`. Those writes skip
    /// a job an operator cancelled meanwhile: it stays `running` under this
    /// worker until the keeper marks it `cancelled` (or its lease expires).
    fn returns_to_pending(&self) -> bool {
        matches!(
            self.kind,
            Kind::Retry { .. } | Kind::Snoozed { .. } | Kind::Released | Kind::Interrupted { .. }
        )
    }

    /// Whether this outcome ends the job (its dependents are then settled).
    pub(crate) fn ends_job(&self) -> bool {
        matches!(
            self.kind,
            Kind::Completed { .. } | Kind::Failed { .. } | Kind::Expired { .. } | Kind::Settled
        )
    }

    /// Outcomes whose update is the same for every job of a claim can be
    /// written with one `updateMany` per claim token; this names the kind.
    fn shared_kind(&self) -> Option<u8> {
        match self.kind {
            Kind::Completed { .. } => Some(0),
            Kind::Released => Some(RELEASED),
            Kind::Snoozed { .. } => Some(SNOOZED),
            _ => None,
        }
    }

    /// The update document for this outcome (without the fencing filter).
    fn update(&self, worker: &str, at: DateTime) -> Document {
        let unset_lease = unset_lease();
        let history = |attempt: u32, error: &str| {
            push_error(
                doc! {"attempt": i64::from(attempt), "at": at, "error": error, "worker": worker},
            )
        };
        crate::schema::with_recount(match &self.kind {
            Kind::Completed { result } => completed_update(at, result.clone()),
            Kind::Retry {
                attempt,
                error,
                run_at,
            } => doc! {
                "$set": {fields::STATUS: Status::Pending, fields::RUN_AT: *run_at, fields::LAST_ERROR: error},
                "$unset": unset_lease,
                "$push": history(*attempt, error),
            },
            Kind::Failed { attempt, error } => doc! {
                "$set": {fields::STATUS: Status::Failed, fields::FAILED_AT: at, fields::LAST_ERROR: error},
                "$unset": unset_lease,
                "$push": history(*attempt, error),
            },
            Kind::Snoozed { delay, .. } => {
                let mut unset = unset_lease;
                unset.insert(fields::STARTED_AT, "");
                doc! {
                    "$set": {fields::STATUS: Status::Pending, fields::RUN_AT: crate::clock::shift_by(at, *delay)},
                    "$inc": {fields::ATTEMPTS: -1, fields::SNOOZES: 1},
                    "$unset": unset,
                }
            }
            Kind::Expired { expires_at } => {
                let mut unset = unset_lease;
                unset.insert(fields::STARTED_AT, "");
                doc! {
                    "$set": {
                        fields::STATUS: Status::Cancelled,
                        fields::CANCELLED_AT: at,
                        fields::EXPIRED: true,
                        fields::LAST_ERROR: crate::expiry::reason(*expires_at),
                    },
                    "$inc": {fields::ATTEMPTS: -1},
                    "$unset": unset,
                }
            }
            Kind::Released => {
                let mut unset = unset_lease;
                unset.insert(fields::STARTED_AT, "");
                doc! {
                    "$set": {fields::STATUS: Status::Pending},
                    "$inc": {fields::ATTEMPTS: -1},
                    "$unset": unset,
                }
            }
            Kind::Settled => doc! {},
            Kind::Interrupted { error } => doc! {
                "$set": {fields::STATUS: Status::Pending, fields::RUN_AT: at, fields::LAST_ERROR: error},
                "$unset": unset_lease,
                "$push": history(0, error),
            },
        })
    }
}

/// Cuts an error text to [`MAX_ERROR_BYTES`] on a character boundary.
pub(crate) fn bounded_error(text: String) -> String {
    crate::text::truncate(text, MAX_ERROR_BYTES, "…[truncated]")
}

/// Divides outcomes into shared writes (see [`Shared`]) and single
/// statements; also returns how many need no write at all (a handler's
/// transaction wrote them).
fn divide(outcomes: &[Outcome]) -> (Vec<Shared<'_>>, Vec<&Outcome>, u64) {
    let mut matched = 0;
    let mut groups: Vec<Shared> = Vec::new();
    let mut singles: Vec<&Outcome> = Vec::new();
    for outcome in outcomes {
        if outcome.is_settled() {
            // Written by the handler's transaction already.
            matched += 1;
            continue;
        }
        let Some(kind) = outcome.shared_kind() else {
            singles.push(outcome);
            continue;
        };
        let key = &outcome.key;
        let (result, bytes) = match &outcome.kind {
            Kind::Completed { result } => sized_result(result.clone()),
            _ => (Bson::Null, 1),
        };
        let delay = match outcome.kind {
            Kind::Snoozed { delay, .. } => delay,
            _ => std::time::Duration::ZERO,
        };
        let fits = |g: &Shared| {
            g.kind == kind
                && g.delay == delay
                && g.token == key.token
                && g.dependents == key.dependents
                && g.members.len() < SHARED_IDS
                && g.bytes + bytes <= SHARED_RESULT_BYTES
        };
        let index = groups.iter().rposition(fits).unwrap_or_else(|| {
            groups.push(Shared {
                kind,
                token: key.token,
                dependents: key.dependents,
                delay,
                members: Vec::new(),
                results: Vec::new(),
                bytes: 0,
            });
            groups.len() - 1
        });
        let group = &mut groups[index];
        group.members.push(outcome);
        group.results.push(result);
        group.bytes += bytes;
    }
    (groups, singles, matched)
}

/// Writes outcomes in one `update` command per [`MAX_STATEMENTS`]
/// statements; returns how many matched (the rest had lost their leases).
///
/// Outcomes of one claim that write the same change (completions, with or
/// without a result, and hand-backs) are one `multi` statement per claim
/// token, fenced by `{_id: {$in}, lease_token, status: "running"}`.
/// Completions that carry results use a pipeline that picks each job's own
/// ([`completed_pipeline`]), in chunks of at most [`SHARED_IDS`] jobs and
/// [`SHARED_RESULT_BYTES`] of results. The rest are one statement per job.
/// All of them go in one command: a flush is one round trip.
pub(crate) fn write(queue: &Queue, worker: &str, outcomes: &[Outcome]) -> Result<u64, Error> {
    let at = queue.clock().now();
    let (groups, singles, mut matched) = divide(outcomes);
    let mut statements: Vec<(Document, Vec<&Outcome>)> = groups
        .into_iter()
        .map(|group| (group.statement(worker, at), group.members))
        .collect();
    statements.extend(
        singles
            .into_iter()
            .map(|o| (o.statement(worker, at), vec![o])),
    );
    let mut one_by_one = Vec::new();
    matched += send(queue, &statements, &mut one_by_one)?;
    if !one_by_one.is_empty() {
        // A job too close to 16 MB stopped a shared statement; write those
        // jobs one statement each, where that job alone fails.
        let statements: Vec<(Document, Vec<&Outcome>)> = one_by_one
            .into_iter()
            .map(|o| (o.statement(worker, at), vec![o]))
            .collect();
        matched += send(queue, &statements, &mut Vec::new())?;
    }
    Ok(matched)
}

impl Shared<'_> {
    /// The `multi` update statement that writes every member's outcome.
    fn statement(&self, worker: &str, at: DateTime) -> Document {
        let ids: Vec<Bson> = self.members.iter().map(|o| o.key.id.clone()).collect();
        let mut filter = doc! {"_id": {"$in": &ids}, fields::LEASE_TOKEN: self.token, fields::STATUS: Status::Running};
        if self.kind == RELEASED || self.kind == SNOOZED {
            filter.insert(fields::CANCEL_REQUESTED, doc! {"$ne": true});
        } else if !self.dependents {
            // A completion: see `JobKey::dependents`.
            filter.insert(fields::HAS_DEPENDENTS, doc! {"$ne": true});
        }
        let update = if self.kind == RELEASED || self.kind == SNOOZED {
            Bson::Document(self.members[0].update(worker, at))
        } else if self.results.iter().all(|r| *r == Bson::Null) {
            Bson::Document(completed_update(at, None))
        } else {
            completed_pipeline(at, &ids, &self.results)
                .into_iter()
                .map(Bson::Document)
                .collect()
        };
        doc! {"q": filter, "u": update, "multi": true}
    }
}

/// Sends `statements` (each with the outcomes it writes) in commands of
/// [`MAX_STATEMENTS`]; returns how many jobs matched. The outcomes of a
/// shared statement refused as too large go to `one_by_one`.
fn send<'a>(
    queue: &Queue,
    statements: &[(Document, Vec<&'a Outcome>)],
    one_by_one: &mut Vec<&'a Outcome>,
) -> Result<u64, Error> {
    let mut matched = 0;
    for chunk in statements.chunks(MAX_STATEMENTS) {
        let updates: Vec<&Document> = chunk.iter().map(|(statement, _)| statement).collect();
        let reply = queue.run_write_command(
            doc! {
                "update": queue.collection().name(),
                "updates": updates,
                "ordered": false,
            },
            "update (outcomes)",
        )?;
        // A statement the server refuses for good (not a lost connection,
        // which fails the whole command and is retried) must not block the
        // completer: fail a job that outgrew 16 MB, log anything else and
        // leave that job to lease expiry.
        for WriteError {
            index,
            code,
            message,
        } in WriteError::all_in(&reply)
        {
            let code = i32::try_from(code).unwrap_or(0);
            let Some((statement, members)) = chunk.get(index) else {
                continue;
            };
            let shared = statement.get_bool("multi") == Ok(true);
            if is_too_large_code(code) && shared {
                one_by_one.extend(members.iter().copied());
            } else if is_too_large_code(code) {
                for outcome in members {
                    fail_oversized(queue, &outcome.key.id)?;
                    matched += 1;
                }
            } else {
                for outcome in members {
                    log::warn!(
                        "MongoDB refused the outcome of job {}: {message}; it runs again after its lease expires",
                        id_text(&outcome.key.id),
                    );
                }
            }
        }
        matched += count(reply.get("n"));
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(token: ObjectId, n: i32, result: Option<Bson>) -> Outcome {
        Outcome::new(
            JobKey {
                id: Bson::Int32(n),
                token,
                slot: None,
                group_slot: None,
                dependents: false,
            },
            Kind::Completed { result },
        )
    }

    #[test]
    fn completions_of_a_claim_share_statements_of_bounded_size() {
        let (one, two) = (ObjectId::new(), ObjectId::new());
        let mut outcomes: Vec<Outcome> = (0..70)
            .map(|n| completed(one, n, (n % 2 == 0).then(|| Bson::Int32(n))))
            .collect();
        outcomes.extend((70..75).map(|n| completed(two, n, None)));
        outcomes.push(Outcome::new(
            JobKey {
                id: Bson::Int32(99),
                token: one,
                slot: None,
                group_slot: None,
                dependents: false,
            },
            Kind::Failed {
                attempt: 1,
                error: "boom".into(),
            },
        ));
        let (groups, singles, settled) = divide(&outcomes);
        assert_eq!(settled, 0);
        assert_eq!(singles.len(), 1, "a failure is a statement of its own");
        let sizes: Vec<(ObjectId, usize)> =
            groups.iter().map(|g| (g.token, g.members.len())).collect();
        assert_eq!(sizes, [(one, 32), (one, 32), (one, 6), (two, 5)]);
        // Each member's result at its own position, null for none.
        assert_eq!(groups[0].results[0], Bson::Int32(0));
        assert_eq!(groups[0].results[1], Bson::Null);
    }

    #[test]
    fn big_results_start_a_new_statement() {
        let token = ObjectId::new();
        let big = Bson::String("x".repeat(200 * 1024));
        let outcomes: Vec<Outcome> = (0..12)
            .map(|n| completed(token, n, Some(big.clone())))
            .collect();
        let (groups, _, _) = divide(&outcomes);
        assert!(
            groups.len() >= 2,
            "12 × 200 KiB is over one statement's 2 MiB"
        );
        assert!(groups.iter().all(|g| g.bytes <= SHARED_RESULT_BYTES));
        assert_eq!(groups.iter().map(|g| g.members.len()).sum::<usize>(), 12);
    }

    #[test]
    fn the_shared_completion_picks_each_result_by_position_literally() {
        let ids = [Bson::String("$a".into()), Bson::Int32(2)];
        let results = [Bson::String("$status".into()), Bson::Null];
        let stages = completed_pipeline(DateTime::now(), &ids, &results);
        let set = stages
            .iter()
            .find_map(|stage| {
                stage
                    .get_document("$set")
                    .ok()
                    .filter(|s| s.contains_key(fields::RESULT))
            })
            .unwrap();
        let pick = set.get_document(fields::RESULT).unwrap();
        let args = pick.get_array("$arrayElemAt").unwrap();
        assert_eq!(
            args[0]
                .as_document()
                .unwrap()
                .get_array("$literal")
                .unwrap(),
            &results.to_vec()
        );
        let index = args[1]
            .as_document()
            .unwrap()
            .get_array("$indexOfArray")
            .unwrap();
        assert_eq!(
            index[0]
                .as_document()
                .unwrap()
                .get_array("$literal")
                .unwrap(),
            &ids.to_vec()
        );
        assert_eq!(index[1], Bson::String("$_id".into()));
    }
}
