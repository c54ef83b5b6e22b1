//! When a schedule ticks: the pure next-tick function, unit-tested across
//! daylight-saving transitions without a server.
//!
//! A schedule is a cron expression read in an IANA time zone (parsed by
//! `croner`, zones from `chrono-tz`; neither is written by hand here), or a
//! fixed interval counted from an anchor. Ticks are nominal instants: an
//! interval's ticks are `anchor + k × interval`, never "the last run plus
//! the interval", so they do not drift and a restart does not reset them.
//!
//! Daylight saving, in the schedule's zone:
//! - a wall-clock time that occurs twice (the fall-back hour) ticks once,
//!   at its first occurrence: a tick whose wall-clock time is not later
//!   than the previous tick's is skipped;
//! - a wall-clock time that does not occur (the spring-forward gap) ticks
//!   at the first instant after the gap.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Why a schedule's timing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--cron `{expr}` is not a cron expression ({reason}); give 5 fields (minute hour day-of-month month day-of-week), an optional 6th seconds field first, or a name such as @hourly")]
    Cron { expr: String, reason: String },
    #[error("--tz `{0}` is not an IANA time zone; give a name such as Europe/Berlin, America/New_York or UTC")]
    Zone(String),
    #[error("--every must be at least 1s")]
    Interval,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum Spec {
    /// A cron expression in a time zone.
    Cron {
        expr: String,
        zone: Tz,
        cron: Box<Cron>,
    },
    /// Every `interval`, at `anchor + k × interval`.
    Every {
        interval: Duration,
        anchor: DateTime<Utc>,
    },
}

impl Spec {
    /// A cron expression (5 fields, an optional leading seconds field, or
    /// `@hourly`-style names) read in `zone` (default UTC).
    pub fn cron(expr: &str, zone: Option<&str>) -> Result<Spec, SpecError> {
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| SpecError::Zone(name.to_string()))?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| SpecError::Cron {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Spec::Cron {
            expr: expr.to_string(),
            zone,
            cron: Box::new(cron),
        })
    }

    /// Every `interval` (at least a second), counted from `anchor`.
    pub fn every(interval: Duration, anchor: DateTime<Utc>) -> Result<Spec, SpecError> {
        if interval < Duration::from_secs(1) {
            return Err(SpecError::Interval);
        }
        Ok(Spec::Every { interval, anchor })
    }

    /// The first tick strictly after `after`. `last`, the previous tick,
    /// keeps a repeated wall-clock time (daylight saving's fall-back) from
    /// ticking twice. `None` when the expression never matches again.
    pub fn next_after(
        &self,
        after: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Spec::Every { interval, anchor } => {
                let step = i64::try_from(interval.as_millis()).ok()?.max(1);
                let since = (after - *anchor).num_milliseconds();
                let k = if since < 0 { 0 } else { since / step + 1 };
                Some(*anchor + chrono::Duration::milliseconds(k.checked_mul(step)?))
            }
            Spec::Cron { zone, cron, .. } => {
                let mut from = after.with_timezone(zone);
                let floor = last.map(|l| l.with_timezone(zone).naive_local());
                // A handful of skips covers a whole repeated hour of
                // per-minute ticks; the bound only guards against a loop.
                for _ in 0..100_000 {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    if floor.is_some_and(|floor| next.naive_local() <= floor) {
                        from = next;
                        continue;
                    }
                    return Some(next.with_timezone(&Utc));
                }
                None
            }
        }
    }

    /// The ticks after `last` up to and including `now`, oldest first, at
    /// most `max` of them (the latest ones when there are more).
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>, max: usize) -> Vec<DateTime<Utc>> {
        let mut ticks = std::collections::VecDeque::new();
        let mut previous = last;
        while let Some(next) = self.next_after(previous, Some(previous)) {
            if next > now {
                break;
            }
            ticks.push_back(next);
            if ticks.len() > max {
                ticks.pop_front();
            }
            previous = next;
        }
        ticks.into()
    }

    /// How the schedule reads, for lists: `cron 0 2 * * * (Europe/Berlin)`
    /// or `every 5m`.
    pub fn describe(&self) -> String {
        match self {
            Spec::Cron { expr, zone, .. } => format!("cron {expr} ({zone})"),
            Spec::Every { interval, .. } => {
                format!("every {}", crate::duration::format_duration(*interval))
            }
        }
    }
}

/// A UTC instant from milliseconds since the epoch (a BSON date's).
pub fn utc_millis(millis: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The ticks from `from` on, each computed from the one before.
    fn ticks(spec: &Spec, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut last = None;
        let mut after = at(from);
        for _ in 0..n {
            let next = spec.next_after(after, last).unwrap();
            out.push(next.to_rfc3339());
            last = Some(next);
            after = next;
        }
        out
    }

    #[test]
    fn intervals_count_from_their_anchor_and_do_not_drift() {
        let anchor = at("2026-01-01T00:00:00Z");
        let spec = Spec::every(Duration::from_secs(300), anchor).unwrap();
        // From any instant, the next tick is on the anchor's grid.
        assert_eq!(
            spec.next_after(at("2026-01-01T00:07:13Z"), None),
            Some(at("2026-01-01T00:10:00Z"))
        );
        assert_eq!(
            spec.next_after(at("2026-01-01T00:10:00Z"), None),
            Some(at("2026-01-01T00:15:00Z"))
        );
        assert_eq!(
            spec.next_after(at("2025-12-31T00:00:00Z"), None),
            Some(anchor)
        );
        assert!(Spec::every(Duration::from_millis(500), anchor).is_err());
    }

    #[test]
    fn cron_takes_five_fields_six_with_seconds_and_names() {
        let five = Spec::cron("30 2 * * *", None).unwrap();
        assert_eq!(
            five.next_after(at("2026-03-01T00:00:00Z"), None),
            Some(at("2026-03-01T02:30:00Z"))
        );
        let six = Spec::cron("*/10 * * * * *", None).unwrap();
        assert_eq!(
            six.next_after(at("2026-03-01T00:00:01Z"), None),
            Some(at("2026-03-01T00:00:10Z"))
        );
        let hourly = Spec::cron("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-03-01T00:00:00Z"), None),
            Some(at("2026-03-01T01:00:00Z"))
        );
        let error = Spec::cron("61 * * * *", None).unwrap_err().to_string();
        assert!(
            error.contains("`61 * * * *`") && error.contains("5 fields"),
            "{error}"
        );
        let error = Spec::cron("0 * * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("Mars/Olympus") && error.contains("IANA"),
            "{error}"
        );
    }

    #[test]
    fn berlin_fall_back_runs_a_repeated_wall_clock_time_once() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 occurs twice.
        let daily = Spec::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            ticks(&daily, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
        // Every 30 minutes: the repeated hour (02:00 and 02:30 again, in
        // CET) is not run a second time.
        let half_hourly = Spec::cron("*/30 * * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            ticks(&half_hourly, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                // 02:00 and 02:30 CET (01:00, 01:30 UTC) are skipped
                "2026-10-25T02:00:00+00:00", // 03:00 CET
                "2026-10-25T02:30:00+00:00",
                "2026-10-25T03:00:00+00:00",
            ]
        );
    }

    #[test]
    fn berlin_spring_forward_runs_a_skipped_time_right_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never occurs.
        let daily = Spec::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            ticks(&daily, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
    }

    #[test]
    fn new_york_across_both_transitions() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        let daily = Spec::cron("30 2 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            ticks(&daily, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 occurs twice.
        let daily = Spec::cron("30 1 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            ticks(&daily, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
        // A time outside the transitions is unaffected: 09:00 local.
        let nine = Spec::cron("0 9 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            ticks(&nine, "2026-10-31T20:00:00Z", 2),
            ["2026-11-01T14:00:00+00:00", "2026-11-02T14:00:00+00:00"]
        );
    }

    #[test]
    fn due_ticks_are_bounded_by_the_catch_up_limit() {
        let spec = Spec::every(Duration::from_secs(1), at("2026-01-01T00:00:00Z")).unwrap();
        let due = spec.due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:10.5Z"), 3);
        assert_eq!(
            due,
            [
                at("2026-01-01T00:00:08Z"),
                at("2026-01-01T00:00:09Z"),
                at("2026-01-01T00:00:10Z")
            ]
        );
        assert!(spec
            .due(at("2026-01-01T00:00:10Z"), at("2026-01-01T00:00:10.5Z"), 3)
            .is_empty());
    }
}
