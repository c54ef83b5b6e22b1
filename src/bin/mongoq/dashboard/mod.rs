//! The web dashboard: server-rendered HTML over [`crate::http`], a little
//! vanilla JavaScript to refresh the live parts, no build chain.
//!
//! Safety rules, applied everywhere: every value from the database goes
//! through [`esc`]; every action is a POST carrying the CSRF token of this
//! process (a page from another origin cannot read it); `--read-only` hides
//! actions and refuses them; with an auth token, every request needs it
//! (bearer header, or the cookie `/login` sets).

mod actions;
mod flow;
mod glance;
mod history;
mod html;
mod pages;
mod queues;
mod schedules;

use std::fmt::Write as _;
use std::sync::Arc;

use mongodb::bson::{doc, Bson};
use mongoq::Queue;

use mongoq::text::percent_encode;

use crate::http::{Handler, Request, Response};
use html::{esc, page};

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
    /// Without a token, the host names a request's `Host` may give: IP
    /// addresses and `localhost` always, plus these (the listen address's
    /// host and `--allow-host`). Any other is refused with 421, so a web page the
    /// operator visits cannot reach the dashboard through DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

struct Dashboard {
    queue: Queue,
    config: DashboardConfig,
    csrf: String,
    /// Every queue's busiest groups, for the Queues page.
    glance: Arc<glance::Glance>,
}

/// The host part of a `Host` header or address: `[::1]:8080` → `::1`,
/// `example.org:80` → `example.org`.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
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
        glance: Arc::default(),
    });
    Arc::new(move |request: &Request| dashboard.serve(request))
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

impl Dashboard {
    fn serve(&self, request: &Request) -> Response {
        if self.config.auth_token.is_none() && !self.host_allowed(request) {
            return Response::text(
                421,
                "this dashboard answers only to its own address and localhost (start it with --allow-host NAME to add a name, or use --auth-token)\n",
            );
        }
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
            ("GET" | "HEAD", "/queues") => self.queues(request),
            ("GET" | "HEAD", "/history") => self.history(request),
            ("GET" | "HEAD", "/groups") => self.groups(request),
            ("GET" | "HEAD", "/schedules") => self.schedules(request),
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

    /// Whether the request's `Host` (without its port) is one this
    /// dashboard answers to. A request without `Host` is refused too
    /// (HTTP/1.1 requires it; only a hand-made request lacks it).
    fn host_allowed(&self, request: &Request) -> bool {
        let Some(host) = request.header("host") else {
            return false;
        };
        let name = host_name(host);
        // An IP literal cannot come from DNS rebinding (that needs a name
        // the attacker controls), so addresses are always answered.
        name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .config
                .allowed_hosts
                .iter()
                .any(|allowed| host_name(allowed).eq_ignore_ascii_case(name))
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
}
