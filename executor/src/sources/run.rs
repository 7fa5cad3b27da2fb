//! The `get_sources` stage: strategies, the object cache, checkout and submodules.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::{GIT_CACHE_LOCK, GIT_CACHE_MARKER};
use crate::engine::LogSink;
use crate::hostio::{self, Level, clean_relative, lstat_inside, remove_any};

use super::git::{Git, split_url};
use super::{GitStrategy, SourceError, SourceSpec, SubmoduleStrategy};

async fn say(log: &mut LogSink<'_>, level: Level, text: &str) -> Result<(), SourceError> {
    hostio::write(log, level, text)
        .await
        .map_err(|e| SourceError::Io {
            context: "writing job log".into(),
            source: e,
        })
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Fetch flags a job may set through `GIT_FETCH_EXTRA_FLAGS`. git runs on the host, so
/// anything that can name a program (`--upload-pack`) or a host path must be refused.
const FETCH_FLAGS: &[&str] = &[
    "--prune",
    "-p",
    "--prune-tags",
    "-P",
    "--quiet",
    "-q",
    "--verbose",
    "-v",
    "--no-tags",
    "-n",
    "--tags",
    "-t",
    "--force",
    "-f",
    "--progress",
    "--no-progress",
    "--jobs",
    "-j",
    "--filter",
    "--no-filter",
    "--no-write-fetch-head",
    "--write-fetch-head",
    "--deepen",
    "--shallow-since",
    "--shallow-exclude",
    "--update-shallow",
    "--refetch",
    "--atomic",
    "--ipv4",
    "-4",
    "--ipv6",
    "-6",
    "--no-auto-gc",
    "--auto-gc",
    "--no-auto-maintenance",
    "--show-forced-updates",
    "--no-show-forced-updates",
    "--server-option",
    "-o",
    "--no-recurse-submodules",
    "--set-upstream",
    "--append",
    "-a",
];

const SUBMODULE_UPDATE_FLAGS: &[&str] = &[
    "--remote",
    "--recursive",
    "--jobs",
    "-j",
    "--depth",
    "--force",
    "-f",
    "--checkout",
    "--rebase",
    "--merge",
    "--no-fetch",
    "-N",
    "--single-branch",
    "--no-single-branch",
    "--recommend-shallow",
    "--no-recommend-shallow",
    "--filter",
    "--progress",
    "--quiet",
    "-q",
    "--init",
    "--dissociate",
];

const CLEAN_FLAGS: &[&str] = &[
    "-q",
    "--quiet",
    "-e",
    "--exclude",
    "--force",
    "-n",
    "--dry-run",
];

/// `git clean` short options may be bundled (`-ffdx`).
fn bundled_clean_flags(f: &str) -> bool {
    f.len() > 1
        && f.starts_with('-')
        && !f.starts_with("--")
        && f[1..].chars().all(|c| "fdxXqn".contains(c))
}

/// Checks `flags` against `allowed` (`--name=value` and the word after a flag taking a value
/// are accepted as such). Values must not look like options themselves.
fn check_flags(name: &'static str, flags: &[String], allowed: &[&str]) -> Result<(), SourceError> {
    let takes_value = [
        "--jobs",
        "-j",
        "--filter",
        "--deepen",
        "--shallow-since",
        "--shallow-exclude",
        "--server-option",
        "-o",
        "--depth",
        "-e",
        "--exclude",
    ];
    let mut expect_value = false;
    for f in flags {
        if expect_value {
            expect_value = false;
            if !f.starts_with('-') {
                continue;
            }
        }
        let flag = f.split_once('=').map_or(f.as_str(), |(k, _)| k);
        let bundled = name == "GIT_CLEAN_FLAGS" && bundled_clean_flags(flag);
        if !allowed.contains(&flag) && !bundled {
            return Err(SourceError::InvalidVariable {
                name,
                value: format!("{f} (not allowed: git runs on the runner host)"),
            });
        }
        expect_value = !f.contains('=') && takes_value.contains(&flag);
    }
    Ok(())
}

fn validate(spec: &SourceSpec) -> Result<(), SourceError> {
    let sha_ok =
        (7..=64).contains(&spec.sha.len()) && spec.sha.chars().all(|c| c.is_ascii_hexdigit());
    if !sha_ok {
        return Err(SourceError::InvalidSpec(format!(
            "sha {:?} is not a commit id",
            spec.sha
        )));
    }
    for r in &spec.refspecs {
        if r.is_empty() || r.starts_with('-') || r.contains(char::is_whitespace) {
            return Err(SourceError::InvalidSpec(format!(
                "refspec {r:?} is not valid"
            )));
        }
    }
    if spec.repo_url.starts_with('-') || spec.repo_url.is_empty() {
        return Err(SourceError::InvalidSpec(
            "repository URL is not valid".into(),
        ));
    }
    check_flags(
        "GIT_FETCH_EXTRA_FLAGS",
        &spec.fetch_extra_flags,
        FETCH_FLAGS,
    )?;
    check_flags("GIT_CLEAN_FLAGS", &spec.clean_flags, CLEAN_FLAGS)?;
    check_flags(
        "GIT_SUBMODULE_UPDATE_FLAGS",
        &spec.submodule_update_flags,
        SUBMODULE_UPDATE_FLAGS,
    )?;
    Ok(())
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
            ensure_project_dir(dir)?;
            return skip_rest(log).await;
        }
        GitStrategy::Empty => {
            say(
                log,
                Level::Notice,
                "Skipping Git repository setup and creating an empty build directory",
            )
            .await?;
            remove_any(dir).map_err(io_err(format!("removing {}", dir.display())))?;
            ensure_project_dir(dir)?;
            return skip_rest(log).await;
        }
        GitStrategy::Clone | GitStrategy::Fetch => {}
    }
    validate(spec)?;
    let git = Git::new(&spec.repo_url, &spec.git_config)
        .display_dir(&spec.project_dir, spec.display_dir.as_deref());
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
    if spec.strategy == GitStrategy::Clone {
        remove_any(dir).map_err(io_err(format!("removing {}", dir.display())))?;
    } else {
        scrub(dir).map_err(io_err(format!("cleaning up {}", dir.display())))?;
    }
    ensure_project_dir(dir)?;
    let fresh = !dir.join(".git").is_dir();
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
        &[s("remote"), s("add"), s("origin"), url.clean.clone()],
        None,
        cancel,
    )
    .await?;
    if fresh {
        say(log, Level::Notice, "Created fresh repository.").await?;
    }
    fetch(spec, &git, &url.clean, log, cancel).await?;
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
    } else {
        say(log, Level::Notice, "Skipping Git checkout").await?;
    }
    submodules(spec, &git, log, cancel).await
}

async fn skip_rest(log: &mut LogSink<'_>) -> Result<(), SourceError> {
    say(log, Level::Notice, "Skipping Git checkout").await?;
    say(log, Level::Notice, "Skipping Git submodules setup").await
}

fn ensure_project_dir(dir: &Path) -> Result<(), SourceError> {
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        remove_any(dir).map_err(io_err(format!("removing {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))
}

/// Before reusing a project dir (fetch strategy): a job ran in it and may have changed
/// anything, but git is about to run on the host. Everything in `.git` that can make git
/// execute a program or write outside the directory goes: the config (rewritten by `git
/// init`), hooks, worktree/common-dir redirections, alternates, symlinks, and submodule
/// repositories (re-cloned). Objects, refs and the index stay, so only new objects are
/// fetched. Stale lock files of a killed job are removed too.
fn scrub(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return remove_any(dir),
        Ok(_) => {}
    }
    let git_dir = dir.join(".git");
    match std::fs::symlink_metadata(&git_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return remove_any(&git_dir),
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
        remove_any(&git_dir.join(name))?;
    }
    let mut doomed = Vec::new();
    for e in walkdir::WalkDir::new(&git_dir)
        .follow_links(false)
        .follow_root_links(false)
    {
        let e = e.map_err(io::Error::other)?;
        let is_lock = e.file_name().to_string_lossy().ends_with(".lock");
        if e.path_is_symlink() || (is_lock && e.file_type().is_file()) {
            doomed.push(e.into_path());
        }
    }
    for p in doomed {
        remove_any(&p)?;
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

fn depth_args(depth: u32, repo: &Path) -> Vec<String> {
    if depth > 0 {
        vec![s("--depth"), depth.to_string()]
    } else if repo.join("shallow").is_file() {
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
    if let Some(cache) = &spec.object_cache_dir {
        let lock = lock_cache(cache, cancel).await?;
        match update_cache(spec, git, clean_url, cache, cancel).await {
            Ok(()) => {
                let (_, to_project) = cache_refspecs(&spec.refspecs);
                let mut args = vec![
                    s("fetch"),
                    s("--no-recurse-submodules"),
                    cache.display().to_string(),
                ];
                args.extend(to_project);
                args.extend(depth_args(spec.depth, &dir.join(".git")));
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
                let _ = remove_any(cache);
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
    args.extend(depth_args(spec.depth, &dir.join(".git")));
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
    let (to_cache, _) = cache_refspecs(&spec.refspecs);
    let mut args = vec![
        s("fetch"),
        s("--no-recurse-submodules"),
        clean_url.to_string(),
    ];
    args.extend(to_cache);
    args.extend(depth_args(spec.depth, cache));
    args.extend(spec.fetch_extra_flags.iter().cloned());
    git.run(cache, &args, None, cancel).await?;
    git.run(cache, &[s("gc"), s("--auto"), s("--quiet")], None, cancel)
        .await
        .map(|_| ())
}

/// Submodule paths listed in `.gitmodules` (read with `git config -f`, which runs nothing).
async fn submodule_dirs(dir: &Path, git: &Git, cancel: &CancellationToken) -> Vec<PathBuf> {
    if !dir.join(".gitmodules").is_file() {
        return Vec::new();
    }
    let args = [
        s("config"),
        s("-f"),
        s(".gitmodules"),
        s("--get-regexp"),
        s(r"^submodule\..*\.path$"),
    ];
    let Ok(out) = git.run(dir, &args, None, cancel).await else {
        return Vec::new();
    };
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, p)| p.trim().to_string()))
        .filter_map(|p| clean_relative(&p))
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

async fn submodules(
    spec: &SourceSpec,
    git: &Git,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let recursive = match spec.submodule_strategy {
        SubmoduleStrategy::None => {
            return say(log, Level::Notice, "Skipping Git submodules setup").await;
        }
        SubmoduleStrategy::Normal => false,
        SubmoduleStrategy::Recursive => true,
    };
    let depth = spec.submodule_depth;
    let msg = match (recursive, depth > 0) {
        (true, true) => {
            format!("Updating/initializing submodules recursively with git depth set to {depth}...")
        }
        (true, false) => s("Updating/initializing submodules recursively..."),
        (false, true) => {
            format!("Updating/initializing submodules with git depth set to {depth}...")
        }
        (false, false) => s("Updating/initializing submodules..."),
    };
    say(log, Level::Notice, &msg).await?;
    let dir = &spec.project_dir;
    // scrub() removed .git/modules; a submodule checkout left by the previous job now points
    // at a git dir that is gone and would make `submodule update` fail.
    for p in submodule_dirs(dir, git, cancel).await {
        let stale = lstat_inside(dir, &p.join(".git")).is_ok_and(|m| m.is_file());
        if stale {
            remove_any(&dir.join(&p))
                .map_err(io_err(format!("removing stale submodule {}", p.display())))?;
        }
    }
    let mut paths = Vec::new();
    if !spec.submodule_paths.is_empty() {
        paths.push(s("--"));
        paths.extend(spec.submodule_paths.iter().cloned());
    }
    let rec = |mut v: Vec<String>| {
        if recursive {
            v.push(s("--recursive"));
        }
        v
    };
    let mut init = vec![s("submodule"), s("init")];
    init.extend(paths.iter().cloned());
    git.run(dir, &init, Some(log), cancel).await?;
    let mut sync = rec(vec![s("submodule"), s("sync")]);
    sync.extend(paths.iter().cloned());
    git.run(dir, &sync, Some(log), cancel).await?;
    let clean_flags = if spec.clean_flags.is_empty() {
        s("-ffdx")
    } else {
        spec.clean_flags.join(" ")
    };
    let foreach = |cmd: String| {
        let mut v = rec(vec![s("submodule"), s("foreach")]);
        v.push(cmd);
        v
    };
    git.run(
        dir,
        &foreach(format!("git clean {clean_flags}")),
        Some(log),
        cancel,
    )
    .await?;
    git.run(dir, &foreach(s("git reset --hard")), Some(log), cancel)
        .await?;
    let mut update = rec(vec![s("submodule"), s("update"), s("--init")]);
    if depth > 0 {
        update.push(s("--depth"));
        update.push(depth.to_string());
    }
    update.extend(spec.submodule_update_flags.iter().cloned());
    update.extend(paths.iter().cloned());
    git.run(dir, &update, Some(log), cancel).await?;
    git.run(
        dir,
        &foreach(format!("git clean {clean_flags}")),
        Some(log),
        cancel,
    )
    .await?;
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

    #[test]
    fn dangerous_flags_are_refused() {
        let ok = [
            s("--prune"),
            s("--quiet"),
            s("--jobs"),
            s("4"),
            s("--filter=blob:none"),
        ];
        assert!(check_flags("X", &ok, FETCH_FLAGS).is_ok());
        for bad in [
            "--upload-pack=/bin/sh",
            "--upload-pack",
            "-c",
            "--config=x",
            "--reference",
        ] {
            assert!(check_flags("X", &[s(bad)], FETCH_FLAGS).is_err(), "{bad}");
        }
        assert!(check_flags("X", &[s("--jobs"), s("--upload-pack=x")], FETCH_FLAGS).is_err());
        assert!(
            check_flags(
                "GIT_CLEAN_FLAGS",
                &[s("-ffdx"), s("-e"), s("keep/")],
                CLEAN_FLAGS
            )
            .is_ok()
        );
        assert!(check_flags("GIT_CLEAN_FLAGS", &[s("-fdz")], CLEAN_FLAGS).is_err());
        assert!(check_flags("X", &[s("--reference"), s("/x")], SUBMODULE_UPDATE_FLAGS).is_err());
    }
}
