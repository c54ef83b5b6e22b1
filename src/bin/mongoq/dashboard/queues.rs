//! The Queues page: every queue with its jobs counted by status, its state
//! (running or paused, and why) and its limits, with pause and resume.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use mongoq::schema::Status;
use mongoq::text::percent_encode;
use mongoq::Error;

use super::html::{esc, page};
use super::Dashboard;
use crate::http::{Request, Response};

/// The statuses the table has a column for, in a job's order of life.
const COLUMNS: [Status; 6] = Status::ALL;

impl Dashboard {
    pub(super) fn queues(&self, request: &Request) -> Result<Response, Error> {
        let controls = self.queue.controls()?;
        let counts = self.queue.counts_by_queue()?;
        let now = self.queue.now().timestamp_millis();
        let mut body = String::new();
        if let Some(done) = request.param("done") {
            let _ = write!(body, "<p class=notice>{}</p>", esc(done));
        }
        body.push_str("<div id=live>");
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
                "<th>state</th><th>concurrency (in use / limit)</th><th>rate</th><th></th></tr>",
            );
            for name in names {
                let control = controls.iter().find(|c| c.queue == name);
                let _ = write!(
                    body,
                    "<tr><td>{} <a class=history href=\"/history?queue={}\">history</a></td>",
                    esc(name),
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
                let _ = write!(
                    body,
                    "<td>{state}</td><td>{concurrency}</td><td>{rate}</td><td>{action}</td></tr>"
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

    fn queue_button(&self, queue: &str, action: &str) -> String {
        format!(
            "<form method=post action=/queue-action class=inline><input type=hidden name=csrf value=\"{}\"><input type=hidden name=queue value=\"{}\"><input type=hidden name=action value={action}><button>{}</button></form>",
            esc(&self.csrf),
            esc(queue),
            if action == "pause" { "Pause" } else { "Resume" }
        )
    }
}
