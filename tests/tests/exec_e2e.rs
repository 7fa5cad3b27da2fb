//! End to end: `ferry exec` runs a repository's .gitlab-ci.yml on real Docker (docs/exec.md).
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker every test
//! prints `SKIP: <reason>` and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::e2e::{GitRepo, cmd, docker_ready, skip_notice};
use serde_json::Value;

mod deploy_common;

/// A repository, a config naming a runner of its own (so its Docker objects can be told from
/// other tests'), and the dirs ferry exec writes to.
struct Project {
    repo: GitRepo,
    home: tempfile::TempDir,
    token: String,
}

impl Project {
    fn new(ci: &str) -> Option<Project> {
        if let Err(reason) = docker_ready() {
            skip_notice(&format!("SKIP: {reason}"));
            return None;
        }
        let repo = GitRepo::new();
        repo.commit(".gitlab-ci.yml", ci);
        let home = tempfile::tempdir().expect("temp dir");
        let n: u64 = rand::random();
        let token = format!("glrt-exec{:012x}", n & 0xffff_ffff_ffff);
        std::fs::write(
            home.path().join("config.toml"),
            format!(
                "[[runners]]\nname = \"local\"\nurl = \"https://gitlab.example.com\"\n\
                 token = \"{token}\"\nexecutor = \"docker\"\n[runners.docker]\n\
                 image = \"ferry-test/busybox:latest\"\npull_policy = [\"if-not-present\"]\n"
            ),
        )
        .expect("config");
        Some(Project { repo, home, token })
    }

    fn out_dir(&self) -> PathBuf {
        self.home.path().join("out")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.command_without_runner(&[]);
        c.arg("-c")
            .arg(self.home.path().join("config.toml"))
            .args(args);
        c
    }

    /// `ferry exec` on ferry's default runner (no `-c`, no `CONFIG_FILE`, no `KUBECONFIG`).
    fn command_without_runner(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ferry_tests::ferry_bin());
        c.current_dir(self.repo.path())
            .env("HOME", self.home.path())
            .env_remove("CONFIG_FILE")
            .env_remove("KUBECONFIG")
            .arg("exec")
            .arg("--working-directory")
            .arg(self.home.path().join("work"))
            .arg("--output")
            .arg(self.out_dir())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ferry exec")
    }

    /// `--json` run: exit code and the summary.
    fn exec_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.exec(&a);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}); stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), summary)
    }

    /// Containers, networks and volumes of this project's runner still in Docker.
    fn leftovers(&self) -> Vec<String> {
        let short = ferry_config::token::ci_short_token(&self.token).to_string();
        let filter = format!("label=ferry.runner={short}");
        let mut out = Vec::new();
        for args in [
            vec!["ps", "-a", "--format", "{{.Names}}", "--filter", &filter],
            vec![
                "network",
                "ls",
                "--format",
                "{{.Name}}",
                "--filter",
                &filter,
            ],
        ] {
            out.extend(
                cmd("docker", &args)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
        out
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let short = ferry_config::token::ci_short_token(&self.token).to_string();
        let filter = format!("label=ferry.runner={short}");
        let ids = cmd("docker", &["ps", "-aq", "--filter", &filter]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let vols = cmd("docker", &["volume", "ls", "-q", "--filter", &filter]);
        for v in vols.lines().filter(|l| !l.is_empty()) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

fn job<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["name"] == name))
        .unwrap_or_else(|| panic!("no job {name} in {summary:#}"))
}

fn log_of(summary: &Value, name: &str) -> String {
    let path = job(summary, name)["log"]
        .as_str()
        .unwrap_or_else(|| panic!("job {name} has no log: {summary:#}"));
    std::fs::read_to_string(Path::new(path)).expect("job log")
}

const PIPELINE: &str = r#"
stages: [build, test, report]

variables:
  GREETING: hello

build:
  stage: build
  script:
    - echo "$GREETING from $CI_JOB_NAME on $CI_COMMIT_REF_NAME"
    - cat notes.txt
    - mkdir -p out cache
    - cat notes.txt > out/artifact.txt
    - 'if [ -f cache/stamp ]; then echo "cache hit: $(cat cache/stamp)"; else echo cache miss; fi' 
    - echo "run-$CI_PIPELINE_ID" > cache/stamp
  artifacts:
    paths: [out/]
  cache:
    key: deps
    paths: [cache/]

test:
  stage: test
  needs: [build]
  services:
    - name: ferry-test/service:latest
      alias: web
  script:
    - cat out/artifact.txt
    - wget -qO- http://web:8080/
    - if [ -n "$BREAK" ]; then exit 7; fi

lint:
  stage: test
  allow_failure: true
  script:
    - echo linting
    - exit 1

on-failure:
  stage: report
  when: on_failure
  script:
    - echo "something failed"

manual-job:
  stage: report
  when: manual
  script: [echo never]

excluded:
  stage: report
  rules:
    - if: $CI_COMMIT_BRANCH == "production"
  script: [echo never]
"#;

#[test]
fn a_pipeline_runs_with_needs_artifacts_cache_services_and_failure_rules() {
    let Some(p) = Project::new(PIPELINE) else {
        return;
    };
    // Uncommitted and untracked files are what the jobs see.
    std::fs::write(p.repo.path().join("notes.txt"), "uncommitted note\n").unwrap();
    let status_before = p.repo.git(&["status", "--porcelain"]);

    let (code, summary) = p.exec_json(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["status"], "success", "{summary:#}");
    assert_eq!(job(&summary, "build")["status"], "success");
    assert_eq!(job(&summary, "test")["status"], "success");
    let lint = job(&summary, "lint");
    assert_eq!(lint["status"], "failed");
    assert_eq!(lint["allow_failure"], true);
    assert_eq!(lint["failure_reason"], "script_failure");
    assert_eq!(job(&summary, "on-failure")["status"], "skipped");
    assert_eq!(job(&summary, "manual-job")["status"], "manual");
    assert_eq!(job(&summary, "excluded")["status"], "skipped");

    let build = log_of(&summary, "build");
    assert!(build.contains("hello from build on main"), "{build}");
    assert!(build.contains("uncommitted note"), "{build}");
    assert!(build.contains("cache miss"), "{build}");
    let test = log_of(&summary, "test");
    assert!(
        test.contains("uncommitted note"),
        "artifacts of build: {test}"
    );
    assert!(test.contains("ferry-service-ok"), "service: {test}");
    // The user's tree is as it was, and nothing of the pipeline is left in Docker.
    assert_eq!(p.repo.git(&["status", "--porcelain"]), status_before);
    assert!(!p.repo.path().join("out").exists());
    assert_eq!(p.leftovers(), Vec::<String>::new());

    // A second run restores the cache of the first; a failing job fails the pipeline, runs
    // the on_failure job and exits 1.
    let (code, summary) = p.exec_json(&["--var", "BREAK=1"]);
    assert_eq!(code, Some(1), "{summary:#}");
    assert_eq!(summary["status"], "failed", "{summary:#}");
    assert_eq!(job(&summary, "test")["failure_reason"], "script_failure");
    assert_eq!(job(&summary, "on-failure")["status"], "success");
    let build = log_of(&summary, "build");
    assert!(build.contains("cache hit: run-1"), "{build}");
}

#[test]
fn list_shows_the_planned_jobs_and_named_jobs_run_alone() {
    let Some(p) = Project::new(PIPELINE) else {
        return;
    };
    std::fs::write(p.repo.path().join("notes.txt"), "note\n").unwrap();
    let out = p.exec(&["--list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "build",
            "test",
            "lint",
            "on-failure",
            "manual-job",
            "excluded"
        ]
    );
    assert_eq!(job(&list, "manual-job")["status"], "manual");
    assert_eq!(job(&list, "excluded")["status"], "skipped");
    assert!(job(&list, "excluded")["reason"].is_string(), "{list:#}");

    // `ferry exec lint` runs lint only (it fails, allowed: the pipeline passes).
    let (code, summary) = p.exec_json(&["lint"]);
    assert_eq!(code, Some(0), "{summary:#}");
    let ran: Vec<&str> = summary["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] != "skipped")
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(ran, ["lint"], "{summary:#}");
    // --needs brings what a job needs.
    let (code, summary) = p.exec_json(&["test", "--needs"]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(job(&summary, "build")["status"], "success");
    assert_eq!(job(&summary, "test")["status"], "success");
}

#[test]
fn bad_input_is_one_clear_error_and_exit_2() {
    let Some(p) = Project::new("build:\n  script: [echo]\n  stage: nope\n") else {
        return;
    };
    let out = p.exec(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".gitlab-ci.yml:1: build job:"), "{err}");
    assert!(
        err.contains("does not exist; available stages are .pre, build, test, deploy, .post"),
        "{err}"
    );

    p.repo.commit(".gitlab-ci.yml", "build:\n  script: [echo\n");
    let out = p.exec(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".gitlab-ci.yml:"), "names file:line: {err}");

    p.repo
        .commit(".gitlab-ci.yml", "build:\n  script: [echo]\n");
    let out = p.exec(&["nosuchjob"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no job \"nosuchjob\""), "{err}");

    // A repository that brings its own .ferry/ (where the logs would go by default) is refused:
    // its files could be links to anywhere.
    p.repo.commit(".ferry/1/logs/1001-build.log", "planted\n");
    let out = Command::new(ferry_tests::ferry_bin())
        .current_dir(p.repo.path())
        .env("HOME", p.home.path())
        .args(["exec", "--working-directory"])
        .arg(p.home.path().join("work"))
        .stdin(Stdio::null())
        .output()
        .expect("ferry exec");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tracks files under .ferry/"), "{err}");
    assert_eq!(
        std::fs::read_to_string(p.repo.path().join(".ferry/1/logs/1001-build.log")).unwrap(),
        "planted\n"
    );
}

#[test]
fn ctrl_c_cancels_like_gitlab_and_leaves_nothing_behind() {
    let ci = r#"
slow:
  script:
    - echo started
    - sleep 60
  after_script:
    - echo "after_script saw $CI_JOB_STATUS"
later:
  stage: deploy
  script: [echo never]
"#;
    let Some(p) = Project::new(ci) else {
        return;
    };
    let child = p
        .command(&["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry exec");
    // Wait for the script to run: its log file shows `started`.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let started = std::fs::read_dir(p.out_dir())
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| {
                std::fs::read_dir(d.path().join("logs"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains("\nstarted")));
        if started {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    cmd("kill", &["-INT", &pid]);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{summary:#}");
    assert_eq!(summary["status"], "canceled", "{summary:#}");
    assert_eq!(job(&summary, "slow")["status"], "canceled");
    assert_eq!(job(&summary, "later")["status"], "canceled");
    let log = log_of(&summary, "slow");
    assert!(log.contains("after_script saw canceled"), "{log}");
    assert_eq!(p.leftovers(), Vec::<String>::new());
}

#[test]
fn retry_runs_a_failed_job_again_and_delayed_jobs_run_after_start_in() {
    let ci = r#"
flaky:
  retry: 1
  cache:
    key: retry-$CI_PIPELINE_ID
    paths: [state/]
    when: always
  script:
    - 'if [ -f state/tried ]; then echo "second attempt"; else mkdir -p state && touch state/tried && echo "first attempt" && exit 3; fi'
later:
  stage: deploy
  when: delayed
  start_in: 2 seconds
  script: [echo delayed ran]
"#;
    let Some(p) = Project::new(ci) else {
        return;
    };
    let (code, summary) = p.exec_json(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(job(&summary, "flaky")["status"], "success");
    assert!(log_of(&summary, "flaky").contains("second attempt"));
    // The first attempt's log is kept beside the retry's.
    let logs = Path::new(job(&summary, "flaky")["log"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let first: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-flaky") && !n.contains("retry"))
        .collect();
    assert_eq!(first.len(), 1, "{first:?}");
    let first_log = std::fs::read_to_string(logs.join(&first[0])).unwrap();
    assert!(first_log.contains("first attempt"), "{first_log}");
    let later = job(&summary, "later");
    assert_eq!(later["status"], "success");
    assert!(later["duration_s"].as_f64().unwrap() >= 2.0, "{later}");
}

#[test]
fn artifacts_to_source_unpacks_successful_jobs_artifacts_into_the_tree_and_nothing_else() {
    let ci = r#"
stages: [build, test]

build:
  stage: build
  script:
    - mkdir -p gen/.git/hooks
    - echo generated > gen/out.txt
    - echo '#!/bin/sh' > gen/.git/hooks/pre-commit
    - ln -s /etc gen/escape
    - echo "from the job" > README
  artifacts:
    paths: [gen/, README]

broken:
  stage: test
  allow_failure: true
  script:
    - echo broken > broken.txt
    - exit 1
  artifacts:
    when: always
    paths: [broken.txt]
"#;
    let Some(p) = Project::new(ci) else {
        return;
    };
    p.repo.commit("README", "the user's\n");
    let tree = p.repo.path();

    // Without the flag, jobs never change the user's tree.
    let (code, summary) = p.exec_json(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert!(!tree.join("gen").exists());
    assert_eq!(
        std::fs::read_to_string(tree.join("README")).unwrap(),
        "the user's\n"
    );

    let out = p.exec(&["--json", "--artifacts-to-source"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(tree.join("gen/out.txt")).unwrap(),
        "generated\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("README")).unwrap(),
        "from the job\n",
        "files are overwritten, as GitLab's artifact download does"
    );
    assert!(
        stderr.contains("ferry: extracted the artifacts of build into"),
        "{stderr}"
    );
    // Never into a .git, never a link out of the tree, never a failed job's artifacts.
    assert!(!tree.join("gen/.git").exists(), "{stderr}");
    assert!(
        stderr.contains(
            "gen/.git/hooks/pre-commit: skipped: ferry never writes into a .git directory"
        ),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(tree.join("gen/escape")).is_err());
    assert!(stderr.contains("gen/escape: skipped"), "{stderr}");
    assert!(!tree.join("broken.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_job_is_a_server_dry_run_unless_deploy_is_given() {
    use ferry_tests::fake_k8s::{FakeK8s, Scenario};
    let ci = r#"
deploy-test:
  stage: deploy
  image: ferry:deploy
  environment:
    name: test
  variables:
    FERRY_MANIFESTS: k8s/
    APP_NAME: shop
    REPLICAS: "2"
    VERSION: 1a2b3c4d
  script:
    - ferry deploy
"#;
    let Some(p) = Project::new(ci) else {
        return;
    };
    p.repo
        .commit("k8s/deployment.yaml", deploy_common::DEPLOYMENT);
    p.repo.commit("k8s/service.yaml", deploy_common::SERVICE);
    let (_url, fake) = FakeK8s::start(Scenario::success()).await;
    let kubeconfig = fake.write_kubeconfig(p.home.path());
    // The runner of -c gets a deploy target on the fake cluster.
    let config = p.home.path().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[[runners.deploy.targets]]\nname = \"test\"\nenvironments = [\"test\"]\n\
         kubeconfig = \"{}\"\nnamespaces = [\"test\"]\ndefault_namespace = \"test\"\n",
        kubeconfig.display()
    ));
    std::fs::write(&config, text).unwrap();
    let run = |args: Vec<&'static str>| {
        let mut c = p.command(&args);
        tokio::task::block_in_place(|| c.output().expect("ferry exec"))
    };

    let out = run(vec![]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("without --deploy: a server-side dry run"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run (server)"), "{stdout}");
    assert!(
        fake.get("deployments.apps", "test", "shop").is_none(),
        "a dry run persists nothing"
    );
    let sent: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.uri)
        .collect();
    assert!(!sent.is_empty(), "the dry run reached the cluster");
    assert!(sent.iter().all(|u| u.contains("dryRun=All")), "{sent:?}");

    let out = run(vec!["--deploy"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("dry run"), "{stdout}");
    assert!(stdout.contains("rolled out"), "{stdout}");
    let d = fake
        .get("deployments.apps", "test", "shop")
        .expect("--deploy applies the Deployment");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:1a2b3c4d"
    );
}

/// Without -c, a deploy job uses the user's kubeconfig (`$KUBECONFIG`, or `--kubeconfig` and
/// `--context`) for every environment: a server dry run, applied with --deploy; its credentials
/// reach the cluster and never the output. No kubeconfig: the job fails naming where ferry looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_runner_a_deploy_job_uses_the_users_kubeconfig() {
    use ferry_tests::fake_k8s::{FakeK8s, Scenario, write_kubeconfig};
    let ci = r#"
deploy-review:
  stage: deploy
  image: ferry:deploy
  environment:
    name: review/feature-x
  variables:
    FERRY_MANIFESTS: k8s/
    APP_NAME: shop
    REPLICAS: "2"
    VERSION: 1a2b3c4d
  script:
    - ferry deploy
"#;
    let Some(p) = Project::new(ci) else {
        return;
    };
    p.repo
        .commit("k8s/deployment.yaml", deploy_common::DEPLOYMENT);
    p.repo.commit("k8s/service.yaml", deploy_common::SERVICE);
    let (url, fake) = FakeK8s::start(Scenario::success()).await;
    const TOKEN: &str = "kube-token-3f9a7c2e";
    fake.require_token(TOKEN);
    // Context "fake", namespace "test", a bearer token.
    let kubeconfig = write_kubeconfig(p.home.path(), &url, "fake", Some("test"), Some(TOKEN));
    // $KUBECONFIG may list files that do not exist: the first that does is taken.
    let missing = p.home.path().join("missing.yaml");
    let listed = std::env::join_paths([&missing, &kubeconfig]).unwrap();
    let mut printed = String::new();
    let mut run = |args: &[&str], env: Option<&std::ffi::OsStr>| {
        let mut c = p.command_without_runner(args);
        if let Some(v) = env {
            c.env("KUBECONFIG", v);
        }
        let out = tokio::task::block_in_place(|| c.output().expect("ferry exec"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        printed.push_str(&text);
        (out.status.code(), text)
    };

    let (code, out) = run(&[], Some(&listed));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "ferry: deploy jobs use the kubeconfig {} (its current context)",
            kubeconfig.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("without --deploy: a server-side dry run"),
        "{out}"
    );
    assert!(out.contains("(context fake), namespace test"), "{out}");
    assert!(out.contains("dry run (server)"), "{out}");
    assert!(
        fake.get("deployments.apps", "test", "shop").is_none(),
        "a dry run persists nothing"
    );
    let sent: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.uri)
        .collect();
    assert!(!sent.is_empty(), "the dry run reached the cluster");
    assert!(sent.iter().all(|u| u.contains("dryRun=All")), "{sent:?}");

    let (code, out) = run(&["--deploy"], Some(&listed));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("dry run"), "{out}");
    assert!(out.contains("rolled out"), "{out}");
    let d = fake
        .get("deployments.apps", "test", "shop")
        .expect("--deploy applies the Deployment");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:1a2b3c4d"
    );

    // --kubeconfig and --context instead of $KUBECONFIG: the context is the one named.
    let path = kubeconfig.to_str().unwrap();
    let (code, out) = run(&["--kubeconfig", path, "--context", "staging"], None);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "ferry: deploy jobs use the kubeconfig {path} (context staging)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "context \"staging\" is not in kubeconfig {path} (its contexts: fake)"
        )),
        "{out}"
    );
    let (code, out) = run(&["--kubeconfig", path, "--context", "fake"], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("dry run (server)"), "{out}");

    // No kubeconfig anywhere: the job fails, naming where ferry looked.
    let (code, out) = run(&["--json"], None);
    assert_eq!(code, Some(1), "{out}");
    let home_config = p.home.path().join(".kube").join("config");
    assert!(
        out.contains(&format!(
            "no kubeconfig found: KUBECONFIG is not set and {} does not exist",
            home_config.display()
        )),
        "{out}"
    );
    let summary: Value = serde_json::from_str(
        out.lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("no summary: {out}")),
    )
    .unwrap();
    assert_eq!(
        summary["jobs"][0]["failure_reason"], "runner_configuration_error",
        "{summary}"
    );

    // With -c, the runner's targets (this one has none): --kubeconfig is refused.
    let (code, out) = {
        let out = tokio::task::block_in_place(|| {
            p.command(&["--kubeconfig", path])
                .output()
                .expect("ferry exec")
        });
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--kubeconfig and --context are for ferry exec's default runner"),
        "{out}"
    );

    // The kubeconfig's credentials reached the cluster, never the terminal or a job log.
    assert!(!printed.contains(TOKEN), "{printed}");
    for entry in files_under(&p.out_dir()) {
        let text = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains(TOKEN),
            "{} holds the kubeconfig's token",
            entry.display()
        );
    }
}

/// Every file below `dir` (links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
    out
}
