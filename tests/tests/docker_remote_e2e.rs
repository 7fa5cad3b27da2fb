//! `ferry run` with a remote Docker daemon (forced with `FERRY_DOCKER_REMOTE=true` on the real
//! local engine): the builds directory is a per-job volume filled through the archive API, and
//! sources, artifacts and the cleanup behave as with a bind mount.
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker the test prints
//! `SKIP: <reason>` and returns.

use std::io::Read;
use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, GitHttp, GitRepo, Harness, Setup, poll_until};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_and_artifacts_through_the_archive_api() {
    let repo = GitRepo::new();
    let sha = repo.commit("README", "from git\n");
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    h.ferry_env
        .push(("FERRY_DOCKER_REMOTE".into(), "true".into()));
    h.spawn_ferry();
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);

    let mut build = JobSpec::new("build")
        .image(Some(BUSYBOX))
        .patch(GitRepo::git_info(&url, &sha, 20))
        .script([
            "test -d .git && echo git-dir-present",
            "cat README",
            "mkdir -p out",
            "cp README out/readme.txt && echo built >> out/readme.txt",
        ]);
    build
        .artifacts
        .push(json!({"name": "build-output", "untracked": false,
        "paths": ["out/"], "when": "on_success",
        "expire_in": "1 day", "artifact_type": "archive", "artifact_format": "zip"}));
    let build_id = h.push(build);
    let job = h.wait_final(build_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\ngit-dir-present"), "{trace}");
    assert!(trace.contains("\nfrom git\n"), "{trace}");
    assert!(
        h.ferry_log()
            .contains("remote Docker daemon: builds directories are copied"),
        "{}",
        h.ferry_log()
    );
    let stored = h.gitlab.artifacts(build_id);
    assert_eq!(stored.len(), 1, "{}", h.describe(build_id));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored[0].data.clone())).unwrap();
    let mut content = String::new();
    zip.by_name("out/readme.txt")
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "from git\nbuilt\n");

    // A dependent job gets the artifact through the same copy.
    let test = h.push(
        h.job("test")
            .variable("GIT_STRATEGY", "empty", false)
            .depends_on(build_id)
            .script(["cat out/readme.txt"]),
    );
    let job = h.wait_final(test, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nfrom git\nbuilt\n"), "{trace}");

    // The per-job volumes go with the containers.
    let gone = poll_until(Duration::from_secs(60), || {
        h.docker_objects(None).is_empty()
    })
    .await;
    assert!(gone, "{:?}", h.docker_objects(None));
    h.stop().await;
}
