//! The runner core end to end: the real `ferry` binary against the fake GitLab over real HTTP.
//! CLI (register, verify, unregister, list), config errors, and jobs through `ferry run` (final
//! state, failure_reason, exit_code, exact trace bytes and checksum, a GitLab outage, metrics,
//! token rotation). Jobs run in the real Docker engine with the locally built test images; where
//! Docker is not usable the job tests print SKIP with the reason. Cancellation, timeouts and
//! shutdown signals are covered in `docker_e2e.rs`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::{FakeGitLab, JobStatus, RunnerSpec};
use ferry_tests::ferry_bin;

const IMAGE: &str = ferry_tests::e2e::BUSYBOX;
const WAIT: Duration = Duration::from_secs(120);

fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .env_remove("CI_SERVER_URL")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running ferry")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn crc32(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

/// RFC 3339 UTC time `offset_secs` from now, as TOML datetimes are written.
fn toml_time(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", now + offset_secs),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ----------------------------------------------------------------------------- CLI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_the_real_setup_line_then_list_verify_and_unregister() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("xxx");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let cfg_s = cfg.to_str().unwrap();
    let url = gitlab.url();
    // The register line of a real setup (one argument per line; the CLI's unit test parses it
    // too), against the fake GitLab.
    let line = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runner/testdata/register-real-setup.args"
    ));
    let mut args: Vec<&str> = line
        .lines()
        .map(|a| if a == "http://git.example" { &url } else { a })
        .collect();
    args.splice(1..1, ["-c", cfg_s]); // after `register`
    let out = ferry(&args);
    assert!(out.status.success(), "register failed: {}", text(&out));

    let runners = gitlab.runners();
    assert_eq!(runners.len(), 1);
    let r = &runners[0];
    assert_eq!(r.description, "base-runner-docker");
    assert_eq!(r.tags, vec!["base-runner".to_string()]);
    assert!(r.run_untagged);

    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.toml holding a token must be 0600");
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        written.contains(&format!("token = \"{}\"", r.token)),
        "{written}"
    );
    assert!(written.contains("privileged = true"), "{written}");
    assert!(
        written.contains("/etc/gitlab-runner/key/test-kube-config:/root/.kube/config"),
        "{written}"
    );
    assert!(
        written.contains("pull_policy = [\"if-not-present\"]"),
        "{written}"
    );
    assert!(
        !text(&out).contains(&r.token),
        "the token must not be printed"
    );

    let listed = ferry(&["list", "-c", cfg_s]);
    assert!(listed.status.success());
    assert!(text(&listed).contains("base-runner-docker"));
    assert!(
        !text(&listed).contains(&r.token),
        "list shows the short token only"
    );

    let verified = ferry(&["verify", "-c", cfg_s]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("is valid"));

    let un = ferry(&["unregister", "-c", cfg_s, "--name", "base-runner-docker"]);
    assert!(un.status.success(), "{}", text(&un));
    assert!(
        gitlab.runners().is_empty(),
        "GitLab no longer knows the runner"
    );
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert!(!after.contains("[[runners]]"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_an_authentication_token_refuses_server_side_settings() {
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let cfg_s = cfg.to_str().unwrap();
    let url = gitlab.url();
    let refused = ferry(&[
        "register",
        "-c",
        cfg_s,
        "--non-interactive",
        "--url",
        &url,
        "--token",
        &token,
        "--tag-list",
        "x",
        "--docker-image",
        IMAGE,
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused)
            .contains("can not be specified when registering with a runner authentication token")
    );
    assert!(!cfg.exists(), "nothing written when refused");

    let ok = ferry(&[
        "register",
        "-c",
        cfg_s,
        "--non-interactive",
        "--url",
        &url,
        "--token",
        &token,
        "--docker-image",
        IMAGE,
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let system_id = std::fs::read_to_string(dir.path().join(".runner_system_id")).unwrap();
    assert!(
        system_id.starts_with("s_") || system_id.starts_with("r_"),
        "{system_id}"
    );
    let managers = &gitlab.runners()[0].managers;
    assert!(
        managers.contains(system_id.trim()),
        "verify registered this host as a manager: {managers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_delete_removes_runners_gitlab_no_longer_knows() {
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let body = format!(
        "concurrent = 1\n# keep me\n[[runners]]\n  name = \"good\"\n  url = \"{u}\"\n  token = \"{token}\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"x\"\n[[runners]]\n  name = \"gone\"\n  url = \"{u}\"\n  token = \"glrt-deleted-in-gitlab\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"x\"\n",
        u = gitlab.url()
    );
    std::fs::write(&cfg, body).unwrap();
    let out = ferry(&["verify", "--delete", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is removed"));
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        after.contains("name = \"good\"") && !after.contains("name = \"gone\""),
        "{after}"
    );
    assert!(after.contains("# keep me"), "comments survive: {after}");
}

#[test]
fn a_bad_config_stops_ferry_run_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        "concurrent = 1\n[[runners]]\n  name = \"x\"\n  url = \"https://gitlab.example.com\"\n  token = \"t\"\n  executor = \"docker\"\n  [runners.docker]\n    image = \"x\"\n    pull_policy = \"sometimes\"\n",
    )
    .unwrap();
    let out = ferry(&["run", "-c", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("config.toml:9"), "{t}");
    assert!(t.contains("pull_policy"), "{t}");
}

#[test]
fn a_missing_config_names_the_file_and_ferry_register_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["run", "-c", m],
        vec!["list", "-c", m],
        vec!["verify", "-c", m],
        vec!["unregister", "-c", m, "--all-runners"],
        vec!["plan", "-c", m, "payload.json"],
    ] {
        let out = ferry(&args);
        assert!(!out.status.success(), "{args:?}");
        let t = text(&out);
        let first = t.lines().next().unwrap_or_default();
        assert!(first.starts_with("ERROR: "), "{args:?}: {t}");
        assert!(first.contains(m) && first.contains("does not exist"), "{t}");
        assert!(t.contains(&format!("ferry register -c {m}")), "{t}");
        assert!(!t.contains("os error"), "{args:?}: {t}");
    }

    // The default file: ferry's own path for this user (HOME only matters when not root).
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("HOME", home.path())
            .env_remove("CONFIG_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("running ferry")
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    let default = if root {
        std::path::PathBuf::from("/etc/ferry/config.toml")
    } else {
        home.path().join(".ferry/config.toml")
    };
    if default.exists() {
        eprintln!("SKIP (default path): {} exists here", default.display());
        return;
    }
    let t = text(&run(&["list"]));
    assert!(
        t.contains(&format!("{} does not exist", default.display())),
        "{t}"
    );
    assert!(t.contains("ferry register"), "{t}");
    if !root {
        // gitlab-runner's file beside it: named, with the -c that uses it.
        let g = home.path().join(".gitlab-runner/config.toml");
        std::fs::create_dir_all(g.parent().unwrap()).unwrap();
        std::fs::write(&g, "concurrent = 1\n").unwrap();
        let t = text(&run(&["run"]));
        assert!(t.contains(&format!("ferry run -c {}", g.display())), "{t}");
    }
}

#[test]
fn run_with_syslog_sends_its_log_to_dev_log_tagged_with_the_service() {
    // syslog(3) writes to /dev/log: a private mount namespace puts a socket of this test there
    // (root and unshare(1) needed; otherwise SKIP).
    let dir = tempfile::tempdir().unwrap();
    let fake_dev = dir.path().join("dev");
    std::fs::create_dir(&fake_dev).unwrap();
    for n in ["null", "zero", "random", "urandom"] {
        std::fs::write(fake_dev.join(n), "").unwrap();
    }
    let sock = std::os::unix::net::UnixDatagram::bind(fake_dev.join("log")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "concurrent = 1\n").unwrap();
    let script = r#"set -e
for n in null zero random urandom; do mount --bind /dev/$n "$1/$n"; done
mount --bind "$1" /dev
exec timeout -s INT 5 "$2" run -c "$3" -d "$4" --service ferry-syslog-test --user nobody --syslog"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&fake_dev)
        .arg(ferry_bin())
        .arg(&cfg)
        .arg(dir.path().join("work"))
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) if !text(&o).contains("mount:") && !text(&o).contains("unshare:") => o,
        other => {
            eprintln!("SKIP: no private mount namespace here: {other:?}");
            return;
        }
    };
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        if got.contains("ferry stopped") {
            break;
        }
    }
    let stderr = text(&out);
    // facility daemon (3 << 3) + notice (5) for info lines, tagged NAME[pid].
    assert!(got.contains("<29>"), "syslog: {got}\nstderr: {stderr}");
    assert!(got.contains("ferry-syslog-test["), "{got}");
    assert!(got.contains("starting ferry"), "{got}");
    assert!(
        got.contains("--user applies to gitlab-runner's shell executor only"),
        "{got}"
    );
    // stderr keeps the log too.
    assert!(stderr.contains("starting ferry"), "{stderr}");
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

// ----------------------------------------------------------------------------- jobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_end_with_their_state_exit_code_and_exact_trace() {
    let Some(h) = Harness::start(Setup::default().concurrent(2)).await else {
        return;
    };
    let ok = h.push(
        h.job("ok")
            .script(["echo hello from ferry", "echo $CI_JOB_NAME"]),
    );
    let bad = h.push(
        h.job("bad")
            .script(["echo before", "exit 3", "echo never printed"]),
    );

    let ok_rec = h.wait_final(ok, WAIT).await;
    let trace = h.expect(&ok_rec, JobStatus::Success, None);
    assert!(trace.contains("hello from ferry"), "{trace}");
    assert!(
        trace.contains("\nok\n"),
        "$CI_JOB_NAME expanded by the shell: {trace}"
    );
    assert!(
        trace.contains("section_start:") && trace.contains(":step_script"),
        "{trace}"
    );
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_eq!(
        ok_rec.checksum.as_deref(),
        Some(crc32(&ok_rec.trace).as_str()),
        "checksum over the exact bytes"
    );
    assert_eq!(ok_rec.bytesize, Some(ok_rec.trace.len() as u64));

    let bad_rec = h.wait_final(bad, WAIT).await;
    let trace = h.expect(&bad_rec, JobStatus::Failed, Some("script_failure"));
    assert_eq!(bad_rec.exit_code, Some(3));
    assert!(
        trace.contains("before") && !trace.contains("never printed"),
        "{trace}"
    );
    assert!(trace.contains("exit code 3"), "{trace}");
    assert!(!trace.contains(&bad_rec.token), "job token masked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_runners_unit_flags_start_ferry_and_it_runs_a_job() {
    // `--service`, `--user` and `--syslog` as gitlab-runner's systemd unit passes them.
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    h.ferry_args = [
        "--service",
        "gitlab-runner",
        "--user",
        "gitlab-runner",
        "--syslog",
    ]
    .map(String::from)
    .to_vec();
    h.spawn_ferry();
    let id = h.push(h.job("unit").script(["echo from-the-unit"]));
    let job = h.wait_final(id, WAIT).await;
    assert_eq!(job.status, JobStatus::Success, "{}", h.describe(id));
    let log = h.ferry_log();
    assert!(log.contains("gitlab-runner"), "{log}");
    assert!(
        log.contains("--user applies to gitlab-runner's shell executor only"),
        "{log}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_outage_mid_job_loses_nothing() {
    let Some(h) = Harness::start(Setup::default()).await else {
        return;
    };
    let id = h.push(
        h.job("outage")
            .script(["echo first", "sleep 8", "echo second"]),
    );
    h.wait_trace(id, "first", WAIT).await;
    // 502s for 15 s, then the listener goes away entirely (connection refused) for 15 s.
    h.gitlab.outage(Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.gitlab.stop().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.gitlab.restart().await;
    let rec = h.wait_final(id, WAIT).await;
    let trace = h.expect(&rec, JobStatus::Success, None);
    assert!(
        trace.contains("first") && trace.contains("second") && trace.contains("Job succeeded"),
        "{trace}"
    );
    assert_eq!(
        trace.matches("second\n").count(),
        1,
        "no byte duplicated: {trace}"
    );
    assert_eq!(rec.checksum.as_deref(), Some(crc32(&rec.trace).as_str()));
    // And the next job flows within a minute of GitLab being back.
    h.assert_takes_next_job().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = Setup {
        global: format!("listen_address = \"127.0.0.1:{port}\""),
        ..Setup::default()
    };
    let Some(h) = Harness::start(setup).await else {
        return;
    };
    ferry_runner::gitlab::install_crypto_provider();
    let client = reqwest::Client::new();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            body = r.text().await.unwrap_or_default();
            if body.contains("status=\"204\"") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        body.contains("gitlab_runner_concurrent 1"),
        "{body}\n{}",
        h.ferry_log()
    );
    assert!(body.contains("gitlab_runner_version_info"), "{body}");
    assert!(
        body.contains("endpoint=\"request_job\",status=\"204\""),
        "{body}"
    );
    // Ready once Docker answered its first ping too (docs/monitoring.md; the details are
    // tested in metrics.rs).
    let mut health = (0, String::new());
    for _ in 0..100 {
        let r = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .unwrap();
        health = (r.status().as_u16(), r.text().await.unwrap_or_default());
        if health.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health.0, 200, "{}", health.1);
    assert!(
        !h.ferry_log().contains(&h.token),
        "no token in ferry's own log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_token_is_rotated_before_it_expires_and_jobs_keep_flowing() {
    // Obtained 1000 s ago, expires in 100 s: three quarters of its life are gone.
    let lines = format!(
        "token_obtained_at = {}\ntoken_expires_at = {}",
        toml_time(-1000),
        toml_time(100)
    );
    // The jobs after the rotation label their containers with the new token: the harness's
    // Drop removes those too when an assertion below fails.
    let Some(mut h) = Harness::start(Setup::default().runner(&lines)).await else {
        return;
    };
    let mut rotated = None;
    for _ in 0..300 {
        let text = std::fs::read_to_string(&h.config_path).unwrap();
        if !text.contains(&h.token) {
            rotated = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text =
        rotated.unwrap_or_else(|| panic!("token not rotated; ferry log:\n{}", h.ferry_log()));
    let new_token = h.gitlab.runners()[0].token.clone();
    assert_ne!(new_token, h.token);
    assert!(text.contains(&format!("token = \"{new_token}\"")), "{text}");
    let mode = std::fs::metadata(&h.config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The reload moves polling to the new token: jobs still run.
    h.assert_takes_next_job().await;
    assert!(
        !h.ferry_log().contains(&new_token),
        "no token in ferry's log"
    );
    h.stop().await;
}

// ------------------------------------------------------------- payloads GitLab never sends

/// Finding 9 of issue 7: `runner_info.timeout` 1e30 (or 2^64-1) and a step timeout of 1e20
/// panicked the job task, leaving the job running in GitLab with no log. Each job now ends
/// failed with the reason in its log, leaves no container, and the next job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_timeouts_end_the_job_with_a_reason_and_the_next_job_runs() {
    let Some(h) = Harness::start(Setup::default()).await else {
        return;
    };
    let patches = [
        serde_json::json!({"runner_info": {"timeout": 1e30}}),
        serde_json::json!({"runner_info": {"timeout": u64::MAX}}),
        serde_json::json!({"steps": [{"name": "script", "script": ["echo never-ran"],
            "timeout": 1e20, "when": "on_success"}]}),
    ];
    for patch in patches {
        let id = h.push(
            h.job("absurd")
                .script(["echo never-ran"])
                .patch(patch.clone()),
        );
        let rec = h.wait_final(id, WAIT).await;
        let trace = h.expect(&rec, JobStatus::Failed, Some("runner_system_failure"));
        assert!(
            trace.contains("GitLab never sends such a value"),
            "{patch}: {trace}"
        );
        assert!(!trace.contains("\nnever-ran"), "{patch}: {trace}");
        assert!(
            h.docker_objects(Some(id)).is_empty(),
            "{patch}: {:?}",
            h.docker_objects(Some(id))
        );
        assert!(!h.ferry_log().contains("panicked"), "{}", h.ferry_log());
    }
    h.assert_takes_next_job().await;
}

/// A payload without a job token can be neither run nor reported: it is refused at once with
/// a line in ferry's log, and the slot (concurrent = 1) takes the next job within seconds
/// instead of after 10 minutes of retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_a_token_is_refused_and_frees_its_slot() {
    let Some(h) = Harness::start(Setup::default()).await else {
        return;
    };
    let id = h.push(
        h.job("tokenless")
            .script(["echo never-ran"])
            .patch(serde_json::json!({"token": null})),
    );
    assert!(
        ferry_tests::e2e::poll_until(Duration::from_secs(30), || h
            .ferry_log()
            .contains("no usable job token"))
        .await,
        "{}",
        h.describe(id)
    );
    let started = std::time::Instant::now();
    h.assert_takes_next_job().await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the next job waited {:?}",
        started.elapsed()
    );
    assert!(!h.gitlab.trace_string(id).contains("never-ran"));
}

/// gitlab-runner's certificate directory: `<host>.crt` (CA), `<host>.auth.crt` and
/// `<host>.auth.key` (client pair) in `certs/` beside the config file are used for GitLab at
/// that host without any `tls-*` key, by `register` and by every command reading the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_in_the_certs_dir_beside_the_config_are_used_by_host_name() {
    let gitlab = FakeGitLab::start_mtls().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let cfg_s = cfg.to_str().unwrap();
    let url = gitlab.url();
    let host = ferry_config::certs::url_host(&url).unwrap().to_string();

    // No CA anywhere: the self-signed GitLab is refused.
    let refused = ferry(&[
        "register",
        "-c",
        cfg_s,
        "--non-interactive",
        "--url",
        &url,
        "--token",
        &token,
        "--docker-image",
        IMAGE,
    ]);
    assert!(!refused.status.success(), "{}", text(&refused));

    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join(format!("{host}.crt")), gitlab.ca_pem().unwrap()).unwrap();
    std::fs::write(
        certs.join(format!("{host}.auth.crt")),
        gitlab.client_cert_pem().unwrap(),
    )
    .unwrap();
    std::fs::write(
        certs.join(format!("{host}.auth.key")),
        gitlab.client_key_pem().unwrap(),
    )
    .unwrap();
    let registered = ferry(&[
        "register",
        "-c",
        cfg_s,
        "--non-interactive",
        "--url",
        &url,
        "--token",
        &token,
        "--docker-image",
        IMAGE,
    ]);
    assert!(registered.status.success(), "{}", text(&registered));
    let written = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !written.contains("tls-"),
        "nothing written for found files: {written}"
    );

    let verified = ferry(&["verify", "-c", cfg_s]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("is valid"), "{}", text(&verified));

    // Without the client pair, mutual TLS fails: the files were really used.
    std::fs::remove_file(certs.join(format!("{host}.auth.key"))).unwrap();
    std::fs::remove_file(certs.join(format!("{host}.auth.crt"))).unwrap();
    let without_pair = ferry(&["verify", "-c", cfg_s]);
    assert!(
        !text(&without_pair).contains("is valid"),
        "{}",
        text(&without_pair)
    );
}

// ----------------------------------------------------------------------------- reload, outages, stop

/// A job that prints its `STAGE` then 6000 bytes, then a marker only a big enough
/// `output_limit` lets through.
fn stage_and_output(name: &str, h: &Harness, pause: u32) -> ferry_tests::fake_gitlab::JobSpec {
    h.job(name).script([
        "echo stage=$STAGE".to_string(),
        format!("sleep {pause}"),
        "head -c 6000 /dev/zero | tr '\\0' x".to_string(),
        "echo".to_string(),
        "echo end-of-output".to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_reaches_the_next_job_of_a_kept_runner_not_the_running_one() {
    let before = Setup::default().runner("environment = [\"STAGE=before\"]\noutput_limit = 4");
    let Some(mut h) = Harness::start(before).await else {
        return;
    };
    let first = h.push(stage_and_output("first", &h, 8));
    h.wait_trace(first, "\nstage=before", WAIT).await;
    // The same entry (url and token), new settings, while the first job runs.
    let reloads = h.ferry_log().matches("configuration reloaded").count();
    h.write_config(&Setup::default().runner("environment = [\"STAGE=after\"]\noutput_limit = 64"));
    let reloaded = ferry_tests::e2e::poll_until(Duration::from_secs(30), || {
        h.ferry_log().matches("configuration reloaded").count() > reloads
    })
    .await;
    assert!(reloaded, "no reload logged: {}", h.ferry_log());
    let second = h.push(stage_and_output("second", &h, 0));

    // The running job keeps the settings it started with: 4 KiB of log.
    let rec = h.wait_final(first, WAIT).await;
    let trace = h.expect(&rec, JobStatus::Success, None);
    assert!(!trace.contains("end-of-output"), "{trace}");
    // The next job has the new ones: its environment and 64 KiB of log.
    let rec = h.wait_final(second, WAIT).await;
    let trace = h.expect(&rec, JobStatus::Success, None);
    assert!(trace.contains("\nstage=after"), "{trace}");
    assert!(trace.contains("\nend-of-output"), "{trace}");
    h.stop().await;
}

/// Times of the requests to `path` (with `method`) answered in `[from, to)`.
fn request_times(
    gitlab: &FakeGitLab,
    method: &str,
    path: &str,
    from: tokio::time::Instant,
    to: tokio::time::Instant,
) -> Vec<Duration> {
    gitlab
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path == path && r.at >= from && r.at < to)
        .map(|r| r.at - from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_outage_gets_no_bursts_and_jobs_flow_after_it() {
    // Two slots: the runner keeps asking for jobs while one runs. check_interval = 1 s.
    let Some(h) = Harness::start(Setup::default().concurrent(2)).await else {
        return;
    };
    h.gitlab.set_trace_update_interval(Some("3"));
    let id = h.push(
        h.job("through-outage")
            .script(["echo first", "sleep 45", "echo second"]),
    );
    h.wait_trace(id, "\nfirst", WAIT).await;
    // 503 for 15 s, 502 for 15 s, then no listener at all for 10 s.
    let start = tokio::time::Instant::now();
    h.gitlab.outage_with(503, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.gitlab.outage_with(502, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let answered_until = tokio::time::Instant::now();
    h.gitlab.stop().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.gitlab.restart().await;

    // Job requests: never two within the 1 s check_interval, and the 5xx answers park the
    // runner (3 failures, then at most one request per 15-30 s).
    let requests = request_times(
        &h.gitlab,
        "POST",
        "/api/v4/jobs/request",
        start,
        answered_until,
    );
    assert!(!requests.is_empty());
    for w in requests.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(900),
            "two job requests {:?} apart: {requests:?}",
            w[1] - w[0]
        );
    }
    assert!(
        requests.len() <= 6,
        "parked after 3 failed requests: {requests:?}"
    );
    assert!(
        h.ferry_log().contains("runner is unhealthy: parked"),
        "{}",
        h.ferry_log()
    );
    // The job's trace and keep-alive calls: one per 3 s update interval at most.
    let mut calls = request_times(
        &h.gitlab,
        "PATCH",
        &format!("/api/v4/jobs/{id}/trace"),
        start,
        answered_until,
    );
    calls.extend(request_times(
        &h.gitlab,
        "PUT",
        &format!("/api/v4/jobs/{id}"),
        start,
        answered_until,
    ));
    calls.sort();
    assert!(!calls.is_empty());
    for w in calls.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(2900),
            "two trace/update calls {:?} apart: {calls:?}",
            w[1] - w[0]
        );
    }

    // Nothing lost, and jobs flow again.
    let rec = h.wait_final(id, WAIT).await;
    let trace = h.expect(&rec, JobStatus::Success, None);
    assert!(trace.contains("\nsecond"), "{trace}");
    assert_eq!(rec.checksum.as_deref(), Some(crc32(&rec.trace).as_str()));
    h.assert_takes_next_job().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_runner_interrupted_only_to_a_gitlab_that_lists_it() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // This GitLab's features.failure_reasons lack runner_interrupted.
    let reasons = [
        "unknown_failure",
        "script_failure",
        "runner_system_failure",
        "job_execution_timeout",
    ];
    let id = h.push(
        h.job("interrupted-old-gitlab")
            .script(["echo running-at-stop", "sleep 300"])
            .patch(serde_json::json!({"features": {"failure_reasons": reasons}})),
    );
    h.wait_trace(id, "\nrunning-at-stop", WAIT).await;
    let status = h.stop().await;
    assert!(status.success(), "ferry exit status {status}");
    let job = h.gitlab.job(id).unwrap();
    // gitlab-runner's fallback, and the log keeps the cause.
    let trace = h.expect(&job, JobStatus::Failed, Some("unknown_failure"));
    assert!(trace.contains("termination signal"), "{trace}");
    assert!(
        trace.contains("Job failed (runner_interrupted; reported as unknown_failure"),
        "{trace}"
    );
}
