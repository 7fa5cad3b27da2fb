//! A job's containers that its cleanup could not remove keep the project dir from the next job
//! until they are gone (docs/docker-executor.md, "Cleanup").

use super::*;

/// Job `id` of the same project as [`payload`]'s.
fn job(id: u64) -> JobPayload {
    payload(
        &["echo hello"],
        &[],
        serde_json::json!({
            "id": id,
            "job_info": {"id": id, "name": "t", "stage": "test", "project_id": 3,
                         "project_full_path": "g/p"},
        }),
    )
}

/// Every attempt of job 7's cleanup fails (Docker is down): job 8 of the same project dir first
/// removes job 7's containers, then runs.
#[tokio::test(start_paused = true)]
async fn the_next_job_removes_containers_a_failed_cleanup_left() {
    let first = Case::new(&job(7), HostFs);
    first.engine.fail_destroys(cleanup::CLEANUP_ATTEMPTS);
    first.run(job(7)).await;
    let dir = plan::compile(&job(8), &runner(), &first.ctx())
        .unwrap()
        .host_project_dir;
    assert!(
        first.workspaces.try_claim(&dir).is_none(),
        "eviction leaves a dir alone while containers may use it"
    );

    let second = first.next_job(&job(8));
    let log = second.run(job(8)).await;
    assert_eq!(
        final_state(&second.api),
        ("success".to_string(), None),
        "{log}"
    );
    assert!(
        log.contains("Removing the containers of the previous job 7 of this project"),
        "{log}"
    );
    let calls = first.engine.calls();
    let prepare = calls.iter().position(|c| *c == Call::Prepare(8)).unwrap();
    let destroys: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i] == Call::Destroy(7))
        .collect();
    assert_eq!(destroys.len(), 5, "4 attempts, then job 8's: {calls:?}");
    assert!(destroys[4] < prepare, "{calls:?}");
    assert!(first.workspaces.try_claim(&dir).is_some(), "free again");
}

/// If job 7's containers still cannot be removed, job 8 fails without touching the dir, and
/// job 9 tries again.
#[tokio::test(start_paused = true)]
async fn a_job_fails_while_the_containers_of_the_previous_one_cannot_be_removed() {
    let first = Case::new(&job(7), HostFs);
    first.engine.fail_destroys(cleanup::CLEANUP_ATTEMPTS + 1);
    first.run(job(7)).await;

    let second = first.next_job(&job(8));
    let log = second.run(job(8)).await;
    assert_eq!(
        final_state(&second.api),
        (
            "failed".to_string(),
            Some(FailureReason::RunnerSystemFailure.to_string())
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "Job failed: the containers of the previous job 7 of this project could not be removed and may still use its directory: docker: connection refused"
        ),
        "{log}"
    );
    assert!(
        !first.engine.calls().contains(&Call::Prepare(8)),
        "{:?}",
        first.engine.calls()
    );

    let third = first.next_job(&job(9));
    let log = third.run(job(9)).await;
    assert_eq!(
        final_state(&third.api),
        ("success".to_string(), None),
        "{log}"
    );
}
