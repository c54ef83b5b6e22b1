//! Operators' commands on the queue: show a job, cancel it, retry failed
//! jobs, purge finished ones. Each is one or a few documented operations
//! whose filters repeat the status they act on, so they are safe to run
//! while workers are busy on the same collection.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use super::enqueue::is_duplicate_key;
use super::Queue;
use crate::error::Error;
use crate::schema::{fields, Status};

/// The `_id` condition for an id typed by a person. Producers may choose
/// their own `_id`s, so besides the 24-hex form of an `ObjectId` this takes
/// a number (matching it as a number or as that text), any extended JSON
/// value (`{"k": 1}`, `null`, `{"$oid": "…"}`, `"quoted text"`), and
/// otherwise the text itself. A JSON value is matched with `$eq`, so text
/// such as `{"$gt": 0}` is an exact value, never an operator.
pub fn id_condition(text: &str) -> Bson {
    let text = text.trim();
    if let Ok(oid) = ObjectId::parse_str(text) {
        return Bson::ObjectId(oid);
    }
    if let Ok(number) = text.parse::<i64>() {
        return Bson::Document(doc! {"$in": [text, number]});
    }
    let parsed = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|json| Bson::try_from(json).ok());
    match parsed {
        Some(Bson::Double(number)) => Bson::Document(doc! {"$in": [text, number]}),
        Some(Bson::String(quoted)) => Bson::String(quoted),
        Some(value) => Bson::Document(doc! {"$eq": value}),
        None => Bson::String(text.to_string()),
    }
}

/// The `_id` value an id typed by a person names, for lists of ids such as
/// `--after`: the 24-hex form of an `ObjectId`, a number, any extended JSON
/// value (`{"$oid": "…"}`, `"quoted text"`), else the text itself.
pub fn id_value(text: &str) -> Bson {
    let text = text.trim();
    if let Ok(oid) = ObjectId::parse_str(text) {
        return Bson::ObjectId(oid);
    }
    if let Ok(number) = text.parse::<i64>() {
        return Bson::Int64(number);
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|json| Bson::try_from(json).ok())
        .unwrap_or_else(|| Bson::String(text.to_string()))
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The job was pending or waiting; it is `cancelled` and will not run.
    Cancelled {
        /// Waiting jobs cancelled with it because they waited on it
        /// (through every level; see [`crate::flow`]).
        dependents: u64,
    },
    /// The job is running; its worker drops it at the next lease extension.
    Requested {
        /// The worker holding it.
        owner: String,
    },
    /// The job had already finished (or has a status workers leave alone).
    Finished {
        /// Its status.
        status: String,
    },
}

/// Which failed jobs `retry_failed` puts back.
#[derive(Debug, Clone)]
pub enum RetrySelection {
    /// One job by id.
    Id(String),
    /// Every failed job.
    All,
    /// Failed jobs that failed more than this long ago.
    OlderThan(Duration),
    /// One job by an `_id` condition (a value, or `{$eq: value}`).
    Exact(Bson),
}

/// What `retry_failed` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// Jobs put back to `pending`.
    pub retried: u64,
    /// Jobs left `failed` because a pending or running job has their
    /// `unique_key` now.
    pub skipped_duplicates: u64,
}

impl Queue {
    /// The whole document of one job.
    pub fn find_job(&self, id: &str) -> Result<Document, Error> {
        self.collection()
            .find_one(doc! {"_id": id_condition(id)})
            .run()
            .map_err(|e| self.db_error("find", &e))?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Puts failed jobs back to `pending`, eligible now, with their attempts
    /// reset (so each gets its full `max_attempts` again). Their error
    /// history is kept.
    pub fn retry_failed(&self, selection: &RetrySelection) -> Result<Retried, Error> {
        let mut filter = doc! {fields::STATUS: Status::Failed};
        match selection {
            RetrySelection::Id(id) => {
                filter.insert("_id", id_condition(id));
            }
            RetrySelection::Exact(id) => {
                filter.insert("_id", id.clone());
            }
            RetrySelection::All => {}
            RetrySelection::OlderThan(age) => {
                filter.insert(fields::FAILED_AT, doc! {"$lt": self.now_ago(*age)});
            }
        }
        let update = doc! {
            "$set": {fields::STATUS: Status::Pending, fields::RUN_AT: self.now(), fields::ATTEMPTS: 0},
            "$unset": {fields::FAILED_AT: ""},
            "$rename": crate::schema::recount(),
        };
        // Jobs without a unique_key go back in one write. Jobs with one may
        // collide with a newer job holding the key; those go one by one so
        // a collision skips only that job.
        let mut plain = filter.clone();
        plain.insert(fields::UNIQUE_KEY, doc! {"$exists": false});
        let mut outcome = Retried {
            retried: self
                .collection()
                .update_many(plain, update.clone())
                .run()
                .map_err(|e| self.db_error("update (retry failed)", &e))?
                .modified_count,
            skipped_duplicates: 0,
        };
        let mut keyed = filter;
        keyed.insert(fields::UNIQUE_KEY, doc! {"$exists": true});
        let ids = self.find_ids(keyed, "find (retry failed)")?;
        for id in ids {
            match self
                .collection()
                .update_one(
                    doc! {"_id": id, fields::STATUS: Status::Failed},
                    update.clone(),
                )
                .run()
            {
                Ok(result) => outcome.retried += result.modified_count,
                Err(error) if is_duplicate_key(&error) => outcome.skipped_duplicates += 1,
                Err(error) => return Err(self.db_error("update (retry failed)", &error)),
            }
        }
        Ok(outcome)
    }

    /// How many jobs have `status` now.
    pub fn count_status(&self, status: Status) -> Result<u64, Error> {
        self.collection()
            .count_documents(doc! {fields::STATUS: status})
            .run()
            .map_err(|e| self.db_error("count", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_object_ids_numbers_or_text() {
        let oid = ObjectId::new();
        assert_eq!(id_condition(&oid.to_hex()), Bson::ObjectId(oid));
        assert_eq!(
            id_condition(" 42 "),
            Bson::Document(doc! {"$in": ["42", 42_i64]})
        );
        assert_eq!(id_condition("job-7"), Bson::String("job-7".into()));
    }

    #[test]
    fn ids_may_be_any_extended_json_value_matched_exactly() {
        assert_eq!(
            id_condition(r#"{"k": 1}"#),
            Bson::Document(doc! {"$eq": {"k": 1}})
        );
        assert_eq!(
            id_condition("null"),
            Bson::Document(doc! {"$eq": Bson::Null})
        );
        assert_eq!(
            id_condition("1.5"),
            Bson::Document(doc! {"$in": ["1.5", 1.5]})
        );
        assert_eq!(id_condition(r#""x y""#), Bson::String("x y".into()));
        let oid = ObjectId::new();
        let json = format!(r#"{{"$oid": "{}"}}"#, oid.to_hex());
        assert_eq!(id_condition(&json), Bson::Document(doc! {"$eq": oid}));
        // An operator typed as an id stays a value.
        assert_eq!(
            id_condition(r#"{"$gt": 0}"#),
            Bson::Document(doc! {"$eq": {"$gt": 0}})
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases()))]

            /// Whatever a person types as an id, it becomes a condition
            /// without panicking, and never a bare operator document.
            #[test]
            fn any_typed_id_is_a_condition(text in "\\PC{0,40}|\\{\"[$a-z]{0,5}\": ?[0-9a-z\"{}.-]{0,12}\\}") {
                if let Bson::Document(condition) = id_condition(&text) {
                    let key = condition.keys().next().map(String::as_str);
                    prop_assert!(matches!(key, Some("$eq" | "$in")), "{condition}");
                }
            }
        }
    }
}
