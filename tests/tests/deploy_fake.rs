//! The deploy step against the fake Kubernetes API server: rollouts, failures and their
//! diagnoses, rollback, policy, templates, dry runs and API errors.

mod deploy_common;

use deploy_common::{Env, image_of};
use ferry_deploy::DeployError;
use ferry_tests::fake_k8s::{Outcome, Scenario};

#[tokio::test]
async fn success_creates_then_reports_unchanged() {
    let env = Env::new(Scenario::success()).await;
    let (r, log) = env.deploy(&[], &[]).await;
    let report = r.expect("deploy succeeds");
    assert_eq!(report.applied, 2);
    assert!(
        log.contains(
            "ferry deploy → target \"test\" (context fake), namespace test, manager ferry"
        ),
        "{log}"
    );
    assert!(
        log.contains("rendered 2 objects from k8s/ (placeholders: APP_NAME, REPLICAS, VERSION)"),
        "{log}"
    );
    // kind order: the Service before the Deployment
    let svc = log.find("service/web").expect("service line");
    let dep = log.find("deployment.apps/web").expect("deployment line");
    assert!(svc < dep, "{log}");
    assert!(log.contains("created"), "{log}");
    assert!(
        log.contains("deployment.apps/web: rolled out (2 of 2 replicas available)"),
        "{log}"
    );
    assert!(log.contains("summary:"), "{log}");
    assert!(
        log.contains("2/2 ready   registry.example/web:1a2b3c4d"),
        "{log}"
    );
    assert!(log.contains("ClusterIP 10.96."), "{log}");
    assert!(log.contains("ports 80/TCP→8080"), "{log}");
    assert!(
        log.contains("environment: https://test.example.com"),
        "{log}"
    );
    let d = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment stored");
    assert_eq!(image_of(&d), "registry.example/web:1a2b3c4d");
    // SSA with field manager ferry
    assert!(env.fake.requests().iter().any(|r| r.method == "PATCH"
        && r.uri.contains("fieldManager=ferry")
        && r.content_type.starts_with("application/apply-patch+yaml")));

    let (r, log) = env.deploy(&[], &[]).await;
    r.expect("second deploy succeeds");
    assert!(
        log.contains("service/web") && log.contains("unchanged"),
        "{log}"
    );
    assert!(!log.contains("created"), "{log}");

    let (r, log) = env
        .deploy(&[], &[("CI_COMMIT_SHORT_SHA", "5e6f7a8b")])
        .await;
    r.expect("third deploy succeeds");
    assert!(
        log.contains(
            "configured   image registry.example/web:1a2b3c4d → registry.example/web:5e6f7a8b"
        ),
        "{log}"
    );
}

#[tokio::test]
async fn image_pull_backoff_fails_fast_with_diagnosis() {
    let env = Env::new(Scenario::new(Outcome::ImagePullBackOff)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    let e = r.expect_err("deploy fails");
    assert!(matches!(e, DeployError::Rollout(_)), "{e:?}");
    assert!(e.to_string().contains("deployment.apps/web"), "{e}");
    assert!(
        log.contains("FAILED deployment.apps/web: pod web-"),
        "{log}"
    );
    assert!(
        log.contains("ImagePullBackOff") || log.contains("ErrImagePull"),
        "{log}"
    );
    assert!(log.contains("registry.example/web:1a2b3c4d"), "{log}");
    assert!(
        log.contains("hint: was the image pushed by the build job?"),
        "{log}"
    );
    assert!(
        log.contains("recent warning events (new pods only):"),
        "{log}"
    );
    assert!(
        log.contains("Failed: Failed to pull image \"registry.example/web:1a2b3c4d\""),
        "{log}"
    );
    // first deploy: nothing to roll back to
    assert!(log.contains("has no previous revision"), "{log}");
}

#[tokio::test]
async fn crash_loop_shows_exit_code_and_log() {
    let env = Env::new(Scenario::new(Outcome::CrashLoopBackOff)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(log.contains("CrashLoopBackOff"), "{log}");
    assert!(log.contains("last exit code 1"), "{log}");
    assert!(
        log.contains("| Error: connection refused (db:5432)"),
        "{log}"
    );
    assert!(
        log.contains("Back-off restarting failed container web"),
        "{log}"
    );
}

#[tokio::test]
async fn unschedulable_is_explained() {
    let env = Env::new(Scenario::new(Outcome::Unschedulable)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(
        log.contains("Unschedulable — 0/3 nodes are available: 3 Insufficient cpu."),
        "{log}"
    );
    assert!(log.contains("hint: no node can take the pod"), "{log}");
    assert!(log.contains("FailedScheduling"), "{log}");
}

#[tokio::test]
async fn progress_deadline_exceeded_fails_with_readiness_events() {
    let env = Env::new(Scenario::new(Outcome::ProgressDeadlineExceeded)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    let e = r.expect_err("deploy fails");
    assert!(
        e.to_string().contains("exceeded its progress deadline"),
        "{e}"
    );
    assert!(log.contains("has timed out progressing"), "{log}");
    assert!(
        log.contains("Readiness probe failed: HTTP probe failed with statuscode: 503"),
        "{log}"
    );
}

#[tokio::test]
async fn config_error_fails_after_its_grace() {
    let env = Env::new(Scenario::new(Outcome::CreateContainerConfigError)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(
        log.contains("CreateContainerConfigError — configmap \"web-config\" not found"),
        "{log}"
    );
}

#[tokio::test]
async fn failed_rollout_is_undone_and_still_fails() {
    let env = Env::new(Scenario::rollback()).await;
    let (r, _) = env.deploy(&[], &[("CI_COMMIT_SHORT_SHA", "good1")]).await;
    r.expect("first deploy succeeds");
    let (r, log) = env.deploy(&[], &[("CI_COMMIT_SHORT_SHA", "broken")]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(
        log.contains("rollback: deployment.apps/web → revision 1"),
        "{log}"
    );
    assert!(
        log.contains("rollback of deployment.apps/web complete; the job still fails"),
        "{log}"
    );
    assert!(log.contains("old ReplicaSet web-"), "{log}");
    let d = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    assert_eq!(image_of(&d), "registry.example/web:good1");
    // the undo was a JSON patch, like kubectl's
    assert!(
        env.fake
            .requests()
            .iter()
            .any(|r| r.method == "PATCH"
                && r.content_type.starts_with("application/json-patch+json"))
    );
    // and the next good deploy takes the fields back
    let (r, log) = env.deploy(&[], &[("CI_COMMIT_SHORT_SHA", "good2")]).await;
    r.expect("deploy after rollback succeeds");
    assert!(log.contains("registry.example/web:good2"), "{log}");
}

#[tokio::test]
async fn rollback_none_prints_the_undo_command() {
    let env = Env::new(Scenario::rollback()).await;
    env.deploy(&[], &[("CI_COMMIT_SHORT_SHA", "good1")])
        .await
        .0
        .expect("first deploy");
    let (r, log) = env
        .deploy(
            &["--rollback", "none"],
            &[("CI_COMMIT_SHORT_SHA", "broken")],
        )
        .await;
    assert!(r.is_err());
    assert!(
        log.contains(
            "rollback: FERRY_ROLLBACK=none — to revert: kubectl -n test rollout undo deployment/web"
        ),
        "{log}"
    );
    let d = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    assert_eq!(image_of(&d), "registry.example/web:broken");
}

#[tokio::test]
async fn namespace_outside_allowlist_is_refused_before_any_write() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: kube-system\ndata: {a: b}\n",
    );
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("k8s/other.yaml:1: configmap/x is in namespace \"kube-system\""),
        "{e}"
    );
    assert!(e.contains("refused before anything was applied"), "{e}");
    assert_eq!(env.writes(), 0);
}

#[tokio::test]
async fn cluster_scoped_objects_need_permission() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: review-1\n",
    );
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("namespace/review-1 is cluster-scoped") && e.contains("cluster_scoped = false"),
        "{e}"
    );
    assert_eq!(env.writes(), 0);
    let mut t = env.target();
    t.cluster_scoped = true;
    let (r, log) = env.deploy_with(&[], &[], vec![t]).await;
    r.expect("allowed with cluster_scoped = true");
    assert!(
        log.find("namespace/review-1").unwrap_or(usize::MAX) < log.find("service/web").unwrap_or(0),
        "{log}"
    );
}

#[tokio::test]
async fn protected_only_target_refuses_unprotected_refs() {
    let env = Env::new(Scenario::success()).await;
    let mut t = env.target();
    t.protected_refs_only = true;
    // Issue 7, finding 11: the job's variables claim a protected ref; GitLab says it is not.
    let (r, _) = env
        .deploy_as(
            &[],
            &[
                ("CI_COMMIT_REF_PROTECTED", "true"),
                ("CI_COMMIT_REF_NAME", "main"),
            ],
            vec![t.clone()],
            deploy_common::facts_with(Some("test"), Some(false), "feature"),
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("only accepts protected refs")
            && e.contains("GitLab says \"feature\" is not protected"),
        "{e}"
    );
    // GitLab did not say (an older GitLab without git_info.protected, no CI_COMMIT_REF_PROTECTED)
    let (r, _) = env
        .deploy_as(
            &[],
            &[("CI_COMMIT_REF_PROTECTED", "true")],
            vec![t.clone()],
            deploy_common::facts_with(Some("test"), None, "feature"),
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("GitLab did not say that \"feature\" is protected"),
        "{e}"
    );
    assert!(
        env.fake.requests().is_empty(),
        "no request reached the cluster"
    );
    // GitLab says protected: the job's variables saying otherwise change nothing either
    let (r, _) = env
        .deploy_as(
            &[],
            &[("CI_COMMIT_REF_PROTECTED", "false")],
            vec![t],
            deploy_common::facts_with(Some("test"), Some(true), "main"),
        )
        .await;
    r.expect("a protected ref deploys");
}

#[tokio::test]
async fn environment_comes_from_gitlab_not_from_job_variables() {
    // Issue 7, finding 11: a job without `environment: production` names it in its variables.
    let env = Env::new(Scenario::success()).await;
    let mut prod = env.target();
    prod.name = "production".into();
    prod.environments = vec!["production".into()];
    prod.namespaces = vec!["prod".into()];
    prod.default_namespace = Some("prod".into());
    let targets = vec![env.target(), prod];
    let (r, log) = env
        .deploy_as(
            &[],
            &[
                ("CI_ENVIRONMENT_NAME", "production"),
                ("FERRY_DEPLOY_TARGET", "production"),
            ],
            targets.clone(),
            deploy_common::facts_with(Some("review/x"), Some(true), "feature"),
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("deploy target \"production\" does not accept environment \"review/x\""),
        "{e}"
    );
    assert!(!log.contains("target \"production\""), "{log}");
    // without FERRY_DEPLOY_TARGET the GitLab environment picks the test target
    let (r, log) = env
        .deploy_as(
            &["--dry-run", "render"],
            &[("CI_ENVIRONMENT_NAME", "production")],
            targets.clone(),
            deploy_common::facts_with(Some("review/x"), Some(true), "feature"),
        )
        .await;
    r.expect("renders for the test target");
    assert!(log.contains("ferry deploy → target \"test\""), "{log}");
    // a job with no environment at all gets no target
    let (r, _) = env
        .deploy_as(
            &[],
            &[("CI_ENVIRONMENT_NAME", "production")],
            targets.clone(),
            deploy_common::facts_with(None, Some(true), "main"),
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(e.contains("the job has no environment"), "{e}");
    // GitLab's CI_ENVIRONMENT_NAME and a redefinition by the job: refused outright
    let (r, _) = env
        .deploy_as(
            &[],
            &[],
            targets,
            ferry_deploy::Origin::Job(ferry_deploy::JobFacts {
                ref_protected: Some(true),
                ref_name: "main".into(),
                environment: ferry_deploy::JobEnvironment::Conflicting(vec![
                    "review/x".into(),
                    "production".into(),
                ]),
            }),
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("CI_ENVIRONMENT_NAME is defined more than once"),
        "{e}"
    );
    assert!(
        env.fake.requests().is_empty(),
        "nothing reached the cluster"
    );
}

#[tokio::test]
async fn no_matching_target_lists_the_targets() {
    let env = Env::new(Scenario::success()).await;
    let (r, _) = env
        .deploy_as(
            &[],
            &[],
            vec![env.target()],
            deploy_common::facts_with(Some("production"), Some(true), "main"),
        )
        .await;
    let e = r.expect_err("no target").to_string();
    assert!(
        e.contains("no deploy target of this runner matches environment \"production\""),
        "{e}"
    );
    assert!(e.contains("\"test\" (environments test, review/*)"), "{e}");
    let (r, _) = env.deploy_with(&[], &[], vec![]).await;
    assert!(
        matches!(r, Err(DeployError::Configuration(ref m)) if m.contains("no deploy targets")),
        "{r:?}"
    );
}

/// Issue 7, finding 10: on a runner without deploy targets, a job naming a kubeconfig on the
/// host must not get a workstation deploy, and a render dry run must not print host files.
#[tokio::test]
async fn a_job_on_a_runner_without_targets_gets_no_deploy() {
    let env = Env::new(Scenario::success()).await;
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("shadow.yaml");
    std::fs::write(
        &victim,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: victim}\ndata: {root: victim-secret-7f3a}\n",
    )
    .unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.write(
        "k8s/kube-system.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pwn, namespace: kube-system}\ndata: {a: b}\n",
    );
    let kc = env.kubeconfig.display().to_string();
    let victim_path = victim.display().to_string();
    let attempts: Vec<Vec<&str>> = vec![
        vec!["--kubeconfig", &kc],
        vec![
            "--kubeconfig",
            &kc,
            "--context",
            "fake",
            "-n",
            "kube-system",
        ],
        vec!["--dry-run", "render", "-f", &victim_path],
        vec![
            "--kubeconfig",
            &kc,
            "--dry-run",
            "render",
            "-f",
            &victim_path,
        ],
        vec![],
    ];
    for args in attempts {
        let (r, log) = env.deploy_with(&args, &[], vec![]).await;
        match r {
            Err(DeployError::Configuration(m)) => assert!(
                m.contains("this runner has no deploy targets configured"),
                "{args:?}: {m}"
            ),
            other => panic!("{args:?}: expected a configuration error, got {other:?}"),
        }
        assert!(!log.contains("victim-secret-7f3a"), "{args:?}: {log}");
        assert!(!log.contains("workstation"), "{args:?}: {log}");
    }
    assert!(
        env.fake.requests().is_empty(),
        "nothing reached the cluster"
    );
    assert!(env.fake.get("configmaps", "kube-system", "pwn").is_none());
}

/// Issue 7, finding 10 (`-f` in a job with targets) and finding 15: manifest paths outside the
/// project are refused with one message whether they exist or not, and links out are refused
/// without reading the file behind them.
#[tokio::test]
async fn job_manifest_paths_stay_inside_the_project() {
    let env = Env::new(Scenario::success()).await;
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("secret.yaml");
    std::fs::write(
        &victim,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: victim}\ndata: {root: victim-secret-7f3a}\n",
    )
    .unwrap();
    let victim_path = victim.display().to_string();
    let missing = victim_dir.path().join("missing.yaml").display().to_string();
    let (r1, log1) = env
        .deploy(&["--dry-run", "render", "-f", &victim_path], &[])
        .await;
    let (r2, _) = env
        .deploy(&["--dry-run", "render", "-f", &missing], &[])
        .await;
    let e1 = r1.expect_err("absolute path refused").to_string();
    let e2 = r2.expect_err("absolute path refused").to_string();
    assert!(
        e1.contains("is not a path inside the project directory"),
        "{e1}"
    );
    assert_eq!(
        e1.replace(&victim_path, "P"),
        e2.replace(&missing, "P"),
        "an existing and a missing host file must give the same error"
    );
    assert!(!log1.contains("victim-secret-7f3a"), "{log1}");
    let dotdot = format!("k8s/../../../../../../../..{victim_path}");
    let (r, _) = env
        .deploy(&["--dry-run", "render"], &[("FERRY_MANIFESTS", &dotdot)])
        .await;
    let e = r.expect_err("`..` refused").to_string();
    assert!(
        e.contains("is not a path inside the project directory"),
        "{e}"
    );

    // a committed link to the victim, named directly or found in k8s/
    std::os::unix::fs::symlink(&victim, env.project().join("k8s/linked.yaml")).unwrap();
    for args in [
        vec!["--dry-run", "render"],
        vec!["--dry-run", "render", "-f", "k8s/linked.yaml"],
    ] {
        let (r, log) = env.deploy(&args, &[]).await;
        let e = r.expect_err("link out refused").to_string();
        assert!(
            e.contains("leads outside the project directory"),
            "{args:?}: {e}"
        );
        assert!(!log.contains("victim-secret-7f3a"), "{log}");
    }
    assert!(env.fake.requests().is_empty());
}

#[tokio::test]
async fn leftover_placeholder_fails_with_file_and_line_before_any_call() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/deployment.yaml",
        &deploy_common::DEPLOYMENT.replace("__VERSION__", "__IMAGE_TAG__"),
    );
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("placeholder left").to_string();
    assert!(e.contains("k8s/deployment.yaml:20: template placeholder __IMAGE_TAG__ has no value (no job variable IMAGE_TAG)"), "{e}");
    assert!(
        env.fake.requests().is_empty(),
        "no request reached the cluster"
    );
}

#[tokio::test]
async fn yaml_errors_name_file_and_line() {
    let env = Env::new(Scenario::success()).await;
    env.write("k8s/bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [b\n");
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("bad yaml").to_string();
    assert!(
        e.contains("k8s/bad.yaml:") && e.contains("YAML error"),
        "{e}"
    );
    assert!(env.fake.requests().is_empty());
}

#[tokio::test]
async fn envsubst_and_manifest_globs() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "deploy/app.yaml",
        &deploy_common::DEPLOYMENT
            .replace("__APP_NAME__", "${APP_NAME}")
            .replace("__REPLICAS__", "${REPLICAS}")
            .replace("__VERSION__", "${CI_COMMIT_SHORT_SHA}"),
    );
    env.write("deploy/readme.txt", "not a manifest");
    let (r, log) = env
        .deploy(&["--template", "envsubst", "-f", "deploy/*.yaml"], &[])
        .await;
    r.expect("envsubst deploy");
    assert!(log.contains("rendered 1 object from deploy/*.yaml (envsubst: APP_NAME, REPLICAS, CI_COMMIT_SHORT_SHA)"), "{log}");
}

#[tokio::test]
async fn forbidden_names_verb_and_resource() {
    let env = Env::new(Scenario::success()).await;
    env.fake.forbid("patch", "deployments.apps");
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("forbidden");
    assert!(matches!(e, DeployError::Cluster(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(
            "not allowed to patch deployments.apps \"web\" in namespace \"test\" (403 Forbidden)"
        ),
        "{e}"
    );
    // no retries on 403
    let patches = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.uri.contains("deployments"))
        .count();
    assert_eq!(patches, 1);
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let env = Env::new(Scenario::success()).await;
    env.fake.fail_next(3, 503);
    let (r, _) = env.deploy(&[], &[]).await;
    r.expect("deploy succeeds after retries");
    let failed = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    assert_eq!(failed, 3);
    env.fake.fail_next(2, 429);
    env.deploy(&[], &[]).await.0.expect("429 retried too");
}

#[tokio::test]
async fn credentials_never_reach_the_log() {
    let env = Env::new(Scenario::success()).await;
    env.fake.require_token("s3cr3t-t0ken-value");
    let kc = ferry_tests::fake_k8s::write_kubeconfig(
        &env.dir.path().join("kube"),
        &env.fake.url,
        "tok",
        Some("test"),
        Some("s3cr3t-t0ken-value"),
    );
    let mut t = env.target();
    t.kubeconfig = kc;
    let (r, log) = env.deploy_with(&[], &[], vec![t.clone()]).await;
    r.expect("deploy with a token");
    assert!(!log.contains("s3cr3t"), "{log}");
    let bad = ferry_tests::fake_k8s::write_kubeconfig(
        &env.dir.path().join("kube"),
        &env.fake.url,
        "bad",
        Some("test"),
        Some("wrong-t0ken-value"),
    );
    t.kubeconfig = bad;
    let (r, log) = env.deploy_with(&[], &[], vec![t]).await;
    let e = r.expect_err("401").to_string();
    assert!(
        e.contains("rejected the credentials of deploy target \"test\" (401 Unauthorized)"),
        "{e}"
    );
    assert!(
        !e.contains("wrong-t0ken") && !log.contains("wrong-t0ken"),
        "{e}\n{log}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let env = Env::new(Scenario::success()).await;
    let kc = ferry_tests::fake_k8s::write_kubeconfig(
        &env.dir.path().join("kube"),
        "http://127.0.0.1:9",
        "down",
        None,
        None,
    );
    let mut t = env.target();
    t.kubeconfig = kc;
    let (r, _) = env.deploy_with(&[], &[], vec![t]).await;
    let e = r.expect_err("unreachable");
    assert!(matches!(e, DeployError::Cluster(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(
            "cannot reach the Kubernetes API of deploy target \"test\" at http://127.0.0.1:9"
        ),
        "{e}"
    );
    assert!(e.contains("tried 6 times"), "{e}");
}

#[tokio::test]
async fn unknown_context_is_a_clear_error() {
    let env = Env::new(Scenario::success()).await;
    let kc = env.kubeconfig.display().to_string();
    let (r, _) = env
        .deploy_as(
            &["--kubeconfig", &kc, "--context", "nope"],
            &[],
            vec![],
            ferry_deploy::Origin::Workstation,
        )
        .await;
    let e = r.expect_err("unknown context").to_string();
    assert!(
        e.contains("context \"nope\" is not in kubeconfig") && e.contains("its contexts: fake"),
        "{e}"
    );
    // in a job, --kubeconfig is refused: the runner's targets hold the credentials
    let (r, _) = env.deploy(&["--kubeconfig", "/etc/passwd"], &[]).await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("--kubeconfig is for `ferry deploy` on a workstation"),
        "{e}"
    );
    // even naming one of the runner's own kubeconfigs: that would skip the target policy
    let (r, _) = env
        .deploy(
            &["--kubeconfig", &kc],
            &[("CI_ENVIRONMENT_NAME", "production")],
        )
        .await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("--kubeconfig is for `ferry deploy` on a workstation"),
        "{e}"
    );
    let (r, _) = env.deploy(&["--context", "fake"], &[]).await;
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("--context is for `ferry deploy` on a workstation"),
        "{e}"
    );
    assert!(env.fake.requests().is_empty());
}

#[tokio::test]
async fn render_dry_run_contacts_nothing_and_redacts_secrets() {
    let env = Env::new(Scenario::success()).await;
    env.write("k8s/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: hunter2-very-secret\n");
    let (r, log) = env.deploy(&["--dry-run", "render"], &[]).await;
    r.expect("render");
    assert!(env.fake.requests().is_empty());
    assert!(
        log.contains("image: registry.example/web:1a2b3c4d"),
        "{log}"
    );
    assert!(log.contains("password: <redacted, 19 bytes>"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(
        log.contains("warning: k8s/secret.yaml:1: secret/db is stored in plain text"),
        "{log}"
    );
}

#[tokio::test]
async fn server_dry_run_diffs_and_persists_nothing() {
    let env = Env::new(Scenario::success()).await;
    env.deploy(&[], &[]).await.0.expect("first deploy");
    let before = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    let (r, log) = env
        .deploy(
            &[],
            &[
                ("FERRY_DRY_RUN", "server"),
                ("REPLICAS", "3"),
                ("CI_COMMIT_SHORT_SHA", "9f9f9f9f"),
            ],
        )
        .await;
    r.expect("server dry run");
    assert!(
        log.contains("deployment.apps/web would be configured"),
        "{log}"
    );
    assert!(log.contains("~ spec.replicas: 2 → 3"), "{log}");
    assert!(log.contains("~ spec.template.spec.containers[web].image: \"registry.example/web:1a2b3c4d\" → \"registry.example/web:9f9f9f9f\""), "{log}");
    assert!(log.contains("service/web unchanged"), "{log}");
    assert!(
        !log.contains("resourceVersion") && !log.contains("managedFields"),
        "{log}"
    );
    let after = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    assert_eq!(before, after);
    assert!(
        env.fake
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.uri.contains("dryRun=All"))
    );
}

#[tokio::test]
async fn conflicts_are_taken_over_with_a_warning() {
    let env = Env::new(Scenario::success()).await;
    env.deploy(&[], &[]).await.0.expect("first deploy");
    env.fake.set_owner(
        "deployments.apps",
        "test",
        "web",
        ".spec.replicas",
        "kubectl-client-side-apply",
    );
    let (r, log) = env.deploy(&[], &[("REPLICAS", "3")]).await;
    r.expect("forced");
    assert!(log.contains("warning: deployment.apps/web: took over from another manager: .spec.replicas (conflict with \"kubectl-client-side-apply\" using apps/v1)"), "{log}");
    env.fake.set_owner(
        "deployments.apps",
        "test",
        "web",
        ".spec.replicas",
        "kubectl-client-side-apply",
    );
    let (r, _) = env
        .deploy(&["--force-conflicts", "false"], &[("REPLICAS", "4")])
        .await;
    let e = r.expect_err("conflict").to_string();
    assert!(e.contains("conflicts with other field managers"), "{e}");
}

#[tokio::test]
async fn statefulset_daemonset_and_job_are_waited_for() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/more.yaml",
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: "postgres:16"}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "agent:1.0"}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: "migrate:1.0"}]
"#,
    );
    let (r, log) = env.deploy(&[], &[]).await;
    r.expect("all roll out");
    for w in [
        "statefulset.apps/db: rolled out",
        "daemonset.apps/agent: rolled out",
        "job.batch/migrate: rolled out",
        "deployment.apps/web: rolled out",
    ] {
        assert!(log.contains(w), "{w}\n{log}");
    }
    assert!(log.contains("1/1 succeeded"), "{log}");
}

#[tokio::test]
async fn crd_and_custom_resource_in_one_deploy() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/crd.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
"#,
    );
    let mut t = env.target();
    t.cluster_scoped = true;
    let (r, log) = env.deploy_with(&[], &[], vec![t]).await;
    r.expect("CRD then CR");
    assert!(
        log.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com"),
        "{log}"
    );
    assert!(log.contains("widget.example.com/w1"), "{log}");
    assert!(env.fake.get("widgets.example.com", "test", "w1").is_some());
    // an unknown kind is named
    env.write(
        "k8s/crd.yaml",
        "apiVersion: nothere.example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
    );
    let (r, _) = env.deploy(&[], &[]).await;
    let e = r.expect_err("unknown kind").to_string();
    assert!(e.contains("kind Gadget in apiVersion nothere.example.com/v1 is not served by this cluster (CRD missing?)"), "{e}");
}

#[tokio::test]
async fn timeout_is_capped_by_the_job() {
    let env = Env::new(Scenario::new(Outcome::Unschedulable)).await;
    let mut req_vars = vec![("FERRY_FAIL_FAST", "false")];
    req_vars.push(("FERRY_TIMEOUT", "10m"));
    let mut variables: Vec<(String, String)> = vec![
        ("CI_ENVIRONMENT_NAME", "test"),
        ("APP_NAME", "web"),
        ("REPLICAS", "1"),
        ("CI_COMMIT_SHORT_SHA", "x1"),
    ]
    .into_iter()
    .chain(req_vars)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    variables.push(("FERRY_ROLLBACK".into(), "none".into()));
    let req = ferry_deploy::DeployRequest {
        args: vec![],
        project_dir: env.project().to_path_buf(),
        variables,
        targets: vec![env.target()],
        remaining: Some(std::time::Duration::from_secs(17)),
        origin: ferry_deploy::Origin::Job(deploy_common::facts()),
        resumed: None,
        progress: None,
    };
    let (_, log) = deploy_common::run_request(&req).await;
    assert!(log.contains(", capped by the job timeout)"), "{log}");
    assert!(log.contains("not rolled out after"), "{log}");
}

#[tokio::test]
async fn script_lines_are_parsed_without_a_shell() {
    let args = ferry_deploy::parse_script_line("ferry deploy --namespace 'review-1' --timeout 5m")
        .expect("valid");
    assert_eq!(args, vec!["--namespace", "review-1", "--timeout", "5m"]);
    let e = ferry_deploy::parse_script_line("kubectl apply -f k8s/")
        .expect_err("not ferry deploy")
        .to_string();
    assert!(e.contains("`kubectl apply -f k8s/`"), "{e}");
}

#[tokio::test]
async fn broken_kubeconfig_is_named_but_never_quoted() {
    let env = Env::new(Scenario::success()).await;
    let kc = env.dir.path().join("kube/broken.yaml");
    std::fs::write(&kc, "apiVersion: v1\nusers:\n- name: x\n  user:\n    token: sup3r-s3cret-t0ken\n  : [unbalanced\n").expect("write");
    let mut t = env.target();
    t.kubeconfig = kc.clone();
    let (r, log) = env.deploy_with(&[], &[], vec![t.clone()]).await;
    let e = r.expect_err("broken kubeconfig");
    assert!(matches!(e, DeployError::Configuration(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&format!(
            "kubeconfig {}: not a valid kubeconfig",
            kc.display()
        )),
        "{e}"
    );
    assert!(!e.contains("sup3r") && !log.contains("sup3r"), "{e}\n{log}");
    t.kubeconfig = env.dir.path().join("kube/missing.yaml");
    let (r, _) = env.deploy_with(&[], &[], vec![t]).await;
    let e = r.expect_err("missing kubeconfig").to_string();
    assert!(
        e.contains("deploy target \"test\": cannot read kubeconfig") && e.contains("missing.yaml"),
        "{e}"
    );
}

#[tokio::test]
async fn summary_lists_ingress_hosts() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  tls:\n  - hosts: [test.example.com]\n  rules:\n  - host: test.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: web, port: {number: 80}}}\n",
    );
    let (r, log) = env.deploy(&[], &[]).await;
    r.expect("deploy with ingress");
    assert!(
        log.contains("ingress.networking.k8s.io/web")
            && log.contains("hosts https://test.example.com"),
        "{log}"
    );
    // Ingress is applied after the Deployment
    assert!(
        log.find("deployment.apps/web").unwrap_or(usize::MAX)
            < log.find("ingress.networking.k8s.io/web").unwrap_or(0),
        "{log}"
    );
}

#[tokio::test]
async fn failed_create_names_the_replicaset_and_quota() {
    let env = Env::new(Scenario::new(Outcome::FailedCreate)).await;
    let (r, log) = env.deploy(&[], &[]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(
        log.contains("FAILED deployment.apps/web: replicaset web-"),
        "{log}"
    );
    assert!(log.contains("FailedCreate — pods \"web-"), "{log}");
    assert!(log.contains("exceeded quota"), "{log}");
    assert!(
        log.contains("hint: the cluster refuses to create the pods"),
        "{log}"
    );
    assert!(log.contains("FailedCreate: Error creating:"), "{log}");
}

#[tokio::test]
async fn statefulset_rollout_is_undone_from_its_controller_revision() {
    let env = Env::new(Scenario::rollback()).await;
    std::fs::remove_file(env.project().join("k8s/deployment.yaml")).expect("rm");
    let sts = |tag: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  replicas: 2\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: \"registry.example/db:{tag}\"}}]}}\n"
        )
    };
    env.write("k8s/db.yaml", &sts("good"));
    env.deploy(&[], &[]).await.0.expect("good statefulset");
    env.write("k8s/db.yaml", &sts("broken"));
    let (r, log) = env.deploy(&[], &[]).await;
    assert!(matches!(r, Err(DeployError::Rollout(_))), "{r:?}");
    assert!(
        log.contains("rollback: statefulset.apps/db → revision 1"),
        "{log}"
    );
    assert!(
        log.contains("rollback of statefulset.apps/db complete"),
        "{log}"
    );
    let db = env
        .fake
        .get("statefulsets.apps", "test", "db")
        .expect("statefulset");
    assert_eq!(image_of(&db), "registry.example/db:good");
    assert!(env.fake.requests().iter().any(|r| {
        r.method == "PATCH"
            && r.content_type
                .starts_with("application/strategic-merge-patch+json")
    }));
}

#[tokio::test]
async fn cancelling_stops_the_wait() {
    let env = Env::new(Scenario::new(Outcome::Unschedulable)).await;
    let req = ferry_deploy::DeployRequest {
        args: vec![],
        project_dir: env.project().to_path_buf(),
        variables: [
            ("CI_ENVIRONMENT_NAME", "test"),
            ("APP_NAME", "web"),
            ("REPLICAS", "1"),
            ("CI_COMMIT_SHORT_SHA", "abc"),
            ("FERRY_FAIL_FAST", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        targets: vec![env.target()],
        remaining: None,
        origin: ferry_deploy::Origin::Job(deploy_common::facts()),
        resumed: None,
        progress: None,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        c2.cancel();
    });
    let mut log: Vec<u8> = Vec::new();
    let started = std::time::Instant::now();
    let r =
        ferry_deploy::Deployer::deploy(&deploy_common::deployer(), &req, &mut log, &cancel).await;
    assert!(matches!(r, Err(DeployError::Cancelled)), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn fields_removed_from_the_manifest_are_removed_from_the_cluster() {
    let env = Env::new(Scenario::success()).await;
    let with_extra = deploy_common::DEPLOYMENT
        .replace(
            "  labels:\n    app: __APP_NAME__\n",
            "  labels:\n    app: __APP_NAME__\n    team: payments\n",
        )
        .replace(
            "        ports:\n",
            "        env:\n        - {name: MODE, value: fast}\n        ports:\n",
        );
    env.write("k8s/deployment.yaml", &with_extra);
    env.deploy(&[], &[]).await.0.expect("first deploy");
    let d = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    assert_eq!(
        d.pointer("/metadata/labels/team").and_then(|v| v.as_str()),
        Some("payments")
    );
    assert!(
        d.pointer("/spec/template/spec/containers/0/env/0")
            .is_some()
    );
    env.write("k8s/deployment.yaml", deploy_common::DEPLOYMENT);
    let (r, log) = env.deploy(&[], &[]).await;
    r.expect("second deploy");
    assert!(log.contains("deployment.apps/web configured"), "{log}");
    let d = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");
    assert!(d.pointer("/metadata/labels/team").is_none(), "{d}");
    assert!(
        d.pointer("/spec/template/spec/containers/0/env")
            .is_none_or(|e| e.as_array().is_some_and(|a| a.is_empty())),
        "{d}"
    );
    assert_eq!(image_of(&d), "registry.example/web:1a2b3c4d");
}

#[tokio::test]
async fn https_cluster_with_a_certificate_authority_file() {
    let (_url, fake) = ferry_tests::fake_k8s::FakeK8s::start_tls(Scenario::success()).await;
    let env = Env::new(Scenario::success()).await;
    let kube = env.dir.path().join("kube-tls");
    std::fs::create_dir_all(&kube).expect("mkdir");
    fake.require_token("tls-t0ken");
    let ca = fake.ca_pem.clone().expect("CA");
    let kc = ferry_tests::fake_k8s::write_kubeconfig_with(
        &kube,
        &fake.url,
        "tls",
        Some("test"),
        Some("tls-t0ken"),
        Some(&ca),
    );
    let mut t = env.target();
    t.kubeconfig = kc;
    let (r, log) = env.deploy_with(&[], &[], vec![t.clone()]).await;
    r.expect("deploy over https");
    assert!(log.contains(&format!("cluster {}", fake.url)), "{log}");
    assert!(fake.get("deployments.apps", "test", "web").is_some());
    assert!(
        !log.contains("tls-t0ken") && !log.contains("BEGIN CERTIFICATE"),
        "{log}"
    );

    // without the CA the certificate is not trusted: said at once, not retried
    let kc = ferry_tests::fake_k8s::write_kubeconfig(
        &kube,
        &fake.url,
        "noca",
        Some("test"),
        Some("tls-t0ken"),
    );
    t.kubeconfig = kc;
    let started = std::time::Instant::now();
    let (r, _) = env.deploy_with(&[], &[], vec![t]).await;
    let e = r.expect_err("untrusted certificate").to_string();
    assert!(e.contains("certificate"), "{e}");
    assert!(!e.contains("tls-t0ken"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{e}");
}

#[tokio::test]
async fn no_wait_applies_and_returns() {
    let env = Env::new(Scenario::new(Outcome::ImagePullBackOff)).await;
    let (r, log) = env.deploy(&["--wait", "false"], &[]).await;
    r.expect("nothing waited for");
    assert!(log.contains("deployment.apps/web created"), "{log}");
    assert!(!log.contains("waiting for"), "{log}");
}

#[tokio::test]
async fn generic_back_off_message_is_replaced_by_the_registry_answer() {
    // the pods are in ImagePullBackOff ("Back-off pulling image") before ferry first looks
    let env = Env::new(
        Scenario::new(Outcome::ImagePullBackOff).step(std::time::Duration::from_millis(5)),
    )
    .await;
    let (r, log) = env.deploy(&[], &[]).await;
    let e = r.expect_err("fails").to_string();
    assert!(e.contains("ImagePullBackOff — Failed to pull image \"registry.example/web:1a2b3c4d\": rpc error: code = NotFound"), "{e}");
    assert!(
        log.contains("also: 1 other new pod with ImagePullBackOff"),
        "{log}"
    );
    assert!(
        log.contains("Failed: Error: ErrImagePull (and 1 other pod)"),
        "{log}"
    );
}

/// Issue 7, finding 12: a committed `k8s/loop/{a,b,c} -> .` made the walk run forever. Links
/// to directories are not descended: the deploy finishes at once, with the real manifests.
#[tokio::test]
async fn a_link_loop_in_the_manifests_is_not_followed() {
    let env = Env::new(Scenario::success()).await;
    std::fs::create_dir_all(env.project().join("k8s/loop")).unwrap();
    for n in ["a", "b", "c"] {
        std::os::unix::fs::symlink(".", env.project().join("k8s/loop").join(n)).unwrap();
        std::os::unix::fs::symlink("..", env.project().join("k8s/loop").join(format!("up{n}")))
            .unwrap();
    }
    std::os::unix::fs::symlink(".", env.project().join("self")).unwrap();
    let started = std::time::Instant::now();
    for manifests in ["k8s/", "k8s/**/*.yaml", "**/[ds]e*.yaml", "k8s/loop/a"] {
        let (r, log) = env
            .deploy(&["--dry-run", "render"], &[("FERRY_MANIFESTS", manifests)])
            .await;
        if manifests == "k8s/loop/a" {
            let e = r.expect_err("nothing to apply behind the loop").to_string();
            assert!(e.contains("holds no .yaml"), "{e}");
        } else {
            r.unwrap_or_else(|e| panic!("{manifests}: {e}"));
            assert!(log.contains("rendered 2 objects"), "{manifests}: {log}");
        }
    }
    let (r, _) = env.deploy(&[], &[]).await;
    r.expect("deploys");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// Issue 7, finding 12: reading the manifests respects the job's deadline and cancellation.
#[tokio::test]
async fn reading_the_manifests_stops_at_the_job_deadline() {
    let env = Env::new(Scenario::success()).await;
    let req = ferry_deploy::DeployRequest {
        args: vec![],
        project_dir: env.project().to_path_buf(),
        variables: vec![
            ("APP_NAME".into(), "web".into()),
            ("REPLICAS".into(), "1".into()),
        ],
        targets: vec![env.target()],
        remaining: Some(std::time::Duration::ZERO),
        origin: ferry_deploy::Origin::Job(deploy_common::facts()),
        resumed: None,
        progress: None,
    };
    let (r, _) = deploy_common::run_request(&req).await;
    let e = r.expect_err("deadline passed").to_string();
    assert!(e.contains("did not finish before the job timeout"), "{e}");
    assert!(env.fake.requests().is_empty());
}

/// Issue 7, finding 13: a huge manifest (a sparse 1.2 GB file) is refused from its size, never
/// read whole; the message names the file and the limit.
#[tokio::test]
async fn a_huge_manifest_is_refused_naming_file_and_limit() {
    let env = Env::new(Scenario::success()).await;
    let f = std::fs::File::create(env.project().join("k8s/huge.yaml")).unwrap();
    f.set_len(1_200_000_000).unwrap();
    drop(f);
    let (r, _) = env.deploy(&["--dry-run", "render"], &[]).await;
    let e = r.expect_err("too big").to_string();
    assert!(
        e.contains("k8s/huge.yaml: 1.1 GiB is over the limit of 4 MiB for one manifest file"),
        "{e}"
    );
    std::fs::remove_file(env.project().join("k8s/huge.yaml")).unwrap();
    // many files under the per-file limit: the total is capped too
    let chunk = format!("# {}\n", "x".repeat(3 * 1024 * 1024));
    for i in 0..6 {
        env.write(&format!("k8s/pad{i}.yaml"), &chunk);
    }
    let (r, _) = env.deploy(&["--dry-run", "render"], &[]).await;
    let e = r.expect_err("total too big").to_string();
    assert!(
        e.contains("the manifests add up to more than 16 MiB"),
        "{e}"
    );
    assert!(env.fake.requests().is_empty());
}

/// Issue 7, finding 14: a template value with newlines and YAML syntax stays one string; it
/// cannot add a document (here a ConfigMap in kube-system) or a key.
#[tokio::test]
async fn template_values_cannot_inject_yaml() {
    let env = Env::new(Scenario::success()).await;
    env.write(
        "k8s/notes.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  note: __NOTE__\n  quoted: \"__NOTE__\"\n  block: |\n    note=__NOTE__\n",
    );
    let attack = "x\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: injected, namespace: kube-system}\ndata: {a: b}\n";
    let (r, log) = env.deploy(&[], &[("NOTE", attack)]).await;
    r.expect("deploys the three objects");
    assert!(
        log.contains(
            "rendered 3 objects from k8s/ (placeholders: APP_NAME, REPLICAS, NOTE, VERSION)"
        ) || log.contains("rendered 3 objects"),
        "{log}"
    );
    assert!(
        env.fake
            .get("configmaps", "kube-system", "injected")
            .is_none()
    );
    let cm = env
        .fake
        .get("configmaps", "test", "notes")
        .expect("the notes ConfigMap");
    assert_eq!(cm["data"]["note"], attack);
    assert_eq!(cm["data"]["quoted"], attack);
    assert_eq!(cm["data"]["block"], format!("note={attack}\n"));
    let keys: Vec<&String> = cm["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["block", "note", "quoted"]);
}

/// A deploy an earlier ferry started (docs/crash-safety.md, "Deploy jobs"): applied again, the
/// objects it changed are `unchanged` but still its change (a failed rollout rolls them back);
/// the wait gets what is left of FERRY_TIMEOUT; the phases are reported as they begin.
#[tokio::test]
async fn a_resumed_deploy_is_applied_again_and_waits_for_what_is_left() {
    let env = Env::new(Scenario::rollback()).await;
    let (first, _) = env.deploy(&[], &[]).await;
    first.expect("the first deploy rolls out");
    // The earlier ferry applied a broken image, then went away 15 s into its 20 s wait.
    let (tx, mut phases) = tokio::sync::mpsc::unbounded_channel();
    let mut req = ferry_deploy::DeployRequest {
        args: vec![],
        project_dir: env.project().to_path_buf(),
        variables: [
            ("CI_ENVIRONMENT_NAME", "test"),
            ("APP_NAME", "web"),
            ("REPLICAS", "2"),
            ("CI_COMMIT_SHORT_SHA", "1a2b3c4d"),
            ("VERSION", "broken"),
            ("FERRY_TIMEOUT", "20s"),
            ("FERRY_FAIL_FAST", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        targets: vec![env.target()],
        remaining: Some(std::time::Duration::from_secs(3600)),
        origin: ferry_deploy::Origin::Job(deploy_common::facts()),
        resumed: None,
        progress: None,
    };
    let mut earlier = req.clone();
    earlier.args = vec!["--wait".into(), "false".into()];
    let (r, log) = deploy_common::run_request(&earlier).await;
    r.expect("applied without waiting");
    assert!(
        log.contains("deployment.apps/web") && log.contains("configured"),
        "{log}"
    );
    let patches = || {
        env.fake
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.content_type.contains("apply-patch"))
            .count()
    };
    let applied = patches();
    let generation =
        env.fake.get("deployments.apps", "test", "web").unwrap()["metadata"]["generation"].clone();

    req.resumed = Some(ferry_deploy::Resumed {
        elapsed: std::time::Duration::from_secs(16),
        waited: Some(std::time::Duration::from_secs(15)),
        changed: vec!["test/deployment.apps/web".into()],
    });
    req.progress = Some(tx);
    let started = std::time::Instant::now();
    // The runner's side: each phase is recorded (here: after 300 ms) before it is answered;
    // nothing reaches the cluster meanwhile once the rollout failed (no rollback before the
    // journal says `failed`).
    let fake = &env.fake;
    let recorder = async {
        let mut got = Vec::new();
        while let Some((phase, done)) = phases.recv().await {
            let seen = fake.requests().len();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if phase == ferry_deploy::Phase::Failed {
                assert_eq!(
                    fake.requests().len(),
                    seen,
                    "requests before the failed phase was recorded"
                );
            }
            got.push(phase);
            let _ = done.send(());
        }
        got
    };
    let deploying = async move {
        let out = deploy_common::run_request(&req).await;
        drop(req);
        out
    };
    let ((r, log), got) = tokio::join!(deploying, recorder);
    let e = r.expect_err("the broken image never rolls out").to_string();
    assert!(e.contains("deployment.apps/web"), "{e}");
    // Applied again (server-side apply: both objects), the Deployment unchanged by it.
    assert_eq!(patches(), applied + 2);
    assert!(
        log.contains("unchanged (changed by this deploy before ferry was restarted)"),
        "{log}"
    );
    // 20 s less the 15 s waited and the time spent applying again (and recording the phase:
    // 300 ms above), shown in whole seconds.
    assert!(
        log.contains("waiting again for deployment.apps/web (timeout ")
            && log.contains("s, what is left of it)")
            && !log.contains("(timeout 5s"),
        "{log}"
    );
    // Progress lines count from the deploy's first start.
    assert!(log.contains("  [00:1"), "{log}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{log}"
    );
    // Still this deploy's change: rolled back to the first deploy's revision.
    assert!(
        log.contains("rollback: deployment.apps/web → revision"),
        "{log}"
    );
    let d = env.fake.get("deployments.apps", "test", "web").unwrap();
    assert_ne!(d["metadata"]["generation"], generation);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:1a2b3c4d"
    );
    assert_eq!(
        got,
        vec![
            ferry_deploy::Phase::Waiting {
                changed: vec!["test/deployment.apps/web".into()]
            },
            ferry_deploy::Phase::Failed
        ]
    );
}
