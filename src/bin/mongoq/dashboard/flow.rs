//! A job's place in a flow, on its page: what it waits on and what waits
//! on it, each a link with its status.

use std::fmt::Write as _;

use mongodb::bson::{Bson, Document};
use mongoq::flow::LINKS_SHOWN;
use mongoq::schema::{fields, id_text};
use mongoq::Error;

use super::html::{esc, job_link};
use super::Dashboard;

impl Dashboard {
    /// The "waits on" and "waited on by" lists of `job`, empty for a job
    /// outside any flow.
    pub(super) fn flow_links(&self, job: &Document) -> Result<String, Error> {
        let in_flow = job.contains_key(fields::AFTER)
            || job.contains_key(fields::HAS_DEPENDENTS)
            || job.contains_key(fields::FLOW);
        if !in_flow {
            return Ok(String::new());
        }
        let links = self.queue.dependencies_of(job)?;
        let done: Vec<String> = match job.get(fields::DEPS_DONE) {
            Some(Bson::Array(done)) => done.iter().map(id_text).collect(),
            _ => Vec::new(),
        };
        let mut out = String::new();
        let list =
            |out: &mut String, id: &str, title: &str, items: &[(Bson, String)], more: bool| {
                let _ = write!(
                    out,
                    "<h2>{title} ({}{})</h2><ul id={id}>",
                    items.len(),
                    if more { "+" } else { "" }
                );
                for (dep, status) in items.iter().take(LINKS_SHOWN as usize) {
                    let _ = write!(
                        out,
                        "<li><a href=\"{}\">{}</a> <b>{}</b></li>",
                        esc(&job_link(dep)),
                        esc(&id_text(dep)),
                        esc(status)
                    );
                }
                out.push_str("</ul>");
            };
        if !links.waits_on.is_empty() {
            let open = links
                .waits_on
                .iter()
                .filter(|(id, _)| !done.contains(&id_text(id)))
                .count();
            let _ = write!(
                out,
                "<p id=waits>waits for {open} of {} jobs</p>",
                links.waits_on.len()
            );
            list(&mut out, "after", "Waits on", &links.waits_on, false);
        }
        if !links.dependents.is_empty() {
            let more = links.dependents.len() as i64 >= LINKS_SHOWN;
            list(
                &mut out,
                "dependents",
                "Waited on by",
                &links.dependents,
                more,
            );
        }
        Ok(out)
    }
}
