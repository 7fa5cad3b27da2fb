//! `GIT_SUBMODULE_STRATEGY`: gitlab-runner's submodule commands.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::engine::LogSink;
use crate::hostio::{Level, clean_relative};
use crate::jobfs::JobDir;

use super::git::Git;
use super::run::{io_err, s, say};
use super::{SourceError, SourceSpec, SubmoduleStrategy};

/// Submodule paths listed in `<dir>/.gitmodules` (read with `git config -f`, which runs
/// nothing), relative to `dir`; a `.gitmodules` that is not a regular file is ignored.
async fn submodule_dirs(dir: &JobDir, git: &Git, cancel: &CancellationToken) -> Vec<PathBuf> {
    if !dir
        .lstat(Path::new(".gitmodules"))
        .is_ok_and(|m| m.is_file())
    {
        return Vec::new();
    }
    let args = [
        s("config"),
        s("-f"),
        s(".gitmodules"),
        s("--get-regexp"),
        s(r"^submodule\..*\.path$"),
    ];
    let Ok(out) = git.run_at(dir, &args, None, cancel).await else {
        return Vec::new();
    };
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, p)| p.trim().to_string()))
        .filter_map(|p| clean_relative(&p))
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// What `git submodule foreach [--recursive] <cmd>` visits, in its order (each populated
/// submodule, then its own when recursive), as directories opened beneath the project dir:
/// ferry runs each git command itself, with an argument vector, never through a shell.
async fn populated_submodules(
    root: &JobDir,
    git: &Git,
    recursive: bool,
    cancel: &CancellationToken,
) -> Result<Vec<(PathBuf, JobDir)>, SourceError> {
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(base) = pending.pop() {
        let Ok(base_dir) = root.sub_dir(&base) else {
            continue;
        };
        let mut children = Vec::new();
        for p in submodule_dirs(&base_dir, git, cancel).await {
            let rel = base.join(&p);
            // Populated: a `.git` file (or directory) in the submodule's checkout.
            if root.lstat(&rel.join(".git")).is_err() {
                continue;
            }
            match root.sub_dir(&rel) {
                Ok(d) => out.push((rel.clone(), d)),
                Err(e) => {
                    return Err(io_err(format!("submodule {}", rel.display()))(e));
                }
            }
            if recursive {
                children.push(rel);
            }
        }
        if out.len() > 10_000 {
            return Err(SourceError::InvalidSpec(
                "more than 10000 submodules".into(),
            ));
        }
        pending.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// `git submodule foreach [--recursive] git <args>`, without the shell.
async fn for_each(
    root: &JobDir,
    git: &Git,
    recursive: bool,
    args: &[String],
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    for (rel, sub) in populated_submodules(root, git, recursive, cancel).await? {
        // What `git submodule foreach` prints before each command.
        say(log, Level::Plain, &format!("Entering '{}'", rel.display())).await?;
        git.run_at(&sub, args, Some(log), cancel).await?;
    }
    Ok(())
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
    let root = JobDir::open(dir).map_err(io_err(format!("opening {}", dir.display())))?;
    // scrub() removed .git/modules; a submodule checkout left by the previous job now points
    // at a git dir that is gone and would make `submodule update` fail.
    for p in submodule_dirs(&root, git, cancel).await {
        let stale = root.lstat(&p.join(".git")).is_ok_and(|m| m.is_file());
        if stale {
            root.remove(&p)
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
    let mut clean = vec![s("clean")];
    if spec.clean_flags.is_empty() {
        clean.push(s("-ffdx"));
    } else {
        clean.extend(spec.clean_flags.iter().cloned());
    }
    for_each(&root, git, recursive, &clean, log, cancel).await?;
    let reset = [s("reset"), s("--hard")];
    for_each(&root, git, recursive, &reset, log, cancel).await?;
    let mut update = rec(vec![s("submodule"), s("update"), s("--init")]);
    if depth > 0 {
        update.push(s("--depth"));
        update.push(depth.to_string());
    }
    update.extend(spec.submodule_update_flags.iter().cloned());
    update.extend(paths.iter().cloned());
    git.run(dir, &update, Some(log), cancel).await?;
    for_each(&root, git, recursive, &clean, log, cancel).await?;
    if spec.lfs {
        lfs_pull(&root, git, recursive, log, cancel).await?;
    }
    Ok(())
}

/// Git LFS in the submodules, as gitlab-runner's `git submodule foreach [--recursive] git lfs
/// pull`: in each populated submodule whose attributes mark files `filter=lfs`. Unlike
/// gitlab-runner, which skips this in silence without git-lfs, a host without it fails the
/// job as it does for the project's own LFS files. git-lfs does not heed git's
/// `protocol.*.allow`: with a `file://` `lfs.url` from a `.lfsconfig` it would copy objects
/// from a repository on the host into the checkout. So each submodule's `git lfs pull` gets
/// its endpoint on the command line ([`lfs_endpoint`]); the job token's header is scoped to
/// GitLab's host (and the runner's URL), so an endpoint on another server gets no credentials
/// (docs/security.md, "Which transports git uses").
async fn lfs_pull(
    root: &JobDir,
    git: &Git,
    recursive: bool,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), SourceError> {
    let mut said = false;
    for (rel, sub) in populated_submodules(root, git, recursive, cancel).await? {
        let listed = git
            .run_at(
                &sub,
                &[s("ls-files"), s("--"), s(":(attr:filter=lfs)")],
                None,
                cancel,
            )
            .await?;
        let files: Vec<&str> = listed.stdout.lines().filter(|f| !f.is_empty()).collect();
        let Some(first) = files.first() else {
            continue;
        };
        if !said {
            if git
                .run_at(&sub, &[s("lfs"), s("version")], None, cancel)
                .await
                .is_err()
            {
                return Err(SourceError::LfsMissing {
                    files: files.len(),
                    example: git.mask(&rel.join(first).display().to_string()),
                });
            }
            say(log, Level::Notice, "Pulling LFS files...").await?;
            said = true;
        }
        say(log, Level::Plain, &format!("Entering '{}'", rel.display())).await?;
        let endpoint = lfs_endpoint(&sub, &rel, git, log, cancel).await?;
        git.run_at(
            &sub,
            &super::run::lfs_pull_args(Some(&endpoint)),
            Some(log),
            cancel,
        )
        .await?;
    }
    Ok(())
}

/// The LFS endpoint of one submodule: the `lfs.url` (else `remote.origin.lfsurl`) of its
/// committed `.lfsconfig` when that is an https URL (http under the http rule), else the one
/// git-lfs derives from its `origin` remote, whose clone already passed git's transport
/// check. A `.lfsconfig` URL with another transport is refused with a warning in the job log.
/// The `.lfsconfig` is read from `HEAD` (`git config --blob`), never through the work tree,
/// where it could be a link to a file on the host.
async fn lfs_endpoint(
    sub: &JobDir,
    rel: &Path,
    git: &Git,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<String, SourceError> {
    for key in ["lfs.url", "remote.origin.lfsurl"] {
        let args = [
            s("config"),
            s("--blob"),
            s("HEAD:.lfsconfig"),
            s("--get"),
            s(key),
        ];
        // No `.lfsconfig`, or none of this key: the next one.
        let Ok(out) = git.run_at(sub, &args, None, cancel).await else {
            continue;
        };
        let url = out.stdout.trim();
        if git.network_url(url) {
            return Ok(url.to_string());
        }
        let shown = git.mask(&super::git::strip_credentials(url));
        let text = format!(
            "Ignoring {key} {shown:?} of {}/.lfsconfig: ferry's host git fetches LFS objects only over https (and http when the project's URL is http), never file://, ssh or a local path; using the endpoint of the submodule's remote",
            rel.display()
        );
        say(log, Level::Warning, &text).await?;
        break;
    }
    let out = git
        .run_at(
            sub,
            &[s("ls-remote"), s("--get-url"), s("origin")],
            None,
            cancel,
        )
        .await?;
    let url = out.stdout.trim();
    if !git.network_url(url) {
        return Err(SourceError::TransportRefused {
            command: format!("lfs pull (in {})", rel.display()),
            transport: match url.split_once("://") {
                Some((scheme, _)) => scheme.to_ascii_lowercase(),
                None if url.split('/').next().is_some_and(|h| h.contains(':')) => s("ssh"),
                None => s("file"),
            },
        });
    }
    Ok(super::run::lfs_endpoint(url))
}
