//! `ferry register` with gitlab-runner's flags (docs/commands.md): register lines as real setup
//! scripts write them, run by the real `ferry` binary against the fake GitLab, and the
//! config.toml each writes; `--template-config` merges; boolean forms; bad values.

use std::process::{Command, Output, Stdio};

use ferry_tests::fake_gitlab::FakeGitLab;
use ferry_tests::ferry_bin;

const REG: &str = "reg-token";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `ferry register -c DIR/config.toml ARGS` with only `env` from the register variables.
fn ferry(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("register")
        .arg("-c")
        .arg(dir.join("config.toml"))
        .args(args)
        .stdin(Stdio::null());
    // No variable of the host may leak into the flags.
    for (k, _) in std::env::vars() {
        let known = ferry_runner::commands::register_table::FLAGS
            .iter()
            .any(|f| f.env == Some(k.as_str()));
        if known || k == "CONFIG_FILE" {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running ferry")
}

/// The written file with what changes per run replaced: the URL, the token, the id, the time.
fn normalized(dir: &std::path::Path, url: &str) -> String {
    let written = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    written
        .lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if t.starts_with("token = ") {
                format!("{indent}token = TOKEN")
            } else if t.starts_with("id = ") {
                format!("{indent}id = ID")
            } else if t.starts_with("token_obtained_at = ") {
                format!("{indent}token_obtained_at = NOW")
            } else {
                l.replace(url, "URL")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

const HEAD: &str = "concurrent = 1\ncheck_interval = 0\nshutdown_timeout = 0\n\n[[runners]]\n";

/// What it is, the register line after `register`, the variables, the `[[runners]]` entry.
type Case = (
    &'static str,
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

fn cases() -> Vec<Case> {
    vec![
        (
            // docs.gitlab.com "one-line registration" shape; EdelScripts/gitlab-runner-docker
            // registration.sh: socket bind mount, /cache added as gitlab-runner adds it
            "docker socket",
            vec![
                "-n",
                "--url",
                "URL",
                "--registration-token",
                REG,
                "--executor",
                "docker",
                "--description",
                "grunner666",
                "--docker-image",
                "docker:stable",
                "--docker-volumes",
                "/var/run/docker.sock:/var/run/docker.sock",
            ],
            vec![],
            r#"  name = "grunner666"
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    tls_verify = false
    image = "docker:stable"
    privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/var/run/docker.sock:/var/run/docker.sock", "/cache"]
    shm_size = 0
"#,
        ),
        (
            // the setup-script lines of issue 9: explicit defaults, a cpuset, a cert path,
            // custom build dirs, an S3 cache (gitlab docs "cache" flags), `--docker-shm-size 0`
            "issue 9 setup script",
            vec![
                "--non-interactive",
                "--url",
                "URL",
                "--registration-token",
                REG,
                "--name",
                "builder",
                "--executor",
                "docker",
                "--docker-image",
                "alpine:3.20",
                "--docker-tlsverify=false",
                "--docker-disable-cache=false",
                "--docker-shm-size",
                "0",
                "--docker-cpuset-cpus",
                "1",
                "--docker-cert-path",
                "/certs/client",
                "--docker-host",
                "tcp://docker:2376",
                "--custom_build_dir-enabled",
                "--cache-type",
                "s3",
                "--cache-shared",
                "--cache-path",
                "runners",
                "--cache-s3-server-address",
                "minio:9000",
                "--cache-s3-access-key",
                "AK",
                "--cache-s3-secret-key",
                "SK",
                "--cache-s3-bucket-name",
                "runner-cache",
                "--cache-s3-insecure",
            ],
            vec![],
            r#"  name = "builder"
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  [runners.custom_build_dir]
    enabled = true
  [runners.cache]
    Type = "s3"
    Path = "runners"
    Shared = true
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
      ServerAddress = "minio:9000"
      AccessKey = "AK"
      SecretKey = "SK"
      BucketName = "runner-cache"
      Insecure = true
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    host = "tcp://docker:2376"
    tls_cert_path = "/certs/client"
    tls_verify = false
    image = "alpine:3.20"
    cpuset_cpus = "1"
    privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/cache"]
    shm_size = 0
"#,
        ),
        (
            // a docker-compose style script: everything from the environment, as the
            // gitlab/gitlab-runner image's users pass it; RUNNER_ENV and a list variable
            "environment only",
            vec!["--non-interactive"],
            vec![
                ("CI_SERVER_URL", "URL"),
                ("REGISTRATION_TOKEN", REG),
                ("RUNNER_NAME", "compose-runner"),
                ("RUNNER_EXECUTOR", "docker"),
                ("DOCKER_IMAGE", "node:22"),
                ("RUNNER_TAG_LIST", "docker,linux"),
                ("DOCKER_PRIVILEGED", "true"),
                ("RUNNER_ENV", "GIT_DEPTH=1"),
                ("RUNNER_LIMIT", "4"),
                ("CLONE_URL", "https://git.internal"),
                ("RUNNER_PRE_GET_SOURCES_SCRIPT", "echo pre"),
                ("RUNNER_DEBUG_TRACE_DISABLED", "1"),
                ("DOCKER_PULL_POLICY", "always,if-not-present"),
            ],
            r#"  name = "compose-runner"
  limit = 4
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  clone_url = "https://git.internal"
  environment = ["GIT_DEPTH=1"]
  pre_get_sources_script = "echo pre"
  debug_trace_disabled = true
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    tls_verify = false
    image = "node:22"
    privileged = true
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/cache"]
    pull_policy = ["always", "if-not-present"]
    shm_size = 0
"#,
        ),
        (
            // an ansible role's shape (riemers/ansible-gitlab-runner): `--x="true"` booleans
            // (the shell removes the quotes), repeated --docker-volumes and --env, feature flags, a shell, limits,
            // scripts; a flag on the command line beats its variable; a list
            // flag appends to its variable
            "ansible role",
            vec![
                "--non-interactive",
                "--url",
                "URL",
                "--registration-token",
                REG,
                "--description",
                "ansible-1",
                "--tag-list",
                "a,b",
                "--run-untagged=false",
                "--locked=true",
                "--access-level=not_protected",
                "--executor",
                "docker",
                "--docker-image",
                "debian:stable",
                "--docker-volumes",
                "/cache",
                "--docker-volumes",
                "/srv/data:/data:ro",
                "--env",
                "A=1",
                "--env",
                "B=2",
                "--shell",
                "bash",
                "--output-limit",
                "8192",
                "--request-concurrency",
                "2",
                "--feature-flags",
                "FF_NETWORK_PER_BUILD:true",
                "--feature-flags",
                "FF_USE_FASTZIP",
                "--pre-build-script",
                "echo before",
                "--post-build-script",
                "echo after",
                "--docker-network-mode",
                "host",
                "--docker-memory",
                "2g",
                "--docker-dns",
                "1.1.1.1",
                "--docker-allowed-images",
                "debian:*",
                "--docker-wait-for-services-timeout",
                "60",
                "--docker-sysctls",
                "net.ipv4.ip_forward:1",
                "--docker-services_privileged=false",
                "--prepare-timeout",
                "90s",
            ],
            vec![("DOCKER_IMAGE", "ignored:env"), ("DOCKER_DNS", "8.8.8.8")],
            r#"  name = "ansible-1"
  output_limit = 8192
  request_concurrency = 2
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  environment = ["A=1", "B=2"]
  pre_build_script = "echo before"
  post_build_script = "echo after"
  prepare_timeout = "1m30s"
  shell = "bash"
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.feature_flags]
    FF_NETWORK_PER_BUILD = true
    FF_USE_FASTZIP = true
  [runners.docker]
    tls_verify = false
    image = "debian:stable"
    memory = "2g"
    dns = ["8.8.8.8", "1.1.1.1"]
    privileged = false
    services_privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/cache", "/srv/data:/data:ro"]
    network_mode = "host"
    wait_for_services_timeout = 60
    allowed_images = ["debian:*"]
    shm_size = 0
    [runners.docker.sysctls]
      "net.ipv4.ip_forward" = "1"
"#,
        ),
        (
            // flags of executors ferry does not run are accepted; gitlab-runner drops their
            // sections for the docker executor, and so does ferry. --docker-disable-cache
            // keeps /cache out, as in gitlab-runner.
            "other executors' flags",
            vec![
                "-n",
                "-url",
                "URL",
                "-registration-token",
                REG,
                "--name",
                "k",
                "--docker-image",
                "busybox",
                "--kubernetes-host",
                "https://k8s",
                "--kubernetes-namespace",
                "ci",
                "--ssh-user",
                "root",
                "--machine-idle-count-min",
                "2",
                "--docker-disable-cache",
                "--custom-run-exec",
                "/bin/true",
            ],
            vec![],
            r#"  name = "k"
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    tls_verify = false
    image = "busybox"
    privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = true
    shm_size = 0
"#,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_register_lines_write_what_gitlab_runner_writes() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REG);
    let url = gitlab.url();
    for (what, args, env, want) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "URL" { url.as_str() } else { a })
            .collect();
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (*k, if *v == "URL" { url.as_str() } else { v }))
            .collect();
        let out = ferry(dir.path(), &args, &env);
        assert!(out.status.success(), "{what}: {}", text(&out));
        let got = normalized(dir.path(), &url);
        assert_eq!(got, format!("{HEAD}{want}"), "{what}:\n{got}");
        if what == "environment only" {
            // RUNNER_LIMIT=4 over concurrent = 1: gitlab-runner's warning
            assert!(
                text(&out).contains(
                    "job concurrency limit (4) is larger than current global concurrency limit (1)"
                ),
                "{}",
                text(&out)
            );
        }
    }
    // What GitLab was told, for the ansible line: its tags and run_untagged="false".
    let r = gitlab
        .runners()
        .into_iter()
        .find(|r| r.description == "ansible-1")
        .unwrap();
    assert_eq!(r.tags, ["a", "b"]);
    assert!(!r.run_untagged && r.locked);
    assert_eq!(r.access_level, "not_protected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_of_other_executors_are_named_when_dropped() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REG);
    let dir = tempfile::tempdir().unwrap();
    let url = gitlab.url();
    let out = ferry(
        dir.path(),
        &[
            "-n",
            "--url",
            &url,
            "-r",
            REG,
            "--docker-image",
            "busybox",
            "--kubernetes-host",
            "https://k8s",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("[runners.kubernetes] is not written for the docker executor")
            && text(&out).contains("--kubernetes-host"),
        "{}",
        text(&out)
    );
}

const TEMPLATE: &str = r#"# a template as gitlab docs show them
[[runners]]
  name = "from-template"
  token = "never-used"
  [runners.cache]
    Type = "s3"
    Shared = true
    [runners.cache.s3]
      ServerAddress = "s3.amazonaws.com"
      BucketName = "tpl-bucket"
  [runners.docker]
    image = "tpl:image"
    privileged = true
    shm_size = 300000
    volumes = ["/var/run/docker.sock:/var/run/docker.sock"]
    [[runners.docker.services]]
      name = "redis:7"
      alias = "cache"
  [runners.kubernetes]
    namespace = "dropped"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_config_merges_as_gitlab_runner_merges() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REG);
    let url = gitlab.url();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.toml");
    std::fs::write(&template, TEMPLATE).unwrap();
    let t = template.to_str().unwrap();

    // The flags win where they set something; the template fills the rest, `false` and 0
    // included (mergo fills zero values); its token and the dropped sections never apply.
    let out = ferry(
        dir.path(),
        &[
            "-n",
            "--url",
            &url,
            "-r",
            REG,
            "--name",
            "flag-name",
            "--template-config",
            t,
            "--cache-s3-bucket-name",
            "flag-bucket",
            "--docker-privileged=false",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let got = normalized(dir.path(), &url);
    let want = r#"  name = "flag-name"
  url = "URL"
  id = ID
  token = TOKEN
  token_obtained_at = NOW
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  [runners.cache]
    Type = "s3"
    Shared = true
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
      ServerAddress = "s3.amazonaws.com"
      BucketName = "flag-bucket"
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    tls_verify = false
    image = "tpl:image"
    privileged = true
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    volumes = ["/var/run/docker.sock:/var/run/docker.sock", "/cache"]
    shm_size = 300000
    [[runners.docker.services]]
      name = "redis:7"
      alias = "cache"
"#;
    assert_eq!(got, format!("{HEAD}{want}"), "{got}");
    assert!(!got.contains("never-used"));

    // TEMPLATE_CONFIG_FILE is the flag's variable; a template without exactly one runner is
    // refused and nothing is written.
    let dir2 = tempfile::tempdir().unwrap();
    let bad = dir2.path().join("bad.toml");
    std::fs::write(&bad, "concurrent = 2\n").unwrap();
    let out = ferry(
        dir2.path(),
        &["-n", "--url", &url, "-r", REG, "--docker-image", "x"],
        &[("TEMPLATE_CONFIG_FILE", bad.to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("must contain exactly one [[runners]] entry"),
        "{}",
        text(&out)
    );
    assert!(!dir2.path().join("config.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_forms_and_bad_values() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token(REG);
    let url = gitlab.url();
    let base = [
        "-n",
        "--url",
        url.as_str(),
        "-r",
        REG,
        "--docker-image",
        "x",
    ];

    for (arg, want) in [
        ("--docker-privileged", "privileged = true"),
        ("--docker-privileged=true", "privileged = true"),
        ("--docker-privileged=1", "privileged = true"),
        ("--docker-privileged=t", "privileged = true"),
        ("--docker-privileged=TRUE", "privileged = true"),
        ("--docker-privileged=false", "privileged = false"),
        ("--docker-privileged=0", "privileged = false"),
        ("--docker-privileged=F", "privileged = false"),
        ("--docker-privileged=False", "privileged = false"),
        ("-docker-privileged", "privileged = true"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = ferry(dir.path(), &[&base[..], &[arg]].concat(), &[]);
        assert!(out.status.success(), "{arg}: {}", text(&out));
        let got = normalized(dir.path(), &url);
        assert!(got.contains(&format!("    {want}\n")), "{arg}: {got}");
    }

    // `--flag true` as the last argument: what gitlab-runner does too, with its warning
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(
        dir.path(),
        &[&base[..], &["--docker-privileged", "true"]].concat(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--docker-privileged=true"),
        "{}",
        text(&out)
    );
    assert!(normalized(dir.path(), &url).contains("    privileged = true\n"));

    // `--flag false`: gitlab-runner would write true; refused, nothing registered or written
    let before = gitlab.runners().len();
    for line in [
        vec!["--docker-privileged", "false"],
        vec!["--locked", "false", "--docker-cpus", "2"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = ferry(dir.path(), &[&base[..], &line].concat(), &[]);
        assert!(!out.status.success(), "{line:?}");
        let flag = line[0];
        assert!(
            text(&out).contains(&format!("{flag}={}", line[1])),
            "{line:?}: {}",
            text(&out)
        );
        assert!(!dir.path().join("config.toml").exists());
    }
    assert_eq!(gitlab.runners().len(), before);

    // bad values name the flag (or the variable), before anything is registered
    for (args, env, want) in [
        (
            vec!["--docker-shm-size", "64m"],
            vec![],
            "--docker-shm-size: \"64m\" is not an integer",
        ),
        (
            vec!["--docker-privileged=yes"],
            vec![],
            "--docker-privileged: \"yes\" is not a boolean",
        ),
        (
            vec![],
            vec![("RUNNER_LIMIT", "many")],
            "RUNNER_LIMIT (the variable of --limit): \"many\"",
        ),
        (
            vec!["--prepare-timeout", "soon"],
            vec![],
            "--prepare-timeout: invalid duration \"soon\"",
        ),
        (
            vec!["--access-level", "everyone"],
            vec![],
            "--access-level \"everyone\" is not valid",
        ),
        (vec!["--docker-nonsense", "1"], vec![], "--docker-nonsense"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = ferry(dir.path(), &[&base[..], &args].concat(), &env);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
        assert!(!dir.path().join("config.toml").exists());
    }
    assert_eq!(gitlab.runners().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_tokens_and_server_side_flags_as_gitlab_runner_judges_them() {
    let gitlab = FakeGitLab::start().await;
    let url = gitlab.url();
    let (_id, token) = gitlab.create_runner(ferry_tests::fake_gitlab::RunnerSpec::default());
    // `--locked` alone is gitlab-runner's default: not a server-side setting
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(
        dir.path(),
        &[
            "-n",
            "--url",
            &url,
            "--token",
            &token,
            "--locked",
            "--docker-image",
            "x",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    // --locked=false is, and is refused with a --token
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(
        dir.path(),
        &[
            "-n",
            "--url",
            &url,
            "--token",
            &token,
            "--locked=false",
            "--docker-image",
            "x",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("can not be specified"),
        "{}",
        text(&out)
    );
    // the same token in --registration-token: the settings are ignored with a warning
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(
        dir.path(),
        &[
            "-n",
            "--url",
            &url,
            "-r",
            &token,
            "--tag-list",
            "a",
            "--docker-image",
            "x",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("are ignored"), "{}", text(&out));
    let written = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert!(written.contains(&format!("token = \"{token}\"")));
}
