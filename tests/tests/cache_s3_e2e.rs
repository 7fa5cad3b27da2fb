//! The distributed cache through `ferry run`: two ferry processes with different working
//! directories (two hosts) against one fake GitLab and one S3 bucket (moto, see
//! tests/src/moto.rs). Needs Docker and the test images (SKIP without, as every e2e test).

use std::time::Duration;

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;
use ferry_tests::moto;
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_saved_by_one_host_is_restored_by_another() {
    let port = moto::port();
    moto::create_bucket("e2e-cache");
    let setup = Setup::default().runner(&format!(
        "[runners.cache]\nType = \"s3\"\nShared = true\n[runners.cache.s3]\n\
         ServerAddress = \"127.0.0.1:{port}\"\nAccessKey = \"AKIDE2E\"\nSecretKey = \"e2e-secret-key-value\"\n\
         BucketName = \"e2e-cache\"\nInsecure = true\n"
    ));
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let cache = |policy: &str| {
        json!({"key": "deps-protected", "untracked": false, "policy": policy, "paths": ["vendor/"],
               "when": "on_success", "fallback_keys": []})
    };
    let mut save = h
        .job("save")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["mkdir -p vendor", "echo from-host-one > vendor/lib.txt"]);
    save.cache.push(cache("pull-push"));
    let id = h.push(save);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Uploaded cache"), "{trace}");
    assert!(!trace.contains("e2e-secret-key-value"), "{trace}");
    assert_eq!(
        moto::objects("e2e-cache"),
        vec![format!("project/{}/deps-protected", job_project_id(&trace))]
    );

    // The second host: another ferry process, another working directory (so no local copy).
    h.stop().await;
    let first_work = h.work_dir.clone();
    h.work_dir = h.root.path().join("work-host-two");
    h.spawn_ferry();
    let mut restore = h
        .job("restore")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["cat vendor/lib.txt"]);
    restore.cache.push(cache("pull"));
    let id = h.push(restore);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Downloading cache"), "{trace}");
    assert!(trace.contains("\nfrom-host-one"), "{trace}");
    assert!(first_work != h.work_dir);
    h.stop().await;
}

/// The project id the fake GitLab gave the job, from the object name's `project/<id>`.
fn job_project_id(trace: &str) -> String {
    trace
        .split("project/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("?")
        .to_string()
}
