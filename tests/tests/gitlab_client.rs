//! `GitLabClient` over real HTTP against the fake GitLab: registration, verify, unregister,
//! token reset, job requests, updates, trace, artifacts, TLS, outages.

use std::time::Duration;

use bytes::Bytes;
use ferry_runner::api::{
    ApiError, ArtifactMeta, JobApi, JobRef, JobState, JobUpdate, RemoteStatus, TraceReply,
    UpdateReply,
};
use ferry_runner::gitlab::{
    ClientOptions, FEATURES, GitLabClient, JobRequest, RegisterRequest, RetryPolicy,
};
use ferry_tests::fake_gitlab::{FakeGitLab, JobSpec, JobStatus, RunnerSpec};
use serde_json::json;

const SYSTEM_ID: &str = "s_0123456789ab";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn client_for(url: &str) -> GitLabClient {
    GitLabClient::new(&ClientOptions {
        url: url.to_owned(),
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client")
}

/// A fake with one UI-created runner, a client, and one job handed to that runner.
async fn running_job(spec: JobSpec) -> (FakeGitLab, GitLabClient, JobRef) {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    let id = gitlab.push_job(spec);
    match client
        .request_job(&token, SYSTEM_ID, None)
        .await
        .expect("request")
    {
        JobRequest::Job { payload, .. } => {
            assert_eq!(payload.id, id);
            let job = payload.job_ref();
            (gitlab, client, job)
        }
        other => panic!("expected a job, got {other:?}"),
    }
}

fn update(state: JobState) -> JobUpdate {
    JobUpdate {
        state,
        failure_reason: None,
        exit_code: None,
        checksum: None,
        bytesize: None,
    }
}

#[tokio::test]
async fn register_with_registration_token_creates_runner_with_settings() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941regtoken");
    gitlab.set_token_expires_at(Some("2030-01-01T00:00:00.000Z"));
    let client = client_for(&gitlab.url());
    let request = RegisterRequest {
        description: "ferry-builder-01".into(),
        tags: vec!["docker".into(), "linux".into()],
        run_untagged: false,
        locked: true,
        access_level: Some("ref_protected".into()),
        maximum_timeout: Some(7200),
        paused: false,
        maintenance_note: Some("rack 4".into()),
    };
    let reg = client
        .register("GR1348941regtoken", &request)
        .await
        .expect("register");
    assert!(!reg.token.is_empty());
    assert_eq!(
        reg.token_expires_at.as_deref(),
        Some("2030-01-01T00:00:00.000Z")
    );
    assert_eq!(
        ferry_runner::gitlab::parse_expiry("2030-01-01T00:00:00.000Z"),
        Some(1893456000)
    );
    assert!(
        !format!("{reg:?}").contains(&reg.token),
        "Debug shows the whole token"
    );

    let runner = gitlab.runner(reg.id).expect("runner stored");
    assert_eq!(runner.token, reg.token);
    assert_eq!(runner.description, "ferry-builder-01");
    assert_eq!(runner.tags, vec!["docker", "linux"]);
    assert!(!runner.run_untagged);
    assert!(runner.locked);
    assert_eq!(runner.access_level, "ref_protected");
    assert_eq!(runner.maximum_timeout, Some(7200));
    assert_eq!(runner.maintenance_note, "rack 4");
    assert_eq!(runner.info["name"], "ferry");
    assert_eq!(runner.info["features"]["cancel_gracefully"], true);
}

#[tokio::test]
async fn register_without_tags_forces_run_untagged() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("regtok-1234");
    let client = client_for(&gitlab.url());
    let reg = client
        .register(
            "regtok-1234",
            &RegisterRequest {
                description: "x".into(),
                ..Default::default()
            },
        )
        .await
        .expect("register");
    assert!(gitlab.runner(reg.id).unwrap().run_untagged);
}

#[tokio::test]
async fn register_errors_are_clear_and_hide_the_token() {
    let gitlab = FakeGitLab::start().await;
    let client = client_for(&gitlab.url());
    let err = client
        .register("GR1348941wrongtoken", &RegisterRequest::default())
        .await
        .expect_err("unknown registration token");
    let text = err.to_string();
    assert!(
        matches!(err, ApiError::Status { status: 403, .. }),
        "{text}"
    );
    assert!(text.contains("registration token rejected"), "{text}");
    assert!(!text.contains("GR1348941wrongtoken"), "{text}");

    gitlab.add_registration_token("GR1348941goodtoken");
    gitlab.set_registration_disabled(true);
    let err = client
        .register("GR1348941goodtoken", &RegisterRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 410, .. }), "{err}");
    assert!(err.to_string().contains("glrt-"), "{err}");
    assert!(gitlab.runners().is_empty());
}

#[tokio::test]
async fn verify_glrt_token_registers_manager_and_rejects_unknown_tokens() {
    let gitlab = FakeGitLab::start().await;
    let (id, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    let v = client.verify(&token, SYSTEM_ID).await.expect("verify");
    assert_eq!(v.id, Some(id));
    assert!(gitlab.runner(id).unwrap().managers.contains(SYSTEM_ID));
    assert_eq!(gitlab.runner(id).unwrap().info["executor"], "docker");

    let bad = "glrt-thisisnotavalidtoken";
    let err = client
        .verify(bad, SYSTEM_ID)
        .await
        .expect_err("unknown token");
    assert!(matches!(err, ApiError::Status { status: 403, .. }));
    let text = err.to_string();
    assert!(!text.contains(bad) && text.contains("glrt-thi"), "{text}");
}

#[tokio::test]
async fn unregister_glrt_token_removes_only_the_manager() {
    let gitlab = FakeGitLab::start().await;
    let (id, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    client.verify(&token, SYSTEM_ID).await.unwrap();
    client
        .unregister(&token, Some(SYSTEM_ID))
        .await
        .expect("unregister manager");
    let runner = gitlab
        .runner(id)
        .expect("the runner created in the UI survives");
    assert!(runner.managers.is_empty());
    assert_eq!(
        gitlab.count_requests("DELETE", "/api/v4/runners/managers"),
        1
    );
    // Again: this manager is gone now.
    let err = client
        .unregister(&token, Some(SYSTEM_ID))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 404, .. }), "{err}");
}

#[tokio::test]
async fn unregister_registered_runner_deletes_it() {
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("regtok-abcd");
    let client = client_for(&gitlab.url());
    let reg = client
        .register(
            "regtok-abcd",
            &RegisterRequest {
                description: "r".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client
        .unregister(&reg.token, Some(SYSTEM_ID))
        .await
        .expect("unregister");
    assert!(gitlab.runner(reg.id).is_none());
    let err = client.unregister(&reg.token, None).await.unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 403, .. }));
}

#[tokio::test]
async fn reset_token_rotates_and_invalidates_the_old_one() {
    let gitlab = FakeGitLab::start().await;
    let (id, old) = gitlab.create_runner(RunnerSpec::default());
    gitlab.set_token_expires_at(Some("2031-06-01T12:00:00Z"));
    let client = client_for(&gitlab.url());
    let reset = client.reset_token(&old).await.expect("reset");
    assert_ne!(reset.token, old);
    assert!(reset.token.starts_with("glrt-"));
    assert_eq!(
        reset.token_expires_at.as_deref(),
        Some("2031-06-01T12:00:00Z")
    );
    assert_eq!(
        client.verify(&reset.token, SYSTEM_ID).await.unwrap().id,
        Some(id)
    );
    let err = client.verify(&old, SYSTEM_ID).await.unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 403, .. }));
}

#[tokio::test]
async fn request_job_no_job_then_job_with_truthful_info() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());

    let first = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    let JobRequest::NoJob {
        last_update: Some(last_update),
    } = first
    else {
        panic!("expected 204 with X-GitLab-Last-Update, got {first:?}");
    };
    assert_eq!(last_update, gitlab.queue_version());
    // Nothing changed: GitLab's shortcut answers 204 with the same value.
    let again = client
        .request_job(&token, SYSTEM_ID, Some(&last_update))
        .await
        .unwrap();
    assert!(matches!(again, JobRequest::NoJob { last_update: Some(ref v) } if *v == last_update));

    let id = gitlab.push_job(JobSpec::new("build").script(["make"]).variable(
        "API_KEY",
        "s3cr3t-value",
        true,
    ));
    let got = client
        .request_job(&token, SYSTEM_ID, Some(&last_update))
        .await
        .unwrap();
    let JobRequest::Job { payload, raw } = got else {
        panic!("expected a job, got {got:?}")
    };
    assert_eq!(payload.id, id);
    assert_eq!(payload.steps[0].script, vec!["make"]);
    assert!(
        payload
            .variables
            .iter()
            .any(|v| v.key == "API_KEY" && v.masked)
    );
    assert!(!raw.is_empty());
    assert_eq!(gitlab.job_status(id), Some(JobStatus::Running));

    let bodies = gitlab.job_requests();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies[0].get("last_update").is_none(),
        "first request has no last_update"
    );
    assert_eq!(bodies[1]["last_update"], json!(last_update));
    assert_eq!(bodies[2]["system_id"], SYSTEM_ID);
    let features = bodies[2]["info"]["features"].as_object().unwrap();
    let advertised: Vec<&str> = features
        .iter()
        .filter(|(_, v)| **v == json!(true))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut expected: Vec<&str> = FEATURES.to_vec();
    expected.sort();
    assert_eq!(
        advertised, expected,
        "only the features of the FEATURES const"
    );
    assert_eq!(bodies[2]["info"]["name"], "ferry");
}

/// GitLab's `RegisterJobService#assign_runner!`: a job of matching tags that needs a feature
/// the runner does not advertise is dropped as `runner_unsupported` (not held back); jobs for
/// other tags stay queued.
#[tokio::test]
async fn jobs_needing_unadvertised_features_are_dropped_and_other_tags_are_not_given() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec {
        tags: vec!["docker".into()],
        run_untagged: false,
        ..Default::default()
    });
    let client = client_for(&gitlab.url());
    let vault = gitlab.push_job(
        JobSpec::new("secrets")
            .tags(["docker"])
            .patch(json!({"secrets": {"PW": {"vault": {"path": "db"}}}})),
    );
    let arm = gitlab.push_job(JobSpec::new("arm").tags(["arm64"]));
    let untagged = gitlab.push_job(JobSpec::new("untagged"));
    let ok = gitlab.push_job(
        JobSpec::new("ok")
            .tags(["docker"])
            .requires_feature("cancel_gracefully"),
    );
    let got = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    assert!(
        matches!(got, JobRequest::Job { ref payload, .. } if payload.id == ok),
        "{got:?}"
    );
    assert!(matches!(
        client.request_job(&token, SYSTEM_ID, None).await.unwrap(),
        JobRequest::NoJob { .. }
    ));
    let dropped = gitlab.job(vault).unwrap();
    assert_eq!(dropped.status, JobStatus::Failed);
    assert_eq!(
        dropped.failure_reason.as_deref(),
        Some("runner_unsupported")
    );
    assert_eq!(gitlab.queued_jobs(), vec![arm, untagged]);
}

#[tokio::test]
async fn request_job_status_handling() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());

    let forbidden = client
        .request_job("glrt-unknowntoken0000", SYSTEM_ID, None)
        .await
        .unwrap();
    assert!(
        matches!(forbidden, JobRequest::Forbidden { .. }),
        "{forbidden:?}"
    );

    gitlab.push_job(JobSpec::new("raced"));
    gitlab.inject_job_request_status(409);
    assert!(matches!(
        client.request_job(&token, SYSTEM_ID, None).await.unwrap(),
        JobRequest::Conflict
    ));

    gitlab.inject_job_request_status(422);
    let err = client
        .request_job(&token, SYSTEM_ID, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Status { status: 422, .. }) && !err.is_transient(),
        "{err}"
    );

    gitlab.inject_job_request_status(400);
    let err = client
        .request_job(&token, SYSTEM_ID, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 400, .. }), "{err}");

    // 502, 503 and 429 are not retried: one request each, the status comes back (the poll loop
    // asks again at its own pace; docs/gitlab-api.md, "Outages"), then the job comes.
    let path = "/api/v4/jobs/request";
    for status in [502, 503, 429] {
        gitlab.inject_job_request_status(status);
        let before = gitlab.count_requests("POST", path);
        let err = client
            .request_job(&token, SYSTEM_ID, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::Status { status: s, .. } if s == status) && err.is_transient(),
            "{err}"
        );
        assert_eq!(gitlab.count_requests("POST", path), before + 1, "{status}");
    }
    let got = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    assert!(matches!(got, JobRequest::Job { .. }), "{got:?}");
}

#[tokio::test]
async fn unusable_payload_still_yields_the_job_ref() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    let id = gitlab.push_job(JobSpec::raw(
        json!({"steps": "not a list of steps", "variables": 7}),
    ));
    let got = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    let JobRequest::Unusable { job: Some(job), .. } = got else {
        panic!("{got:?}")
    };
    assert_eq!(job.id, id);
    // The caller can fail it.
    let reply = client
        .update_job(
            &job,
            &JobUpdate {
                failure_reason: Some("runner_system_failure".into()),
                ..update(JobState::Failed)
            },
        )
        .await
        .unwrap();
    assert!(matches!(reply, UpdateReply::Accepted { .. }));
    let record = gitlab.job(id).unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(
        record.failure_reason.as_deref(),
        Some("runner_system_failure")
    );
}

#[tokio::test]
async fn long_polling_holds_until_a_job_arrives_and_answers_without_header() {
    let gitlab = FakeGitLab::start().await;
    gitlab.set_long_poll(Some(Duration::from_secs(20)));
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    // First request (no last_update) is never held.
    let JobRequest::NoJob {
        last_update: Some(lu),
    } = client.request_job(&token, SYSTEM_ID, None).await.unwrap()
    else {
        panic!("expected 204 with header")
    };
    let held = {
        let client = client.clone();
        let token = token.clone();
        let lu = lu.clone();
        tokio::spawn(async move { client.request_job(&token, SYSTEM_ID, Some(&lu)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "request with a current last_update is held"
    );
    gitlab.push_job(JobSpec::new("woken"));
    let answer = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, JobRequest::NoJob { last_update: None }),
        "{answer:?}"
    );
    // The caller keeps its old value; the queue changed, so Rails hands the job out.
    let got = client
        .request_job(&token, SYSTEM_ID, Some(&lu))
        .await
        .unwrap();
    assert!(matches!(got, JobRequest::Job { .. }), "{got:?}");
}

#[tokio::test]
async fn update_job_running_success_with_checksum() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    let reply = client
        .update_job(&job, &update(JobState::Running))
        .await
        .unwrap();
    assert_eq!(
        reply,
        UpdateReply::Accepted {
            status: Some(RemoteStatus::Running),
            interval: Some(Duration::from_secs(60))
        }
    );
    let final_update = JobUpdate {
        checksum: Some("crc32:8c736521".into()),
        bytesize: Some(5),
        exit_code: None,
        ..update(JobState::Success)
    };
    let reply = client.update_job(&job, &final_update).await.unwrap();
    assert!(
        matches!(
            reply,
            UpdateReply::Accepted {
                status: Some(RemoteStatus::Gone),
                ..
            }
        ),
        "{reply:?}"
    );
    let record = gitlab.job(job.id).unwrap();
    assert_eq!(record.status, JobStatus::Success);
    assert_eq!(record.checksum.as_deref(), Some("crc32:8c736521"));
    assert_eq!(record.bytesize, Some(5));
    let body = &record.updates[1];
    assert_eq!(body["output"]["checksum"], "crc32:8c736521");
    assert_eq!(body["checksum"], "crc32:8c736521");
    assert!(body.get("failure_reason").is_none());
    // Over: further updates are refused.
    assert_eq!(
        client
            .update_job(&job, &update(JobState::Running))
            .await
            .unwrap(),
        UpdateReply::Gone
    );
}

#[tokio::test]
async fn update_job_failed_records_reason_and_exit_code() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    let failed = JobUpdate {
        failure_reason: Some("script_failure".into()),
        exit_code: Some(2),
        ..update(JobState::Failed)
    };
    client.update_job(&job, &failed).await.unwrap();
    let record = gitlab.job(job.id).unwrap();
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(record.exit_code, Some(2));
}

#[tokio::test]
async fn final_update_202_then_200() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    gitlab.set_final_update_202(2);
    gitlab.set_trace_update_interval(Some("7"));
    for _ in 0..2 {
        let reply = client
            .update_job(&job, &update(JobState::Success))
            .await
            .unwrap();
        assert_eq!(
            reply,
            UpdateReply::Pending {
                interval: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(gitlab.job_status(job.id), Some(JobStatus::Running));
    }
    let reply = client
        .update_job(&job, &update(JobState::Success))
        .await
        .unwrap();
    assert!(matches!(reply, UpdateReply::Accepted { .. }));
    assert_eq!(gitlab.job_status(job.id), Some(JobStatus::Success));
}

#[tokio::test]
async fn update_after_cancel_is_gone_and_graceful_cancel_is_reported() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    gitlab.cancel(job.id); // ferry advertises cancel_gracefully → canceling
    assert_eq!(gitlab.job_status(job.id), Some(JobStatus::Canceling));
    let reply = client
        .update_job(&job, &update(JobState::Running))
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            UpdateReply::Accepted {
                status: Some(RemoteStatus::Canceling),
                ..
            }
        ),
        "{reply:?}"
    );
    // The final update of a canceling job makes it canceled.
    client
        .update_job(
            &job,
            &JobUpdate {
                failure_reason: Some("unknown_failure".into()),
                ..update(JobState::Failed)
            },
        )
        .await
        .unwrap();
    assert_eq!(gitlab.job_status(job.id), Some(JobStatus::Canceled));

    let (gitlab, client, job) = running_job(JobSpec::new("k")).await;
    gitlab.force_cancel(job.id);
    assert_eq!(
        client
            .update_job(&job, &update(JobState::Running))
            .await
            .unwrap(),
        UpdateReply::Gone
    );
    let wrong = JobRef {
        id: job.id,
        token: "glcbt-wrongtoken".into(),
        debug_trace: false,
    };
    assert_eq!(
        client
            .update_job(&wrong, &update(JobState::Running))
            .await
            .unwrap(),
        UpdateReply::Gone
    );
}

#[tokio::test]
async fn trace_patch_accepts_resyncs_and_reports_status() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    let reply = client
        .patch_trace(&job, 0, Bytes::from_static(b"hello "))
        .await
        .unwrap();
    assert_eq!(
        reply,
        TraceReply::Accepted {
            len: Some(6),
            status: Some(RemoteStatus::Running),
            interval: Some(Duration::from_secs(60))
        }
    );
    let reply = client
        .patch_trace(&job, 6, Bytes::from_static(b"world\n"))
        .await
        .unwrap();
    assert!(matches!(reply, TraceReply::Accepted { len: Some(12), .. }));
    assert_eq!(gitlab.trace_string(job.id), "hello world\n");

    // Wrong offset (GitLab has more than we think, e.g. after a restart): 416 with its length.
    let reply = client
        .patch_trace(&job, 3, Bytes::from_static(b"dup"))
        .await
        .unwrap();
    assert_eq!(reply, TraceReply::RangeMismatch { len: 12 });
    gitlab.set_trace(job.id, b"hello world\nfrom before\n");
    let reply = client
        .patch_trace(&job, 12, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(reply, TraceReply::RangeMismatch { len: 24 });
    assert!(matches!(
        client
            .patch_trace(&job, 24, Bytes::from_static(b"x"))
            .await
            .unwrap(),
        TraceReply::Accepted { len: Some(25), .. }
    ));

    // Intervals: capped, zero and garbage ignored.
    gitlab.set_trace_update_interval(Some("100000"));
    let reply = client
        .patch_trace(&job, 25, Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert!(
        matches!(reply, TraceReply::Accepted { interval: Some(d), .. } if d == Duration::from_secs(900))
    );
    gitlab.set_trace_update_interval(Some("0"));
    let reply = client
        .patch_trace(&job, 26, Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert!(matches!(reply, TraceReply::Accepted { interval: None, .. }));
    gitlab.set_trace_update_interval(Some("soon"));
    let reply = client
        .patch_trace(&job, 27, Bytes::from_static(b"c"))
        .await
        .unwrap();
    assert!(matches!(reply, TraceReply::Accepted { interval: None, .. }));

    gitlab.cancel(job.id);
    let reply = client
        .patch_trace(&job, 28, Bytes::from_static(b"d"))
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            TraceReply::Accepted {
                status: Some(RemoteStatus::Canceling),
                ..
            }
        ),
        "{reply:?}"
    );
    gitlab.force_cancel(job.id);
    let reply = client
        .patch_trace(&job, 29, Bytes::from_static(b"e"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        TraceReply::Gone {
            status: Some(RemoteStatus::Gone)
        }
    );
}

#[tokio::test]
async fn trace_patch_404_and_no_retry() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    gitlab.set_trace_not_found(job.id, true);
    assert_eq!(
        client
            .patch_trace(&job, 0, Bytes::from_static(b"x"))
            .await
            .unwrap(),
        TraceReply::NotFound
    );
    gitlab.set_trace_not_found(job.id, false);
    // A 502 is returned to the trace uploader as is: exactly one request.
    gitlab.outage(Duration::from_secs(60));
    let path = format!("/api/v4/jobs/{}/trace", job.id);
    let before = gitlab.count_requests("PATCH", &path);
    let err = client
        .patch_trace(&job, 0, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Status { status: 502, .. }) && err.is_transient(),
        "{err}"
    );
    assert_eq!(gitlab.count_requests("PATCH", &path), before + 1);
    // And so is the PUT (the uploader repeats it at its own pace): one request.
    let put = format!("/api/v4/jobs/{}", job.id);
    let before = gitlab.count_requests("PUT", &put);
    let err = client
        .update_job(&job, &update(JobState::Running))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 502, .. }));
    assert_eq!(gitlab.count_requests("PUT", &put), before + 1);
}

fn archive_meta() -> ArtifactMeta {
    ArtifactMeta {
        artifact_type: "archive".into(),
        artifact_format: "zip".into(),
        name: "artifacts.zip".into(),
        expire_in: Some("1 week".into()),
        progress: Default::default(),
    }
}

#[tokio::test]
async fn artifacts_upload_then_download_directly_and_via_redirect() {
    let (gitlab, client, job) =
        running_job(JobSpec::new("build").artifact_paths(["target/app"])).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("artifacts.zip");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &content).unwrap();
    client
        .upload_artifacts(&job, &archive_meta(), &src)
        .await
        .expect("upload");
    let report = ArtifactMeta {
        artifact_type: "junit".into(),
        artifact_format: "gzip".into(),
        name: "junit.xml.gz".into(),
        expire_in: None,
        progress: Default::default(),
    };
    let report_path = dir.path().join("junit.xml.gz");
    std::fs::write(&report_path, b"gz").unwrap();
    client
        .upload_artifacts(&job, &report, &report_path)
        .await
        .expect("upload report");

    let stored = gitlab.artifacts(job.id);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].filename, "artifacts.zip");
    assert_eq!(stored[0].artifact_type, "archive");
    assert_eq!(stored[0].artifact_format, "zip");
    assert_eq!(stored[0].expire_in.as_deref(), Some("1 week"));
    assert_eq!(stored[0].data, content);
    assert_eq!(stored[1].artifact_type, "junit");
    assert_eq!(stored[1].expire_in, None);
    client
        .update_job(&job, &update(JobState::Success))
        .await
        .unwrap();

    // A second job depends on the first; the fake gives it the dependency with its own token.
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let next = gitlab.push_job(JobSpec::new("test").depends_on(job.id));
    let JobRequest::Job { payload, .. } =
        client.request_job(&token, SYSTEM_ID, None).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(payload.id, next);
    let dep = &payload.dependencies[0];
    assert_eq!(dep.id, job.id);
    assert!(dep.has_artifacts());
    assert_eq!(
        dep.artifacts_file.as_ref().unwrap().size,
        content.len() as u64
    );

    let dest = dir.path().join("direct.zip");
    client
        .download_artifacts(dep.id, &dep.token, &dest)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    gitlab.set_artifact_redirect(true);
    let dest = dir.path().join("redirected.zip");
    client
        .download_artifacts(dep.id, &dep.token, &dest)
        .await
        .expect("download via redirect");
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert_eq!(
        gitlab.storage_requests_with_job_token(),
        0,
        "job token forwarded to storage"
    );
    assert!(
        gitlab
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/_storage/") && r.status == 200)
    );
}

/// As GitLab's `Ci::JobArtifacts::CreateService`: an upload of a type the job already has is
/// taken without a second copy when its bytes are the same, refused with 400 otherwise.
#[tokio::test]
async fn an_artifact_type_uploaded_again_is_kept_once_or_refused() {
    let (gitlab, client, job) = running_job(JobSpec::new("build")).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("artifacts.zip");
    std::fs::write(&src, b"zip bytes").unwrap();
    for _ in 0..2 {
        client
            .upload_artifacts(&job, &archive_meta(), &src)
            .await
            .expect("upload");
    }
    assert_eq!(gitlab.artifacts(job.id).len(), 1);
    std::fs::write(&src, b"other zip bytes").unwrap();
    let err = client
        .upload_artifacts(&job, &archive_meta(), &src)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 400, .. }), "{err}");
    let stored = gitlab.artifacts(job.id);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"zip bytes");
}

#[tokio::test]
async fn artifact_errors_are_clear() {
    let (gitlab, client, job) = running_job(JobSpec::new("build")).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.zip");
    std::fs::write(&src, vec![0u8; 2048]).unwrap();
    gitlab.set_max_artifact_size(Some(1024));
    let err = client
        .upload_artifacts(&job, &archive_meta(), &src)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 413, .. }), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(!err.to_string().contains(&job.token));

    let missing = client
        .upload_artifacts(&job, &archive_meta(), &dir.path().join("nope.zip"))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ApiError::Io(ref m) if m.contains("nope.zip")),
        "{missing}"
    );

    // Nothing uploaded for this job: 404, no file left behind.
    let dest = dir.path().join("dl.zip");
    let err = client
        .download_artifacts(job.id, &job.token, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 404, .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("artifacts of job {} not found", job.id)),
        "{err}"
    );
    assert!(!dest.exists());
    let err = client
        .download_artifacts(job.id, "glcbt-notatoken", &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 403, .. }), "{err}");

    gitlab.force_cancel(job.id);
    gitlab.set_max_artifact_size(None);
    let err = client
        .upload_artifacts(&job, &archive_meta(), &src)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 403, .. }), "{err}");
}

#[tokio::test]
async fn outage_then_stopped_listener_then_restart() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    gitlab.outage(Duration::from_secs(60));
    let err = client
        .request_job(&token, SYSTEM_ID, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Status { status: 502, .. }) && err.is_transient(),
        "{err}"
    );
    gitlab.end_outage();

    gitlab.stop().await;
    let err = client
        .request_job(&token, SYSTEM_ID, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Transport { .. }) && err.is_transient(),
        "{err}"
    );
    assert!(!err.to_string().contains(&token));

    gitlab.restart().await;
    let ok = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    assert!(matches!(ok, JobRequest::NoJob { .. }), "{ok:?}");
}

#[tokio::test]
async fn slow_responses_are_waited_for() {
    let gitlab = FakeGitLab::start().await;
    let (_, token) = gitlab.create_runner(RunnerSpec::default());
    let client = client_for(&gitlab.url());
    gitlab.set_delay(Some(Duration::from_millis(1500)));
    let started = std::time::Instant::now();
    let ok = client.request_job(&token, SYSTEM_ID, None).await.unwrap();
    assert!(matches!(ok, JobRequest::NoJob { .. }));
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn relative_url_root_and_trailing_ci_are_handled() {
    let gitlab = FakeGitLab::start().await;
    let (id, token) = gitlab.create_runner(RunnerSpec::default());
    for url in [
        format!("{}/", gitlab.url_with_root()),
        format!("{}/ci", gitlab.url_with_root()),
    ] {
        let client = client_for(&url);
        assert_eq!(client.verify(&token, SYSTEM_ID).await.unwrap().id, Some(id));
    }
    assert_eq!(
        gitlab.count_requests("POST", "/gitlab/api/v4/runners/verify"),
        2
    );
    assert!(
        GitLabClient::new(&ClientOptions {
            url: "ftp://x".into(),
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        GitLabClient::new(&ClientOptions {
            url: "not a url".into(),
            ..Default::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn tls_with_ca_file() {
    let gitlab = FakeGitLab::start_tls().await;
    let (id, token) = gitlab.create_runner(RunnerSpec::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, gitlab.ca_pem().unwrap()).unwrap();

    let trusting = GitLabClient::new(&ClientOptions {
        url: gitlab.url(),
        tls_ca_file: Some(ca.clone()),
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client with CA file");
    assert_eq!(
        trusting.verify(&token, SYSTEM_ID).await.unwrap().id,
        Some(id)
    );

    let untrusting = client_for(&gitlab.url());
    let err = untrusting.verify(&token, SYSTEM_ID).await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err}");

    let bad_ca = dir.path().join("bad.pem");
    std::fs::write(&bad_ca, "not a certificate").unwrap();
    let err = GitLabClient::new(&ClientOptions {
        url: gitlab.url(),
        tls_ca_file: Some(bad_ca),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("bad.pem"), "{err}");
    let err = GitLabClient::new(&ClientOptions {
        url: gitlab.url(),
        tls_cert_file: Some(ca),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("together"), "{err}");
}

#[tokio::test]
async fn headers_user_agent_content_types() {
    let (gitlab, client, job) = running_job(JobSpec::new("j")).await;
    client
        .patch_trace(&job, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    client
        .update_job(&job, &update(JobState::Running))
        .await
        .unwrap();
    let requests = gitlab.requests();
    let ua = format!("ferry {} (", env!("CARGO_PKG_VERSION"));
    assert!(
        requests
            .iter()
            .all(|r| r.user_agent.as_deref().is_some_and(|u| u.starts_with(&ua))),
        "{requests:?}"
    );
    let find = |method: &str| requests.iter().find(|r| r.method == method).unwrap();
    assert_eq!(find("PATCH").content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        find("PUT").content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        find("POST").content_type.as_deref(),
        Some("application/json")
    );
}

#[tokio::test]
async fn artifacts_upload_follows_a_307_to_another_host() {
    let (gitlab, client, job) = running_job(JobSpec::new("build")).await;
    let other_host = format!("localhost:{}", gitlab.addr().port());
    gitlab.set_upload_redirect_host(Some(&other_host));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("artifacts.zip");
    std::fs::write(&src, b"zip bytes").unwrap();
    client
        .upload_artifacts(&job, &archive_meta(), &src)
        .await
        .expect("upload via 307");
    let stored = gitlab.artifacts(job.id);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"zip bytes");
    assert_eq!(
        stored[0].expire_in.as_deref(),
        Some("1 week"),
        "query survives the redirect"
    );
    let statuses: Vec<u16> = gitlab
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/artifacts"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![307, 201]);
}

#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    let gitlab = FakeGitLab::start_mtls().await;
    let (id, token) = gitlab.create_runner(RunnerSpec::default());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&ca, gitlab.ca_pem().unwrap()).unwrap();
    std::fs::write(&cert, gitlab.client_cert_pem().unwrap()).unwrap();
    std::fs::write(&key, gitlab.client_key_pem().unwrap()).unwrap();

    let with_cert = GitLabClient::new(&ClientOptions {
        url: gitlab.url(),
        tls_ca_file: Some(ca.clone()),
        tls_cert_file: Some(cert),
        tls_key_file: Some(key),
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client with client certificate");
    assert_eq!(
        with_cert.verify(&token, SYSTEM_ID).await.unwrap().id,
        Some(id)
    );

    let without = GitLabClient::new(&ClientOptions {
        url: gitlab.url(),
        tls_ca_file: Some(ca),
        retry: fast_retry(),
        ..Default::default()
    })
    .unwrap();
    let err = without.verify(&token, SYSTEM_ID).await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err}");
}
