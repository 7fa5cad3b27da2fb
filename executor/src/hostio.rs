//! Small helpers shared by the host-side job stages (sources, cache, artifacts): job-log lines
//! in gitlab-runner's colours, and path checks that never follow a symlink a job could plant.

use std::io;
use std::path::{Component, Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::engine::LogSink;

/// How gitlab-runner's shell writer colours its own lines (`Noticef`, `Warningf`, `Errorf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Notice,
    Plain,
    Warning,
}

pub(crate) fn line(level: Level, text: &str) -> String {
    match level {
        Level::Notice => format!("\x1b[32;1m{text}\x1b[0;m\n"),
        Level::Plain => format!("{text}\n"),
        Level::Warning => format!("\x1b[0;33mWARNING: {text}\x1b[0;m\n"),
    }
}

pub(crate) async fn write(log: &mut LogSink<'_>, level: Level, text: &str) -> io::Result<()> {
    log.write_all(line(level, text).as_bytes()).await
}

/// Lexically normalises a path given by a job (`./a/../b/`, `a//b`) into a relative path
/// inside the project dir. `None` when it is absolute or climbs above the project dir.
pub(crate) fn clean_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in Path::new(path).components() {
        match comp {
            Component::CurDir => {}
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `lstat` of `root/rel`, refusing to go through a symlink on the way: every parent component
/// must be a real directory. A job controls the project dir, so `dir -> /` must never lead
/// ferry (running on the host) to read or write outside it.
pub(crate) fn lstat_inside(root: &Path, rel: &Path) -> io::Result<std::fs::Metadata> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        let Component::Normal(c) = comp else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a plain relative path", rel.display()),
            ));
        };
        cur.push(c);
        let meta = std::fs::symlink_metadata(&cur)?;
        if i + 1 < comps.len() && !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a parent is a symlink or not a directory",
                    rel.display()
                ),
            ));
        }
        if i + 1 == comps.len() {
            return Ok(meta);
        }
    }
    std::fs::symlink_metadata(root)
}

/// Creates `root/rel` as a directory (and its parents, mode 0777), never through a symlink.
/// An existing non-directory in the way is an error.
pub(crate) fn create_dir_inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(c) = comp else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a plain relative path", rel.display()),
            ));
        };
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: exists and is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur)?;
                // As gitlab-runner's helper (umask 0000): a non-root job user can write here.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o777))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Removes whatever is at `path` (file, symlink or directory tree) without following symlinks.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens a file the job may have written, for reading: never follows a symlink, never blocks
/// on a FIFO, and refuses anything that is not a regular file.
pub(crate) fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Human size as gitlab-runner prints it (`12.3 MB`).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_refuses_escapes() {
        assert_eq!(clean_relative("./a/../b/"), Some(PathBuf::from("b")));
        assert_eq!(clean_relative("a//b"), Some(PathBuf::from("a/b")));
        assert_eq!(clean_relative("../x"), None);
        assert_eq!(clean_relative("a/../../x"), None);
        assert_eq!(clean_relative("/etc/passwd"), None);
        assert_eq!(clean_relative("."), Some(PathBuf::new()));
    }

    #[test]
    fn lstat_inside_does_not_cross_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        assert!(lstat_inside(dir.path(), Path::new("real/f")).is_ok());
        assert!(
            lstat_inside(dir.path(), Path::new("link"))
                .unwrap()
                .is_symlink()
        );
        assert!(lstat_inside(dir.path(), Path::new("link/passwd")).is_err());
        assert!(create_dir_inside(dir.path(), Path::new("link/sub")).is_err());
        assert!(create_dir_inside(dir.path(), Path::new("real/a/b")).is_ok());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
