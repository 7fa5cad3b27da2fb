//! GitLab's rules for `paths`, `exclude` and `untracked` (shared by artifacts and cache).
//!
//! Mirrors gitlab-runner's `fileArchiver` (commands/helpers/file_archiver.go):
//! * every path is relative to the project dir; one that resolves outside it is refused with a
//!   warning;
//! * a path may be a doublestar glob (`*` stays within one directory, `**` crosses any number);
//! * every match is taken recursively (a matched directory brings everything below it);
//! * `exclude` globs are matched against each candidate's relative path; an excluded directory
//!   does not hide its children unless the pattern matches them too (`dir/**`);
//! * `untracked` adds the output of `git ls-files --others` (ignored files included).
//!
//! ferry reads these files on the host, where a job's symlink could point anywhere. So nothing
//! is ever followed: symlinks are recorded as symlinks, walks never descend through them, and
//! anything that is not a regular file, directory or symlink (a FIFO, a device node) is skipped.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobMatcher};

use crate::hostio::{clean_relative, human_bytes};
use crate::jobfs::{Budget, JobDir, Kind, Limits, Meta, limit_error};

use super::Note;

/// One file system entry selected for an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64 },
    Dir,
    Symlink { target: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Unix permission bits.
    pub mode: u32,
    pub mtime: SystemTime,
    /// Owner, kept in cache archives so a restore as root gives files back to the job's user.
    pub uid: u32,
    pub gid: u32,
}

/// What the rules selected: relative paths (`/`-separated, sorted) and the lines to show.
#[derive(Debug, Default)]
pub struct Selection {
    pub entries: BTreeMap<String, Entry>,
    pub notes: Vec<Note>,
}

impl Selection {
    pub fn file_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !matches!(e.kind, EntryKind::Dir))
            .count()
    }

    pub fn total_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e.kind {
                EntryKind::File { size } => size,
                _ => 0,
            })
            .sum()
    }
}

fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()?
        .compile_matcher())
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

fn rel_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

struct Collector<'a> {
    dir: &'a JobDir,
    limits: &'a Limits,
    bytes: u64,
    excludes: Vec<(String, GlobMatcher)>,
    excluded: BTreeMap<String, u64>,
    sel: Selection,
    /// A limit or the deadline was hit: the selection must not be used.
    fatal: Option<io::Error>,
}

impl Collector<'_> {
    /// Adds one candidate. Returns whether it counted as found.
    fn consider(&mut self, rel: &Path, meta: &Meta) -> bool {
        let Some(rel_str) = rel.to_str() else {
            self.sel.notes.push(Note::warning(format!(
                "{}: skipped: the file name is not valid UTF-8",
                rel.display()
            )));
            return false;
        };
        if self.sel.entries.contains_key(rel_str) {
            return true;
        }
        if let Some((rule, _)) = self.excludes.iter().find(|(_, m)| m.is_match(rel_str)) {
            *self.excluded.entry(rule.clone()).or_default() += 1;
            return false;
        }
        let kind = match meta.kind {
            Kind::Dir => EntryKind::Dir,
            Kind::File => {
                self.bytes = self.bytes.saturating_add(meta.len);
                if self.bytes > self.limits.max_bytes {
                    self.fatal.get_or_insert(limit_error(format!(
                        "more than {} of file content",
                        human_bytes(self.limits.max_bytes)
                    )));
                    return false;
                }
                EntryKind::File { size: meta.len }
            }
            Kind::Symlink => match self.dir.read_link(rel) {
                Ok(target) => EntryKind::Symlink { target },
                Err(e) => {
                    self.sel
                        .notes
                        .push(Note::warning(format!("{rel_str}: {e}")));
                    return false;
                }
            },
            Kind::Other => {
                self.sel.notes.push(Note::warning(format!(
                    "{rel_str}: skipped: not a regular file, directory or symlink"
                )));
                return false;
            }
        };
        let entry = Entry {
            kind,
            mode: meta.mode,
            mtime: meta.mtime,
            uid: meta.uid,
            gid: meta.gid,
        };
        self.sel.entries.insert(rel_str.to_string(), entry);
        true
    }

    /// Walks below `start` (never through a link): an entry `pick` accepts is taken with
    /// everything below it. Returns how many entries were taken.
    fn walk(&mut self, start: &Path, pick: &dyn Fn(&Path) -> bool) -> u64 {
        if self.fatal.is_some() {
            return 0;
        }
        let mut picked: Vec<(PathBuf, Meta)> = Vec::new();
        // Directories taken whole, innermost last (the walk is depth first).
        let mut taken: Vec<PathBuf> = Vec::new();
        let mut budget = Budget::new(self.limits);
        let r = self.dir.walk(start, &mut budget, &mut |rel, meta| {
            while taken.last().is_some_and(|t| !rel.starts_with(t)) {
                taken.pop();
            }
            if !taken.is_empty() || pick(rel) {
                picked.push((rel.to_path_buf(), meta.clone()));
                if meta.is_dir() {
                    taken.push(rel.to_path_buf());
                }
            }
            Ok(true)
        });
        if let Err(e) = r {
            self.fatal.get_or_insert(e);
            return 0;
        }
        let mut found = 0;
        for (rel, meta) in picked {
            if self.consider(&rel, &meta) {
                found += 1;
            }
        }
        found
    }

    /// Adds `rel` and, for a directory, everything below it (never through a symlink).
    fn add_tree(&mut self, rel: &Path) -> u64 {
        let meta = match self.dir.lstat(rel) {
            Ok(m) => Meta::from(&m),
            Err(_) => return 0,
        };
        let mut found = 0;
        if !rel.as_os_str().is_empty() && self.consider(rel, &meta) {
            found += 1;
        }
        if meta.is_dir() {
            found += self.walk(rel, &|_| true);
        }
        found
    }

    fn process_path(&mut self, raw: &str) {
        let display = raw.trim_end_matches('/');
        let Some(clean) = clean_relative(raw) else {
            self.sel.notes.push(Note::warning(format!(
                "{raw}: artifact path is not a subpath of project directory"
            )));
            return;
        };
        let clean_str = rel_string(&clean);
        let mut found = 0;
        if !has_glob_meta(&clean_str) {
            found += self.add_tree(&clean);
        } else {
            // Walk from the longest literal prefix and test every path against the glob.
            let mut base = PathBuf::new();
            for comp in clean.components() {
                let s = comp.as_os_str().to_string_lossy();
                if has_glob_meta(&s) {
                    break;
                }
                base.push(comp);
            }
            match glob(&clean_str) {
                Err(e) => {
                    self.sel.notes.push(Note::warning(format!("{raw}: {e}")));
                    return;
                }
                Ok(matcher) => {
                    let base_ok = base.as_os_str().is_empty()
                        || self.dir.lstat(&base).map(|m| m.is_dir()).unwrap_or(false);
                    if base_ok {
                        found += self.walk(&base, &|rel| matcher.is_match(rel_string(rel)));
                    }
                }
            }
        }
        if self.fatal.is_some() {
            return;
        }
        if found == 0 {
            self.sel.notes.push(Note::warning(format!(
                "{display}: no matching files. Ensure that the artifact path is relative to the working directory"
            )));
        } else {
            self.sel.notes.push(Note::info(format!(
                "{display}: found {found} matching artifact files and directories"
            )));
        }
    }

    fn process_untracked(&mut self, listed: Result<Vec<String>, String>) {
        let paths = match listed {
            Ok(p) => p,
            Err(e) => {
                self.sel
                    .notes
                    .push(Note::warning(format!("untracked: {e}")));
                return;
            }
        };
        let mut found = 0;
        let mut budget = Budget::new(self.limits);
        for p in paths {
            if let Err(e) = budget.entry() {
                self.fatal.get_or_insert(e);
                return;
            }
            let Some(clean) = clean_relative(&p) else {
                continue;
            };
            if let Ok(meta) = self.dir.lstat(&clean)
                && self.consider(&clean, &Meta::from(&meta))
            {
                found += 1;
            }
        }
        if found == 0 {
            self.sel.notes.push(Note::warning("untracked: no files"));
        } else {
            self.sel
                .notes
                .push(Note::info(format!("untracked: found {found} files")));
        }
    }
}

/// The largest `.git/index` ferry copies to list untracked files.
const MAX_INDEX_BYTES: u64 = 512 * 1024 * 1024;

/// Lists untracked files (`git ls-files --others`), ignored ones included, as gitlab-runner
/// does. Everything in `.git` was written by the job, so git never reads it: it runs on a
/// fresh repository of ferry's with a copy of the job's index (`GIT_INDEX_FILE`), the work
/// tree pinned to the project dir, and no config but ferry's.
pub fn untracked_files(dir: &JobDir) -> Result<Vec<String>, String> {
    let index = Path::new(".git/index");
    if !dir.lstat(Path::new(".git")).is_ok_and(|m| m.is_dir()) {
        return Err("not a git repository".to_string());
    }
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let git_dir = scratch.path().join("git");
    let index_copy = scratch.path().join("index");
    match dir.open_file(index) {
        Ok(f) => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len > MAX_INDEX_BYTES {
                return Err(format!(
                    ".git/index is larger than {}",
                    human_bytes(MAX_INDEX_BYTES)
                ));
            }
            let mut out = std::fs::File::create(&index_copy)
                .map_err(|e| format!("copying the index: {e}"))?;
            io::copy(&mut io::Read::take(f, len), &mut out)
                .map_err(|e| format!("copying the index: {e}"))?;
        }
        // No index: every file is untracked.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading .git/index: {e}")),
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_INDEX_FILE", &index_copy)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_CONFIG_COUNT")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running git: {e}"))
    };
    let init = git(&[
        "init",
        "-q",
        "--bare",
        "--template=",
        &git_dir.to_string_lossy(),
    ])?;
    if !init.status.success() {
        return Err(format!(
            "git init: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        ));
    }
    let out = git(&[
        &format!("--git-dir={}", git_dir.display()),
        &format!("--work-tree={}", dir.path().display()),
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "safe.directory=*",
        "-c",
        "core.bare=false",
        "ls-files",
        "--others",
        "-z",
    ])?;
    if !out.status.success() {
        return Err(format!(
            "git ls-files: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        // The job's own `.git` is never an untracked file.
        .filter(|p| p != ".git" && !p.starts_with(".git/"))
        .collect())
}

/// Applies GitLab's path rules to `project_dir`.
///
/// # Errors
/// A limit or the deadline of `limits` was hit (the selection is unusable), or the project
/// dir cannot be read.
pub fn select(
    dir: &JobDir,
    paths: &[String],
    exclude: &[String],
    untracked: bool,
    limits: &Limits,
) -> io::Result<Selection> {
    let mut notes = Vec::new();
    let mut excludes = Vec::new();
    for pat in exclude {
        match clean_relative(pat).map(|p| rel_string(&p)) {
            Some(clean) => match glob(&clean) {
                Ok(m) => excludes.push((pat.clone(), m)),
                Err(e) => notes.push(Note::warning(format!("exclude {pat}: {e}"))),
            },
            None => notes.push(Note::warning(format!(
                "isExcluded: artifact path is not a subpath of project directory: {pat}"
            ))),
        }
    }
    let mut c = Collector {
        dir,
        limits,
        bytes: 0,
        fatal: None,
        excludes,
        excluded: BTreeMap::new(),
        sel: Selection {
            entries: BTreeMap::new(),
            notes,
        },
    };
    dir.lstat(Path::new(""))?;
    for p in paths {
        c.process_path(p);
    }
    if untracked {
        let listed = untracked_files(dir);
        c.process_untracked(listed);
    }
    if let Some(e) = c.fatal {
        return Err(e);
    }
    let excluded = std::mem::take(&mut c.excluded);
    for (rule, n) in excluded {
        c.sel
            .notes
            .push(Note::info(format!("{rule}: excluded {n} files")));
    }
    Ok(c.sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f.as_bytes()).unwrap();
        }
        d
    }

    fn select(
        root: &Path,
        paths: &[String],
        exclude: &[String],
        untracked: bool,
    ) -> io::Result<Selection> {
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        super::select(
            &JobDir::open(root).unwrap(),
            paths,
            exclude,
            untracked,
            &limits,
        )
    }

    fn keys(s: &Selection) -> Vec<&str> {
        s.entries.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn globs_follow_doublestar_rules() {
        let d = tree(&[
            "a/x.txt",
            "a/b/y.txt",
            "a/b/c/z.txt",
            "top.txt",
            ".hidden.txt",
        ]);
        let s = select(d.path(), &["a/*.txt".into()], &[], false).unwrap();
        assert_eq!(keys(&s), ["a/x.txt"]);
        let s = select(d.path(), &["a/**/*.txt".into()], &[], false).unwrap();
        assert_eq!(keys(&s), ["a/b/c/z.txt", "a/b/y.txt", "a/x.txt"]);
        let s = select(d.path(), &["*.txt".into()], &[], false).unwrap();
        assert_eq!(keys(&s), [".hidden.txt", "top.txt"]);
    }

    #[test]
    fn directories_are_recursive_and_excludes_apply() {
        let d = tree(&["t/a.o", "t/a.d", "t/sub/b.d", "t/sub/b.o"]);
        let s = select(d.path(), &["t/".into()], &["t/**/*.d".into()], false).unwrap();
        assert_eq!(keys(&s), ["t", "t/a.o", "t/sub", "t/sub/b.o"]);
        let text: Vec<String> = s.notes.iter().map(|n| n.text.clone()).collect();
        assert!(text.contains(&"t: found 4 matching artifact files and directories".to_string()));
        assert!(text.contains(&"t/**/*.d: excluded 2 files".to_string()));
    }

    #[test]
    fn outside_and_missing_paths_warn() {
        let d = tree(&["a"]);
        let s = select(d.path(), &["../etc".into(), "nope".into()], &[], false).unwrap();
        assert!(s.entries.is_empty());
        assert!(
            s.notes[0]
                .text
                .contains("not a subpath of project directory")
        );
        assert!(s.notes[1].text.starts_with("nope: no matching files"));
    }

    #[test]
    fn symlinks_are_recorded_not_followed() {
        let d = tree(&["keep"]);
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        let s = select(d.path(), &["etc".into(), "etc/passwd".into()], &[], false).unwrap();
        assert_eq!(keys(&s), ["etc"]);
        assert!(matches!(s.entries["etc"].kind, EntryKind::Symlink { .. }));
        let s = select(d.path(), &["**/passwd".into()], &[], false).unwrap();
        assert!(s.entries.is_empty());
    }
}
