//! End to end through the real `ferry run` binary, the fake GitLab and the real Docker engine:
//! what GitLab holds afterwards (status, failure_reason, exit_code, trace, artifacts) and what is
//! on disk and in Docker. One test per point of the Docker executor issue; each test has its own
//! runner (unique token, so unique labels and directories) and temp dirs.
//!
//! Needs Docker and the images of scripts/build-test-images.sh (built on first use); without
//! Docker every test prints `SKIP: <reason>` and returns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::e2e::{BASH, BUSYBOX, GitHttp, GitRepo, Harness, SERVICE, Setup, cmd, poll_until};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

// ---- (1) Docker unreachable ------------------------------------------------------------------

/// A Unix socket at `path` that forwards every connection to the real Docker socket.
fn docker_proxy(path: &Path) -> tokio::task::JoinHandle<()> {
    let target = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let listener = tokio::net::UnixListener::bind(path).expect("binding the proxy socket");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_fails_with_a_one_line_cause_and_the_next_job_runs() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("docker.sock");
    let setup = Setup::default().docker(&format!("host = \"unix://{}\"", sock.display()));
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let id = h.push(h.job("no-docker").script(["echo script-ran"]));
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    let cause = trace
        .lines()
        .find(|l| l.contains(&sock.display().to_string()))
        .unwrap_or_else(|| panic!("no line names the Docker socket: {}", h.describe(id)));
    assert!(
        cause.contains("ERROR:") && cause.contains("Docker daemon"),
        "{cause}"
    );
    assert!(!cause.contains("docker: docker:"), "{cause}");
    assert!(!trace.contains("\nscript-ran"), "{trace}");
    assert!(trace.contains("Job failed"), "{trace}");

    // Docker comes back on that socket: the next job is taken and runs.
    let _proxy = docker_proxy(&sock);
    h.assert_takes_next_job().await;
    let status = h.stop().await;
    assert!(status.success(), "ferry exit status {status}");
}

// ---- (2) images ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_missing_disallowed_and_pull_policy_not_allowed() {
    let setup = Setup::default().docker(
        "pull_policy = [\"never\"]\n\
         allowed_images = [\"ferry-test/*\"]\n\
         allowed_pull_policies = [\"never\", \"if-not-present\"]",
    );
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let missing = h.push(h.job("missing").image(Some("ferry-test/missing:1")));
    // A GitLab that knows image_pull_failure gets it.
    let mut reasons: Vec<&str> = ferry_tests::fake_gitlab::FAILURE_REASONS.to_vec();
    reasons.push("image_pull_failure");
    let missing_new_gitlab = h.push(
        h.job("missing-new-gitlab")
            .image(Some("ferry-test/missing:2"))
            .patch(json!({"features": {"failure_reasons": reasons}})),
    );
    let disallowed = h.push(h.job("disallowed").image(Some("alpine:3.20")));
    let bad_policy = h.push(
        h.job("bad-policy")
            .patch(json!({"image": {"name": BUSYBOX, "pull_policy": ["always"]}})),
    );
    let good_policy = h.push(
        h.job("good-policy")
            .script(["echo policy-ok"])
            .patch(json!({"image": {"name": BUSYBOX, "pull_policy": ["if-not-present"]}})),
    );

    // image_pull_failure is not in this GitLab's failure_reasons: runner_system_failure.
    let job = h.wait_final(missing, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert!(
        trace.lines().any(|l| l.contains("ERROR")
            && l.contains("ferry-test/missing:1")
            && l.contains("not present")
            && l.contains("never")),
        "{}",
        h.describe(missing)
    );

    let job = h.wait_final(missing_new_gitlab, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("image_pull_failure"));
    assert!(trace.contains("ferry-test/missing:2"), "{trace}");

    let job = h.wait_final(disallowed, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_configuration_error"));
    assert!(
        trace.lines().any(|l| l.contains("ERROR")
            && l.contains("alpine:3.20")
            && l.contains("allowed_images")
            && !l.contains("system failure")),
        "{}",
        h.describe(disallowed)
    );

    let job = h.wait_final(bad_policy, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_configuration_error"));
    assert!(
        trace.lines().any(|l| l.contains("ERROR")
            && l.contains("pull_policy (always) is not allowed")
            && l.contains("never, if-not-present")),
        "{}",
        h.describe(bad_policy)
    );

    let job = h.wait_final(good_policy, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\npolicy-ok"), "{trace}");
    h.stop().await;
}

// ---- (3) script ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_output_exit_code_after_script_and_shells() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let failing = h.push(
        h.job("failing")
            .script(["echo out-1", "sh -c 'exit 3'", "echo not-reached"])
            .after_script(["echo after-status=$CI_JOB_STATUS"]),
    );
    let passing = h.push(
        h.job("passing")
            .script(["echo out-2", "echo shell=${BASH_VERSION:-none}"])
            .after_script(["echo after-status=$CI_JOB_STATUS"]),
    );
    let bash = h.push(
        h.job("bash")
            .image(Some(BASH))
            .script(["echo shell=${BASH_VERSION:-none}", "false | true"]),
    );

    let job = h.wait_final(failing, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert_eq!(job.exit_code, Some(3), "{}", h.describe(failing));
    assert!(trace.contains("$ echo out-1"), "{trace}");
    assert!(trace.contains("\nout-1\n"), "{trace}");
    assert!(trace.contains("$ sh -c 'exit 3'"), "{trace}");
    assert!(!trace.contains("not-reached"), "{trace}");
    assert!(trace.contains("\nafter-status=failed"), "{trace}");
    assert!(trace.contains("exit code 3"), "{trace}");

    let job = h.wait_final(passing, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nout-2\n"), "{trace}");
    // busybox has no bash: the script ran in sh.
    assert!(trace.contains("\nshell=none"), "{trace}");
    assert!(trace.contains("\nafter-status=success"), "{trace}");
    assert!(trace.contains("Job succeeded"), "{trace}");

    // In bash the script runs with pipefail: `false | true` fails.
    let job = h.wait_final(bash, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
    assert_eq!(job.exit_code, Some(1), "{}", h.describe(bash));
    assert!(trace.contains("\nshell=5."), "{trace}");
    h.stop().await;
}

// ---- (4) services ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_by_alias_and_derived_name_and_a_service_that_never_listens() {
    let setup = Setup::default().docker("wait_for_services_timeout = 3");
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let ok = h.push(
        h.job("services")
            .service(json!({"name": SERVICE, "alias": "web"}))
            .script([
                "wget -q -O- http://web:8080/",
                "wget -q -O- http://ferry-test__service:8080/",
                "wget -q -O- http://ferry-test-service:8080/",
            ]),
    );
    let dead = h.push(
        h.job("dead-service")
            .service(json!({"name": SERVICE, "alias": "dead", "command": ["sleep", "300"]}))
            .script(["echo job-continued"]),
    );

    let job = h.wait_final(ok, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_eq!(
        trace.matches("\nferry-service-ok").count(),
        3,
        "{}",
        h.describe(ok)
    );

    let job = h.wait_final(dead, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("probably didn't start properly"), "{trace}");
    assert!(trace.contains("8080"), "{trace}");
    assert!(trace.contains("\njob-continued"), "{trace}");
    h.stop().await;
}

// ---- (5) container options -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_environment_and_memory_limit() {
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("host-file.txt"), "from-the-host\n").unwrap();
    let setup = Setup::default()
        .runner("environment = [\"FROM_RUNNER=runner-env\", \"OVERRIDDEN=runner\"]")
        .docker(&format!(
            "volumes = [\"{}:/mnt/host:ro\", \"/cache\"]\nmemory = \"64m\"\nmemory_swap = \"64m\"",
            host_dir.path().display()
        ));
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let first = h.push(h.job("first").variable("OVERRIDDEN", "job", false).script([
        "cat /mnt/host/host-file.txt",
        "echo env=$FROM_RUNNER overridden=$OVERRIDDEN",
        "touch /mnt/host/new 2>/dev/null || echo bind-is-read-only",
        "echo persisted-$CI_JOB_ID > /cache/marker",
    ]));
    let second = h.push(h.job("second").script(["cat /cache/marker"]));
    let oom = h.push(h.job("oom").script([
        "x=$(head -c 300000000 /dev/zero | tr '\\0' a)",
        "echo survived",
    ]));

    let job = h.wait_final(first, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nfrom-the-host"), "{trace}");
    assert!(trace.contains("\nenv=runner-env overridden=job"), "{trace}");
    assert!(trace.contains("\nbind-is-read-only"), "{trace}");
    assert!(!host_dir.path().join("new").exists());

    let job = h.wait_final(second, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        trace.contains(&format!("\npersisted-{first}")),
        "{}",
        h.describe(second)
    );

    let job = h.wait_final(oom, JOB_WAIT).await;
    if cmd(
        "docker",
        &["info", "--format", "{{.MemoryLimit}} {{.SwapLimit}}"],
    ) != "true true"
    {
        ferry_tests::e2e::skip_notice(
            "SKIP: OOM part: this Docker engine cannot limit memory and swap",
        );
    } else {
        let trace = h.expect(&job, JobStatus::Failed, Some("script_failure"));
        assert_eq!(job.exit_code, Some(137), "{}", h.describe(oom));
        assert!(trace.contains("out of memory"), "{trace}");
        assert!(!trace.contains("\nsurvived"), "{trace}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_containers_get_every_capability() {
    if ferry_tests::e2e::docker_ready().is_ok() {
        let out = std::process::Command::new("docker")
            .args(["run", "--rm", "--privileged", BUSYBOX, "true"])
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            ferry_tests::e2e::skip_notice(&format!(
                "SKIP: this Docker engine refuses privileged containers: {}",
                err.lines().next().unwrap_or("").trim()
            ));
            return;
        }
    }
    let Some(mut h) = Harness::start(Setup::default().docker("privileged = true")).await else {
        return;
    };
    let id = h.push(
        h.job("privileged")
            .script(["grep CapEff /proc/self/status"]),
    );
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let caps = trace
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_else(|| panic!("{trace}"));
    let mask = u64::from_str_radix(caps.trim_start_matches("CapEff:").trim(), 16).unwrap();
    // CAP_SYS_ADMIN (21) is only there when privileged.
    assert!(mask & (1 << 21) != 0, "{caps}");
    h.stop().await;
}

// ---- (6) sources -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_clone_then_fetch_with_depth_over_http_with_the_job_token() {
    let repo = GitRepo::new();
    repo.commit("README", "first\n");
    repo.commit("README", "second\n");
    let sha3 = repo.commit("README", "third\n");
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // As from GitLab: http://gitlab-ci-token:<job token>@host/<repo>.
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);
    let clone = h.push(
        JobSpec::new("clone")
            .image(Some(BUSYBOX))
            .variable("GIT_STRATEGY", "clone", false)
            .variable("GIT_DEPTH", "1", false)
            .patch(GitRepo::git_info(&url, &sha3, 20))
            .script([
                "test -d .git && echo git-dir-present",
                "cat README",
                "echo untracked > left-behind.txt",
            ]),
    );
    let job = h.wait_final(clone, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let token = job.token.clone();
    assert!(
        trace.contains("Fetching changes with git depth set to 1..."),
        "{trace}"
    );
    assert!(trace.contains("Created fresh repository."), "{trace}");
    assert!(
        trace.contains(&format!("Checking out {}", &sha3[..8])),
        "{trace}"
    );
    assert!(trace.contains("\ngit-dir-present"), "{trace}");
    assert!(trace.contains("\nthird"), "{trace}");
    assert!(!trace.contains(&token), "job token in the trace");
    // The job token reached the server; it is stored nowhere on disk.
    assert!(
        git.credentials()
            .contains(&format!("gitlab-ci-token:{token}")),
        "{:?}",
        git.credentials()
    );
    let dir = h.project_dir(0);
    let git_dir = dir.to_str().unwrap();
    assert_eq!(
        cmd("git", &["-C", git_dir, "rev-list", "--count", "HEAD"]),
        "1"
    );
    assert_eq!(cmd("git", &["-C", git_dir, "rev-parse", "HEAD"]), sha3);
    let config = std::fs::read_to_string(dir.join(".git/config")).unwrap();
    assert!(!config.contains(&token), "{config}");
    assert!(config.contains(&git.base), "{config}");
    let leaked = cmd(
        "sh",
        &[
            "-c",
            &format!("grep -rl '{token}' '{}' || true", h.work_dir.display()),
        ],
    );
    assert_eq!(leaked, "", "files holding the job token");

    // A new commit; the second job (default strategy: fetch) reuses the checkout.
    let sha4 = repo.commit("NEW", "fourth\n");
    let fetch = h.push(
        JobSpec::new("fetch")
            .image(Some(BUSYBOX))
            .patch(GitRepo::git_info(&url, &sha4, 2))
            .script(["cat NEW", "test ! -e left-behind.txt && echo cleaned"]),
    );
    let job = h.wait_final(fetch, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        trace.contains("Fetching changes with git depth set to 2..."),
        "{trace}"
    );
    assert!(
        trace.contains("Reinitialized existing Git repository in /builds/acme/app/.git/"),
        "{trace}"
    );
    assert!(!trace.contains("Created fresh repository."), "{trace}");
    assert!(trace.contains("\nfourth"), "{trace}");
    assert!(trace.contains("\ncleaned"), "{trace}");
    assert_eq!(cmd("git", &["-C", git_dir, "rev-parse", "HEAD"]), sha4);
    assert!(
        git.credentials()
            .contains(&format!("gitlab-ci-token:{}", job.token)),
        "{:?}",
        git.credentials()
    );
    h.stop().await;
}

// ---- (7) variables ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predefined_file_and_expanded_variables() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let mut spec = h
        .job("vars")
        .variable("A", "alpha", false)
        .variable("B", "$A-beta", false)
        .script([
            "echo file-var=$MY_FILE",
            "cat \"$MY_FILE\"",
            "echo b=$B raw=$RAW",
            "echo job=$CI_JOB_ID name=$CI_JOB_NAME dir=$CI_PROJECT_DIR builds=$CI_BUILDS_DIR",
            "echo server=$CI_SERVER_URL ci=$CI gitlab_ci=$GITLAB_CI runner=$CI_RUNNER_SHORT_TOKEN",
            "echo concurrent=$CI_CONCURRENT_ID project_path=$CI_PROJECT_PATH",
        ]);
    spec.variables
        .push(json!({"key": "MY_FILE", "value": "file-content-42\n",
        "public": true, "masked": false, "file": true}));
    spec.variables
        .push(json!({"key": "RAW", "value": "$A", "public": true,
        "masked": false, "raw": true}));
    let id = h.push(spec);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        trace.contains("\nfile-var=/builds/acme/app.tmp/MY_FILE"),
        "{trace}"
    );
    assert!(trace.contains("\nfile-content-42"), "{trace}");
    assert!(trace.contains("\nb=alpha-beta raw=$A"), "{trace}");
    assert!(
        trace.contains(&format!(
            "\njob={id} name=vars dir=/builds/acme/app builds=/builds"
        )),
        "{trace}"
    );
    assert!(
        trace.contains(&format!(
            "\nserver={} ci=true gitlab_ci=true runner={}",
            h.gitlab.url(),
            h.short
        )),
        "{trace}"
    );
    assert!(
        trace.contains("\nconcurrent=0 project_path=acme/app"),
        "{trace}"
    );
    h.stop().await;
}

// ---- (8) cache -------------------------------------------------------------------------------

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_suffix(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_is_saved_then_restored_and_pull_policy_does_not_save() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let cache = |policy: &str| {
        json!({"key": "deps", "untracked": false, "policy": policy, "paths": ["vendor/"],
               "when": "on_success", "fallback_keys": []})
    };
    let mut save = h
        .job("save")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["mkdir -p vendor", "echo cached-content > vendor/lib.txt"]);
    save.cache.push(cache("pull-push"));
    let id = h.push(save);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Creating cache deps"), "{trace}");
    let cache_dir = h.work_dir.join("cache");
    let archives = files_with_suffix(&cache_dir, ".tar.zst");
    assert_eq!(
        archives.len(),
        1,
        "{archives:?} under {}",
        cache_dir.display()
    );
    let archive = archives[0].clone();
    assert!(
        archive.starts_with(cache_dir.join(&h.short)),
        "{}",
        archive.display()
    );
    let saved = std::fs::read(&archive).unwrap();
    // The archive holds the file (zstd-compressed tar).
    let decoder = zstd::stream::read::Decoder::new(std::fs::File::open(&archive).unwrap()).unwrap();
    let mut tar = tar::Archive::new(decoder);
    let mut entries = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut content = String::new();
        if entry.header().entry_type().is_file() {
            entry.read_to_string(&mut content).unwrap();
        }
        entries.push((path, content));
    }
    assert!(
        entries
            .iter()
            .any(|(p, c)| p.trim_start_matches("./") == "vendor/lib.txt" && c == "cached-content\n"),
        "{entries:?}"
    );

    let mut pull = h
        .job("pull")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["cat vendor/lib.txt", "echo changed > vendor/lib.txt"]);
    pull.cache.push(cache("pull"));
    let id = h.push(pull);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Checking cache for deps"), "{trace}");
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("\ncached-content"), "{trace}");
    assert!(
        trace.contains("Not uploading cache deps due to policy"),
        "{trace}"
    );
    assert_eq!(std::fs::read(&archive).unwrap(), saved, "archive rewritten");
    h.stop().await;
}

// ---- (9) artifacts ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_uploaded_with_exclude_and_downloaded_by_a_dependent_job() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let mut build = h
        .job("build")
        .variable("GIT_STRATEGY", "empty", false)
        .script([
            "mkdir -p out/sub",
            "echo a-content > out/a.txt",
            "echo log > out/b.log",
            "echo c-content > out/sub/c.txt",
        ]);
    build
        .artifacts
        .push(json!({"name": "build-output", "untracked": false,
        "paths": ["out/"], "exclude": ["out/*.log"], "when": "on_success",
        "expire_in": "1 day", "artifact_type": "archive", "artifact_format": "zip"}));
    let build_id = h.push(build);
    let job = h.wait_final(build_id, JOB_WAIT).await;
    h.expect(&job, JobStatus::Success, None);
    let stored = h.gitlab.artifacts(build_id);
    assert_eq!(stored.len(), 1, "{}", h.describe(build_id));
    let a = &stored[0];
    assert_eq!(a.artifact_type, "archive");
    assert_eq!(a.artifact_format, "zip");
    assert_eq!(a.expire_in.as_deref(), Some("1 day"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(a.data.clone())).unwrap();
    let mut files: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned())
        .filter(|n| !n.ends_with('/'))
        .collect();
    files.sort();
    assert_eq!(files, vec!["out/a.txt", "out/sub/c.txt"]);
    let mut content = String::new();
    zip.by_name("out/a.txt")
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "a-content\n");

    let test = h.push(
        h.job("test")
            .variable("GIT_STRATEGY", "empty", false)
            .depends_on(build_id)
            .script([
                "cat out/a.txt out/sub/c.txt",
                "test ! -e out/b.log && echo no-log",
            ]),
    );
    let job = h.wait_final(test, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        trace.contains(&format!("Downloading artifacts for build ({build_id})")),
        "{trace}"
    );
    assert!(trace.contains("\na-content\nc-content\n"), "{trace}");
    assert!(trace.contains("\nno-log"), "{trace}");
    h.stop().await;
}

// ---- (10) timeout, cancel, cleanup, shutdown ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancel_and_shutdown_leave_nothing_behind() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    // Job timeout: job_execution_timeout, after_script still runs, containers removed.
    let mut slow = h
        .job("slow")
        .script(["echo started", "sleep 300"])
        .after_script(["echo after-status=$CI_JOB_STATUS"]);
    slow.timeout = 4;
    let id = h.push(slow);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("job_execution_timeout"));
    assert!(trace.contains("\nstarted"), "{trace}");
    assert!(trace.contains("\nafter-status=timedout"), "{trace}");
    assert!(trace.contains("longer than the job timeout"), "{trace}");
    // ferry removes the job's containers just after the final update.
    assert!(
        poll_until(Duration::from_secs(30), || h
            .docker_objects(Some(id))
            .is_empty())
        .await,
        "{:?}",
        h.docker_objects(Some(id))
    );

    // Cancel in GitLab: after_script runs, the job ends canceled within seconds. A runner
    // learns of the cancel from the answers to its trace PATCHes (or, for a silent job, from the
    // keep-alive every 30 s, as gitlab-runner). The user who presses Cancel watches the job page,
    // so GitLab asks for trace updates every 3 s (60 s otherwise); the job prints every second.
    h.gitlab.set_trace_update_interval(Some("3"));
    let id = h.push(
        h.job("cancel-me")
            .script([
                "echo waiting-for-cancel",
                "while true; do echo tick; sleep 1; done",
            ])
            .after_script(["echo after-status=$CI_JOB_STATUS"]),
    );
    h.wait_trace(id, "\nwaiting-for-cancel", JOB_WAIT).await;
    let t0 = Instant::now();
    h.gitlab.cancel(id);
    let job = h.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(job.status, JobStatus::Canceled, "{}", h.describe(id));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "canceled after {:?}",
        t0.elapsed()
    );
    let trace = h.gitlab.trace_string(id);
    assert!(trace.contains("\nafter-status=canceled"), "{trace}");
    assert!(
        poll_until(Duration::from_secs(30), || h
            .docker_objects(Some(id))
            .is_empty())
        .await,
        "{:?}",
        h.docker_objects(Some(id))
    );

    // SIGTERM with a job running: the job is reported failed, ferry exits, nothing is left.
    let id = h.push(
        h.job("interrupted")
            .script(["echo running-at-stop", "sleep 300"]),
    );
    h.wait_trace(id, "\nrunning-at-stop", JOB_WAIT).await;
    let status = h.stop().await;
    assert!(status.success(), "ferry exit status {status}");
    let job = h.gitlab.job(id).unwrap();
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_interrupted"));
    assert!(trace.contains("termination signal"), "{trace}");
    assert_eq!(h.docker_objects(None), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_this_runner_are_removed_at_start() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    let mine = format!("e2e-leftover-{}", h.short);
    let other = format!("e2e-other-{}", h.short);
    cmd(
        "docker",
        &[
            "create",
            "--name",
            &mine,
            "--label",
            "ferry.managed=true",
            "--label",
            &format!("ferry.runner={}", h.short),
            "--label",
            "ferry.job_id=999999",
            BUSYBOX,
            "sleep",
            "1",
        ],
    );
    cmd(
        "docker",
        &[
            "create",
            "--name",
            &other,
            "--label",
            "ferry.managed=true",
            "--label",
            "ferry.runner=someoneelse",
            BUSYBOX,
            "sleep",
            "1",
        ],
    );
    let exists = |name: &str| {
        !cmd(
            "docker",
            &["ps", "-aq", "--filter", &format!("name=^{name}$")],
        )
        .is_empty()
    };
    h.spawn_ferry();
    let removed = poll_until(Duration::from_secs(60), || !exists(&mine)).await;
    let other_kept = exists(&other);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &other])
        .output();
    assert!(
        removed,
        "leftover {mine} still there; log:\n{}",
        h.ferry_log()
    );
    assert!(other_kept, "another runner's container was removed");
    h.assert_takes_next_job().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_lets_the_running_job_finish() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let id = h.push(h.job("finishing").script([
        "echo before-quit",
        "sleep 3",
        "echo finished-after-quit",
    ]));
    h.wait_trace(id, "\nbefore-quit", JOB_WAIT).await;
    h.signal("QUIT");
    let status = h.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "ferry exit status {status}");
    let job = h.gitlab.job(id).unwrap();
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nfinished-after-quit"), "{trace}");
    assert_eq!(h.docker_objects(None), Vec::<String>::new());
}
