//! EXECUTOR_JOB_SECTION_ATTEMPTS: a step whose build container was removed under it runs again
//! in a new one, as gitlab-runner's Docker executor does; nothing else is tried again.

use ferry_executor::fake::Call;

use super::*;

fn job(script: &[&str], attempts: Option<&str>) -> JobPayload {
    let mut vars =
        vec![serde_json::json!({"key": "GIT_STRATEGY", "value": "none", "public": true})];
    if let Some(n) = attempts {
        vars.push(
            serde_json::json!({"key": "EXECUTOR_JOB_SECTION_ATTEMPTS", "value": n, "public": true}),
        );
    }
    payload(
        script,
        &[],
        serde_json::json!({
            "variables": vars,
            "features": {"trace_sections": true, "failure_reasons": [
                "unknown_failure", "script_failure", "runner_system_failure"]}
        }),
    )
}

fn recreated(engine: &FakeEngine) -> usize {
    engine
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Recreate(_)))
        .count()
}

const GONE: &str = "ERROR: Container \"fake-build\" not found or removed. Will retry...";

#[tokio::test(start_paused = true)]
async fn a_step_whose_container_disappeared_runs_again_in_a_new_one() {
    let (api, engine, log) = run(job(&["echo try", "gone 2", "echo finished"], Some("3"))).await;
    assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
    assert_eq!(recreated(&engine), 2, "{log}");
    assert_eq!(log.matches(GONE).count(), 2, "{log}");
    assert_eq!(log.matches("Retrying step_script").count(), 2, "{log}");
    assert_eq!(log.matches("\ntry\n").count(), 3, "{log}");
    assert_eq!(log.matches("\nfinished\n").count(), 1, "{log}");
    assert!(!log.contains("Execution attempts exceeded"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn past_its_attempts_the_job_fails_as_a_system_failure() {
    let (api, engine, log) = run(job(&["gone 5"], Some("2"))).await;
    assert_eq!(
        final_state(&api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert_eq!(recreated(&engine), 1, "{log}");
    assert_eq!(log.matches(GONE).count(), 2, "{log}");
    assert!(log.contains("ERROR: Execution attempts exceeded"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn by_default_nothing_is_tried_again() {
    let (api, engine, log) = run(job(&["gone 1"], None)).await;
    assert_eq!(
        final_state(&api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert_eq!(recreated(&engine), 0, "{log}");
    assert!(!log.contains("Retrying"), "{log}");
    assert!(!log.contains("Execution attempts exceeded"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn other_failures_are_not_tried_again() {
    let (api, engine, log) = run(job(&["fail-docker"], Some("3"))).await;
    assert_eq!(
        final_state(&api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert_eq!(recreated(&engine), 0, "{log}");
    assert!(!log.contains("Retrying"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn an_attempts_value_out_of_range_is_clamped_with_a_warning() {
    let (api, _, log) = run(job(&["gone 1", "echo ok"], Some("20"))).await;
    assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
    assert!(
        log.contains("EXECUTOR_JOB_SECTION_ATTEMPTS: number of attempts out of the range [1, 10], clamping to: 10"),
        "{log}"
    );
}
