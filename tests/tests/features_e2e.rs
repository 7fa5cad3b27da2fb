//! End to end through `ferry run`, the fake GitLab and real Docker: the job features GitLab
//! requires a runner to advertise (`Ci::Build::RUNNER_FEATURES`, docs/gitlab-api.md). The fake
//! drops a job whose required features the runner lacks as `runner_unsupported`, as GitLab
//! does, so each job below reaching ferry at all shows the feature is advertised.
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker every test
//! prints `SKIP: <reason>` and returns.

use std::time::Duration;

use ferry_tests::e2e::Harness;
use ferry_tests::e2e::Setup;
use ferry_tests::fake_gitlab::JobStatus;
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// The position of `needle` in `trace`, or a panic naming it.
fn pos(trace: &str, needle: &str) -> usize {
    trace
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the trace:\n{trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_step_runs_between_script_and_after_script() {
    // The runner's pre/post_build_script wrap each script step (not after_script).
    let setup = Setup::default().runner(
        "pre_build_script = \"echo pre-$CI_JOB_NAME\"\npost_build_script = \"echo post-build\"",
    );
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    // GitLab turns `release:` into a step named `release` between `script` and `after_script`.
    let steps = |release_when: &str| {
        json!({"steps": [
            {"name": "script", "script": ["echo in-script"], "timeout": 3600,
             "when": "on_success", "allow_failure": false},
            {"name": "release", "script": ["echo in-release-$CI_JOB_NAME"], "timeout": 3600,
             "when": release_when, "allow_failure": false},
            {"name": "after_script", "script": ["echo in-after-$CI_JOB_STATUS"], "timeout": 3600,
             "when": "always", "allow_failure": true},
        ]})
    };
    let id = h.push(h.job("release").patch(steps("on_success")));
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let script = pos(&trace, "\nin-script");
    let release = pos(&trace, "\nin-release-release");
    let after = pos(&trace, "\nin-after-success");
    assert!(script < release && release < after, "{trace}");
    assert_eq!(trace.matches("\npre-release").count(), 2, "{trace}");
    assert_eq!(trace.matches("\npost-build").count(), 2, "{trace}");
    assert!(pos(&trace, "\npre-release") < script, "{trace}");
    let last_post = trace.rfind("\npost-build").unwrap();
    assert!(release < last_post && last_post < after, "{trace}");
    assert!(trace.contains("section_start:"), "{trace}");
    assert!(trace.contains(":step_release"), "{trace}");

    // A failing release step fails the job like a failing script.
    let failing = h.job("release-fails").patch(json!({"steps": [
        {"name": "script", "script": ["true"], "timeout": 3600,
         "when": "on_success", "allow_failure": false},
        {"name": "release", "script": ["exit 7"], "timeout": 3600,
         "when": "on_success", "allow_failure": false},
    ]}));
    let id = h.push(failing);
    let job = h.wait_final(id, JOB_WAIT).await;
    h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert_eq!(job.exit_code, Some(7), "{}", h.describe(id));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_fallback_key_is_restored_when_the_key_has_no_cache() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let cache = |key: &str, fallback: &[&str], policy: &str| {
        json!({"key": key, "untracked": false, "policy": policy, "paths": ["vendor/"],
               "when": "on_success", "fallback_keys": fallback})
    };
    let mut save = h
        .job("save-main")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["mkdir -p vendor", "echo from-main > vendor/lib.txt"]);
    save.cache.push(cache("deps-main", &[], "push"));
    let id = h.push(save);
    let job = h.wait_final(id, JOB_WAIT).await;
    h.expect(&job, JobStatus::Success, None);

    let mut branch = h
        .job("branch")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["cat vendor/lib.txt"]);
    branch
        .cache
        .push(cache("deps-feature", &["deps-main"], "pull"));
    let id = h.push(branch);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Checking cache for deps-feature"), "{trace}");
    assert!(trace.contains("Checking cache for deps-main"), "{trace}");
    assert!(trace.contains("\nfrom-main"), "{trace}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needing_an_unadvertised_feature_is_dropped_by_gitlab_and_the_next_one_runs() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // `secrets:` needs `vault_secrets`, which ferry does not implement nor advertise.
    let vault = h.push(h.job("secrets").patch(json!({"secrets": {"DB_PASSWORD": {
        "vault": {"engine": {"name": "kv-v2", "path": "secret"}, "path": "db", "field": "pw"}}}})));
    let next = h.push(h.job("next").script(["echo next-ran"]));
    let job = h.wait_final(next, JOB_WAIT).await;
    h.expect(&job, JobStatus::Success, None);
    let dropped = h
        .gitlab
        .job(vault)
        .expect("the job was handed to the runner");
    assert_eq!(dropped.status, JobStatus::Failed);
    assert_eq!(
        dropped.failure_reason.as_deref(),
        Some("runner_unsupported")
    );
    assert!(dropped.trace.is_empty(), "ferry never saw the job");
    h.stop().await;
}

/// `CI_DEBUG_TRACE`: the shell traces each command with its values expanded, and the log masks
/// a masked value there as anywhere; a runner with `debug_trace_disabled` refuses it, saying
/// so, and runs the job untraced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_debug_trace_traces_commands_masked_and_can_be_refused_by_the_runner() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let job = |h: &Harness, name: &str| {
        h.job(name)
            .variable("CI_DEBUG_TRACE", "true", false)
            .variable("DEPLOY_SECRET", "s3cr3t-value-42", true)
            .script(["MARKER=traced-$DEPLOY_SECRET", "true"])
            .after_script(["echo after"])
    };
    let id = h.push(job(&h, "traced"));
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Success, None);
    assert!(trace.contains("+ MARKER=traced-[MASKED]"), "{trace}");
    assert!(
        trace.contains("+ echo after"),
        "after_script is traced too: {trace}"
    );
    assert!(!trace.contains("s3cr3t-value-42"), "{trace}");
    assert!(record.debug_trace, "the log was uploaded as a debug log");
    h.stop().await;

    let setup = Setup::default().runner("debug_trace_disabled = true");
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let id = h.push(job(&h, "refused"));
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Success, None);
    assert!(
        trace.contains("CI_DEBUG_TRACE: usage is disabled on this Runner"),
        "{trace}"
    );
    assert!(!trace.contains("+ MARKER="), "{trace}");
    assert!(!record.debug_trace);
    h.stop().await;
}
