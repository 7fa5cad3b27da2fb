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
    let (objects, head, head_tree) = repository_facts(top)?;
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

/// The user's object dir, its `HEAD` commit and that commit's tree, in one git process (git's
/// processes are most of the time before the first job); `HEAD` and its tree are `None` in a
/// repository without commits.
fn repository_facts(top: &Path) -> Result<(PathBuf, Option<String>, Option<String>), GitError> {
    let objects = [
        "rev-parse",
        "--path-format=absolute",
        "--git-path",
        "objects",
    ];
    let mut all = objects.to_vec();
    // `--`: both are revisions, never paths.
    all.extend(["HEAD^{commit}", "HEAD^{tree}", "--"]);
    if let Ok(out) = git(top, &all, &[]) {
        // One line each, in order (`--` echoed last); the path may hold a newline, the ids not.
        let mut parts = out.rsplitn(4, '\n');
        if let (Some("--"), Some(tree), Some(commit), Some(path)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            return Ok((
                PathBuf::from(path),
                Some(commit.to_string()),
                Some(tree.to_string()),
            ));
        }
    }
    // No commit yet (or an answer not of that form): the object dir alone.
    Ok((PathBuf::from(git(top, objects, &[])?), None, None))
}

/// A `cache:key` hash's key as GitLab computes it (`Gitlab::Ci::Pipeline::Seed::Build::Cache`)
/// for commit `sha` of `store`: `<prefix>-<digest>`, the prefix being the cache's `index` in
/// the job's list when `prefix:` is not given (an empty prefix drops it). The digest: with
/// `files:`, the SHA-1 of the sorted blob ids of those files (a path with `*` is a pattern over
/// the commit's files, `**` any characters, `*` any but `/`), joined by `-`; with
/// `files_commits:`, of the ids of the last commits that changed them; `default` when none of
/// them exists (docs/exec.md).
pub fn files_key(
    store: &Path,
    sha: &str,
    files: Option<&[String]>,
    files_commits: Option<&[String]>,
    prefix: Option<&str>,
    index: usize,
) -> String {
    // Ruby's `select(&:present?).uniq`: no blank paths, each once, in order.
    let present = |list: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in list.iter().filter(|p| !p.trim().is_empty()) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    };
    let ids = match (files, files_commits) {
        (Some(files), _) => blob_ids(store, sha, &present(files)),
        (None, Some(paths)) => present(paths)
            .iter()
            .filter_map(|p| {
                git(
                    store,
                    ["log", "-1", "--format=%H", sha, "--", p.as_str()],
                    &[],
                )
                .ok()
                .filter(|c| !c.is_empty())
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    let digest = digest_of(ids).unwrap_or_else(|| "default".into());
    let prefix = prefix.map_or_else(|| index.to_string(), str::to_string);
    if prefix.is_empty() {
        digest
    } else {
        format!("{prefix}-{digest}")
    }
}

/// GitLab's `digest_from_hashes`: the ids sorted and deduplicated, joined by `-`, SHA-1 in hex.
fn digest_of(mut ids: Vec<String>) -> Option<String> {
    use sha1::Digest;
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return None;
    }
    let sum = sha1::Sha1::digest(ids.join("-").as_bytes());
    Some(sum.iter().map(|b| format!("{b:02x}")).collect())
}

/// The blob ids of `paths` in commit `sha` (patterns expanded as GitLab's
/// `search_files_by_wildcard_path`); a path that is no file of the commit has none.
fn blob_ids(store: &Path, sha: &str, paths: &[String]) -> Vec<String> {
    if paths.is_empty() {
        return Vec::new();
    }
    let Ok(listing) = git(store, ["ls-tree", "-r", "-z", "--full-tree", sha], &[]) else {
        return Vec::new();
    };
    // "<mode> <type> <id>\t<path>" per entry; blobs only (submodules are commits).
    let blobs: Vec<(&str, &str)> = listing
        .split('\0')
        .filter_map(|entry| {
            let (meta, path) = entry.split_once('\t')?;
            let mut m = meta.split(' ');
            let (_, kind, id) = (m.next()?, m.next()?, m.next()?);
            (kind == "blob").then_some((path, id))
        })
        .collect();
    let mut ids = Vec::new();
    for p in paths {
        if p.contains('*') {
            let pattern = regex::escape(p)
                .replace(r"\*\*", ".*?")
                .replace(r"\*", "([^/])*?");
            let Ok(re) = regex::Regex::new(&format!("^{pattern}$")) else {
                continue;
            };
            ids.extend(
                blobs
                    .iter()
                    .filter(|(path, _)| re.is_match(path))
                    .map(|(_, id)| id.to_string()),
            );
        } else if let Some((_, id)) = blobs.iter().find(|(path, _)| path == p) {
            ids.push(id.to_string());
        }
    }
    ids
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

    /// SHA-1 of `text` in hex, by `sha1sum` (not the code under test).
    fn sha1sum(text: &str) -> String {
        let mut child = std::process::Command::new("sha1sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn cache_keys_of_files_are_gitlabs_content_and_commit_digests() {
        let r = repo();
        std::fs::create_dir_all(r.path().join("sub")).unwrap();
        std::fs::write(r.path().join("package.json"), "{}\n").unwrap();
        std::fs::write(r.path().join("sub/package.json"), "{\"a\": 1}\n").unwrap();
        std::fs::write(r.path().join("yarn.lock"), "v1\n").unwrap();
        run(r.path(), &["add", "-A"]);
        run(r.path(), &["commit", "-q", "-m", "deps"]);
        let deps_commit = run(r.path(), &["rev-parse", "HEAD"]);
        // Uncommitted: the key follows the working tree's snapshot.
        std::fs::write(r.path().join("yarn.lock"), "v2\n").unwrap();
        let store = tempfile::tempdir().unwrap();
        let store = store.path().join("s.git");
        let snap = take(r.path(), &store, "main", false, &[]).unwrap();
        let id = |path: &str| run(&store, &["rev-parse", &format!("{}:{path}", snap.sha)]);
        let key = |files: &[&str], prefix: Option<&str>, index: usize| {
            let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
            files_key(&store, &snap.sha, Some(&files), None, prefix, index)
        };
        let mut both = [id("package.json"), id("yarn.lock")];
        both.sort();
        assert_eq!(
            id("yarn.lock"),
            run(r.path(), &["hash-object", "yarn.lock"])
        );
        assert_eq!(
            key(&["yarn.lock", "package.json", "yarn.lock", " "], None, 0),
            format!("0-{}", sha1sum(&both.join("-")))
        );
        assert_eq!(
            key(&["package.json"], Some("deps"), 1),
            format!("deps-{}", sha1sum(&id("package.json")))
        );
        assert_eq!(
            key(&["package.json"], Some(""), 1),
            sha1sum(&id("package.json"))
        );
        // GitLab's wildcards: `**/` needs a directory, `*` stays in one.
        assert_eq!(
            key(&["**/package.json"], None, 0),
            format!("0-{}", sha1sum(&id("sub/package.json")))
        );
        assert_eq!(
            key(&["*.json"], None, 0),
            format!("0-{}", sha1sum(&id("package.json")))
        );
        for none in [
            &["missing.txt"][..],
            &["./package.json"],
            &["sub"],
            &["**/*.rs"],
        ] {
            assert_eq!(key(none, Some("p"), 0), "p-default", "{none:?}");
        }
        let commits: Vec<String> = vec!["package.json".into(), "gone.txt".into()];
        let first = run(r.path(), &["rev-list", "--max-parents=0", "HEAD"]);
        let mut last = [deps_commit.clone(), first];
        last.sort();
        assert_eq!(
            files_key(&store, &snap.sha, None, Some(&commits), None, 0),
            format!("0-{}", sha1sum(&last.join("-")))
        );
    }
}
