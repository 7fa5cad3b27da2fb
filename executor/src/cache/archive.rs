//! Writing and reading `cache.tar.zst`, and the manifest that tells whether anything changed.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::artifacts::Note;
use crate::artifacts::paths::{EntryKind, Selection, select};
use crate::hostio::open_regular;

use super::CacheSpec;

pub(super) const ARCHIVE_NAME: &str = "cache.tar.zst";
pub(super) const MANIFEST_NAME: &str = "manifest.json";
/// zstd level 3: zstd's default, fast enough that archiving is rarely the slow part.
const ZSTD_LEVEL: i32 = 3;

pub(super) enum Saved {
    NoFiles,
    UpToDate,
    Written {
        files: u64,
        bytes: u64,
        archive_bytes: u64,
    },
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    path: &'a str,
    kind: &'static str,
    mode: u32,
    size: u64,
    /// Whole seconds since the epoch, what a tar header keeps (a restored file must compare
    /// equal); directories' times are left out (they say nothing about the content).
    mtime: u64,
    target: Option<String>,
}

fn manifest(sel: &Selection) -> Vec<u8> {
    let entries: Vec<ManifestEntry<'_>> = sel
        .entries
        .iter()
        .map(|(path, e)| {
            let mtime = mtime_secs(e.mtime);
            // Restores drop set-uid/sticky bits, so only these can be compared.
            let mode = e.mode & 0o777;
            match &e.kind {
                EntryKind::Dir => ManifestEntry {
                    path,
                    kind: "dir",
                    mode,
                    size: 0,
                    mtime: 0,
                    target: None,
                },
                EntryKind::File { size } => ManifestEntry {
                    path,
                    kind: "file",
                    mode,
                    size: *size,
                    mtime,
                    target: None,
                },
                EntryKind::Symlink { target } => ManifestEntry {
                    path,
                    kind: "symlink",
                    mode: 0,
                    size: 0,
                    mtime: 0,
                    target: Some(target.to_string_lossy().into_owned()),
                },
            }
        })
        .collect();
    serde_json::to_vec(&entries).unwrap_or_default()
}

/// A unique temporary name inside `dir`, so that concurrent jobs never write the same file
/// and a reader only ever sees complete archives (they appear by `rename`).
fn temp_path(dir: &Path, what: &str) -> std::path::PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    dir.join(format!(".tmp-{what}-{}-{n}-{nanos}", std::process::id()))
}

/// Marks the archive as just used (eviction is least-recently-used by mtime).
pub(super) fn touch(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn mtime_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_tar(
    root: &Path,
    sel: &Selection,
    out: &Path,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let file = std::fs::File::create(out)?;
    let enc = zstd::Encoder::new(io::BufWriter::new(file), ZSTD_LEVEL)?;
    let mut tb = tar::Builder::new(enc);
    tb.follow_symlinks(false);
    for (rel, entry) in &sel.entries {
        if cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(entry.mode);
        h.set_mtime(mtime_secs(entry.mtime));
        h.set_uid(entry.uid as u64);
        h.set_gid(entry.gid as u64);
        match &entry.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tb.append_data(&mut h, format!("{rel}/"), io::empty())?;
            }
            EntryKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tb.append_link(&mut h, rel, target)?;
            }
            EntryKind::File { .. } => {
                let f = open_regular(&root.join(rel))?;
                let meta = f.metadata()?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                // take(): a file that grows while being read must not corrupt the archive.
                tb.append_data(&mut h, rel, f.take(meta.len()))?;
            }
        }
    }
    let enc = tb.into_inner()?;
    let mut w = enc.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Selects the cache paths, compares them with the stored manifest, and writes a new archive
/// when they differ.
pub(super) fn save(
    project_dir: &Path,
    spec: &CacheSpec,
    key_dir: &Path,
    cancel: &CancellationToken,
) -> io::Result<(Vec<Note>, Saved)> {
    let sel = select(project_dir, &spec.paths, &[], spec.untracked)?;
    let notes = sel.notes.clone();
    if sel.entries.is_empty() {
        return Ok((notes, Saved::NoFiles));
    }
    let archive = key_dir.join(ARCHIVE_NAME);
    let manifest_path = key_dir.join(MANIFEST_NAME);
    let new_manifest = manifest(&sel);
    if archive.is_file() && std::fs::read(&manifest_path).is_ok_and(|old| old == new_manifest) {
        touch(&archive);
        return Ok((notes, Saved::UpToDate));
    }
    std::fs::create_dir_all(key_dir)?;
    let tmp_archive = temp_path(key_dir, "archive");
    let tmp_manifest = temp_path(key_dir, "manifest");
    let result = (|| {
        if let Err(e) = write_tar(project_dir, &sel, &tmp_archive, cancel) {
            // evict() may have pruned the (then empty) key dir in between: once more.
            if e.kind() != io::ErrorKind::NotFound || key_dir.is_dir() {
                return Err(e);
            }
            std::fs::create_dir_all(key_dir)?;
            write_tar(project_dir, &sel, &tmp_archive, cancel)?;
        }
        std::fs::write(&tmp_manifest, &new_manifest)?;
        // Archive first: a manifest must never describe an archive that is not there yet.
        std::fs::rename(&tmp_archive, &archive)?;
        std::fs::rename(&tmp_manifest, &manifest_path)?;
        std::fs::metadata(&archive).map(|m| m.len())
    })();
    match result {
        Ok(archive_bytes) => Ok((
            notes,
            Saved::Written {
                files: sel.file_count() as u64,
                bytes: sel.total_bytes(),
                archive_bytes,
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_archive);
            let _ = std::fs::remove_file(&tmp_manifest);
            Err(e)
        }
    }
}

/// Extracts `archive` into `project_dir`. tar's `unpack_in` refuses entries that would land
/// outside the directory (`..`, absolute paths, a symlinked parent) and never writes through
/// an existing symlink. Returns the number of entries extracted.
pub(super) fn extract(
    archive: &Path,
    project_dir: &Path,
    cancel: &CancellationToken,
) -> io::Result<u64> {
    std::fs::create_dir_all(project_dir)?;
    let dec = zstd::Decoder::new(std::fs::File::open(archive)?)?;
    let mut ar = tar::Archive::new(dec);
    ar.set_preserve_mtime(true);
    // No set-uid bits on the host, whatever the job left in its files.
    ar.set_preserve_permissions(false);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    // As root, give files back their owners so that a non-root job user can write them.
    // SAFETY: geteuid has no preconditions and cannot fail.
    ar.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    let mut n = 0;
    for entry in ar.entries()? {
        if cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        if entry?.unpack_in(project_dir)? {
            n += 1;
        }
    }
    Ok(n)
}
