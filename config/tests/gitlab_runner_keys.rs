//! The key audit: every key of gitlab-runner's config.toml (config/testdata/gitlab-runner-keys.txt,
//! made by scripts/gitlab-runner-keys.py from its Go structs) is classified by ferry's key table
//! (`ferry_config::keys`), and loading a file that sets it does what the table says: honoured
//! keys load without a warning, warned keys give one warning naming the key and its line,
//! refused keys are an error naming the file, the line and the key. Nothing is silently
//! ignored. docs/configuration.md lists the same statuses.

use ferry_config::keys::{KeyStatus, classify};
use ferry_config::{ConfigError, from_toml_str_with_env};

const KEYS: &str = include_str!("../testdata/gitlab-runner-keys.txt");

fn keys() -> Vec<(&'static str, &'static str)> {
    KEYS.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('\t').expect("path<TAB>kind"))
        .collect()
}

/// A value of the key's kind that asks for something (not the "off" value), valid for ferry.
fn sample(path: &str, kind: &str) -> String {
    let special = match path {
        "runners[].url" => "\"https://gitlab.example.com\"",
        "runners[].token" => "\"glrt-audit\"",
        "runners[].executor" => "\"docker\"",
        "runners[].environment" | "runners[].docker.services[].environment" => "[\"A=1\"]",
        "runners[].tls-cert-file" | "runners[].tls-key-file" => "\"/etc/ssl/x.pem\"",
        "runners[].clean_git_config" => "false",
        "log_level" => "\"debug\"",
        "log_format" => "\"json\"",
        "runners[].docker.pull_policy" | "runners[].docker.allowed_pull_policies" => {
            "[\"if-not-present\"]"
        }
        "runners[].docker.dns" => "[\"192.0.2.1\"]",
        "runners[].docker.memory"
        | "runners[].docker.memory_swap"
        | "runners[].docker.memory_reservation"
        | "runners[].docker.service_memory"
        | "runners[].docker.service_memory_swap"
        | "runners[].docker.service_memory_reservation" => "\"64m\"",
        "runners[].docker.cpus" | "runners[].docker.service_cpus" => "\"1.5\"",
        "runners[].docker.gpus" | "runners[].docker.service_gpus" => "\"all\"",
        "runners[].docker.devices" => "[\"/dev/kvm\"]",
        "runners[].docker.services_devices" => "{ \"redis:*\" = [\"/dev/kvm\"] }",
        "runners[].docker.ulimit" => "{ nofile = \"1024:2048\" }",
        "runners[].docker.log_options" => "{ env = \"A\" }",
        "runners[].docker.oom_score_adjust" => "100",
        "runners[].docker.isolation" => "\"hyperv\"",
        // a bucket-less type is a warning about the bucket (covered in tests/load.rs)
        "runners[].cache.Type" => "\"\"",
        "runners[].cache.s3.ServerAddress" | "runners[].cache.ServerAddress" => {
            "\"minio.example.com:9000\""
        }
        "runners[].cache.s3.AuthenticationType" => "\"iam\"",
        "runners[].cache.s3.ServerSideEncryption" => "\"S3\"",
        _ => "",
    };
    if !special.is_empty() {
        return special.to_string();
    }
    match kind {
        "string" | "any" => "\"audit\"".into(),
        "bool" => "true".into(),
        "int" | "float" => "7".into(),
        "duration" => "\"5m\"".into(),
        "datetime" => "2030-01-01T00:00:00Z".into(),
        "strings" => "[\"audit\"]".into(),
        // flag by flag: tests/load.rs (feature_flags_...)
        "map:bool" => "{ FF_NETWORK_PER_BUILD = true }".into(),
        "map:strings" => "{ audit = [\"audit\"] }".into(),
        k if k.starts_with("map:") || k.starts_with("array:") => "{ audit = \"audit\" }".into(),
        k => panic!("{path}: no sample for kind {k}"),
    }
}

const RUNNER: &[(&str, &str)] = &[
    ("name", "\"audit\""),
    ("url", "\"https://gitlab.example.com\""),
    ("token", "\"glrt-audit\""),
    ("executor", "\"docker\""),
];

/// A config.toml with one docker runner that sets `path` (and what it needs), and the lines
/// written for the key (its table headers and its own line).
fn file_setting(path: &str, kind: &str) -> (String, Vec<usize>) {
    let segments: Vec<&str> = path.split('.').collect();
    let (leaf, tables) = segments.split_last().unwrap();
    let mut text = String::new();
    let mut lines = Vec::new();
    fn line(text: &mut String, lines: &mut Vec<usize>, l: String, mine: bool) {
        text.push_str(&l);
        text.push('\n');
        if mine {
            lines.push(text.lines().count());
        }
    }
    let value = sample(path, kind);
    let in_runner = tables.first() == Some(&"runners[]");
    // the key (with its tables) comes first for a global key, after the runner's keys else
    let block = |text: &mut String, lines: &mut Vec<usize>, skip: usize| {
        let mut header = String::new();
        let mut pending = false;
        for seg in tables {
            let name = seg.trim_end_matches("[]");
            header = if header.is_empty() {
                name.to_string()
            } else {
                format!("{header}.{name}")
            };
            if header.split('.').count() <= skip {
                continue;
            }
            if seg.ends_with("[]") {
                line(text, lines, format!("[[{header}]]"), true);
                if header == "runners.docker.services" && *leaf != "name" {
                    line(text, lines, "name = \"redis:7\"".into(), false);
                }
                pending = false;
            } else {
                pending = true;
            }
        }
        if pending {
            line(text, lines, format!("[{header}]"), true);
        }
        line(text, lines, format!("{leaf} = {value}"), true);
    };
    if !in_runner {
        block(&mut text, &mut lines, 0);
    }
    line(&mut text, &mut lines, "[[runners]]".into(), false);
    for (k, v) in RUNNER {
        if !(tables == ["runners[]"] && leaf == k) {
            line(&mut text, &mut lines, format!("{k} = {v}"), false);
        }
    }
    if path == "runners[].tls-cert-file" || path == "runners[].tls-key-file" {
        let other = if path.ends_with("cert-file") {
            "tls-key-file"
        } else {
            "tls-cert-file"
        };
        line(
            &mut text,
            &mut lines,
            format!("{other} = \"/etc/ssl/y.pem\""),
            false,
        );
    }
    if in_runner {
        block(&mut text, &mut lines, 1);
    }
    (text, lines)
}

fn env(name: &str) -> Option<String> {
    // RoleARN warns without a web identity token (covered in tests/load.rs)
    (name == "AWS_WEB_IDENTITY_TOKEN_FILE").then(|| "/var/run/token".to_string())
}

#[test]
fn every_gitlab_runner_key_is_classified() {
    let keys = keys();
    assert!(keys.len() > 500, "the fixture lists {} keys", keys.len());
    let missing: Vec<&str> = keys
        .iter()
        .filter(|(p, _)| classify(p).is_none())
        .map(|(p, _)| *p)
        .collect();
    assert!(
        missing.is_empty(),
        "keys of gitlab-runner that ferry's key table (config/src/keys.rs) does not classify:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_gitlab_runner_key_does_what_the_key_table_says() {
    let mut failures = Vec::new();
    for (path, kind) in keys() {
        if kind == "table" {
            continue; // its keys are checked one by one
        }
        let Some((entry, status)) = classify(path) else {
            continue; // reported by every_gitlab_runner_key_is_classified
        };
        let (text, lines) = file_setting(path, kind);
        let result = from_toml_str_with_env(&text, "config.toml", &env);
        let about = |w: &str| ferry_config::keys::normalize(w) == entry;
        let problem = match (status, result) {
            (_, Err(ConfigError::Syntax { message, .. })) => {
                Some(format!("the test wrote invalid TOML: {message}"))
            }
            (KeyStatus::Honoured, Ok(c)) => {
                let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
                (!w.is_empty()).then(|| format!("honoured, yet warned: {w:?}"))
            }
            (KeyStatus::Honoured, Err(e)) => Some(format!("honoured, yet refused: {e}")),
            (
                KeyStatus::Refused(_),
                Err(ConfigError::Invalid {
                    file,
                    line,
                    key,
                    message,
                }),
            ) => (file != "config.toml" || !lines.contains(&line) || !about(&key))
                .then(|| format!("refused, but the error names {file}:{line} {key}: {message}")),
            (KeyStatus::Refused(_), other) => Some(format!("should be refused, got {other:?}")),
            (
                KeyStatus::Warned(_)
                | KeyStatus::NotImplemented
                | KeyStatus::NotImplementedDefaultTrue,
                Ok(c),
            ) => {
                let mine: Vec<_> = c.warnings.iter().filter(|w| about(&w.key)).collect();
                match mine.as_slice() {
                    [w] if lines.contains(&w.line) && c.warnings.len() == 1 => None,
                    _ => Some(format!(
                        "should be warned once on one of lines {lines:?}, warnings: {:?}",
                        c.warnings
                    )),
                }
            }
            (_, other) => Some(format!("{status:?}: unexpected {other:?}")),
        };
        if let Some(p) = problem {
            failures.push(format!("{path} ({entry}): {p}\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn docs_name_every_key_of_the_key_table() {
    let docs = include_str!("../../docs/configuration.md");
    let missing: Vec<&str> = ferry_config::keys::KEYS
        .iter()
        .map(|(path, _)| *path)
        .filter(|path| {
            let name = path.rsplit('.').next().unwrap();
            !(docs.contains(&format!("`{name}`"))
                || docs.contains(&format!("`[{path}]`"))
                || docs.contains(&format!("`[[{path}]]`")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not name: {missing:?}"
    );
}
