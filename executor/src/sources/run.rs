//! The `get_sources` stage: strategies, the object cache, checkout and submodules.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::{GIT_CACHE_LOCK, GIT_CACHE_MARKER};
use crate::engine::LogSink;
use crate::hostio::{self, Level};
use crate::jobfs::{self, Budget, JobDir, Limits};

use super::checks::validate;
use super::git::{Git, split_url};
use super::submodules::submodules;
use super::{GitStrategy, SourceError, SourceSpec};

pub(super) async fn say(
    log: &mut LogSink<'_>,
    level: Level,
    text: &str,
) -> Result<(), SourceError> {
    hostio::write(log, level, text)
        .await
        .map_err(|e| SourceError::Io {
            context: "writing job log".into(),
            source: e,
        })
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

pub(super) fn s(v: &str) -> String {
    v.to_string()
}

/// The oldest git ferry works with (`GIT_CONFIG_COUNT` appeared in 2.31).
pub const MIN_GIT_VERSION: (u32, u32) = (2, 31);

/// Checks that the host's `git` exists and is recent enough; returns its version line. For
/// the runner's startup checks, so a missing git is an operator error, not a failed job.
pub async fn check_git() -> Result<String, SourceError> {
    let out = tokio::process::Command::new("git")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io_err(
            "running git --version (is git installed on the runner host?)",
        ))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = text
        .split_whitespace()
        .nth(2)
        .map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
        })
        .unwrap_or((0, 0));
    if !out.status.success() || version < MIN_GIT_VERSION {
        return Err(SourceError::InvalidSpec(format!(
            "git {}.{} or newer is needed on the runner host, found {text:?}",
            MIN_GIT_VERSION.0, MIN_GIT_VERSION.1
        )));
    }
    Ok(text)
}

/// Fetches the job's commit into `spec.project_dir` and checks it out, as gitlab-runner's
/// `get_sources` stage does, writing gitlab-runner's lines to `log`.
///
/// # Errors
/// `SourceError::Git` when a git command fails (its masked output is in the error),
/// `InvalidSpec`/`InvalidVariable` before anything runs, `Cancelled` when `cancel` fires
/// (the running git process is killed).
pub async fn get_sources(
    spec: &SourceSpec,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let dir = &spec.project_dir;
    match spec.strategy {
        GitStrategy::None => {
            say(log, Level::Notice, "Skipping Git repository setup").await?;
            project_dir(dir, false, cancel).await?;
            return skip_rest(log).await;
        }
        GitStrategy::Empty => {
            say(
                log,
                Level::Notice,
                "Skipping Git repository setup and creating an empty build directory",
            )
            .await?;
            project_dir(dir, true, cancel).await?;
            return skip_rest(log).await;
        }
        GitStrategy::Clone | GitStrategy::Fetch => {}
    }
    validate(spec)?;
    let mut writable = vec![spec.project_dir.as_path()];
    if let Some(cache) = &spec.object_cache_dir {
        // Created before any git runs, so that git's namespace can include it.
        std::fs::create_dir_all(cache).map_err(io_err(format!("creating {}", cache.display())))?;
        writable.push(cache.as_path());
    }
    // GIT_SUBMODULE_FORCE_HTTPS: SSH URLs on the GitLab host become HTTPS ones on the
    // runner's GitLab URL, which gets the job token's header too (the runner's `url` is the
    // operator's, so the token goes nowhere else).
    let mut config = spec.git_config.clone();
    let mut auth_origins = Vec::new();
    if let Some(f) = &spec.force_https {
        config.extend(f.insteadofs());
        auth_origins.extend(split_url(&f.base).origin);
    }
    let git = Git::new(
        &spec.repo_url,
        &spec.hook_git_config,
        &config,
        &auth_origins,
    )
    .display_dir(&spec.project_dir, spec.display_dir.as_deref())
    .confine(&writable);
    let url = split_url(&spec.repo_url);
    if spec.depth > 0 {
        say(
            log,
            Level::Notice,
            &format!("Fetching changes with git depth set to {}...", spec.depth),
        )
        .await?;
    } else {
        say(log, Level::Notice, "Fetching changes...").await?;
    }
    let reused = spec.strategy == GitStrategy::Fetch
        && JobDir::open(dir).is_ok_and(|d| d.lstat(Path::new(".git")).is_ok_and(|m| m.is_dir()));
    let first = repository(spec, spec.strategy, &git, &url.clean, log, cancel).await;
    match first {
        Err(e @ (SourceError::Git { .. } | SourceError::Io { .. })) if reused => {
            // The checkout a previous job left may be broken (corrupt index or objects, a
            // killed git): once more from scratch, so one bad job does not break every later
            // job of this project dir.
            say(
                log,
                Level::Warning,
                &format!("reusing the previous checkout failed ({e}); starting from a fresh clone"),
            )
            .await?;
            repository(spec, GitStrategy::Clone, &git, &url.clean, log, cancel).await
        }
        other => other,
    }
}

/// Steps 1-5 of `get_sources` for the clone and fetch strategies.
async fn repository(
    spec: &SourceSpec,
    strategy: GitStrategy,
    git: &Git,
    clean_url: &str,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let dir = &spec.project_dir;
    let root = project_dir(dir, strategy == GitStrategy::Clone, cancel).await?;
    if strategy == GitStrategy::Fetch {
        let limits = Limits::new(cancel.clone());
        jobfs::blocking(move || scrub(&root, &limits))
            .await
            .map_err(io_err(format!("cleaning up {}", dir.display())))?;
    }
    let fresh = !JobDir::open(dir)
        .and_then(|d| d.lstat(Path::new(".git")))
        .is_ok_and(|m| m.is_dir());
    let mut init = vec![s("init"), s("-q"), s("--template=")];
    if let Some(fmt) = spec.object_format.as_deref().filter(|f| *f != "sha1") {
        init.push(format!("--object-format={fmt}"));
    }
    init.push(s("."));
    git.run(dir, &init, None, cancel).await?;
    let shown = spec
        .display_dir
        .clone()
        .unwrap_or_else(|| dir.display().to_string());
    let shown = shown.trim_end_matches('/');
    if fresh {
        say(
            log,
            Level::Plain,
            &format!("Initialized empty Git repository in {shown}/.git/"),
        )
        .await?;
    } else {
        say(
            log,
            Level::Plain,
            &format!("Reinitialized existing Git repository in {shown}/.git/"),
        )
        .await?;
    }
    // The config was removed by scrub() or is brand new: the remote is always added here, and
    // only ever with the URL without credentials.
    git.run(
        dir,
        &[s("remote"), s("add"), s("origin"), clean_url.to_string()],
        None,
        cancel,
    )
    .await?;
    if fresh {
        say(log, Level::Notice, "Created fresh repository.").await?;
    }
    fetch(spec, git, clean_url, log, cancel).await?;
    if spec.checkout {
        let short: String = spec.sha.chars().take(8).collect();
        say(
            log,
            Level::Notice,
            &format!(
                "Checking out {short} as detached HEAD (ref is {})...",
                spec.ref_name
            ),
        )
        .await?;
        let args = [
            s("-c"),
            s("submodule.recurse=false"),
            s("checkout"),
            s("-f"),
            s("-q"),
            spec.sha.clone(),
        ];
        git.run(dir, &args, Some(log), cancel).await?;
        if !spec.clean_flags.is_empty() {
            let mut args = vec![s("clean")];
            args.extend(spec.clean_flags.iter().cloned());
            git.run(dir, &args, Some(log), cancel).await?;
        }
        if spec.lfs {
            lfs_pull(dir, git, clean_url, log, cancel).await?;
        }
    } else {
        say(log, Level::Notice, "Skipping Git checkout").await?;
    }
    submodules(spec, git, log, cancel).await
}

/// Git LFS after the checkout, as gitlab-runner's `git lfs pull`: the objects of the files the
/// repository's attributes mark `filter=lfs` are fetched from GitLab's LFS endpoint with the
/// job's credentials (the same header as the fetch, scoped to GitLab's host), and the pointer
/// files are replaced by their contents. A repository without such files needs nothing; one
/// with them on a host without git-lfs fails here, with the fix, instead of leaving pointer
/// files in silence (docs/sources-cache-artifacts.md).
async fn lfs_pull(
    dir: &Path,
    git: &Git,
    clean_url: &str,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let listed = git
        .run(
            dir,
            &[s("ls-files"), s("--"), s(":(attr:filter=lfs)")],
            None,
            cancel,
        )
        .await?;
    let files: Vec<&str> = listed.stdout.lines().filter(|f| !f.is_empty()).collect();
    let Some(first) = files.first() else {
        return Ok(());
    };
    if git
        .run(dir, &[s("lfs"), s("version")], None, cancel)
        .await
        .is_err()
    {
        return Err(SourceError::LfsMissing {
            files: files.len(),
            example: git.mask(first),
        });
    }
    say(log, Level::Notice, "Fetching Git LFS objects...").await?;
    // The endpoint git-lfs derives from the remote, given explicitly so that a `.lfsconfig` in
    // the repository cannot send the job's credentials elsewhere.
    let args = lfs_pull_args(Some(&lfs_endpoint(clean_url)));
    git.run(dir, &args, Some(log), cancel).await?;
    Ok(())
}

/// The LFS endpoint git-lfs derives from a remote URL: `<url>[.git]/info/lfs`.
pub(super) fn lfs_endpoint(url: &str) -> String {
    match url.strip_suffix(".git") {
        Some(_) => format!("{url}/info/lfs"),
        None => format!("{}.git/info/lfs", url.trim_end_matches('/')),
    }
}

/// `git lfs pull` with the LFS filter configured on the command line (git never reads the
/// host's config, where `git lfs install` would have put it), and the endpoint when given.
pub(super) fn lfs_pull_args(endpoint: Option<&str>) -> Vec<String> {
    let mut args = Vec::new();
    let url = endpoint.map(|e| ("lfs.url", e));
    for (k, v) in url.into_iter().chain([
        ("filter.lfs.process", "git-lfs filter-process"),
        ("filter.lfs.clean", "git-lfs clean -- %f"),
        ("filter.lfs.smudge", "git-lfs smudge -- %f"),
        ("filter.lfs.required", "true"),
    ]) {
        args.push(s("-c"));
        args.push(format!("{k}={v}"));
    }
    args.extend([s("lfs"), s("pull")]);
    args
}

async fn skip_rest(log: &mut LogSink<'_>) -> Result<(), SourceError> {
    say(log, Level::Notice, "Skipping Git checkout").await?;
    say(log, Level::Notice, "Skipping Git submodules setup").await
}

/// Creates the project dir (its parents are ferry's, never mounted into a job), or with
/// `empty` removes everything in it. The directory itself stays: it is what the build
/// container has mounted, so it is emptied, never replaced.
async fn project_dir(
    dir: &Path,
    empty: bool,
    cancel: &CancellationToken,
) -> Result<JobDir, SourceError> {
    let d = dir.to_path_buf();
    let limits = Limits::new(cancel.clone());
    jobfs::blocking(move || {
        // World-writable as gitlab-runner's helper creates it (umask 0000), for non-root jobs.
        let root = JobDir::create(&d, 0o777)?;
        if empty {
            let mut budget = Budget::new(&limits);
            for (name, _) in root.list(Path::new(""))? {
                budget.entry()?;
                root.remove(Path::new(&name))?;
            }
        }
        Ok(root)
    })
    .await
    .map_err(io_err(format!("preparing {}", dir.display())))
}

/// Before reusing a project dir (fetch strategy): a job ran in it and may have changed
/// anything, but git is about to run on the host. Everything in `.git` that can make git
/// execute a program or write outside the directory goes: the config (rewritten by `git
/// init`), hooks, worktree/common-dir redirections, alternates, symlinks, and submodule
/// repositories (re-cloned). Objects, refs and the index stay, so only new objects are
/// fetched. Stale lock files of a killed job are removed too.
fn scrub(root: &JobDir, limits: &Limits) -> io::Result<()> {
    let git_dir = Path::new(".git");
    match root.lstat(git_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return root.remove(git_dir),
        Ok(_) => {}
    }
    for name in [
        "config",
        "config.worktree",
        "commondir",
        "gitdir",
        "hooks",
        "info",
        "worktrees",
        "modules",
        "HEAD",
        "FETCH_HEAD",
        "ORIG_HEAD",
        "objects/info/alternates",
        "objects/info/http-alternates",
        "index.lock",
        "shallow.lock",
        "HEAD.lock",
        "config.lock",
        "packed-refs.lock",
    ] {
        match root.remove(&git_dir.join(name)) {
            // A parent that is a link or a file: the walk below removes it.
            Err(e)
                if e.kind() != io::ErrorKind::NotFound
                    && e.kind() != io::ErrorKind::InvalidInput =>
            {
                return Err(e);
            }
            _ => {}
        }
    }
    let mut doomed = Vec::new();
    root.walk(git_dir, &mut Budget::new(limits), &mut |rel, meta| {
        let is_lock = rel
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".lock"));
        let kind = meta.kind;
        if kind == jobfs::Kind::Symlink
            || kind == jobfs::Kind::Other
            || (is_lock && kind == jobfs::Kind::File)
        {
            doomed.push(rel.to_path_buf());
        }
        Ok(true)
    })?;
    for p in doomed {
        root.remove(&p)?;
    }
    Ok(())
}

/// `(remote -> object cache, object cache -> project)` refspecs. Every refspec keeps its
/// destination name in the cache, so the project fetches `+dst:dst` from it.
fn cache_refspecs(refspecs: &[String]) -> (Vec<String>, Vec<String>) {
    let default = [
        s("+refs/heads/*:refs/remotes/origin/*"),
        s("+refs/tags/*:refs/tags/*"),
    ];
    let list: &[String] = if refspecs.is_empty() {
        &default
    } else {
        refspecs
    };
    let mut to_cache = Vec::new();
    let mut to_project = Vec::new();
    for r in list {
        let body = r.trim_start_matches('+');
        if body.starts_with('^') {
            to_cache.push(r.clone());
            continue;
        }
        let (src, dst) = match body.split_once(':') {
            Some((src, dst)) if !dst.is_empty() => (src, dst),
            Some((src, _)) => (src, src),
            None => (body, body),
        };
        to_cache.push(format!("+{src}:{dst}"));
        to_project.push(format!("+{dst}:{dst}"));
    }
    (to_cache, to_project)
}

/// `shallow`: the repository has a `shallow` file (it was fetched with a depth before).
fn depth_args(depth: u32, shallow: bool) -> Vec<String> {
    if depth > 0 {
        vec![s("--depth"), depth.to_string()]
    } else if shallow {
        vec![s("--unshallow")]
    } else {
        Vec::new()
    }
}

async fn fetch(
    spec: &SourceSpec,
    git: &Git,
    clean_url: &str,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let dir = &spec.project_dir;
    let shallow = JobDir::open(dir)
        .and_then(|d| d.lstat(Path::new(".git/shallow")))
        .is_ok_and(|m| m.is_file());
    if let Some(cache) = &spec.object_cache_dir {
        let lock = lock_cache(cache, cancel).await?;
        match update_cache(spec, git, clean_url, cache, cancel).await {
            Ok(()) => {
                let (_, to_project) = cache_refspecs(&spec.refspecs);
                // The object cache is a local repository: `file` for this fetch ferry runs
                // itself, never for a submodule clone (docs/security.md, "What git can reach").
                let mut args = vec![
                    s("-c"),
                    s("protocol.file.allow=user"),
                    s("fetch"),
                    s("--no-recurse-submodules"),
                    cache.display().to_string(),
                ];
                args.extend(to_project);
                args.extend(depth_args(spec.depth, shallow));
                args.extend(spec.fetch_extra_flags.iter().cloned());
                let res = git.run(dir, &args, Some(log), cancel).await;
                drop(lock);
                return res.map(|_| ());
            }
            Err(SourceError::Cancelled) => return Err(SourceError::Cancelled),
            Err(e) => {
                say(
                    log,
                    Level::Warning,
                    &format!("the local git object cache could not be updated, fetching from the remote: {e}"),
                )
                .await?;
                // A broken cache is rebuilt on the next job.
                let _ = std::fs::remove_dir_all(cache);
                drop(lock);
            }
        }
    }
    let mut args = vec![s("fetch"), s("origin"), s("--no-recurse-submodules")];
    if spec.refspecs.is_empty() {
        args.extend(cache_refspecs(&[]).0);
    } else {
        args.extend(spec.refspecs.iter().cloned());
    }
    args.extend(depth_args(spec.depth, shallow));
    args.extend(spec.fetch_extra_flags.iter().cloned());
    git.run(dir, &args, Some(log), cancel).await.map(|_| ())
}

/// Holds the object cache's lock file; released on drop.
struct CacheLock(#[allow(dead_code)] std::fs::File);

async fn lock_cache(cache: &Path, cancel: &CancellationToken) -> Result<CacheLock, SourceError> {
    std::fs::create_dir_all(cache).map_err(io_err(format!("creating {}", cache.display())))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(GIT_CACHE_LOCK))
        .map_err(io_err(format!("opening lock in {}", cache.display())))?;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(CacheLock(f)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", cache.display()))(e));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(SourceError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn update_cache(
    spec: &SourceSpec,
    git: &Git,
    clean_url: &str,
    cache: &Path,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    if !cache.join("objects").is_dir() || !cache.join("HEAD").is_file() {
        let mut init = vec![s("init"), s("-q"), s("--bare"), s("--template=")];
        if let Some(fmt) = spec.object_format.as_deref().filter(|f| *f != "sha1") {
            init.push(format!("--object-format={fmt}"));
        }
        init.push(s("."));
        git.run(cache, &init, None, cancel).await?;
    }
    std::fs::write(cache.join(GIT_CACHE_MARKER), b"")
        .map_err(io_err(format!("marking {}", cache.display())))?;
    let (to_cache, to_project) = cache_refspecs(&spec.refspecs);
    drop_old_pipeline_refs(git, cache, &to_project, cancel).await?;
    let mut args = vec![
        s("fetch"),
        s("--no-recurse-submodules"),
        clean_url.to_string(),
    ];
    args.extend(to_cache);
    args.extend(depth_args(spec.depth, cache.join("shallow").is_file()));
    args.extend(spec.fetch_extra_flags.iter().cloned());
    git.run(cache, &args, None, cancel).await?;
    git.run(cache, &[s("gc"), s("--auto"), s("--quiet")], None, cancel)
        .await
        .map(|_| ())
}

/// Every pipeline fetches its own `refs/pipelines/<id>`; without this the object cache would
/// keep one ref per pipeline forever. Refs this job asks for are kept.
async fn drop_old_pipeline_refs(
    git: &Git,
    cache: &Path,
    wanted: &[String],
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let args = [
        s("for-each-ref"),
        s("--format=%(refname)"),
        s("refs/pipelines/"),
    ];
    let listed = git.run(cache, &args, None, cancel).await?;
    for r in listed
        .stdout
        .lines()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let keep = wanted.iter().any(|w| w.ends_with(&format!(":{r}")));
        if !keep {
            git.run(
                cache,
                &[s("update-ref"), s("-d"), r.to_string()],
                None,
                cancel,
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refspecs_are_mirrored_through_the_cache() {
        let (to_cache, to_project) = cache_refspecs(&[
            s("+refs/pipelines/7:refs/pipelines/7"),
            s("+refs/heads/*:refs/remotes/origin/*"),
            s("refs/tags/v1"),
        ]);
        assert_eq!(
            to_cache,
            [
                "+refs/pipelines/7:refs/pipelines/7",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/v1:refs/tags/v1"
            ]
        );
        assert_eq!(
            to_project,
            [
                "+refs/pipelines/7:refs/pipelines/7",
                "+refs/remotes/origin/*:refs/remotes/origin/*",
                "+refs/tags/v1:refs/tags/v1"
            ]
        );
    }
}
