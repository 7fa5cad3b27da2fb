//! The job flow of `GitLabClient` against Collabora's `gitlab-runner-mock` 0.3.2: an independent
//! implementation of the server side (its inclusive `Content-Range` check, token checks,
//! multipart parsing, old-GitLab dependency tokens and payload quirks such as `exprire_in`).

use std::time::Duration;

use bytes::Bytes;
use ferry_runner::api::{
    ApiError, ArtifactMeta, JobApi, JobState, JobUpdate, RemoteStatus, TraceReply, UpdateReply,
};
use ferry_runner::gitlab::{ClientOptions, GitLabClient, JobRequest, RetryPolicy};
use gitlab_runner_mock::{GitlabRunnerMock, MockJobState, MockJobStepName, MockJobStepWhen};

const SYSTEM_ID: &str = "s_0123456789ab";

fn client(mock: &GitlabRunnerMock) -> GitLabClient {
    GitLabClient::new(&ClientOptions {
        url: mock.uri().to_string(),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..Default::default()
    })
    .expect("client")
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
async fn job_flow_against_gitlab_runner_mock() {
    let mock = GitlabRunnerMock::start().await;
    let job = mock.add_dummy_job("build".into());
    let client = client(&mock);

    let bad = client
        .request_job("wrongtoken", SYSTEM_ID, None)
        .await
        .unwrap();
    assert!(matches!(bad, JobRequest::Forbidden { .. }), "{bad:?}");

    let got = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap();
    let JobRequest::Job { payload, .. } = got else {
        panic!("expected a job, got {got:?}")
    };
    assert_eq!(payload.id, job.id());
    assert_eq!(payload.job_info.name, "build");
    assert_eq!(payload.runner_info.timeout, 3600);
    assert!(!payload.steps.is_empty());
    assert!(payload.variables.iter().any(|v| v.key == "CI_JOB_TOKEN"));
    assert_eq!(job.state(), MockJobState::Running);
    let job_ref = payload.job_ref();

    // Nothing else queued.
    let none = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap();
    assert!(
        matches!(none, JobRequest::NoJob { last_update: None }),
        "{none:?}"
    );

    let reply = client
        .update_job(&job_ref, &update(JobState::Running))
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            UpdateReply::Accepted {
                status: Some(RemoteStatus::Running),
                ..
            }
        ),
        "{reply:?}"
    );

    let reply = client
        .patch_trace(&job_ref, 0, Bytes::from_static(b"Running on ferry\n"))
        .await
        .unwrap();
    assert!(
        matches!(reply, TraceReply::Accepted { status: Some(RemoteStatus::Running), interval: Some(d), .. } if d == Duration::from_secs(3)),
        "{reply:?}"
    );
    let reply = client
        .patch_trace(&job_ref, 17, Bytes::from_static(b"$ make\nok\n"))
        .await
        .unwrap();
    assert!(matches!(reply, TraceReply::Accepted { .. }), "{reply:?}");
    assert_eq!(job.log(), b"Running on ferry\n$ make\nok\n");
    assert_eq!(job.log_patches(), 2);

    // The mock answers a wrong offset with 416 but no Range header: a clear error, not a guess.
    let err = client
        .patch_trace(&job_ref, 5, Bytes::from_static(b"dup"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("416 for job {}", job.id())),
        "{err}"
    );
    assert_eq!(job.log(), b"Running on ferry\n$ make\nok\n");

    let final_update = JobUpdate {
        checksum: Some("crc32:00000000".into()),
        bytesize: Some(27),
        ..update(JobState::Success)
    };
    let reply = client.update_job(&job_ref, &final_update).await.unwrap();
    assert!(matches!(reply, UpdateReply::Accepted { .. }), "{reply:?}");
    assert_eq!(job.state(), MockJobState::Success);

    // The job is over: trace and updates are refused.
    let reply = client
        .patch_trace(&job_ref, 27, Bytes::from_static(b"late"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        TraceReply::Gone {
            status: Some(RemoteStatus::Gone)
        }
    );
    assert_eq!(
        client
            .update_job(&job_ref, &update(JobState::Running))
            .await
            .unwrap(),
        UpdateReply::Gone
    );
}

#[tokio::test]
async fn failed_job_and_cancel_against_gitlab_runner_mock() {
    let mock = GitlabRunnerMock::start().await;
    let first = mock.add_dummy_job("fails".into());
    let second = mock.add_dummy_job("canceled".into());
    let client = client(&mock);

    let JobRequest::Job { payload, .. } = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(payload.id, first.id());
    let failed = JobUpdate {
        failure_reason: Some("script_failure".into()),
        exit_code: Some(1),
        ..update(JobState::Failed)
    };
    client
        .update_job(&payload.job_ref(), &failed)
        .await
        .unwrap();
    assert_eq!(first.state(), MockJobState::Failed);

    let JobRequest::Job { payload, .. } = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(payload.id, second.id());
    let job_ref = payload.job_ref();
    second.cancel();
    let reply = client
        .patch_trace(&job_ref, 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        reply,
        TraceReply::Gone {
            status: Some(RemoteStatus::Gone)
        }
    );
    assert_eq!(
        client
            .update_job(&job_ref, &update(JobState::Failed))
            .await
            .unwrap(),
        UpdateReply::Gone
    );
}

#[tokio::test]
async fn artifacts_and_dependencies_against_gitlab_runner_mock() {
    let mock = GitlabRunnerMock::start().await;
    let mut builder = mock.job_builder("build".into());
    builder.add_step(
        MockJobStepName::Script,
        vec!["make".into()],
        3600,
        MockJobStepWhen::OnSuccess,
        false,
    );
    builder.add_artifact_paths(vec!["target/app".into()]);
    let build = builder.build();
    mock.enqueue_job(build.clone());

    let mut builder = mock.job_builder("test".into());
    builder.add_step(
        MockJobStepName::Script,
        vec!["make test".into()],
        3600,
        MockJobStepWhen::OnSuccess,
        false,
    );
    builder.dependency(build.clone());
    let test = builder.build();
    mock.enqueue_job(test.clone());

    let client = client(&mock);
    let JobRequest::Job { payload, .. } = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(payload.id, build.id());
    // The mock's artifacts entry has the typo'd `exprire_in`; the payload still parses.
    assert_eq!(payload.artifacts.len(), 1);
    assert_eq!(payload.artifacts[0].paths, vec!["target/app"]);
    assert_eq!(payload.artifacts[0].artifact_type, "archive");
    assert_eq!(payload.artifacts[0].expire_in, None);
    let build_ref = payload.job_ref();

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("artifacts.zip");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&archive, &content).unwrap();
    let meta = ArtifactMeta {
        artifact_type: "archive".into(),
        artifact_format: "zip".into(),
        name: "artifacts.zip".into(),
        expire_in: Some("1 week".into()),
        progress: Default::default(),
    };
    client
        .upload_artifacts(&build_ref, &meta, &archive)
        .await
        .expect("upload to the mock");
    let uploaded: Vec<_> = build.uploaded_artifacts().collect();
    assert_eq!(uploaded.len(), 1);
    assert_eq!(uploaded[0].filename.as_deref(), Some("artifacts.zip"));
    assert_eq!(uploaded[0].artifact_type.as_deref(), Some("archive"));
    assert_eq!(uploaded[0].artifact_format.as_deref(), Some("zip"));
    assert_eq!(*uploaded[0].data, content);
    client
        .update_job(&build_ref, &update(JobState::Success))
        .await
        .unwrap();

    let JobRequest::Job { payload, .. } = client
        .request_job(mock.runner_token(), SYSTEM_ID, None)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(payload.id, test.id());
    let dep = &payload.dependencies[0];
    assert_eq!(dep.id, build.id());
    assert!(dep.has_artifacts());

    // One injected 500 is retried inside the HTTP layer.
    mock.set_inject_artifact_download_failures(1);
    let dest = dir.path().join("dep.zip");
    client
        .download_artifacts(dep.id, &dep.token, &dest)
        .await
        .expect("download from the mock");
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    let err = client
        .download_artifacts(dep.id, "wrong", &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Status { status: 403, .. }), "{err}");
    assert!(!dest.exists(), "a failed download leaves no file");
}
