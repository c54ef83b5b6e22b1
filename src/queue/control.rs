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
        self.concurrency.is_some() || self.rate.is_some()
    }

    pub(crate) fn from_document(document: &Document) -> Option<QueueControl> {
        let queue = document.get_str("_id").ok()?.to_string();
        let number = |key: &str| {
            document
                .get(key)
                .and_then(integer)
                .and_then(|n| u32::try_from(n).ok())
        };
        let rate = document.get_document("rate").ok().and_then(|rate| {
            Some(Rate {
                count: u32::try_from(rate.get("n").and_then(integer)?).ok()?,
                per: Duration::from_millis(
                    u64::try_from(rate.get("per_ms").and_then(integer)?).ok()?,
                ),
            })
        });
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
        })
    }
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
