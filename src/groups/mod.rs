//! Groups within a queue (issue 32): the customer, tenant or account a job
//! is for, its `group` field (a string; a job without one is in the
//! queue's default group).
//!
//! What operators see of them: a queue's busiest groups (`mongoq stats
//! --groups QUEUE`, the dashboard's groups page) and how many groups have
//! jobs waiting (`/metrics`). Both read the partial index `mongoq_groups`
//! (`{status, queue, group, priority, run_at, _id}`, only jobs whose
//! `group` is a string), so a queue whose jobs carry no group pays nothing
//! for it, neither a key per job nor a read; and the default group's
//! numbers are the queue's counts (see [`crate::counts`]) less the named
//! groups'.
//!
//! When its jobs run: within a priority, starts go round-robin among the
//! groups with eligible jobs ([`fair`]); at most a group's concurrency
//! limit of them run at once, and at most its rate start per window,
//! fleet-wide ([`limits`]); in an ordered queue, one at a time in the
//! group's order ([`ordered`]).

use std::collections::BTreeMap;

pub(crate) mod fair;
pub(crate) mod gate;
pub mod limits;
pub mod ordered;

use mongodb::action::Action;
use mongodb::bson::doc;
use serde::Serialize;

use crate::error::Error;
use crate::queue::filters::queue_condition;
use crate::queue::indexes::{hinted, GROUPS_INDEX};
use crate::queue::Queue;
use crate::schema::{count, fields, Status};

/// One group's jobs waiting and running.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupLoad {
    /// The group's name; `None`: the queue's default group (jobs without
    /// one).
    pub group: Option<String>,
    /// Pending jobs (due now or scheduled later).
    pub pending: u64,
    /// Running jobs.
    pub running: u64,
    /// The group's concurrency limit, fleet-wide (`None`: none; see
    /// [`limits`]).
    pub limit: Option<u32>,
}

/// A queue's busiest groups.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Busiest {
    /// The named groups with pending or running jobs, most pending first
    /// (then most running, then by name), at most the limit asked for.
    pub groups: Vec<GroupLoad>,
    /// How many named groups have pending or running jobs.
    pub active_groups: u64,
    /// The queue's default group (jobs without a group).
    pub default_group: GroupLoad,
    /// In an ordered queue, the groups halted by a job that failed for
    /// good: (group, that job's `_id` as extended JSON text).
    pub halted: Vec<(String, String)>,
    /// The queue's counts left out jobs not counted yet (see
    /// [`crate::Stats::not_counted_yet`]): the default group's numbers
    /// may be short by up to this many.
    pub not_counted_yet: Option<u64>,
}

impl Queue {
    /// The busiest groups of `queue` (at most `limit`), and its default
    /// group's load.
    pub fn busiest_groups(&self, queue: &str, limit: usize) -> Result<Busiest, Error> {
        crate::queue::validate_queue_name(queue)?;
        let loads = self
            .named_group_loads(Some(queue))?
            .remove(queue)
            .unwrap_or_default();
        let (by_queue, not_counted_yet) = self.counts_by_queue()?;
        let all = by_queue.get(queue);
        let of = |status: Status| {
            all.and_then(|s| s.get(status.as_str()))
                .copied()
                .unwrap_or(0)
        };
        let default_group = GroupLoad {
            group: None,
            pending: of(Status::Pending).saturating_sub(loads.iter().map(|l| l.pending).sum()),
            running: of(Status::Running).saturating_sub(loads.iter().map(|l| l.running).sum()),
            limit: None,
        };
        let control = self.controls_of(&[queue.to_string()])?.into_iter().next();
        Ok(Busiest {
            default_group,
            not_counted_yet,
            ..self.ranked(queue, loads, limit, control.as_ref())?
        })
    }

    /// Every queue's busiest named groups at a glance (the dashboard's
    /// Queues page): at most `per_queue` of each, their limits and the
    /// halted ones, from one `aggregate` over the groups' index (and one
    /// per ordered queue for its halted groups). Queues without named
    /// groups running or pending are not in it.
    pub fn groups_at_a_glance(&self, per_queue: usize) -> Result<BTreeMap<String, Busiest>, Error> {
        let loads = self.named_group_loads(None)?;
        let controls = self.controls()?;
        let mut glance = BTreeMap::new();
        for (queue, loads) in loads {
            let control = controls.iter().find(|c| c.queue == queue);
            let busiest = self.ranked(&queue, loads, per_queue, control)?;
            glance.insert(queue, busiest);
        }
        Ok(glance)
    }

    /// Each queue's named groups with pending or running jobs (of `queue`
    /// only, if given), by one `aggregate` on the groups' index.
    fn named_group_loads(
        &self,
        queue: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<GroupLoad>>, Error> {
        let mut matched = doc! {
            fields::STATUS: {"$in": [Status::Pending.as_str(), Status::Running.as_str()]},
        };
        if let Some(queue) = queue {
            matched.insert(fields::QUEUE, queue_condition(&[queue.to_string()]));
        }
        matched.insert(fields::GROUP, doc! {"$type": "string"});
        let pipeline = vec![
            doc! {"$match": matched},
            doc! {"$group": {
                "_id": {
                    "q": {"$ifNull": [format!("${}", fields::QUEUE), fields::DEFAULT_QUEUE]},
                    "g": format!("${}", fields::GROUP),
                    "s": format!("${}", fields::STATUS),
                },
                "n": {"$sum": 1},
            }},
        ];
        let rows = self.on_groups_index(pipeline, "aggregate (groups)")?;
        let mut loads: BTreeMap<(String, String), GroupLoad> = BTreeMap::new();
        for row in rows {
            let id = row.get_document("_id").cloned().unwrap_or_default();
            let (Ok(queue), Ok(group)) = (id.get_str("q"), id.get_str("g")) else {
                continue;
            };
            let load = loads
                .entry((queue.to_string(), group.to_string()))
                .or_insert_with(|| GroupLoad {
                    group: Some(group.to_string()),
                    ..GroupLoad::default()
                });
            let n = count(row.get("n"));
            match id.get_str("s") {
                Ok("pending") => load.pending += n,
                Ok("running") => load.running += n,
                _ => {}
            }
        }
        let mut by_queue: BTreeMap<String, Vec<GroupLoad>> = BTreeMap::new();
        for ((queue, _), load) in loads {
            by_queue.entry(queue).or_default().push(load);
        }
        Ok(by_queue)
    }

    /// The busiest `limit` of a queue's groups (most pending first, then
    /// most running, then by name) with their limits, and its halted
    /// groups if it is ordered (the default group left empty).
    fn ranked(
        &self,
        queue: &str,
        mut groups: Vec<GroupLoad>,
        limit: usize,
        control: Option<&crate::queue::QueueControl>,
    ) -> Result<Busiest, Error> {
        let active_groups = groups.len() as u64;
        groups.sort_by(|a, b| {
            b.pending
                .cmp(&a.pending)
                .then(b.running.cmp(&a.running))
                .then(a.group.cmp(&b.group))
        });
        groups.truncate(limit);
        let mut halted = Vec::new();
        if let Some(control) = control {
            for load in &mut groups {
                load.limit = load.group.as_deref().and_then(|g| control.group_limit(g));
            }
            if control.ordered && !control.continue_on_failure {
                halted = ordered::halted(self, queue)?
                    .into_iter()
                    .map(|(group, id)| (group, crate::schema::id_text(&id)))
                    .collect();
            }
        }
        Ok(Busiest {
            groups,
            active_groups,
            halted,
            ..Busiest::default()
        })
    }

    /// How many named groups have pending jobs, over all queues (for
    /// `/metrics`: a count, not a label per group).
    pub fn groups_with_backlog(&self) -> Result<u64, Error> {
        let pipeline = vec![
            doc! {"$match": {
                fields::STATUS: Status::Pending,
                fields::GROUP: {"$type": "string"},
            }},
            doc! {"$group": {"_id": {"q": format!("${}", fields::QUEUE), "g": format!("${}", fields::GROUP)}}},
            doc! {"$count": "n"},
        ];
        let rows = self.on_groups_index(pipeline, "aggregate (groups with a backlog)")?;
        Ok(rows.first().map_or(0, |row| count(row.get("n"))))
    }
}

impl Queue {
    /// Runs `pipeline` (whose `$match` names a string `group`) on
    /// `mongoq_groups`, hinted: a planner that took the claim index
    /// instead would read every pending job to find the grouped ones.
    fn on_groups_index(
        &self,
        pipeline: Vec<mongodb::bson::Document>,
        what: &'static str,
    ) -> Result<Vec<mongodb::bson::Document>, Error> {
        let jobs = self.collection();
        hinted(GROUPS_INDEX, |hint| {
            jobs.aggregate(pipeline.clone())
                .optional(hint, mongodb::action::Aggregate::hint)
                .run()
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        })
        .map_err(|e| self.db_error(what, &e))
    }
}

/// A group's name as operators see it: its name, or `(default group)`.
pub fn group_label(group: Option<&str>) -> String {
    group.map_or_else(|| "(default group)".to_string(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_group_is_labelled_as_such() {
        assert_eq!(group_label(None), "(default group)");
        assert_eq!(group_label(Some("acme")), "acme");
    }
}
