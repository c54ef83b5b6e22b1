//! When a schedule ticks: the pure next-tick function, unit-tested across
//! daylight-saving transitions without a server.
//!
//! A schedule is a cron expression read in an IANA time zone (parsed by
//! `croner`, zones from `chrono-tz`; neither is written by hand here), or a
//! fixed interval counted from an anchor. Ticks are nominal instants: an
//! interval's ticks are `anchor + k × interval`, never "the last run plus
//! the interval", so they do not drift and a restart does not reset them.
//!
//! Daylight saving, in the schedule's zone, as Vixie cron (Debian's `cron`,
//! the reference cron users know) handles it:
//! - a **fixed-time** entry (none of its seconds, minute and hour fields
//!   starts with `*`: `30 2 * * *`, `0,30 2 * * *`, `@daily`) runs at its
//!   wall-clock times once each: a time that occurs twice (the fall-back
//!   hour) runs at its first occurrence only, and a time that does not occur
//!   (the spring-forward gap) runs at the first instant after the gap;
//! - a **wildcard** entry (its minute or hour field starts with `*`, as in
//!   `30 * * * *`, `*/15 * * * *` or `@hourly`) follows real time: it runs
//!   whenever the wall clock shows a matching time, so an hourly job runs
//!   every hour (25 times on the fall-back day, 23 on the spring-forward
//!   day) and a time inside the gap is not run.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Timelike, Utc};
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
        /// A fixed-time entry (see the module doc), not a wildcard one.
        fixed: bool,
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
            fixed: fixed_time(expr),
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
    /// keeps a fixed-time entry's repeated wall-clock time (daylight
    /// saving's fall-back) from ticking twice. `None` when the expression
    /// never matches again.
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
            // Real time: croner runs a wildcard pattern at both instants of
            // a repeated wall-clock time and skips one inside a gap.
            Spec::Cron {
                zone,
                cron,
                fixed: false,
                ..
            } => cron
                .find_next_occurrence(&after.with_timezone(zone), false)
                .ok()
                .map(|next| next.with_timezone(&Utc)),
            Spec::Cron {
                zone,
                cron,
                fixed: true,
                ..
            } => next_fixed(cron, *zone, after, last),
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

/// Whether a cron expression is a fixed-time entry in Vixie cron's sense:
/// none of its seconds, minute and hour fields starts with `*` (or `?`).
/// Of the names, `@hourly` is a wildcard entry and the others are fixed.
fn fixed_time(expr: &str) -> bool {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let times: &[&str] = match fields.as_slice() {
        [name] if name.starts_with('@') => return !name.eq_ignore_ascii_case("@hourly"),
        [minute, hour, _, _, _] => &[minute, hour],
        [second, minute, hour, _, _, _] | [second, minute, hour, _, _, _, _] => {
            &[second, minute, hour]
        }
        _ => return false,
    };
    !times
        .iter()
        .any(|f| f.starts_with('*') || f.starts_with('?'))
}

/// The next tick of a fixed-time entry: the pattern's wall-clock times in
/// order, each at its first occurrence, one inside a gap at the first
/// instant after it, and none whose wall-clock time is not later than
/// `last`'s (a repeated hour runs once).
fn next_fixed(
    cron: &Cron,
    zone: Tz,
    after: DateTime<Utc>,
    last: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let local = |t: DateTime<Utc>| t.with_timezone(&zone).naive_local();
    let floor = last.map(local);
    // The pattern is matched against wall-clock times, which croner walks
    // as if they were UTC: a clock with no transitions.
    let mut wall = Utc.from_utc_datetime(&local(after));
    // A repeated hour of per-second times is 3,600 skips; the bound only
    // guards against a loop.
    for _ in 0..100_000 {
        wall = cron.find_next_occurrence(&wall, false).ok()?;
        let naive = wall.naive_utc();
        if floor.is_some_and(|floor| naive <= floor) {
            continue;
        }
        let instant = match zone.from_local_datetime(&naive) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
            LocalResult::None => after_gap(zone, naive)?,
        };
        let instant = instant.with_timezone(&Utc);
        if instant > after {
            return Some(instant);
        }
    }
    None
}

/// The first instant after the gap that the wall-clock time `naive` falls
/// in: zones change their offset on a whole minute, so the first whole
/// minute that exists again is where the gap ends.
fn after_gap(zone: Tz, naive: chrono::NaiveDateTime) -> Option<DateTime<Tz>> {
    let mut minute = naive.with_second(0)?.with_nanosecond(0)?;
    for _ in 0..24 * 60 {
        minute += chrono::Duration::minutes(1);
        if let Some(t) = zone.from_local_datetime(&minute).earliest() {
            return Some(t);
        }
    }
    None
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

    /// How many ticks fall in `(from, to]`.
    fn count(spec: &Spec, from: &str, to: &str) -> usize {
        let (mut last, to) = (at(from), at(to));
        let mut n = 0;
        while let Some(next) = spec.next_after(last, Some(last)) {
            if next > to {
                break;
            }
            n += 1;
            last = next;
        }
        n
    }

    fn cron(expr: &str, zone: &str) -> Spec {
        Spec::cron(expr, Some(zone)).unwrap()
    }

    #[test]
    fn fixed_time_entries_are_those_vixie_cron_treats_specially() {
        for fixed in [
            "30 2 * * *",
            "0,30 2 * * *",
            "30 1-3 * * 1",
            "0 30 2 * * *",
            "@daily",
        ] {
            assert!(fixed_time(fixed), "{fixed}");
        }
        for wildcard in [
            "30 * * * *",
            "*/15 * * * *",
            "*/15 3 * * *",
            "0 */2 * * *",
            "@hourly",
            "*/10 30 2 * * *",
        ] {
            assert!(!fixed_time(wildcard), "{wildcard}");
        }
    }

    #[test]
    fn berlin_fall_back_runs_a_fixed_time_once_and_a_wildcard_in_real_time() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00Z; 02:00-02:59
        // occurs twice.
        let daily = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&daily, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
        let twice_daily = cron("0,30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&twice_daily, "2026-10-24T23:45:00Z", 3),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST, and not again in CET
                "2026-10-26T01:00:00+00:00",
            ]
        );
        let half_hourly = cron("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&half_hourly, "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25T00:00:00+00:00", // 02:00 CEST
                "2026-10-25T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T01:00:00+00:00", // 02:00 CET
                "2026-10-25T01:30:00+00:00", // 02:30 CET
                "2026-10-25T02:00:00+00:00", // 03:00 CET
            ]
        );
        // The local day has 25 hours, and an hourly job runs in each.
        let hourly = cron("30 * * * *", "Europe/Berlin");
        let day = ("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");
        assert_eq!(count(&hourly, day.0, day.1), 25);
        assert_eq!(count(&cron("@hourly", "Europe/Berlin"), day.0, day.1), 25);
        // A daily job runs once that day all the same.
        assert_eq!(count(&daily, day.0, day.1), 1);
    }

    #[test]
    fn berlin_spring_forward_runs_a_fixed_time_after_the_gap_and_a_wildcard_in_real_time() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:00-02:59
        // never occurs.
        let daily = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&daily, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
        // Two skipped times run once, right after the gap.
        let twice_daily = cron("0,30 2 * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&twice_daily, "2026-03-28T12:00:00Z", 3),
            [
                "2026-03-29T01:00:00+00:00",
                "2026-03-30T00:00:00+00:00",
                "2026-03-30T00:30:00+00:00",
            ]
        );
        let half_hourly = cron("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            ticks(&half_hourly, "2026-03-29T00:15:00Z", 3),
            [
                "2026-03-29T00:30:00+00:00", // 01:30 CET
                "2026-03-29T01:00:00+00:00", // 03:00 CEST: 02:00, 02:30 never were
                "2026-03-29T01:30:00+00:00",
            ]
        );
        let hourly = cron("30 * * * *", "Europe/Berlin");
        let day = ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z");
        assert_eq!(count(&hourly, day.0, day.1), 23);
        assert_eq!(count(&daily, day.0, day.1), 1);
    }

    #[test]
    fn new_york_across_both_transitions() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00Z.
        let daily = cron("30 2 * * *", "America/New_York");
        assert_eq!(
            ticks(&daily, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00+00:00", "2026-03-09T06:30:00+00:00"]
        );
        let hourly = cron("30 * * * *", "America/New_York");
        assert_eq!(
            count(&hourly, "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
            23
        );
        assert_eq!(
            ticks(&hourly, "2026-03-08T06:00:00Z", 2),
            // 01:30 EST, then 03:30 EDT
            ["2026-03-08T06:30:00+00:00", "2026-03-08T07:30:00+00:00"]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00Z; 01:30
        // occurs twice.
        let daily = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            ticks(&daily, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
        assert_eq!(
            ticks(&hourly, "2026-11-01T05:00:00Z", 3),
            [
                "2026-11-01T05:30:00+00:00", // 01:30 EDT
                "2026-11-01T06:30:00+00:00", // 01:30 EST
                "2026-11-01T07:30:00+00:00", // 02:30 EST
            ]
        );
        assert_eq!(
            count(&hourly, "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"),
            25
        );
        // A time outside the transitions is unaffected: 09:00 local.
        let nine = cron("0 9 * * *", "America/New_York");
        assert_eq!(
            ticks(&nine, "2026-10-31T20:00:00Z", 2),
            ["2026-11-01T14:00:00+00:00", "2026-11-02T14:00:00+00:00"]
        );
    }

    #[test]
    fn lord_howe_shifts_by_half_an_hour() {
        // 2026-04-05: 02:00 LHDT (+11) falls back to 01:30 LHST (+10:30) at
        // 15:00Z on the 4th; 01:30-01:59 occurs twice.
        let fixed = cron("45 1 * * *", "Australia/Lord_Howe");
        assert_eq!(
            ticks(&fixed, "2026-04-04T12:00:00Z", 2),
            ["2026-04-04T14:45:00+00:00", "2026-04-05T15:15:00+00:00"]
        );
        let quarterly = cron("*/15 * * * *", "Australia/Lord_Howe");
        assert_eq!(
            ticks(&quarterly, "2026-04-04T14:40:00Z", 4),
            [
                "2026-04-04T14:45:00+00:00", // 01:45 LHDT
                "2026-04-04T15:00:00+00:00", // 01:30 LHST
                "2026-04-04T15:15:00+00:00", // 01:45 LHST
                "2026-04-04T15:30:00+00:00", // 02:00 LHST
            ]
        );
        // A 24.5-hour day: every half hour of the wall clock, 01:30 twice.
        let half_hourly = cron("0,30 * * * *", "Australia/Lord_Howe");
        assert_eq!(
            count(&half_hourly, "2026-04-04T13:00:00Z", "2026-04-05T13:30:00Z"),
            49
        );
        // 2026-10-04: 02:00 LHST jumps to 02:30 LHDT at 15:30Z on the 3rd.
        let fixed = cron("15 2 * * *", "Australia/Lord_Howe");
        assert_eq!(
            ticks(&fixed, "2026-10-03T12:00:00Z", 2),
            ["2026-10-03T15:30:00+00:00", "2026-10-04T15:15:00+00:00"]
        );
        // A 23.5-hour day: 02:00 never shows on the wall clock.
        let half_hourly = cron("*/30 * * * *", "Australia/Lord_Howe");
        assert_eq!(
            count(&half_hourly, "2026-10-03T13:30:00Z", "2026-10-04T13:00:00Z"),
            47
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
