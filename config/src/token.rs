//! The two short forms of a runner token. They differ on purpose:
//!
//! * [`display_prefix`]: how ferry names a token in its own log lines, command output and error
//!   messages: the first 8 characters, followed by `…` (`glrt-abc…`). It keeps the prefix, so
//!   little of the secret part shows (docs/gitlab-api.md, "Secrets"; docs/commands.md).
//! * [`ci_short_token`]: gitlab-runner's short token, which jobs see as `CI_RUNNER_SHORT_TOKEN`
//!   (docs/variables.md) and which names the runner's host directories and Docker resources
//!   (`runner-<short>-…`, docs/docker-executor.md, docs/security.md).

/// The first 8 characters of a token (`glrt-abc`), what ferry shows, followed by `…`, wherever
/// a token must be named. The whole token when it is shorter.
pub fn display_prefix(token: &str) -> &str {
    match token.char_indices().nth(8) {
        Some((i, _)) => &token[..i],
        None => token,
    }
}

/// gitlab-runner's short token (its `ShortenToken`, also its runners' `ShortDescription`):
///
/// 1. one known prefix is removed: `glrt-` with an optional partition prefix `t1_`/`t2_`/`t3_`
///    after it, or a partition prefix alone, or `glrtr-`;
/// 2. then `glcbt-` (job tokens);
/// 3. then `GR` followed by 7 hex digits (old registration tokens);
/// 4. the first 9 characters of what is left.
pub fn ci_short_token(token: &str) -> &str {
    fn partition(t: &str) -> Option<&str> {
        ["t1_", "t2_", "t3_"].iter().find_map(|p| t.strip_prefix(p))
    }
    let mut t = token;
    if let Some(rest) = t.strip_prefix("glrt-") {
        t = partition(rest).unwrap_or(rest);
    } else if let Some(rest) = partition(t).or_else(|| t.strip_prefix("glrtr-")) {
        t = rest;
    }
    t = t.strip_prefix("glcbt-").unwrap_or(t);
    let b = t.as_bytes();
    if b.len() >= 9 && b.starts_with(b"GR") && b[2..9].iter().all(u8::is_ascii_hexdigit) {
        t = &t[9..];
    }
    match t.char_indices().nth(9) {
        Some((i, _)) => &t[..i],
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prefix_is_the_first_8_characters() {
        assert_eq!(display_prefix("glrt-abcdefghijkl"), "glrt-abc");
        assert_eq!(display_prefix("abc"), "abc");
        assert_eq!(display_prefix(""), "");
        assert_eq!(display_prefix("ééééééééé"), "éééééééé");
    }

    #[test]
    fn ci_short_token_strips_known_prefixes_like_gitlab_runner() {
        for (token, short) in [
            // no prefix
            ("short", "short"),
            ("veryverylongtoken", "veryveryl"),
            // partition prefix only
            ("t1_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("t2_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("t3_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("t4_t9Wkyj-HGRkqQ-VWTGAr", "t4_t9Wkyj"),
            // glrt prefix, with and without partition prefix
            ("glrt-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("glrt-t1_t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("glrt-abcdefghijklmnop", "abcdefghi"),
            // glrtr prefix; a partition prefix after it is kept
            ("glrtr-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("glrtr-t1_t9Wkyj-HGRkqQ-VWTGAr", "t1_t9Wkyj"),
            // glcbt prefix; a partition prefix after it is kept
            ("glcbt-t9Wkyj-HGRkqQ-VWTGAr", "t9Wkyj-HG"),
            ("glcbt-t2_t9Wkyj-HGRkqQ-VWTGAr", "t2_t9Wkyj"),
            // old registration token, with and without the 7 hex digit rotation date
            ("GR1348941Z196cJVywzZpx_Ki_Cn2", "Z196cJVyw"),
            ("GR134894-196cJVywzZpx_Ki_Cn2", "GR134894-"),
            ("GR1348941abcdefghijk", "abcdefghi"),
            // never panics inside a multi-byte character
            ("GR123456é7890", "GR123456é"),
            ("", ""),
        ] {
            assert_eq!(ci_short_token(token), short, "{token}");
        }
    }
}
