//! No input makes the loader (or the editor) panic.

use ferry_config::from_toml_str_with_env;
use proptest::prelude::*;

fn env(name: &str) -> Option<String> {
    (name == "SET").then(|| "value".to_string())
}

/// A TOML value of any type, rendered as text.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        (-1.0e12f64..1.0e12).prop_map(|f| format!("{f:?}")),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("\"$SET\"".to_string()),
            Just("\"${SET}x\"".to_string()),
            Just("\"${UNSET}\"".to_string()),
            Just("\"https://g.example.com/ci\"".to_string()),
            Just("\"512m\"".to_string()),
            Just("\"1.5\"".to_string()),
            Just("\"15m0s\"".to_string()),
            Just("\"always\"".to_string()),
            Just("\"docker\"".to_string()),
            Just("\"A=1\"".to_string()),
            Just("\"[a\"".to_string()),
            Just("0001-01-01T00:00:00Z".to_string()),
            Just("2025-03-04T10:15:00+02:00".to_string()),
            Just("9999-12-31T23:59:59Z".to_string()),
            Just("2025-03-04".to_string()),
            Just("10:15:00".to_string()),
        ],
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..3).prop_map(|kv| {
                let mut seen = std::collections::BTreeSet::new();
                let body: Vec<String> = kv
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// Mostly keys ferry knows (so the resolver's paths are exercised), some unknown.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "concurrent",
            "check_interval",
            "log_level",
            "log_format",
            "listen_address",
            "shutdown_timeout",
            "connection_max_age",
            "name",
            "url",
            "id",
            "token",
            "token_obtained_at",
            "token_expires_at",
            "executor",
            "limit",
            "request_concurrency",
            "output_limit",
            "builds_dir",
            "cache_dir",
            "environment",
            "clone_url",
            "tls-ca-file",
            "tls-cert-file",
            "tls-key-file",
            "shell",
            "unhealthy_interval",
            "unhealthy_requests_limit",
            "host",
            "image",
            "pull_policy",
            "allowed_pull_policies",
            "allowed_images",
            "privileged",
            "volumes",
            "memory",
            "memory_swap",
            "cpus",
            "dns",
            "shm_size",
            "wait_for_services_timeout",
            "services_limit",
            "Type",
            "Path",
            "Shared",
            "MaxUploadedArchiveSize",
            "kubeconfig",
            "environments",
            "namespaces",
            "default_namespace",
            "cluster_scoped",
            "enabled",
            "FF_TIMESTAMPS",
            "network_mtu",
            "clean_git_config",
            "docker",
            "cache",
            "deploy",
            "targets",
            "feature_flags",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
    ]
}

fn section() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "[[runners]]",
        "[runners.docker]",
        "[runners.cache]",
        "[runners.cache.s3]",
        "[runners.feature_flags]",
        "[runners.custom_build_dir]",
        "[runners.deploy]",
        "[[runners.deploy.targets]]",
        "[[runners.docker.services]]",
        "[session_server]",
    ])
    .prop_map(str::to_string)
}

/// A syntactically plausible config.toml (it may still be invalid TOML, e.g. duplicate keys).
fn document() -> impl Strategy<Value = String> {
    let block = (
        section(),
        prop::collection::vec((key(), toml_value()), 0..6),
    );
    (
        prop::collection::vec((key(), toml_value()), 0..4),
        prop::collection::vec(block, 0..8),
    )
        .prop_map(|(top, blocks)| {
            let mut out = String::new();
            for (k, v) in top {
                out.push_str(&format!("{k} = {v}\n"));
            }
            for (header, kvs) in blocks {
                out.push_str(&header);
                out.push('\n');
                for (k, v) in kvs {
                    out.push_str(&format!("  {k} = {v}\n"));
                }
            }
            out
        })
}

/// A runner that loads, with one key replaced by an arbitrary value.
fn mutated_runner() -> impl Strategy<Value = String> {
    (key(), toml_value(), 0usize..3).prop_map(|(k, v, at)| {
        let base = [
            "[[runners]]\n  url = \"https://g\"\n  token = \"t\"\n  executor = \"docker\"\n",
            "  [runners.docker]\n    image = \"alpine\"\n",
            "  [[runners.deploy.targets]]\n    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"e\"]\n    namespaces = [\"n\"]\n",
        ];
        let mut out = String::new();
        for (i, part) in base.iter().enumerate() {
            out.push_str(part);
            if i == at {
                out.push_str(&format!("    {k} = {v}\n"));
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn any_string_loads_or_fails_without_panicking(text in any::<String>()) {
        let _ = from_toml_str_with_env(&text, "fuzz.toml", &env);
    }

    #[test]
    fn any_toml_shaped_document_loads_or_fails_without_panicking(text in document()) {
        match from_toml_str_with_env(&text, "fuzz.toml", &env) {
            Ok(c) => {
                // every warning points into the file
                let lines = text.lines().count().max(1);
                for w in &c.warnings {
                    prop_assert!(w.line >= 1 && w.line <= lines, "{w} (file has {lines} lines)");
                }
            }
            Err(ferry_config::ConfigError::Invalid { line, key, .. }) => {
                prop_assert!(line >= 1 && line <= text.lines().count().max(1));
                prop_assert!(!key.is_empty());
            }
            Err(_) => {}
        }
    }

    #[test]
    fn a_valid_runner_with_one_odd_key_never_panics(text in mutated_runner()) {
        let _ = from_toml_str_with_env(&text, "fuzz.toml", &env);
    }

}

proptest! {
    // each case writes files with fsync: fewer cases
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn editing_any_loaded_document_keeps_it_loadable(text in mutated_runner()) {
        prop_assume!(from_toml_str_with_env(&text, "fuzz.toml", &env).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).unwrap();
        ferry_config::update_token(&path, "t", "glrt-new", 1_700_000_000, Some(1_800_000_000)).unwrap();
        ferry_config::add_runner(&path, &ferry_config::NewRunner::docker("n", "https://h", "glrt-2", "alpine")).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let c = from_toml_str_with_env(&after, "fuzz.toml", &env);
        prop_assert!(c.is_ok(), "{after}\n{c:?}");
        let c = c.unwrap();
        prop_assert_eq!(c.runners.len(), 2);
        prop_assert_eq!(c.runners[0].token.expose(), "glrt-new");
        prop_assert_eq!(c.runners[0].token_expires_at, Some(1_800_000_000));
        prop_assert_eq!(ferry_config::remove_runners(&path, |r| r.name == "n").unwrap(), 1);
    }
}
