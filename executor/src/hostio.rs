//! Small helpers shared by the host-side job stages (sources, cache, artifacts): job-log lines
//! in gitlab-runner's colours and lexical path cleaning. Every file access goes through
//! [`crate::jobfs`].

use std::io;
use std::path::{Component, Path, PathBuf};

use ferry_config::joblog;
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
        Level::Notice => joblog::notice_line(text),
        Level::Plain => format!("{text}\n"),
        Level::Warning => joblog::warning_line(text),
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
    fn human_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
