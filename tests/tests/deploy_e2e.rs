//! A `ferry:deploy` job end to end: the real `ferry run` takes the job from the fake GitLab,
//! checks out the project's manifests on the host, applies them to the fake Kubernetes API
//! server with the runner's deploy target, waits for the rollout, and reports. Checked on both
//! fakes: the job's state and log in GitLab, the objects and their field manager in the cluster.

mod deploy_common;

use std::time::Duration;

use deploy_common::{DEPLOYMENT, SERVICE};
use ferry_tests::e2e::{GitRepo, Harness, Setup};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use ferry_tests::fake_k8s::{FakeK8s, Outcome, Scenario};

const WAIT: Duration = Duration::from_secs(180);

/// A project whose `k8s/` holds a Deployment and a Service with placeholders.
fn project() -> (GitRepo, String) {
    let repo = GitRepo::new();
    repo.commit("k8s/deployment.yaml", DEPLOYMENT);
    let sha = repo.commit("k8s/service.yaml", SERVICE);
    (repo, sha)
}

async fn harness(
    fake: &FakeK8s,
    kube_dir: &std::path::Path,
) -> Option<(Harness, std::path::PathBuf)> {
    let kubeconfig = fake.write_kubeconfig(kube_dir);
    let target = format!(
        "[[runners.deploy.targets]]\nname = \"test\"\nenvironments = [\"test\"]\nkubeconfig = \"{}\"\nnamespaces = [\"test\"]\ndefault_namespace = \"test\"",
        kubeconfig.display()
    );
    Some((
        Harness::start(Setup::default().runner(&target)).await?,
        kubeconfig,
    ))
}

fn deploy_job(repo: &GitRepo, sha: &str) -> JobSpec {
    JobSpec::new("deploy-test")
        .image(Some("ferry:deploy"))
        .script(["ferry deploy"])
        .variable("CI_ENVIRONMENT_NAME", "test", false)
        .variable("APP_NAME", "shop", false)
        .variable("REPLICAS", "2", false)
        .variable("VERSION", "1a2b3c4d", false)
        .patch(GitRepo::git_info(&repo.url(), sha, 20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_job_applies_waits_and_succeeds() {
    let (_url, fake) = FakeK8s::start(Scenario::success()).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let Some((h, kubeconfig_path)) = harness(&fake, kube_dir.path()).await else {
        return;
    };
    let (repo, sha) = project();
    let id = h.push(deploy_job(&repo, &sha));
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);

    assert!(trace.contains("$ ferry deploy"), "{trace}");
    assert!(trace.contains("deployment.apps/shop"), "{trace}");
    assert!(trace.contains("created"), "{trace}");
    assert!(trace.contains("rolled out"), "{trace}");
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert!(
        !trace.contains("Using Docker executor"),
        "a deploy job runs no container: {trace}"
    );

    let d = fake
        .get("deployments.apps", "test", "shop")
        .expect("the Deployment is on the cluster");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:1a2b3c4d"
    );
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        managers.contains(&"ferry"),
        "field manager ferry: {managers:?}"
    );
    assert!(
        fake.get("services", "test", "shop").is_some(),
        "the Service is on the cluster"
    );

    // The kubeconfig never reaches the job log.
    let kubeconfig = std::fs::read_to_string(&kubeconfig_path).unwrap();
    for line in kubeconfig
        .lines()
        .filter(|l| l.contains("token") || l.contains("server"))
    {
        if let Some((_, v)) = line.split_once(':') {
            let v = v.trim();
            if v.len() > 8 && !v.starts_with("http") {
                assert!(!trace.contains(v), "kubeconfig value {v:?} in the trace");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollout_fails_the_job_with_the_diagnosis() {
    let (_url, fake) = FakeK8s::start(Scenario::new(Outcome::ImagePullBackOff)).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let Some((h, _)) = harness(&fake, kube_dir.path()).await else {
        return;
    };
    let (repo, sha) = project();
    let id = h.push(
        deploy_job(&repo, &sha)
            .variable("FERRY_TIMEOUT", "2m", false)
            .variable("FERRY_FAIL_FAST_GRACE", "10s", false),
    );
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert!(
        trace.contains("ImagePullBackOff") || trace.contains("ErrImagePull"),
        "{trace}"
    );
    assert!(
        trace.contains("deployment.apps/shop") || trace.contains("deployment/shop"),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_line_in_a_deploy_job_fails_naming_it_before_any_api_call() {
    let (_url, fake) = FakeK8s::start(Scenario::success()).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let Some((h, _)) = harness(&fake, kube_dir.path()).await else {
        return;
    };
    let (repo, sha) = project();
    let id = h.push(deploy_job(&repo, &sha).script(["kubectl apply -f k8s/"]));
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert!(trace.contains("kubectl apply -f k8s/"), "{trace}");
    assert!(fake.requests().is_empty(), "no API call was made");
}

/// Issue 7, finding 10, through `ferry run`: on a runner without deploy targets, a deploy job
/// that names a kubeconfig on the host (and one that renders a host file) gets no deploy: the
/// job fails with runner_configuration_error and says why, the cluster sees nothing, and the
/// host file's contents never reach the job log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_job_on_a_runner_without_targets_fails_and_reads_nothing() {
    let (_url, fake) = FakeK8s::start(Scenario::success()).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(kube_dir.path());
    let victim = kube_dir.path().join("victim.yaml");
    std::fs::write(
        &victim,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: victim}\ndata: {k: victim-secret-51c9}\n",
    )
    .unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let Some(h) = Harness::start(Setup::default()).await else {
        return;
    };
    let (repo, sha) = project();
    let lines = [
        format!(
            "ferry deploy --kubeconfig {} --namespace kube-system",
            kubeconfig.display()
        ),
        format!("ferry deploy --dry-run render -f {}", victim.display()),
    ];
    for line in lines {
        let id = h.push(deploy_job(&repo, &sha).script([line.as_str()]));
        let job = h.wait_final(id, WAIT).await;
        let trace = h.expect(&job, JobStatus::Failed, Some("runner_configuration_error"));
        assert!(
            trace.contains("this runner has no deploy targets configured"),
            "{line}: {trace}"
        );
        assert!(!trace.contains("victim-secret-51c9"), "{line}: {trace}");
        assert!(!trace.contains("target \"workstation\""), "{line}: {trace}");
    }
    assert!(fake.requests().is_empty(), "no API call was made");
    h.assert_takes_next_job().await;
}

/// Issue 7, finding 11, through `ferry run`: the job's own `variables:` (sent by GitLab after
/// its predefined variables) claim the production environment and a protected ref. The target
/// follows GitLab's environment and `git_info.protected`, so nothing reaches production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_variables_cannot_claim_production_or_a_protected_ref() {
    let (_url, fake) = FakeK8s::start(Scenario::success()).await;
    let kube_dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(kube_dir.path());
    let targets = format!(
        "[[runners.deploy.targets]]\nname = \"test\"\nenvironments = [\"test\"]\nkubeconfig = \"{k}\"\nnamespaces = [\"test\"]\ndefault_namespace = \"test\"\n\
         [[runners.deploy.targets]]\nname = \"production\"\nenvironments = [\"production\"]\nkubeconfig = \"{k}\"\nnamespaces = [\"prod\"]\ndefault_namespace = \"prod\"\nprotected_refs_only = true",
        k = kubeconfig.display()
    );
    let Some(h) = Harness::start(Setup::default().runner(&targets)).await else {
        return;
    };
    let (repo, sha) = project();
    let base = || {
        JobSpec::new("deploy-prod")
            .image(Some("ferry:deploy"))
            .script(["ferry deploy"])
            .patch(GitRepo::git_info(&repo.url(), &sha, 20))
            // git_info.protected: GitLab says the ref is not protected
            .patch(serde_json::json!({"git_info": {"protected": false}}))
    };
    // 1. GitLab set environment `test` (predefined, first); the job's variables redefine it.
    let id = h.push(
        base()
            .variable("CI_ENVIRONMENT_NAME", "test", false)
            .variable("APP_NAME", "shop", false)
            .variable("REPLICAS", "1", false)
            .variable("CI_ENVIRONMENT_NAME", "production", false)
            .variable("CI_COMMIT_REF_PROTECTED", "true", false)
            .variable("FERRY_DEPLOY_TARGET", "production", false),
    );
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert!(
        trace.contains("CI_ENVIRONMENT_NAME is defined more than once"),
        "{trace}"
    );
    // 2. No `environment:` at all; the job's variables name production and a protected ref.
    let id = h.push(
        base()
            .variable("APP_NAME", "shop", false)
            .variable("REPLICAS", "1", false)
            .variable("CI_ENVIRONMENT_NAME", "production", false)
            .variable("CI_COMMIT_REF_PROTECTED", "true", false),
    );
    let job = h.wait_final(id, WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert!(
        trace.contains("only accepts protected refs, and GitLab says \"main\" is not protected"),
        "{trace}"
    );
    assert!(fake.requests().is_empty(), "nothing reached a cluster");
    assert!(fake.get("deployments.apps", "prod", "shop").is_none());
}
