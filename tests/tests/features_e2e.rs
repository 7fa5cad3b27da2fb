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

/// An `artifacts:` entry of `out/`, uploaded by `when`.
fn out_artifacts(when: &str) -> serde_json::Value {
    json!({"name": "out", "untracked": false, "paths": ["out/"], "when": when,
           "expire_in": "1 day", "artifact_type": "archive", "artifact_format": "zip"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_script_timeout_stops_the_script_and_after_script_and_artifacts_still_run() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let mut slow = h
        .job("script-timeout")
        .variable("GIT_STRATEGY", "empty", false)
        .variable("RUNNER_SCRIPT_TIMEOUT", "3s", false)
        .script([
            "mkdir -p out && echo partial > out/a.txt",
            "echo started",
            "sleep 300",
            "echo never-printed",
        ])
        .after_script(["echo after-status=$CI_JOB_STATUS"]);
    slow.artifacts.push(out_artifacts("always"));
    let id = h.push(slow);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("job_execution_timeout"));
    assert!(trace.contains("\nstarted"), "{trace}");
    assert!(!trace.contains("\nnever-printed"), "{trace}");
    let warning = pos(
        &trace,
        "step_script could not run to completion because the timeout was exceeded. For more control over job and script timeouts see: https://docs.gitlab.com/ci/runners/configure_runners/#set-script-and-after_script-timeouts",
    );
    let failed = pos(
        &trace,
        "Job failed: execution took longer than the script timeout of 3s (RUNNER_SCRIPT_TIMEOUT)",
    );
    // after_script and the upload ran after the script's timeout, under the job's deadline.
    let after = pos(&trace, "\nafter-status=timedout");
    assert!(warning < failed && failed < after, "{trace}");
    assert!(!trace.contains("longer than the job timeout"), "{trace}");
    let stored = h.gitlab.artifacts(id);
    assert_eq!(stored.len(), 1, "{}", h.describe(id));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_compression_level_sets_the_zip_method_and_the_meter_shows_transfers() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // (level, method of the entry, its compressed size), per job.
    let mut results = Vec::new();
    let mut first = None;
    for level in ["fastest", "fast", "slowest", "max"] {
        let mut spec = h
            .job(&format!("compress-{level}"))
            .variable("GIT_STRATEGY", "empty", false)
            .variable("ARTIFACT_COMPRESSION_LEVEL", level, false)
            .variable("TRANSFER_METER_FREQUENCY", "1s", false)
            .script(["mkdir -p out", "seq 1 200000 > out/numbers.txt"]);
        spec.artifacts.push(out_artifacts("on_success"));
        let id = h.push(spec);
        let job = h.wait_final(id, JOB_WAIT).await;
        let trace = h.expect(&job, JobStatus::Success, None);
        // gitlab-runner's meter: `\r<label> <bytes> (<rate>)`, the last line ended by a newline.
        assert!(trace.contains("\rUploading artifacts "), "{trace}");
        let last = trace.rfind("\rUploading artifacts ").unwrap();
        let tail = &trace[last..];
        assert!(tail[..tail.find('\n').unwrap()].contains("B/s)"), "{trace}");
        if level == "max" {
            assert!(
                trace.contains("WARNING: ARTIFACT_COMPRESSION_LEVEL: compression level \"max\" is invalid, falling back to default"),
                "{trace}"
            );
        }
        let stored = h.gitlab.artifacts(id);
        assert_eq!(stored.len(), 1, "{}", h.describe(id));
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored[0].data.clone())).unwrap();
        let entry = zip.by_name("out/numbers.txt").unwrap();
        results.push((
            level,
            entry.compression(),
            entry.compressed_size(),
            entry.size(),
        ));
        first.get_or_insert(id);
    }
    let [fastest, fast, slowest, max] = results[..] else {
        panic!("{results:?}")
    };
    // fastest stores (as gitlab-runner's fastzip archiver), the others deflate at 1, 9 and
    // (the invalid name) the default 5.
    assert_eq!(fastest.1, zip::CompressionMethod::Stored, "{results:?}");
    assert_eq!(fastest.2, fastest.3, "{results:?}");
    for r in [fast, slowest, max] {
        assert_eq!(r.1, zip::CompressionMethod::Deflated, "{results:?}");
    }
    assert!(slowest.2 < max.2 && max.2 < fast.2, "{results:?}");

    // A dependent job's download is metered too.
    let id = h.push(
        h.job("download-metered")
            .variable("GIT_STRATEGY", "empty", false)
            .variable("TRANSFER_METER_FREQUENCY", "1s", false)
            .depends_on(first.unwrap())
            .script(["tail -n 1 out/numbers.txt"]),
    );
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\rDownloading artifacts "), "{trace}");
    assert!(trace.contains("\n200000"), "{trace}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_container_is_removed_runs_again_with_executor_job_section_attempts() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // The first run leaves a marker in the project dir (on the host, so it outlives the
    // container) and waits to be removed; the second run sees the marker.
    let id = h.push(
        h.job("container-removed")
            .variable("GIT_STRATEGY", "empty", false)
            .variable("EXECUTOR_JOB_SECTION_ATTEMPTS", "2", false)
            .script([
                "if [ -f marker ]; then echo second-run; else touch marker; echo first-run; sleep 300; fi",
            ]),
    );
    h.wait_trace(id, "\nfirst-run", JOB_WAIT).await;
    let build = h
        .docker_objects(Some(id))
        .into_iter()
        .find_map(|o| {
            o.strip_prefix("container ")
                .filter(|n| n.ends_with("-build"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no build container: {}", h.describe(id)));
    ferry_tests::e2e::cmd("docker", &["rm", "-f", &build]);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let gone = pos(
        &trace,
        &format!("Container \"{build}\" not found or removed. Will retry..."),
    );
    let retry = pos(&trace, "Retrying step_script");
    let second = pos(&trace, "\nsecond-run");
    assert!(gone < retry && retry < second, "{trace}");
    h.stop().await;
}
