//! `get_sources` against real local repositories (file paths, and a dumb-HTTP server that
//! requires the job token), checking what a user sees: the checkout, `.git`, and the log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_executor::sources::{
    GitStrategy, RefType, SourceError, SourceSpec, SubmoduleStrategy, get_sources,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working repository and its bare "GitLab" copy.
struct Upstream {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    bare: PathBuf,
    root: PathBuf,
}

impl Upstream {
    fn new() -> Upstream {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let work = root.join("work");
        let bare = root.join("remote/group/project.git");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&bare).unwrap();
        git(&work, &["init", "-q"]);
        git(&bare, &["init", "-q", "--bare"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Upstream {
            _tmp: tmp,
            work,
            bare,
            root,
        }
    }

    fn commit(&self, file: &str, content: &str) -> String {
        let p = self.work.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", file]);
        git(
            &self.work,
            &["push", "-q", "origin", "HEAD:refs/heads/main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        self.bare.display().to_string()
    }

    fn project(&self, name: &str) -> PathBuf {
        self.root.join("builds").join(name)
    }
}

fn spec(url: &str, sha: &str, project_dir: &Path) -> SourceSpec {
    SourceSpec {
        repo_url: url.to_string(),
        sha: sha.to_string(),
        before_sha: "0".repeat(40),
        ref_name: "main".into(),
        ref_type: RefType::Branch,
        refspecs: vec![
            "+refs/heads/*:refs/remotes/origin/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ],
        depth: 0,
        object_format: None,
        strategy: GitStrategy::Clone,
        checkout: true,
        clean_flags: vec!["-ffdx".into()],
        fetch_extra_flags: vec!["--prune".into(), "--quiet".into()],
        submodule_strategy: SubmoduleStrategy::None,
        submodule_depth: 0,
        submodule_update_flags: vec![],
        submodule_paths: vec![],
        lfs: true,
        git_config: vec![],
        force_https: None,
        hook_git_config: vec![],
        project_dir: project_dir.to_path_buf(),
        display_dir: Some("/builds/group/project".into()),
        object_cache_dir: None,
    }
}

async fn run(spec: &SourceSpec) -> (Result<(), SourceError>, String) {
    let mut log: Vec<u8> = Vec::new();
    let res = get_sources(spec, &mut log, &CancellationToken::new()).await;
    (res, String::from_utf8_lossy(&log).into_owned())
}

async fn run_ok(spec: &SourceSpec) -> String {
    let (res, log) = run(spec).await;
    if let Err(e) = res {
        panic!("get_sources failed: {e}\nlog:\n{log}");
    }
    log
}

#[tokio::test]
async fn clone_checks_out_the_commit_and_logs_like_gitlab_runner() {
    let up = Upstream::new();
    up.commit("README", "one");
    let sha = up.commit("src/main.rs", "fn main() {}");
    let dir = up.project("p");
    let log = run_ok(&spec(&up.url(), &sha, &dir)).await;

    assert_eq!(
        std::fs::read_to_string(dir.join("src/main.rs")).unwrap(),
        "fn main() {}"
    );
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), sha);
    assert_eq!(git(&dir, &["rev-parse", "--short=8", "HEAD"]), &sha[..8]);
    assert!(log.contains("Fetching changes...\x1b[0;m\n"), "{log}");
    assert!(log.contains("Initialized empty Git repository in /builds/group/project/.git/"));
    assert!(log.contains("Created fresh repository."));
    assert!(log.contains(&format!(
        "Checking out {} as detached HEAD (ref is main)...",
        &sha[..8]
    )));
    assert!(log.contains("Skipping Git submodules setup"));
    // World-writable like gitlab-runner's checkout (umask 0000), for non-root job images.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("src/main.rs")), 0o666);
    assert_eq!(mode(&dir.join("src")), 0o777);
    assert_eq!(mode(&dir), 0o777);
    // origin is the plain URL; no hooks from a template.
    assert_eq!(git(&dir, &["remote", "get-url", "origin"]), up.url());
    assert!(!dir.join(".git/hooks").exists());
}

#[tokio::test]
async fn depth_makes_a_shallow_checkout() {
    let up = Upstream::new();
    up.commit("a", "1");
    up.commit("b", "2");
    let sha = up.commit("c", "3");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.depth = 1;
    s.refspecs = vec!["+refs/heads/main:refs/remotes/origin/main".into()];
    let log = run_ok(&s).await;
    assert!(log.contains("Fetching changes with git depth set to 1..."));
    assert_eq!(git(&dir, &["rev-list", "--count", "HEAD"]), "1");
    assert!(dir.join(".git/shallow").is_file());
    assert!(dir.join("a").is_file());

    // depth 0 on the same dir (fetch strategy) unshallows it.
    s.depth = 0;
    s.strategy = GitStrategy::Fetch;
    run_ok(&s).await;
    assert_eq!(git(&dir, &["rev-list", "--count", "HEAD"]), "3");
}

#[tokio::test]
async fn fetch_reuses_the_previous_checkout_but_nothing_a_job_planted() {
    let up = Upstream::new();
    let first = up.commit("tracked.txt", "v1");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &first, &dir);
    s.strategy = GitStrategy::Fetch;
    run_ok(&s).await;

    // What a job may leave behind: changes, untracked files, a hook, a hostile config.
    std::fs::write(dir.join("tracked.txt"), "changed").unwrap();
    std::fs::write(dir.join("untracked.o"), "junk").unwrap();
    let marker = up.root.join("hook-ran");
    std::fs::create_dir_all(dir.join(".git/hooks")).unwrap();
    let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());
    for h in ["post-checkout", "reference-transaction", "fsmonitor"] {
        let p = dir.join(".git/hooks").join(h);
        std::fs::write(&p, &hook).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join(".git/config")).unwrap();
    std::fs::write(
        dir.join(".git/config"),
        format!(
            "{cfg}[core]\n\tfsmonitor = {}\n\thooksPath = .git/hooks\n",
            dir.join(".git/hooks/fsmonitor").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join(".git/index.lock"), "").unwrap();

    let second = up.commit("tracked.txt", "v2");
    s.sha = second.clone();
    let log = run_ok(&s).await;
    assert!(log.contains("Reinitialized existing Git repository in /builds/group/project/.git/"));
    assert!(!log.contains("Created fresh repository."));
    assert_eq!(
        std::fs::read_to_string(dir.join("tracked.txt")).unwrap(),
        "v2"
    );
    assert!(
        !dir.join("untracked.o").exists(),
        "git clean -ffdx removed it"
    );
    assert!(log.contains("Removing untracked.o"));
    assert!(!marker.exists(), "a planted hook ran on the host");
    assert!(
        !std::fs::read_to_string(dir.join(".git/config"))
            .unwrap()
            .contains("fsmonitor")
    );
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), second);
}

#[tokio::test]
async fn clean_flags_none_keeps_untracked_files() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.strategy = GitStrategy::Fetch;
    run_ok(&s).await;
    std::fs::write(dir.join("keep.me"), "x").unwrap();
    s.clean_flags = vec![];
    run_ok(&s).await;
    assert!(dir.join("keep.me").exists());
}

#[tokio::test]
async fn checkout_false_fetches_without_a_worktree() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.checkout = false;
    let log = run_ok(&s).await;
    assert!(log.contains("Skipping Git checkout"));
    assert!(!dir.join("f").exists());
    assert_eq!(git(&dir, &["rev-parse", "refs/remotes/origin/main"]), sha);
}

#[tokio::test]
async fn merge_request_and_pipeline_refs_are_fetched() {
    let up = Upstream::new();
    up.commit("f", "base");
    // A commit reachable only from an MR ref and the pipeline ref, not from any branch.
    git(&up.work, &["checkout", "-q", "-b", "feature"]);
    let mr = up.commit_on_ref("mr.txt", "mr", "refs/merge-requests/1/head");
    git(
        &up.work,
        &["push", "-q", "origin", "HEAD:refs/pipelines/77"],
    );
    let dir = up.project("p");
    let mut s = spec(&up.url(), &mr, &dir);
    s.ref_name = "refs/merge-requests/1/head".into();
    s.refspecs = vec![
        "+refs/pipelines/77:refs/pipelines/77".into(),
        "+refs/merge-requests/1/head:refs/remotes/origin/merge-requests/1/head".into(),
    ];
    run_ok(&s).await;
    assert_eq!(std::fs::read_to_string(dir.join("mr.txt")).unwrap(), "mr");
    assert_eq!(git(&dir, &["rev-parse", "refs/pipelines/77"]), mr);
}

impl Upstream {
    fn commit_on_ref(&self, file: &str, content: &str, refname: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", file]);
        git(
            &self.work,
            &["push", "-q", "origin", &format!("HEAD:{refname}")],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

#[tokio::test]
async fn submodules_are_initialised_and_survive_a_fetch() {
    let sub = Upstream::new();
    sub.commit("lib.txt", "library");
    let up = Upstream::new();
    up.commit("f", "1");
    git(
        &up.work,
        &["submodule", "add", "-q", &sub.url(), "vendor/lib"],
    );
    git(&up.work, &["commit", "-q", "-m", "sub"]);
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let sha = git(&up.work, &["rev-parse", "HEAD"]);

    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.strategy = GitStrategy::Fetch;
    s.submodule_strategy = SubmoduleStrategy::Normal;
    s.git_config = vec![("protocol.file.allow".into(), "always".into())];
    let log = run_ok(&s).await;
    assert!(log.contains("Updating/initializing submodules..."), "{log}");
    assert!(
        log.contains("Cloning into '/builds/group/project/vendor/lib'..."),
        "{log}"
    );
    assert!(
        !log.contains(&dir.display().to_string()),
        "host path shown: {log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("vendor/lib/lib.txt")).unwrap(),
        "library"
    );
    // Second job on the same dir: the submodule repository is rebuilt, not trusted.
    std::fs::write(dir.join("vendor/lib/junk"), "x").unwrap();
    let log = run_ok(&s).await;
    assert!(log.contains("Updating/initializing submodules..."));
    assert!(dir.join("vendor/lib/lib.txt").is_file());
    assert!(!dir.join("vendor/lib/junk").exists());

    // Without the strategy the submodule dir stays empty.
    let dir2 = up.project("q");
    let mut s2 = spec(&up.url(), &sha, &dir2);
    s2.git_config = s.git_config.clone();
    let log = run_ok(&s2).await;
    assert!(log.contains("Skipping Git submodules setup"));
    assert!(!dir2.join("vendor/lib/lib.txt").exists());
}

#[tokio::test]
async fn none_and_empty_strategies() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("left.over"), "x").unwrap();
    let mut s = spec("/nonexistent/repo.git", &sha, &dir);
    s.strategy = GitStrategy::None;
    let log = run_ok(&s).await;
    assert!(log.contains("Skipping Git repository setup"));
    assert!(log.contains("Skipping Git checkout"));
    assert!(dir.join("left.over").exists());

    s.strategy = GitStrategy::Empty;
    let log = run_ok(&s).await;
    assert!(log.contains("Skipping Git repository setup and creating an empty build directory"));
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[tokio::test]
async fn dangerous_fetch_flags_are_refused_before_git_runs() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    let marker = up.root.join("pwned");
    let mut s = spec(&up.url(), &sha, &dir);
    s.fetch_extra_flags = vec![format!("--upload-pack=touch {}", marker.display())];
    let (res, _) = run(&s).await;
    assert!(matches!(
        res,
        Err(SourceError::InvalidVariable {
            name: "GIT_FETCH_EXTRA_FLAGS",
            ..
        })
    ));
    assert!(!marker.exists());
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_missing_commit_is_a_git_error() {
    let up = Upstream::new();
    up.commit("f", "1");
    let dir = up.project("p");
    let (res, _) = run(&spec(&up.url(), &"1".repeat(40), &dir)).await;
    assert!(matches!(res, Err(SourceError::Git { .. })), "{res:?}");
}

#[tokio::test]
async fn cancellation_stops_get_sources() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut log: Vec<u8> = Vec::new();
    let res = get_sources(&spec(&up.url(), &sha, &dir), &mut log, &cancel).await;
    assert!(matches!(res, Err(SourceError::Cancelled)), "{res:?}");
}

// ---------------------------------------------------------------------------------------
// HTTP with the job token in the URL, as GitLab sends it.

const TOKEN: &str = "glcbt-SECRETjobtoken123";

/// A minimal dumb-HTTP git server over a bare repository: answers 401 without the job
/// token's Basic credentials, and counts the requests for objects.
struct HttpRemote {
    port: u16,
    object_requests: Arc<AtomicUsize>,
    authorized: Arc<AtomicUsize>,
}

async fn serve_dumb_http(bare_root: PathBuf) -> HttpRemote {
    use base64::Engine as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let object_requests = Arc::new(AtomicUsize::new(0));
    let authorized = Arc::new(AtomicUsize::new(0));
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{TOKEN}"))
    );
    let (objs, auths) = (object_requests.clone(), authorized.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (root, expected, objs, auths) = (
                bare_root.clone(),
                expected.clone(),
                objs.clone(),
                auths.clone(),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = path.split('?').next().unwrap_or("/").to_string();
                let auth_ok = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:") && l.contains(&expected)
                });
                let resp = if !auth_ok {
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                } else {
                    auths.fetch_add(1, Ordering::SeqCst);
                    if path.contains("/objects/") {
                        objs.fetch_add(1, Ordering::SeqCst);
                    }
                    let file = root.join(path.trim_start_matches('/'));
                    match std::fs::read(&file) {
                        Ok(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        Err(_) => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    }
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    HttpRemote {
        port,
        object_requests,
        authorized,
    }
}

#[tokio::test]
async fn http_job_token_is_used_but_never_stored_or_logged() {
    let up = Upstream::new();
    up.commit("a", "1");
    let sha = up.commit("b", "2");
    git(&up.bare, &["update-server-info"]);
    let server = serve_dumb_http(up.root.join("remote")).await;
    let url = format!(
        "http://gitlab-ci-token:{TOKEN}@127.0.0.1:{}/group/project.git",
        server.port
    );
    let dir = up.project("p");
    let cache = up.root.join("cache/git/project-1.git");
    let mut s = spec(&url, &sha, &dir);
    s.object_cache_dir = Some(cache.clone());
    let log = run_ok(&s).await;

    assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "2");
    assert!(server.authorized.load(Ordering::SeqCst) > 0);
    assert!(!log.contains(TOKEN), "{log}");
    let config = std::fs::read_to_string(dir.join(".git/config")).unwrap();
    assert!(!config.contains(TOKEN), "{config}");
    assert!(config.contains(&format!(
        "url = http://127.0.0.1:{}/group/project.git",
        server.port
    )));
    let cache_config = std::fs::read_to_string(cache.join("config")).unwrap();
    assert!(!cache_config.contains(TOKEN));
    let first_objects = server.object_requests.load(Ordering::SeqCst);
    assert!(first_objects > 0);

    // A second job of the same project in another dir, nothing new upstream: the remote is
    // only asked for its refs; every object comes from the local object cache.
    let dir2 = up.project("p2");
    let mut s2 = spec(&url, &sha, &dir2);
    s2.object_cache_dir = Some(cache.clone());
    run_ok(&s2).await;
    assert_eq!(std::fs::read_to_string(dir2.join("b")).unwrap(), "2");
    assert_eq!(server.object_requests.load(Ordering::SeqCst), first_objects);
}

#[tokio::test]
async fn a_failing_http_remote_does_not_leak_the_token() {
    let up = Upstream::new();
    let dir = up.project("p");
    // Nothing listens on port 9 of localhost.
    let url = format!("http://gitlab-ci-token:{TOKEN}@127.0.0.1:9/group/project.git");
    let (res, log) = run(&spec(&url, &"a".repeat(40), &dir)).await;
    let err = res.expect_err("fetch must fail");
    assert!(matches!(err, SourceError::Git { .. }), "{err:?}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(!log.contains(TOKEN), "{log}");
    assert!(
        !std::fs::read_to_string(dir.join(".git/config"))
            .unwrap()
            .contains(TOKEN)
    );
}

#[tokio::test]
async fn object_cache_serves_the_fetch_strategy_and_drops_old_pipeline_refs() {
    let up = Upstream::new();
    let a = up.commit("f", "1");
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/pipelines/1"]);
    let cache = up.root.join("cache/git/project-1.git");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &a, &dir);
    s.strategy = GitStrategy::Fetch;
    s.object_cache_dir = Some(cache.clone());
    s.depth = 5;
    s.refspecs = vec![
        "+refs/pipelines/1:refs/pipelines/1".into(),
        "+refs/heads/main:refs/remotes/origin/main".into(),
    ];
    run_ok(&s).await;
    assert!(cache.join("ferry-last-used").is_file());

    let b = up.commit("f", "2");
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/pipelines/2"]);
    s.sha = b.clone();
    s.refspecs[0] = "+refs/pipelines/2:refs/pipelines/2".into();
    let log = run_ok(&s).await;
    assert!(log.contains("Fetching changes with git depth set to 5..."));
    assert!(log.contains("Reinitialized existing Git repository"));
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "2");
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), b);
    assert_eq!(
        git(
            &cache,
            &["for-each-ref", "--format=%(refname)", "refs/pipelines/"]
        ),
        "refs/pipelines/2"
    );
    assert!(
        !std::fs::read_to_string(dir.join(".git/config"))
            .unwrap()
            .contains("project-1.git")
    );
}

#[tokio::test]
async fn cancelling_a_hanging_fetch_kills_git() {
    // A "GitLab" that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let up = Upstream::new();
    let dir = up.project("p");
    let url = format!("http://gitlab-ci-token:{TOKEN}@127.0.0.1:{port}/group/project.git");
    let s = spec(&url, &"a".repeat(40), &dir);
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let needle = format!("127.0.0.1:{port}");
    let seen = tokio::spawn(async move {
        // Wait until git's HTTP helper is running, look at every command line, then cancel.
        let mut seen = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            seen = cmdlines_containing(&needle);
            if !seen.is_empty() {
                break;
            }
        }
        c2.cancel();
        seen
    });
    let mut log: Vec<u8> = Vec::new();
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        get_sources(&s, &mut log, &cancel),
    )
    .await
    .expect("get_sources did not stop after cancel");
    assert!(matches!(res, Err(SourceError::Cancelled)), "{res:?}");
    let seen = seen.await.unwrap();
    assert!(!seen.is_empty(), "git never contacted the server");
    assert!(
        seen.iter().all(|c| !c.contains(TOKEN)),
        "job token visible in a command line: {seen:?}"
    );
    // git and its helpers are gone.
    let needle = format!("127.0.0.1:{port}");
    let mut left = cmdlines_containing(&needle);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = cmdlines_containing(&needle);
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Command lines of running processes that contain `needle` (what `ps` would show).
fn cmdlines_containing(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test]
async fn recursive_submodules_and_submodule_paths() {
    let inner = Upstream::new();
    inner.commit("inner.txt", "inner");
    let mid = Upstream::new();
    mid.commit("mid.txt", "mid");
    git(&mid.work, &["submodule", "add", "-q", &inner.url(), "deep"]);
    git(&mid.work, &["commit", "-q", "-m", "deep"]);
    git(&mid.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let other = Upstream::new();
    other.commit("other.txt", "other");
    let up = Upstream::new();
    up.commit("f", "1");
    git(&up.work, &["submodule", "add", "-q", &mid.url(), "mid"]);
    git(&up.work, &["submodule", "add", "-q", &other.url(), "other"]);
    git(&up.work, &["commit", "-q", "-m", "subs"]);
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let sha = git(&up.work, &["rev-parse", "HEAD"]);

    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.git_config = vec![("protocol.file.allow".into(), "always".into())];
    let vars = ferry_executor::sources::GitVariables::resolve(
        |k| match k {
            "GIT_SUBMODULE_STRATEGY" => Some("recursive"),
            "GIT_SUBMODULE_PATHS" => Some(":(exclude)other"),
            "GIT_STRATEGY" => Some("clone"),
            _ => None,
        },
        true,
        0,
    )
    .unwrap();
    vars.apply(&mut s);
    let log = run_ok(&s).await;
    assert!(
        log.contains("Updating/initializing submodules recursively..."),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("mid/deep/inner.txt")).unwrap(),
        "inner"
    );
    assert!(
        !dir.join("other/other.txt").exists(),
        "excluded by GIT_SUBMODULE_PATHS"
    );
}

#[tokio::test]
async fn the_host_git_is_recent_enough() {
    let v = ferry_executor::sources::check_git().await.unwrap();
    assert!(v.starts_with("git version "), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_share_the_object_cache() {
    let up = Upstream::new();
    up.commit("a", "1");
    let sha = up.commit("b", "2");
    let cache = up.root.join("cache/git/project-1.git");
    let mut specs = Vec::new();
    for name in ["j1", "j2", "j3"] {
        let mut s = spec(&up.url(), &sha, &up.project(name));
        s.object_cache_dir = Some(cache.clone());
        specs.push(s);
    }
    let runs: Vec<_> = specs
        .iter()
        .cloned()
        .map(|s| tokio::spawn(async move { run(&s).await }))
        .collect();
    for (r, s) in futures::future::join_all(runs)
        .await
        .into_iter()
        .zip(&specs)
    {
        let (res, log) = r.unwrap();
        assert!(res.is_ok(), "{res:?}\n{log}");
        assert_eq!(
            std::fs::read_to_string(s.project_dir.join("b")).unwrap(),
            "2"
        );
    }
}

#[tokio::test]
async fn a_broken_checkout_is_replaced_by_a_fresh_clone() {
    let up = Upstream::new();
    let sha = up.commit("f", "1");
    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.strategy = GitStrategy::Fetch;
    run_ok(&s).await;
    // A job killed half way through a git command, or one that scribbled over .git.
    std::fs::write(dir.join(".git/index"), b"DIRCgarbage").unwrap();
    let sha2 = up.commit("f", "2");
    s.sha = sha2.clone();
    let log = run_ok(&s).await;
    assert!(
        log.contains("reusing the previous checkout failed")
            && log.contains("starting from a fresh clone"),
        "{log}"
    );
    assert!(log.contains("Initialized empty Git repository"));
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "2");
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), sha2);
}

/// A repository names its submodules' URLs: host git must never use the host's ssh keys or
/// agent for them, nor read the host's repositories through `file://` or a local path
/// (docs/security.md, "What git can reach"). Each such submodule is refused before any
/// connection: an ssh server's port (here a listener counting connections) is never reached.
#[tokio::test]
async fn submodules_with_ssh_file_or_local_urls_are_refused_without_a_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    let accept = tokio::spawn(async move {
        while let Ok((_conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let sub = Upstream::new();
    let sub_sha = sub.commit("lib.txt", "library");
    let up = Upstream::new();
    up.commit("f", "1");
    let urls = [
        ("ssh", format!("ssh://git@127.0.0.1:{port}/g/lib.git")),
        ("scp", "git@127.0.0.1:g/lib.git".to_string()),
        ("fileurl", format!("file://{}", sub.url())),
        ("local", sub.url()),
    ];
    let mut gitmodules = String::new();
    for (name, url) in &urls {
        gitmodules.push_str(&format!(
            "[submodule \"{name}\"]\n\tpath = {name}\n\turl = {url}\n"
        ));
        git(
            &up.work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sub_sha},{name}"),
            ],
        );
    }
    std::fs::write(up.work.join(".gitmodules"), gitmodules).unwrap();
    git(&up.work, &["add", ".gitmodules"]);
    git(&up.work, &["commit", "-q", "-m", "subs"]);
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let sha = git(&up.work, &["rev-parse", "HEAD"]);

    let dir = up.project("p");
    let mut s = spec(&up.url(), &sha, &dir);
    s.submodule_strategy = SubmoduleStrategy::Normal;
    let (res, log) = run(&s).await;
    let err = res.expect_err("the submodules must be refused");
    assert!(
        matches!(&err, SourceError::TransportRefused { transport, .. } if transport == "ssh" || transport == "file"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("which ferry's host git refuses")
            && text.contains("GIT_SUBMODULE_FORCE_HTTPS"),
        "{text}"
    );
    assert!(log.contains("fatal: transport 'ssh' not allowed"), "{log}");
    assert!(log.contains("fatal: transport 'file' not allowed"), "{log}");
    // The project itself, fetched from a local path as `ferry exec` does, was checked out.
    assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "1");
    for (name, _) in &urls {
        assert!(
            !dir.join(name).join("lib.txt").exists(),
            "{name} was cloned"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "ssh was attempted");
    accept.abort();
}

/// The same listener is reached when the ssh transport is allowed: the test above would see an
/// attempt.
#[tokio::test]
async fn the_connection_counter_sees_an_allowed_ssh_attempt() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { listener.accept().await.is_ok() });
    if Command::new("ssh").arg("-V").output().is_err() {
        eprintln!("SKIP: no ssh client on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _ = Command::new("git")
        .args([
            "ls-remote",
            &format!("ssh://git@127.0.0.1:{port}/g/lib.git"),
        ])
        .current_dir(dir.path())
        .env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o ConnectTimeout=5",
        )
        .output();
    assert!(accept.await.unwrap(), "no connection");
}

/// git-lfs ignores git's `protocol.*.allow`: a submodule's `.lfsconfig` naming a `file://`
/// `lfs.url` would make its standalone agent copy objects from a repository on the host
/// (docs/security.md, "Which transports git uses"). ferry ignores that URL, says so in the
/// log, and asks only the submodule's own (http) remote, which does not have the object.
#[tokio::test]
async fn a_submodule_lfsconfig_cannot_fetch_lfs_objects_from_the_host() {
    if Command::new("git")
        .args(["lfs", "version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!("SKIP: git-lfs is not installed");
        return;
    }
    let up = Upstream::new();
    up.commit("f", "1");
    // A repository on the host holding the object, as a file:// endpoint serves it.
    let content = "a secret of the runner host\n";
    let host_repo = up.root.join("host-repo");
    std::fs::create_dir_all(&host_repo).unwrap();
    git(&host_repo, &["init", "-q"]);
    std::fs::write(up.root.join("content"), content).unwrap();
    let sha256 = {
        let out = Command::new("sha256sum")
            .arg(up.root.join("content"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let objects = host_repo
        .join(".git/lfs/objects")
        .join(&sha256[..2])
        .join(&sha256[2..4]);
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::write(objects.join(&sha256), content).unwrap();
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {}\n",
        content.len()
    );

    // The submodule, on the same (http) server as the project.
    let lib_work = up.root.join("lib-work");
    let lib_bare = up.root.join("remote/group/lib.git");
    std::fs::create_dir_all(&lib_work).unwrap();
    std::fs::create_dir_all(&lib_bare).unwrap();
    git(&lib_work, &["init", "-q"]);
    git(&lib_bare, &["init", "-q", "--bare"]);
    std::fs::write(
        lib_work.join(".gitattributes"),
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .unwrap();
    std::fs::write(lib_work.join("blob.bin"), &pointer).unwrap();
    std::fs::write(
        lib_work.join(".lfsconfig"),
        format!("[lfs]\n\turl = file://{}\n", host_repo.display()),
    )
    .unwrap();
    git(&lib_work, &["add", "-A"]);
    git(&lib_work, &["commit", "-q", "-m", "lfs"]);
    git(
        &lib_work,
        &[
            "push",
            "-q",
            lib_bare.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
    let lib_sha = git(&lib_work, &["rev-parse", "HEAD"]);
    git(&lib_bare, &["update-server-info"]);

    std::fs::write(
        up.work.join(".gitmodules"),
        "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n",
    )
    .unwrap();
    git(
        &up.work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{lib_sha},lib"),
        ],
    );
    git(&up.work, &["add", ".gitmodules"]);
    git(&up.work, &["commit", "-q", "-m", "submodule"]);
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let sha = git(&up.work, &["rev-parse", "HEAD"]);
    git(&up.bare, &["update-server-info"]);
    let server = serve_dumb_http(up.root.join("remote")).await;
    let url = format!(
        "http://gitlab-ci-token:{TOKEN}@127.0.0.1:{}/group/project.git",
        server.port
    );
    let dir = up.project("p");
    let mut s = spec(&url, &sha, &dir);
    s.submodule_strategy = SubmoduleStrategy::Normal;
    let (res, log) = run(&s).await;

    assert_eq!(
        std::fs::read_to_string(dir.join("lib/blob.bin")).unwrap(),
        pointer,
        "the object was copied from the host; log:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "Ignoring lfs.url \"file://{}\" of lib/.lfsconfig: ferry's host git fetches LFS objects only over https",
            host_repo.display()
        )),
        "{log}"
    );
    // The submodule's own remote has no LFS API: git-lfs fails there, and so does the job.
    assert!(res.is_err(), "{log}");
    assert!(
        log.contains("/group/lib.git/info/lfs/objects/batch"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "{log}");

    // An http(s) `lfs.url` (http: the project's URL is http) is the endpoint git-lfs asks.
    let other = format!("http://127.0.0.1:{}/elsewhere/lfs", server.port);
    std::fs::write(
        lib_work.join(".lfsconfig"),
        format!("[lfs]\n\turl = {other}\n"),
    )
    .unwrap();
    git(&lib_work, &["commit", "-q", "-am", "lfsconfig"]);
    git(
        &lib_work,
        &[
            "push",
            "-q",
            lib_bare.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
    git(&lib_bare, &["update-server-info"]);
    let lib_sha = git(&lib_work, &["rev-parse", "HEAD"]);
    git(
        &up.work,
        &[
            "update-index",
            "--cacheinfo",
            &format!("160000,{lib_sha},lib"),
        ],
    );
    git(&up.work, &["commit", "-q", "-m", "bump"]);
    git(&up.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let sha = git(&up.work, &["rev-parse", "HEAD"]);
    git(&up.bare, &["update-server-info"]);
    let dir = up.project("p2");
    let mut s = spec(&url, &sha, &dir);
    s.submodule_strategy = SubmoduleStrategy::Normal;
    let (res, log) = run(&s).await;
    assert!(res.is_err(), "{log}");
    assert!(!log.contains("Ignoring lfs.url"), "{log}");
    assert!(log.contains(&format!("{other}/objects/batch")), "{log}");
}
