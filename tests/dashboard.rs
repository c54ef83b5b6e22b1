//! The web dashboard over HTTP on the real server: every page, every
//! action, CSRF, read-only mode, the auth token, hostile job data, and a
//! real browser (headless Chromium) rendering it.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};

use crate::helpers::{free_port, stderr, stdout, tempfile, TestDb};

/// A running `mongoq dashboard`, killed on drop.
pub(crate) struct Dashboard {
    child: Child,
    pub(crate) base: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn dashboard(db: &TestDb, extra: &[&str]) -> Dashboard {
    let port = free_port();
    let child = db
        .mongoq()
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the dashboard did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Dashboard {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub(crate) fn get(url: &str) -> (u16, String) {
    let mut response = agent().get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// POSTs a form; returns the status, the Location header and the body.
fn post(url: &str, form: &[(&str, &str)]) -> (u16, String, String) {
    let mut response = agent().post(url).send_form(form.iter().copied()).unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        location,
        response.body_mut().read_to_string().unwrap(),
    )
}

/// POSTs one job action with the CSRF token; returns status and Location.
fn act(base: &str, token: &str, action: &str, id: &ObjectId) -> (u16, String) {
    let (status, location, _) = post(
        &format!("{base}/action"),
        &[("csrf", token), ("action", action), ("id", &oid_json(id))],
    );
    (status, location)
}

fn csrf(page: &str) -> String {
    let start = page.find("name=csrf value=\"").expect("a CSRF field") + 17;
    page[start..start + 64].to_string()
}

fn job_url(base: &str, id: &ObjectId) -> String {
    format!("{base}/job?id=%7B%22%24oid%22%3A%22{}%22%7D", id.to_hex())
}

fn oid_json(id: &ObjectId) -> String {
    format!("{{\"$oid\":\"{}\"}}", id.to_hex())
}

#[test]
fn every_page_renders_from_the_real_server() {
    let db = TestDb::new("dash_pages");
    let now = DateTime::now();
    db.coll()
        .insert_many([
            doc! {"data": 1, "status": "completed", "completed_at": now, "attempts": 1},
            doc! {"data": 2, "status": "completed", "completed_at": now, "attempts": 1},
            doc! {"data": 3, "status": "failed", "failed_at": now, "attempts": 5, "last_error": "timeout talking to smtp.example.com", "queue": "emails"},
            doc! {"data": 4, "status": "failed", "failed_at": now, "attempts": 5, "last_error": "disk full"},
        ])
        .run()
        .unwrap();
    let out = db.run_with_stdin(&["enqueue", "-q"], &"{}\n".repeat(120));
    assert!(out.status.success(), "{}", stderr(&out));
    // A worker holding two jobs, so the workers page has something to show.
    db.coll()
        .insert_many([
            doc! {"data": 5, "status": "pending", "queue": "slow", "priority": 0},
            doc! {"data": 6, "status": "pending", "queue": "slow", "priority": 0},
        ])
        .run()
        .unwrap();
    let _worker = db.spawn_worker(&[
        "--queue",
        "slow",
        "--worker-id",
        "host-a:1",
        "--threads",
        "2",
        "--exec",
        "sleep",
        "30",
    ]);
    db.wait_for_count(doc! {"status": "running"}, 2, Duration::from_secs(20));
    // The chart reads the history (see tests/history.rs), here a minute's.
    let minute = mongodb::bson::DateTime::from_millis(now.timestamp_millis() / 60_000 * 60_000);
    db.database()
        .collection::<Document>("queue_metrics")
        .insert_one(doc! {"_id": {"q": "default", "m": minute}, "q": "default", "at": minute, "completed": 2, "failed": 2})
        .run()
        .unwrap();
    let dash = dashboard(&db, &[]);

    let (status, page) = get(&format!("{}/", dash.base));
    assert_eq!(status, 200);
    assert!(page.contains("<b>2</b><span>completed</span>"), "{page}");
    assert!(page.contains("<b>2</b><span>failed</span>"), "{page}");
    assert!(page.contains("<b>120</b><span>pending</span>"), "{page}");
    assert!(
        page.contains("Eligible now: <b id=eligible>120</b>"),
        "{page}"
    );
    assert!(
        page.contains("last hour: 2 completed, 2 failed"),
        "chart totals: {page}"
    );
    assert!(
        page.contains("setInterval"),
        "the overview refreshes itself"
    );

    let (status, page) = get(&format!("{}/workers", dash.base));
    assert_eq!(status, 200);
    assert!(page.contains(">host-a:1</a></td><td>2</td>"), "{page}");

    // Pages of 50, newest first, by cursor: 120 pending jobs, no overlap.
    let mut seen = std::collections::HashSet::new();
    let mut url = format!("{}/jobs?status=pending", dash.base);
    let mut pages = 0;
    loop {
        let (status, page) = get(&url);
        assert_eq!(status, 200);
        let ids: Vec<String> = page
            .match_indices("<td><a href=\"/job?id=")
            .map(|(at, _)| {
                page[at..]
                    .split("<code>")
                    .nth(1)
                    .unwrap()
                    .split("</code>")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        pages += 1;
        for id in &ids {
            assert!(seen.insert(id.clone()), "{id} shown twice");
        }
        match page.find("Older →") {
            Some(end) => {
                let start = page[..end].rfind("href=\"").unwrap() + 6;
                let href = page[start..end]
                    .trim_end_matches("\">")
                    .replace("&amp;", "&");
                url = format!("{}{href}", dash.base);
            }
            None => break,
        }
        assert!(pages < 5, "too many pages");
    }
    assert_eq!((pages, seen.len()), (3, 120));

    let (_, page) = get(&format!("{}/jobs?status=failed&queue=emails", dash.base));
    assert!(
        page.contains("smtp.example.com") && !page.contains("disk full"),
        "{page}"
    );
    let (_, page) = get(&format!("{}/jobs?status=failed&q=DISK", dash.base));
    assert!(
        page.contains("disk full") && !page.contains("smtp"),
        "{page}"
    );
    let (_, page) = get(&format!("{}/jobs?status=failed&q=.*", dash.base));
    assert!(
        page.contains("No jobs."),
        "the text filter is literal: {page}"
    );

    let failed = db.coll().find_one(doc! {"data": 3}).run().unwrap().unwrap();
    let id = failed.get_object_id("_id").unwrap();
    let (status, page) = get(&job_url(&dash.base, &id));
    assert_eq!(status, 200);
    assert!(page.contains("status <b>failed</b>"), "{page}");
    assert!(
        page.contains("&quot;last_error&quot;: &quot;timeout talking to smtp.example.com&quot;"),
        "{page}"
    );
    assert!(page.contains(">Retry</button>") && page.contains(">Delete</button>"));
    assert_eq!(get(&job_url(&dash.base, &ObjectId::new())).0, 404);
    assert_eq!(get(&format!("{}/nope", dash.base)).0, 404);
}

#[test]
fn actions_need_the_csrf_token_and_do_what_they_say() {
    let db = TestDb::new("dash_actions");
    let now = DateTime::now();
    let ids: Vec<ObjectId> = (0..5).map(|_| ObjectId::new()).collect();
    db.coll()
        .insert_many([
            doc! {"_id": ids[0], "data": 0, "status": "failed", "failed_at": now, "attempts": 5},
            doc! {"_id": ids[1], "data": 1, "status": "failed", "failed_at": now, "attempts": 5},
            doc! {"_id": ids[2], "data": 2, "status": "failed", "failed_at": now, "attempts": 5},
            doc! {"_id": ids[3], "data": 3, "status": "pending"},
            doc! {"_id": ids[4], "data": 4, "status": "completed", "completed_at": now},
        ])
        .run()
        .unwrap();
    let dash = dashboard(&db, &[]);
    let (_, page) = get(&job_url(&dash.base, &ids[0]));
    let token = csrf(&page);

    // Without the token (a cross-site form) nothing happens.
    let (status, _, _) = post(
        &format!("{}/action", dash.base),
        &[("action", "retry"), ("id", &oid_json(&ids[0]))],
    );
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &format!("{}/action", dash.base),
        &[
            ("csrf", &"0".repeat(64)),
            ("action", "retry"),
            ("id", &oid_json(&ids[0])),
        ],
    );
    assert_eq!(status, 403);
    assert_eq!(db.count(doc! {"status": "failed"}), 3);

    let (status, location) = act(&dash.base, &token, "retry", &ids[0]);
    assert_eq!(status, 303);
    assert!(location.contains("done=retried"), "{location}");
    assert_eq!(
        db.count(doc! {"_id": ids[0], "status": "pending", "attempts": 0}),
        1
    );
    let (_, page) = get(&format!("{}{location}", dash.base));
    assert!(
        page.contains("class=notice>retried: pending again"),
        "{page}"
    );

    let (status, _) = act(&dash.base, &token, "cancel", &ids[3]);
    assert_eq!(status, 303);
    assert_eq!(db.count(doc! {"_id": ids[3], "status": "cancelled"}), 1);

    let (status, _) = act(&dash.base, &token, "delete", &ids[4]);
    assert_eq!(status, 303);
    assert_eq!(db.count(doc! {"_id": ids[4]}), 0);
    // A pending job is not deleted.
    let (_, location) = act(&dash.base, &token, "delete", &ids[0]);
    assert!(location.contains("not%20deleted"), "{location}");
    assert_eq!(db.count(doc! {"_id": ids[0]}), 1);

    // An "id" that is a query operator matches nothing, not every job.
    let (status, location, _) = post(
        &format!("{}/action", dash.base),
        &[
            ("csrf", &token),
            ("action", "delete"),
            ("id", r#"{"$ne": null}"#),
        ],
    );
    assert_eq!(status, 303);
    assert!(location.contains("not%20deleted"), "{location}");
    assert_eq!(db.count(doc! {}), 4);
    let (status, _) = get(&format!("{}/job?id=%7B%22%24ne%22%3Anull%7D", dash.base));
    assert_eq!(status, 404);

    // Retry all: the confirmation shows the count, the POST does it.
    let (status, page) = get(&format!("{}/retry-failed", dash.base));
    assert_eq!(status, 200);
    assert!(page.contains("Put <b>2</b> failed jobs back"), "{page}");
    let (status, _, page) = post(
        &format!("{}/retry-failed", dash.base),
        &[("csrf", &csrf(&page)), ("confirm", "2")],
    );
    assert_eq!(status, 200);
    assert!(page.contains("2 failed jobs are pending again"), "{page}");
    assert_eq!(db.count(doc! {"status": "failed"}), 0);
}

#[test]
fn read_only_mode_hides_and_refuses_actions() {
    let db = TestDb::new("dash_read_only");
    let id = ObjectId::new();
    db.coll()
        .insert_one(doc! {"_id": id, "data": 1, "status": "failed", "failed_at": DateTime::now()})
        .run()
        .unwrap();
    let writable = dashboard(&db, &[]);
    let token = csrf(&get(&job_url(&writable.base, &id)).1);
    let dash = dashboard(&db, &["--read-only"]);
    let (status, page) = get(&job_url(&dash.base, &id));
    assert_eq!(status, 200);
    assert!(
        !page.contains("<button"),
        "no actions in read-only mode: {page}"
    );
    let (_, page) = get(&format!("{}/jobs?status=failed", dash.base));
    assert!(!page.contains("Retry all"), "{page}");
    let (status, _) = act(&dash.base, &token, "retry", &id);
    assert_eq!(status, 403);
    assert_eq!(get(&format!("{}/retry-failed", dash.base)).0, 403);
    assert_eq!(db.count(doc! {"status": "failed"}), 1);
}

#[test]
fn an_auth_token_is_required_when_set() {
    let db = TestDb::new("dash_token");
    let secret = "s3cret-token-0123456789";
    let dash = dashboard(&db, &["--auth-token", secret]);
    assert_eq!(get(&format!("{}/", dash.base)).0, 401);
    assert_eq!(get(&format!("{}/jobs?status=failed", dash.base)).0, 401);
    let bearer = |token: &str| {
        agent()
            .get(&format!("{}/", dash.base))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(bearer(secret), 200);
    assert_eq!(bearer("s3cret-token-0123456780"), 401);
    // A browser: /login sets an HttpOnly cookie, then pages open with it.
    let login = agent()
        .get(&format!("{}/login?token={secret}", dash.base))
        .call()
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let status = agent()
        .get(&format!("{}/workers", dash.base))
        .header("Cookie", pair)
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    assert_eq!(get(&format!("{}/login?token=wrong", dash.base)).0, 401);
    // Short tokens are refused at start.
    let out = db.run(&["dashboard", "--auth-token", "short"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 16"), "{}", stderr(&out));
}

#[test]
fn hostile_job_data_is_shown_as_text_and_large_documents_are_cut() {
    let db = TestDb::new("dash_xss");
    let id = ObjectId::new();
    let big = ObjectId::new();
    db.coll()
        .insert_many([
            doc! {
                "_id": id,
                "data": {"html": "<script>alert('data')</script>", "<b>key</b>": "\"><img src=x onerror=alert(1)>"},
                "status": "failed",
                "failed_at": DateTime::now(),
                "queue": "<svg onload=alert(2)>",
                "last_error": "<script>alert('error')</script>",
            },
            doc! {"_id": big, "data": "x".repeat(300_000), "status": "pending"},
        ])
        .run()
        .unwrap();
    let dash = dashboard(&db, &[]);
    for url in [
        job_url(&dash.base, &id),
        format!("{}/jobs?status=failed", dash.base),
        format!(
            "{}/jobs?status=failed&queue=%3Csvg%20onload%3Dalert(2)%3E&q=%3Cscript",
            dash.base
        ),
    ] {
        let (status, page) = get(&url);
        assert_eq!(status, 200, "{url}");
        for raw in ["<script>alert", "<img src=x", "<svg onload", "<b>key</b>"] {
            assert!(!page.contains(raw), "{url} contains raw {raw}:\n{page}");
        }
        assert!(
            page.contains("&lt;script&gt;alert(&#39;"),
            "{url} shows the text escaped"
        );
    }
    let (_, page) = get(&job_url(&dash.base, &id));
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    let (status, page) = get(&job_url(&dash.base, &big));
    assert_eq!(status, 200);
    assert!(
        page.len() < 100_000,
        "a 300 KB job is cut for display ({} bytes)",
        page.len()
    );
    assert!(page.contains("… truncated:"), "the cut is said");
}

#[test]
fn running_jobs_show_their_progress_on_the_list_and_the_job_page() {
    let db = TestDb::new("dash_progress");
    let id = ObjectId::new();
    db.coll()
        .insert_one(doc! {
            "_id": id, "data": {}, "status": "running", "attempts": 2,
            "lease_owner": "w1", "lease_until": DateTime::now(),
            "progress": {"fraction": 0.4, "note": "resizing 3/8 <b>", "attempt": 2, "at": DateTime::now()},
        })
        .run()
        .unwrap();
    let dash = dashboard(&db, &[]);
    let (status, list) = get(&format!("{}/jobs?status=running", dash.base));
    assert_eq!(status, 200);
    assert!(list.contains("<th>progress</th>"), "{list}");
    assert!(list.contains("40% · resizing 3/8 &lt;b&gt;"), "{list}");
    let (status, page) = get(&job_url(&dash.base, &id));
    assert_eq!(status, 200);
    assert!(
        page.contains("<p id=progress>progress 40% · resizing 3/8 &lt;b&gt; · reported"),
        "{page}"
    );
    let (_, pending) = get(&format!("{}/jobs?status=pending", dash.base));
    assert!(
        !pending.contains("<th>progress</th>"),
        "only running jobs have the column"
    );
}

#[test]
fn the_schedules_page_lists_schedules_and_pauses_them() {
    let db = TestDb::new("dash_schedules");
    let out = db.run(&[
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--tz",
        "Europe/Berlin",
        "--queue",
        "reports",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dash = dashboard(&db, &[]);
    let (status, page) = get(&format!("{}/schedules", dash.base));
    assert_eq!(status, 200);
    assert!(
        page.contains("<a href=\"/schedules\" class=active>Schedules</a>")
            || page.contains("Schedules"),
        "{page}"
    );
    assert!(
        page.contains("nightly") && page.contains("cron 0 2 * * * (Europe/Berlin)"),
        "{page}"
    );
    assert!(page.contains("<button>Pause</button>"), "{page}");
    let token = csrf(&page);
    let (status, location, _) = post(
        &format!("{}/schedule-action", dash.base),
        &[
            ("csrf", token.as_str()),
            ("name", "nightly"),
            ("action", "pause"),
        ],
    );
    assert_eq!(status, 303, "{location}");
    assert!(location.starts_with("/schedules?done="), "{location}");
    let (_, page) = get(&format!("{}/schedules", dash.base));
    assert!(page.contains("<button>Resume</button>"), "{page}");
    let (status, _, _) = post(
        &format!("{}/schedule-action", dash.base),
        &[("csrf", "wrong"), ("name", "nightly"), ("action", "resume")],
    );
    assert_eq!(status, 403, "the CSRF token is required");
    drop(dash);
    let read_only = dashboard(&db, &["--read-only"]);
    let (_, page) = get(&format!("{}/schedules", read_only.base));
    assert!(
        page.contains("nightly") && !page.contains("<button>"),
        "read-only shows only: {page}"
    );
}

/// Headless Chromium, from scripts/test.sh (which installs Debian's
/// package when it can). Only a machine where it cannot be had may skip,
/// and it says so.
pub(crate) fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("MONGOQ_CHROMIUM") {
        return Some(path);
    }
    if let Ok(reason) = std::env::var("MONGOQ_SKIP_BROWSER") {
        crate::helpers::not_checked("dashboard: the pages in a real browser", &reason);
        return None;
    }
    panic!("MONGOQ_CHROMIUM is not set: run the suite with scripts/test.sh, which finds or installs chromium (or sets MONGOQ_SKIP_BROWSER with the reason it cannot)");
}

pub(crate) fn browse(chromium: &str, args: &[&str], url: &str) -> String {
    let profile = tempfile(&format!(
        "chromium-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_real_browser_renders_the_overview_and_a_job_page() {
    let Some(chromium) = chromium() else { return };
    let db = TestDb::new("dash_browser");
    let now = DateTime::now();
    let id = ObjectId::new();
    db.coll()
        .insert_many([
            doc! {"data": 1, "status": "completed", "completed_at": now},
            doc! {"_id": id, "data": {"html": "<script>document.title='pwned'</script>"}, "status": "failed", "failed_at": now, "last_error": "boom"},
            doc! {"data": 3, "status": "pending"},
        ])
        .run()
        .unwrap();
    let dash = dashboard(&db, &[]);
    // Virtual time lets the page's 5 s refresh run once before the dump.
    let dom = browse(
        &chromium,
        &["--virtual-time-budget=7000", "--dump-dom"],
        &format!("{}/", dash.base),
    );
    assert!(dom.contains("<b>1</b><span>completed</span>"), "{dom}");
    assert!(dom.contains("<b>1</b><span>failed</span>"), "{dom}");
    assert!(
        dom.contains("<svg id=\"chart\""),
        "the chart rendered: {dom}"
    );
    assert!(
        !dom.contains("id=\"updated\">now<"),
        "the refresh script ran and replaced the live part: {dom}"
    );

    let dom = browse(&chromium, &["--dump-dom"], &job_url(&dash.base, &id));
    assert!(
        dom.contains("<title>Job"),
        "the script in the data did not run: {dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<script>document.title"), "{dom}");

    let shot = tempfile(&format!("{}-overview.png", db.db));
    let _ = std::fs::remove_file(&shot);
    browse(
        &chromium,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
            "--hide-scrollbars",
        ],
        &format!("{}/", dash.base),
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn a_real_browser_shows_the_fleet_registry_and_paused_queues() {
    let Some(chromium) = chromium() else { return };
    let db = TestDb::new("dash_fleet");
    assert!(db
        .run(&["pause", "emails", "--reason", "provider down"])
        .status
        .success());
    assert!(db
        .run(&["limit", "reports", "--concurrency", "5", "--rate", "100/1m"])
        .status
        .success());
    let mut worker = db.spawn_worker(&[
        "--worker-id",
        "dash-worker-1",
        "--threads",
        "3",
        "--simulate",
        "0ms..0ms",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stdout(&db.run(&["workers"])).contains("dash-worker-1") {
        assert!(Instant::now() < deadline, "the worker did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dash = dashboard(&db, &[]);
    let dom = browse(
        &chromium,
        &["--dump-dom"],
        &format!("{}/workers", dash.base),
    );
    assert!(
        dom.contains("<td>dash-worker-1</td>"),
        "the registry lists an idle worker: {dom}"
    );
    assert!(dom.contains(">live<"), "{dom}");

    let dom = browse(&chromium, &["--dump-dom"], &format!("{}/queues", dash.base));
    assert!(dom.contains("paused</b> (provider down)"), "{dom}");
    assert!(
        dom.contains("0 / 5"),
        "the concurrency limit and its use: {dom}"
    );
    assert!(dom.contains("100/1.0m"), "the rate: {dom}");
    assert!(dom.contains("<button>Resume</button>"), "{dom}");
    assert!(dom.contains("<button>Pause</button>"), "{dom}");

    // The buttons work (POST + CSRF), and read-only hides and refuses them.
    let (status, location, _) = post(
        &format!("{}/queue-action", dash.base),
        &[
            ("csrf", &csrf(&get(&format!("{}/queues", dash.base)).1)),
            ("queue", "emails"),
            ("action", "resume"),
        ],
    );
    assert_eq!(status, 303, "{location}");
    assert!(!stdout(&db.run(&["limit"])).contains("PAUSED"));
    let (status, _, _) = post(
        &format!("{}/queue-action", dash.base),
        &[("csrf", "wrong"), ("queue", "emails"), ("action", "pause")],
    );
    assert_eq!(status, 403);
    let read_only = dashboard(&db, &["--read-only"]);
    let (_, page) = get(&format!("{}/queues", read_only.base));
    assert!(!page.contains("<button>"), "{page}");
    worker.signal("TERM");
    worker.expect_success(Duration::from_secs(30));
}
