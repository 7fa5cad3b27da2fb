//! Streaming secret masking for the job log.
//!
//! Three kinds of rules, applied in one left-to-right pass:
//!
//! * **phrases** (masked variable values, the job token, the runner token): every occurrence is
//!   replaced by `[MASKED]`; when several phrases start at the same byte the longest wins;
//! * **token prefixes** (`glpat-`, `glrt-`, `glcbt-`, ...): the prefix is kept and the run of
//!   `[A-Za-z0-9._=-]` bytes after it becomes `[MASKED]` (`glpat-abc` → `glpat-[MASKED]`), as
//!   gitlab-runner's `tokensanitizer` does; a prefix with nothing after it is left alone;
//! * **URL parameters** (`?private_token=`, `&X-Amz-Signature=`, ..., case-insensitive): the value
//!   up to the next `?`, `&`, whitespace or control byte becomes `[MASKED]`, as gitlab-runner's
//!   `urlsanitizer` does.
//!
//! The result does not depend on how the input is split into writes: at each position the masker
//! decides only when it has seen enough bytes to decide exactly as it would with the whole text,
//! and otherwise holds the undecided tail back (at most `longest pattern - 1` bytes) until more
//! data arrives or the log is closed. Phrases are checked before prefix rules at every position.

/// What replaces a secret.
pub(crate) const MASK: &[u8] = b"[MASKED]";

/// GitLab token prefixes masked by default: gitlab-runner's list with all default prefixes on,
/// plus `glrtr-` and `gltst-`. The one list: the plan's masks start from it, and job payloads
/// may add more through `features.token_mask_prefixes`.
pub const DEFAULT_TOKEN_PREFIXES: &[&str] = &[
    "glpat-",
    "gloas-",
    "gldt-",
    "glrt-",
    "glrtr-",
    "glcbt-",
    "glptt-",
    "glft-",
    "glimt-",
    "glagent-",
    "glsoat-",
    "glffct-",
    "gltst-",
    "_gitlab_session=",
    "gltok-",
];

/// URL query parameters whose values are masked (matched case-insensitively).
pub const URL_PARAM_KEYS: &[&str] = &[
    "private_token",
    "authenticity_token",
    "rss_token",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// Which bytes belong to the masked value that follows a prefix rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueClass {
    /// `[A-Za-z0-9._=-]`: the alphabet of GitLab tokens.
    Token,
    /// Anything but `?`, `&`, whitespace and control bytes: a URL parameter value.
    UrlValue,
}

impl ValueClass {
    fn contains(self, b: u8) -> bool {
        match self {
            ValueClass::Token => {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'=')
            }
            ValueClass::UrlValue => {
                !(b == b'?' || b == b'&' || b.is_ascii_whitespace() || b.is_ascii_control())
            }
        }
    }
}

#[derive(Debug, Clone)]
struct PrefixRule {
    pattern: Vec<u8>,
    ignore_case: bool,
    class: ValueClass,
    /// 1 for tokens (`glpat-` alone is not masked), 0 for URL parameters (an empty value is
    /// still replaced, like gitlab-runner does).
    min_value: usize,
}

impl PrefixRule {
    fn eq_prefix(&self, s: &[u8]) -> bool {
        let p = &self.pattern[..s.len()];
        if self.ignore_case {
            p.eq_ignore_ascii_case(s)
        } else {
            p == s
        }
    }
}

enum Decision {
    /// Nothing starts here.
    None,
    /// Cannot tell yet: more input may complete a pattern.
    Undecided,
    /// A phrase of this length starts here.
    Phrase(usize),
    /// A prefix rule with a pattern of this length starts here; its value follows.
    Prefix(usize, ValueClass),
}

/// A streaming masker. Feed it with [`Masker::push`], end with [`Masker::finish`].
#[derive(Debug, Clone)]
pub(crate) struct Masker {
    /// Longest first, so that the longest phrase starting at a position wins.
    phrases: Vec<Vec<u8>>,
    /// Longest pattern first, for the same reason.
    rules: Vec<PrefixRule>,
    /// Bytes that may start a phrase or a rule: everything else is copied without a lookup.
    first: [bool; 256],
    /// Input not decided yet (a possible start of a secret at the end of the data seen so far).
    pending: Vec<u8>,
    /// Set while dropping the value of a token or URL parameter (whose `[MASKED]` is already
    /// written): the value may go on in the next write.
    consuming: Option<ValueClass>,
}

impl Masker {
    /// The same rules with nothing held back: the masker of another stream of the log.
    pub(crate) fn fresh(&self) -> Masker {
        Masker {
            pending: Vec::new(),
            consuming: None,
            ..self.clone()
        }
    }

    /// `phrases`: values to replace wholesale (empty values are ignored). `token_prefixes`: token
    /// prefixes in addition to [`DEFAULT_TOKEN_PREFIXES`].
    pub(crate) fn new<S: AsRef<str>, P: AsRef<str>>(phrases: &[S], token_prefixes: &[P]) -> Self {
        let mut ps: Vec<Vec<u8>> = phrases
            .iter()
            .map(|p| p.as_ref().as_bytes().to_vec())
            .filter(|p| !p.is_empty())
            .collect();
        ps.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        ps.dedup();

        let mut prefixes: Vec<String> = DEFAULT_TOKEN_PREFIXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        prefixes.extend(
            token_prefixes
                .iter()
                .map(|p| p.as_ref().to_string())
                .filter(|p| !p.is_empty()),
        );
        prefixes.sort();
        prefixes.dedup();
        let mut rules: Vec<PrefixRule> = prefixes
            .into_iter()
            .map(|p| PrefixRule {
                pattern: p.into_bytes(),
                ignore_case: false,
                class: ValueClass::Token,
                min_value: 1,
            })
            .collect();
        for key in URL_PARAM_KEYS {
            for sep in ["?", "&"] {
                rules.push(PrefixRule {
                    pattern: format!("{sep}{key}=").into_bytes(),
                    ignore_case: true,
                    class: ValueClass::UrlValue,
                    min_value: 0,
                });
            }
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.pattern.len()));

        let mut first = [false; 256];
        for p in &ps {
            first[usize::from(p[0])] = true;
        }
        for r in &rules {
            let b = r.pattern[0];
            first[usize::from(b)] = true;
            if r.ignore_case {
                first[usize::from(b.to_ascii_lowercase())] = true;
                first[usize::from(b.to_ascii_uppercase())] = true;
            }
        }
        Masker {
            phrases: ps,
            rules,
            first,
            pending: Vec::new(),
            consuming: None,
        }
    }

    /// The most bytes the masker may hold back between writes.
    #[cfg(test)]
    pub(crate) fn max_pending(&self) -> usize {
        let p = self.phrases.first().map_or(0, |p| p.len());
        let r = self
            .rules
            .iter()
            .map(|r| r.pattern.len() + r.min_value)
            .max()
            .unwrap_or(0);
        p.max(r).saturating_sub(1)
    }

    /// Bytes currently held back.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Masks `input`, appending what can be decided to `out`.
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            let used = self.scan(input, out, false);
            self.pending.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(input);
            let used = self.scan(&buf, out, false);
            buf.drain(..used);
            self.pending = buf;
        }
    }

    /// No more input: decides the held-back tail.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.pending);
        let used = self.scan(&buf, out, true);
        debug_assert_eq!(used, buf.len());
        self.consuming = None;
    }

    /// Masks `buf` from its start; returns how many bytes were decided (the rest must be kept).
    fn scan(&mut self, buf: &[u8], out: &mut Vec<u8>, closed: bool) -> usize {
        let mut i = 0;
        // Start of the run of plain bytes not yet copied to `out`.
        let mut lit = 0;
        while i < buf.len() {
            if let Some(class) = self.consuming {
                while i < buf.len() && class.contains(buf[i]) {
                    i += 1;
                }
                lit = i;
                if i == buf.len() {
                    break;
                }
                self.consuming = None;
                continue;
            }
            if !self.first[usize::from(buf[i])] {
                i += 1;
                continue;
            }
            match self.decide(&buf[i..], closed) {
                Decision::None => i += 1,
                Decision::Undecided => break,
                Decision::Phrase(len) => {
                    out.extend_from_slice(&buf[lit..i]);
                    out.extend_from_slice(MASK);
                    i += len;
                    lit = i;
                }
                Decision::Prefix(len, class) => {
                    out.extend_from_slice(&buf[lit..i + len]);
                    out.extend_from_slice(MASK);
                    i += len;
                    lit = i;
                    self.consuming = Some(class);
                }
            }
        }
        out.extend_from_slice(&buf[lit..i]);
        i
    }

    fn decide(&self, s: &[u8], closed: bool) -> Decision {
        for p in &self.phrases {
            if s.len() >= p.len() {
                if s.starts_with(p) {
                    return Decision::Phrase(p.len());
                }
            } else if !closed && p.starts_with(s) {
                // A longer phrase may still match: wait, even if a shorter one already does.
                return Decision::Undecided;
            }
        }
        for r in &self.rules {
            let n = s.len().min(r.pattern.len());
            if !r.eq_prefix(&s[..n]) {
                continue;
            }
            if s.len() < r.pattern.len() + r.min_value {
                if closed {
                    continue;
                }
                return Decision::Undecided;
            }
            if r.min_value == 0 || r.class.contains(s[r.pattern.len()]) {
                return Decision::Prefix(r.pattern.len(), r.class);
            }
        }
        Decision::None
    }
}

/// Masks a whole text at once (what the streaming masker must produce for any split).
#[cfg(test)]
pub(crate) fn mask_all<S: AsRef<str>>(phrases: &[S], text: &[u8]) -> Vec<u8> {
    let mut m = Masker::new::<S, &str>(phrases, &[]);
    let mut out = Vec::new();
    m.push(text, &mut out);
    m.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(phrases: &[&str], text: &str) -> String {
        String::from_utf8(mask_all(phrases, text.as_bytes())).unwrap()
    }

    fn masked_in_pieces(phrases: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new::<&str, &str>(phrases, &[]);
        let mut out = Vec::new();
        for p in pieces {
            m.push(p.as_bytes(), &mut out);
        }
        m.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn phrases_are_replaced() {
        assert_eq!(
            masked(&["s3cr3tvalue"], "a s3cr3tvalue b s3cr3tvalue"),
            "a [MASKED] b [MASKED]"
        );
        assert_eq!(masked(&["s3cr3tvalue"], "s3cr3tvalu"), "s3cr3tvalu");
        assert_eq!(masked(&[""], "nothing"), "nothing");
    }

    #[test]
    fn the_longest_phrase_wins() {
        assert_eq!(
            masked(&["abcdefgh", "abcdefghijkl"], "xabcdefghijkly"),
            "x[MASKED]y"
        );
        assert_eq!(
            masked(&["abcdefgh", "abcdefghijkl"], "xabcdefghijy"),
            "x[MASKED]ijy"
        );
    }

    #[test]
    fn token_prefixes_keep_the_prefix() {
        assert_eq!(
            masked(&[], "token glpat-abc_DEF.1=2-3 end"),
            "token glpat-[MASKED] end"
        );
        assert_eq!(masked(&[], "glrt-t1_xyz\n"), "glrt-[MASKED]\n");
        assert_eq!(masked(&[], "glcbt-64_abcdef"), "glcbt-[MASKED]");
        assert_eq!(masked(&[], "glpat- alone"), "glpat- alone");
        assert_eq!(masked(&[], "ends with glpat-"), "ends with glpat-");
        assert_eq!(masked(&[], "glrtr-abc"), "glrtr-[MASKED]");
        assert_eq!(masked(&[], "gglpat-x"), "gglpat-[MASKED]");
    }

    #[test]
    fn extra_token_prefixes_from_the_payload() {
        let mut m = Masker::new::<&str, &str>(&[], &["mytok_"]);
        let mut out = Vec::new();
        m.push(b"a mytok_123 b", &mut out);
        m.finish(&mut out);
        assert_eq!(out, b"a mytok_[MASKED] b");
    }

    #[test]
    fn url_parameters() {
        assert_eq!(
            masked(&[], "GET https://x/y?private_token=abc&a=1 done"),
            "GET https://x/y?private_token=[MASKED]&a=1 done"
        );
        assert_eq!(
            masked(&[], "u?a=1&X-Amz-Signature=ff00&X-AMZ-CREDENTIAL=k/1/r\n"),
            "u?a=1&X-Amz-Signature=[MASKED]&X-AMZ-CREDENTIAL=[MASKED]\n"
        );
        assert_eq!(masked(&[], "x?rss_token=&b"), "x?rss_token=[MASKED]&b");
        assert_eq!(masked(&[], "private_token=abc"), "private_token=abc");
    }

    #[test]
    fn split_phrase_is_still_masked() {
        let phrases = ["supersecret123"];
        assert_eq!(
            masked_in_pieces(&phrases, &["echo super", "sec", "ret123 done"]),
            "echo [MASKED] done"
        );
        assert_eq!(
            masked_in_pieces(&phrases, &["s", "u", "p", "e", "r", "s", "ecret12", "3"]),
            "[MASKED]"
        );
        // A held-back partial match that turns out not to be a secret is released unchanged.
        assert_eq!(masked_in_pieces(&phrases, &["supersec", "X"]), "supersecX");
        assert_eq!(
            masked_in_pieces(&phrases, &["ends with supersecre"]),
            "ends with supersecre"
        );
    }

    #[test]
    fn split_token_is_still_masked() {
        assert_eq!(
            masked_in_pieces(&[], &["gl", "pa", "t-ab", "cd", "ef rest"]),
            "glpat-[MASKED] rest"
        );
        assert_eq!(
            masked_in_pieces(&[], &["?PRIVATE_TO", "KEN=ab", "c&x"]),
            "?PRIVATE_TOKEN=[MASKED]&x"
        );
    }

    #[test]
    fn only_a_possible_secret_start_is_held_back() {
        let mut m = Masker::new::<&str, &str>(&["supersecret123"], &[]);
        let mut out = Vec::new();
        m.push(b"line one\nline two\n", &mut out);
        assert_eq!(out, b"line one\nline two\n");
        assert_eq!(m.pending_len(), 0);
        m.push(b"almost supers", &mut out);
        assert_eq!(out, b"line one\nline two\nalmost ");
        assert_eq!(m.pending_len(), "supers".len());
        assert!(m.pending_len() <= m.max_pending());
        // A token value in progress is masked at once; its rest is dropped as it comes.
        m.push(b"X glpat-abc", &mut out);
        assert_eq!(out, b"line one\nline two\nalmost supersX glpat-[MASKED]");
        m.push(b"def\n", &mut out);
        m.finish(&mut out);
        assert_eq!(out, b"line one\nline two\nalmost supersX glpat-[MASKED]\n");
    }
}
