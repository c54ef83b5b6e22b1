//! The dashboard's pages: overview with the per-minute chart, workers,
//! cursor-paged job lists with filters, one job, and the retry-all
//! confirmation. Every value from the database goes through [`esc`].

use std::fmt::Write as _;

use mongodb::bson::{doc, Bson, Document};
use mongoq::history::History;
use mongoq::schema::{fields, integer, Status};
use mongoq::text::{cut_chars, percent_encode, prefix};
use mongoq::Error;

use super::actions::read_only;
use super::html::{chart, esc, fmt_time, job_link, not_counted_notice, page, regex_escape};
use super::{exactly, id_param, parse_id, Dashboard, ERROR_CHARS, PAGE, SHOW_BYTES};
use crate::http::{Request, Response};

impl Dashboard {
    pub(super) fn overview(&self) -> Result<Response, Error> {
        let stats = self.queue.stats()?;
        let mut body = String::from("<div id=live><section class=cards>");
        for (status, count) in &stats.counts {
            let _ = write!(
                body,
                "<a class=card href=\"/jobs?status={}\"><b>{count}</b><span>{}</span></a>",
                percent_encode(status),
                esc(status)
            );
        }
        let _ = write!(
            body,
            "</section><p>Eligible now: <b id=eligible>{}</b>{} · scheduled later: <b>{}</b> · oldest eligible job waited: <b>{}</b></p>",
            stats.eligible,
            if stats.paused > 0 {
                format!(" · held by paused queues: <b id=paused>{}</b>", stats.paused)
            } else {
                String::new()
            },
            stats.scheduled,
            stats.oldest_eligible_age_seconds.map_or_else(
                || "none waiting".to_string(),
                |s| mongoq::duration::format_duration(std::time::Duration::from_secs_f64(s))
            )
        );
        body.push_str(&not_counted_notice(stats.not_counted_yet));
        let series = self.throughput()?;
        body.push_str("<h2>Completed and failed per minute, last hour <a href=\"/history\">(history)</a></h2>");
        body.push_str(&chart(&series));
        body.push_str("</div>");
        Ok(Response::html(200, page("Overview", "/", &body, true)))
    }

    /// Per minute of the last hour: (completed, failed), oldest first,
    /// from the queue's history (see [`mongoq::history`]), so the chart
    /// survives the jobs' retention.
    pub(super) fn throughput(&self) -> Result<Vec<(u64, u64)>, Error> {
        let minute = std::time::Duration::from_secs(60);
        let (from, to) = mongoq::history::window(
            self.queue.now(),
            std::time::Duration::from_secs(3600),
            minute,
        );
        Ok(History::new(&self.queue)
            .read(from, to, minute, None)?
            .into_iter()
            .map(|point| (point.tally.completed, point.tally.failed))
            .collect())
    }

    pub(super) fn workers(&self) -> Result<Response, Error> {
        let pipeline = vec![
            doc! {"$match": {fields::STATUS: Status::Running}},
            doc! {"$group": {
                "_id": format!("${}", fields::LEASE_OWNER),
                "jobs": {"$sum": 1},
                "oldest": {"$min": format!("${}", fields::STARTED_AT)},
                "expires": {"$min": format!("${}", fields::LEASE_UNTIL)},
            }},
            doc! {"$sort": {"_id": 1}},
        ];
        let groups: Vec<Document> = self
            .queue
            .collection()
            .aggregate(pipeline)
            .run()
            .and_then(Iterator::collect)
            .map_err(|e| self.queue.db_error("aggregate (workers)", &e))?;
        let mut body = String::from("<div id=live><h2>Registered workers</h2>");
        let registered = self.queue.workers()?;
        if registered.is_empty() {
            body.push_str("<p>No worker is registered.</p>");
        } else {
            let now = self.queue.now().timestamp_millis();
            body.push_str("<table><tr><th>worker</th><th>host</th><th>pid</th><th>threads</th><th>queues</th><th>running</th><th>held</th><th>completed</th><th>failed</th><th>last seen</th><th>state</th></tr>");
            for w in &registered {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}s ago</td><td>{}</td></tr>",
                    esc(&w.id),
                    esc(&w.host),
                    w.pid,
                    w.threads,
                    esc(&w.queues.join(", ")),
                    w.running,
                    w.held,
                    w.completed,
                    w.failed,
                    (now - w.last_seen).max(0) as f64 / 1000.0,
                    if w.late { "<b class=err>late</b>" } else { "live" }
                );
            }
            body.push_str("</table>");
        }
        body.push_str("<h2>Lease holders</h2>");
        if groups.is_empty() {
            body.push_str("<p>No worker holds a lease now.</p>");
        } else {
            body.push_str("<table><tr><th>worker (lease_owner)</th><th>jobs held</th><th>oldest lease since</th><th>next lease expiry</th></tr>");
            for group in &groups {
                let owner = match group.get("_id") {
                    Some(Bson::String(owner)) => owner.clone(),
                    _ => "(none)".into(),
                };
                let _ = write!(
                    body,
                    "<tr><td><a href=\"/jobs?status=running&amp;owner={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    percent_encode(&owner),
                    esc(&owner),
                    group.get("jobs").and_then(integer).unwrap_or(0),
                    esc(&fmt_time(group.get("oldest"))),
                    esc(&fmt_time(group.get("expires")))
                );
            }
            body.push_str("</table>");
        }
        body.push_str("</div>");
        Ok(Response::html(
            200,
            page("Workers", "/workers", &body, true),
        ))
    }

    pub(super) fn jobs(&self, request: &Request) -> Result<Response, Error> {
        let status = request
            .param("status")
            .unwrap_or(Status::Pending.as_str())
            .to_string();
        let queue = request.param("queue").unwrap_or("").trim().to_string();
        let group = request.param("group").unwrap_or("").trim().to_string();
        let text = request.param("q").unwrap_or("").trim().to_string();
        let owner = request.param("owner").unwrap_or("").to_string();
        let mut filter = doc! {fields::STATUS: &status};
        if !queue.is_empty() {
            filter.insert(
                fields::QUEUE,
                mongoq::queue::filters::queue_condition(std::slice::from_ref(&queue)),
            );
        }
        if !group.is_empty() {
            filter.insert(fields::GROUP, &group);
        }
        if !text.is_empty() {
            filter.insert(
                fields::LAST_ERROR,
                doc! {"$regex": regex_escape(&text), "$options": "i"},
            );
        }
        if !owner.is_empty() {
            filter.insert(fields::LEASE_OWNER, &owner);
        }
        if let Some(before) = request.param("before").and_then(parse_id) {
            filter.insert("_id", doc! {"$lt": before});
        }
        let rows: Vec<Document> = self
            .queue
            .collection()
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(PAGE + 1)
            .projection(doc! {
                fields::DATA: 0, fields::RESULT: 0, fields::ERRORS: 0,
            })
            .run()
            .and_then(Iterator::collect)
            .map_err(|e| self.queue.db_error("find (jobs)", &e))?;
        let more = rows.len() as i64 > PAGE;
        let mut body = String::new();
        let _ = write!(
            body,
            "<form class=filters method=get action=/jobs><label>status <select name=status>{}</select></label> <label>queue <input name=queue value=\"{}\" placeholder=default></label> <label>group <input name=group value=\"{}\" placeholder=any></label> <label>error contains <input name=q value=\"{}\"></label> <button>Filter</button></form>",
            ["pending", "running", "completed", "failed", "cancelled"]
                .iter()
                .fold(String::new(), |mut options, s| {
                    let selected = if *s == status { " selected" } else { "" };
                    let _ = write!(options, "<option{selected}>{s}</option>");
                    options
                }),
            esc(&queue),
            esc(&group),
            esc(&text)
        );
        if Status::parse(&status) == Some(Status::Failed) && !self.config.read_only {
            body.push_str("<p><a class=button href=/retry-failed>Retry all failed…</a></p>");
        }
        let running = Status::parse(&status) == Some(Status::Running);
        jobs_table(&mut body, &rows, running);
        if rows.is_empty() {
            body.push_str("<p>No jobs.</p>");
        }
        if more {
            if let Some(last) = rows.get(PAGE as usize - 1).and_then(|d| d.get("_id")) {
                let _ = write!(
                    body,
                    "<p><a class=button href=\"/jobs?status={}&amp;queue={}&amp;group={}&amp;q={}&amp;owner={}&amp;before={}\">Older →</a></p>",
                    percent_encode(&status),
                    percent_encode(&queue),
                    percent_encode(&group),
                    percent_encode(&text),
                    percent_encode(&owner),
                    percent_encode(&id_param(last))
                );
            }
        }
        Ok(Response::html(
            200,
            page(&format!("Jobs: {status}"), "/jobs", &body, false),
        ))
    }

    pub(super) fn job(&self, request: &Request) -> Result<Response, Error> {
        let Some(id) = request.param("id").and_then(parse_id) else {
            return Ok(Response::html(
                400,
                page(
                    "Job",
                    "/jobs",
                    "<p>Give ?id= as the job's _id in extended JSON, e.g. {\"$oid\": \"…\"}.</p>",
                    false,
                ),
            ));
        };
        let Some(job) = self
            .queue
            .collection()
            .find_one(doc! {"_id": exactly(&id)})
            .run()
            .map_err(|e| self.queue.db_error("find", &e))?
        else {
            return Ok(Response::html(
                404,
                page(
                    "Job",
                    "/jobs",
                    "<p>No job has this id (it may have been deleted).</p>",
                    false,
                ),
            ));
        };
        let status = job.get_str(fields::STATUS).unwrap_or("").to_string();
        let mut body = String::new();
        if let Some(done) = request.param("done") {
            let _ = write!(body, "<p class=notice>{}</p>", esc(done));
        }
        let _ = write!(
            body,
            "<p>status <b>{}</b> · attempts {} · created {} · started {} · finished {}</p>",
            esc(&status),
            job.get(fields::ATTEMPTS).and_then(integer).unwrap_or(0),
            esc(&match &id {
                Bson::ObjectId(oid) => fmt_time(Some(&Bson::DateTime(oid.timestamp()))),
                _ => String::new(),
            }),
            esc(&fmt_time(job.get(fields::STARTED_AT))),
            esc(&fmt_time(
                job.get(fields::COMPLETED_AT)
                    .or_else(|| job.get(fields::FAILED_AT))
                    .or_else(|| job.get(fields::CANCELLED_AT))
            ))
        );
        body.push_str(&queue_line(&job, &status));
        let progress = progress_text(&job, false);
        if !progress.is_empty() {
            let _ = write!(body, "<p id=progress>progress {}</p>", esc(&progress));
        }
        body.push_str(&self.flow_links(&job)?);
        if !self.config.read_only {
            let mut actions = Vec::new();
            let known = Status::parse(&status);
            if known == Some(Status::Failed) {
                actions.push(("retry", "Retry"));
            }
            if known.is_some_and(|s| s.is_active() || s == Status::Waiting) {
                actions.push(("cancel", "Cancel"));
            }
            if known.is_some_and(|s| Status::FINISHED.contains(&s)) {
                actions.push(("delete", "Delete"));
            }
            for (action, label) in actions {
                let _ = write!(
                    body,
                    "<form class=inline method=post action=/action><input type=hidden name=csrf value=\"{}\"><input type=hidden name=action value={action}><input type=hidden name=id value=\"{}\"><button>{label}</button></form> ",
                    esc(&self.csrf),
                    esc(&id_param(&id))
                );
            }
        }
        let json = Bson::Document(job).into_relaxed_extjson();
        let mut pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
        let total = pretty.len();
        if total > SHOW_BYTES {
            let end = prefix(&pretty, SHOW_BYTES).len();
            pretty.truncate(end);
            let _ = write!(
                pretty,
                "\n… truncated: {total} bytes in all; `mongoq show` prints everything"
            );
        }
        let _ = write!(body, "<pre id=document>{}</pre>", esc(&pretty));
        Ok(Response::html(
            200,
            page(
                &format!("Job {}", mongoq::schema::id_text(&id)),
                "/jobs",
                &body,
                false,
            ),
        ))
    }

    pub(super) fn confirm_retry_all(&self) -> Result<Response, Error> {
        if self.config.read_only {
            return Ok(read_only());
        }
        let count = self.queue.count_status(Status::Failed)?;
        let body = format!(
            "<p>Put <b>{count}</b> failed jobs back to pending, with fresh attempts? (Jobs that fail meanwhile are retried too.)</p><form method=post action=/retry-failed><input type=hidden name=csrf value=\"{}\"><button>Retry {count} jobs</button></form> <a href=\"/jobs?status=failed\">Cancel</a>",
            esc(&self.csrf)
        );
        Ok(Response::html(
            200,
            page("Retry all failed", "/jobs", &body, false),
        ))
    }
}

/// A job's `progress` for a person: "40% · resizing 3/8" (with the attempt
/// it belongs to when it is not the current one); empty when it has none.
fn progress_text(job: &Document, short: bool) -> String {
    let Ok(progress) = job.get_document(fields::PROGRESS) else {
        return String::new();
    };
    let Some(fraction) = progress.get("fraction").and_then(Bson::as_f64) else {
        return String::new();
    };
    let mut text = format!("{:.0}%", fraction * 100.0);
    if let Ok(note) = progress.get_str("note") {
        let note = if short {
            cut_chars(note, 40)
        } else {
            note.to_string()
        };
        text.push_str(" · ");
        text.push_str(&note);
    }
    let attempt = progress.get("attempt").and_then(integer);
    if attempt.is_some() && attempt != job.get(fields::ATTEMPTS).and_then(integer) {
        let _ = write!(text, " (attempt {})", attempt.unwrap_or(0));
    }
    if !short {
        let _ = write!(text, " · reported {}", fmt_time(progress.get("at")));
    }
    text
}

/// The job page's line naming the job's queue and group (linked to the
/// group's jobs of its status).
fn queue_line(job: &Document, status: &str) -> String {
    let queue_name = match job.get(fields::QUEUE) {
        Some(Bson::String(q)) => q.clone(),
        _ => fields::DEFAULT_QUEUE.into(),
    };
    let mut line = format!("<p>queue <b>{}</b>", esc(&queue_name));
    if let Some(Bson::String(group)) = job.get(fields::GROUP) {
        let _ = write!(
            line,
            " · group <a id=group href=\"/jobs?status={}&amp;queue={}&amp;group={}\"><b>{}</b></a>",
            percent_encode(status),
            percent_encode(&queue_name),
            percent_encode(group),
            esc(group)
        );
    }
    line.push_str("</p>");
    line
}

/// A job's group as a list shows it: its name, or `—` for the queue's
/// default group (and for a `group` that is not a string, which the worker
/// fails with the reason).
fn group_text(job: &Document) -> String {
    match job.get(fields::GROUP) {
        Some(Bson::String(group)) => group.clone(),
        _ => "—".into(),
    }
}

/// The jobs page's table; running jobs get a progress column.
fn jobs_table(body: &mut String, rows: &[Document], running: bool) {
    body.push_str(if running {
        "<table><tr><th>id</th><th>queue</th><th>group</th><th>priority</th><th>attempts</th><th>progress</th><th>run_at</th><th>last_error</th></tr>"
    } else {
        "<table><tr><th>id</th><th>queue</th><th>group</th><th>priority</th><th>attempts</th><th>run_at</th><th>last_error</th></tr>"
    });
    for row in rows.iter().take(PAGE as usize) {
        let id = row.get("_id").cloned().unwrap_or(Bson::Null);
        let queue_name = match row.get(fields::QUEUE) {
            Some(Bson::String(q)) => q.clone(),
            _ => fields::DEFAULT_QUEUE.into(),
        };
        let progress = if running {
            format!("<td class=progress>{}</td>", esc(&progress_text(row, true)))
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{progress}<td>{}</td><td class=err>{}</td></tr>",
            esc(&job_link(&id)),
            esc(&mongoq::schema::id_text(&id)),
            esc(&queue_name),
            esc(&group_text(row)),
            row.get(fields::PRIORITY).and_then(integer).unwrap_or(0),
            row.get(fields::ATTEMPTS).and_then(integer).unwrap_or(0),
            esc(&fmt_time(row.get(fields::RUN_AT))),
            esc(&cut_chars(row.get_str(fields::LAST_ERROR).unwrap_or(""), ERROR_CHARS))
        );
    }
    body.push_str("</table>");
}
