//! `GIT_SUBMODULE_STRATEGY`: gitlab-runner's submodule commands.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::engine::LogSink;
use crate::hostio::{Level, clean_relative, lstat_inside, remove_any};

use super::git::Git;
use super::run::{io_err, s, say};
use super::{SourceError, SourceSpec, SubmoduleStrategy};

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

pub(super) async fn submodules(
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
