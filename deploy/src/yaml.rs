//! YAML reading and writing for manifests, through serde-saphyr (a maintained, `unsafe`-free
//! YAML 1.2 library; kube reads kubeconfigs with it too). It replaced serde_yaml (archived by
//! its author) and is set up to read manifests as serde_yaml 0.9 did, plus merge keys:
//!
//! * booleans are `true`/`false` only (YAML 1.2): `yes`, `on`, `y` stay strings;
//! * `0755`, `007` and `1_000` stay strings (serde_yaml's reading; `0o755` and `0x1f` are ints);
//! * a key given twice keeps its last value;
//! * anchors, aliases and merge keys (`<<: *base`) are expanded, as kubectl does;
//! * an application tag (`!reference [a, b]`) is an error: a manifest has no use for one, and
//!   dropping it silently would change the object. Readers that want tags (a .gitlab-ci.yml
//!   compiler) wrap values in [`serde_saphyr::Tagged`] with [`options_keeping_tags`].
//!
//! Errors carry the line and column, 1-based, in the text that was parsed.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A YAML syntax or type error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line in the parsed text (1 when the library gave no position).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The message without its position.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (line {}, column {})",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for YamlError {}

/// The settings for manifests (see the module documentation).
pub fn manifest_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        reject_unsupported_tags: true,
        // `!!binary` data stays the base64 text, as kubectl sends it.
        ignore_binary_tag_for_string: true,
        // Messages are one line; the caller names file:line.
        with_snippet: false,
    }
}

/// [`manifest_options`] that let application tags through, for [`serde_saphyr::Tagged`]
/// targets.
pub fn options_keeping_tags() -> serde_saphyr::Options {
    let mut options = manifest_options();
    options.reject_unsupported_tags = false;
    options
}

/// Parses one YAML document with `options`.
pub fn from_str_with<T: DeserializeOwned>(
    text: &str,
    options: serde_saphyr::Options,
) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let e = e.without_snippet();
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 0));
        let message = e.to_string();
        // The plain message ends with " at line L, column C"; the position is kept apart.
        let message = match message.rsplit_once(" at line ") {
            Some((m, _)) => m.to_string(),
            None => message,
        };
        YamlError {
            line: line.max(1),
            column,
            message,
        }
    })
}

/// Parses one manifest document (see [`manifest_options`]).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    from_str_with(text, manifest_options())
}

/// Writes `value` as one YAML document (block style, two-space indentation, strings quoted
/// where they would read back as something else).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{Value, json};
    use serde_saphyr::Tagged;

    #[test]
    fn merge_keys_and_anchors_are_expanded() {
        let text = "\
defaults: &defaults
  app: web
  tier: backend
apiVersion: v1
kind: ConfigMap
metadata:
  name: a
  labels:
    <<: *defaults
    tier: frontend
data:
  copy: &note hello
  again: *note
";
        let v: Value = from_str(text).unwrap();
        assert_eq!(
            v["metadata"]["labels"],
            json!({"app": "web", "tier": "frontend"}),
            "explicit keys win over merged ones"
        );
        assert_eq!(v["data"], json!({"copy": "hello", "again": "hello"}));
        // Several sources: the earlier one wins.
        let v: Value = from_str("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n").unwrap();
        assert_eq!(v["c"], json!({"x": 1, "y": 2}));
    }

    #[test]
    fn scalars_read_as_serde_yaml_read_them() {
        let v: Value = from_str(
            "[yes, no, on, off, y, n, true, False, 0755, 007, 0o755, 0x1f, 1_000, 1e3, 12, -3, ~, null, '', \"3\", 2001-12-14, !!str 5, !!int '6']",
        )
        .unwrap();
        assert_eq!(
            v,
            json!([
                "yes",
                "no",
                "on",
                "off",
                "y",
                "n",
                true,
                false,
                "0755",
                "007",
                493,
                31,
                "1_000",
                1000.0,
                12,
                -3,
                null,
                null,
                "",
                "3",
                "2001-12-14",
                "5",
                6
            ])
        );
        let v: Value = from_str("a: 1\na: 2\nb: !!binary aGk=\n").unwrap();
        assert_eq!(v, json!({"a": 2, "b": "aGk="}));
    }

    #[test]
    fn custom_tags_round_trip_through_tagged() {
        // GitLab's `!reference [job, key]`, as a .gitlab-ci.yml compiler would read it.
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct Job {
            script: Vec<Tagged<Value>>,
        }
        let text = "\
.setup: &setup
  script: [echo setup]
job:
  <<: *setup
  script:
  - !reference [.setup, script]
  - echo job
";
        let jobs: std::collections::BTreeMap<String, Job> =
            from_str_with(text, options_keeping_tags()).unwrap();
        let script = &jobs["job"].script;
        assert_eq!(
            script[0],
            Tagged(json!([".setup", "script"]), Some("!reference".into()))
        );
        assert_eq!(script[1], Tagged(json!("echo job"), None));
        assert_eq!(
            jobs[".setup"].script,
            vec![Tagged(json!("echo setup"), None)]
        );

        // Written out and read again, the tag is still there.
        let written = to_string(&jobs).unwrap();
        assert!(written.contains("!reference"), "{written}");
        let again: std::collections::BTreeMap<String, Job> =
            from_str_with(&written, options_keeping_tags()).unwrap();
        assert_eq!(again, jobs);

        // A manifest refuses it, with its position.
        let e = from_str::<Value>("a: 1\nb: !reference [x, y]\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.contains("!reference"), "{e:?}");
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = from_str::<Value>("apiVersion: v1\nkind: Service\nmetadata:\n  name: [b\n")
            .unwrap_err();
        assert_eq!((e.line, e.column), (4, 9), "{e:?}");
        assert!(!e.message.contains("line"), "{e:?}");
        assert!(!e.message.contains('\n'), "{e:?}");

        let e = from_str::<Value>("a: 1\nb: : :\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{} (line 2, column {})", e.message, e.column)
        );
    }

    #[test]
    fn written_yaml_reads_back() {
        let v = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"on": "yes", "n": "0755", "empty": ""}},
            "data": {"multi": "one\ntwo\n", "t": "true", "num": "12", "null": null, "list": [1, "x", {}]}
        });
        let text = to_string(&v).unwrap();
        assert_eq!(from_str::<Value>(&text).unwrap(), v, "{text}");
    }
}
