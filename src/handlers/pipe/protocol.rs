//! The `--pipe` protocol as a pure module: a line from the handler program
//! becomes a typed [`Message`], or a [`Violation`] that quotes the start of
//! the line. No processes here; the unit tests feed it bytes.
//!
//! Newline-delimited JSON, one object a line, in both directions:
//!
//! - handler → worker, once at start: `{"ready": true}`. Until it says so
//!   the process gets no job, so a program that cannot start (a missing
//!   module, a bad path) never burns an attempt.
//! - worker → handler, one line per job: the object `--exec` reads (id,
//!   attempt, max_attempts, priority, queue, data, and `deadline` under
//!   `--timeout`).
//! - handler → worker, per job: any number of
//!   `{"id": …, "progress": 0.0–1.0, "note": "…"}`, then exactly one answer,
//!   `{"id": …, "ok": true, "result": …}`,
//!   `{"id": …, "ok": false, "error": "…", "retry": true|false}` (with
//!   `"retry_after": SECONDS` to wait that long for the next attempt instead
//!   of the back-off), `{"id": …, "snooze": SECONDS}` ("not now": run it
//!   again then, the attempt not charged), or `{"id": …, "pause": SECONDS,
//!   "reason": "…"}` ("back off": no worker starts a job of this queue for
//!   that long, and this one runs again when the pause ends).
//!
//! Every line on stdout must be one of these; anything else (text, an
//! answer for another job, `NaN`, a line over [`MAX_LINE`]) is a violation:
//! the job's attempt fails with the reason and the process is replaced.

use serde_json::{Map, Value};

/// The longest line a handler may write (a result larger than the job
/// document can hold is refused anyway).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// How much of an offending line an error quotes.
const QUOTE_CHARS: usize = 120;

/// What a handler's line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The handshake: the program is up and waits for jobs.
    Ready,
    /// Progress of the job with this id.
    Progress {
        id: Value,
        fraction: f64,
        note: Option<String>,
    },
    /// The job with this id succeeded with `result` (null when absent).
    Done { id: Value, result: Value },
    /// The job with this id failed; `retry: false` fails it for good;
    /// `retry_after` (seconds) replaces the back-off before the next attempt.
    Failed {
        id: Value,
        error: String,
        retry: bool,
        retry_after: Option<f64>,
    },
    /// The job with this id is to run again `seconds` from now, its attempt
    /// not charged.
    Snooze { id: Value, seconds: f64 },
    /// Its queue is to start nothing for `seconds`, fleet-wide, and the job
    /// runs again when that ends.
    Pause {
        id: Value,
        seconds: f64,
        reason: String,
    },
}

impl Message {
    /// The job id the message is about (`None` for the handshake).
    pub fn id(&self) -> Option<&Value> {
        match self {
            Message::Ready => None,
            Message::Progress { id, .. }
            | Message::Done { id, .. }
            | Message::Failed { id, .. }
            | Message::Snooze { id, .. }
            | Message::Pause { id, .. } => Some(id),
        }
    }
}

/// A line that breaks the protocol, with the reason and the line's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation: {reason}; the line starts: {quote}")]
pub struct Violation {
    pub reason: String,
    pub quote: String,
}

impl Violation {
    pub(crate) fn new(reason: impl Into<String>, line: &[u8]) -> Violation {
        Violation {
            reason: reason.into(),
            quote: quote(line),
        }
    }
}

/// The start of `line`, as text, for an error message.
pub fn quote(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return "(an empty line)".into();
    }
    format!("`{}`", crate::text::cut_chars(text, QUOTE_CHARS))
}

/// The line a job is sent as: the fields of `job` (the `--exec` object)
/// with `id` first and `data` last, so that a shell handler can cut the id
/// out without a JSON parser: `id=${line%%,\"attempt\"*}; id=${id#\{\"id\":}`.
pub fn job_line(job: &Value) -> Vec<u8> {
    let mut line = b"{".to_vec();
    let Value::Object(fields) = job else {
        return serde_json::to_vec(job).unwrap_or_default();
    };
    let first = [
        "id",
        "attempt",
        "max_attempts",
        "priority",
        "queue",
        "deadline",
    ];
    let keys = first
        .iter()
        .copied()
        .filter(|k| fields.contains_key(*k))
        .chain(
            fields
                .keys()
                .map(String::as_str)
                .filter(|k| !first.contains(k) && *k != "data"),
        )
        .chain(fields.contains_key("data").then_some("data"));
    for (n, key) in keys.enumerate() {
        if n > 0 {
            line.push(b',');
        }
        let _ = serde_json::to_writer(&mut line, key);
        line.push(b':');
        let _ = serde_json::to_writer(&mut line, &fields[key]);
    }
    line.push(b'}');
    line
}

/// Reads one line (without its newline) of a handler's stdout.
pub fn parse(line: &[u8]) -> Result<Message, Violation> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        Violation::new(
            format!("stdout carries only protocol lines (print logs to stderr), and this is not JSON ({e})"),
            line,
        )
    })?;
    let Value::Object(object) = value else {
        return Err(Violation::new("a protocol line is a JSON object", line));
    };
    if object.get("ready").is_some() {
        return match object.get("ready") {
            Some(Value::Bool(true)) => Ok(Message::Ready),
            _ => Err(Violation::new("the handshake is {\"ready\": true}", line)),
        };
    }
    let id = object.get("id").cloned().ok_or_else(|| {
        Violation::new(
            "the line has no `id` (give the id of the job it is about)",
            line,
        )
    })?;
    if let Some(progress) = object.get("progress") {
        return progress_message(id, progress, &object, line);
    }
    if let Some(seconds) = object.get("pause") {
        if object.contains_key("ok") || object.contains_key("snooze") {
            return Err(Violation::new(
                "an answer is `ok`, `snooze` or `pause`, one of them",
                line,
            ));
        }
        let reason = match object.get("reason") {
            Some(Value::String(text)) => text.clone(),
            None | Some(Value::Null) => "paused by its handler".into(),
            Some(other) => other.to_string(),
        };
        return Ok(Message::Pause {
            id,
            seconds: seconds_of("pause", seconds, line)?,
            reason,
        });
    }
    if let Some(seconds) = object.get("snooze") {
        if object.contains_key("ok") {
            return Err(Violation::new(
                "an answer is `ok` or `snooze`, not both (a snooze is not a failure)",
                line,
            ));
        }
        return Ok(Message::Snooze {
            id,
            seconds: seconds_of("snooze", seconds, line)?,
        });
    }
    match object.get("ok") {
        Some(Value::Bool(true)) => Ok(Message::Done {
            id,
            result: object.get("result").cloned().unwrap_or(Value::Null),
        }),
        Some(Value::Bool(false)) => {
            let error = match object.get("error") {
                Some(Value::String(text)) => text.clone(),
                None | Some(Value::Null) => {
                    "the handler reported a failure without an error".into()
                }
                Some(other) => other.to_string(),
            };
            let retry = match object.get("retry") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(retry)) => *retry,
                Some(_) => {
                    return Err(Violation::new("`retry` must be true or false", line));
                }
            };
            let retry_after = match object.get("retry_after") {
                None | Some(Value::Null) => None,
                Some(value) => Some(seconds_of("retry_after", value, line)?),
            };
            Ok(Message::Failed {
                id,
                error,
                retry,
                retry_after,
            })
        }
        Some(_) => Err(Violation::new("`ok` must be true or false", line)),
        None => Err(Violation::new(
            "a line is an answer (with `ok`), a progress report (with `progress`) or the handshake",
            line,
        )),
    }
}

/// The longest wait an answer may ask for (a year): anything longer is a
/// unit mistake (milliseconds given as seconds), not a plan.
pub const MAX_WAIT_SECONDS: f64 = 365.0 * 86_400.0;

/// A wait in seconds, as `snooze` and `retry_after` give it.
fn seconds_of(field: &str, value: &Value, line: &[u8]) -> Result<f64, Violation> {
    value
        .as_f64()
        .filter(|s| (0.0..=MAX_WAIT_SECONDS).contains(s))
        .ok_or_else(|| {
            Violation::new(
                format!(
                    "`{field}` must be a number of seconds from 0 to {MAX_WAIT_SECONDS} (a year)"
                ),
                line,
            )
        })
}

fn progress_message(
    id: Value,
    progress: &Value,
    object: &Map<String, Value>,
    line: &[u8],
) -> Result<Message, Violation> {
    let fraction = progress
        .as_f64()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| Violation::new("`progress` must be a number from 0.0 to 1.0", line))?;
    let note = match object.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(Message::Progress { id, fraction, note })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(line: &str) -> Message {
        parse(line.as_bytes()).unwrap()
    }

    fn bad(line: &str) -> Violation {
        parse(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn the_handshake_answers_and_progress_parse() {
        assert_eq!(ok(r#"{"ready": true}"#), Message::Ready);
        assert_eq!(
            ok(r#"{"id": {"$oid": "ab"}, "ok": true, "result": [1]}"#),
            Message::Done {
                id: json!({"$oid": "ab"}),
                result: json!([1])
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "ok": true}"#),
            Message::Done {
                id: json!(7),
                result: Value::Null
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "ok": false, "error": "boom", "retry": false}"#),
            Message::Failed {
                id: json!(7),
                error: "boom".into(),
                retry: false,
                retry_after: None,
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "ok": false}"#),
            Message::Failed {
                id: json!(7),
                error: "the handler reported a failure without an error".into(),
                retry: true,
                retry_after: None,
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "ok": false, "error": "429", "retry_after": 2.5}"#),
            Message::Failed {
                id: json!(7),
                error: "429".into(),
                retry: true,
                retry_after: Some(2.5),
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "pause": 3, "reason": "429"}"#),
            Message::Pause {
                id: json!(7),
                seconds: 3.0,
                reason: "429".into()
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "snooze": 30}"#),
            Message::Snooze {
                id: json!(7),
                seconds: 30.0
            }
        );
        assert_eq!(
            ok(r#"{"id": 7, "progress": 0.5, "note": "half"}"#),
            Message::Progress {
                id: json!(7),
                fraction: 0.5,
                note: Some("half".into())
            }
        );
    }

    #[test]
    fn violations_say_why_and_quote_the_line() {
        let v = bad("hello from a stray print()");
        assert!(v.reason.contains("not JSON"), "{v}");
        assert_eq!(v.quote, "`hello from a stray print()`");
        assert!(bad(r#"{"id": 1, "ok": NaN}"#).reason.contains("not JSON"));
        assert!(bad(r#"{"id": 1, "progress": NaN}"#)
            .reason
            .contains("not JSON"));
        assert!(bad("[1, 2]").reason.contains("object"));
        assert!(bad(r#"{"ok": true}"#).reason.contains("no `id`"));
        assert!(bad(r#"{"id": 1, "ok": "yes"}"#).reason.contains("`ok`"));
        assert!(bad(r#"{"id": 1, "progress": 2}"#)
            .reason
            .contains("0.0 to 1.0"));
        assert!(bad(r#"{"id": 1, "ok": false, "retry": 1}"#)
            .reason
            .contains("`retry`"));
        assert!(bad(r#"{"id": 1}"#).reason.contains("an answer"));
        for wait in [r#""30s""#, "-1", "1e12", "null"] {
            assert!(
                bad(&format!(r#"{{"id": 1, "snooze": {wait}}}"#))
                    .reason
                    .contains("`snooze` must be a number of seconds"),
                "{wait}"
            );
        }
        assert!(bad(r#"{"id": 1, "ok": false, "retry_after": "soon"}"#)
            .reason
            .contains("`retry_after`"));
        assert!(bad(r#"{"id": 1, "ok": true, "snooze": 1}"#)
            .reason
            .contains("not both"));
        assert!(bad(r#"{"ready": false}"#).reason.contains("handshake"));
        assert_eq!(bad("").quote, "(an empty line)");
    }

    #[test]
    fn a_job_line_puts_id_first_and_data_last() {
        let job = json!({"data": {"x": [1, 2]}, "attempt": 1, "id": {"$oid": "ab"}, "queue": "q", "max_attempts": 5, "priority": 0});
        let line = String::from_utf8(job_line(&job)).unwrap();
        assert_eq!(
            line,
            r#"{"id":{"$oid":"ab"},"attempt":1,"max_attempts":5,"priority":0,"queue":"q","data":{"x":[1,2]}}"#
        );
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), job);
    }

    #[test]
    fn long_lines_are_quoted_by_their_start() {
        let line = "x".repeat(10_000);
        let v = bad(&line);
        assert!(v.quote.chars().count() < 130, "{}", v.quote);
        assert!(v.to_string().starts_with("protocol violation: "));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever bytes a handler writes, parsing never panics, and
            /// a violation always quotes something.
            #[test]
            fn any_line_parses_or_is_a_violation(line in prop::collection::vec(any::<u8>(), 0..200)) {
                match parse(&line) {
                    Ok(message) => prop_assert!(message.id().is_some() || message == Message::Ready),
                    Err(violation) => prop_assert!(!violation.quote.is_empty()),
                }
            }
        }
    }
}
