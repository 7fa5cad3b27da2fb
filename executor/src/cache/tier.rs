//! The prepared copy of the local tier (docs/sources-cache-artifacts.md, "Prepared copy";
//! docs/benchmarks.md): next to a key's archive, a tree already extracted from it by the same
//! extraction a restore runs, which the next restore moves into the project dir with
//! `rename(2)` instead of extracting.
//!
//! ```text
//! <key dir>/.ferry-prepared/archive     a hard link to the archive it was extracted from
//! <key dir>/.ferry-prepared/tree/       the extracted entries
//! <key dir>/.ferry-prepared/meta.json   what extraction returned, and how it was done
//! <key dir>/.tmp-prepare-…/             a copy being prepared (never read by a restore)
//! ```
//!
//! The rules that make it give exactly what an extraction of the archive gives:
//! - it is tied to the archive's inode by the hard link (archives are only ever replaced by
//!   `rename`, never written in place), which also keeps that inode number from being reused
//!   while the copy exists: a copy whose link is not the current archive is stale, removed;
//! - it appears only by `rename` of a complete temporary dir: a preparation killed half-way
//!   leaves a `.tmp-` dir no restore looks at (evict removes it after an hour);
//! - a restore takes it by renaming it to a name of its own first: one job only gets it, and
//!   eviction takes it the same way before removing it;
//! - it is used only when the extraction would have created the same entries: none of its
//!   top-level names exists in the project dir (anything there, a link included, and the
//!   restore extracts instead), the project dir has the group and set-group-id bit the copy's
//!   root had (new entries take their group from their parent), ferry runs as the same user,
//!   and the job's limits are the ones the copy was extracted within;
//! - entries are moved by `renameat2(RENAME_NOREPLACE)` between the copy's handle and the
//!   project dir's handle: never through a link, never over anything.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, RenameFlags};
use serde::{Deserialize, Serialize};

use super::archive::{self, ARCHIVE_NAME};
use crate::jobfs::{JobDir, Limits};

/// The ready copy of a key dir.
pub(super) const PREPARED_NAME: &str = ".ferry-prepared";
const LINK: &str = "archive";
const TREE: &str = "tree";
const META: &str = "meta.json";
/// A preparation gives up after this long, well before evict takes its `.tmp-` dir for a
/// leftover of a crash (`evict::STALE_TEMP`, one hour).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How the copy was made; a restore uses it only when its own would be the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// What the extraction returned (the restore reports it).
    files: u64,
    /// Bytes of the regular files of the tree (evict counts them).
    bytes: u64,
    /// The limits it was extracted within: (entries, bytes, depth).
    limits: (u64, u64, usize),
    /// ferry's effective uid and gid (as root, owners come from the archive).
    ids: (u32, u32),
    /// The group of the tree's root and whether it was set-group-id.
    root_group: (u32, bool),
}

fn ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

fn limits_of(l: &Limits) -> (u64, u64, usize) {
    (l.max_entries, l.max_bytes, l.max_depth)
}

fn group_of(meta: &std::fs::Metadata) -> (u32, bool) {
    (meta.gid(), meta.mode() & libc::S_ISGID != 0)
}

/// Why a restore did not use a prepared copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotUsed {
    /// There is none (not prepared yet, or taken by another job).
    None,
    /// It was made from another archive (removed).
    Stale,
    /// This entry of it is already in the project dir (kept for the next restore).
    Exists(OsString),
    /// It was made for another project dir group, user or limits (kept).
    Different(&'static str),
    /// The first move failed (e.g. another file system): nothing moved, the copy is kept
    /// (and no other is prepared while it is there).
    Unmovable(String),
    /// A later move failed: what was moved is what extraction writes; the rest is removed.
    Failed(String),
}

impl NotUsed {
    /// Whether the next copy is worth preparing after this restore extracted: not when the
    /// copy that was there could not be used (it is kept, or the moves cannot work here), nor
    /// when it was stale: an archive that changed since the last restore (a cache every job
    /// saves anew) would likely make the next copy stale too, so such keys pay for one
    /// preparation every other restore instead of one each (docs/sources-cache-artifacts.md).
    pub(super) fn prepare_next(&self) -> bool {
        matches!(self, NotUsed::None)
    }

    /// The job log's line, when there was a copy.
    pub(super) fn reason(&self) -> Option<String> {
        match self {
            NotUsed::None | NotUsed::Stale => None,
            NotUsed::Exists(name) => Some(format!(
                "{} is already in the project dir",
                Path::new(name).display()
            )),
            NotUsed::Different(what) => Some(format!("it was prepared for another {what}")),
            NotUsed::Unmovable(e) | NotUsed::Failed(e) => Some(e.clone()),
        }
    }
}

/// Removes a copy (ready or taken) after renaming it to a name of its own, so that nobody can
/// take it while it goes, nor have what they took removed.
pub(super) fn discard(key_dir: &Path, name: &str) {
    let own = archive::temp_path(key_dir, "discard");
    if std::fs::rename(key_dir.join(name), &own).is_ok() {
        let _ = std::fs::remove_dir_all(&own);
    }
}

/// Whether the copy in `dir` was made from the archive `archive` (same inode).
fn made_from(dir: &Path, archive: &Path) -> bool {
    match (
        std::fs::symlink_metadata(dir.join(LINK)),
        std::fs::symlink_metadata(archive),
    ) {
        (Ok(a), Ok(b)) => a.is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// The ready copy of `key_dir` and the bytes it adds to the cache dir, when it was made from
/// `archive` (for evict; a copy made from another archive is `None`).
pub(super) fn prepared_bytes(key_dir: &Path, archive: &Path) -> Option<u64> {
    let dir = key_dir.join(PREPARED_NAME);
    if !made_from(&dir, archive) {
        return None;
    }
    read_meta(&dir).map(|m| m.bytes)
}

/// Puts a taken copy back for the next restore (unless another one was prepared meanwhile).
fn put_back(taken: &Path, key_dir: &Path) {
    let back = rustix::fs::renameat_with(
        rustix::fs::CWD,
        taken,
        rustix::fs::CWD,
        key_dir.join(PREPARED_NAME),
        RenameFlags::NOREPLACE,
    );
    if back.is_err() {
        let _ = std::fs::remove_dir_all(taken);
    }
}

/// Restores `archive`'s prepared copy into `project_dir` by moving its entries there
/// (blocking; a handful of system calls per top-level entry). `Ok(files)` when it was used.
pub(super) fn take(
    key_dir: &Path,
    archive: &Path,
    project_dir: &Path,
    limits: &Limits,
) -> Result<u64, NotUsed> {
    let taken = archive::temp_path(key_dir, "taken");
    if std::fs::rename(key_dir.join(PREPARED_NAME), &taken).is_err() {
        return Err(NotUsed::None);
    }
    let meta = match read_meta(&taken) {
        Some(m) if made_from(&taken, archive) => m,
        _ => {
            let _ = std::fs::remove_dir_all(&taken);
            return Err(NotUsed::Stale);
        }
    };
    let result = move_into(&taken, &meta, project_dir, limits);
    match &result {
        Ok(_) | Err(NotUsed::Failed(_)) => {
            let _ = std::fs::remove_dir_all(&taken);
        }
        Err(_) => put_back(&taken, key_dir),
    }
    result
}

fn move_into(
    taken: &Path,
    meta: &Meta,
    project_dir: &Path,
    limits: &Limits,
) -> Result<u64, NotUsed> {
    let failed = |e: io::Error| NotUsed::Failed(e.to_string());
    if meta.ids != ids() {
        return Err(NotUsed::Different("user of ferry"));
    }
    if meta.limits != limits_of(limits) {
        return Err(NotUsed::Different("set of limits"));
    }
    // As the extraction does: the project dir is created if missing, never through a link.
    let project = JobDir::create(project_dir, 0o777).map_err(failed)?;
    let tree = JobDir::open(&taken.join(TREE)).map_err(failed)?;
    let project_meta = std::fs::File::from(project.as_fd().try_clone_to_owned().map_err(failed)?)
        .metadata()
        .map_err(failed)?;
    if group_of(&project_meta) != meta.root_group {
        return Err(NotUsed::Different("project dir group"));
    }
    let names: Vec<OsString> = tree
        .list(Path::new(""))
        .map_err(failed)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for name in &names {
        match rustix::fs::statat(project.as_fd(), name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => {}
            _ => return Err(NotUsed::Exists(name.clone())),
        }
    }
    for (i, name) in names.iter().enumerate() {
        let moved = rustix::fs::renameat_with(
            tree.as_fd(),
            name.as_os_str(),
            project.as_fd(),
            name.as_os_str(),
            RenameFlags::NOREPLACE,
        );
        if let Err(e) = moved {
            if i == 0 && e == rustix::io::Errno::EXIST {
                return Err(NotUsed::Exists(name.clone()));
            }
            let text = format!(
                "moving {} into {}: {}",
                Path::new(name).display(),
                project_dir.display(),
                io::Error::from(e)
            );
            // Nothing moved yet: the copy is kept for the next restore.
            return Err(if i == 0 {
                NotUsed::Unmovable(text)
            } else {
                NotUsed::Failed(text)
            });
        }
    }
    Ok(meta.files)
}

/// One preparation, for the operator log and the benchmark.
#[derive(Debug, Clone)]
pub struct Preparation {
    pub key_dir: PathBuf,
    /// Its wall time, from the start of the extraction to the copy in place.
    pub took: Duration,
    /// `Ok((files, bytes))` when a copy is ready; `Err` says why not (nothing to prepare is
    /// not an error: `Ok((0, 0))` with nothing in place is not reported at all).
    pub result: Result<(u64, u64), String>,
}

#[derive(Default)]
struct State {
    /// Key dirs with a preparation queued or running: one at a time per key.
    busy: HashSet<PathBuf>,
    done: Vec<Preparation>,
}

fn state() -> &'static Mutex<State> {
    static STATE: std::sync::OnceLock<Mutex<State>> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default)
}

/// One preparation runs at a time in this process: it is work taken off a job's path, not
/// work that disappeared, and the jobs running meanwhile need the CPU too.
fn permits() -> &'static Arc<tokio::sync::Semaphore> {
    static SEM: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SEM.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(1)))
}

/// Prepares the next copy of `key_dir`'s archive in the background, for a project dir like
/// `project_dir`, unless one is already queued or running for this key. Not when the two are
/// on different file systems (the moves could not work).
pub(super) fn prepare_in_background(key_dir: &Path, project_dir: &Path, limits: &Limits) {
    let same_fs = match (
        std::fs::symlink_metadata(key_dir),
        std::fs::symlink_metadata(project_dir),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    };
    if !same_fs {
        return;
    }
    let Ok(project_meta) = std::fs::symlink_metadata(project_dir) else {
        return;
    };
    {
        let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
        if !st.busy.insert(key_dir.to_path_buf()) {
            return;
        }
    }
    let busy = Busy(key_dir.to_path_buf());
    let group = group_of(&project_meta);
    let job_limits = limits_of(limits);
    tokio::spawn(async move {
        let permit = permits().clone().acquire_owned().await;
        // The key stays busy until the preparation ends, even if this task is dropped (a
        // runtime shutting down): spawn_blocking's closure then still runs to its end.
        let _ = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let start = Instant::now();
            let result = match prepare(&busy.0, group, job_limits) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => return,
                Err(e) => Err(e.to_string()),
            };
            let took = start.elapsed();
            let key_dir = busy.0.clone();
            match &result {
                Ok((files, bytes)) => tracing::debug!(
                    key_dir = %key_dir.display(), files, bytes, secs = took.as_secs_f64(),
                    "cache: prepared copy ready"
                ),
                Err(e) => tracing::info!(
                    key_dir = %key_dir.display(), error = %e,
                    "cache: no prepared copy (the next restore extracts)"
                ),
            }
            let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
            st.done.push(Preparation {
                key_dir,
                took,
                result,
            });
            // Bounded: only the latest reports are kept for whoever asks.
            let excess = st.done.len().saturating_sub(64);
            st.done.drain(..excess);
            // Its report first, then the key is free (Busy's drop takes the lock too).
            drop(st);
            drop(busy);
        })
        .await;
    });
}

/// A key with a preparation queued or running; no longer once this is dropped.
struct Busy(PathBuf);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
        st.busy.remove(&self.0);
    }
}

/// Waits until no preparation of a key dir under `under` is queued or running in this process,
/// and returns those under it that ended since the last call (the benchmark and tests;
/// `ferry run` logs them instead).
pub async fn preparations_done(under: &Path) -> Vec<Preparation> {
    loop {
        {
            let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
            if !st.busy.iter().any(|k| k.starts_with(under)) {
                let (mine, others) = std::mem::take(&mut st.done)
                    .into_iter()
                    .partition(|p| p.key_dir.starts_with(under));
                st.done = others;
                return mine;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Extracts `key_dir`'s archive into a new ready copy (blocking). `Ok(None)`: nothing to do
/// (no tar + zstd archive, or a copy of it is there already).
fn prepare(
    key_dir: &Path,
    (gid, setgid): (u32, bool),
    (max_entries, max_bytes, max_depth): (u64, u64, usize),
) -> io::Result<Option<(u64, u64)>> {
    let archive = key_dir.join(ARCHIVE_NAME);
    let mut magic = [0u8; 4];
    let is_tar = std::fs::File::open(&archive)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| magic == ZSTD_MAGIC);
    if !is_tar {
        // Zip archives (gitlab-runner's) are extracted at each restore.
        return Ok(None);
    }
    let ready = key_dir.join(PREPARED_NAME);
    if std::fs::symlink_metadata(&ready).is_ok() {
        if made_from(&ready, &archive) && read_meta(&ready).is_some() {
            return Ok(None);
        }
        discard(key_dir, PREPARED_NAME);
    }
    remove_leftovers(key_dir);
    let tmp = archive::temp_path(key_dir, "prepare");
    // Not create_dir_all: a key dir evict removed meanwhile is not created again.
    std::fs::create_dir(&tmp)?;
    let result = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        let link = tmp.join(LINK);
        std::fs::hard_link(&archive, &link)?;
        let tree_path = tmp.join(TREE);
        std::fs::create_dir(&tree_path)?;
        // The root takes the project dir's group and set-group-id bit, as far as ferry may
        // give them: the entries created in it then get what they get in the project dir.
        let tree_meta = {
            use std::os::unix::fs::chown;
            let _ = chown(&tree_path, None, Some(gid));
            let mode = 0o700 | if setgid { libc::S_ISGID } else { 0 };
            let _ = std::fs::set_permissions(&tree_path, std::fs::Permissions::from_mode(mode));
            std::fs::symlink_metadata(&tree_path)?
        };
        let root = JobDir::open(&tree_path)?;
        let limits = Limits {
            max_entries,
            max_bytes,
            max_depth,
            cancel: tokio_util::sync::CancellationToken::new(),
            deadline: Instant::now().checked_add(PREPARE_TIMEOUT),
        };
        // Through the link: the very archive the copy is tied to.
        let file = std::fs::File::open(&link)?;
        let dec = zstd::Decoder::new(file)?;
        let files = archive::unpack(archive::ReadAhead::new(dec), &root, &limits, None)?;
        let bytes = walkdir::WalkDir::new(&tree_path)
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let meta = Meta {
            files,
            bytes,
            limits: (max_entries, max_bytes, max_depth),
            ids: ids(),
            root_group: group_of(&tree_meta),
        };
        std::fs::write(
            tmp.join(META),
            serde_json::to_vec(&meta).map_err(io::Error::other)?,
        )?;
        if !made_from(&tmp, &archive) {
            return Err(io::Error::other("the archive was replaced meanwhile"));
        }
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &ready,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| io::Error::other(format!("putting the copy in place: {e}")))?;
        Ok(Some((files, bytes)))
    })();
    if !matches!(result, Ok(Some(_))) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Removes the `.tmp-prepare-` dirs of `key_dir` whose ferry process is gone (killed half-way;
/// archive::temp_path puts the pid first), so that runs of `ferry exec`, which never evicts,
/// do not pile them up. A pid in use again keeps its dir until evict finds it an hour old.
fn remove_leftovers(key_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(key_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|n| n.strip_prefix(".tmp-prepare-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() {
            continue;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// When a `.tmp-` entry of a key dir was named (archive::temp_path puts the time last), for
/// evict: a name that does not say is as old as its modification time says.
pub(super) fn temp_age(name: &std::ffi::OsStr, modified: Option<SystemTime>) -> Option<Duration> {
    let now = SystemTime::now();
    let named = std::str::from_utf8(name.as_bytes())
        .ok()
        .and_then(|n| n.rsplit('-').next())
        .and_then(|nanos| nanos.parse::<u64>().ok())
        .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos));
    named.or(modified).and_then(|t| now.duration_since(t).ok())
}
