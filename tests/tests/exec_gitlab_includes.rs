//! `ferry exec --gitlab URL`: includes only GitLab can read (`include:project` here) resolved by
//! the fake GitLab's CI lint API, the working tree's own includes by ferry (docs/exec.md,
//! "Includes from GitLab"). The `--list` tests need no Docker; the run test does (it prints
//! `SKIP: <reason>` without it).

use std::path::PathBuf;
use std::process::{Output, Stdio};

use ferry_tests::e2e::{GitRepo, cmd, docker_ready, skip_notice};
use ferry_tests::fake_gitlab::FakeGitLab;
use serde_json::Value;

const TOKEN: &str = "glpat-ferry-e2e-secret-7f3a";

const MAIN: &str = r#"include:
  - local: ci/local.yml
  - project: acme/ci
    file: /templates/build.yml
stages: [build, test]
test:
  stage: test
  extends: .from-ci
  script:
    - echo "test sees FROM_CI=$FROM_CI"
"#;

const TEMPLATE: &str = r#".from-ci:
  variables:
    FROM_CI: "set by acme/ci"
ci-build:
  stage: build
  script:
    - echo "built by a job of acme/ci"
"#;

struct Setup {
    repo: GitRepo,
    home: tempfile::TempDir,
    gitlab: FakeGitLab,
}

impl Setup {
    async fn new() -> Setup {
        let gitlab = FakeGitLab::start().await;
        gitlab.add_api_token(TOKEN, &["acme/app"]);
        // GitLab's copy of the project lacks the working tree's ci/local.yml: were ferry to
        // send include:local, GitLab would answer that it does not exist.
        gitlab.add_project("acme/app", &[]);
        gitlab.add_project("acme/ci", &[("templates/build.yml", TEMPLATE)]);
        let repo = GitRepo::new();
        repo.git(&[
            "remote",
            "add",
            "origin",
            "git@gitlab.example.com:acme/app.git",
        ]);
        repo.commit(".gitlab-ci.yml", MAIN);
        repo.commit(
            "ci/local.yml",
            "local-committed:\n  stage: test\n  script: [echo old]\n",
        );
        // Uncommitted: what the pipeline has.
        std::fs::write(
            repo.path().join("ci/local.yml"),
            "local-uncommitted:\n  stage: test\n  script: [echo \"from the working tree\"]\n",
        )
        .unwrap();
        Setup {
            repo,
            home: tempfile::tempdir().unwrap(),
            gitlab,
        }
    }

    fn command(&self, args: &[&str], token: Option<&str>) -> std::process::Command {
        let mut c = std::process::Command::new(ferry_tests::ferry_bin());
        c.current_dir(self.repo.path())
            .env("HOME", self.home.path())
            .env_remove("FERRY_GITLAB_TOKEN")
            .arg("exec")
            .arg("--working-directory")
            .arg(self.home.path().join("work"))
            .arg("--output")
            .arg(self.home.path().join("out"))
            .args(args)
            .stdin(Stdio::null());
        if let Some(t) = token {
            c.env("FERRY_GITLAB_TOKEN", t);
        }
        c
    }

    async fn exec(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut c = self.command(args, token);
        tokio::task::spawn_blocking(move || c.output().expect("ferry exec"))
            .await
            .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jobs(list: &Value) -> Vec<(String, String)> {
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["name"].as_str().unwrap().to_string(),
                j["defined_at"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_include_is_resolved_by_gitlab_and_the_working_tree_wins() {
    let s = Setup::new().await;
    let url = s.gitlab.url();
    let out = s
        .exec(&["--list", "--json", "--gitlab", &url], Some(TOKEN))
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let jobs = jobs(&list);
    let names: Vec<&str> = jobs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ci-build", "local-uncommitted", "test"], "{list:#}");
    // where each job is defined: GitLab's merged YAML for acme/ci's job, the files otherwise
    assert!(jobs[0].1.starts_with("(merged by GitLab):"), "{jobs:?}");
    assert_eq!(jobs[1].1, "ci/local.yml:1");
    assert_eq!(jobs[2].1, ".gitlab-ci.yml:6");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "ferry: GitLab ({url}, project acme/app) resolved: {{\"project\": \"acme/ci\", \"file\": \"/templates/build.yml\"}}"
        )),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");

    // What GitLab got: one static check, the working tree's include merged in.
    let sent = s.gitlab.ci_lint_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["dry_run"], false);
    let content = sent[0]["content"].as_str().unwrap();
    assert!(content.contains("from the working tree"), "{content}");
    assert!(!content.contains("\"local\""), "{content}");
    let lint_calls = s
        .gitlab
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v4/projects/acme%2Fapp/ci/lint")
        .count();
    assert_eq!(lint_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_and_template_includes_and_a_local_file_gitlab_read_itself() {
    let s = Setup::new().await;
    let url = s.gitlab.url();
    s.gitlab.add_remote_file(
        "https://ci.example.com/lint.yml",
        "lint:\n  stage: test\n  script: [echo lint]\n",
    );
    // The template includes a file of the project: GitLab reads it from its own copy.
    s.gitlab.add_template(
        "Jobs/Audit.gitlab-ci.yml",
        "include:\n  - local: ci/audit-extra.yml\naudit:\n  stage: test\n  script: [echo audit]\n",
    );
    s.gitlab.add_project(
        "acme/app",
        &[(
            "ci/audit-extra.yml",
            "audit-extra:\n  stage: test\n  script: [echo extra]\n",
        )],
    );
    std::fs::write(
        s.repo.path().join(".gitlab-ci.yml"),
        "include:\n  - https://ci.example.com/lint.yml\n  - template: Jobs/Audit.gitlab-ci.yml\n    rules:\n      - if: $AUDIT == \"yes\"\njob:\n  script: [echo job]\n",
    )
    .unwrap();
    // include:rules are ferry's to evaluate, with --var: without AUDIT no template.
    let out = s
        .exec(&["--list", "--json", "--gitlab", &url], Some(TOKEN))
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<String> = jobs(&list).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["lint", "job"], "{list:#}");

    let out = s
        .exec(
            &["--list", "--json", "--gitlab", &url, "--var", "AUDIT=yes"],
            Some(TOKEN),
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<String> = jobs(&list).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["lint", "audit-extra", "audit", "job"], "{list:#}");
    let err = stderr(&out);
    assert!(
        err.contains(
            "ferry: `ci/audit-extra.yml` was read by GitLab from the project's default branch, \
             not from the working tree"
        ),
        "{err}"
    );
    // The sent content carries no `rules` (decided here).
    let sent = s.gitlab.ci_lint_requests();
    assert!(
        sent.iter()
            .all(|b| !b["content"].as_str().unwrap().contains("rules")),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gitlab_or_with_a_bad_answer_one_clear_error_and_exit_2() {
    let s = Setup::new().await;
    let url = s.gitlab.url();

    // No --gitlab: the include is named, and the way to it.
    let out = s.exec(&["--list"], Some(TOKEN)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(
            ".gitlab-ci.yml:3: include:project `acme/ci` (file /templates/build.yml) needs GitLab: \
             run `ferry exec --gitlab URL` with a token in FERRY_GITLAB_TOKEN"
        ),
        "{err}"
    );

    // --gitlab without a token
    let out = s.exec(&["--list", "--gitlab", &url], None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--gitlab needs an access token: set FERRY_GITLAB_TOKEN"));

    let endpoint = format!("POST {url}/api/v4/projects/acme%2Fapp/ci/lint");
    let one_line = |out: &Output, want: &str| {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
        let err = stderr(out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("ERROR: {want}")), "{err}");
        assert!(!err.contains(TOKEN) && !err.contains("secret"), "{err}");
    };
    // A token GitLab does not know: 401.
    let out = s
        .exec(&["--list", "--gitlab", &url], Some("glpat-wrong"))
        .await;
    one_line(
        &out,
        &format!("{endpoint}: 401 Unauthorized: the token is not valid"),
    );
    // A project the token's user may not use: 403; an unknown one: 404.
    s.gitlab.add_project("acme/other", &[]);
    let out = s
        .exec(
            &["--list", "--gitlab", &url, "--project", "acme/other"],
            Some(TOKEN),
        )
        .await;
    one_line(
        &out,
        &format!(
            "POST {url}/api/v4/projects/acme%2Fother/ci/lint: 403 Forbidden: the token may not"
        ),
    );
    let out = s
        .exec(
            &["--list", "--gitlab", &url, "--project", "acme/nope"],
            Some(TOKEN),
        )
        .await;
    one_line(
        &out,
        &format!(
            "POST {url}/api/v4/projects/acme%2Fnope/ci/lint: 404 Not Found: no project acme/nope"
        ),
    );
    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("http://127.0.0.1:{closed}");
    let out = s.exec(&["--list", "--gitlab", &dead], Some(TOKEN)).await;
    one_line(
        &out,
        &format!("POST {dead}/api/v4/projects/acme%2Fapp/ci/lint: "),
    );

    // GitLab's own errors, as GitLab words them.
    std::fs::write(
        s.repo.path().join(".gitlab-ci.yml"),
        MAIN.replace("/templates/build.yml", "/templates/nope.yml"),
    )
    .unwrap();
    let out = s.exec(&["--list", "--gitlab", &url], Some(TOKEN)).await;
    one_line(
        &out,
        &format!(
            "GitLab ({url}, project acme/app) refuses the configuration: Project `acme/ci` file \
             `templates/nope.yml` does not exist!"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_project_include_run_on_docker() {
    if let Err(reason) = docker_ready() {
        skip_notice(&format!("SKIP: {reason}"));
        return;
    }
    let s = Setup::new().await;
    let n: u64 = rand::random();
    let runner_token = format!("glrt-incl{:012x}", n & 0xffff_ffff_ffff);
    let config: PathBuf = s.home.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[runners]]\nname = \"local\"\nurl = \"https://gitlab.example.com\"\n\
             token = \"{runner_token}\"\nexecutor = \"docker\"\n[runners.docker]\n\
             image = \"ferry-test/busybox:latest\"\npull_policy = [\"if-not-present\"]\n"
        ),
    )
    .unwrap();
    let url = s.gitlab.url();
    let config_arg = config.to_str().unwrap().to_string();
    let out = s
        .exec(
            &["--json", "-c", &config_arg, "--gitlab", &url],
            Some(TOKEN),
        )
        .await;
    // Nothing of the pipeline may stay in Docker, whatever the result.
    let short = ferry_config::token::ci_short_token(&runner_token).to_string();
    let left = cmd(
        "docker",
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=ferry.runner={short}"),
        ],
    );
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{summary:#}\n{}", stderr(&out));
    let log = |name: &str| -> String {
        let job = summary["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}: {summary:#}"));
        assert_eq!(job["status"], "success", "{summary:#}");
        std::fs::read_to_string(job["log"].as_str().unwrap()).unwrap()
    };
    assert!(log("ci-build").contains("built by a job of acme/ci"));
    assert!(log("test").contains("test sees FROM_CI=set by acme/ci"));
    assert!(log("local-uncommitted").contains("from the working tree"));
    assert_eq!(left.trim(), "", "containers left behind");
}

/// An error answer GitLab (or a proxy, or a server that echoes what it was sent) gives: one line,
/// the status and GitLab's message at most, never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_one_line_without_the_token_or_a_proxy_page() {
    let s = Setup::new().await;
    let url = s.gitlab.url();
    let endpoint = format!("POST {url}/api/v4/projects/acme%2Fapp/ci/lint");
    let one_line = |out: &Output| -> String {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
        let err = stderr(out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains(TOKEN), "{err}");
        err.trim_end().to_string()
    };

    // A proxy's HTML page, many lines and larger than ferry reads: the status alone.
    let page = format!(
        "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n{}</body>\n</html>\n",
        "<p>upstream unavailable</p>\n".repeat(2000)
    );
    s.gitlab.ci_lint_proxy_page(Some((502, &page)));
    let out = s.exec(&["--list", "--gitlab", &url], Some(TOKEN)).await;
    assert_eq!(
        one_line(&out),
        format!("ERROR: {endpoint}: 502 Bad Gateway")
    );
    s.gitlab.ci_lint_proxy_page(None);

    // A server that echoes the token: its message is shown, the token cut out.
    s.gitlab.ci_lint_echo_token(true);
    s.gitlab.add_project("acme/other", &[]);
    let out = s
        .exec(
            &["--list", "--gitlab", &url, "--project", "acme/other"],
            Some(TOKEN),
        )
        .await;
    let err = one_line(&out);
    assert!(
        err.contains("403 Forbidden (request with PRIVATE-TOKEN [MASKED] refused)"),
        "{err}"
    );
    // … and a `valid: false` error that echoes it.
    std::fs::write(
        s.repo.path().join(".gitlab-ci.yml"),
        MAIN.replace("/templates/build.yml", "/templates/nope.yml"),
    )
    .unwrap();
    let out = s.exec(&["--list", "--gitlab", &url], Some(TOKEN)).await;
    let err = one_line(&out);
    assert!(
        err.contains("does not exist! (PRIVATE-TOKEN: [MASKED])"),
        "{err}"
    );
}
