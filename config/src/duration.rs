//! Durations, one grammar for all of ferry: Go's duration strings (`"30s"`, `"15m0s"`,
//! `"1h30m"`, `"1.5h"`, `"300ms"`), which is what config.toml holds (docs/configuration.md).
//! Values a job or the command line gives (`RUNNER_AFTER_SCRIPT_TIMEOUT`, `--timeout`,
//! `FERRY_TIMEOUT`, `--cache-max-age`) may also be a bare number of seconds (docs/variables.md,
//! docs/deploy.md, docs/commands.md).
//!
//! A job can send any string, so nothing here panics or overflows: magnitudes saturate, and each
//! caller decides whether "too large" is an error or "never".

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why a job's or the command line's duration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Empty or only spaces.
    Empty,
    /// Not a duration. `unknown_unit` is set when a number was followed by something that is not
    /// a unit (`10x` → `"x"`).
    Invalid { unknown_unit: Option<String> },
    /// Below zero.
    Negative,
    /// Longer than `std::time::Duration` can hold.
    TooLarge,
}

/// A syntax error in a Go duration string.
enum Malformed {
    Syntax,
    UnknownUnit(String),
}

/// Go's duration grammar: an optional sign, then `0` or one or more `<decimal number><unit>`
/// with the units `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`; a number may have a fraction
/// (`1.5h`, `.5s`). Signed nanoseconds; the fraction is exact (digit by digit, no floats) and
/// magnitudes saturate at `i128`'s range instead of failing.
fn go_nanos(s: &str) -> Result<i128, Malformed> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(Malformed::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(Malformed::Syntax);
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "" => return Err(Malformed::Syntax),
            other => return Err(Malformed::UnknownUnit(other.to_string())),
        };
        let mut value = saturating_decimal(int_part).saturating_mul(nanos_per);
        let mut scale = nanos_per;
        for d in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value = value.saturating_add(u128::from(d - b'0') * scale);
        }
        total = total.saturating_add(value);
        rest = after;
    }
    let total = i128::try_from(total).unwrap_or(i128::MAX);
    Ok(if negative { -total } else { total })
}

/// ASCII digits → number, saturating at `u128::MAX`.
fn saturating_decimal(digits: &str) -> u128 {
    digits.bytes().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    })
}

/// A Go duration string as config.toml holds it, in signed nanoseconds. Like Go's
/// `time.Duration`, the value must fit in 64 bits (about 292 years either way).
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let nanos = go_nanos(s).map_err(|_| {
        format!(
            "invalid duration {s:?} (expected a Go duration like \"30s\", \"15m0s\" or \"1h30m\")"
        )
    })?;
    if nanos.unsigned_abs() > i64::MAX as u128 {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(nanos)
}

/// A duration a job or the command line gives: a Go duration string or a bare number of seconds
/// (`"90"`, ferry's addition: Go itself accepts only `"0"` without a unit), spaces around it
/// ignored, never negative.
pub fn parse_job_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let bare = t.strip_prefix('+').unwrap_or(t);
    let nanos = if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        let n = saturating_decimal(bare).saturating_mul(NANOS_PER_SEC);
        i128::try_from(n).unwrap_or(i128::MAX)
    } else {
        go_nanos(t).map_err(|e| DurationError::Invalid {
            unknown_unit: match e {
                Malformed::UnknownUnit(u) => Some(u),
                Malformed::Syntax => None,
            },
        })?
    };
    if nanos < 0 {
        return Err(DurationError::Negative);
    }
    nanos_to_duration(nanos).ok_or(DurationError::TooLarge)
}

/// [`parse_job_duration`] for timeouts and ages where a value too large for a deadline means
/// "never" (docs/variables.md, `RUNNER_AFTER_SCRIPT_TIMEOUT`): too large → `Duration::MAX`;
/// empty, unreadable or negative → `None` (the caller's default applies).
pub fn parse_job_duration_saturating(text: &str) -> Option<Duration> {
    match parse_job_duration(text) {
        Ok(d) => Some(d),
        Err(DurationError::TooLarge) => Some(Duration::MAX),
        Err(_) => None,
    }
}

/// Non-negative nanoseconds → `Duration`; `None` when negative or longer than `Duration` holds.
pub fn nanos_to_duration(n: i128) -> Option<Duration> {
    if n < 0 {
        return None;
    }
    let secs = u64::try_from(n / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (n % 1_000_000_000) as u32))
}

/// `1m30s`-style text for log lines: whole hours, minutes and seconds, zero parts left out
/// (`1h`, `1h0m5s` is `1h5s`); under a second, milliseconds (`250ms`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let s = 1_000_000_000i128;
        assert_eq!(parse_go_duration("30s"), Ok(30 * s));
        assert_eq!(parse_go_duration("15m0s"), Ok(900 * s));
        assert_eq!(parse_go_duration("1h30m"), Ok(5400 * s));
        assert_eq!(parse_go_duration("1.5h"), Ok(5400 * s));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("-1s"), Ok(-s));
        assert_eq!(parse_go_duration("+1s"), Ok(s));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("2us"), Ok(2_000));
        assert_eq!(parse_go_duration("2µs"), Ok(2_000));
        assert_eq!(parse_go_duration(".5s"), Ok(s / 2));
        assert_eq!(parse_go_duration("1.000000001s"), Ok(s + 1));
        for bad in ["", "30", "1x", "s", "1.2.3s", "-", "h1", ".s", "1h ", "5m5"] {
            let e = parse_go_duration(bad).unwrap_err();
            assert!(e.starts_with("invalid duration"), "{bad:?}: {e}");
        }
        for huge in [
            "9999999999999h",
            // integer part fits in i128 nanoseconds, the fraction pushes it over
            "47261439850130342147690917.99999h",
            "99999999999999999999999999999999999999999999h",
            "-9223372036854775808ns",
        ] {
            let e = parse_go_duration(huge).unwrap_err();
            assert!(e.ends_with("is too large"), "{huge:?}: {e}");
        }
        assert_eq!(
            parse_go_duration("-9223372036854775807ns"),
            Ok(-9223372036854775807)
        );
    }

    #[test]
    fn job_durations_take_go_syntax_or_seconds() {
        let secs = Duration::from_secs;
        assert_eq!(parse_job_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_job_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_job_duration(" 90 "), Ok(secs(90)));
        assert_eq!(parse_job_duration("+5"), Ok(secs(5)));
        assert_eq!(parse_job_duration("0"), Ok(secs(0)));
        assert_eq!(parse_job_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_job_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_job_duration("  "), Err(DurationError::Empty));
        assert_eq!(parse_job_duration("-1s"), Err(DurationError::Negative));
        assert_eq!(
            parse_job_duration("10x"),
            Err(DurationError::Invalid {
                unknown_unit: Some("x".into())
            })
        );
        for bad in ["abc", "1.5", "5m5", "-", "1..2s"] {
            assert_eq!(
                parse_job_duration(bad),
                Err(DurationError::Invalid { unknown_unit: None }),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_job_duration("18446744073709551615"),
            Ok(secs(u64::MAX))
        );
        for huge in [
            "18446744073709551615h",
            "9999999999999999999m",
            "18446744073709551615s1s",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_job_duration(huge),
                Err(DurationError::TooLarge),
                "{huge}"
            );
        }
    }

    #[test]
    fn saturating_job_durations_never_panic() {
        let p = parse_job_duration_saturating;
        assert_eq!(p("5"), Some(Duration::from_secs(5)));
        assert_eq!(p("abc"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("-5m"), None);
        assert_eq!(p("99999999999999999999999h"), Some(Duration::MAX));
        assert_eq!(p("99999999999999999999999999999h"), Some(Duration::MAX));
        assert_eq!(p(&format!("{}s", "9".repeat(400))), Some(Duration::MAX));
        assert_eq!(p(&"9".repeat(400)), Some(Duration::MAX));
        // A long fraction stops at nanosecond precision.
        assert_eq!(
            p(&format!("1.{}h", "9".repeat(400))),
            Some(Duration::from_nanos(7_199_999_999_991))
        );
    }

    #[test]
    fn nanos_convert_to_durations() {
        assert_eq!(nanos_to_duration(-1), None);
        assert_eq!(
            nanos_to_duration(1_500_000_000),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(nanos_to_duration(i128::MAX), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(3605)), "1h5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
