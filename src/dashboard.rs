//! The web dashboard: server-rendered HTML over [`crate::http`], a little
//! vanilla JavaScript to refresh the live parts, no build chain.
//!
//! Safety rules, applied everywhere: every value from the database goes
//! through [`esc`]; every action is a POST carrying the CSRF token of this
//! process (a page from another origin cannot read it); `--read-only` hides
//! actions and refuses them; with an auth token, every request needs it
//! (bearer header, or the cookie `/login` sets).

use std::fmt::Write as _;
use std::sync::Arc;

use mongodb::bson::{doc, Bson, DateTime, Document};

use crate::admin::{Cancel, RetrySelection};
use crate::error::Error;
use crate::http::{percent_encode, value_of, Handler, Request, Response};
use crate::job::fields;
use crate::queue::Queue;

/// Jobs per page of a list.
const PAGE: i64 = 50;
/// A job's document is shown up to this many bytes of JSON.
const SHOW_BYTES: usize = 64 * 1024;
/// A list's `last_error` column is cut at this many characters.
const ERROR_CHARS: usize = 160;
/// The cookie that carries the auth token in a browser.
const TOKEN_COOKIE: &str = "mongoq_token";

/// How the dashboard runs.
#[derive(Debug, Clone, Default)]
pub struct DashboardConfig {
    /// Hide and refuse every action.
    pub read_only: bool,
    /// Require this token (header `Authorization: Bearer …` or cookie).
    pub auth_token: Option<String>,
}

struct Dashboard {
    queue: Queue,
    config: DashboardConfig,
    csrf: String,
}

/// The dashboard's request handler, for [`crate::http::serve`].
pub fn handler(queue: Queue, config: DashboardConfig) -> Handler {
    let csrf = (0..32).fold(String::new(), |mut hex, _| {
        let _ = write!(hex, "{:02x}", rand::random::<u8>());
        hex
    });
    let dashboard = Arc::new(Dashboard {
        queue,
        config,
        csrf,
    });
    Arc::new(move |request: &Request| dashboard.serve(request))
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Compares secrets without an early exit.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An `_id` as it travels in URLs and forms: its relaxed extended JSON.
fn id_param(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

fn parse_id(text: &str) -> Option<Bson> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Bson::try_from(value).ok()
}

/// The filter condition for an `_id` that came from a request: always an
/// `$eq`, so an "id" such as `{"$ne": null}` matches only a document whose
/// `_id` is that very value, never every job.
fn exactly(id: &Bson) -> Bson {
    Bson::Document(doc! {"$eq": id.clone()})
}

fn job_link(id: &Bson) -> String {
    format!("/job?id={}", percent_encode(&id_param(id)))
}

fn fmt_time(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::DateTime(at)) => at
            .try_to_rfc3339_string()
            .unwrap_or_default()
            .replace('T', " "),
        _ => "–".to_string(),
    }
}

fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(chars).collect();
        short.push('…');
        short
    }
}

impl Dashboard {
    fn serve(&self, request: &Request) -> Response {
        if let Some(token) = &self.config.auth_token {
            if request.path == "/login" {
                return Dashboard::login(request, token);
            }
            if !Dashboard::authorized(request, token) {
                return Response::html(
                    401,
                    page("Sign in", "", "<p>This dashboard needs its token: open <code>/login?token=TOKEN</code> once (it sets a cookie), or send <code>Authorization: Bearer TOKEN</code>.</p>", false),
                )
                .with_header("WWW-Authenticate", "Bearer");
            }
        }
        let result = match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/") => self.overview(),
            ("GET" | "HEAD", "/workers") => self.workers(),
            ("GET" | "HEAD", "/jobs") => self.jobs(request),
            ("GET" | "HEAD", "/job") => self.job(request),
            ("GET" | "HEAD", "/retry-failed") => self.confirm_retry_all(),
            ("POST", path) => self.action(path, request),
            ("GET" | "HEAD", _) => Ok(Response::html(
                404,
                page("Not found", "", "<p>No such page.</p>", false),
            )),
            _ => Ok(Response::text(405, "method not allowed\n")),
        };
        result.unwrap_or_else(|error| {
            Response::html(
                503,
                page(
                    "Database error",
                    "",
                    &format!("<p class=err>{}</p>", esc(&error.to_string())),
                    false,
                ),
            )
        })
    }

    fn authorized(request: &Request, token: &str) -> bool {
        let bearer = request
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|given| same_secret(given.trim(), token));
        let cookie = request
            .cookie(TOKEN_COOKIE)
            .is_some_and(|given| same_secret(&given, token));
        bearer || cookie
    }

    fn login(request: &Request, token: &str) -> Response {
        match request.param("token") {
            Some(given) if same_secret(given, token) => Response::redirect("/").with_header(
                "Set-Cookie",
                format!(
                    "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    percent_encode(token)
                ),
            ),
            _ => Response::html(
                401,
                page("Sign in", "", "<p>Wrong or missing token.</p>", false),
            ),
        }
    }

    fn overview(&self) -> Result<Response, Error> {
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
            "</section><p>Eligible now: <b id=eligible>{}</b> · scheduled later: <b>{}</b> · oldest eligible job waited: <b>{}</b></p>",
            stats.eligible,
            stats.scheduled,
            stats.oldest_eligible_age_seconds.map_or_else(
                || "none waiting".to_string(),
                |s| crate::duration::format_duration(std::time::Duration::from_secs_f64(s))
            )
        );
        let series = self.throughput()?;
        body.push_str("<h2>Completed and failed per minute, last hour</h2>");
        body.push_str(&chart(&series));
        body.push_str("</div>");
        Ok(Response::html(200, page("Overview", "/", &body, true)))
    }

    /// Per minute of the last hour: (completed, failed), oldest first,
    /// counted by the server.
    fn throughput(&self) -> Result<Vec<(u64, u64)>, Error> {
        let now = DateTime::now().timestamp_millis();
        let since = DateTime::from_millis(now - 60 * 60_000);
        let mut series = vec![(0u64, 0u64); 60];
        for (status, field) in [
            (fields::COMPLETED, fields::COMPLETED_AT),
            (fields::FAILED, fields::FAILED_AT),
        ] {
            // `$bucket` by minute boundaries: no date arithmetic needed.
            let boundaries: Vec<Bson> = (0..=60)
                .map(|minute| {
                    Bson::DateTime(DateTime::from_millis(
                        since.timestamp_millis() + minute * 60_000,
                    ))
                })
                .collect();
            let pipeline = vec![
                doc! {"$match": {fields::STATUS: status, field: {"$gte": since}}},
                doc! {"$bucket": {
                    "groupBy": format!("${field}"),
                    "boundaries": boundaries,
                    "default": "later",
                    "output": {"n": {"$sum": 1}},
                }},
            ];
            let cursor = self
                .queue
                .collection()
                .aggregate(pipeline)
                .run()
                .map_err(|e| self.queue.db_error("aggregate (throughput)", &e))?;
            for group in cursor {
                let group = group.map_err(|e| self.queue.db_error("aggregate (throughput)", &e))?;
                let Some(Bson::DateTime(start)) = group.get("_id") else {
                    continue;
                };
                let minute = (start.timestamp_millis() - since.timestamp_millis()) / 60_000;
                let n = number(group.get("n"));
                if let Ok(minute) = usize::try_from(minute) {
                    if let Some(slot) = series.get_mut(minute) {
                        if status == fields::COMPLETED {
                            slot.0 += n.max(0) as u64;
                        } else {
                            slot.1 += n.max(0) as u64;
                        }
                    }
                }
            }
        }
        Ok(series)
    }

    fn workers(&self) -> Result<Response, Error> {
        let pipeline = vec![
            doc! {"$match": {fields::STATUS: fields::RUNNING}},
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
        let mut body = String::from("<div id=live>");
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
                    number(group.get("jobs")),
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

    fn jobs(&self, request: &Request) -> Result<Response, Error> {
        let status = request
            .param("status")
            .unwrap_or(fields::PENDING)
            .to_string();
        let queue = request.param("queue").unwrap_or("").trim().to_string();
        let text = request.param("q").unwrap_or("").trim().to_string();
        let owner = request.param("owner").unwrap_or("").to_string();
        let mut filter = doc! {fields::STATUS: &status};
        if !queue.is_empty() {
            filter.insert(
                fields::QUEUE,
                crate::job::queue_condition(std::slice::from_ref(&queue)),
            );
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
            "<form class=filters method=get action=/jobs><label>status <select name=status>{}</select></label> <label>queue <input name=queue value=\"{}\" placeholder=default></label> <label>error contains <input name=q value=\"{}\"></label> <button>Filter</button></form>",
            ["pending", "running", "completed", "failed", "cancelled"]
                .iter()
                .fold(String::new(), |mut options, s| {
                    let selected = if *s == status { " selected" } else { "" };
                    let _ = write!(options, "<option{selected}>{s}</option>");
                    options
                }),
            esc(&queue),
            esc(&text)
        );
        if status == fields::FAILED && !self.config.read_only {
            body.push_str("<p><a class=button href=/retry-failed>Retry all failed…</a></p>");
        }
        body.push_str("<table><tr><th>id</th><th>queue</th><th>priority</th><th>attempts</th><th>run_at</th><th>last_error</th></tr>");
        for row in rows.iter().take(PAGE as usize) {
            let id = row.get("_id").cloned().unwrap_or(Bson::Null);
            let queue_name = match row.get(fields::QUEUE) {
                Some(Bson::String(q)) => q.clone(),
                _ => fields::DEFAULT_QUEUE.into(),
            };
            let _ = write!(
                body,
                "<tr><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=err>{}</td></tr>",
                esc(&job_link(&id)),
                esc(&crate::job::id_text(&id)),
                esc(&queue_name),
                number(row.get(fields::PRIORITY)),
                number(row.get(fields::ATTEMPTS)),
                esc(&fmt_time(row.get(fields::RUN_AT))),
                esc(&cut(row.get_str(fields::LAST_ERROR).unwrap_or(""), ERROR_CHARS))
            );
        }
        body.push_str("</table>");
        if rows.is_empty() {
            body.push_str("<p>No jobs.</p>");
        }
        if more {
            if let Some(last) = rows.get(PAGE as usize - 1).and_then(|d| d.get("_id")) {
                let _ = write!(
                    body,
                    "<p><a class=button href=\"/jobs?status={}&amp;queue={}&amp;q={}&amp;owner={}&amp;before={}\">Older →</a></p>",
                    percent_encode(&status),
                    percent_encode(&queue),
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

    fn job(&self, request: &Request) -> Result<Response, Error> {
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
            number(job.get(fields::ATTEMPTS)),
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
        if !self.config.read_only {
            let mut actions = Vec::new();
            if status == fields::FAILED {
                actions.push(("retry", "Retry"));
            }
            if status == fields::PENDING || status == fields::RUNNING {
                actions.push(("cancel", "Cancel"));
            }
            if [fields::COMPLETED, fields::FAILED, fields::CANCELLED].contains(&status.as_str()) {
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
            let mut end = SHOW_BYTES;
            while !pretty.is_char_boundary(end) {
                end -= 1;
            }
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
                &format!("Job {}", crate::job::id_text(&id)),
                "/jobs",
                &body,
                false,
            ),
        ))
    }

    fn confirm_retry_all(&self) -> Result<Response, Error> {
        if self.config.read_only {
            return Ok(read_only());
        }
        let count = self.queue.count_status(fields::FAILED)?;
        let body = format!(
            "<p>Put <b>{count}</b> failed jobs back to pending, with fresh attempts? (Jobs that fail meanwhile are retried too.)</p><form method=post action=/retry-failed><input type=hidden name=csrf value=\"{}\"><button>Retry {count} jobs</button></form> <a href=\"/jobs?status=failed\">Cancel</a>",
            esc(&self.csrf)
        );
        Ok(Response::html(
            200,
            page("Retry all failed", "/jobs", &body, false),
        ))
    }

    fn action(&self, path: &str, request: &Request) -> Result<Response, Error> {
        if self.config.read_only {
            return Ok(read_only());
        }
        let form = request.form();
        let field = |name: &str| value_of(&form, name).unwrap_or("");
        if !same_secret(field("csrf"), &self.csrf) {
            return Ok(Response::html(
                403,
                page(
                    "Forbidden",
                    "",
                    "<p>Missing or wrong CSRF token: reload the page and try again.</p>",
                    false,
                ),
            ));
        }
        if path == "/retry-failed" {
            let done = self.queue.retry_failed(&RetrySelection::All)?;
            let message = format!(
                "{} failed jobs are pending again{}",
                done.retried,
                if done.skipped_duplicates > 0 {
                    format!("; {} skipped (unique_key taken)", done.skipped_duplicates)
                } else {
                    String::new()
                }
            );
            return Ok(Response::html(200, page("Retried", "/jobs", &format!("<p class=notice>{}</p><p><a href=\"/jobs?status=pending\">Pending jobs</a></p>", esc(&message)), false)));
        }
        if path != "/action" {
            return Ok(Response::text(404, "no such action\n"));
        }
        let Some(id) = parse_id(field("id")) else {
            return Ok(Response::text(400, "bad id\n"));
        };
        let text = crate::job::id_text(&id);
        let done = match field("action") {
            "retry" => {
                let done = self
                    .queue
                    .retry_failed(&RetrySelection::Exact(exactly(&id)))?;
                if done.retried == 1 {
                    "retried: pending again".to_string()
                } else if done.skipped_duplicates == 1 {
                    "not retried: another pending or running job has its unique_key".to_string()
                } else {
                    "not retried: the job is not failed".to_string()
                }
            }
            "cancel" => match self.queue.cancel_exact(&exactly(&id), &text)? {
                Cancel::Cancelled => "cancelled: it will not run".to_string(),
                Cancel::Requested { owner } => {
                    format!("cancel requested: {owner} drops it at its next lease extension")
                }
                Cancel::Finished { status } => format!("not cancelled: the job is {status}"),
            },
            "delete" => {
                if self.queue.delete_finished(&exactly(&id))? {
                    return Ok(Response::redirect("/jobs?status=completed"));
                }
                "not deleted: only finished jobs can be deleted".to_string()
            }
            _ => return Ok(Response::text(400, "unknown action\n")),
        };
        Ok(Response::redirect(&format!(
            "{}&done={}",
            job_link(&id),
            percent_encode(&done)
        )))
    }
}

fn read_only() -> Response {
    Response::html(
        403,
        page(
            "Read-only",
            "",
            "<p>This dashboard runs with --read-only: actions are off.</p>",
            false,
        ),
    )
}

fn number(value: Option<&Bson>) -> i64 {
    match value {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(x)) => *x as i64,
        _ => 0,
    }
}

/// Escapes regex metacharacters: the filter matches the text literally.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A bar chart (SVG) of completed (green) and failed (red) per minute.
fn chart(series: &[(u64, u64)]) -> String {
    let top = series.iter().map(|(c, f)| c + f).max().unwrap_or(0).max(1);
    let (width, height, bar) = (720.0, 160.0, 12.0);
    let mut svg = format!(
        "<svg id=chart class=chart viewBox=\"0 0 {width} {}\" role=img aria-label=\"completed and failed jobs per minute\">",
        height + 20.0
    );
    for (minute, (completed, failed)) in series.iter().enumerate() {
        let x = minute as f64 * bar;
        let h_completed = *completed as f64 / top as f64 * height;
        let h_failed = *failed as f64 / top as f64 * height;
        let _ = write!(
            svg,
            "<rect x={x} y={:.1} width={} height={h_completed:.1} fill=\"#3a9\"><title>{completed} completed</title></rect><rect x={x} y={:.1} width={} height={h_failed:.1} fill=\"#d44\"><title>{failed} failed</title></rect>",
            height - h_completed,
            bar - 2.0,
            height - h_completed - h_failed,
            bar - 2.0
        );
    }
    let total_completed: u64 = series.iter().map(|(c, _)| c).sum();
    let total_failed: u64 = series.iter().map(|(_, f)| f).sum();
    let _ = write!(
        svg,
        "<text x=0 y={}>60 min ago</text><text x={} y={} text-anchor=end>now · peak {top}/min · last hour: {total_completed} completed, {total_failed} failed</text></svg>",
        height + 16.0,
        width,
        height + 16.0
    );
    svg
}

/// The page around a body: navigation, style, and for live pages a script
/// that re-fetches the page every 5 s and swaps in its `#live` part.
fn page(title: &str, active: &str, body: &str, live: bool) -> String {
    let nav: String = [
        ("/", "Overview"),
        ("/workers", "Workers"),
        ("/jobs?status=pending", "Pending"),
        ("/jobs?status=running", "Running"),
        ("/jobs?status=failed", "Failed"),
        ("/jobs?status=completed", "Completed"),
    ]
    .iter()
    .fold(String::new(), |mut nav, (href, label)| {
        let current = if href.split('?').next() == Some(active)
            && (active != "/jobs" || title.ends_with(&label.to_lowercase()))
        {
            " class=current"
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
        nav
    });
    let script = if live {
        "<script>setInterval(async()=>{try{const r=await fetch(location.href,{credentials:'same-origin'});if(!r.ok)return;const d=new DOMParser().parseFromString(await r.text(),'text/html');const n=d.getElementById('live');if(n)document.getElementById('live').replaceWith(n);document.getElementById('updated').textContent=new Date().toLocaleTimeString();}catch(e){}},5000);</script>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>{} · mongoq</title><style>{STYLE}</style></head><body><header><b>mongoq</b><nav>{nav}</nav>{}</header><main><h1>{}</h1>{body}</main>{script}</body></html>",
        esc(title),
        if live { "<small>updated <span id=updated>now</span></small>" } else { "" },
        esc(title)
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d3b2a;color:#fff}header a{color:#cfe;margin-right:1em;text-decoration:none}header a.current{color:#fff;text-decoration:underline}header small{margin-left:auto;opacity:.7}main{padding:1em 1.2em}h1{font-size:1.3em}.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:7em;text-decoration:none;color:inherit}.card b{display:block;font-size:1.6em}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:.3em .5em;text-align:left;vertical-align:top}td.err{color:#a33;font-family:monospace;font-size:12px}pre{background:#f6f6f6;padding:1em;overflow:auto;max-height:70vh}.chart{width:100%;max-width:760px;border:1px solid #eee}.chart text{font-size:10px;fill:#666}.notice{background:#eef8e8;padding:.5em}.err{color:#a33}form.inline{display:inline}.filters input,.filters select{margin-right:1em}.button,button{display:inline-block;padding:.3em .8em;border:1px solid #888;border-radius:4px;background:#fafafa;color:#222;text-decoration:none;cursor:pointer}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn ids_round_trip_through_urls() {
        for id in [
            Bson::ObjectId(mongodb::bson::oid::ObjectId::new()),
            Bson::String("a\"b<c>".into()),
            Bson::Int32(42),
        ] {
            assert_eq!(parse_id(&id_param(&id)), Some(id.clone()));
        }
    }

    #[test]
    fn regex_text_is_literal() {
        assert_eq!(regex_escape("a.b(c)*"), "a\\.b\\(c\\)\\*");
    }
}
