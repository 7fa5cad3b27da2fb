//! The runner core end to end: the real `ferry` binary against the fake GitLab over real HTTP.
//! CLI (register, verify, unregister, list), config errors, metrics, and jobs through `ferry run`
//! (final state, failure_reason, exit_code, exact trace bytes, outages, shutdown signals).
//! Jobs run in the real Docker engine with the locally built `ferry-test/busybox` image; where
//! Docker or the image is missing, the test prints SKIP with the reason.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ferry_tests::fake_gitlab::{FakeGitLab, JobSpec, JobStatus, RunnerSpec};
use ferry_tests::ferry_bin;
use serde_json::json;

const IMAGE: &str = "ferry-test/busybox:latest";

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

/// Why jobs cannot run here, if they cannot.
fn docker_unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(_) => Some(format!(
            "image {IMAGE} missing (run scripts/build-test-images.sh)"
        )),
        Err(e) => Some(format!("docker CLI unavailable: {e}")),
    }
}

macro_rules! require_docker {
    () => {
        if let Some(reason) = docker_unavailable() {
            println!("SKIP: {reason}");
            return;
        }
    };
}

/// A `ferry run` process with its config and working directory.
struct Ferry {
    child: Child,
    dir: tempfile::TempDir,
}

impl Ferry {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ferry.log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit; None if it did not within `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runner_config(gitlab: &FakeGitLab, token: &str, extra_global: &str) -> String {
    format!(
        r#"concurrent = 2
check_interval = 1
shutdown_timeout = 15
{extra_global}

[[runners]]
  name = "e2e"
  url = "{url}"
  token = "{token}"
  executor = "docker"
  [runners.docker]
    image = "{IMAGE}"
    pull_policy = ["if-not-present"]
"#,
        url = gitlab.url()
    )
}

fn start_ferry(config: &str) -> Ferry {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("ferry.log")).unwrap();
    let child = Command::new(ferry_bin())
        .arg("run")
        .arg("-c")
        .arg(dir.path().join("config.toml"))
        .arg("--working-directory")
        .arg(dir.path().join("work"))
        .env("LOG_LEVEL", "debug")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting ferry run");
    Ferry { child, dir }
}

/// A job that needs no sources: GIT_STRATEGY=none.
fn job(name: &str, script: &[&str]) -> JobSpec {
    let mut spec = JobSpec::new(name)
        .script(script.iter().copied())
        .image(Some(IMAGE));
    spec.variables
        .push(json!({"key": "GIT_STRATEGY", "value": "none", "public": true, "masked": false}));
    spec
}

async fn wait_final(gitlab: &FakeGitLab, id: u64, ferry: &Ferry) -> JobStatus {
    for _ in 0..600 {
        match gitlab.job_status(id) {
            Some(s @ (JobStatus::Success | JobStatus::Failed | JobStatus::Canceled)) => return s,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!(
        "job {id} did not finish; trace:\n{}\nferry log:\n{}",
        gitlab.trace_string(id),
        ferry.log()
    );
}

fn crc32(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
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
    let out = ferry(&[
        "register",
        "-c",
        cfg_s,
        "--non-interactive",
        "--url",
        &url,
        "--registration-token",
        "xxx",
        "--executor",
        "docker",
        "--docker-image",
        "alpine:latest",
        "--description",
        "base-runner-docker",
        "--tag-list",
        "base-runner",
        "--run-untagged=true",
        "--docker-privileged=true",
        "--docker-pull-policy",
        "if-not-present",
        "--docker-volumes",
        "/etc/docker/daemon.json:/etc/docker/daemon.json",
        "--docker-volumes",
        "/etc/gitlab-runner/key/test-kube-config:/root/.kube/config",
    ]);
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

// ----------------------------------------------------------------------------- jobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_end_with_their_state_exit_code_and_exact_trace() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let ok = gitlab.push_job(job("ok", &["echo hello from ferry", "echo $CI_JOB_NAME"]));
    let bad = gitlab.push_job(job("bad", &["echo before", "exit 3", "echo never printed"]));
    let ferry = start_ferry(&runner_config(&gitlab, &token, ""));

    assert_eq!(
        wait_final(&gitlab, ok, &ferry).await,
        JobStatus::Success,
        "{}",
        gitlab.trace_string(ok)
    );
    assert_eq!(
        wait_final(&gitlab, bad, &ferry).await,
        JobStatus::Failed,
        "{}",
        gitlab.trace_string(bad)
    );

    let ok_rec = gitlab.job(ok).unwrap();
    let trace = String::from_utf8_lossy(&ok_rec.trace).to_string();
    assert!(trace.contains("hello from ferry"), "{trace}");
    assert!(
        trace.contains("\nok\n") || trace.contains("ok\r\n"),
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

    let bad_rec = gitlab.job(bad).unwrap();
    assert_eq!(bad_rec.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(bad_rec.exit_code, Some(3));
    let trace = String::from_utf8_lossy(&bad_rec.trace);
    assert!(
        trace.contains("before") && !trace.contains("never printed"),
        "{trace}"
    );
    assert!(trace.contains("exit code 3"), "{trace}");
    assert!(!trace.contains(&bad_rec.token), "job token masked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_outage_mid_job_loses_nothing() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let id = gitlab.push_job(job("outage", &["echo first", "sleep 8", "echo second"]));
    let ferry = start_ferry(&runner_config(&gitlab, &token, ""));
    for _ in 0..300 {
        if gitlab.trace_string(id).contains("first") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 502s for a while, then the listener goes away entirely (connection refused), then back.
    gitlab.outage(Duration::from_secs(15));
    tokio::time::sleep(Duration::from_secs(15)).await;
    gitlab.stop().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    gitlab.restart().await;
    assert_eq!(
        wait_final(&gitlab, id, &ferry).await,
        JobStatus::Success,
        "{}",
        ferry.log()
    );
    let rec = gitlab.job(id).unwrap();
    let trace = String::from_utf8_lossy(&rec.trace);
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
    let next = gitlab.push_job(job("after-outage", &["echo again"]));
    assert_eq!(wait_final(&gitlab, next, &ferry).await, JobStatus::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_running_jobs_reports_them_failed_and_exits() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let id = gitlab.push_job(job("long", &["echo started", "sleep 300"]));
    let mut ferry = start_ferry(&runner_config(&gitlab, &token, ""));
    for _ in 0..300 {
        if gitlab.trace_string(id).contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gitlab.trace_string(id).contains("started"),
        "{}",
        ferry.log()
    );
    ferry.signal("TERM");
    let status = ferry.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some(),
        "ferry exits within shutdown_timeout: {}",
        ferry.log()
    );
    let rec = gitlab.job(id).unwrap();
    assert_eq!(
        rec.status,
        JobStatus::Failed,
        "{}",
        String::from_utf8_lossy(&rec.trace)
    );
    assert!(String::from_utf8_lossy(&rec.trace).contains("the runner was stopped"));
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=ferry.job_id={id}")])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "containers removed after the cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_lets_the_running_job_finish() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let id = gitlab.push_job(job(
        "finishing",
        &["echo started", "sleep 3", "echo finished"],
    ));
    let mut ferry = start_ferry(&runner_config(&gitlab, &token, ""));
    for _ in 0..300 {
        if gitlab.trace_string(id).contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ferry.signal("QUIT");
    let later = gitlab.push_job(job("not-taken", &["echo no"]));
    let status = ferry.wait_exit(Duration::from_secs(60)).await;
    assert!(status.is_some(), "{}", ferry.log());
    assert_eq!(gitlab.job_status(id), Some(JobStatus::Success));
    assert!(gitlab.trace_string(id).contains("finished"));
    assert!(
        gitlab.queued_jobs().contains(&later),
        "no new job taken after SIGQUIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_gitlab_stops_the_job_within_seconds() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let mut spec = job("cancel-me", &["echo started", "sleep 300"]);
    spec.after_script = vec!["echo after_script saw $CI_JOB_STATUS".into()];
    let id = gitlab.push_job(spec);
    // Whoever presses Cancel is looking at the job page: GitLab then asks for updates every 3 s
    // (60 s otherwise), and ferry learns of the cancel from the next reply.
    gitlab.set_trace_update_interval(Some("3"));
    let ferry = start_ferry(&runner_config(&gitlab, &token, ""));
    for _ in 0..300 {
        if gitlab.trace_string(id).contains("started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = std::time::Instant::now();
    gitlab.cancel(id);
    assert_eq!(wait_final(&gitlab, id, &ferry).await, JobStatus::Canceled);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "stopped within seconds: {:?}\ntrace:\n{}\nferry log:\n{}",
        t0.elapsed(),
        gitlab.trace_string(id),
        ferry.log()
    );
    let trace = gitlab.trace_string(id);
    assert!(trace.contains("after_script saw canceled"), "{trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ferry = start_ferry(&runner_config(
        &gitlab,
        &token,
        &format!("listen_address = \"127.0.0.1:{port}\""),
    ));
    let client = reqwest::Client::new();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            body = r.text().await.unwrap_or_default();
            if body.contains("gitlab_runner_api_request_statuses_total") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        body.contains("gitlab_runner_concurrent 2"),
        "{body}\n{}",
        ferry.log()
    );
    assert!(body.contains("gitlab_runner_version_info"), "{body}");
    assert!(
        body.contains("endpoint=\"request_job\",status=\"204\""),
        "{body}"
    );
    let health = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(!ferry.log().contains(&token), "no token in ferry's own log");
}

/// RFC 3339 UTC time `secs` from now, as TOML datetimes are written.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_token_is_rotated_before_it_expires_and_jobs_keep_flowing() {
    require_docker!();
    let gitlab = FakeGitLab::start().await;
    let (_id, token) = gitlab.create_runner(RunnerSpec::default());
    // Obtained 1000 s ago, expires in 100 s: three quarters of its life are gone.
    let config = runner_config(&gitlab, &token, "").replace(
        "  executor = \"docker\"",
        &format!(
            "  token_obtained_at = {}\n  token_expires_at = {}\n  executor = \"docker\"",
            toml_time(-1000),
            toml_time(100)
        ),
    );
    let ferry = start_ferry(&config);
    let path = ferry.dir.path().join("config.toml");
    let mut rotated = None;
    for _ in 0..300 {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains(&token) {
            rotated = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = rotated.unwrap_or_else(|| panic!("token not rotated; ferry log:\n{}", ferry.log()));
    let new_token = gitlab.runners()[0].token.clone();
    assert_ne!(new_token, token);
    assert!(text.contains(&format!("token = \"{new_token}\"")), "{text}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The reload moves polling to the new token: jobs still run.
    let id = gitlab.push_job(job("after-rotation", &["echo rotated"]));
    assert_eq!(
        wait_final(&gitlab, id, &ferry).await,
        JobStatus::Success,
        "{}",
        ferry.log()
    );
    assert!(!ferry.log().contains(&new_token), "no token in ferry's log");
}
