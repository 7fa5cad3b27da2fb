//! Loading config.toml: defaults, units, errors with their line, warnings, the docs example.

use std::path::PathBuf;
use std::time::Duration;

use ferry_config::{
    Config, ConfigError, LogFormat, PullPolicy, S3Auth, S3Encryption, from_toml_str_with_env,
};

fn env(name: &str) -> Option<String> {
    match name {
        "DEPLOY_TEST_RUNNER_TOKEN" => Some("glrt-test-token".into()),
        "DEPLOY_PROD_RUNNER_TOKEN" => Some("glrt-prod-token".into()),
        "GITLAB_HOST" => Some("gitlab.internal:8443".into()),
        _ => None,
    }
}

fn load(text: &str) -> Config {
    match from_toml_str_with_env(text, "config.toml", &env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn error(text: &str) -> String {
    match from_toml_str_with_env(text, "config.toml", &env) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = r#"
[[runners]]
  name = "r1"
  url = "https://gitlab.example.com"
  token = "glrt-abcdefgh"
  executor = "docker"
"#;

fn with_docker(docker_lines: &str) -> String {
    format!("{MINIMAL}  [runners.docker]\n{docker_lines}\n")
}

#[test]
fn empty_file_gets_gitlab_runner_defaults() {
    let c = load("");
    assert_eq!(c.global.concurrent, 1);
    assert_eq!(c.global.check_interval, Duration::from_secs(3));
    assert_eq!(c.global.log_level, "info");
    assert_eq!(c.global.log_format, LogFormat::Runner);
    assert_eq!(c.global.listen_address, None);
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.global.connection_max_age, Some(Duration::from_secs(900)));
    assert!(c.runners.is_empty());
    assert!(c.warnings.is_empty());
}

#[test]
fn runner_defaults() {
    let c = load(MINIMAL);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = &c.runners[0];
    assert_eq!(r.name, "r1");
    assert_eq!(r.url, "https://gitlab.example.com");
    assert_eq!(r.token.expose(), "glrt-abcdefgh");
    assert_eq!(r.id, None);
    assert_eq!(r.limit, 0);
    assert_eq!(r.request_concurrency, 1);
    assert_eq!(r.output_limit, 4096 * 1024);
    assert_eq!(r.builds_dir, "/builds");
    assert_eq!(r.cache_dir, "/cache");
    assert!(r.environment.is_empty());
    assert_eq!(r.unhealthy_requests_limit, 3);
    assert_eq!(r.unhealthy_interval, Duration::from_secs(3600));
    assert_eq!(r.job_status_final_update_retry_limit, 10);
    assert_eq!(r.docker.pull_policy, vec![PullPolicy::Always]);
    assert_eq!(r.docker.allowed_pull_policies, vec![PullPolicy::Always]);
    assert_eq!(
        r.docker.wait_for_services_timeout,
        Some(Duration::from_secs(30))
    );
    assert_eq!(r.docker.host, None);
    assert_eq!(r.deploy.image, "ferry:deploy");
    assert!(r.deploy.targets.is_empty());
    assert_eq!(r.cache.kind, None);
}

#[test]
fn default_impls_match_what_an_empty_section_resolves_to() {
    let c = load(&with_docker(""));
    assert_eq!(
        format!("{:?}", ferry_config::DockerSection::default()),
        format!("{:?}", c.runners[0].docker)
    );
    let r = ferry_config::RunnerSection {
        name: "r1".into(),
        url: "https://gitlab.example.com".into(),
        token: ferry_config::Secret("glrt-abcdefgh".into()),
        ..Default::default()
    };
    assert_eq!(format!("{r:?}"), format!("{:?}", load(MINIMAL).runners[0]));
    assert_eq!(
        format!("{:?}", ferry_config::GlobalSection::default()),
        format!("{:?}", load("").global)
    );
}

#[test]
fn global_values_and_their_fallbacks() {
    let c = load(
        "concurrent = 7\ncheck_interval = 10\nlog_level = \"warning\"\nlog_format = \"json\"\n\
         listen_address = \"127.0.0.1\"\nshutdown_timeout = 60\nconnection_max_age = \"1h30m\"\n",
    );
    assert_eq!(c.global.concurrent, 7);
    assert_eq!(c.global.check_interval, Duration::from_secs(10));
    assert_eq!(c.global.log_level, "warn");
    assert_eq!(c.global.log_format, LogFormat::Json);
    assert_eq!(c.global.listen_address.as_deref(), Some("127.0.0.1:9252"));
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(c.global.connection_max_age, Some(Duration::from_secs(5400)));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // what `gitlab-runner register` writes: 0 means "use the default"
    let c = load(
        "concurrent = 1\ncheck_interval = 0\nshutdown_timeout = 0\nconnection_max_age = \"0s\"\n",
    );
    assert_eq!(c.global.check_interval, Duration::from_secs(3));
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(30));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.global.connection_max_age, None);
    let c = load("check_interval = -5\nlisten_address = \":9000\"\n");
    assert_eq!(c.global.check_interval, Duration::from_secs(3));
    assert_eq!(c.global.listen_address.as_deref(), Some(":9000"));
}

#[test]
fn global_errors_name_line_and_key() {
    assert_eq!(
        error("\nconcurrent = 0\n"),
        "config.toml:2: concurrent: must be at least 1"
    );
    assert_eq!(
        error("concurrent = \"4\"\n"),
        "config.toml:1: concurrent: expected an integer, found string"
    );
    assert_eq!(
        error("log_level = \"loud\"\n"),
        "config.toml:1: log_level: expected one of debug, info, warn, error, fatal, panic"
    );
    assert_eq!(
        error("\n\nlog_format = \"xml\"\n"),
        "config.toml:3: log_format: expected one of runner, text, json"
    );
    assert!(
        error("connection_max_age = \"15 minutes\"\n")
            .starts_with("config.toml:1: connection_max_age: invalid duration")
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = from_toml_str_with_env("concurrent = 1\n[[runners]\nname = 1\n", "c.toml", &env)
        .unwrap_err();
    match e {
        ConfigError::Syntax { file, line, .. } => {
            assert_eq!(file, "c.toml");
            assert_eq!(line, 2);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let e = from_toml_str_with_env("a = 1\n  a = 2\n", "c.toml", &env).unwrap_err();
    assert_eq!(e.to_string(), "c.toml:2: duplicate key (in `a = 2`)");
    let e = from_toml_str_with_env("é = \"\u{e9}\n", "c.toml", &env).unwrap_err();
    match e {
        ConfigError::Syntax { line, .. } => assert_eq!(line, 1),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn runner_values() {
    let c = load(
        r#"
[[runners]]
  name = "full"
  url = "https://gitlab.example.com/"
  id = 42
  token = "glrt-xyz"
  token_obtained_at = 2025-03-04T10:15:00Z
  token_expires_at = 2025-06-02T10:15:00+02:00
  executor = "docker"
  limit = 4
  request_concurrency = 3
  output_limit = 16384
  builds_dir = "/b"
  cache_dir = "/c"
  environment = ["A=1", "B=x=y", "EMPTY="]
  clone_url = "http://10.0.0.1"
  tls-ca-file = "/etc/ssl/gitlab.pem"
  tls-cert-file = "/etc/ssl/me.pem"
  tls-key-file = "/etc/ssl/me.key"
  shell = "sh"
  debug_trace_disabled = true
  unhealthy_requests_limit = 5
  unhealthy_interval = "5m"
  job_status_final_update_retry_limit = 2
  [runners.feature_flags]
    FF_NETWORK_PER_BUILD = true
    FF_TIMESTAMPS = false
  [runners.custom_build_dir]
    enabled = false
"#,
    );
    // Every key here is honoured (FF_TIMESTAMPS = false is ferry's default, docs/job-log.md).
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let r = &c.runners[0];
    assert_eq!(r.url, "https://gitlab.example.com");
    assert_eq!(r.id, Some(42));
    assert_eq!(r.token_obtained_at, Some(1_741_083_300));
    // 10:15 at +02:00 is 08:15 UTC
    assert_eq!(r.token_expires_at, Some(1_748_852_100));
    assert_eq!(r.limit, 4);
    assert_eq!(r.request_concurrency, 3);
    assert_eq!(r.output_limit, 16384 * 1024);
    assert_eq!(r.builds_dir, "/b");
    assert_eq!(r.cache_dir, "/c");
    assert_eq!(
        r.environment,
        vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x=y".to_string()),
            ("EMPTY".to_string(), String::new())
        ]
    );
    assert_eq!(r.clone_url.as_deref(), Some("http://10.0.0.1"));
    assert_eq!(r.tls_ca_file, Some(PathBuf::from("/etc/ssl/gitlab.pem")));
    assert_eq!(r.tls_cert_file, Some(PathBuf::from("/etc/ssl/me.pem")));
    assert_eq!(r.tls_key_file, Some(PathBuf::from("/etc/ssl/me.key")));
    assert_eq!(r.shell.as_deref(), Some("sh"));
    assert!(r.debug_trace_disabled);
    assert_eq!(r.unhealthy_requests_limit, 5);
    assert_eq!(r.unhealthy_interval, Duration::from_secs(300));
    assert_eq!(r.job_status_final_update_retry_limit, 2);
    assert_eq!(r.feature_flags.get("FF_NETWORK_PER_BUILD"), Some(&true));
    assert_eq!(r.feature_flags.get("FF_TIMESTAMPS"), Some(&false));
}

#[test]
fn request_concurrency_and_limits_clamp_like_gitlab_runner() {
    let c = load(&MINIMAL.replace(
        "executor = \"docker\"",
        "executor = \"docker\"\n  request_concurrency = 0\n  limit = -1\n  output_limit = 0",
    ));
    let r = &c.runners[0];
    assert_eq!(r.request_concurrency, 1);
    assert_eq!(r.limit, 0);
    assert_eq!(r.output_limit, 4096 * 1024);
}

#[test]
fn never_expiring_token_is_none() {
    let c = load(&MINIMAL.replace(
        "executor",
        "token_obtained_at = 2025-03-04T10:17:00Z\n  token_expires_at = 0001-01-01T00:00:00Z\n  executor",
    ));
    assert_eq!(c.runners[0].token_obtained_at, Some(1_741_083_420));
    assert_eq!(c.runners[0].token_expires_at, None);
}

#[test]
fn token_datetime_errors() {
    let text = MINIMAL.replace("executor", "token_expires_at = \"2025-01-01\"\n  executor");
    assert_eq!(
        error(&text),
        "config.toml:6: runners[0].token_expires_at: expected a TOML datetime (like 2025-03-04T10:15:00Z), found string"
    );
    let text = MINIMAL.replace("executor", "token_expires_at = 2025-01-01\n  executor");
    assert!(
        error(&text)
            .starts_with("config.toml:6: runners[0].token_expires_at: expected a date and a time")
    );
}

#[test]
fn url_and_token_expand_environment_variables() {
    let c = load(
        r#"
[[runners]]
  url = "https://${GITLAB_HOST}/gitlab"
  token = "$DEPLOY_TEST_RUNNER_TOKEN"
  executor = "docker"
  builds_dir = "/b/$DEPLOY_TEST_RUNNER_TOKEN"
"#,
    );
    let r = &c.runners[0];
    assert_eq!(r.url, "https://gitlab.internal:8443/gitlab");
    assert_eq!(r.token.expose(), "glrt-test-token");
    // only url and token are expanded
    assert_eq!(r.builds_dir, "/b/$DEPLOY_TEST_RUNNER_TOKEN");

    let e = error(
        "[[runners]]\nurl = \"https://g\"\ntoken = \"${NOT_SET_ANYWHERE}\"\nexecutor = \"docker\"\n",
    );
    assert_eq!(
        e,
        "config.toml:3: runners[0].token: is empty: environment variable NOT_SET_ANYWHERE is not set"
    );
}

#[test]
fn legacy_ci_suffix_is_stripped_with_a_warning() {
    let c = load(&MINIMAL.replace("gitlab.example.com\"", "gitlab.example.com/ci/\""));
    assert_eq!(c.runners[0].url, "https://gitlab.example.com");
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].key, "runners[0].url");
    assert_eq!(c.warnings[0].line, 4);
    assert!(c.warnings[0].message.contains("/ci"));
}

#[test]
fn url_credentials_are_not_repeated_in_messages() {
    let c = load(&MINIMAL.replace(
        "https://gitlab.example.com",
        "https://bot:s3cret@gitlab.example.com/ci",
    ));
    assert_eq!(c.runners[0].url, "https://bot:s3cret@gitlab.example.com");
    assert!(
        c.warnings[0]
            .message
            .ends_with("using https://***@gitlab.example.com"),
        "{}",
        c.warnings[0]
    );
    let e = error(&MINIMAL.replace("https://gitlab.example.com", "ftp://bot:s3cret@host/x"));
    assert!(
        !e.contains("s3cret") && e.contains("ftp://***@host/x"),
        "{e}"
    );
}

#[test]
fn runner_errors_name_line_and_key() {
    assert_eq!(
        error("[[runners]]\n  token = \"t\"\n  executor = \"docker\"\n"),
        "config.toml:1: runners[0].url: missing (the GitLab URL)"
    );
    assert_eq!(
        error("[[runners]]\n  url = \"https://g\"\n  executor = \"docker\"\n"),
        "config.toml:1: runners[0].token: missing (the runner authentication token)"
    );
    assert_eq!(
        error(&MINIMAL.replace("gitlab.example.com\"", "gitlab.example.com\"\n  id = -3")),
        "config.toml:5: runners[0].id: must not be negative"
    );
    assert_eq!(
        error(&MINIMAL.replace("https://gitlab.example.com", "gitlab.example.com")),
        "config.toml:4: runners[0].url: expected an http:// or https:// URL, found \"gitlab.example.com\""
    );
    assert_eq!(
        error(&MINIMAL.replace("executor", "environment = [\"NOEQUALS\"]\n  executor")),
        "config.toml:6: runners[0].environment[0]: expected \"KEY=value\", found \"NOEQUALS\""
    );
    assert_eq!(
        error(&MINIMAL.replace("executor", "environment = [\"A=1\",\n 2]\n  executor")),
        "config.toml:7: runners[0].environment[1]: expected a string, found integer"
    );
    assert_eq!(
        error(&format!(
            "{MINIMAL}  [runners.feature_flags]\n    FF_X = \"yes\"\n"
        )),
        "config.toml:8: runners[0].feature_flags.FF_X: expected true or false, found string"
    );
    assert_eq!(
        error(&MINIMAL.replace("executor", "output_limit = -1\n  executor")),
        "config.toml:6: runners[0].output_limit: must not be negative"
    );
    assert_eq!(
        error(&format!("{MINIMAL}  docker = 3\n")),
        "config.toml:7: runners[0].docker: expected a table, found integer"
    );
}

#[test]
fn non_docker_runner_is_skipped_with_a_warning_and_the_others_kept() {
    let c = load(
        r#"
[[runners]]
  name = "shell-one"
  url = "https://gitlab.example.com"
  token = "glrt-shell"
  executor = "shell"
  [runners.ssh]
    host = "x"
[[runners]]
  name = "docker-one"
  url = "https://gitlab.example.com"
  token = "glrt-docker"
  executor = "docker"
"#,
    );
    assert_eq!(c.runners.len(), 1);
    assert_eq!(c.runners[0].name, "docker-one");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!((w.line, w.key.as_str()), (6, "runners[0].executor"));
    assert!(
        w.message.contains("\"shell-one\"") && w.message.contains("\"shell\""),
        "{w}"
    );

    let c = load("[[runners]]\n  name = \"none\"\n  url = \"https://g\"\n  token = \"t\"\n");
    assert!(c.runners.is_empty());
    assert!(c.warnings[0].message.contains("no executor"));
}

#[test]
fn unknown_keys_warn_once_with_path_and_line() {
    let c = load(&format!(
        "frobnicate = true\n{MINIMAL}  colour = \"blue\"\n  [runners.docker]\n    foo = 1\n    image = \"alpine\"\n  [runners.whatever]\n    a = 1\n    b = 2\n"
    ));
    let got: Vec<(usize, &str, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str(), w.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "frobnicate", "unknown key (ignored)"),
            (8, "runners[0].colour", "unknown key (ignored)"),
            (10, "runners[0].docker.foo", "unknown key (ignored)"),
            (12, "runners[0].whatever", "unknown key (ignored)"),
        ]
    );
    assert_eq!(
        c.warnings[2].to_string(),
        "line 10: runners[0].docker.foo: unknown key (ignored)"
    );
}

#[test]
fn keys_ferry_ignores_warn_once_unless_inert() {
    let c = load(&format!(
        "sentry_dsn = \"https://x\"\n[session_server]\n  session_timeout = 1800\n  listen_address = \"[::]:8093\"\n{MINIMAL}  pre_clone_script = \"echo hi\"\n  clean_git_config = true\n  strict_check_interval = false\n  [runners.kubernetes]\n    namespace = \"x\"\n  [runners.docker]\n    network_mtu = 0\n    volume_keep = false\n    cpuset_cpus = \"0-1\"\n    helper_image = \"gitlab/helper\"\n    [[runners.docker.services]]\n      name = \"postgres\"\n  [runners.cache]\n    [runners.cache.s3]\n      BucketName = \"b\"\n    [runners.cache.gcs]\n      BucketName = \"g\"\n"
    ));
    let got: Vec<(usize, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "sentry_dsn"),
            (4, "session_server.listen_address"),
            (11, "runners[0].pre_clone_script"),
            (14, "runners[0].kubernetes"),
            (20, "runners[0].docker.helper_image"),
        ],
        "{:#?}",
        c.warnings
    );
    assert_eq!(
        c.warnings[0].message,
        "ignored: ferry reports no errors to Sentry"
    );
    assert_eq!(c.warnings[1].message, "accepted but not implemented yet");
    assert_eq!(
        c.warnings[2].message,
        "ignored: removed in gitlab-runner 17.0 and not run; use pre_get_sources_script"
    );
    assert_eq!(
        c.warnings[3].message,
        "ignored: settings of another gitlab-runner executor; ferry runs only the docker executor"
    );
    assert_eq!(
        c.warnings[4].message,
        "ignored: ferry runs no helper image (it clones and handles artifacts itself)"
    );
    // The get_sources hooks are read (and run in a container, docs/configuration.md).
    let c = load(&format!(
        "{MINIMAL}  pre_get_sources_script = \"echo pre\"\n  post_get_sources_script = \"echo post\"\n"
    ));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert_eq!(
        c.runners[0].pre_get_sources_script.as_deref(),
        Some("echo pre")
    );
    assert_eq!(
        c.runners[0].post_get_sources_script.as_deref(),
        Some("echo post")
    );
    let c = load(&MINIMAL.replace("executor", "clean_git_config = false\n  executor"));
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn pull_policy_string_or_array() {
    let c = load(&with_docker("    pull_policy = \"if-not-present\""));
    let d = &c.runners[0].docker;
    assert_eq!(d.pull_policy, vec![PullPolicy::IfNotPresent]);
    assert_eq!(d.allowed_pull_policies, vec![PullPolicy::IfNotPresent]);

    let c = load(&with_docker(
        "    pull_policy = [\"always\", \"if-not-present\", \"always\"]\n    allowed_pull_policies = [\"never\"]",
    ));
    let d = &c.runners[0].docker;
    assert_eq!(
        d.pull_policy,
        vec![
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Always
        ]
    );
    assert_eq!(d.allowed_pull_policies, vec![PullPolicy::Never]);

    let c = load(&with_docker("    pull_policy = []"));
    assert_eq!(c.runners[0].docker.pull_policy, vec![PullPolicy::Always]);

    assert_eq!(
        error(&with_docker(
            "    image = \"x\"\n    pull_policy = [\"always\", \"sometimes\"]"
        )),
        "config.toml:9: runners[0].docker.pull_policy: expected one of always, if-not-present, never"
    );
    assert_eq!(
        error(&with_docker("    pull_policy = 1")),
        "config.toml:8: runners[0].docker.pull_policy: expected a string or an array of strings, found integer"
    );
}

#[test]
fn memory_and_cpus() {
    let c = load(&with_docker(
        "    memory = \"512m\"\n    memory_swap = \"1g\"\n    memory_reservation = \"256M\"\n    cpus = \"1.5\"\n    shm_size = 67108864",
    ));
    let d = &c.runners[0].docker;
    assert_eq!(d.memory, Some(512 * 1024 * 1024));
    assert_eq!(d.memory_swap, Some(1024 * 1024 * 1024));
    assert_eq!(d.memory_reservation, Some(256 * 1024 * 1024));
    assert_eq!(d.cpus, Some(1.5));
    assert_eq!(d.shm_size, 64 * 1024 * 1024);

    let c = load(&with_docker("    cpus = \"3/2\""));
    assert_eq!(c.runners[0].docker.cpus, Some(1.5));
    let c = load(&with_docker("    memory = \"\"\n    cpus = \"\""));
    assert_eq!(c.runners[0].docker.memory, None);
    assert_eq!(c.runners[0].docker.cpus, None);

    assert_eq!(
        error(&with_docker("    memory = \"1m\"")),
        "config.toml:8: runners[0].docker.memory: \"1m\" is below the minimum of 4m"
    );
    assert!(
        error(&with_docker("    memory = \"lots\""))
            .starts_with("config.toml:8: runners[0].docker.memory: invalid size \"lots\"")
    );
    assert_eq!(
        error(&with_docker("    memory = 512")),
        "config.toml:8: runners[0].docker.memory: expected a string, found integer"
    );
    assert_eq!(
        error(&with_docker("    cpus = \"-1\"")),
        "config.toml:8: runners[0].docker.cpus: expected a positive number of CPUs like \"1.5\", found \"-1\""
    );
    assert_eq!(
        error(&with_docker("    shm_size = -1")),
        "config.toml:8: runners[0].docker.shm_size: must not be negative (bytes)"
    );
}

#[test]
fn docker_values() {
    let c = load(&with_docker(
        r#"    host = "tcp://docker:2376"
    tls_verify = true
    tls_cert_path = "/certs"
    image = "alpine:3"
    privileged = true
    services_privileged = false
    user = "1000"
    volumes = ["/cache", "/var/run/docker.sock:/var/run/docker.sock"]
    cache_dir = "/srv/cache"
    disable_cache = true
    network_mode = "host"
    dns = ["1.1.1.1", "2606:4700::1111"]
    dns_search = ["svc.local"]
    extra_hosts = ["gitlab:10.0.0.1"]
    allowed_images = ["registry.example.com/**", "!registry.example.com/bad/*"]
    allowed_services = ["postgres:*"]
    group_add = ["998"]
    cap_add = ["NET_ADMIN"]
    cap_drop = ["ALL"]
    security_opt = ["no-new-privileges"]
    hostname = "job"
    disable_entrypoint_overwrite = true
    oom_kill_disable = true
    services_limit = 2
    wait_for_services_timeout = -1"#,
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = &c.runners[0].docker;
    assert_eq!(d.host.as_deref(), Some("tcp://docker:2376"));
    assert!(d.tls_verify);
    assert_eq!(d.tls_cert_path, Some(PathBuf::from("/certs")));
    assert_eq!(d.image.as_deref(), Some("alpine:3"));
    assert!(d.privileged);
    assert_eq!(d.services_privileged, Some(false));
    assert_eq!(d.user.as_deref(), Some("1000"));
    assert_eq!(d.volumes.len(), 2);
    assert_eq!(d.cache_dir, Some(PathBuf::from("/srv/cache")));
    assert!(d.disable_cache);
    assert_eq!(d.network_mode.as_deref(), Some("host"));
    assert_eq!(d.dns, vec!["1.1.1.1", "2606:4700::1111"]);
    assert_eq!(d.dns_search, vec!["svc.local"]);
    assert_eq!(d.extra_hosts, vec!["gitlab:10.0.0.1"]);
    assert_eq!(d.allowed_images.len(), 2);
    assert_eq!(d.allowed_services, vec!["postgres:*"]);
    assert_eq!(d.group_add, vec!["998"]);
    assert_eq!(d.cap_add, vec!["NET_ADMIN"]);
    assert_eq!(d.cap_drop, vec!["ALL"]);
    assert_eq!(d.security_opt, vec!["no-new-privileges"]);
    assert_eq!(d.hostname.as_deref(), Some("job"));
    assert!(d.disable_entrypoint_overwrite);
    assert!(d.oom_kill_disable);
    assert_eq!(d.services_limit, Some(2));
    assert_eq!(d.wait_for_services_timeout, None);

    let c = load(&with_docker(
        "    wait_for_services_timeout = 0\n    services_limit = -1",
    ));
    assert_eq!(
        c.runners[0].docker.wait_for_services_timeout,
        Some(Duration::from_secs(30))
    );
    assert_eq!(c.runners[0].docker.services_limit, None);
    let c = load(&with_docker("    wait_for_services_timeout = 90"));
    assert_eq!(
        c.runners[0].docker.wait_for_services_timeout,
        Some(Duration::from_secs(90))
    );

    assert_eq!(
        error(&with_docker("    dns = [\"dns.google\"]")),
        "config.toml:8: runners[0].docker.dns[0]: expected an IP address, found \"dns.google\""
    );
    assert!(
        error(&with_docker("    allowed_images = [\"registry/[a\"]"))
            .starts_with("config.toml:8: runners[0].docker.allowed_images[0]: invalid glob")
    );
    assert_eq!(
        error(&with_docker("    privileged = \"true\"")),
        "config.toml:8: runners[0].docker.privileged: expected true or false, found string"
    );
}

#[test]
fn privilege_user_and_pids_keys() {
    let c = load(&with_docker(
        r#"    privileged = true
    allowed_privileged_images = ["docker:*-dind", "registry.example.com/**"]
    allowed_privileged_services = ["docker:*"]
    allowed_users = ["1000", "nobody"]
    pids_limit = 512"#,
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = &c.runners[0].docker;
    assert_eq!(
        d.allowed_privileged_images,
        vec!["docker:*-dind", "registry.example.com/**"]
    );
    assert_eq!(d.allowed_privileged_services, vec!["docker:*"]);
    assert_eq!(d.allowed_users, vec!["1000", "nobody"]);
    assert_eq!(d.pids_limit, Some(512));

    let d = load(&with_docker("    pids_limit = -1")).runners[0]
        .docker
        .clone();
    assert_eq!(d.pids_limit, Some(-1));
    let d = load(&with_docker("    pids_limit = 0")).runners[0]
        .docker
        .clone();
    assert_eq!(d.pids_limit, None);
    let d = load(&with_docker("")).runners[0].docker.clone();
    assert_eq!(d.pids_limit, None);
    assert!(d.allowed_privileged_images.is_empty() && d.allowed_users.is_empty());
    assert_eq!(
        error(&with_docker("    pids_limit = -5")),
        "config.toml:8: runners[0].docker.pids_limit: expected a positive number of processes, or -1 for unlimited, found -5"
    );
    assert!(
        error(&with_docker(
            "    allowed_privileged_services = [\"docker/[a\"]"
        ))
        .starts_with(
            "config.toml:8: runners[0].docker.allowed_privileged_services[0]: invalid glob"
        )
    );
    // `!` does not negate in gitlab-runner's privileged lists: loaded as is, with a warning.
    let c = load(&with_docker(
        "    allowed_privileged_images = [\"!docker:*\"]",
    ));
    assert_eq!(
        c.runners[0].docker.allowed_privileged_images,
        vec!["!docker:*"]
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].to_string().contains("does not negate"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn cache_section_with_capitalised_keys() {
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"s3\"\n    Path = \"prefix\"\n    Shared = true\n    MaxUploadedArchiveSize = 1048576\n    [runners.cache.s3]\n      BucketName = \"b\"\n    [runners.cache.gcs]\n    [runners.cache.azure]\n"
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let cache = &c.runners[0].cache;
    assert_eq!(cache.kind.as_deref(), Some("s3"));
    assert_eq!(cache.path.as_deref(), Some("prefix"));
    assert!(cache.shared);
    assert_eq!(cache.max_uploaded_archive_size, 1_048_576);
    let c = load(&format!("{MINIMAL}  [runners.cache]\n    Type = \"ftp\"\n"));
    assert_eq!(c.runners[0].cache.kind, None);
    assert_eq!(
        (c.warnings[0].line, c.warnings[0].key.as_str()),
        (8, "runners[0].cache.Type")
    );
    assert!(c.warnings[0].message.contains("unknown cache type \"ftp\""));
    // lower-case spelling is not gitlab-runner's: unknown key
    let c = load(&format!("{MINIMAL}  [runners.cache]\n    type = \"s3\"\n"));
    assert_eq!(c.warnings[0].key, "runners[0].cache.type");
}

#[test]
fn deploy_targets() {
    let c = load(&format!(
        r#"{MINIMAL}  [runners.deploy]
    image = "ferry:k8s"
  [[runners.deploy.targets]]
    name = "test"
    kubeconfig = "/etc/ferry/kube/test.yaml"
    context = "test"
    environments = ["test", "review/*"]
    namespaces = ["test", "review-*"]
    default_namespace = "test"
  [[runners.deploy.targets]]
    name = "production"
    kubeconfig = "/etc/ferry/kube/prod.yaml"
    environments = ["production"]
    namespaces = ["prod"]
    cluster_scoped = true
    protected_refs_only = true
"#
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = &c.runners[0].deploy;
    assert_eq!(d.image, "ferry:k8s");
    assert_eq!(d.targets.len(), 2);
    let t = &d.targets[0];
    assert_eq!(t.name, "test");
    assert_eq!(t.kubeconfig, PathBuf::from("/etc/ferry/kube/test.yaml"));
    assert_eq!(t.context.as_deref(), Some("test"));
    assert_eq!(t.environments, vec!["test", "review/*"]);
    assert_eq!(t.namespaces, vec!["test", "review-*"]);
    assert_eq!(t.default_namespace.as_deref(), Some("test"));
    assert!(!t.cluster_scoped && !t.protected_refs_only);
    let p = &d.targets[1];
    assert_eq!(
        (p.context.clone(), p.default_namespace.clone()),
        (None, None)
    );
    assert!(p.cluster_scoped && p.protected_refs_only);
}

#[test]
fn deploy_target_errors() {
    let target = |body: &str| format!("{MINIMAL}  [[runners.deploy.targets]]\n{body}\n");
    assert_eq!(
        error(&target(
            "    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]"
        )),
        "config.toml:7: runners[0].deploy.targets[0].name: missing (the target's name)"
    );
    assert_eq!(
        error(&target(
            "    name = \"t\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]"
        )),
        "config.toml:7: runners[0].deploy.targets[0].kubeconfig: missing (path of the kubeconfig file)"
    );
    assert_eq!(
        error(&target(
            "    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = []\n    namespaces = [\"t\"]"
        )),
        "config.toml:10: runners[0].deploy.targets[0].environments: missing or empty (environment names (globs on CI_ENVIRONMENT_NAME))"
    );
    assert_eq!(
        error(&target(
            "    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"review-*\"]\n    default_namespace = \"prod\""
        )),
        "config.toml:12: runners[0].deploy.targets[0].default_namespace: \"prod\" is not allowed by namespaces = [\"review-*\"]"
    );
    assert_eq!(
        error(&target(
            "    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]\n    cluster_scoped = \"no\""
        )),
        "config.toml:12: runners[0].deploy.targets[0].cluster_scoped: expected true or false, found string"
    );
    let twice = format!(
        "{MINIMAL}  [[runners.deploy.targets]]\n    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]\n  [[runners.deploy.targets]]\n    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]\n"
    );
    assert_eq!(
        error(&twice),
        "config.toml:12: runners[0].deploy.targets[1].name: duplicate target name \"t\""
    );
    let c = load(&target(
        "    name = \"t\"\n    kubeconfig = \"/k\"\n    environments = [\"t\"]\n    namespaces = [\"t\"]\n    colour = 1",
    ));
    assert_eq!(c.warnings[0].key, "runners[0].deploy.targets[0].colour");
    assert_eq!(c.warnings[0].line, 12);
}

#[test]
fn inline_tables_are_accepted() {
    let c = load(
        "runners = [{ url = \"https://g\", token = \"t\", executor = \"docker\", docker = { image = \"alpine\", log_options = { env = \"A,B\" } } }]\n",
    );
    assert_eq!(c.runners[0].docker.image.as_deref(), Some("alpine"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.runners[0].docker.containers.log_options["env"], "A,B");
}

#[test]
fn docker_container_options_are_read_and_checked() {
    let c = load(&with_docker(
        r#"    tmpfs = { "/scratch" = "rw,size=64m" }
    services_tmpfs = { "/var/lib/db" = "rw" }
    devices = ["/dev/null:/dev/xnull:r"]
    services_devices = { "postgres:*" = ["/dev/zero"] }
    gpus = "count=1"
    ulimit = { nofile = "1024:2048", nproc = "512" }
    sysctls = { "net.ipv4.ip_forward" = "1" }
    cpu_shares = 512
    oom_score_adjust = -5
    service_memory = "64m"
    service_cpus = "0.5"
    network_mtu = 1400
    enable_ipv6 = true
    container_labels = { team = "ci-$CI_JOB_ID" }
    services_security_opt = ["no-new-privileges"]
    [[runners.docker.services]]
      name = "redis:7"
      alias = "cache, kv"
      command = ["redis-server", "--port", "7000"]
      entrypoint = ["docker-entrypoint.sh"]
      environment = ["A=1", "B=x=y"]"#,
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let d = &c.runners[0].docker;
    let o = &d.containers;
    assert_eq!(o.tmpfs["/scratch"], "rw,size=64m");
    assert_eq!(o.services_tmpfs["/var/lib/db"], "rw");
    assert_eq!(o.devices, vec!["/dev/null:/dev/xnull:r".to_string()]);
    assert_eq!(
        o.services_devices["postgres:*"],
        vec!["/dev/zero".to_string()]
    );
    assert_eq!(o.gpus.as_deref(), Some("count=1"));
    assert_eq!(o.ulimit["nofile"], (1024, 2048));
    assert_eq!(o.ulimit["nproc"], (512, 512));
    assert_eq!(o.sysctls["net.ipv4.ip_forward"], "1");
    assert_eq!(o.cpu_shares, Some(512));
    assert_eq!(o.oom_score_adjust, Some(-5));
    assert_eq!(o.service_memory, Some(64 << 20));
    assert_eq!(o.service_cpus, Some(0.5));
    assert_eq!(o.network_mtu, Some(1400));
    assert!(o.enable_ipv6);
    assert_eq!(o.container_labels["team"], "ci-$CI_JOB_ID");
    assert_eq!(
        o.services_security_opt,
        vec!["no-new-privileges".to_string()]
    );
    assert_eq!(d.services.len(), 1);
    let s = &d.services[0];
    assert_eq!(s.name, "redis:7");
    assert_eq!(s.alias, "cache, kv");
    assert_eq!(s.command, vec!["redis-server", "--port", "7000"]);
    assert_eq!(s.entrypoint, vec!["docker-entrypoint.sh"]);
    assert_eq!(
        s.environment,
        vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
}

#[test]
fn docker_container_options_fail_closed_at_load() {
    for (lines, want) in [
        (
            "    log_options = { max-size = \"10m\" }",
            "config.toml:8: runners[0].docker.log_options: invalid log options: only [\"env\", \"labels\"] are allowed",
        ),
        (
            "    container_labels = { \"ferry.managed\" = \"false\" }",
            "config.toml:8: runners[0].docker.container_labels.ferry.managed: labels starting with \"ferry.\"",
        ),
        (
            "    ulimit = { nofile = \"many\" }",
            "config.toml:8: runners[0].docker.ulimit.nofile: expected \"soft\" or \"soft:hard\"",
        ),
        (
            "    devices = [\"/dev/a:/dev/b:rwm:x\"]",
            "runners[0].docker.devices[0]: failed to parse device string \"/dev/a:/dev/b:rwm:x\": too many colons",
        ),
        (
            "    gpus = \"count=lots\"",
            "config.toml:8: runners[0].docker.gpus: invalid count \"lots\"",
        ),
        (
            "    service_memory = \"1k\"",
            "runners[0].docker.service_memory: \"1k\" is below the minimum of 4m",
        ),
        (
            "    [[runners.docker.services]]\n      alias = \"db\"",
            "runners[0].docker.services[0].name: missing",
        ),
        (
            "    [[runners.docker.services]]\n      name = \"pg\"\n      environment = [\"NOVALUE\"]",
            "runners[0].docker.services[0].environment[0]: expected \"NAME=value\"",
        ),
    ] {
        let e = error(&with_docker(lines));
        assert!(e.contains(want), "{lines}: {e}");
    }
}

#[test]
fn docs_example_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/config.toml");
    let text = std::fs::read_to_string(path).expect("docs/examples/config.toml");
    let c = load(&text);
    assert_eq!(c.global.concurrent, 5);
    assert_eq!(c.global.log_format, LogFormat::Json);
    assert_eq!(c.global.listen_address.as_deref(), Some("127.0.0.1:9252"));
    assert_eq!(c.global.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(c.runners.len(), 2);
    let (test, prod) = (&c.runners[0], &c.runners[1]);
    assert_eq!(test.name, "deploy-test@ci-01");
    assert_eq!(test.token.expose(), "glrt-test-token");
    assert_eq!(test.token_expires_at, None);
    assert_eq!(test.limit, 4);
    assert_eq!(test.request_concurrency, 2);
    assert_eq!(test.output_limit, 16384 * 1024);
    assert_eq!(test.docker.pull_policy, vec![PullPolicy::IfNotPresent]);
    assert_eq!(
        test.docker.allowed_pull_policies,
        vec![PullPolicy::Always, PullPolicy::IfNotPresent]
    );
    assert_eq!(test.docker.memory, Some(2 * 1024 * 1024 * 1024));
    assert_eq!(test.docker.cpus, Some(2.0));
    assert_eq!(test.feature_flags.get("FF_NETWORK_PER_BUILD"), Some(&true));
    assert_eq!(test.deploy.targets[0].name, "test");
    assert_eq!(prod.token.expose(), "glrt-prod-token");
    assert!(prod.debug_trace_disabled);
    assert_eq!(prod.docker.services_limit, Some(0));
    assert_eq!(prod.docker.pull_policy, vec![PullPolicy::Always]);
    assert_eq!(prod.deploy.image, "ferry:deploy");
    assert!(prod.deploy.targets[0].protected_refs_only);
    assert!(test.custom_build_dir_enabled);
    // No warning: ferry honours every key of the file ([session_server] session_timeout = 1800
    // is what register writes: silent).
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let c = load(MINIMAL);
    let dump = format!("{c:?}");
    assert!(!dump.contains("glrt-abcdefgh"), "{dump}");
    assert!(dump.contains("glrt-abc"));
}

#[test]
fn cache_s3_table_is_read_and_secrets_stay_out_of_debug() {
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"s3\"\n    Shared = true\n    [runners.cache.s3]\n      ServerAddress = \"minio.internal:9000\"\n      AccessKey = \"AKIDEXAMPLE\"\n      SecretKey = \"wJalrXUtnFEMI\"\n      SessionToken = \"tok-secret\"\n      BucketName = \"runner-cache\"\n      BucketLocation = \"eu-west-1\"\n      Insecure = true\n      PathStyle = false\n      ServerSideEncryption = \"aws:kms\"\n      ServerSideEncryptionKeyID = \"alias/k\"\n      AssumeRoleMaxConcurrency = 4\n"
    ));
    // ferry calls no AssumeRole here: the one key it ignores is warned about, with its line
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert_eq!(
        c.warnings[0].key,
        "runners[0].cache.s3.AssumeRoleMaxConcurrency"
    );
    let cache = &c.runners[0].cache;
    assert_eq!(cache.kind.as_deref(), Some("s3"));
    let s3 = &cache.s3;
    assert_eq!(s3.server_address, "minio.internal:9000");
    assert_eq!(s3.access_key, "AKIDEXAMPLE");
    assert_eq!(s3.secret_key.expose(), "wJalrXUtnFEMI");
    assert_eq!(s3.session_token.expose(), "tok-secret");
    assert_eq!(s3.bucket_name, "runner-cache");
    assert_eq!(s3.bucket_location, "eu-west-1");
    assert!(s3.insecure);
    assert_eq!(s3.path_style, Some(false));
    assert_eq!(s3.authentication_type, S3Auth::AccessKey);
    assert_eq!(s3.server_side_encryption, Some(S3Encryption::Kms));
    assert_eq!(s3.server_side_encryption_key_id, "alias/k");
    let debug = format!("{c:?}");
    assert!(!debug.contains("wJalrX"), "{debug}");
    assert!(!debug.contains("tok-secret"), "{debug}");
}

#[test]
fn cache_s3_authentication_type_is_resolved_like_gitlab_runner() {
    let s3 = |lines: &str| {
        load(&format!(
            "{MINIMAL}  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      BucketName = \"b\"\n{lines}"
        ))
        .runners[0]
            .cache
            .s3
            .clone()
    };
    assert_eq!(s3("").authentication_type, S3Auth::Iam);
    assert_eq!(
        s3("      ServerAddress = \"s:9000\"\n      AccessKey = \"a\"\n      SecretKey = \"s\"\n")
            .authentication_type,
        S3Auth::AccessKey
    );
    assert_eq!(
        s3("      ServerAddress = \"s:9000\"\n      AccessKey = \"a\"\n      SecretKey = \"s\"\n      AuthenticationType = \"IAM\"\n")
            .authentication_type,
        S3Auth::Iam
    );
    let e = error(&format!(
        "{MINIMAL}  [runners.cache]\n    [runners.cache.s3]\n      AuthenticationType = \"token\"\n"
    ));
    assert!(
        e.contains("config.toml:9") && e.contains("runners[0].cache.s3.AuthenticationType"),
        "{e}"
    );
    let e = error(&format!(
        "{MINIMAL}  [runners.cache]\n    [runners.cache.s3]\n      ServerAddress = \"http://minio:9000\"\n"
    ));
    assert!(
        e.contains("config.toml:9") && e.contains("without a scheme"),
        "{e}"
    );
}

#[test]
fn cache_legacy_keys_fill_the_s3_table() {
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"s3\"\n    ServerAddress = \"old:9000\"\n    AccessKey = \"a\"\n    SecretKey = \"s\"\n    BucketName = \"legacy\"\n    Insecure = true\n"
    ));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let s3 = &c.runners[0].cache.s3;
    assert_eq!(s3.server_address, "old:9000");
    assert_eq!(s3.bucket_name, "legacy");
    assert!(s3.insecure);
    assert_eq!(c.runners[0].cache.kind.as_deref(), Some("s3"));
}

#[test]
fn cache_without_bucket_or_with_unsupported_keys_warns() {
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      ServerAddress = \"s:9000\"\n      Accelerate = true\n      DualStack = true\n      ServerSideEncryption = \"rot13\"\n"
    ));
    assert_eq!(c.runners[0].cache.kind, None);
    let got: Vec<(usize, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (8, "runners[0].cache.Type"),
            (11, "runners[0].cache.s3.Accelerate"),
            (12, "runners[0].cache.s3.DualStack"),
            (13, "runners[0].cache.s3.ServerSideEncryption"),
        ],
        "{:#?}",
        c.warnings
    );
    assert!(c.warnings[0].message.contains("BucketName missing"));
}

#[test]
fn cache_gcs_and_azure_tables() {
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"gcs\"\n    [runners.cache.gcs]\n      AccessID = \"sa@p.iam.gserviceaccount.com\"\n      PrivateKey = \"-----BEGIN PRIVATE KEY-----\\nXYZ\"\n      BucketName = \"g\"\n    [runners.cache.azure]\n      AccountName = \"acct\"\n      AccountKey = \"c2VjcmV0\"\n      ContainerName = \"c\"\n      StorageDomain = \"blob.core.chinacloudapi.cn\"\n"
    ));
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let cache = &c.runners[0].cache;
    assert_eq!(cache.kind.as_deref(), Some("gcs"));
    assert_eq!(cache.gcs.bucket_name, "g");
    assert_eq!(cache.gcs.access_id, "sa@p.iam.gserviceaccount.com");
    assert_eq!(cache.azure.account_name, "acct");
    assert_eq!(cache.azure.account_key.expose(), "c2VjcmV0");
    assert_eq!(cache.azure.storage_domain, "blob.core.chinacloudapi.cn");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("c2VjcmV0") && !debug.contains("XYZ"),
        "{debug}"
    );
    let c = load(&format!(
        "{MINIMAL}  [runners.cache]\n    Type = \"azure\"\n    [runners.cache.azure]\n      ContainerName = \"c\"\n"
    ));
    assert_eq!(c.runners[0].cache.kind, None);
    assert!(
        c.warnings[0].message.contains("AccountName"),
        "{:#?}",
        c.warnings
    );
}

#[test]
fn pre_and_post_build_scripts_are_read() {
    let c = load(&format!(
        "{MINIMAL}  pre_build_script = \"echo pre\"\n  post_build_script = \"\"\"\necho a\necho b\"\"\"\n"
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.runners[0].pre_build_script.as_deref(), Some("echo pre"));
    assert_eq!(
        c.runners[0].post_build_script.as_deref(),
        Some("echo a\necho b")
    );
}

#[test]
fn slot_cgroups_warn_and_windows_isolation_is_refused() {
    // gitlab-runner's docker executor has no slots either: a warning each, with the line
    let c = load(&MINIMAL.replace(
        "executor",
        "use_slot_cgroups = true\n  slot_cgroup_template = \"ci/slot-${slot}\"\n  executor",
    ));
    let got: Vec<(usize, &str)> = c
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (6, "runners[0].use_slot_cgroups"),
            (7, "runners[0].slot_cgroup_template")
        ],
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[0].message.contains("docker-autoscaler"));
    // what register writes when they are off: silent
    let c = load(&MINIMAL.replace(
        "executor",
        "use_slot_cgroups = false\n  slot_cgroup_template = \"\"\n  executor",
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Hyper-V isolation asks for more than ferry's Linux containers give: fail closed
    let e = error(&with_docker("    isolation = \"hyperv\""));
    assert!(
        e.starts_with("config.toml:8: runners[0].docker.isolation: refused:"),
        "{e}"
    );
    let c = load(&with_docker("    isolation = \"default\""));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn feature_flags_are_honoured_warned_or_refused_flag_by_flag() {
    let with_flags = |flags: &str| MINIMAL.to_string() + "  [runners.feature_flags]\n" + flags;
    // honoured, or gitlab-runner's default value: silent
    let c = load(&with_flags(
        "    FF_NETWORK_PER_BUILD = true\n    FF_USE_FASTZIP = true\n    FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR = false\n",
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.runners[0].feature_flags.len(), 3);
    // a flag ferry does not read, set away from its default, and a name gitlab-runner lacks
    let c = load(&with_flags(
        "    FF_USE_FASTZIP = false\n    FF_NO_SUCH_FLAG = true\n",
    ));
    let got: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        got,
        [
            "line 8: runners[0].feature_flags.FF_USE_FASTZIP: ignored: ferry does not read this feature flag (jobs still see it as a variable)",
            "line 9: runners[0].feature_flags.FF_NO_SUCH_FLAG: ignored: not a feature flag of gitlab-runner (jobs still see it as a variable)",
        ]
    );
    // files kept to the job's user: ferry cannot, so the file is refused
    let e = error(&with_flags(
        "    FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR = true\n",
    ));
    assert!(
        e.starts_with(
            "config.toml:8: runners[0].feature_flags.FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR: refused:"
        ),
        "{e}"
    );
}
