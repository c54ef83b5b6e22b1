//! Human-written durations (`500ms`, `30s`, `5m`, `2h`, `7d`) for flags.
//!
//! Every duration flag goes through [`parse_duration`] so that all of them
//! accept the same spellings and reject the same mistakes with the same
//! message.

use std::time::Duration;

/// Parses a duration such as `250ms`, `30s`, `5m`, `2h` or `7d`.
///
/// A bare number is rejected rather than guessed at: `--lease 30` could mean
/// seconds or milliseconds, and a queue that guesses wrong holds leases a
/// thousand times too long or too short.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: write it like 500ms, 30s, 5m, 2h or 7d"))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` does not start with a number: write it like 500ms, 30s, 5m, 2h or 7d"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` in `{text}` is not a number"))?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a unit: use ms, s, m, h or d"
            ))
        }
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 100.0 * 365.0 * 86_400.0 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Formats a duration the way [`parse_duration`] reads it back, for logs and
/// `stats` output.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1_000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if millis < 3_600_000 {
        format!("{:.1}m", duration.as_secs_f64() / 60.0)
    } else if millis < 86_400_000 {
        format!("{:.1}h", duration.as_secs_f64() / 3600.0)
    } else {
        format!("{:.1}d", duration.as_secs_f64() / 86_400.0)
    }
}

/// A `MIN..MAX` range of durations, as `--simulate 1s..5s` takes; one
/// duration (`5ms`) is the range from it to itself.
pub fn parse_duration_range(text: &str) -> Result<(Duration, Duration), String> {
    let Some((low, high)) = text.split_once("..") else {
        let one = parse_duration(text)
            .map_err(|e| format!("{e} (give one duration like 5ms, or a range like 1s..5s)"))?;
        return Ok((one, one));
    };
    let low = parse_duration(low)?;
    let high = parse_duration(high)?;
    if low > high {
        return Err(format!("`{text}`: the minimum is larger than the maximum"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_mistakes_with_a_reason() {
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("s").unwrap_err().contains("number"));
        assert!(parse_duration("10 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400s").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_duration_range("1s..5s"),
            Ok((Duration::from_secs(1), Duration::from_secs(5)))
        );
        assert!(parse_duration_range("5s..1s").is_err());
        assert_eq!(
            parse_duration_range("5ms"),
            Ok((Duration::from_millis(5), Duration::from_millis(5)))
        );
        assert!(parse_duration_range("5")
            .unwrap_err()
            .contains("range like 1s..5s"));
        assert!(parse_duration_range("1s..").is_err());
    }

    #[test]
    fn formats_round_trip_roughly() {
        assert_eq!(format_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "1.5m");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases()))]

            /// Any flag value parses or is refused with a reason.
            #[test]
            fn any_text_parses_or_is_refused(text in "\\PC{0,16}|[0-9.]{0,12}(ms|s|m|h|d|x)?|[0-9]{1,5}\\.\\.[0-9]{1,5}s?") {
                if let Err(reason) = parse_duration(&text) {
                    prop_assert!(!reason.is_empty());
                }
                let _ = parse_duration_range(&text);
            }

            /// What `format_duration` writes, `parse_duration` reads back
            /// (to the precision written).
            #[test]
            fn formatted_durations_parse_back(millis in 0u64..10_000_000_000) {
                let duration = Duration::from_millis(millis);
                let back = parse_duration(&format_duration(duration)).unwrap();
                let error = back.as_secs_f64() - duration.as_secs_f64();
                prop_assert!(error.abs() <= duration.as_secs_f64() * 0.05 + 0.001, "{duration:?} → {back:?}");
            }
        }
    }
}
