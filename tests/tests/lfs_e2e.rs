//! Git LFS end to end through `ferry run`, the fake GitLab's git server (which serves GitLab's
//! LFS batch API) and real Docker: LFS files are checked out with their contents, fetched with
//! the job token; `GIT_LFS_SKIP_SMUDGE=1` keeps the pointers; a host without git-lfs fails the
//! job with a line that says so, never pointer files in silence.
//!
//! Needs Docker, the test images and git-lfs (scripts/setup.sh installs it); without them each
//! test prints `SKIP: <reason>` and returns.

use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, GitHttp, GitRepo, Harness, Setup, skip_notice};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};

const JOB_WAIT: Duration = Duration::from_secs(180);
const CONTENT: &[u8] = b"real binary content, not a pointer\n";

fn git_lfs_installed() -> bool {
    std::process::Command::new("git")
        .args(["lfs", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A repository with `blob.bin` tracked by LFS (its pointer committed, its object on `git`).
fn lfs_repo() -> (GitRepo, String) {
    let repo = GitRepo::new();
    repo.commit(
        ".gitattributes",
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    );
    let root = repo.path().parent().unwrap();
    let pointer = GitHttp::lfs_object(root, CONTENT);
    let sha = repo.commit("blob.bin", &pointer);
    (repo, sha)
}

fn job(name: &str, url: &str, sha: &str) -> JobSpec {
    JobSpec::new(name)
        .image(Some(BUSYBOX))
        .variable("GIT_STRATEGY", "clone", false)
        .patch(GitRepo::git_info(url, sha, 20))
        .script(["cat blob.bin"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lfs_files_are_checked_out_with_their_contents_using_the_job_token() {
    if !git_lfs_installed() {
        skip_notice("SKIP: git-lfs is not installed (scripts/setup.sh installs it)");
        return;
    }
    let (repo, sha) = lfs_repo();
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);

    let id = h.push(job("lfs", &url, &sha));
    let job_record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job_record, JobStatus::Success, None);
    assert!(trace.contains("Fetching Git LFS objects"), "{trace}");
    assert!(
        trace.contains("\nreal binary content, not a pointer"),
        "{trace}"
    );
    assert!(!trace.contains("git-lfs.github.com/spec"), "{trace}");
    assert!(!trace.contains(&job_record.token), "job token in the trace");
    let token = format!("gitlab-ci-token:{}", job_record.token);
    assert!(
        git.credentials().contains(&token),
        "{:?}",
        git.credentials()
    );

    // GIT_LFS_SKIP_SMUDGE=1: the pointer file stays, as the user asked.
    let id = h.push(job("skip", &url, &sha).variable("GIT_LFS_SKIP_SMUDGE", "1", false));
    let job_record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job_record, JobStatus::Success, None);
    assert!(
        trace.contains("\nversion https://git-lfs.github.com/spec/v1"),
        "{trace}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_git_lfs_fails_an_lfs_job_with_a_line_that_says_so() {
    // ferry with a PATH whose only program is git: git finds its own helpers in its exec
    // path, but `git lfs` finds nothing.
    let git_path = ferry_tests::e2e::cmd("sh", &["-c", "command -v git"]);
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(git_path.trim(), bin.path().join("git")).unwrap();
    let lonely = std::process::Command::new(bin.path().join("git"))
        .args(["lfs", "version"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    if lonely.status.success() {
        skip_notice("SKIP: git finds git-lfs outside PATH on this host");
        return;
    }
    let (repo, sha) = lfs_repo();
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    h.ferry_env
        .push(("PATH".into(), bin.path().display().to_string()));
    h.spawn_ferry();
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);

    let id = h.push(job("no-lfs", &url, &sha));
    let job_record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(
        &job_record,
        JobStatus::Failed,
        Some("runner_system_failure"),
    );
    assert!(
        trace.contains("this repository uses Git LFS (1 files with filter=lfs, e.g. \"blob.bin\")"),
        "{trace}"
    );
    assert!(trace.contains("apt-get install git-lfs"), "{trace}");
    assert!(
        !trace.contains("\nversion https://git-lfs"),
        "the script never ran: {trace}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lfs_files_of_submodules_are_checked_out_with_their_contents() {
    if !git_lfs_installed() {
        skip_notice("SKIP: git-lfs is not installed (scripts/setup.sh installs it)");
        return;
    }
    // The submodule holds the LFS file; the project points at it with a relative URL, on the
    // same (fake) GitLab.
    let (sub, sub_sha) = lfs_repo();
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
        &format!("[submodule \"lib\"]\n\tpath = lib\n\turl = ../{sub_name}\n"),
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
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);

    let spec = JobSpec::new("lfs-submodule")
        .image(Some(BUSYBOX))
        .variable("GIT_STRATEGY", "clone", false)
        .variable("GIT_SUBMODULE_STRATEGY", "normal", false)
        .patch(GitRepo::git_info(&url, &sha, 20))
        .script(["cat lib/blob.bin"]);
    let id = h.push(spec);
    let job_record = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job_record, JobStatus::Success, None);
    assert!(trace.contains("Pulling LFS files..."), "{trace}");
    assert!(
        trace.contains("\nreal binary content, not a pointer"),
        "{trace}"
    );
    assert!(!trace.contains("git-lfs.github.com/spec"), "{trace}");
    assert!(!trace.contains(&job_record.token), "job token in the trace");
    h.stop().await;
}
