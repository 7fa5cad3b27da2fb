//! Keeping ferry's data on the host bounded (docs/docker-executor.md, "Disk use"): one
//! least-recently-used rule for builds directories, Docker cache volumes and pulled images.
//! Things unused for longer than the age limit go; then, oldest first, things until the total
//! is under the size limit. Things in use are never removed but count towards the total.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The limits of one kind of data; `None` = no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Limits {
    /// Whether any limit is set (no pass is needed otherwise).
    pub fn any(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

/// One thing that may be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<K> {
    pub key: K,
    pub bytes: u64,
    pub last_used: SystemTime,
    /// Used by a running job or a container: never removed.
    pub in_use: bool,
}

/// Why a thing is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Unused for longer than the age limit.
    Age,
    /// The total is over the size limit and this is the least recently used.
    Size,
}

/// The walk over candidates, oldest first: [`Lru::verdict`] says whether to remove the next one,
/// [`Lru::removed`] takes its bytes off the total once it is gone (a removal that failed keeps
/// them, so the next candidate is considered in its place).
#[derive(Debug)]
pub struct Lru {
    limits: Limits,
    now: SystemTime,
    remaining: u64,
}

impl Lru {
    /// Sorts `items` oldest first and starts the walk with their total size.
    pub fn new<K>(items: &mut [Candidate<K>], limits: Limits, now: SystemTime) -> Lru {
        items.sort_by_key(|i| i.last_used);
        Lru {
            limits,
            now,
            remaining: items.iter().map(|i| i.bytes).sum(),
        }
    }

    /// Total bytes of what is still there.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long `item` has been unused (zero for a time in the future).
    pub fn unused_for<K>(&self, item: &Candidate<K>) -> Duration {
        self.now
            .duration_since(item.last_used)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether to remove `item` (the next in age order), and why.
    pub fn verdict<K>(&self, item: &Candidate<K>) -> Option<Reason> {
        if item.in_use {
            return None;
        }
        if self
            .limits
            .max_age
            .is_some_and(|age| self.unused_for(item) > age)
        {
            return Some(Reason::Age);
        }
        if self
            .limits
            .max_bytes
            .is_some_and(|max| self.remaining > max)
        {
            return Some(Reason::Size);
        }
        None
    }

    /// `bytes` of a removed item are gone.
    pub fn removed(&mut self, bytes: u64) {
        self.remaining = self.remaining.saturating_sub(bytes);
    }
}

/// One thing an eviction pass removed, for the operator log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// `builds dir`, `cache volume`, `image`.
    pub kind: &'static str,
    pub name: String,
    /// `None` when Docker does not say (volumes).
    pub bytes: Option<u64>,
    pub unused_for: Duration,
    pub reason: Reason,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "removed {} {} (", self.kind, self.name)?;
        if let Some(b) = self.bytes {
            write!(f, "{}, ", human_bytes(b))?;
        }
        write!(f, "unused for {}", human_age(self.unused_for))?;
        match self.reason {
            Reason::Age => write!(f, ", over the age limit)"),
            Reason::Size => write!(f, ", over the size limit)"),
        }
    }
}

/// What one pass over one kind of data did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub removed: Vec<Removed>,
    /// What could not be removed or listed, with the reason.
    pub errors: Vec<String>,
    /// Bytes left (of what has a known size).
    pub remaining_bytes: u64,
    /// Things left.
    pub remaining: usize,
}

/// Bytes of the regular files under `path`, links not followed.
pub fn dir_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The file whose modification time is the last use of a builds directory: written by ferry
/// (never by a job: jobs see only `src` and `tmp` below it) when a job claims the directory.
pub const BUILDS_LAST_USED: &str = "ferry-last-used";

/// Marks the builds directory `base` (the parent of a job's project dir) as used now.
pub fn touch_builds_dir(base: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(base)?;
    let marker = base.join(BUILDS_LAST_USED);
    // A fresh file each time: its mtime is the use. `base` is ferry's own directory.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&marker)?;
    f.set_modified(SystemTime::now())
}

/// The builds directories under `builds_root` (`<working dir>/builds`):
/// `<short token>/<slot>/project-<id>`, each with its size and last use (the marker's mtime,
/// else the directory's). Symbolic links are not followed and not listed.
pub fn builds_dirs(builds_root: &Path) -> Vec<Candidate<PathBuf>> {
    let mut out = Vec::new();
    let dirs = walkdir::WalkDir::new(builds_root)
        .follow_links(false)
        .follow_root_links(false)
        .min_depth(3)
        .max_depth(3)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .filter(|e| e.file_name().to_string_lossy().starts_with("project-"));
    for e in dirs {
        let path = e.into_path();
        let last_used = std::fs::symlink_metadata(path.join(BUILDS_LAST_USED))
            .or_else(|_| std::fs::symlink_metadata(&path))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        out.push(Candidate {
            bytes: dir_size(&path),
            key: path,
            last_used,
            in_use: false,
        });
    }
    out
}

/// `1.5 MB`-style size for the operator log (`kB` under a megabyte, powers of 1024).
pub fn human_bytes(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    const MB: f64 = KB * 1024.0;
    if bytes < 1 << 20 {
        format!("{:.0} kB", (bytes as f64 / KB).ceil())
    } else {
        format!("{:.1} MB", bytes as f64 / MB)
    }
}

/// `3d 4h`-style duration for the operator log.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, bytes: u64, hours_ago: u64, in_use: bool) -> Candidate<String> {
        Candidate {
            key: key.into(),
            bytes,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - hours_ago * 3600),
            in_use,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// Runs the walk, removing what it says unless `fails` names it.
    fn walk(
        mut items: Vec<Candidate<String>>,
        limits: Limits,
        fails: &[&str],
    ) -> (Vec<(String, Reason)>, u64) {
        let mut lru = Lru::new(&mut items, limits, now());
        let mut removed = Vec::new();
        for i in &items {
            if let Some(r) = lru.verdict(i)
                && !fails.contains(&i.key.as_str())
            {
                lru.removed(i.bytes);
                removed.push((i.key.clone(), r));
            }
        }
        (removed, lru.remaining())
    }

    #[test]
    fn least_recently_used_go_first_until_under_the_size() {
        let items = vec![
            item("new", 40, 1, false),
            item("old", 40, 10, false),
            item("mid", 40, 5, false),
        ];
        let limits = Limits {
            max_bytes: Some(50),
            max_age: None,
        };
        let (removed, left) = walk(items, limits, &[]);
        assert_eq!(
            removed,
            vec![("old".into(), Reason::Size), ("mid".into(), Reason::Size)]
        );
        assert_eq!(left, 40);
    }

    #[test]
    fn too_old_goes_even_under_the_size_and_in_use_never_goes() {
        let items = vec![
            item("busy-and-old", 500, 100, true),
            item("stale", 1, 50, false),
            item("fresh", 1, 1, false),
        ];
        let limits = Limits {
            max_bytes: Some(100),
            max_age: Some(Duration::from_secs(24 * 3600)),
        };
        // The in-use one keeps the total over the limit: everything else unused goes, it stays.
        let (removed, left) = walk(items, limits, &[]);
        assert_eq!(
            removed,
            vec![
                ("stale".into(), Reason::Age),
                ("fresh".into(), Reason::Size)
            ]
        );
        assert_eq!(left, 500);
    }

    #[test]
    fn a_failed_removal_keeps_its_bytes_and_the_next_one_goes() {
        let items = vec![item("a", 60, 3, false), item("b", 60, 2, false)];
        let limits = Limits {
            max_bytes: Some(70),
            max_age: None,
        };
        let (removed, left) = walk(items, limits, &["a"]);
        assert_eq!(removed, vec![("b".into(), Reason::Size)]);
        assert_eq!(left, 60);
    }

    #[test]
    fn no_limits_remove_nothing() {
        let items = vec![item("a", u64::MAX / 4, 200, false)];
        let (removed, _) = walk(items, Limits::default(), &[]);
        assert!(removed.is_empty());
        assert!(!Limits::default().any());
    }

    #[test]
    fn builds_dirs_are_found_sized_and_dated_by_their_marker() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("abc/0/project-1");
        let b = root.path().join("abc/1/project-2");
        std::fs::create_dir_all(a.join("src")).unwrap();
        std::fs::create_dir_all(b.join("src")).unwrap();
        std::fs::write(a.join("src/f"), vec![0u8; 1000]).unwrap();
        std::fs::write(b.join("src/f"), vec![0u8; 10]).unwrap();
        // A job's link out of its dir is neither followed nor counted.
        std::os::unix::fs::symlink("/usr", a.join("src/usr")).unwrap();
        // Something that is not a project dir is left alone.
        std::fs::create_dir_all(root.path().join("abc/0/other")).unwrap();
        touch_builds_dir(&a).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::create(b.join(BUILDS_LAST_USED))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut dirs = builds_dirs(root.path());
        dirs.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        assert_eq!((dirs[0].key.clone(), dirs[0].bytes), (a, 1000));
        assert_eq!((dirs[1].key.clone(), dirs[1].bytes), (b, 10));
        assert!(dirs[1].last_used < dirs[0].last_used);
        let age = SystemTime::now().duration_since(dirs[1].last_used).unwrap();
        assert!(age >= Duration::from_secs(7200), "{age:?}");
    }

    #[test]
    fn log_formats() {
        assert_eq!(human_bytes(3 << 20), "3.0 MB");
        assert_eq!(human_bytes(50_000), "49 kB");
        assert_eq!(human_age(Duration::from_secs(59)), "59s");
        assert_eq!(human_age(Duration::from_secs(3 * 86400 + 7200)), "3d 2h");
    }
}
