//! GET_SOURCES_ATTEMPTS and ARTIFACT_DOWNLOAD_ATTEMPTS: a failing host stage is tried again, as
//! gitlab-runner's `attemptExecuteStage` does (on tokio's paused clock: the waits cost nothing).

use super::fake_host::{Act, FakeHost, HostStage};
use super::*;

fn job(variables: serde_json::Value) -> JobPayload {
    payload(
        &["echo script-ran"],
        &[],
        serde_json::json!({
            "variables": variables,
            "dependencies": [{"id": 5, "name": "build", "token": TOKEN,
                              "artifacts_file": {"filename": "artifacts.zip", "size": 3}}],
            "features": {"trace_sections": true, "failure_reasons": [
                "unknown_failure", "script_failure", "runner_system_failure"]}
        }),
    )
}

fn var(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"key": key, "value": value, "public": true})
}

async fn run_with(host: FakeHost, variables: serde_json::Value) -> (Case<FakeHost>, String) {
    let p = job(variables);
    let case = Case::new(&p, host);
    case.api.with(|s| {
        s.artifacts.insert(5, b"zip".to_vec());
    });
    let log = case.run(p).await;
    (case, log)
}

fn times(case: &Case<FakeHost>, stage: HostStage) -> usize {
    let entered = case.host.entered.lock().unwrap();
    entered.iter().filter(|s| **s == stage).count()
}

#[tokio::test(start_paused = true)]
async fn get_sources_is_tried_again_up_to_its_attempts() {
    let vars = serde_json::json!([
        var("GIT_STRATEGY", "fetch"),
        var("GET_SOURCES_ATTEMPTS", "3")
    ]);
    let host = FakeHost::with(HostStage::GetSources, Act::FailTimes(2));
    let (case, log) = run_with(host, vars).await;
    assert_eq!(
        final_state(&case.api),
        ("success".to_string(), None),
        "{log}"
    );
    assert_eq!(times(&case, HostStage::GetSources), 3);
    assert!(
        log.contains("trying again (2/3, GET_SOURCES_ATTEMPTS)"),
        "{log}"
    );
    assert!(
        log.contains("trying again (3/3, GET_SOURCES_ATTEMPTS)"),
        "{log}"
    );
    assert!(log.contains("script-ran"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn without_the_variable_a_failing_get_sources_fails_the_job_at_once() {
    let vars = serde_json::json!([var("GIT_STRATEGY", "fetch")]);
    let host = FakeHost::with(HostStage::GetSources, Act::FailTimes(1));
    let (case, log) = run_with(host, vars).await;
    assert_eq!(
        final_state(&case.api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert_eq!(times(&case, HostStage::GetSources), 1);
    assert!(!log.contains("trying again"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn artifact_downloads_are_tried_again_and_out_of_range_attempts_are_clamped() {
    let vars = serde_json::json!([
        var("GIT_STRATEGY", "none"),
        var("ARTIFACT_DOWNLOAD_ATTEMPTS", "2"),
        var("GET_SOURCES_ATTEMPTS", "99"),
    ]);
    let host = FakeHost::with(HostStage::ExtractArtifacts, Act::FailTimes(1));
    let (case, log) = run_with(host, vars).await;
    assert_eq!(
        final_state(&case.api),
        ("success".to_string(), None),
        "{log}"
    );
    assert_eq!(times(&case, HostStage::ExtractArtifacts), 2);
    assert!(
        log.contains("trying again (2/2, ARTIFACT_DOWNLOAD_ATTEMPTS)"),
        "{log}"
    );
    assert!(
        log.contains(
            "GET_SOURCES_ATTEMPTS: number of attempts out of the range [1, 10], clamping to: 10"
        ),
        "{log}"
    );

    // Every attempt failing: the job fails after the last one.
    let vars = serde_json::json!([var("ARTIFACT_DOWNLOAD_ATTEMPTS", "2")]);
    let host = FakeHost::with(HostStage::ExtractArtifacts, Act::FailTimes(5));
    let (case, log) = run_with(host, vars).await;
    assert_eq!(final_state(&case.api).0, "failed", "{log}");
    assert_eq!(times(&case, HostStage::ExtractArtifacts), 2);
    assert!(!log.contains("script-ran"), "{log}");
}
