//! The Schedules page: each schedule's timing, next and last tick, counts,
//! its last job's status (linked), and pause/resume (shown only, in
//! read-only mode).

use std::fmt::Write as _;

use mongodb::bson::Bson;
use mongoq::schedule::Schedules;
use mongoq::text::percent_encode;
use mongoq::Error;

use super::html::{esc, fmt_time, job_link, page};
use super::Dashboard;
use crate::http::{Request, Response};

impl Dashboard {
    pub(super) fn schedules(&self, request: &Request) -> Result<Response, Error> {
        let all = Schedules::new(&self.queue).list()?;
        let mut body = String::new();
        if let Some(done) = request.param("done") {
            let _ = write!(body, "<p class=notice>{}</p>", esc(done));
        }
        if all.is_empty() {
            body.push_str("<p>No schedules. Add one with <code>mongoq schedule add NAME --every 5m</code> or <code>--cron \"0 2 * * *\" --tz Europe/Berlin</code>.</p>");
            return Ok(Response::html(
                200,
                page("Schedules", "/schedules", &body, true),
            ));
        }
        body.push_str("<div id=live><table><tr><th>schedule</th><th>timing</th><th>queue</th><th>next tick</th><th>last tick</th><th>fired</th><th>skipped</th><th>last job</th><th>state</th></tr>");
        for s in &all {
            let last_job = s.last_job.as_ref().map_or_else(
                || "–".to_string(),
                |(id, status)| format!("<a href=\"{}\">{}</a>", esc(&job_link(id)), esc(status)),
            );
            let state = if s.paused { "paused" } else { "active" };
            let action = if self.config.read_only {
                String::new()
            } else {
                format!(
                    "<form method=post action=/schedule-action class=inline><input type=hidden name=csrf value=\"{}\"><input type=hidden name=name value=\"{}\"><input type=hidden name=action value={}><button>{}</button></form>",
                    esc(&self.csrf),
                    esc(&s.name),
                    if s.paused { "resume" } else { "pause" },
                    if s.paused { "Resume" } else { "Pause" }
                )
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td><td><a href=\"/jobs?status=pending&amp;queue={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{last_job}</td><td>{state} {action}</td></tr>",
                esc(&s.name),
                esc(&s.describe),
                percent_encode(&s.queue),
                esc(&s.queue),
                esc(&if s.paused { "paused".to_string() } else { fmt_time(s.next_tick.map(Bson::DateTime).as_ref()) }),
                esc(&fmt_time(s.last_tick.map(Bson::DateTime).as_ref())),
                s.fired,
                s.skipped,
            );
        }
        body.push_str("</table></div>");
        Ok(Response::html(
            200,
            page("Schedules", "/schedules", &body, true),
        ))
    }

    /// Pause or resume a schedule (the caller checked the CSRF token).
    pub(super) fn schedule_action(&self, name: &str, action: &str) -> Result<Response, Error> {
        let schedules = Schedules::new(&self.queue);
        let done = match action {
            "pause" | "resume" => {
                if schedules.set_paused(name, action == "pause")? {
                    format!("schedule {name} {action}d")
                } else {
                    format!("no schedule is named {name}")
                }
            }
            _ => return Ok(Response::text(400, "unknown action\n")),
        };
        Ok(Response::redirect(&format!(
            "/schedules?done={}",
            percent_encode(&done)
        )))
    }
}
