//! The sources of a local pipeline (docs/exec.md, "Sources"): the user's working tree as it is,
//! uncommitted and untracked-but-not-ignored files included, as one commit in a repository of
//! ferry's own. Jobs then get their sources through the same `get_sources` stage as in CI,
//! fetching that commit with the job's `GIT_STRATEGY`, `GIT_DEPTH`, submodules and LFS.
//!
//! Nothing of the user's repository is written: the snapshot's objects go to ferry's repository
//! (which borrows the user's objects read-only through `objects/info/alternates`), and the
//! working tree is staged through an index file of ferry's own.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::git::{GitError, git};

/// What a job's `git_info` is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `file://` URL of ferry's repository holding the commit.
    pub repo_url: String,
    /// The commit the jobs check out: `head` itself when the tree is clean, otherwise a commit
    /// on top of it with the working tree's contents.
    pub sha: String,
    /// The user's `HEAD` (`CI_COMMIT_SHA`); `None` in a repository without commits.
    pub head: Option<String>,
    /// Whether the working tree differed from `HEAD`.
    pub dirty: bool,
    /// The ref the commit is published under in ferry's repository (`refs/heads/<ref_name>`).
    pub ref_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "{dir} is not inside a git repository (ferry exec runs the .gitlab-ci.yml of a git repository)"
    )]
    NotARepository { dir: PathBuf },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// The top of the working tree that holds `dir`.
pub fn toplevel(dir: &Path) -> Result<PathBuf, SnapshotError> {
    git(dir, ["rev-parse", "--show-toplevel"], &[])
        .map(PathBuf::from)
        .map_err(|_| SnapshotError::NotARepository {
            dir: dir.to_path_buf(),
        })
}

/// Takes the snapshot of the working tree at `top` into the bare repository `store` (created
/// when missing), publishing it as `refs/heads/<ref_name>` there (`refs/tags/<ref_name>` for a
/// tag, as the payload's refspecs fetch it). Paths under `exclude` (ferry's own output inside
/// the tree) are left out.
pub fn take(
    top: &Path,
    store: &Path,
    ref_name: &str,
    is_tag: bool,
    exclude: &[&Path],
) -> Result<Snapshot, SnapshotError> {
    let io = |context: String| move |source| SnapshotError::Io { context, source };
    let objects = PathBuf::from(git(
        top,
        [
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
        ],
        &[],
    )?);
    if !store.join("HEAD").is_file() {
        std::fs::create_dir_all(store).map_err(io(format!("creating {}", store.display())))?;
        git(store, ["init", "--bare", "--quiet", "."], &[])?;
    }
    let store_objects = store.join("objects");
    std::fs::create_dir_all(store_objects.join("info"))
        .map_err(io(format!("creating {}", store_objects.display())))?;
    std::fs::write(
        store_objects.join("info/alternates"),
        format!("{}\n", objects.display()),
    )
    .map_err(io(format!(
        "writing {}/info/alternates",
        store_objects.display()
    )))?;

    let head = git(
        top,
        ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        &[],
    )
    .ok();
    // The index is kept from one run to the next, for the working tree it was made of: its
    // stat data lets `git add` hash only the files that changed since (on 1,000 files, hashing
    // them all was most of the snapshot's time). It starts from `HEAD` each time: `read-tree -m`
    // keeps the stat data of the entries `HEAD` has unchanged and drops everything else, so
    // the result is that of a fresh `read-tree HEAD`.
    let index = store.join("ferry-exec.index");
    let index_top = store.join("ferry-exec.index.top");
    let top_line = top.as_os_str().as_encoded_bytes();
    if std::fs::read(&index_top).ok().as_deref() != Some(top_line) || head.is_none() {
        let _ = std::fs::remove_file(&index);
    }
    let env: [(&str, &OsStr); 3] = [
        ("GIT_INDEX_FILE", index.as_os_str()),
        ("GIT_OBJECT_DIRECTORY", store_objects.as_os_str()),
        ("GIT_ALTERNATE_OBJECT_DIRECTORIES", objects.as_os_str()),
    ];
    if head.is_some() {
        let kept = index.is_file() && git(top, ["read-tree", "-m", "HEAD"], &env).is_ok();
        if !kept {
            let _ = std::fs::remove_file(&index);
            git(top, ["read-tree", "HEAD"], &env)?;
        }
    }
    std::fs::write(&index_top, top_line).map_err(io(format!("writing {}", index_top.display())))?;
    // Everything git would commit with `git add -A`: changes, deletions and untracked files
    // that no .gitignore (nor info/exclude) excludes.
    let mut add: Vec<String> = ["add", "--all", "--", "."].map(String::from).to_vec();
    // Compared resolved: a relative --output or one reached through a link is still excluded.
    let top_real = top.canonicalize().unwrap_or_else(|_| top.to_path_buf());
    for path in exclude {
        let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Ok(rel) = real.strip_prefix(&top_real) {
            add.push(format!(":(exclude,literal){}", rel.display()));
        }
    }
    git(top, &add, &env)?;
    let tree = git(top, ["write-tree"], &env)?;
    let head_tree = match &head {
        Some(h) => Some(git(top, ["rev-parse", &format!("{h}^{{tree}}")], &env)?),
        None => None,
    };
    let dirty = head_tree.as_deref() != Some(tree.as_str());
    let sha = match (&head, dirty) {
        (Some(h), false) => h.clone(),
        _ => {
            let identity: [(&str, &OsStr); 4] = [
                ("GIT_AUTHOR_NAME", OsStr::new("ferry exec")),
                ("GIT_AUTHOR_EMAIL", OsStr::new("ferry-exec@localhost")),
                ("GIT_COMMITTER_NAME", OsStr::new("ferry exec")),
                ("GIT_COMMITTER_EMAIL", OsStr::new("ferry-exec@localhost")),
            ];
            let env: Vec<_> = env.iter().chain(identity.iter()).copied().collect();
            let mut args = vec!["commit-tree".to_string(), tree.clone()];
            if let Some(h) = &head {
                args.extend(["-p".to_string(), h.clone()]);
            }
            args.extend([
                "-m".to_string(),
                "ferry exec: uncommitted changes of the working tree".to_string(),
            ]);
            git(top, &args, &env)?
        }
    };
    let kind = if is_tag { "tags" } else { "heads" };
    git(
        store,
        ["update-ref", &format!("refs/{kind}/{ref_name}"), &sha],
        &[],
    )?;
    Ok(Snapshot {
        repo_url: format!("file://{}", store.display()),
        sha,
        head,
        dirty,
        ref_name: ref_name.to_string(),
    })
}

/// The key of `cache:key:files` (docs/exec.md): the last commit up to `sha` that changed one of
/// `files`, after `prefix-`, as GitLab derives it from the files' history. Without such a commit,
/// `default`, as GitLab's.
pub fn files_key(store: &Path, sha: &str, files: &[String], prefix: Option<&str>) -> String {
    let mut args = vec!["rev-list", "-1", sha, "--"];
    args.extend(files.iter().map(String::as_str));
    let commit = git(store, &args, &[]).ok().filter(|c| !c.is_empty());
    let key = commit.unwrap_or_else(|| "default".to_string());
    match prefix {
        Some(p) => format!("{p}-{key}"),
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) -> String {
        let t = OsStr::new("t");
        let at = OsStr::new("t@t");
        let identity = [
            ("GIT_AUTHOR_NAME", t),
            ("GIT_AUTHOR_EMAIL", at),
            ("GIT_COMMITTER_NAME", t),
            ("GIT_COMMITTER_EMAIL", at),
        ];
        git(dir, args, &identity).unwrap_or_else(|e| panic!("{e}"))
    }

    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        run(d.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(d.path().join("a.txt"), "committed\n").unwrap();
        std::fs::write(d.path().join("gone.txt"), "deleted later\n").unwrap();
        std::fs::write(d.path().join(".gitignore"), "ignored.txt\n").unwrap();
        run(d.path(), &["add", "-A"]);
        run(d.path(), &["commit", "-q", "-m", "first"]);
        d
    }

    /// What a clone of the snapshot's commit holds.
    fn files_of(snap: &Snapshot) -> Vec<String> {
        let out = tempfile::tempdir().unwrap();
        run(out.path(), &["init", "-q"]);
        run(out.path(), &["fetch", "-q", &snap.repo_url, &snap.sha]);
        run(out.path(), &["checkout", "-q", &snap.sha]);
        let mut names = run(out.path(), &["ls-files"])
            .lines()
            .map(|l| {
                let content = std::fs::read_to_string(out.path().join(l)).unwrap_or_default();
                format!("{l}={}", content.trim())
            })
            .collect::<Vec<_>>();
        names.sort();
        names
    }

    #[test]
    fn a_clean_tree_is_its_head() {
        let r = repo();
        let store = tempfile::tempdir().unwrap();
        let snap = take(r.path(), &store.path().join("s.git"), "main", false, &[]).unwrap();
        assert!(!snap.dirty);
        assert_eq!(Some(snap.sha.clone()), snap.head);
        assert_eq!(
            files_of(&snap),
            [
                ".gitignore=ignored.txt",
                "a.txt=committed",
                "gone.txt=deleted later"
            ]
        );
    }

    #[test]
    fn uncommitted_and_untracked_files_are_in_the_snapshot_and_the_user_repo_is_untouched() {
        let r = repo();
        std::fs::write(r.path().join("a.txt"), "changed\n").unwrap();
        std::fs::write(r.path().join("new.txt"), "untracked\n").unwrap();
        std::fs::write(r.path().join("ignored.txt"), "never\n").unwrap();
        std::fs::remove_file(r.path().join("gone.txt")).unwrap();
        run(r.path(), &["add", "new.txt"]);
        run(r.path(), &["reset", "-q", "new.txt"]);
        let status_before = run(r.path(), &["status", "--porcelain"]);
        let objects_before = run(r.path(), &["count-objects", "-v"]);
        let store = tempfile::tempdir().unwrap();
        let snap = take(r.path(), &store.path().join("s.git"), "main", false, &[]).unwrap();
        assert!(snap.dirty);
        assert_ne!(Some(snap.sha.clone()), snap.head);
        assert_eq!(
            files_of(&snap),
            [
                ".gitignore=ignored.txt",
                "a.txt=changed",
                "new.txt=untracked"
            ]
        );
        // The user's index, working tree and object store are as they were.
        assert_eq!(run(r.path(), &["status", "--porcelain"]), status_before);
        assert_eq!(run(r.path(), &["count-objects", "-v"]), objects_before);
        // The snapshot's parent is the user's HEAD, so history is there for the job.
        let parent = run(
            &store.path().join("s.git"),
            &["rev-parse", &format!("{}^", snap.sha)],
        );
        assert_eq!(Some(parent), snap.head);
    }

    #[test]
    fn a_second_snapshot_sees_every_change_since_the_first() {
        let r = repo();
        std::fs::write(r.path().join("new.txt"), "untracked\n").unwrap();
        let store = tempfile::tempdir().unwrap();
        let store = store.path().join("s.git");
        let first = take(r.path(), &store, "main", false, &[]).unwrap();
        assert_eq!(
            files_of(&first),
            [
                ".gitignore=ignored.txt",
                "a.txt=committed",
                "gone.txt=deleted later",
                "new.txt=untracked"
            ]
        );
        // Same size, same second: only the content tells the change.
        std::fs::write(r.path().join("a.txt"), "Committed\n").unwrap();
        // Untracked and in the first snapshot, ignored now: left out as in a first snapshot.
        std::fs::write(r.path().join(".gitignore"), "ignored.txt\nnew.txt\n").unwrap();
        std::fs::remove_file(r.path().join("gone.txt")).unwrap();
        std::fs::write(r.path().join("later.txt"), "later\n").unwrap();
        let second = take(r.path(), &store, "main", false, &[]).unwrap();
        assert_eq!(
            files_of(&second),
            [
                ".gitignore=ignored.txt\nnew.txt",
                "a.txt=Committed",
                "later.txt=later"
            ]
        );
        // Back to HEAD's contents: HEAD itself again.
        run(r.path(), &["checkout", "-q", "--", "."]);
        std::fs::remove_file(r.path().join("later.txt")).unwrap();
        std::fs::remove_file(r.path().join("new.txt")).unwrap();
        let third = take(r.path(), &store, "main", false, &[]).unwrap();
        assert!(!third.dirty);
        assert_eq!(Some(third.sha), third.head);
    }

    #[test]
    fn a_repository_without_commits_gives_a_root_commit() {
        let d = tempfile::tempdir().unwrap();
        run(d.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(d.path().join("x"), "1\n").unwrap();
        let store = tempfile::tempdir().unwrap();
        let snap = take(d.path(), &store.path().join("s.git"), "main", false, &[]).unwrap();
        assert_eq!(snap.head, None);
        assert_eq!(files_of(&snap), ["x=1"]);
    }

    #[test]
    fn outside_a_repository_the_error_names_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let e = toplevel(d.path()).unwrap_err().to_string();
        assert!(e.contains("not inside a git repository"), "{e}");
        assert!(e.contains(&d.path().display().to_string()), "{e}");
    }
}
