//! The dashboard's actions: retry, cancel and delete a job, retry all
//! failed jobs. Each is a POST carrying this process's CSRF token, refused
//! in `--read-only`; ids from the request are matched with `$eq`, so
//! outside input never becomes an operator.

use mongoq::queue::{Cancel, RetrySelection};
use mongoq::Error;

use mongoq::text::percent_encode;

use super::html::{esc, job_link, page};
use super::{exactly, parse_id, same_secret, Dashboard};
use crate::http::{value_of, Request, Response};

impl Dashboard {
    pub(super) fn action(&self, path: &str, request: &Request) -> Result<Response, Error> {
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
        if path == "/schedule-action" {
            return self.schedule_action(field("name").trim(), field("action"));
        }
        if path == "/queue-action" {
            let queue = field("queue").trim();
            let queue = if queue.is_empty() { "default" } else { queue };
            let done = match field("action") {
                "pause" => {
                    let reason = Some(field("reason").trim()).filter(|r| !r.is_empty());
                    self.queue.pause(queue, reason)?;
                    format!("queue {queue} paused")
                }
                "resume" => {
                    self.queue.resume(queue)?;
                    format!("queue {queue} resumed")
                }
                _ => return Ok(Response::text(400, "unknown action\n")),
            };
            return Ok(Response::redirect(&format!(
                "/queues?done={}",
                percent_encode(&done)
            )));
        }
        if path != "/action" {
            return Ok(Response::text(404, "no such action\n"));
        }
        let Some(id) = parse_id(field("id")) else {
            return Ok(Response::text(400, "bad id\n"));
        };
        let text = mongoq::schema::id_text(&id);
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
                Cancel::Cancelled { dependents: 0 } => "cancelled: it will not run".to_string(),
                Cancel::Cancelled { dependents } => format!(
                    "cancelled: it will not run, nor will the {dependents} waiting jobs that depended on it"
                ),
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

pub(super) fn read_only() -> Response {
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
