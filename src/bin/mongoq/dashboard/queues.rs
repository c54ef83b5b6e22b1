//! The Queues page: every queue with its jobs counted by status, its state
//! (running or paused, and why), its limits and its busiest groups (see
//! [`super::glance`]), with pause and resume; and a queue's groups page.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use mongoq::schema::Status;
use mongoq::text::percent_encode;
use mongoq::Error;

use super::glance::Seen;
use super::html::{esc, not_counted_notice, page};
use super::Dashboard;
use crate::http::{Request, Response};

/// How many groups the groups page lists.
const GROUPS_SHOWN: usize = 50;

/// The statuses the table has a column for, in a job's order of life.
const COLUMNS: [Status; 6] = Status::ALL;

impl Dashboard {
    pub(super) fn queues(&self, request: &Request) -> Result<Response, Error> {
        let controls = self.queue.controls()?;
        let (counts, not_counted_yet) = self.queue.counts_by_queue()?;
        let now = self.queue.now().timestamp_millis();
        let mut body = String::new();
        if let Some(done) = request.param("done") {
            let _ = write!(body, "<p class=notice>{}</p>", esc(done));
        }
        body.push_str("<div id=live>");
        body.push_str(&not_counted_notice(not_counted_yet));
        let names: BTreeSet<&str> = counts
            .keys()
            .map(String::as_str)
            .chain(controls.iter().map(|c| c.queue.as_str()))
            .collect();
        if names.is_empty() {
            body.push_str("<p>No job is queued, and no queue is paused or limited.</p>");
        } else {
            body.push_str("<table id=queues><tr><th>queue</th>");
            for status in COLUMNS {
                let _ = write!(body, "<th>{status}</th>");
            }
            body.push_str(
                "<th>state</th><th>concurrency (in use / limit)</th><th>rate</th><th>busiest groups</th><th></th></tr>",
            );
            let glance = self.glance.seen(&self.queue);
            for name in names {
                let control = controls.iter().find(|c| c.queue == name);
                let _ = write!(
                    body,
                    "<tr><td>{} <a class=history href=\"/history?queue={}\">history</a> <a class=history href=\"/groups?queue={}\">groups</a></td>",
                    esc(name),
                    percent_encode(name),
                    percent_encode(name)
                );
                for status in COLUMNS {
                    let n = counts
                        .get(name)
                        .and_then(|by_status| by_status.get(status.as_str()))
                        .copied()
                        .unwrap_or(0);
                    let _ = write!(
                        body,
                        "<td class=num><a href=\"/jobs?status={status}&amp;queue={}\">{n}</a></td>",
                        percent_encode(name)
                    );
                }
                let paused = control.is_some_and(|c| c.paused);
                let handler_pause = control.and_then(|c| c.handler_pause_at(now));
                let state = if let (false, Some((until, reason))) = (paused, handler_pause) {
                    format!(
                        "<b class=err>paused by a handler</b> until <span class=until>{}</span> ({})",
                        esc(&mongoq::bson::DateTime::from_millis(until)
                            .try_to_rfc3339_string()
                            .unwrap_or_default()),
                        esc(reason)
                    )
                } else if paused {
                    format!(
                        "<b class=err>paused</b>{}",
                        control
                            .and_then(|c| c.reason.as_ref())
                            .map(|r| format!(" ({})", esc(r)))
                            .unwrap_or_default()
                    )
                } else {
                    "running".to_string()
                };
                let concurrency = control
                    .and_then(|c| c.concurrency.map(|limit| (c.in_use, limit)))
                    .map_or_else(
                        || "–".to_string(),
                        |(in_use, limit)| format!("{in_use} / {limit}"),
                    );
                let rate = control
                    .and_then(|c| c.rate)
                    .map_or_else(|| "–".to_string(), |r| esc(&r.to_string()));
                let action = if self.config.read_only {
                    String::new()
                } else {
                    self.queue_button(name, if paused { "resume" } else { "pause" })
                };
                let groups = busiest_cell(name, glance.as_ref());
                let _ = write!(
                    body,
                    "<td>{state}</td><td>{concurrency}</td><td>{rate}</td><td class=groups>{groups}</td><td>{action}</td></tr>"
                );
            }
            body.push_str("</table>");
        }
        body.push_str("</div>");
        if !self.config.read_only {
            let _ = write!(
                body,
                "<h2>Pause a queue</h2><form method=post action=/queue-action class=filters><input type=hidden name=csrf value=\"{}\"><input type=hidden name=action value=pause><input name=queue placeholder=\"queue (default)\" required><input name=reason placeholder=reason><button>Pause</button></form>",
                esc(&self.csrf)
            );
        }
        body.push_str("<p>Limits are set with <code>mongoq limit QUEUE --concurrency N --rate N/DURATION</code>.</p>");
        Ok(Response::html(200, page("Queues", "/queues", &body, true)))
    }

    /// A queue's busiest groups, each linked to its jobs.
    pub(super) fn groups(&self, request: &Request) -> Result<Response, Error> {
        let queue = request
            .param("queue")
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .unwrap_or(mongoq::schema::fields::DEFAULT_QUEUE)
            .to_string();
        if mongoq::queue::validate_queue_name(&queue).is_err() {
            return Ok(Response::html(
                400,
                page(
                    "Groups",
                    "/queues",
                    "<p>Give ?queue= a queue's name.</p>",
                    false,
                ),
            ));
        }
        let busiest = self.queue.busiest_groups(&queue, GROUPS_SHOWN)?;
        let mut body = String::from("<div id=live>");
        let _ = write!(
            body,
            "<p>queue <b>{}</b>: <b id=active-groups>{}</b> groups with pending or running jobs{}</p>",
            esc(&queue),
            busiest.active_groups,
            if busiest.active_groups > busiest.groups.len() as u64 {
                format!(" (the busiest {} by pending jobs)", busiest.groups.len())
            } else {
                String::new()
            }
        );
        for (group, job) in &busiest.halted {
            let _ = write!(
                body,
                "<p class=notice id=halted>Group <b>{}</b> is halted: job <a href=\"/job?id={}\">{}</a> failed for good. Retry it (retry-failed) or cancel it to let the group go on.</p>",
                esc(group),
                percent_encode(job),
                esc(job)
            );
        }
        body.push_str(
            "<table id=groups><tr><th>group</th><th>pending</th><th>running</th><th>limit</th></tr>",
        );
        for load in busiest
            .groups
            .iter()
            .chain(std::iter::once(&busiest.default_group))
        {
            let jobs = |status: &str| {
                format!(
                    "/jobs?status={status}&amp;queue={}{}",
                    percent_encode(&queue),
                    load.group
                        .as_deref()
                        .map(|g| format!("&amp;group={}", percent_encode(g)))
                        .unwrap_or_default()
                )
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=num><a href=\"{}\">{}</a></td><td class=num><a href=\"{}\">{}</a></td><td class=num>{}</td></tr>",
                esc(&mongoq::groups::group_label(load.group.as_deref())),
                jobs("pending"),
                load.pending,
                jobs("running"),
                load.running,
                load.limit.map_or_else(|| "–".to_string(), |n| n.to_string())
            );
        }
        body.push_str("</table>");
        if let Some(left_out) = busiest.not_counted_yet {
            let _ = write!(
                body,
                "<p class=notice>The default group's numbers may be short: {}</p>",
                esc(&crate::commands::stats::not_counted_note(left_out))
            );
        }
        body.push_str("</div>");
        Ok(Response::html(200, page("Groups", "/queues", &body, true)))
    }

    fn queue_button(&self, queue: &str, action: &str) -> String {
        format!(
            "<form method=post action=/queue-action class=inline><input type=hidden name=csrf value=\"{}\"><input type=hidden name=queue value=\"{}\"><input type=hidden name=action value={action}><button>{}</button></form>",
            esc(&self.csrf),
            esc(queue),
            if action == "pause" { "Pause" } else { "Resume" }
        )
    }
}

/// A queue's busiest groups in its row of the Queues page: each linked to
/// its pending jobs, with its load and limit; how many more there are and
/// how many are halted, linked to the queue's groups page.
fn busiest_cell(queue: &str, glance: Option<&Seen>) -> String {
    let groups_page = format!("/groups?queue={}", percent_encode(queue));
    let busiest = match glance {
        None => return "<span class=muted>counting…</span>".to_string(),
        Some(Err(error)) => {
            return format!("<span class=err title=\"{}\">unread</span>", esc(error))
        }
        Some(Ok(glance)) => match glance.get(queue) {
            Some(busiest) => busiest,
            None => return "–".to_string(),
        },
    };
    let mut cell = String::new();
    for load in &busiest.groups {
        let group = load.group.as_deref().unwrap_or_default();
        let _ = write!(
            cell,
            "<a href=\"/jobs?status=pending&amp;queue={}&amp;group={}\">{}</a> {} pending, {} running{}<br>",
            percent_encode(queue),
            percent_encode(group),
            esc(group),
            load.pending,
            load.running,
            load.limit
                .map(|n| format!(" (limit {n})"))
                .unwrap_or_default()
        );
    }
    let more = busiest
        .active_groups
        .saturating_sub(busiest.groups.len() as u64);
    if more > 0 {
        let _ = write!(cell, "<a href=\"{groups_page}\">{more} more</a>");
    }
    if !busiest.halted.is_empty() {
        let _ = write!(
            cell,
            " <a class=err href=\"{groups_page}\">{} halted</a>",
            busiest.halted.len()
        );
    }
    cell
}
