//! RUNNER_SCRIPT_TIMEOUT: the script steps' own deadline, below the job's (gitlab-runner's
//! `executeUserScripts`), on tokio's paused clock.

use super::*;

fn job(script: &[&str], timeout: &str) -> JobPayload {
    payload(
        script,
        &["echo after-ran"],
        serde_json::json!({
            "variables": [
                {"key": "GIT_STRATEGY", "value": "none", "public": true},
                {"key": "RUNNER_SCRIPT_TIMEOUT", "value": timeout, "public": true},
            ],
            "features": {"trace_sections": true, "failure_reasons": [
                "unknown_failure", "script_failure", "runner_system_failure",
                "job_execution_timeout"]}
        }),
    )
}

fn after_script_status(engine: &FakeEngine) -> Option<String> {
    engine
        .steps()
        .into_iter()
        .find(|s| s.name == "after_script")
        .and_then(|s| {
            s.env
                .into_iter()
                .find(|v| v.name == "CI_JOB_STATUS")
                .map(|v| v.value)
        })
}

#[tokio::test(start_paused = true)]
async fn a_script_past_its_timeout_times_out_and_after_script_still_runs() {
    let (api, engine, log) = run(job(&["echo started", "sleep 600", "echo never"], "30s")).await;
    assert_eq!(
        final_state(&api),
        (
            "failed".to_string(),
            Some(FailureReason::JobExecutionTimeout.to_string())
        ),
        "{log}"
    );
    assert!(log.contains("started"), "{log}");
    assert!(!log.contains("\nnever"), "{log}");
    assert!(
        log.contains("WARNING: step_script could not run to completion because the timeout was exceeded. For more control over job and script timeouts see: https://docs.gitlab.com/ci/runners/configure_runners/#set-script-and-after_script-timeouts"),
        "{log}"
    );
    assert!(
        log.contains(
            "ERROR: Job failed: execution took longer than the script timeout of 30s (RUNNER_SCRIPT_TIMEOUT)"
        ),
        "{log}"
    );
    assert!(!log.contains("longer than the job timeout"), "{log}");
    assert!(log.contains("after-ran"), "{log}");
    assert_eq!(after_script_status(&engine).as_deref(), Some("timedout"));
}

#[tokio::test(start_paused = true)]
async fn a_script_within_its_timeout_succeeds() {
    let (api, engine, log) = run(job(&["sleep 10", "echo done"], "30s")).await;
    assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
    assert!(log.contains("done"), "{log}");
    assert!(!log.contains("could not run to completion"), "{log}");
    assert_eq!(after_script_status(&engine).as_deref(), Some("success"));
}

#[tokio::test(start_paused = true)]
async fn a_script_timeout_not_below_the_job_timeout_is_ignored_with_a_warning() {
    let (api, _, log) = run(job(&["sleep 10", "echo done"], "2h")).await;
    assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
    assert!(
        log.contains(
            "WARNING: RUNNER_SCRIPT_TIMEOUT timeout: 2h is longer than job timeout. Setting to job timeout"
        ),
        "{log}"
    );
}
