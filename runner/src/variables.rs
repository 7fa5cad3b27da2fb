//! Job variables: the runner's own predefined variables, `[[runners]] environment`, the payload's
//! variables, and their expansion as gitlab-runner does it (Go's `os.Expand` over the variable
//! list, last definition wins, `raw` values untouched, file variables expand to their path).

use serde::Serialize;

/// One variable as the job sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    /// Written to a file whose path the variable holds (`RUNNER_TEMP_PROJECT_DIR/<KEY>`).
    pub file: bool,
    /// Its value must never appear in the job log.
    pub masked: bool,
    /// Not expanded.
    pub raw: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.masked {
            "[MASKED]"
        } else {
            self.value.as_str()
        };
        write!(f, "{}={value:?}", self.key)?;
        if self.file {
            write!(f, " (file)")?;
        }
        Ok(())
    }
}

impl Serialize for Variable {
    /// Masked values are written as `[MASKED]`, so a serialized plan never holds a secret.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Variable", 5)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("value", if self.masked { "[MASKED]" } else { &self.value })?;
        st.serialize_field("file", &self.file)?;
        st.serialize_field("masked", &self.masked)?;
        st.serialize_field("raw", &self.raw)?;
        st.end()
    }
}

impl Variable {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Variable {
            key: key.into(),
            value: value.into(),
            file: false,
            masked: false,
            raw: false,
        }
    }
}

/// An ordered list of variables; later entries override earlier ones with the same key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Variables {
    list: Vec<Variable>,
    /// Where file variables are written in the job's environment (RUNNER_TEMP_PROJECT_DIR).
    #[serde(skip)]
    file_dir: Option<String>,
}

impl Variables {
    pub fn new() -> Self {
        Self::default()
    }

    /// File variables' paths are `<dir>/<KEY>`.
    pub fn with_file_dir(mut self, dir: impl Into<String>) -> Self {
        self.file_dir = Some(dir.into());
        self
    }

    pub fn push(&mut self, v: Variable) {
        self.list.push(v);
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.push(Variable::new(key, value));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Variable> {
        self.list.iter()
    }

    /// The last definition of `key`.
    pub fn find(&self, key: &str) -> Option<&Variable> {
        self.list.iter().rev().find(|v| v.key == key)
    }

    /// The value of `key` as a reference in another value sees it (file variables: their path).
    pub fn get(&self, key: &str) -> Option<String> {
        let v = self.find(key)?;
        if v.file
            && let Some(dir) = &self.file_dir
        {
            return Some(format!("{dir}/{}", v.key));
        }
        Some(v.value.clone())
    }

    /// The plain value of `key` (file variables: their contents).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.find(key).map(|v| v.value.as_str())
    }

    /// gitlab-runner's boolean reading: true/false (any case), or "1".
    pub fn bool(&self, key: &str) -> bool {
        match self.value(key) {
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" => true,
                "false" | "f" | "0" | "" => false,
                other => other.parse::<i64>().map(|n| n == 1).unwrap_or(false),
            },
            None => false,
        }
    }

    /// Expand `$VAR`/`${VAR}` in `text` against these variables.
    pub fn expand(&self, text: &str) -> String {
        expand_with(text, |name| self.get(name))
    }

    /// Every non-raw value expanded once (references see the unexpanded list, as in gitlab-runner).
    pub fn expanded(&self) -> Variables {
        let list = self
            .list
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if !v.raw {
                    v.value = self.expand(&v.value);
                }
                v
            })
            .collect();
        Variables {
            list,
            file_dir: self.file_dir.clone(),
        }
    }

    /// One entry per key (the last definition), in first-appearance order.
    pub fn deduplicated(&self) -> Vec<&Variable> {
        let mut out: Vec<&Variable> = Vec::new();
        for v in &self.list {
            if let Some(slot) = out.iter_mut().find(|o| o.key == v.key) {
                *slot = v;
            } else {
                out.push(v);
            }
        }
        out
    }

    /// Values the job log must never show.
    pub fn masked_values(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .list
            .iter()
            .filter(|v| v.masked && !v.value.is_empty())
            .map(|v| v.value.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_alnum(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// The name after a `$` and how many bytes it takes (Go's `getShellName`).
fn shell_name(s: &[u8]) -> (&[u8], usize) {
    if s[0] == b'{' {
        if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..s.len() {
            if s[i] == b'}' {
                if i == 1 {
                    return (&[], 2); // "${}": bad syntax, eaten
                }
                return (&s[1..i], i + 1);
            }
        }
        return (&[], 1); // no closing brace: "${" eaten
    }
    if is_special(s[0]) {
        return (&s[0..1], 1);
    }
    let mut i = 0;
    while i < s.len() && is_alnum(s[i]) {
        i += 1;
    }
    (&s[..i], i)
}

/// Go's `os.Expand` with gitlab-runner's lookup: `$$` is a literal `$`, positional and special
/// parameters are empty, unknown names are empty.
pub fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let s = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    let mut j = 0;
    while j < s.len() {
        if s[j] == b'$' && j + 1 < s.len() {
            out.extend_from_slice(&s[i..j]);
            let (name, w) = shell_name(&s[j + 1..]);
            if name.is_empty() && w > 0 {
                // invalid syntax: eaten
            } else if name.is_empty() {
                out.push(b'$');
            } else {
                let name = String::from_utf8_lossy(name);
                let value = match name.as_ref() {
                    "$" => Some("$".to_string()),
                    "*" | "#" | "@" | "!" | "?" | "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7"
                    | "8" | "9" => None,
                    n => lookup(n),
                };
                out.extend_from_slice(value.unwrap_or_default().as_bytes());
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    if i < s.len() {
        out.extend_from_slice(&s[i..]);
    }
    // Only whole UTF-8 sequences are copied or substituted, so this never loses data.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        let mut v = Variables::new();
        for (k, val) in pairs {
            v.set(k, *val);
        }
        v
    }

    #[test]
    fn expands_like_go_os_expand() {
        let v = vars(&[("A", "1"), ("B_2", "two"), ("EMPTY", "")]);
        assert_eq!(v.expand("$A-${B_2}"), "1-two");
        assert_eq!(v.expand("x$UNKNOWN.y"), "x.y");
        assert_eq!(v.expand("cost: $$5"), "cost: $5");
        assert_eq!(v.expand("trailing $"), "trailing $");
        assert_eq!(v.expand("$1$*$?"), "");
        assert_eq!(v.expand("${}x"), "x");
        assert_eq!(v.expand("${A"), "A");
        assert_eq!(v.expand("a $ b"), "a $ b");
        assert_eq!(v.expand("${A}${A}"), "11");
        assert_eq!(v.expand("é$A"), "é1");
    }

    #[test]
    fn later_definitions_win_and_raw_is_kept() {
        let mut v = vars(&[("X", "old"), ("X", "new")]);
        v.push(Variable {
            raw: true,
            ..Variable::new("R", "$X")
        });
        v.set("E", "$X");
        let e = v.expanded();
        assert_eq!(e.value("E"), Some("new"));
        assert_eq!(e.value("R"), Some("$X"));
    }

    #[test]
    fn file_variables_expand_to_their_path() {
        let mut v = Variables::new().with_file_dir("/builds/g/p.tmp");
        v.push(Variable {
            file: true,
            ..Variable::new("KUBECONFIG", "apiVersion: v1")
        });
        v.set("ARG", "--kubeconfig=$KUBECONFIG");
        assert_eq!(
            v.expanded().value("ARG"),
            Some("--kubeconfig=/builds/g/p.tmp/KUBECONFIG")
        );
        assert_eq!(v.value("KUBECONFIG"), Some("apiVersion: v1"));
    }

    #[test]
    fn masked_values_are_listed_and_hidden_from_debug() {
        let mut v = Variables::new();
        v.push(Variable {
            masked: true,
            ..Variable::new("PASSWORD", "hunter22")
        });
        assert_eq!(v.masked_values(), vec!["hunter22".to_string()]);
        assert!(!format!("{v:?}").contains("hunter22"));
    }

    #[test]
    fn bools_read_like_gitlab_runner() {
        let v = vars(&[("T", "TRUE"), ("O", "1"), ("F", "no"), ("Z", "0")]);
        assert!(v.bool("T") && v.bool("O"));
        assert!(!v.bool("F") && !v.bool("Z") && !v.bool("MISSING"));
    }

    proptest::proptest! {
        #[test]
        fn expansion_never_panics(s in "\\PC*") {
            let v = vars(&[("A", "1")]);
            let _ = v.expand(&s);
        }
    }
}
