//! Keeping the cache dir bounded: archives (and git object caches) not used for `max_age` go
//! first, then the least recently used ones until the total is under `max_bytes`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::archive::{ARCHIVE_NAME, MANIFEST_NAME};
use super::tier;

/// What [`evict`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Cache archives and git object caches found.
    pub entries: usize,
    pub total_bytes: u64,
    pub removed: Vec<PathBuf>,
    pub removed_bytes: u64,
    /// Entries that could not be removed, with the reason (for the operator log).
    pub errors: Vec<String>,
}

/// Temporary files (and a prepared copy's temporary dirs) older than this are leftovers of a
/// crashed save or preparation (tier.rs gives up on a preparation well before).
pub(super) const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Item {
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    git: bool,
}

fn dir_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// A git object cache kept by `sources` (a bare repository with ferry's marker file).
pub(crate) const GIT_CACHE_MARKER: &str = "ferry-last-used";
pub(crate) const GIT_CACHE_LOCK: &str = "ferry.lock";

fn is_git_cache(dir: &Path) -> bool {
    dir.join(GIT_CACHE_MARKER).is_file() && dir.join("objects").is_dir()
}

/// Removes unused caches under `cache_dir` so that it stays under `max_bytes` and holds
/// nothing unused for longer than `max_age`. Safe to run while jobs use the cache: archives
/// are replaced by rename and read through open handles, and git object caches in use are
/// locked and skipped.
pub fn evict(
    cache_dir: &Path,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
) -> io::Result<EvictReport> {
    let mut report = EvictReport::default();
    if !cache_dir.is_dir() {
        return Ok(report);
    }
    let now = SystemTime::now();
    let mut items = Vec::new();
    let mut it = walkdir::WalkDir::new(cache_dir)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter();
    while let Some(e) = it.next() {
        let Ok(e) = e else { continue };
        let Ok(meta) = e.metadata() else { continue };
        let name = e.file_name().to_string_lossy();
        if meta.is_dir() && e.depth() == 1 && is_volume_dir(&name) {
            // A `"/path"` volume of `cache_dir`: the job's own files, never read as caches
            // (docs/security.md); the Docker eviction bounds these by age.
            it.skip_current_dir();
            continue;
        }
        if meta.is_dir()
            && e.depth() > 0
            && (name == tier::PREPARED_NAME || name.starts_with(".tmp-"))
        {
            // A prepared copy of a cache (tier.rs), ready or under way: the job's files,
            // never walked; counted with its archive below, or removed when stale.
            it.skip_current_dir();
            let key_dir = e.path().parent().unwrap_or(cache_dir);
            if name == tier::PREPARED_NAME && !key_dir.join(ARCHIVE_NAME).is_file() {
                tier::discard(key_dir, tier::PREPARED_NAME);
            } else if name.starts_with(".tmp-")
                && tier::temp_age(e.file_name(), meta.modified().ok())
                    .is_some_and(|age| age > STALE_TEMP)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
            continue;
        }
        if meta.is_dir() && is_git_cache(e.path()) {
            let last_used = std::fs::metadata(e.path().join(GIT_CACHE_MARKER))
                .and_then(|m| m.modified())
                .unwrap_or(now);
            items.push(Item {
                path: e.path().to_path_buf(),
                bytes: dir_size(e.path()),
                last_used,
                git: true,
            });
            it.skip_current_dir();
        } else if meta.is_file() && name == ARCHIVE_NAME {
            // Its prepared copy counts with it; one made from an archive this key no longer
            // has is removed (tier.rs).
            let key_dir = e.path().parent().unwrap_or(cache_dir);
            let prepared = tier::prepared_bytes(key_dir, e.path());
            if prepared.is_none() {
                tier::discard(key_dir, tier::PREPARED_NAME);
            }
            items.push(Item {
                path: e.path().to_path_buf(),
                bytes: meta.len() + prepared.unwrap_or(0),
                last_used: meta.modified().unwrap_or(now),
                git: false,
            });
        } else if meta.is_file()
            && name.starts_with(".tmp-")
            && meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    report.entries = items.len();
    report.total_bytes = items.iter().map(|i| i.bytes).sum();
    // Oldest first.
    items.sort_by_key(|i| i.last_used);
    let mut remaining = report.total_bytes;
    for item in items {
        let too_old = max_age.is_some_and(|age| {
            now.duration_since(item.last_used)
                .is_ok_and(|used_ago| used_ago > age)
        });
        let too_big = max_bytes.is_some_and(|max| remaining > max);
        if !too_old && !too_big {
            continue;
        }
        match remove_item(&item) {
            Ok(true) => {
                remaining -= item.bytes;
                report.removed_bytes += item.bytes;
                report.removed.push(item.path.clone());
            }
            Ok(false) => {}
            Err(e) => report
                .errors
                .push(format!("removing {}: {e}", item.path.display())),
        }
    }
    for removed in &report.removed {
        prune_emptied(cache_dir, removed);
    }
    Ok(report)
}

/// `runner-<short>-project-<id>[-concurrent-<n>]`: where `cache_dir` keeps the `"/path"`
/// volumes of jobs (`convert::cache_host_dir`).
fn is_volume_dir(name: &str) -> bool {
    name.starts_with("runner-") && name.contains("-project-")
}

/// Returns Ok(false) when the item is in use (a git cache locked by a running job).
fn remove_item(item: &Item) -> io::Result<bool> {
    if item.git {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a link: the lock file is created, and must be ferry's own.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(item.path.join(GIT_CACHE_LOCK))?;
        if !lock.metadata()?.is_file() {
            return Err(io::Error::other("the lock is not a regular file"));
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        std::fs::remove_dir_all(&item.path)?;
        return Ok(true);
    }
    std::fs::remove_file(&item.path)?;
    if let Some(dir) = item.path.parent() {
        tier::discard(dir, tier::PREPARED_NAME);
        let _ = std::fs::remove_file(dir.join(MANIFEST_NAME));
        let _ = std::fs::remove_file(dir.join(super::remote::STATE_NAME));
    }
    Ok(true)
}

/// Removes the directories `removed` leaves empty (the key dir whose archive went, and its
/// parents), keeping `root`. Only those: other empty directories under a cache root may be in
/// use, e.g. a `"/path"` volume directory under `cache_dir` created for a job that is about to
/// mount it.
fn prune_emptied(root: &Path, removed: &Path) {
    let mut dir = removed.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        // Fails (and is meant to) unless empty.
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
