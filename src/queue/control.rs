//! Fleet-wide controls of a named queue, kept in MongoDB so they hold
//! across hosts and restarts: pause, a global concurrency limit, a global
//! rate limit. One document per controlled queue in the companion
//! collection `<collection>_queues`:
//!
//! ```text
//! { _id: "emails",
//!   paused: true, reason: "provider outage", paused_at: <date>,
//!   paused_until: <date>, until_reason: "429 from the API",  // a handler's pause
//!   concurrency: 5, in_use: 3,                  // slots: limit, taken
//!   holders: { "<worker>": { n: 2, until: <date> } },
//!   rate: { n: 100, per_ms: 60000 },
//!   starts: [<date> × 100] }                    // the last n starts, oldest first
//! ```
//!
//! Workers read these twice a second (see `worker::control`); the limits
//! are enforced by conditional updates of this document, taken as part of
//! each claim (see `worker::limits`).

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::sync::Collection;

use super::Documents;
use super::Queue;
use crate::error::Error;
use crate::schema::integer;

/// A rate: at most `count` starts in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rate {
    /// Most starts per window.
    pub count: u32,
    /// The window.
    #[serde(serialize_with = "millis")]
    pub per: Duration,
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis() as u64)
}

impl Rate {
    /// Parses `N/DURATION`, e.g. `100/1m` or `5/1s`.
    pub fn parse(text: &str) -> Result<Rate, Error> {
        let bad = |why: &str| {
            Error::config(
                "--rate",
                format!("`{text}` {why}: write it as N/DURATION, e.g. 100/1m or 5/1s"),
            )
        };
        let (count, per) = text.split_once('/').ok_or_else(|| bad("has no `/`"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a whole number"))?;
        let per = crate::duration::parse_duration(per).map_err(|e| bad(&e))?;
        if count == 0 || count > 100_000 {
            return Err(bad("needs between 1 and 100,000 starts"));
        }
        if per < Duration::from_millis(100) {
            return Err(bad("needs a window of at least 100ms"));
        }
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            crate::duration::format_duration(self.per)
        )
    }
}

/// One queue's controls as stored.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueControl {
    /// The queue's name (`default` for jobs that name none).
    pub queue: String,
    /// Whether workers may start its jobs.
    pub paused: bool,
    /// Why it was paused.
    pub reason: Option<String>,
    /// When it was paused (server time, ms since the epoch).
    pub paused_at: Option<i64>,
    /// A handler paused it until then (server time, ms since the epoch):
    /// no worker starts its jobs before; it ends by itself.
    pub paused_until: Option<i64>,
    /// What the handler that paused it said.
    pub until_reason: Option<String>,
    /// At most this many of its jobs run at once, fleet-wide.
    pub concurrency: Option<u32>,
    /// Concurrency slots taken now (running or claimed jobs).
    pub in_use: u32,
    /// At most this many of its jobs start per window, fleet-wide.
    pub rate: Option<Rate>,
    /// Who holds slots: worker, count, and until when (server time, ms).
    pub holders: Vec<(String, u32, i64)>,
    /// At most this many jobs of each group of the queue run at once,
    /// fleet-wide (see [`crate::groups::limits`]).
    pub group_concurrency: Option<u32>,
    /// At most this many jobs of each group start per window, fleet-wide.
    pub group_rate: Option<Rate>,
    /// Groups whose limits differ from the queue's for every group.
    pub group_overrides: Vec<GroupOverride>,
    /// Each group's jobs start one at a time, in order (see
    /// [`crate::groups::ordered`]).
    pub ordered: bool,
    /// With `ordered`: a job that fails for good does not halt its group.
    pub continue_on_failure: bool,
}

/// One group's own limits (each replaces the queue's for every group).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupOverride {
    pub group: String,
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
    /// Turns in a row per round of fair share (1 when not set).
    pub weight: Option<u32>,
}

impl QueueControl {
    /// Whether workers may not start its jobs at `now_ms` (server time):
    /// an operator's pause, or a handler's that has not ended.
    pub fn is_paused_at(&self, now_ms: i64) -> bool {
        self.paused || self.paused_until.is_some_and(|until| until > now_ms)
    }

    /// A handler's pause that has not ended at `now_ms`: until when, and why.
    pub fn handler_pause_at(&self, now_ms: i64) -> Option<(i64, &str)> {
        self.paused_until
            .filter(|until| *until > now_ms)
            .map(|until| (until, self.until_reason.as_deref().unwrap_or("")))
    }

    /// Whether this queue has a limit (so claims must take slots or starts).
    pub fn is_limited(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some() || self.has_group_limits()
    }

    /// Whether some group of this queue has a concurrency limit.
    pub fn has_group_limits(&self) -> bool {
        self.group_concurrency.is_some()
            || self.group_rate.is_some()
            || !self.group_overrides.is_empty()
            || self.ordered
    }

    fn group_override(&self, group: &str) -> Option<&GroupOverride> {
        self.group_overrides.iter().find(|o| o.group == group)
    }

    /// The concurrency limit of `group` (its own, else the queue's limit
    /// for every group); `None`: not limited.
    pub fn group_limit(&self, group: &str) -> Option<u32> {
        if self.ordered {
            // One at a time, whatever else is set.
            return Some(1);
        }
        self.group_override(group)
            .and_then(|o| o.concurrency)
            .or(self.group_concurrency)
    }

    /// The rate limit of `group` (its own, else the queue's for every
    /// group); `None`: not limited.
    pub fn group_rate_of(&self, group: &str) -> Option<Rate> {
        self.group_override(group)
            .and_then(|o| o.rate)
            .or(self.group_rate)
    }

    /// How many turns in a row `group` takes per round of fair share.
    pub fn group_weight(&self, group: &str) -> u32 {
        self.group_override(group)
            .and_then(|o| o.weight)
            .unwrap_or(1)
    }

    /// Whether some group of this queue has a rate limit.
    pub fn has_group_rates(&self) -> bool {
        self.group_rate.is_some() || self.group_overrides.iter().any(|o| o.rate.is_some())
    }

    pub(crate) fn from_document(document: &Document) -> Option<QueueControl> {
        let queue = document.get_str("_id").ok()?.to_string();
        let number = |key: &str| {
            document
                .get(key)
                .and_then(integer)
                .and_then(|n| u32::try_from(n).ok())
        };
        let rate_in = |document: &Document, key: &str| {
            let rate = document.get_document(key).ok()?;
            Some(Rate {
                count: u32::try_from(rate.get("n").and_then(integer)?).ok()?,
                per: Duration::from_millis(
                    u64::try_from(rate.get("per_ms").and_then(integer)?).ok()?,
                ),
            })
        };
        let rate = rate_in(document, "rate");
        let holders = document
            .get_document("holders")
            .map(|holders| {
                holders
                    .iter()
                    .filter_map(|(key, value)| {
                        let value = value.as_document()?;
                        let n = u32::try_from(value.get("n").and_then(integer)?).ok()?;
                        let until = value.get_datetime("until").ok()?.timestamp_millis();
                        Some((holder_name(key), n, until))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(QueueControl {
            queue,
            paused: document.get_bool("paused").unwrap_or(false),
            reason: document.get_str("reason").ok().map(String::from),
            paused_at: document
                .get_datetime("paused_at")
                .ok()
                .map(|at| at.timestamp_millis()),
            paused_until: document
                .get_datetime("paused_until")
                .ok()
                .map(|at| at.timestamp_millis()),
            until_reason: document.get_str("until_reason").ok().map(String::from),
            concurrency: number("concurrency"),
            in_use: number("in_use").unwrap_or(0),
            rate,
            holders,
            group_concurrency: number("group_concurrency"),
            group_rate: rate_in(document, "group_rate"),
            ordered: document.get_bool("ordered").unwrap_or(false),
            continue_on_failure: document.get_bool("continue_on_failure").unwrap_or(false),
            group_overrides: document
                .get_array("group_limits")
                .map(|limits| {
                    limits
                        .iter()
                        .filter_map(|limit| {
                            let limit = limit.as_document()?;
                            Some(GroupOverride {
                                group: limit.get_str("group").ok()?.to_string(),
                                concurrency: limit
                                    .get("concurrency")
                                    .and_then(integer)
                                    .and_then(|n| u32::try_from(n).ok()),
                                rate: rate_in(limit, "rate"),
                                weight: limit
                                    .get("weight")
                                    .and_then(integer)
                                    .and_then(|n| u32::try_from(n).ok()),
                            })
                        })
                        .filter(|o| {
                            o.concurrency.is_some() || o.rate.is_some() || o.weight.is_some()
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

fn rate_document(rate: Rate) -> Document {
    doc! {"n": i64::from(rate.count), "per_ms": rate.per.as_millis() as i64}
}

/// A worker id as a field name: `.` and `$` have meanings in update paths,
/// so they (and `%`) are percent-escaped.
pub(crate) fn holder_key(worker: &str) -> String {
    worker
        .replace('%', "%25")
        .replace('.', "%2E")
        .replace('$', "%24")
}

fn holder_name(key: &str) -> String {
    crate::text::percent_decode(key)
}

impl Queue {
    /// The collection of queue controls, `<collection>_queues`.
    pub fn controls_collection(&self) -> Collection<Document> {
        self.database()
            .collection(&format!("{}_queues", self.collection().name()))
    }

    /// The controls of every controlled queue, by name.
    pub fn controls(&self) -> Result<Vec<QueueControl>, Error> {
        self.read_controls(doc! {})
    }

    /// The controls of the named queues (those that have any).
    pub fn controls_of(&self, queues: &[String]) -> Result<Vec<QueueControl>, Error> {
        self.read_controls(doc! {"_id": {"$in": queues}})
    }

    fn read_controls(&self, filter: Document) -> Result<Vec<QueueControl>, Error> {
        let documents = self
            .controls_collection()
            .find(filter)
            .sort(doc! {"_id": 1})
            .run()
            .documents(self, "find (queue controls)")?;
        let mut controls = Vec::new();
        for document in documents {
            controls.extend(QueueControl::from_document(&document));
        }
        Ok(controls)
    }

    /// Pauses `queue` fleet-wide: within about a second no worker starts a
    /// new job of it; running jobs finish; claimed, unstarted ones go back
    /// without counting an attempt. Survives worker restarts.
    pub fn pause(&self, queue: &str, reason: Option<&str>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let mut set = doc! {"paused": true, "paused_at": self.now()};
        match reason {
            Some(reason) => set.insert("reason", crate::text::prefix(reason, 500)),
            None => set.insert("reason", Bson::Null),
        };
        self.update_control(queue, doc! {"$set": set}, "update (pause)")
    }

    /// Pauses `queue` fleet-wide until `until` (server time), as a handler
    /// asks when a remote API says "back off": a later pause extends it, an
    /// earlier one changes nothing. It ends by itself; `resume` ends it
    /// early.
    pub fn pause_until(&self, queue: &str, until: DateTime, reason: &str) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        self.update_control(
            queue,
            doc! {
                "$max": {"paused_until": until},
                "$set": {"until_reason": crate::text::prefix(reason, 500)},
            },
            "update (pause until)",
        )
    }

    /// Lets workers start jobs of `queue` again.
    pub fn resume(&self, queue: &str) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        self.update_control(
            queue,
            doc! {"$set": {"paused": false}, "$unset": {"reason": "", "paused_at": "", "paused_until": "", "until_reason": ""}},
            "update (resume)",
        )
    }

    /// Limits how many jobs of `queue` run at once across all workers
    /// (`None` removes the limit). Slots in use are kept, so lowering the
    /// limit lets running jobs finish and starts new ones only below it.
    pub fn set_concurrency(&self, queue: &str, limit: Option<u32>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let update = match limit {
            Some(0) => {
                return Err(Error::config(
                    "--concurrency",
                    "must be at least 1 (pause the queue to stop it)",
                ))
            }
            Some(limit) => doc! {
                "$set": {"concurrency": i64::from(limit)},
                "$setOnInsert": {"in_use": 0_i64, "holders": {}},
            },
            None => doc! {"$unset": {"concurrency": ""}},
        };
        self.update_control(queue, update, "update (concurrency limit)")
    }

    /// Limits how many jobs of each group of `queue` run at once across
    /// all workers (`None` removes that limit; overrides stay).
    pub fn set_group_concurrency(&self, queue: &str, limit: Option<u32>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let update = match limit {
            Some(0) => {
                return Err(Error::config(
                    "--group-concurrency",
                    "must be at least 1 (pause the queue to stop it)",
                ))
            }
            Some(limit) => doc! {"$set": {"group_concurrency": i64::from(limit)}},
            None => doc! {"$unset": {"group_concurrency": ""}},
        };
        self.update_control(queue, update, "update (group concurrency limit)")
    }

    /// Makes each group of `queue` run its jobs one at a time, in order
    /// (`None`: not ordered); `Some(true)`: a job that fails for good does
    /// not halt its group.
    pub fn set_ordered(&self, queue: &str, continue_on_failure: Option<bool>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let update = if let Some(go_on) = continue_on_failure {
            doc! {"$set": {"ordered": true, "continue_on_failure": go_on}}
        } else {
            doc! {"$unset": {"ordered": "", "continue_on_failure": ""}}
        };
        self.update_control(queue, update, "update (ordered groups)")
    }

    /// Limits how many jobs of each group of `queue` start in any window
    /// (`None` removes that limit; overrides stay).
    pub fn set_group_rate(&self, queue: &str, rate: Option<Rate>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let update = if let Some(rate) = rate {
            doc! {"$set": {"group_rate": rate_document(rate)}}
        } else {
            doc! {"$unset": {"group_rate": ""}}
        };
        self.update_control(queue, update, "update (group rate limit)")
    }

    /// Sets one group's own concurrency limit, rate and fair-share
    /// weight (each `None`: the queue's for every group applies), in place
    /// of what it had.
    pub fn set_group_limit(
        &self,
        queue: &str,
        group: &str,
        concurrency: Option<u32>,
        rate: Option<Rate>,
        weight: Option<u32>,
    ) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        super::filters::validate_group_name(group)?;
        if concurrency == Some(0) {
            return Err(Error::config(
                "--concurrency",
                "must be at least 1 (pause the queue to stop it)",
            ));
        }
        self.update_control(
            queue,
            doc! {"$pull": {"group_limits": {"group": group}}},
            "update (group limit)",
        )?;
        if concurrency.is_some() || rate.is_some() || weight.is_some() {
            let mut limit = doc! {"group": group};
            if let Some(n) = concurrency {
                limit.insert("concurrency", i64::from(n));
            }
            if let Some(rate) = rate {
                limit.insert("rate", rate_document(rate));
            }
            if let Some(weight) = weight {
                limit.insert("weight", i64::from(weight));
            }
            self.update_control(
                queue,
                doc! {"$push": {"group_limits": limit}},
                "update (group limit)",
            )?;
        }
        Ok(())
    }

    /// Limits how many jobs of `queue` start in any window (`None` removes
    /// the limit). Setting a rate starts its history afresh.
    pub fn set_rate(&self, queue: &str, rate: Option<Rate>) -> Result<(), Error> {
        super::validate_queue_name(queue)?;
        let update = if let Some(rate) = rate {
            let epoch = vec![Bson::DateTime(DateTime::from_millis(0)); rate.count as usize];
            doc! {"$set": {
                "rate": {"n": i64::from(rate.count), "per_ms": rate.per.as_millis() as i64},
                "starts": epoch,
            }}
        } else {
            doc! {"$unset": {"rate": "", "starts": ""}}
        };
        self.update_control(queue, update, "update (rate limit)")
    }

    fn update_control(
        &self,
        queue: &str,
        update: Document,
        operation: &'static str,
    ) -> Result<(), Error> {
        self.controls_collection()
            .update_one(doc! {"_id": queue}, update)
            .upsert(true)
            .run()
            .map(|_| ())
            .map_err(|e| self.db_error(operation, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_or_say_how_to_write_them() {
        assert_eq!(
            Rate::parse("100/1m").unwrap(),
            Rate {
                count: 100,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(Rate::parse("5/1s").unwrap().to_string(), "5/1.0s");
        for bad in ["100", "x/1s", "0/1s", "5/10ms", "5/1", "-1/1s"] {
            let message = Rate::parse(bad).unwrap_err().to_string();
            assert!(message.starts_with("--rate"), "{bad}: {message}");
        }
    }

    #[test]
    fn worker_ids_are_safe_field_names() {
        assert_eq!(holder_key("db1.example.org:42"), "db1%2Eexample%2Eorg:42");
        assert_eq!(holder_name(&holder_key("a.b$c%d")), "a.b$c%d");
        assert!(!holder_key("$x.y").contains(['.', '$']));
    }
}
