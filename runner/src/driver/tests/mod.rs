//! The driver in process: FakeEngine, FakeDeployer and the in-memory GitLab of the trace
//! tests; no Docker, no git.

mod attempts;
mod fake_host;
mod leftover;
mod script_timeout;
mod section_attempts;
mod table;

use std::time::Duration;

use super::*;
use crate::trace::fake::FakeGitLab;
use ferry_executor::fake::{Call, FakeEngine};

const TOKEN: &str = "glcbt-drivertest0token";

fn runner() -> Arc<RunnerSection> {
    let cfg = ferry_config::from_toml_str(
        r#"
[[runners]]
  name = "t"
  url = "https://gitlab.example.com"
  token = "glrt-drivertest0runner"
  executor = "docker"
  [runners.docker]
image = "busybox"
"#,
        "test.toml",
    )
    .unwrap();
    Arc::new(cfg.runners.into_iter().next().unwrap())
}

/// A job of the fake engine's language; `patch` is merged into the payload's top level.
fn payload(script: &[&str], after: &[&str], patch: serde_json::Value) -> JobPayload {
    let mut p = serde_json::json!({
        "id": 7, "token": TOKEN,
        "job_info": {"id": 7, "name": "t", "stage": "test", "project_id": 3,
                     "project_full_path": "g/p"},
        "runner_info": {"timeout": 3600},
        "variables": [{"key": "GIT_STRATEGY", "value": "none", "public": true}],
        "steps": [{"name": "script", "script": script, "timeout": 3600, "when": "on_success"},
                  {"name": "after_script", "script": after, "timeout": 3600, "when": "always"}],
        "image": {"name": "busybox"},
        "features": {"trace_sections": true}
    });
    if let (Some(p), serde_json::Value::Object(patch)) = (p.as_object_mut(), patch) {
        for (k, v) in patch {
            p.insert(k, v);
        }
    }
    crate::gitlab::payload::parse_payload(&serde_json::to_vec(&p).unwrap()).unwrap()
}

/// One job against the fakes: FakeEngine, the in-memory GitLab and a host (the real file
/// system or a [`fake_host::FakeHost`]).
struct Case<H> {
    api: Arc<FakeGitLab>,
    deployer: ferry_deploy::fake::FakeDeployer,
    engine: Arc<FakeEngine>,
    host: Arc<H>,
    shutdown: CancellationToken,
    dir: Arc<tempfile::TempDir>,
    /// Shared by the jobs of [`Case::next_job`], as by the jobs of one ferry process.
    workspaces: Workspaces,
}

impl<H: Host> Case<H> {
    fn new(p: &JobPayload, host: H) -> Self {
        let api = Arc::new(FakeGitLab::new(&p.job_ref()));
        // The uploader's own pace, fast, so GitLab's status reaches the job at once.
        api.with(|s| s.interval = None);
        Case {
            api,
            deployer: ferry_deploy::fake::FakeDeployer::default(),
            engine: Arc::new(FakeEngine::default()),
            host: Arc::new(host),
            shutdown: CancellationToken::new(),
            dir: Arc::new(tempfile::tempdir().unwrap()),
            workspaces: Workspaces::default(),
        }
    }

    /// A case for the next job `p` of the same ferry process: same engine, host, builds dir
    /// and project dir claims; its own GitLab.
    fn next_job(&self, p: &JobPayload) -> Self {
        let api = Arc::new(FakeGitLab::new(&p.job_ref()));
        api.with(|s| s.interval = None);
        Case {
            api,
            deployer: ferry_deploy::fake::FakeDeployer::default(),
            engine: self.engine.clone(),
            host: self.host.clone(),
            shutdown: CancellationToken::new(),
            dir: self.dir.clone(),
            workspaces: self.workspaces.clone(),
        }
    }

    fn ctx(&self) -> JobContext {
        JobContext {
            working_dir: self.dir.path().to_path_buf(),
            concurrent_id: 0,
            concurrent_project_id: 0,
            tls_ca_pem: None,
            object_cache: true,
            keep_step_output: true,
        }
    }

    /// Runs the job to its final update and its cleanup; returns the job log.
    async fn run(&self, p: JobPayload) -> String {
        let driver = Driver {
            engine: self.engine.clone(),
            deployer: Arc::new(self.deployer.clone()),
            api: self.api.clone(),
            host: self.host.clone(),
            metrics: Metrics::new(),
            system_id: "s_test".into(),
            trace_timing: TraceTiming {
                update_interval: Duration::from_millis(20),
                force_send_interval: Duration::from_millis(50),
                ..TraceTiming::default()
            },
            cleanups: TaskTracker::new(),
            workspaces: self.workspaces.clone(),
            journal: None,
        };
        let ctx = self.ctx();
        tokio::time::timeout(
            Duration::from_secs(60),
            driver.run(runner(), p, ctx, self.shutdown.clone()),
        )
        .await
        .expect("the job ended");
        driver.cleanups.close();
        driver.cleanups.wait().await;
        String::from_utf8_lossy(&self.api.trace()).into_owned()
    }
}

/// Runs the job on the real host file system; returns the fake GitLab, the engine and the log.
async fn run(p: JobPayload) -> (Arc<FakeGitLab>, Arc<FakeEngine>, String) {
    let case = Case::new(&p, HostFs);
    let log = case.run(p).await;
    (case.api, case.engine, log)
}

fn final_state(api: &FakeGitLab) -> (String, Option<String>) {
    api.with(|s| {
        let last = s.updates.last().expect("a final update");
        (s.status.clone(), last.update.failure_reason.clone())
    })
}

#[tokio::test]
async fn a_panic_in_a_job_fails_it_with_a_log_line_and_removes_its_containers() {
    let (api, engine, log) = run(payload(
        &["echo before", "panic boom in the engine"],
        &[],
        serde_json::json!({}),
    ))
    .await;
    assert_eq!(
        final_state(&api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert!(
        log.contains("internal error in ferry: boom in the engine"),
        "{log}"
    );
    assert!(log.contains("before"), "the log so far is kept: {log}");
    assert_eq!(
        engine.calls().last(),
        Some(&Call::Destroy(7)),
        "containers removed: {:?}",
        engine.calls()
    );
}

#[tokio::test]
async fn an_absurd_job_timeout_fails_the_job_at_once_with_the_reason() {
    // 1e30 decodes (saturated) to u64::MAX; `Instant + Duration` panicked on it.
    for timeout in [serde_json::json!(1e30), serde_json::json!(u64::MAX)] {
        let p = payload(
            &["echo never"],
            &[],
            serde_json::json!({"runner_info": {"timeout": timeout}}),
        );
        let (api, engine, log) = run(p).await;
        assert_eq!(
            final_state(&api),
            (
                "failed".to_string(),
                Some(FailureReason::RunnerSystemFailure.to_string())
            ),
            "{log}"
        );
        assert!(log.contains("GitLab never sends such a value"), "{log}");
        assert!(
            engine.calls().is_empty(),
            "nothing ran: {:?}",
            engine.calls()
        );
    }
}

#[tokio::test]
async fn a_huge_after_script_timeout_saturates() {
    // A job variable (the job controls it) far beyond what a deadline can hold.
    let p = payload(
        &["echo main"],
        &["echo after"],
        serde_json::json!({"variables": [
            {"key": "GIT_STRATEGY", "value": "none", "public": true},
            {"key": "RUNNER_AFTER_SCRIPT_TIMEOUT", "value": "99999999999999999999999h", "public": true}
        ]}),
    );
    let (api, engine, log) = run(p).await;
    assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
    assert!(log.contains("after"), "{log}");
    assert!(
        engine
            .calls()
            .contains(&Call::RunStep(7, "after_script".into()))
    );
}

/// A `MakeWriter` into a shared buffer, for reading ferry's own log in a test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn operator_log_lines_of_a_job_carry_the_job_runner_and_project() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The process-wide subscriber: tracing caches per call site whether anyone listens, and a
    // thread-local one misses call sites other tests' threads reached first. No other test
    // sets one; lines of other tests are told apart by the panic's text.
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    run(payload(&["panic span check"], &[], serde_json::json!({}))).await;
    let text = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("span check"))
        .unwrap_or_else(|| panic!("no such line in:\n{text}"));
    assert!(
        line.contains("job{job=7 runner=glrt-dri project=3}"),
        "{line}"
    );
}

/// A deploy job (`image: ferry:deploy`): each `ferry deploy` line in a `deploy` section, no
/// container; a failed rollout is the job's own failure.
#[tokio::test]
async fn a_deploy_job_deploys_each_line_without_a_container() {
    let deploy = |fail: Option<&str>| {
        let p = payload(
            &[
                "ferry deploy --manifests k8s/ --namespace a",
                "ferry deploy --manifests extra/",
            ],
            &[],
            serde_json::json!({"image": {"name": "ferry:deploy"}}),
        );
        let mut case = Case::new(&p, HostFs);
        case.deployer.fail_with = fail.map(str::to_string);
        (p, case)
    };
    let (p, case) = deploy(None);
    let log = case.run(p).await;
    assert_eq!(
        final_state(&case.api),
        ("success".to_string(), None),
        "{log}"
    );
    assert_eq!(
        log.matches("section_start:").count(),
        3,
        "get_sources and two deploys: {log}"
    );
    assert!(log.contains("fake deploy of k8s/"), "{log}");
    assert!(log.contains("fake deploy of extra/"), "{log}");
    assert_eq!(case.deployer.requests.lock().unwrap().len(), 2);
    assert!(
        case.engine.calls().is_empty(),
        "no container: {:?}",
        case.engine.calls()
    );

    let (p, case) = deploy(Some("deployment web did not become ready"));
    let log = case.run(p).await;
    assert_eq!(
        final_state(&case.api),
        (
            "failed".to_string(),
            Some(FailureReason::ScriptFailure.to_string())
        ),
        "{log}"
    );
    assert!(log.contains("deployment web did not become ready"), "{log}");
    assert_eq!(
        case.deployer.requests.lock().unwrap().len(),
        1,
        "the second line does not run after a failed one"
    );
}

/// ferry stopped (SIGTERM) with a job running: `runner_interrupted` where GitLab lists it, else
/// gitlab-runner's fallback `unknown_failure`, and the log says what happened either way.
#[tokio::test(start_paused = true)]
async fn a_shutdown_is_runner_interrupted_only_where_gitlab_lists_it() {
    for (listed, reported) in [
        (
            serde_json::json!(["unknown_failure", "script_failure", "runner_interrupted"]),
            FailureReason::RunnerInterrupted,
        ),
        (
            serde_json::json!(["unknown_failure", "script_failure", "runner_system_failure"]),
            FailureReason::UnknownFailure,
        ),
        (serde_json::json!([]), FailureReason::UnknownFailure),
    ] {
        let p = payload(
            &["echo never"],
            &[],
            serde_json::json!({"features": {"trace_sections": true, "failure_reasons": listed}}),
        );
        let case = Case::new(&p, HostFs);
        case.shutdown.cancel();
        let log = case.run(p).await;
        assert_eq!(
            final_state(&case.api),
            ("failed".to_string(), Some(reported.to_string())),
            "{listed}: {log}"
        );
        assert!(log.contains("termination signal"), "{log}");
        let last = if reported == FailureReason::RunnerInterrupted {
            "ERROR: Job failed (runner_interrupted)".to_string()
        } else {
            "ERROR: Job failed (runner_interrupted; reported as unknown_failure: this GitLab \
             does not list runner_interrupted in features.failure_reasons)"
                .to_string()
        };
        assert!(log.contains(&last), "{listed}: {log}");
        assert!(!log.contains("never"), "{log}");
    }
}
