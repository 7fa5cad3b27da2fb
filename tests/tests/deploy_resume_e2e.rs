//! A `ferry:deploy` job survives `kill -9` of `ferry run` (docs/crash-safety.md): the next
//! `ferry run` applies the manifests again (server-side apply is idempotent) and continues the
//! wait for the rollout with what is left of its timeout; the job log continues after what
//! GitLab holds, each line of the earlier ferry once.
//!
//! The real `ferry run` binary, the fake GitLab and the fake Kubernetes API server, whose
//! Deployment stays not ready (`Outcome::Held`) until the test releases it. Needs what the
//! other e2e tests need (Docker for the harness); without it the tests print `SKIP` and return.

mod deploy_common;

use std::time::Duration;

use deploy_common::{DEPLOYMENT, SERVICE};
use ferry_tests::e2e::{GitRepo, Harness, Setup};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use ferry_tests::fake_k8s::{FakeK8s, Outcome, Scenario};

const WAIT: Duration = Duration::from_secs(180);

fn project() -> (GitRepo, String) {
    let repo = GitRepo::new();
    repo.commit("k8s/deployment.yaml", DEPLOYMENT);
    let sha = repo.commit("k8s/service.yaml", SERVICE);
    (repo, sha)
}

/// ferry on the fake GitLab (which asks for the log every second) with one deploy target on
/// the fake cluster.
async fn harness(fake: &FakeK8s, kube_dir: &std::path::Path) -> Option<Harness> {
    let kubeconfig = fake.write_kubeconfig(kube_dir);
    let target = format!(
        "[[runners.deploy.targets]]\nname = \"test\"\nenvironments = [\"test\"]\nkubeconfig = \"{}\"\nnamespaces = [\"test\"]\ndefault_namespace = \"test\"",
        kubeconfig.display()
    );
    let mut h = Harness::prepare(Setup::default().runner(&target)).await?;
    h.gitlab.set_trace_update_interval(Some("1"));
    h.spawn_ferry();
    Some(h)
}

fn deploy_job(repo: &GitRepo, sha: &str) -> JobSpec {
    JobSpec::new("deploy-resume")
        .image(Some("ferry:deploy"))
        .script(["ferry deploy"])
        .variable("CI_ENVIRONMENT_NAME", "test", false)
        .variable("APP_NAME", "shop", false)
        .variable("REPLICAS", "2", false)
        .variable("VERSION", "1a2b3c4d", false)
        .patch(GitRepo::git_info(&repo.url(), sha, 20))
}

fn journal_entries(h: &Harness) -> Vec<String> {
    std::fs::read_dir(h.work_dir.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills ferry while the job waits for its held rollout, once GitLab holds the wait's first
/// progress line; returns the log GitLab holds then (the earlier ferry's part).
async fn kill_while_waiting(h: &mut Harness, id: u64) -> String {
    h.wait_trace(id, "\n  [00:", WAIT).await;
    h.signal("KILL");
    h.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(journal_entries(h).len(), 1, "{}", h.describe(id));
    let entry = std::fs::read_to_string(h.work_dir.join("journal").join(&journal_entries(h)[0]))
        .unwrap_or_default();
    assert!(
        entry.contains("\"stage\":\"deploy\"") && entry.contains("\"phase\":\"waiting\""),
        "{entry}"
    );
    String::from_utf8_lossy(&h.gitlab.trace(id)).into_owned()
}

/// The part GitLab held at the kill is the start of the final log, and the rest is the new
/// ferry's: nothing of the earlier part lost or sent again.
fn assert_continues(before: &str, trace: &str) -> String {
    assert!(
        trace.starts_with(before),
        "the log GitLab held before the restart is not the start of the final log:\n--- before\n{before}\n--- final\n{trace}"
    );
    let after = &trace[before.len()..];
    assert_eq!(
        after
            .matches("ferry was restarted while this deploy waited for the rollout")
            .count(),
        1,
        "{trace}"
    );
    // The deploy section: opened by the earlier ferry, closed by the new one, once each.
    assert_eq!(before.matches(":deploy\r").count(), 1, "{before}");
    assert_eq!(after.matches(":deploy\r").count(), 1, "{after}");
    for once in ["$ ferry deploy", "Deploying to Kubernetes"] {
        assert_eq!(trace.matches(once).count(), 1, "{once:?} once: {trace}");
    }
    // Every line the earlier ferry had sent is there once: none was sent again.
    for line in before.lines().filter(|l| l.contains("[00:")) {
        assert_eq!(trace.matches(line).count(), 1, "{line:?} once: {trace}");
    }
    after.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_job_survives_kill_9_during_the_rollout_wait() {
    let (_url, fake) = FakeK8s::start(Scenario::new(Outcome::Held)).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let Some(mut h) = harness(&fake, kube_dir.path()).await else {
        return;
    };
    let (repo, sha) = project();
    let id = h.push(deploy_job(&repo, &sha).variable("FERRY_TIMEOUT", "5m", false));
    let before = kill_while_waiting(&mut h, id).await;
    assert!(before.contains("deployment.apps/shop"), "{before}");
    assert!(!before.contains("rolled out"), "{before}");
    let generation =
        fake.get("deployments.apps", "test", "shop").unwrap()["metadata"]["generation"].clone();

    h.spawn_ferry();
    // The new ferry applies again and waits; then the rollout completes.
    h.wait_trace(id, "waiting again for", WAIT).await;
    assert_eq!(h.gitlab.job_status(id), Some(JobStatus::Running));
    fake.release();
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let after = assert_continues(&before, &trace);
    // Applied again: nothing changed in the cluster (the rollout was not restarted), but the
    // Deployment is still this deploy's change.
    assert!(
        after.contains("unchanged (changed by this deploy before ferry was restarted)"),
        "{after}"
    );
    assert_eq!(
        fake.get("deployments.apps", "test", "shop").unwrap()["metadata"]["generation"],
        generation
    );
    // The wait goes on with what is left of its 5 minutes.
    assert!(after.contains(", what is left of it)"), "{after}");
    assert!(!after.contains("(timeout 5m"), "{after}");
    assert_eq!(trace.matches("shop: rolled out").count(), 1, "{trace}");
    assert_eq!(trace.matches("Job succeeded").count(), 1, "{trace}");
    let drained =
        ferry_tests::e2e::poll_until(Duration::from_secs(10), || journal_entries(&h).is_empty())
            .await;
    assert!(drained, "{:?}", journal_entries(&h));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_deploy_whose_rollout_times_out_fails() {
    let (_url, fake) = FakeK8s::start(Scenario::new(Outcome::Held)).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let Some(mut h) = harness(&fake, kube_dir.path()).await else {
        return;
    };
    let (repo, sha) = project();
    let id = h.push(deploy_job(&repo, &sha).variable("FERRY_TIMEOUT", "20s", false));
    let before = kill_while_waiting(&mut h, id).await;
    // Away for a while: the wait's timeout counts meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = std::time::Instant::now();
    h.spawn_ferry();
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    let after = assert_continues(&before, &trace);
    assert!(
        restarted.elapsed() < Duration::from_secs(18),
        "the resumed wait took a whole new timeout: {:?}",
        restarted.elapsed()
    );
    assert!(
        after.contains("FAILED deployment.apps/shop: not rolled out after"),
        "{after}"
    );
    assert!(!trace.contains("shop: rolled out"), "{trace}");
    h.stop().await;
}
