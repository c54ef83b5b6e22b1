//! A drain's last look ([`Fetcher::drained`]): the fetcher of a
//! `--drain` worker that found nothing to claim stops only when no job of
//! its queues is running anywhere and none is eligible, the jobs of halted
//! ordered groups left out.

use mongodb::bson::{doc, Document};

use super::fetcher::Fetcher;
use crate::error::Error;
use crate::queue::filters::{eligible_in, queue_condition};
use crate::schema::{fields, Status};
use crate::shutdown::Shutdown;
use crate::worker::outage::retry_until_stopped;

impl Fetcher {
    /// True when this worker holds nothing and no job anywhere is running.
    pub(super) fn drained(&self, shutdown: &Shutdown) -> bool {
        if self.leases.held() > 0 {
            return false;
        }
        // A retry this worker wrote is its own unfinished work: wait until
        // it is due (the look below then finds it eligible).
        let retry_due = self
            .counters
            .own_retry_due_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.queue.clock().passed().timestamp_millis() < retry_due {
            return false;
        }
        // An empty claim alone does not prove it: the claim may have lost
        // its whole window to other workers, or failed a job it could not
        // take. Two exact index seeks (one job each), cheaper than one `$or`;
        // running first, so a job that goes back to pending in between is
        // seen by the second (and between them, for an ordered queue, a
        // read of its halted groups, whose jobs the second leaves out).
        let queues = &self.config.queues;
        let running =
            doc! {fields::STATUS: Status::Running, fields::QUEUE: queue_condition(queues)};
        if !self.none_left(shutdown, running) {
            return false;
        }
        let mut eligible = eligible_in(queues, self.queue.clock().passed());
        // The jobs of a halted ordered group wait for an operator, not for
        // this drain: they are left pending.
        let Some(halted) =
            retry_until_stopped(shutdown, "reading halted groups", || self.halted_groups())
        else {
            return false;
        };
        let groups: usize = halted.iter().map(|(_, groups)| groups.len()).sum();
        if groups > 0 {
            let halted: Vec<_> = halted
                .into_iter()
                .map(|(name, groups)| {
                    doc! {fields::QUEUE: queue_condition(&[name]), fields::GROUP: {"$in": groups}}
                })
                .collect();
            eligible.insert("$nor", halted);
        }
        if !self.none_left(shutdown, eligible) {
            return false;
        }
        if groups > 0 {
            log::info!(
                "--drain: {groups} ordered group(s) halted by a failed job keep their pending jobs (`mongoq stats --groups` lists them; retry-failed or cancel lets a group go on)"
            );
        }
        true
    }

    /// Whether no job matches `filter` (`false` also when stopping).
    fn none_left(&self, shutdown: &Shutdown, filter: Document) -> bool {
        let found = retry_until_stopped(shutdown, "looking for jobs left", || {
            self.queue
                .collection()
                .find_one(filter.clone())
                .projection(doc! {"_id": 1})
                .run()
                .map_err(|e| self.queue.db_error("find (jobs left)", &e))
        });
        matches!(found, Some(None))
    }

    /// The halted groups of each drained ordered queue (an operator's read
    /// of the queue's grouped jobs; only at a drain's last look).
    fn halted_groups(&self) -> Result<Vec<(String, Vec<String>)>, Error> {
        let mut halted = Vec::new();
        for control in self.controls.all() {
            if !control.ordered || control.continue_on_failure {
                continue;
            }
            if !self.config.queues.contains(&control.queue) {
                continue;
            }
            let groups = crate::groups::ordered::halted(&self.queue, &control.queue)?;
            if !groups.is_empty() {
                halted.push((
                    control.queue.clone(),
                    groups.into_iter().map(|(group, _)| group).collect(),
                ));
            }
        }
        Ok(halted)
    }
}
