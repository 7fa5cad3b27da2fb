//! `get_sources` end to end through `ferry run`, the fake GitLab's git server and real Docker:
//! the get_sources hooks (the runner's and the job's) run in a container of the job's image,
//! never on the host, and only allow-listed git settings they leave reach host git;
//! `GIT_CLONE_PATH` under `custom_build_dir`; `GIT_SUBMODULE_FORCE_HTTPS`
//! (docs/sources-cache-artifacts.md).
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker every test
//! prints `SKIP: <reason>` and returns.

use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, GitHttp, GitRepo, Harness, Setup};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// The position of `needle` in `trace`, or a panic naming it.
fn pos(trace: &str, needle: &str) -> usize {
    trace
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the trace:\n{trace}"))
}

fn job(name: &str, url: &str, sha: &str) -> JobSpec {
    JobSpec::new(name)
        .image(Some(BUSYBOX))
        .variable("GIT_STRATEGY", "clone", false)
        .patch(GitRepo::git_info(url, sha, 20))
}

fn hooks(pre: &[&str], post: &[&str]) -> serde_json::Value {
    json!({"hooks": [
        {"name": "pre_get_sources_script", "script": pre},
        {"name": "post_get_sources_script", "script": post},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sources_hooks_run_in_a_container_and_only_safe_git_config_reaches_host_git() {
    let repo = GitRepo::new();
    let sha = repo.commit("README", "hello-from-the-repository\n");
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);
    // A file on the host the hooks name: it must never be created.
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("pwned");
    let victim_s = victim.display().to_string();

    let setup = Setup::default().runner(
        "pre_get_sources_script = \"echo runner-pre-hook\"\npost_get_sources_script = \"echo runner-post-hook\"",
    );
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    // The image has no git: `git config --global --list -z` is played by a script printing
    // what a hostile global config would list (keys as git prints them), the way ferry reads
    // it back from the hook's container.
    let listing = format!(
        r"printf 'http.useragent\nferry-hook-agent/1\000core.sshcommand\ntouch {victim_s}\000credential.helper\n!touch {victim_s}\000core.fsmonitor\ntouch {victim_s}\000url.file:///etc/.insteadof\nhttp://x/\000protocol.ext.allow\nalways\000include.path\n/etc/passwd\000' > /git-listing"
    );
    let pre = [
        "echo job-pre-hook-$CI_JOB_NAME".to_string(),
        // Paths of the host are the container's own here.
        format!(
            "mkdir -p {} && echo hostile > {victim_s}",
            victim_dir.path().display()
        ),
        listing,
        r"printf '#!/bin/sh\ncat /git-listing\n' > /bin/git && chmod +x /bin/git".to_string(),
    ];
    let pre: Vec<&str> = pre.iter().map(String::as_str).collect();
    let spec = job("hooks", &url, &sha)
        .patch(hooks(
            &pre,
            &["cat README", "echo from-post-hook > post-file"],
        ))
        .script([
            "cat post-file",
            "test -e /git-listing && echo same-container || echo fresh-build-container",
        ]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Success, None);

    // gitlab-runner's order: the runner's pre hook, the job's, git, the job's post hook, the
    // runner's; each hook in a container of the job's image.
    let runner_pre = pos(&trace, "\nrunner-pre-hook");
    let job_pre = pos(&trace, "\njob-pre-hook-hooks");
    let fetch = pos(&trace, "Created fresh repository.");
    let readme = pos(&trace, "\nhello-from-the-repository");
    let runner_post = pos(&trace, "\nrunner-post-hook");
    assert!(
        runner_pre < job_pre && job_pre < fetch && fetch < readme && readme < runner_post,
        "{trace}"
    );
    assert!(
        trace.contains(&format!(
            "Running pre_get_sources_script in a container of {BUSYBOX} (not on the runner host)..."
        )),
        "{trace}"
    );
    // The post hook wrote into the project dir; the build container is a new one.
    assert!(trace.contains("\nfrom-post-hook"), "{trace}");
    assert!(trace.contains("\nfresh-build-container"), "{trace}");

    // The allow-listed setting reached host git (its fetch used that User-Agent)...
    assert!(
        trace.contains("Using git config from pre_get_sources_script: http.useragent"),
        "{trace}"
    );
    assert!(
        git.user_agents()
            .iter()
            .any(|ua| ua == "ferry-hook-agent/1"),
        "{:?}",
        git.user_agents()
    );
    // ... and nothing that runs a command or reads a host file did, each said in the log.
    for (key, why) in [
        (
            "core.sshcommand",
            "it could run a command on the runner host",
        ),
        (
            "credential.helper",
            "it could run a command on the runner host",
        ),
        (
            "core.fsmonitor",
            "it could run a command on the runner host",
        ),
        (
            "protocol.ext.allow",
            "it could run a command on the runner host",
        ),
        ("include.path", "it could run a command on the runner host"),
        (
            "url.file:///etc/.insteadof",
            "only http:// and https:// URLs may be rewritten to",
        ),
    ] {
        let line = format!(
            "WARNING: git config {key:?} set by pre_get_sources_script is not used by git on the runner host: {why}"
        );
        assert!(trace.contains(&line), "{line}\n{trace}");
    }
    assert!(!victim.exists(), "a hook wrote {victim:?} on the host");
    assert!(!trace.contains(&record.token), "job token in the trace");

    // While the script runs, the hooks' containers are long gone: only the build container
    // of the job exists.
    let spec = job("hook-containers-gone", &url, &sha)
        .patch(hooks(&["echo pre"], &["echo post"]))
        .script(["echo script-running", "sleep 5"]);
    let id = h.push(spec);
    h.wait_trace(id, "\nscript-running", JOB_WAIT).await;
    let objects = h.docker_objects(Some(id));
    assert!(objects.iter().any(|o| o.ends_with("-build")), "{objects:?}");
    assert!(!objects.iter().any(|o| o.ends_with("-hook")), "{objects:?}");
    let record = h.wait_final(id, JOB_WAIT).await;
    h.expect(&record, JobStatus::Success, None);

    // A failing pre hook fails the job before git runs.
    let spec = job("pre-fails", &url, &sha)
        .patch(hooks(&["echo about-to-fail", "exit 3"], &[]))
        .script(["echo never"]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Failed, Some("script_failure"));
    assert!(
        trace.contains("pre_get_sources_script failed with exit code 3"),
        "{trace}"
    );
    assert!(!trace.contains("Created fresh repository."), "{trace}");
    assert!(!trace.contains("\nnever"), "{trace}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_path_moves_the_checkout_and_is_refused_outside_builds_dir() {
    let repo = GitRepo::new();
    let sha = repo.commit("README", "cloned-here\n");
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let spec = job("clone-path", &url, &sha)
        .variable("GIT_CLONE_PATH", "$CI_BUILDS_DIR/elsewhere/checkout", false)
        .script(["pwd", "echo project-dir=$CI_PROJECT_DIR", "cat README"]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Success, None);
    assert!(trace.contains("\n/builds/elsewhere/checkout\n"), "{trace}");
    assert!(
        trace.contains("\nproject-dir=/builds/elsewhere/checkout"),
        "{trace}"
    );
    assert!(trace.contains("\ncloned-here"), "{trace}");

    let spec = job("outside", &url, &sha)
        .variable("GIT_CLONE_PATH", "/builds/../etc/x", false)
        .script(["echo never"]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(
        &record,
        JobStatus::Failed,
        Some("runner_configuration_error"),
    );
    assert!(
        trace.contains("the GIT_CLONE_PATH=\"/builds/../etc/x\" has to be within \"/builds\""),
        "{trace}"
    );
    h.stop().await;

    // `[runners.custom_build_dir] enabled = false`: gitlab-runner's refusal.
    let setup = Setup::default().runner("[runners.custom_build_dir]\nenabled = false");
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let spec = job("disabled", &url, &sha)
        .variable("GIT_CLONE_PATH", "$CI_BUILDS_DIR/elsewhere", false)
        .script(["echo never"]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(
        &record,
        JobStatus::Failed,
        Some("runner_configuration_error"),
    );
    assert!(
        trace.contains("setting GIT_CLONE_PATH is not allowed, enable `custom_build_dir` feature"),
        "{trace}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_submodule_force_https_fetches_ssh_submodules_over_https_with_the_job_token() {
    let sub = GitRepo::new();
    let sub_sha = sub.commit("lib.txt", "from-the-submodule\n");
    let sub_name = sub
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let repo = GitRepo::new();
    repo.commit(
        ".gitmodules",
        &format!("[submodule \"lib\"]\n\tpath = lib\n\turl = git@127.0.0.1:{sub_name}\n"),
    );
    repo.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{sub_sha},lib"),
    ]);
    repo.git(&["commit", "-q", "-m", "submodule"]);
    let sha = repo.head();
    let root = repo.path().parent().unwrap();
    assert_eq!(root, sub.path().parent().unwrap(), "one server for both");
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);
    // gitlab-runner rewrites to `clone_url` (else the runner's `url`).
    let setup = Setup::default().runner(&format!("clone_url = \"{}\"", git.base));
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let spec = |name: &str| {
        job(name, &url, &sha)
            .variable("GIT_SUBMODULE_STRATEGY", "normal", false)
            .variable("CI_SERVER_SHELL_SSH_HOST", "127.0.0.1", false)
            .script(["cat lib/lib.txt"])
    };
    let id = h.push(spec("force-https").variable("GIT_SUBMODULE_FORCE_HTTPS", "true", false));
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Success, None);
    assert!(trace.contains("\nfrom-the-submodule"), "{trace}");
    // Fetched over HTTP with the job token, which never shows in the log.
    let token = format!("gitlab-ci-token:{}", record.token);
    assert!(
        git.credentials().iter().filter(|c| **c == token).count() >= 2,
        "{:?}",
        git.credentials()
    );
    assert!(!trace.contains(&record.token), "job token in the trace");

    // Without it, host git refuses the ssh URL and the job fails in get_sources.
    let id = h.push(spec("ssh"));
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Failed, Some("runner_system_failure"));
    assert!(!trace.contains("\nfrom-the-submodule"), "{trace}");
    assert!(trace.contains("git@127.0.0.1"), "{trace}");
    assert!(
        trace.contains("fatal: transport 'ssh' not allowed"),
        "{trace}"
    );
    h.stop().await;
}

/// A repository's submodules over ssh (scp-like and `ssh://`), `file://` and a host path: host
/// git refuses each before any attempt, with a line saying why. The runner host has an `ssh`
/// on its PATH, an agent socket and a `GIT_SSH_COMMAND` in ferry's environment: none is used
/// (docs/security.md, "What git can reach").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submodules_over_ssh_or_host_paths_are_refused_and_ssh_never_runs() {
    let sub = GitRepo::new();
    let sub_sha = sub.commit("lib.txt", "from-the-submodule\n");
    let sub_path = sub.path().display().to_string();
    let repo = GitRepo::new();
    let urls = [
        ("scp", "git@127.0.0.1:g/lib.git".to_string()),
        ("sshurl", "ssh://git@127.0.0.1:2222/g/lib.git".to_string()),
        ("fileurl", format!("file://{sub_path}")),
        ("local", sub_path.clone()),
    ];
    let gitmodules: String = urls
        .iter()
        .map(|(name, url)| format!("[submodule \"{name}\"]\n\tpath = {name}\n\turl = {url}\n"))
        .collect();
    repo.commit(".gitmodules", &gitmodules);
    for (name, _) in &urls {
        repo.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sub_sha},{name}"),
        ]);
    }
    repo.git(&["commit", "-q", "-m", "submodules"]);
    let sha = repo.head();
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);

    // An `ssh` that says it ran (git passes its stderr to the job log; a file it wrote could
    // not be trusted: git runs with a read-only view of the host), first on ferry's PATH and
    // as its GIT_SSH_COMMAND.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("ssh");
    std::fs::write(&fake, "#!/bin/sh\necho \"FAKE-SSH-RAN $*\" >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    let path = std::env::var("PATH").unwrap_or_default();
    h.ferry_env.extend([
        (
            "PATH".to_string(),
            format!("{}:{path}", bin.path().display()),
        ),
        ("GIT_SSH_COMMAND".to_string(), fake.display().to_string()),
        (
            "SSH_AUTH_SOCK".to_string(),
            bin.path().join("agent.sock").display().to_string(),
        ),
    ]);
    h.spawn_ferry();
    let spec = job("refused", &url, &sha)
        .variable("GIT_SUBMODULE_STRATEGY", "normal", false)
        .script(["echo script-ran"]);
    let id = h.push(spec);
    let record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&record, JobStatus::Failed, Some("runner_system_failure"));
    assert!(!trace.contains("FAKE-SSH-RAN"), "{trace}");
    assert!(
        trace.contains("fatal: transport 'ssh' not allowed"),
        "{trace}"
    );
    assert!(
        trace.contains("fatal: transport 'file' not allowed"),
        "{trace}"
    );
    assert!(
        trace.contains("transport, which ferry's host git refuses"),
        "{trace}"
    );
    assert!(!trace.contains("\nscript-ran"), "{trace}");
    h.stop().await;
}
