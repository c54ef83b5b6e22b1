//! HTML building blocks of the dashboard: escaping, formatting, the chart
//! and the page frame with its style. No templates: plain `format!`, with
//! [`esc`] applied to every value that came from the database.

use std::fmt::Write as _;

use mongodb::bson::Bson;
use mongoq::text::percent_encode;

use super::id_param;

/// HTML-escapes text for element content and quoted attributes.
pub(super) fn esc(text: &str) -> String {
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

/// A link to a job's page.
pub(super) fn job_link(id: &Bson) -> String {
    format!("/job?id={}", percent_encode(&id_param(id)))
}

/// A date as `YYYY-MM-DD HH:MM:SS…`, or a dash when there is none.
pub(super) fn fmt_time(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::DateTime(at)) => at
            .try_to_rfc3339_string()
            .unwrap_or_default()
            .replace('T', " "),
        _ => "–".to_string(),
    }
}

/// Escapes regex metacharacters: the filter matches the text literally.
pub(super) fn regex_escape(text: &str) -> String {
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
pub(super) fn chart(series: &[(u64, u64)]) -> String {
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
/// The notice a page shows when its counts leave out jobs not counted yet
/// (see `mongoq::Stats::not_counted_yet`); empty when they are exact.
pub(super) fn not_counted_notice(left_out: Option<u64>) -> String {
    left_out.map_or_else(String::new, |n| {
        format!(
            "<p class=notice id=not-counted>{}</p>",
            esc(&crate::commands::stats::not_counted_note(n))
        )
    })
}

pub(super) fn page(title: &str, active: &str, body: &str, live: bool) -> String {
    let nav: String = [
        ("/", "Overview"),
        ("/workers", "Workers"),
        ("/queues", "Queues"),
        ("/history", "History"),
        ("/schedules", "Schedules"),
        ("/jobs?status=waiting", "Waiting"),
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

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#222}header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d3b2a;color:#fff}header a{color:#cfe;margin-right:1em;text-decoration:none}header a.current{color:#fff;text-decoration:underline}header small{margin-left:auto;opacity:.7}main{padding:1em 1.2em}h1{font-size:1.3em}.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:7em;text-decoration:none;color:inherit}.card b{display:block;font-size:1.6em}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:.3em .5em;text-align:left;vertical-align:top}td.err{color:#a33;font-family:monospace;font-size:12px}pre{background:#f6f6f6;padding:1em;overflow:auto;max-height:70vh}.chart{width:100%;max-width:760px;border:1px solid #eee}.chart text{font-size:10px;fill:#666}.notice{background:#eef8e8;padding:.5em}.err{color:#a33}.muted{color:#888}td.groups{font-size:12px;white-space:nowrap}form.inline{display:inline}.filters input,.filters select{margin-right:1em}.button,button{display:inline-block;padding:.3em .8em;border:1px solid #888;border-radius:4px;background:#fafafa;color:#222;text-decoration:none;cursor:pointer}";

#[cfg(test)]
mod tests {
    use super::super::parse_id;
    use super::*;
    use mongodb::bson::Bson;

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
