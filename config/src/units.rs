//! Value syntaxes gitlab-runner borrowed from Go: memory sizes (docker/go-units `RAMInBytes`),
//! `os.ExpandEnv`, TOML datetimes as Unix seconds. Go duration strings: `crate::duration`.

use toml_edit::{Date, Datetime, Offset, Time};

/// `"512m"`, `"2g"`, `"1.5GiB"`, `"1024"` → bytes, with binary multipliers as Docker uses them
/// (`k` = 1024). Mirrors go-units `RAMInBytes`: `^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$`.
pub(crate) fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {s:?} (expected a number with an optional unit b, k, m, g, t, p, like \"512m\")"
        )
    };
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, mut rest) = s.split_at(digits_end);
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    rest = rest.strip_prefix(' ').unwrap_or(rest);
    let mut chars = rest.chars().peekable();
    let mut mult: f64 = 1.0;
    if let Some(c) = chars.peek().copied() {
        let exp = match c.to_ascii_lowercase() {
            'k' => Some(1),
            'm' => Some(2),
            'g' => Some(3),
            't' => Some(4),
            'p' => Some(5),
            _ => None,
        };
        if let Some(e) = exp {
            mult = 1024f64.powi(e);
            chars.next();
        }
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'i')) {
        chars.next();
    }
    if chars.peek().is_some_and(|c| c.eq_ignore_ascii_case(&'b')) {
        chars.next();
    }
    if chars.next().is_some() {
        return Err(bad());
    }
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Go's "zero time", which gitlab-runner writes for "never expires".
pub(crate) fn is_go_zero_time(d: &Datetime) -> bool {
    matches!(
        (d.date, d.time),
        (
            Some(Date {
                year: 1,
                month: 1,
                day: 1
            }),
            Some(Time {
                hour: 0,
                minute: 0,
                second: None | Some(0),
                nanosecond: None | Some(0)
            })
        )
    ) && matches!(
        d.offset,
        None | Some(Offset::Z) | Some(Offset::Custom { minutes: 0 })
    )
}

/// A TOML datetime → Unix seconds. A datetime without offset is taken as UTC.
pub(crate) fn datetime_to_unix(d: &Datetime) -> Result<i64, String> {
    let (Some(date), Some(time)) = (d.date, d.time) else {
        return Err(format!(
            "expected a date and a time (like 2025-03-04T10:15:00Z), found {d}"
        ));
    };
    let days = days_from_civil(i64::from(date.year), date.month.into(), date.day.into());
    let mut secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        // TOML 1.1 lets the seconds out (`10:15`).
        + i64::from(time.second.unwrap_or(0));
    if let Some(Offset::Custom { minutes }) = d.offset {
        secs -= i64::from(minutes) * 60;
    }
    Ok(secs)
}

/// Unix seconds → a UTC TOML datetime (`2025-03-04T10:15:00Z`).
pub(crate) fn unix_to_datetime(secs: i64) -> Datetime {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Datetime {
        date: Some(Date {
            year: y.clamp(0, 9999) as u16,
            month: m as u8,
            day: d as u8,
        }),
        time: Some(Time {
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: Some((rem % 60) as u8),
            nanosecond: None,
        }),
        offset: Some(Offset::Z),
    }
}

/// The "never expires" datetime, `0001-01-01T00:00:00Z`.
pub(crate) fn go_zero_time() -> Datetime {
    Datetime {
        date: Some(Date {
            year: 1,
            month: 1,
            day: 1,
        }),
        time: Some(Time {
            hour: 0,
            minute: 0,
            second: Some(0),
            nanosecond: None,
        }),
        offset: Some(Offset::Z),
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's `os.ExpandEnv`: `$VAR` and `${VAR}` are replaced by the variable's value (empty when
/// unset); a `$` not followed by a name stays as it is. Returns the result and the names of
/// the variables that were not set.
pub(crate) fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if after.is_empty() {
            out.push('$');
            rest = after;
            break;
        }
        let (name, width) = shell_name(after);
        if name.is_empty() {
            if width == 0 {
                out.push('$');
            }
        } else {
            match env(name) {
                Some(v) => out.push_str(&v),
                None => unset.push(name.to_string()),
            }
        }
        rest = &after[width..];
    }
    out.push_str(rest);
    (out, unset)
}

fn is_special(c: u8) -> bool {
    matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || c.is_ascii_digit()
}

fn is_alnum(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `getShellName`: the name after a `$` and how many bytes it used.
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..b.len() {
            if b[i] == b'}' {
                if i == 1 {
                    return ("", 2); // "${}" is bad syntax: eaten
                }
                return (&s[1..i], i + 1);
            }
        }
        return ("", 1); // no closing brace: the "{" is eaten
    }
    if is_special(b[0]) {
        return (&s[0..1], 1);
    }
    let n = b.iter().take_while(|c| is_alnum(**c)).count();
    (&s[..n], n)
}

/// `listen_address` without a port gets gitlab-runner's metrics port 9252.
pub(crate) fn with_default_port(addr: &str, port: u16) -> String {
    if addr.starts_with('[') {
        // [::1] or [::1]:9252
        if addr.contains("]:") {
            return addr.to_string();
        }
        return format!("{addr}:{port}");
    }
    match addr.matches(':').count() {
        0 => format!("{addr}:{port}"),
        1 => {
            if addr.ends_with(':') {
                format!("{addr}{port}")
            } else {
                addr.to_string()
            }
        }
        _ => format!("[{addr}]:{port}"), // a bare IPv6 address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_binary_like_docker() {
        assert_eq!(parse_memory("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("2g"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_memory("2G"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_memory("4096k"), Ok(4096 * 1024));
        assert_eq!(parse_memory("1.5g"), Ok(1536 * 1024 * 1024));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("100b"), Ok(100));
        assert_eq!(parse_memory("1GiB"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_memory("1 mb"), Ok(1024 * 1024));
        for bad in ["", "m", "-1", "12x", "1g1", "1..2m", " 1m", "1gg"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_memory("99999999999p").is_err());
    }

    #[test]
    fn datetimes_round_trip_through_unix_seconds() {
        let d: Datetime = "2025-03-04T10:15:00Z".parse().unwrap();
        assert_eq!(datetime_to_unix(&d), Ok(1_741_083_300));
        assert_eq!(
            unix_to_datetime(1_741_083_300).to_string(),
            "2025-03-04T10:15:00Z"
        );
        let off: Datetime = "2025-03-04T12:15:00+02:00".parse().unwrap();
        assert_eq!(datetime_to_unix(&off), Ok(1_741_083_300));
        assert_eq!(
            datetime_to_unix(&"1970-01-01T00:00:00Z".parse().unwrap()),
            Ok(0)
        );
        assert!(datetime_to_unix(&"2025-03-04".parse().unwrap()).is_err());
        assert!(is_go_zero_time(&"0001-01-01T00:00:00Z".parse().unwrap()));
        assert!(!is_go_zero_time(&"0001-01-01T00:00:01Z".parse().unwrap()));
        assert_eq!(go_zero_time().to_string(), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn env_expansion_follows_go_expandenv() {
        let env = |k: &str| match k {
            "TOKEN" => Some("glrt-abc".to_string()),
            "HOST" => Some("gitlab.example.com".to_string()),
            _ => None,
        };
        assert_eq!(expand_env("${TOKEN}", &env), ("glrt-abc".into(), vec![]));
        assert_eq!(expand_env("$TOKEN", &env), ("glrt-abc".into(), vec![]));
        assert_eq!(
            expand_env("https://$HOST/x", &env),
            ("https://gitlab.example.com/x".into(), vec![])
        );
        assert_eq!(
            expand_env("${NOPE}x", &env),
            ("x".into(), vec!["NOPE".into()])
        );
        assert_eq!(expand_env("a$", &env), ("a$".into(), vec![]));
        assert_eq!(expand_env("a$/b", &env), ("a$/b".into(), vec![]));
        assert_eq!(expand_env("a${}b", &env), ("ab".into(), vec![]));
        assert_eq!(expand_env("plain", &env), ("plain".into(), vec![]));
        assert_eq!(expand_env("é$TOKEN€", &env), ("églrt-abc€".into(), vec![]));
    }

    #[test]
    fn listen_address_gets_port_9252() {
        assert_eq!(with_default_port("127.0.0.1", 9252), "127.0.0.1:9252");
        assert_eq!(with_default_port("127.0.0.1:9000", 9252), "127.0.0.1:9000");
        assert_eq!(with_default_port(":9000", 9252), ":9000");
        assert_eq!(with_default_port("localhost:", 9252), "localhost:9252");
        assert_eq!(with_default_port("[::1]", 9252), "[::1]:9252");
        assert_eq!(with_default_port("[::1]:1", 9252), "[::1]:1");
        assert_eq!(with_default_port("::1", 9252), "[::1]:9252");
    }
}
