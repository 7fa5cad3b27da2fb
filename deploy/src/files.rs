//! Finding and reading the manifest files, bounded (docs/deploy.md, "Limits").
//!
//! In a deploy job every path is resolved beneath a handle on the project directory with
//! `cap-std` (openat2 `RESOLVE_BENEATH` where the kernel has it, else a component-by-component
//! `openat` walk that refuses `..` and absolute links): a path or a link that leads outside the
//! project is refused before anything outside is looked up, so neither the contents nor the
//! existence of a host file can leak. Absolute entries and entries with `..` are refused before
//! any file system access, with one message whatever exists.
//!
//! Walks never descend into symbolic links (a link to a file is read like the file, a link to a
//! directory is skipped), stop at a depth and an entry count, and reading stops at a size per
//! file and in total. Everything here is blocking: the deployer runs it on a blocking thread,
//! and [`Stop`] (the job's cancellation and deadline) is checked at every entry and every chunk
//! read.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use globset::Glob;
use tokio_util::sync::CancellationToken;

use crate::DeployError;

const MIB: u64 = 1024 * 1024;

/// Bounds of the manifest walk and reads. Documented in docs/deploy.md ("Limits").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of one manifest file.
    pub file_bytes: u64,
    /// Size of all manifest files of one `ferry deploy`.
    pub total_bytes: u64,
    /// Directory entries looked at while expanding directories and globs.
    pub entries: usize,
    /// Directory levels below a directory entry (or the project directory, for globs).
    pub depth: usize,
    /// Size of the rendered manifests (after template substitution), all files together.
    pub rendered_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 4 * MIB,
            total_bytes: 16 * MIB,
            entries: 100_000,
            depth: 32,
            rendered_bytes: 32 * MIB,
        }
    }
}

/// Renders a byte count for messages: `4 MiB`, `1.2 GiB`, `900 bytes`.
pub fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    let (unit, div) = if n >= 1024 * MIB {
        ("GiB", 1024 * MIB)
    } else if n >= MIB {
        ("MiB", MIB)
    } else if n >= KIB {
        ("KiB", KIB)
    } else {
        return format!("{n} bytes");
    };
    if n.is_multiple_of(div) {
        format!("{} {unit}", n / div)
    } else {
        format!("{:.1} {unit}", n as f64 / div as f64)
    }
}

/// The job's cancellation and deadline, checked by the blocking work.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    pub cancel: CancellationToken,
    pub deadline: Option<Instant>,
}

impl Stop {
    pub fn check(&self) -> Result<(), DeployError> {
        if self.cancel.is_cancelled() {
            return Err(DeployError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(DeployError::Input(
                "reading the manifests did not finish before the job timeout".into(),
            ));
        }
        Ok(())
    }
}

/// One manifest file, read.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    /// The path as shown in messages (`k8s/app.yaml`).
    pub display: String,
    pub text: String,
}

/// What a directory entry is, without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
    Other,
}

/// The file system the manifests are read from.
enum Tree {
    /// A deploy job: everything beneath the project directory's handle.
    Beneath(cap_std::fs::Dir),
    /// `ferry deploy` on a workstation: relative to the current directory, anywhere.
    Ambient(PathBuf),
}

fn is_escape(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        && e.get_ref()
            .is_some_and(|inner| inner.to_string().contains("outside of the filesystem"))
}

impl Tree {
    /// Entries of a directory, sorted by name, with their types (links not followed).
    fn read_dir(&self, rel: &Path) -> io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        let kind_of = |ft: std::fs::FileType| {
            if ft.is_symlink() {
                Kind::Link
            } else if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else {
                Kind::Other
            }
        };
        match self {
            Tree::Beneath(root) => {
                let rd = if rel.as_os_str().is_empty() {
                    root.entries()?
                } else {
                    root.read_dir(rel)?
                };
                for e in rd {
                    let e = e?;
                    let ft = e.file_type()?;
                    let kind = if ft.is_symlink() {
                        Kind::Link
                    } else if ft.is_dir() {
                        Kind::Dir
                    } else if ft.is_file() {
                        Kind::File
                    } else {
                        Kind::Other
                    };
                    out.push((e.file_name().to_string_lossy().into_owned(), kind));
                }
            }
            Tree::Ambient(base) => {
                for e in std::fs::read_dir(base.join(rel))? {
                    let e = e?;
                    out.push((
                        e.file_name().to_string_lossy().into_owned(),
                        kind_of(e.file_type()?),
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// What `rel` is, following links (beneath the project directory only, in a job).
    fn kind_following(&self, rel: &Path) -> io::Result<Kind> {
        let md = match self {
            Tree::Beneath(root) => {
                if rel.as_os_str().is_empty() {
                    return Ok(Kind::Dir);
                }
                let m = root.metadata(rel)?;
                (m.is_dir(), m.is_file())
            }
            Tree::Ambient(base) => {
                let m = std::fs::metadata(base.join(rel))?;
                (m.is_dir(), m.is_file())
            }
        };
        Ok(match md {
            (true, _) => Kind::Dir,
            (_, true) => Kind::File,
            _ => Kind::Other,
        })
    }

    /// Opens `rel` for reading without blocking on a FIFO or device, and without making it the
    /// controlling terminal. The caller checks that it is a regular file.
    fn open(&self, rel: &Path) -> io::Result<std::fs::File> {
        let flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        match self {
            Tree::Beneath(root) => {
                use cap_std::fs::OpenOptionsExt as _;
                let mut o = cap_std::fs::OpenOptions::new();
                o.read(true).custom_flags(flags);
                Ok(root.open_with(rel, &o)?.into_std())
            }
            Tree::Ambient(base) => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(base.join(rel)),
        }
    }
}

/// `entry` as a path relative to the project directory, or `None` when it is absolute or has a
/// `..` component. Purely lexical: nothing is looked up.
fn relative_inside(entry: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(entry).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_glob(entry: &str) -> bool {
    entry.contains(['*', '?', '[', '{'])
}

/// A file found by a walk or named by an entry.
struct Found {
    rel: PathBuf,
    /// A link that leads outside the project directory (refused if selected).
    escapes: bool,
}

struct Walker<'a> {
    tree: &'a Tree,
    limits: &'a Limits,
    stop: &'a Stop,
    entries_seen: usize,
}

impl Walker<'_> {
    /// Every file below `dir` (links to files included, links to directories skipped, hidden
    /// entries skipped), in name order.
    fn walk(
        &mut self,
        entry: &str,
        dir: &Path,
        depth: usize,
        out: &mut Vec<Found>,
    ) -> Result<(), DeployError> {
        self.stop.check()?;
        let list = match self.tree.read_dir(dir) {
            Ok(l) => l,
            Err(e) if is_escape(&e) => return Err(leads_outside(entry)),
            // a directory that vanished or cannot be listed holds nothing to apply
            Err(_) => return Ok(()),
        };
        for (name, kind) in list {
            self.entries_seen += 1;
            if self.entries_seen > self.limits.entries {
                return Err(DeployError::Input(format!(
                    "FERRY_MANIFESTS: {entry:?}: more than {} directory entries to look at (the limit of one deploy, see docs/deploy.md); name the manifest directory itself",
                    self.limits.entries
                )));
            }
            if self.entries_seen.is_multiple_of(256) {
                self.stop.check()?;
            }
            if name.starts_with('.') {
                continue;
            }
            let rel = dir.join(&name);
            match kind {
                Kind::Dir => {
                    if depth + 1 > self.limits.depth {
                        return Err(DeployError::Input(format!(
                            "FERRY_MANIFESTS: {entry:?}: {} is more than {} directories deep (the limit, see docs/deploy.md)",
                            rel.display(),
                            self.limits.depth
                        )));
                    }
                    self.walk(entry, &rel, depth + 1, out)?;
                }
                Kind::File => out.push(Found {
                    rel,
                    escapes: false,
                }),
                Kind::Link => match self.tree.kind_following(&rel) {
                    Ok(Kind::File) => out.push(Found {
                        rel,
                        escapes: false,
                    }),
                    Err(e) if is_escape(&e) => out.push(Found { rel, escapes: true }),
                    // links to directories are not descended; dangling links hold nothing
                    _ => {}
                },
                Kind::Other => {}
            }
        }
        Ok(())
    }
}

fn leads_outside(entry: &str) -> DeployError {
    DeployError::Input(format!(
        "FERRY_MANIFESTS: {entry:?} leads outside the project directory; deploy jobs may only apply files of the project"
    ))
}

fn not_inside(entry: &str) -> DeployError {
    DeployError::Input(format!(
        "FERRY_MANIFESTS: {entry:?} is not a path inside the project directory; deploy jobs refuse absolute paths and `..`"
    ))
}

/// The literal directory a glob starts in (`deploy/**/*.yaml` → `deploy`), so only that part
/// of the project is walked.
fn glob_base(pattern: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    let comps: Vec<_> = pattern.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy();
        if i + 1 == comps.len() || is_glob(&s) {
            break;
        }
        base.push(c.as_os_str());
    }
    base
}

/// Expands FERRY_MANIFESTS entries (files, directories, globs) into files and reads them, within
/// `limits`. `confine` (deploy jobs): beneath `project_dir` only, see the module comment.
pub fn read_manifests(
    project_dir: &Path,
    entries: &[String],
    confine: bool,
    limits: &Limits,
    stop: &Stop,
) -> Result<Vec<ManifestFile>, DeployError> {
    // Lexical checks first: nothing is looked up for a refused entry.
    let mut rels = Vec::new();
    for entry in entries {
        let rel = if confine {
            relative_inside(entry).ok_or_else(|| not_inside(entry))?
        } else {
            // a workstation: anywhere; `./k8s` is shown as `k8s`
            relative_inside(entry).unwrap_or_else(|| PathBuf::from(entry))
        };
        rels.push(rel);
    }
    let tree = if confine {
        // The project directory itself must be a directory, not a link to one (O_NOFOLLOW):
        // everything else is resolved beneath this handle.
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(project_dir)
            .map_err(|e| {
                DeployError::Input(format!("project directory {}: {e}", project_dir.display()))
            })?;
        Tree::Beneath(cap_std::fs::Dir::from_std_file(dir))
    } else {
        Tree::Ambient(project_dir.to_path_buf())
    };
    let mut walker = Walker {
        tree: &tree,
        limits,
        stop,
        entries_seen: 0,
    };
    let mut selected: Vec<(String, Found)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (entry, rel) in entries.iter().zip(&rels) {
        let mut found = Vec::new();
        if is_glob(entry) {
            let pattern = rel.to_string_lossy().into_owned();
            let matcher = Glob::new(&pattern)
                .map_err(|e| {
                    DeployError::Input(format!("FERRY_MANIFESTS: invalid glob {entry:?}: {e}"))
                })?
                .compile_matcher();
            let base = glob_base(rel);
            let mut all = Vec::new();
            walker.walk(entry, &base, 0, &mut all)?;
            found.extend(all.into_iter().filter(|f| matcher.is_match(&f.rel)));
        } else {
            match tree.kind_following(rel) {
                Ok(Kind::Dir) => {
                    let mut all = Vec::new();
                    walker.walk(entry, rel, 0, &mut all)?;
                    found.extend(all.into_iter().filter(|f| is_manifest_file(&f.rel)));
                    if found.is_empty() {
                        return Err(DeployError::Input(format!(
                            "FERRY_MANIFESTS: directory {entry:?} holds no .yaml, .yml or .json file"
                        )));
                    }
                }
                Ok(Kind::File) => found.push(Found {
                    rel: rel.clone(),
                    escapes: false,
                }),
                Ok(_) => {
                    return Err(DeployError::Input(format!(
                        "FERRY_MANIFESTS: {entry:?} is neither a file nor a directory"
                    )));
                }
                Err(e) if confine && is_escape(&e) => return Err(leads_outside(entry)),
                Err(e) if e.kind() == io::ErrorKind::NotFound || !confine => {
                    return Err(DeployError::Input(format!(
                        "FERRY_MANIFESTS: {entry:?} does not exist in the project directory"
                    )));
                }
                Err(e) => {
                    return Err(DeployError::Input(format!(
                        "FERRY_MANIFESTS: {entry:?}: {e}"
                    )));
                }
            }
        }
        if found.is_empty() {
            return Err(DeployError::Input(format!(
                "FERRY_MANIFESTS: {entry:?} matches no file"
            )));
        }
        for f in found {
            if f.escapes {
                return Err(leads_outside(entry));
            }
            if seen.insert(f.rel.clone()) {
                selected.push((entry.clone(), f));
            }
        }
    }
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for (entry, f) in selected {
        stop.check()?;
        let display = f.rel.display().to_string();
        let text = read_one(&tree, &entry, &f.rel, &display, limits, &mut total, stop)?;
        out.push(ManifestFile { display, text });
    }
    Ok(out)
}

fn read_one(
    tree: &Tree,
    entry: &str,
    rel: &Path,
    display: &str,
    limits: &Limits,
    total: &mut u64,
    stop: &Stop,
) -> Result<String, DeployError> {
    let file = match tree.open(rel) {
        Ok(f) => f,
        Err(e) if is_escape(&e) => return Err(leads_outside(entry)),
        Err(e) => return Err(DeployError::Input(format!("{display}: cannot read: {e}"))),
    };
    let md = file
        .metadata()
        .map_err(|e| DeployError::Input(format!("{display}: cannot read: {e}")))?;
    if !md.is_file() {
        return Err(DeployError::Input(format!(
            "{display}: not a regular file; manifests must be plain files"
        )));
    }
    let too_big = |size: String| {
        DeployError::Input(format!(
            "{display}: {size} is over the limit of {} for one manifest file (docs/deploy.md, \"Limits\")",
            human_bytes(limits.file_bytes)
        ))
    };
    if md.len() > limits.file_bytes {
        return Err(too_big(human_bytes(md.len())));
    }
    let mut buf = Vec::with_capacity(md.len().min(limits.file_bytes) as usize);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut reader = file.take(limits.file_bytes + 1);
    loop {
        stop.check()?;
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DeployError::Input(format!("{display}: cannot read: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 > limits.file_bytes {
            return Err(too_big(format!(
                "more than {}",
                human_bytes(limits.file_bytes)
            )));
        }
        *total += n as u64;
        if *total > limits.total_bytes {
            return Err(DeployError::Input(format!(
                "{display}: the manifests add up to more than {}, the limit of one deploy (docs/deploy.md, \"Limits\")",
                human_bytes(limits.total_bytes)
            )));
        }
    }
    String::from_utf8(buf).map_err(|_| DeployError::Input(format!("{display}: not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn read(dir: &Path, entries: &[&str], limits: &Limits) -> Result<Vec<String>, String> {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        read_manifests(dir, &entries, true, limits, &Stop::default())
            .map(|fs| fs.into_iter().map(|f| f.display).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn files_dirs_globs() {
        let dir = tempfile::tempdir().unwrap();
        let k8s = dir.path().join("k8s");
        std::fs::create_dir_all(k8s.join("sub")).unwrap();
        std::fs::create_dir_all(k8s.join(".hidden")).unwrap();
        std::fs::write(k8s.join("b.yaml"), "b").unwrap();
        std::fs::write(k8s.join("a.yml"), "a").unwrap();
        std::fs::write(k8s.join("sub/c.json"), "c").unwrap();
        std::fs::write(k8s.join(".hidden/d.yaml"), "d").unwrap();
        std::fs::write(k8s.join("README.md"), "").unwrap();
        let l = Limits::default();
        assert_eq!(
            read(dir.path(), &["k8s/"], &l).unwrap(),
            vec!["k8s/a.yml", "k8s/b.yaml", "k8s/sub/c.json"]
        );
        assert_eq!(
            read(dir.path(), &["./k8s/*.yaml", "k8s/b.yaml"], &l).unwrap(),
            vec!["k8s/b.yaml"]
        );
        assert_eq!(
            read(dir.path(), &["**/*.json"], &l).unwrap(),
            vec!["k8s/sub/c.json"]
        );
        let e = read(dir.path(), &["nothing/"], &l).unwrap_err();
        assert!(e.contains("\"nothing/\" does not exist"), "{e}");
    }

    #[test]
    fn absolute_and_dotdot_are_refused_alike_before_any_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let l = Limits::default();
        let existing = read(dir.path(), &[&outside.path().display().to_string()], &l).unwrap_err();
        let missing = read(dir.path(), &["/nonexistent/ferry/x.yaml"], &l).unwrap_err();
        assert!(
            existing.contains("is not a path inside the project directory"),
            "{existing}"
        );
        assert_eq!(
            existing.replace(&outside.path().display().to_string(), "P"),
            missing.replace("/nonexistent/ferry/x.yaml", "P")
        );
        let e = read(dir.path(), &["k8s/../../etc/passwd"], &l).unwrap_err();
        assert!(
            e.contains("is not a path inside the project directory"),
            "{e}"
        );
        let e = read(dir.path(), &["../*.yaml"], &l).unwrap_err();
        assert!(
            e.contains("is not a path inside the project directory"),
            "{e}"
        );
    }

    #[test]
    fn links_out_are_refused_links_in_are_read_dir_links_not_descended() {
        let dir = tempfile::tempdir().unwrap();
        let victim_dir = tempfile::tempdir().unwrap();
        let victim = victim_dir.path().join("secret.yaml");
        std::fs::write(&victim, "kind: Secret\n").unwrap();
        let k8s = dir.path().join("k8s");
        std::fs::create_dir_all(k8s.join("loop")).unwrap();
        std::fs::write(k8s.join("app.yaml"), "a").unwrap();
        symlink("app.yaml", k8s.join("alias.yaml")).unwrap();
        for n in ["a", "b", "c"] {
            symlink(".", k8s.join("loop").join(n)).unwrap();
        }
        let l = Limits::default();
        assert_eq!(
            read(dir.path(), &["k8s/"], &l).unwrap(),
            vec!["k8s/alias.yaml", "k8s/app.yaml"]
        );
        assert_eq!(
            read(dir.path(), &["k8s/**"], &l).unwrap(),
            vec!["k8s/alias.yaml", "k8s/app.yaml"]
        );
        symlink(&victim, k8s.join("evil.yaml")).unwrap();
        let e = read(dir.path(), &["k8s/"], &l).unwrap_err();
        assert!(e.contains("leads outside the project directory"), "{e}");
        let e = read(dir.path(), &["k8s/evil.yaml"], &l).unwrap_err();
        assert!(e.contains("leads outside the project directory"), "{e}");
        std::fs::remove_file(k8s.join("evil.yaml")).unwrap();
        symlink(
            "../../../../../../../../../../../etc",
            dir.path().join("etc"),
        )
        .unwrap();
        let e = read(dir.path(), &["etc/passwd"], &l).unwrap_err();
        assert!(e.contains("leads outside the project directory"), "{e}");
        let e = read(dir.path(), &["etc/*"], &l).unwrap_err();
        assert!(e.contains("leads outside the project directory"), "{e}");
    }

    #[test]
    fn sizes_entries_and_depth_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let k8s = dir.path().join("k8s");
        std::fs::create_dir_all(&k8s).unwrap();
        std::fs::write(k8s.join("big.yaml"), vec![b'a'; 2048]).unwrap();
        std::fs::write(k8s.join("small.yaml"), vec![b'a'; 900]).unwrap();
        let l = Limits {
            file_bytes: 1000,
            total_bytes: 1500,
            entries: 5,
            depth: 2,
            rendered_bytes: 10_000,
        };
        let e = read(dir.path(), &["k8s/big.yaml"], &l).unwrap_err();
        assert!(
            e.contains("k8s/big.yaml: 2 KiB is over the limit of 1000 bytes for one manifest file"),
            "{e}"
        );
        std::fs::write(k8s.join("small2.yaml"), vec![b'a'; 900]).unwrap();
        let e = read(dir.path(), &["k8s/small.yaml", "k8s/small2.yaml"], &l).unwrap_err();
        assert!(
            e.contains("k8s/small2.yaml: the manifests add up to more than 1.5 KiB"),
            "{e}"
        );
        for i in 0..6 {
            std::fs::write(k8s.join(format!("f{i}.yaml")), "x").unwrap();
        }
        let e = read(dir.path(), &["k8s/"], &l).unwrap_err();
        assert!(e.contains("more than 5 directory entries"), "{e}");
        let deep = dir.path().join("d/1/2/3");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("x.yaml"), "x").unwrap();
        let e = read(dir.path(), &["d"], &l).unwrap_err();
        assert!(e.contains("directories deep"), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe.yaml");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(dir.path(), &["pipe.yaml"], &Limits::default()).unwrap_err();
        assert!(e.contains("neither a file nor a directory"), "{e}");
        // found by a walk: skipped (not a regular file)
        std::fs::write(dir.path().join("a.yaml"), "a").unwrap();
        assert_eq!(
            read(dir.path(), &["."], &Limits::default()).unwrap(),
            vec!["a.yaml"]
        );
    }

    #[test]
    fn a_project_directory_replaced_by_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real/k8s")).unwrap();
        std::fs::write(dir.path().join("real/k8s/a.yaml"), "a").unwrap();
        symlink("real", dir.path().join("project")).unwrap();
        let e = read(&dir.path().join("project"), &["k8s/"], &Limits::default()).unwrap_err();
        assert!(e.contains("project directory"), "{e}");
    }

    #[test]
    fn a_workstation_reads_anywhere_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let f = elsewhere.path().join("app.yaml");
        std::fs::write(&f, "a").unwrap();
        let entries = vec![f.display().to_string()];
        let got = read_manifests(
            dir.path(),
            &entries,
            false,
            &Limits::default(),
            &Stop::default(),
        )
        .unwrap();
        assert_eq!(got[0].text, "a");
        let small = Limits {
            file_bytes: 0,
            ..Limits::default()
        };
        let e = read_manifests(dir.path(), &entries, false, &small, &Stop::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("over the limit of 0 bytes"), "{e}");
    }

    #[test]
    fn cancel_stops_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a").unwrap();
        let stop = Stop::default();
        stop.cancel.cancel();
        let r = read_manifests(
            dir.path(),
            &["a.yaml".into()],
            true,
            &Limits::default(),
            &stop,
        );
        assert!(matches!(r, Err(DeployError::Cancelled)), "{r:?}");
    }
}
