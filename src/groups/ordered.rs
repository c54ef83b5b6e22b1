//! Ordered groups (`mongoq limit QUEUE --ordered`): within each group of
//! the queue, jobs start one at a time, in order, and the next starts only
//! after the previous ended.
//!
//! **The order** is the group's jobs by `priority` (highest first), then
//! enqueue order (`_id`). A job's `run_at` does not move it: a delayed job,
//! and a job waiting for its retry, hold back the jobs after it until they
//! ran (so a failed attempt's retry keeps its place).
//!
//! **How.** An ordered queue has a group concurrency of 1 (the slots of
//! [`super::limits`]): one worker at a time may claim a group's job. Holding
//! the slot, it claims a candidate only if it is its group's *head*: the
//! first, in that order, of the group's jobs that are pending, running or
//! (unless the queue says `--continue-on-failure`) failed. One `aggregate`
//! per claim finds the heads of every group of the batch ([`heads`]). So:
//!
//! - a job still running (or whose worker died and whose lease has not run
//!   out: it is `running` until rescued) is the head: the group waits;
//! - a job waiting for its retry is pending and first: it runs next, when
//!   due, and nothing after it runs before;
//! - a job that failed for good is the head: the group is **halted** until
//!   `retry-failed` makes it pending (it runs next) or `cancel` ends it;
//!   `stats --groups` says which job halts which group ([`halted`]).
//!
//! The heads read sorts the matching jobs of the batch's groups (the
//! `mongoq_groups` index holds them, in another order), so it costs what
//! those groups hold: fine for groups of hundreds or thousands of jobs.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};

use crate::error::Error;
use crate::queue::filters::queue_condition;
use crate::queue::Queue;
use crate::schema::{fields, Status};

/// A group's head: its first job in order, that job's status and its
/// priority (none counts as 0, as in a window's keys).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Head {
    pub(crate) id: Bson,
    pub(crate) status: String,
    pub(crate) rank: Bson,
}

impl Head {
    /// Whether `key` (a job of this head's group) comes before the head in
    /// the group's order: then its job is no longer pending, running or
    /// failed (it ended), and a window listing it is out of date.
    pub(crate) fn is_after(&self, key: &crate::fleet::window::Key) -> bool {
        group_order((&key.rank, &key.id), (&self.rank, &self.id)).is_lt()
    }
}

/// The statuses that hold a group's place: running and pending jobs, and
/// failed ones unless a failure does not halt the group.
fn holding(continue_on_failure: bool) -> Vec<&'static str> {
    let mut statuses = vec![Status::Running.as_str(), Status::Pending.as_str()];
    if !continue_on_failure {
        statuses.push(Status::Failed.as_str());
    }
    statuses
}

/// The heads read: `groups` is a condition on `group` that holds its
/// `$type: "string"`, the partial filter of `mongoq_groups`, so that a
/// planner may use that index (MongoDB uses a partial index only for a
/// query that contains its filter). Not hinted: on the test server the
/// index made this read slower than its scan (a fleet drained 10,000
/// ordered groups of 5 in 119 s hinted, 66–71 s not; one run each).
fn heads_pipeline(queue: &str, groups: Bson, continue_on_failure: bool) -> Vec<Document> {
    vec![
        doc! {"$match": {
            fields::STATUS: {"$in": holding(continue_on_failure)},
            fields::QUEUE: queue_condition(&[queue.to_string()]),
            fields::GROUP: groups,
        }},
        doc! {"$sort": {fields::GROUP: 1, fields::PRIORITY: -1, "_id": 1}},
        doc! {"$group": {
            "_id": format!("${}", fields::GROUP),
            "head": {"$first": "$_id"},
            "status": {"$first": format!("${}", fields::STATUS)},
            "rank": {"$first": format!("${}", fields::PRIORITY)},
        }},
    ]
}

/// Runs a heads pipeline (see [`heads_pipeline`]): each group's head.
fn read_heads(
    queue: &Queue,
    pipeline: Vec<Document>,
    what: &'static str,
) -> Result<HashMap<String, Head>, Error> {
    let rows = queue
        .collection()
        .aggregate(pipeline)
        .run()
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| queue.db_error(what, &e))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some((
                row.get_str("_id").ok()?.to_string(),
                Head {
                    id: row.get("head")?.clone(),
                    status: row.get_str("status").ok()?.to_string(),
                    rank: row
                        .get("rank")
                        .filter(|rank| !matches!(rank, Bson::Null))
                        .cloned()
                        .unwrap_or(Bson::Int32(0)),
                },
            ))
        })
        .collect())
}

/// The heads of `groups` of `queue` (one `aggregate`).
pub(crate) fn heads(
    queue: &Queue,
    name: &str,
    groups: &[String],
    continue_on_failure: bool,
) -> Result<HashMap<String, Head>, Error> {
    if groups.is_empty() {
        return Ok(HashMap::new());
    }
    read_heads(
        queue,
        heads_pipeline(
            name,
            doc! {"$type": "string", "$in": groups}.into(),
            continue_on_failure,
        ),
        "aggregate (heads of ordered groups)",
    )
}

/// The halted groups of an ordered queue: each group whose head failed for
/// good, and that job's `_id` (an operator's read: it sorts the queue's
/// grouped jobs that hold a place).
pub fn halted(queue: &Queue, name: &str) -> Result<Vec<(String, Bson)>, Error> {
    let heads = read_heads(
        queue,
        heads_pipeline(name, doc! {"$type": "string"}.into(), false),
        "aggregate (halted groups)",
    )?;
    let mut halted: Vec<(String, Bson)> = heads
        .into_iter()
        .filter(|(_, head)| head.status == Status::Failed.as_str())
        .map(|(group, head)| (group, head.id))
        .collect();
    halted.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(halted)
}

/// Why a pending job of an ordered group has not started: the job of its
/// group that comes first (`None`: it is the head itself, or its queue is
/// not ordered), and that job's status (`failed`: the group is halted).
pub fn ahead_of(queue: &Queue, job: &Document) -> Result<Option<(Bson, String)>, Error> {
    let (Ok(group), Some(id)) = (job.get_str(fields::GROUP), job.get("_id")) else {
        return Ok(None);
    };
    let name = job.get_str(fields::QUEUE).unwrap_or(fields::DEFAULT_QUEUE);
    let Some(control) = queue.controls_of(&[name.to_string()])?.into_iter().next() else {
        return Ok(None);
    };
    if !control.ordered {
        return Ok(None);
    }
    let heads = heads(
        queue,
        name,
        &[group.to_string()],
        control.continue_on_failure,
    )?;
    Ok(heads
        .get(group)
        .filter(|head| head.id != *id)
        .map(|head| (head.id.clone(), head.status.clone())))
}

/// `keys` (a window) with each group's keys in the group's order (rank,
/// then `_id`: a job's `run_at` does not move it), each in the place one
/// of its group's keys had, so the groups still take turns as they did.
/// A window is read in queue order, where a retried or rescued job comes
/// after the jobs due before it; in an ordered group it is the head.
pub(crate) fn in_group_order(
    keys: Vec<crate::fleet::window::Key>,
) -> Vec<crate::fleet::window::Key> {
    if keys.iter().all(|k| k.group.is_none()) {
        return keys;
    }
    let mut by_group: HashMap<Option<String>, Vec<usize>> = HashMap::new();
    for (at, key) in keys.iter().enumerate() {
        by_group.entry(key.group.clone()).or_default().push(at);
    }
    let mut slots: Vec<Option<crate::fleet::window::Key>> = keys.into_iter().map(Some).collect();
    for (group, places) in by_group {
        if group.is_none() || places.len() < 2 {
            continue;
        }
        let mut own: Vec<crate::fleet::window::Key> =
            places.iter().filter_map(|&at| slots[at].take()).collect();
        own.sort_by(|a, b| group_order((&a.rank, &a.id), (&b.rank, &b.id)));
        for (at, key) in places.into_iter().zip(own) {
            slots[at] = Some(key);
        }
    }
    slots.into_iter().flatten().collect()
}

/// A group's order of two jobs given as (rank, `_id`): higher ranks first,
/// then `_id`s.
fn group_order(a: (&Bson, &Bson), b: (&Bson, &Bson)) -> std::cmp::Ordering {
    rank_first(a.0, b.0).then_with(|| id_order(a.1, b.1))
}

/// Higher ranks first (numbers; anything else before them).
fn rank_first(a: &Bson, b: &Bson) -> std::cmp::Ordering {
    let number = |rank: &Bson| crate::schema::integer(rank).map(|n| -n);
    match (number(a), number(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// `_id`s in the server's order for ObjectIds (their bytes), else by
/// their extended JSON.
fn id_order(a: &Bson, b: &Bson) -> std::cmp::Ordering {
    match (a, b) {
        (Bson::ObjectId(a), Bson::ObjectId(b)) => a.bytes().cmp(&b.bytes()),
        _ => a
            .clone()
            .into_relaxed_extjson()
            .to_string()
            .cmp(&b.clone().into_relaxed_extjson().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::window::Key;

    #[test]
    fn a_window_puts_each_group_in_its_order_and_keeps_the_turns() {
        let key = |id: i64, group: &str| Key {
            id: Bson::Int64(id),
            rank: Bson::Int64(0),
            group: Some(group.to_string()),
        };
        // Read in queue order: job 1 of `a` was retried, so it came last.
        let window = vec![
            key(2, "a"),
            key(10, "b"),
            key(3, "a"),
            key(11, "b"),
            key(1, "a"),
        ];
        let ordered: Vec<i64> = in_group_order(window)
            .iter()
            .map(|k| k.id.as_i64().unwrap())
            .collect();
        assert_eq!(ordered, vec![1, 10, 2, 11, 3]);
    }

    #[test]
    fn a_key_before_its_groups_head_is_out_of_date() {
        let head = Head {
            id: Bson::Int64(5),
            status: "pending".into(),
            rank: Bson::Int32(0),
        };
        let key = |id: i64, rank: i32| Key {
            id: Bson::Int64(id),
            rank: Bson::Int32(rank),
            group: Some("a".into()),
        };
        // Enqueued before the head, same priority: it ended.
        assert!(head.is_after(&key(4, 0)));
        // The head itself, and jobs behind it, are not.
        assert!(!head.is_after(&key(5, 0)));
        assert!(!head.is_after(&key(6, 0)));
        // A higher priority comes first whatever its `_id`; a lower after.
        assert!(head.is_after(&key(9, 1)));
        assert!(!head.is_after(&key(1, -1)));
    }
}
