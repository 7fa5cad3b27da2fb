//! GitLab's CI/CD expression language (`rules:if`, `only/except:variables`), as
//! `Gitlab::Ci::Pipeline::Expression` evaluates it: `$VAR`, `"…"`/`'…'`, `null`, `/regex/flags`,
//! `==`, `!=`, `=~`, `!~`, `&&` (binds tighter than) `||`, and parentheses.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use indexmap::IndexMap;
use regex::Regex;

/// The variables an expression sees, by name.
pub type Vars = IndexMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Var(String),
    Str(String),
    Pattern(String),
    Null,
    Eq,
    Ne,
    Match,
    NoMatch,
    And,
    Or,
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let invalid = || format!("invalid expression syntax: {text}");
    while i < bytes.len() {
        let c = bytes[i];
        let rest = &text[i..];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'$' {
            let len = rest[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len == 0 {
                return Err(invalid());
            }
            out.push(Token::Var(rest[1..1 + len].to_string()));
            i += 1 + len;
        } else if c == b'"' || c == b'\'' {
            let end = rest[1..].find(c as char).ok_or_else(invalid)?;
            out.push(Token::Str(rest[1..1 + end].to_string()));
            i += end + 2;
        } else if c == b'/' {
            // up to the next unescaped `/`, then flags
            let mut j = 1;
            let rb = rest.as_bytes();
            while j < rb.len() && rb[j] != b'/' {
                j += if rb[j] == b'\\' { 2 } else { 1 };
            }
            if j >= rb.len() {
                return Err(invalid());
            }
            let flags = rest[j + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
            out.push(Token::Pattern(rest[..j + 1 + flags].to_string()));
            i += j + 1 + flags;
        } else if rest.starts_with("null")
            && !rest[4..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            out.push(Token::Null);
            i += 4;
        } else {
            let (tok, len) = match rest.get(..2) {
                Some("==") => (Token::Eq, 2),
                Some("!=") => (Token::Ne, 2),
                Some("=~") => (Token::Match, 2),
                Some("!~") => (Token::NoMatch, 2),
                Some("&&") => (Token::And, 2),
                Some("||") => (Token::Or, 2),
                _ => match c {
                    b'(' => (Token::Open, 1),
                    b')' => (Token::Close, 1),
                    _ => return Err(invalid()),
                },
            };
            out.push(tok);
            i += len;
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Expr {
    Var(String),
    Str(String),
    Pattern(String),
    Null,
    Cmp(Box<Expr>, Token, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self) -> String {
        format!("invalid expression syntax: {}", self.text)
    }
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.cmp()?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.cmp()?));
        }
        Ok(left)
    }
    fn cmp(&mut self) -> Result<Expr, String> {
        let left = self.primary()?;
        match self.peek() {
            Some(op @ (Token::Eq | Token::Ne | Token::Match | Token::NoMatch)) => {
                let op = op.clone();
                self.pos += 1;
                let right = self.primary()?;
                Ok(Expr::Cmp(Box::new(left), op, Box::new(right)))
            }
            _ => Ok(left),
        }
    }
    fn primary(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned().ok_or_else(|| self.err())?;
        self.pos += 1;
        Ok(match tok {
            Token::Var(v) => Expr::Var(v),
            Token::Str(s) => Expr::Str(s),
            Token::Pattern(p) => Expr::Pattern(p),
            Token::Null => Expr::Null,
            Token::Open => {
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.err());
                }
                self.pos += 1;
                inner
            }
            _ => return Err(self.err()),
        })
    }
}

/// A value during evaluation (Ruby's: a string, nil, a regexp, true/false).
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Null,
    Pattern(String),
    Bool(bool),
}

impl Val {
    /// Ruby truthiness (only nil and false are false).
    fn truthy(&self) -> bool {
        !matches!(self, Val::Null | Val::Bool(false))
    }
    /// `present?`: the statement's final answer (an empty string is not present).
    fn present(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::Null | Val::Bool(false) => false,
            _ => true,
        }
    }
}

/// Parse `/pattern/flags` into a regex (RE2 syntax, as GitLab's untrusted regexps). Compiled
/// regexes are kept (a pipeline repeats the same few in every job's rules).
pub fn pattern_regex(literal: &str) -> Result<Regex, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(re) = cache.lock().ok().and_then(|c| c.get(literal).cloned()) {
        return Ok(re);
    }
    let re = compile_pattern(literal)?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= 1024 {
            c.clear();
        }
        c.insert(literal.to_string(), re.clone());
    }
    Ok(re)
}

fn compile_pattern(literal: &str) -> Result<Regex, String> {
    let inner = literal
        .strip_prefix('/')
        .and_then(|s| s.rfind('/').map(|end| (&s[..end], &s[end + 1..])))
        .ok_or_else(|| format!("invalid regular expression: {literal}"))?;
    let (body, flags) = inner;
    let mut prefix = String::new();
    for f in flags.chars() {
        match f {
            'i' => prefix.push_str("(?i)"),
            'm' => prefix.push_str("(?s)"),
            'x' => prefix.push_str("(?x)"),
            _ => return Err(format!("invalid regular expression flags: {literal}")),
        }
    }
    // `\/` in the literal is a plain slash
    let body = body.replace("\\/", "/");
    Regex::new(&format!("{prefix}{body}")).map_err(|e| {
        // the regex crate's message spans lines; its last line is the reason
        let e = e.to_string();
        let reason = e.lines().last().unwrap_or("").trim_start_matches("error: ");
        format!("invalid regular expression {literal}: {reason}")
    })
}

fn eval(e: &Expr, vars: &Vars) -> Result<Val, String> {
    Ok(match e {
        Expr::Var(name) => vars.get(name).map_or(Val::Null, |v| Val::Str(v.clone())),
        Expr::Str(s) => Val::Str(s.clone()),
        Expr::Pattern(p) => Val::Pattern(p.clone()),
        Expr::Null => Val::Null,
        Expr::And(l, r) => {
            let left = eval(l, vars)?;
            if left.truthy() { eval(r, vars)? } else { left }
        }
        Expr::Or(l, r) => {
            let left = eval(l, vars)?;
            if left.truthy() { left } else { eval(r, vars)? }
        }
        Expr::Cmp(l, op, r) => {
            let left = eval(l, vars)?;
            let right = eval(r, vars)?;
            match op {
                Token::Eq => Val::Bool(left == right),
                Token::Ne => Val::Bool(left != right),
                Token::Match | Token::NoMatch => {
                    let want = *op == Token::Match;
                    let regex = match right {
                        Val::Null => return Ok(Val::Bool(!want)),
                        Val::Pattern(p) => pattern_regex(&p)?,
                        // a variable holding a pattern: `/…/` is a regex, anything else is
                        // matched literally
                        Val::Str(s) => match pattern_regex(&s) {
                            Ok(re) if s.starts_with('/') => re,
                            _ => Regex::new(&regex::escape(&s)).map_err(|e| e.to_string())?,
                        },
                        Val::Bool(_) => return Err("invalid right operand of =~".into()),
                    };
                    let text = match left {
                        Val::Str(s) => s,
                        _ => String::new(),
                    };
                    Val::Bool(regex.is_match(&text) == want)
                }
                _ => unreachable!("only comparison tokens"),
            }
        }
    })
}

/// Whether `text` (a `rules:if` or `only:variables` expression) is true for `vars`.
pub fn evaluate(text: &str, vars: &Vars) -> Result<bool, String> {
    let tokens = lex(text)?;
    if tokens.is_empty() {
        return Err(format!("invalid expression syntax: {text}"));
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        text,
    };
    let expr = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(parser.err());
    }
    Ok(eval(&expr, vars)?.present())
}

/// Check an expression's syntax (and its regexps) without variables.
pub fn validate(text: &str) -> Result<(), String> {
    for t in lex(text)? {
        if let Token::Pattern(p) = t {
            pattern_regex(&p)?;
        }
    }
    evaluate(text, &Vars::new()).map(|_| ())
}

/// `$VAR`, `${VAR}` (and `%VAR%`) replaced by their values, unknown ones by nothing, as
/// GitLab expands paths in `include`, `rules:changes` and `rules:exists`.
pub fn expand_str(text: &str, vars: &Vars) -> String {
    expand(text, vars, false)
}

/// Like [`expand_str`], but a variable `vars` lacks is left as written (for text another
/// expander, GitLab's, reads after ferry: it may know the variable).
pub fn expand_known(text: &str, vars: &Vars) -> String {
    expand(text, vars, true)
}

fn expand(text: &str, vars: &Vars, keep_unknown: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['$', '%']) {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if rest.as_bytes()[i] == b'%' {
            match after.find('%') {
                Some(end)
                    if end > 0
                        && after[..end]
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    (&after[..end], end + 2)
                }
                _ => ("", 0),
            }
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 3),
                None => ("", 0),
            }
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&after[..len], len + 1)
        };
        if name.is_empty() || consumed == 0 {
            out.push(rest.as_bytes()[i] as char);
            rest = after;
        } else {
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None if keep_unknown => out.push_str(&rest[i..i + consumed]),
                None => {}
            }
            rest = &rest[i + consumed..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn gitlab_documented_expressions() {
        let v = vars(&[
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_PIPELINE_SOURCE", "push"),
            ("EMPTY", ""),
            ("PATTERN", "/^ma/"),
            ("CI_COMMIT_MESSAGE", "Fix: thing [skip tests]"),
        ]);
        let t = |e: &str| evaluate(e, &v).unwrap();
        assert!(t("$CI_COMMIT_BRANCH == \"main\""));
        assert!(t(
            "$CI_COMMIT_BRANCH == 'main' && $CI_PIPELINE_SOURCE != 'schedule'"
        ));
        assert!(!t("$CI_COMMIT_TAG"));
        assert!(!t("$EMPTY"));
        assert!(t("$CI_COMMIT_TAG == null"));
        assert!(!t("$CI_COMMIT_BRANCH == null"));
        assert!(t("$CI_COMMIT_BRANCH =~ /^MA/i"));
        assert!(t("$CI_COMMIT_BRANCH =~ $PATTERN"));
        assert!(!t("$CI_COMMIT_BRANCH !~ $PATTERN"));
        assert!(t("$CI_COMMIT_MESSAGE =~ /\\[skip tests\\]/"));
        assert!(!t("$UNDEFINED =~ /x/"));
        assert!(t("$UNDEFINED !~ /x/"));
        assert!(t(
            "$CI_COMMIT_TAG || ($CI_COMMIT_BRANCH == \"main\" && $CI_PIPELINE_SOURCE == \"push\")"
        ));
        assert!(!t(
            "($CI_COMMIT_TAG || $CI_COMMIT_BRANCH == \"dev\") && $CI_PIPELINE_SOURCE"
        ));
        // && binds tighter than ||
        assert!(t("$CI_COMMIT_BRANCH || $X && $Y"));
        assert!(t("$CI_COMMIT_BRANCH =~ /ma\\/?in/"));
    }

    #[test]
    fn bad_expressions_are_errors() {
        for bad in [
            "$A ==",
            "($A",
            "$A = 'x'",
            "'unterminated",
            "$A =~ /(/",
            "$",
        ] {
            assert!(evaluate(bad, &Vars::new()).is_err(), "{bad}");
        }
        assert!(validate("$A =~ /[/").is_err());
    }

    #[test]
    fn expansion() {
        let v = vars(&[("DIR", "ci"), ("N", "x")]);
        assert_eq!(
            expand_str("$DIR/${N}.yml %N% $NOPE 100%", &v),
            "ci/x.yml x  100%"
        );
        assert_eq!(
            expand_known("$DIR/${N}.yml ${NOPE} $NOPE/%NOPE% 100%", &v),
            "ci/x.yml ${NOPE} $NOPE/%NOPE% 100%"
        );
    }
}
