//! The distributed cache through `ferry run`: two ferry processes with different working
//! directories (two hosts) against one fake GitLab and one S3 bucket (moto, see
//! tests/src/moto.rs). Needs Docker and the test images (SKIP without, as every e2e test).

use std::time::Duration;

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;
use ferry_tests::moto;
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

fn s3_setup(address: &str, bucket: &str, insecure: bool) -> Setup {
    Setup::default().runner(&format!(
        "[runners.cache]\nType = \"s3\"\nShared = true\n[runners.cache.s3]\n\
         ServerAddress = \"{address}\"\nAccessKey = \"AKIDE2E\"\nSecretKey = \"e2e-secret-key-value\"\n\
         BucketName = \"{bucket}\"\nInsecure = {insecure}\n"
    ))
}

/// Job one on "host one" saves, job two on "host two" (another `ferry run`, another working
/// directory, so no local copy) restores. Returns the first job's trace.
async fn two_hosts(mut h: Harness) -> String {
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
    let first = h.expect(&job, JobStatus::Success, None);
    assert!(first.contains("Uploaded cache"), "{first}");
    assert!(!first.contains("e2e-secret-key-value"), "{first}");

    h.stop().await;
    let first_work = h.work_dir.clone();
    h.work_dir = h.root.path().join("work-host-two");
    assert!(first_work != h.work_dir);
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
    assert!(!h.ferry_log().contains("e2e-secret-key-value"));
    h.stop().await;
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_saved_by_one_host_is_restored_by_another() {
    let port = moto::port();
    moto::create_bucket("e2e-cache");
    let setup = s3_setup(&format!("127.0.0.1:{port}"), "e2e-cache", true);
    let Some(h) = Harness::start(setup).await else {
        return;
    };
    let first = two_hosts(h).await;
    assert_eq!(
        moto::objects("e2e-cache"),
        vec![format!("project/{}/deps-protected", job_project_id(&first))]
    );
}

/// The same over HTTPS (`Insecure = false`), the server's certificate trusted through
/// `SSL_CERT_FILE` of the ferry process (read with the system's roots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_store_over_https() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    let (port, _server) = moto::start_tls(h.root.path(), "e2e-tls");
    h.write_config(&s3_setup(&format!("127.0.0.1:{port}"), "e2e-tls", false));
    let cert = h.root.path().join("cert.pem");
    h.ferry_env
        .push(("SSL_CERT_FILE".into(), cert.display().to_string()));
    h.spawn_ferry();
    two_hosts(h).await;
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
