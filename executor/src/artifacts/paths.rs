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

use crate::hostio::{clean_relative, lstat_inside};

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
    root: &'a Path,
    excludes: Vec<(String, GlobMatcher)>,
    excluded: BTreeMap<String, u64>,
    sel: Selection,
}

impl Collector<'_> {
    /// Adds one candidate. Returns whether it counted as found.
    fn consider(&mut self, rel: &str, meta: &std::fs::Metadata) -> bool {
        if let Some((rule, _)) = self.excludes.iter().find(|(_, m)| m.is_match(rel)) {
            *self.excluded.entry(rule.clone()).or_default() += 1;
            return false;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File { size: meta.len() }
        } else if ft.is_symlink() {
            match std::fs::read_link(self.root.join(rel)) {
                Ok(target) => EntryKind::Symlink { target },
                Err(e) => {
                    self.sel.notes.push(Note::warning(format!("{rel}: {e}")));
                    return false;
                }
            }
        } else {
            self.sel.notes.push(Note::warning(format!(
                "{rel}: skipped: not a regular file, directory or symlink"
            )));
            return false;
        };
        let entry = Entry {
            kind,
            mode: meta.permissions().mode() & 0o7777,
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            uid: meta.uid(),
            gid: meta.gid(),
        };
        self.sel.entries.insert(rel.to_string(), entry);
        true
    }

    /// Adds `rel` and, for a directory, everything below it (never through a symlink).
    fn add_tree(&mut self, rel: &Path) -> u64 {
        let mut found = 0;
        let start = self.root.join(rel);
        for item in walkdir::WalkDir::new(&start)
            .follow_links(false)
            .follow_root_links(false)
            .sort_by_file_name()
        {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    self.sel
                        .notes
                        .push(Note::warning(format!("walking {}: {e}", rel.display())));
                    continue;
                }
            };
            let Ok(sub) = item.path().strip_prefix(self.root) else {
                continue;
            };
            let Ok(meta) = item.metadata() else { continue };
            if sub.as_os_str().is_empty() {
                continue;
            }
            if self.consider(&rel_string(sub), &meta) {
                found += 1;
            }
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
            if clean.as_os_str().is_empty() {
                // `.`: the whole project dir.
                found += self.add_tree(Path::new(""));
            } else if lstat_inside(self.root, &clean).is_ok() {
                found += self.add_tree(&clean);
            }
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
                        || lstat_inside(self.root, &base)
                            .map(|m| m.is_dir())
                            .unwrap_or(false);
                    if base_ok {
                        found += self.glob_walk(&base, &matcher);
                    }
                }
            }
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

    fn glob_walk(&mut self, base: &Path, matcher: &GlobMatcher) -> u64 {
        let mut found = 0;
        let start = self.root.join(base);
        let mut it = walkdir::WalkDir::new(&start)
            .follow_links(false)
            .follow_root_links(false)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(item) = it.next() {
            let Ok(item) = item else { continue };
            let Ok(sub) = item.path().strip_prefix(self.root) else {
                continue;
            };
            if matcher.is_match(rel_string(sub)) {
                let is_dir = item.file_type().is_dir();
                found += self.add_tree(sub);
                if is_dir {
                    it.skip_current_dir();
                }
            }
        }
        found
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
        for p in paths {
            let Some(clean) = clean_relative(&p) else {
                continue;
            };
            if let Ok(meta) = lstat_inside(self.root, &clean)
                && self.consider(&rel_string(&clean), &meta)
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

/// Lists untracked files (`git ls-files --others`), ignored ones included, as gitlab-runner
/// does. The repository's own config was written by the job, so everything that could run a
/// program (fsmonitor, hooks) is overridden on the command line.
pub fn untracked_files(project_dir: &Path) -> Result<Vec<String>, String> {
    // `.git` must be the project's own directory, and the work tree is pinned to the project
    // dir whatever `core.worktree` the job wrote.
    let git_dir = project_dir.join(".git");
    if !std::fs::symlink_metadata(&git_dir).is_ok_and(|m| m.is_dir()) {
        return Err("not a git repository".to_string());
    }
    let out = std::process::Command::new("git")
        .arg(format!("--git-dir={}", git_dir.display()))
        .arg(format!("--work-tree={}", project_dir.display()))
        .args([
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "safe.directory=*",
            "ls-files",
            "--others",
            "-z",
        ])
        .current_dir(project_dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running git: {e}"))?;
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
        .collect())
}

/// Applies GitLab's path rules to `project_dir`.
pub fn select(
    project_dir: &Path,
    paths: &[String],
    exclude: &[String],
    untracked: bool,
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
        root: project_dir,
        excludes,
        excluded: BTreeMap::new(),
        sel: Selection {
            entries: BTreeMap::new(),
            notes,
        },
    };
    std::fs::metadata(project_dir)?;
    for p in paths {
        c.process_path(p);
    }
    if untracked {
        let listed = untracked_files(project_dir);
        c.process_untracked(listed);
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
