//! Writing and reading `cache.tar.zst`, and the manifest that tells whether anything changed.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::artifacts::Note;
use crate::artifacts::paths::{EntryKind, Selection, select};
use crate::compression::CompressionLevel;
use crate::jobfs::{Budget, Creator, JobDir, Limits, is_fatal};

use super::remote::Piece;
use super::{CacheFormat, CacheSpec};

pub(super) const ARCHIVE_NAME: &str = "cache.tar.zst";
pub(super) const MANIFEST_NAME: &str = "manifest.json";

pub(super) enum Saved {
    NoFiles,
    UpToDate,
    Written {
        files: u64,
        bytes: u64,
        archive_bytes: u64,
    },
}

/// One entry of a cache manifest. [`manifest`] (from the files selected) and
/// [`manifest_of_archive`] (from a downloaded archive) build them the same way, so the two
/// compare byte for byte when they describe the same files.
#[derive(Serialize)]
struct ManifestEntry {
    path: String,
    kind: &'static str,
    mode: u32,
    size: u64,
    /// Whole seconds since the epoch, what a tar header keeps (a restored file must compare
    /// equal); directories' times are left out (they say nothing about the content).
    mtime: u64,
    target: Option<String>,
}

impl ManifestEntry {
    /// `mode`: the permission bits only (restores drop set-uid/sticky bits).
    fn dir(path: String, mode: u32) -> Self {
        ManifestEntry {
            path,
            kind: "dir",
            mode: mode & 0o777,
            size: 0,
            mtime: 0,
            target: None,
        }
    }

    fn file(path: String, mode: u32, size: u64, mtime: u64) -> Self {
        ManifestEntry {
            path,
            kind: "file",
            mode: mode & 0o777,
            size,
            mtime,
            target: None,
        }
    }

    fn symlink(path: String, target: Option<String>) -> Self {
        ManifestEntry {
            path,
            kind: "symlink",
            mode: 0,
            size: 0,
            mtime: 0,
            target,
        }
    }
}

fn manifest(sel: &Selection) -> Vec<u8> {
    let entries: Vec<ManifestEntry> = sel
        .entries
        .iter()
        .map(|(path, e)| match &e.kind {
            EntryKind::Dir => ManifestEntry::dir(path.to_string(), e.mode),
            EntryKind::File { size } => {
                ManifestEntry::file(path.to_string(), e.mode, *size, mtime_secs(e.mtime))
            }
            EntryKind::Symlink { target } => ManifestEntry::symlink(
                path.to_string(),
                Some(target.to_string_lossy().into_owned()),
            ),
        })
        .collect();
    serde_json::to_vec(&entries).unwrap_or_default()
}

/// Whether the file starts with `magic` (the other format's: the archive must be rewritten).
fn magic_is(archive: &Path, magic: &[u8]) -> bool {
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(archive)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == magic)
}

/// The manifest [`save`] would write for the files in a ferry archive (tar + zstd, entries in
/// the order [`write_tar`] writes them): what a restore of it leaves on disk.
fn manifest_of_archive(archive: &Path, limits: &Limits) -> io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(archive)?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)?;
    if magic != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not tar + zstd"));
    }
    let dec = zstd::Decoder::new(std::fs::File::open(archive)?)?;
    let mut ar = tar::Archive::new(dec);
    let mut out = Vec::new();
    for entry in ar.entries()? {
        limits.check_time()?;
        let entry = entry?;
        let h = entry.header();
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mode = h.mode()?;
        let kind = h.entry_type();
        out.push(if kind.is_dir() {
            ManifestEntry::dir(path, mode)
        } else if kind.is_symlink() {
            let target = entry.link_name()?.map(|t| t.to_string_lossy().into_owned());
            ManifestEntry::symlink(path, target)
        } else if kind.is_file() {
            ManifestEntry::file(path, mode, h.size()?, h.mtime()?)
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a ferry archive",
            ));
        });
    }
    serde_json::to_vec(&out).map_err(io::Error::other)
}

/// A unique temporary name inside `dir`, so that concurrent jobs never write the same file
/// and a reader only ever sees complete archives (they appear by `rename`).
pub(super) fn temp_path(dir: &Path, what: &str) -> std::path::PathBuf {
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

/// zstd workers for one archive: the host's cores, at most 4 (concurrent jobs share them).
fn compression_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32)
}

/// Where the pieces of an archive being written go to be uploaded at once (mod.rs).
pub(super) type Pieces = tokio::sync::mpsc::Sender<Piece>;

/// The archive file, whose bytes are also passed on in pieces of [`Tee::PIECE`] to an upload
/// while it is written; an upload that gave up (its receiver gone) is no longer fed.
struct Tee {
    file: std::fs::File,
    buf: Vec<u8>,
    to: Option<Pieces>,
}

impl Tee {
    const PIECE: usize = 1024 * 1024;

    fn send(&mut self) {
        if let Some(to) = &self.to
            && !self.buf.is_empty()
        {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
            if to.blocking_send(Piece::Data(piece.into())).is_err() {
                self.to = None;
            }
        }
    }
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.file.write(data)?;
        if self.to.is_some() {
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() >= Self::PIECE {
                self.send();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `level`'s zstd level: by default 3, zstd's own default, fast enough that archiving is rarely
/// the slow part. With `pieces`, a handle of the file, then the archive's bytes are also sent
/// there as they are written.
fn write_tar(
    root: &JobDir,
    sel: &Selection,
    out: &Path,
    limits: &Limits,
    level: CompressionLevel,
    mut pieces: Option<Pieces>,
) -> io::Result<()> {
    // Readable too: the upload reads the archive back from it (remote.rs).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)?;
    if let Some(to) = &pieces
        && to.blocking_send(Piece::File(file.try_clone()?)).is_err()
    {
        pieces = None;
    }
    let file = Tee {
        file,
        buf: Vec::with_capacity(if pieces.is_some() { Tee::PIECE } else { 0 }),
        to: pieces,
    };
    let mut enc = zstd::Encoder::new(io::BufWriter::new(file), level.zstd())?;
    // Compression runs in zstd's worker threads while this thread reads the files, as
    // `tar | zstd` does with two processes (docs/benchmarks.md). The output is one ordinary
    // zstd stream.
    enc.multithread(compression_workers())?;
    let mut tb = tar::Builder::new(enc);
    tb.follow_symlinks(false);
    for (rel, entry) in &sel.entries {
        limits.check_time()?;
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
            EntryKind::File { size } => {
                let (f, meta) = root.open_file_meta(Path::new(rel))?;
                let len = meta.len().min(*size);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                // take(): a file that grows while being read is cut at its selected size
                // (the selection's byte count is bounded); one that shrank fails the archive.
                tb.append_data(&mut h, rel, f.take(len))?;
            }
        }
    }
    let enc = tb.into_inner()?;
    let mut w = enc.finish()?;
    w.flush()?;
    let mut tee = w.into_inner().map_err(|e| e.into_error())?;
    tee.send();
    tee.file.sync_all()
}

/// Selects the cache paths, compares them with the stored manifest, and writes a new archive
/// when they differ. With `pieces` (tar + zstd only), a new archive's bytes are sent there as
/// they are written, then a [`Piece::Commit`] once it is in place; nothing is committed when
/// the archive had to be written twice.
pub(super) fn save(
    project_dir: &Path,
    spec: &CacheSpec,
    key_dir: &Path,
    limits: &Limits,
    (format, level): (CacheFormat, CompressionLevel),
    mut pieces: Option<Pieces>,
) -> io::Result<(Vec<Note>, Saved)> {
    let root = JobDir::open(project_dir)?;
    let sel = select(&root, &spec.paths, &[], spec.untracked, limits)?;
    let notes = sel.notes.clone();
    if sel.entries.is_empty() {
        return Ok((notes, Saved::NoFiles));
    }
    let archive = key_dir.join(ARCHIVE_NAME);
    let manifest_path = key_dir.join(MANIFEST_NAME);
    let new_manifest = manifest(&sel);
    // The format is part of "unchanged": switching CACHE_COMPRESSION_FORMAT rewrites the archive.
    let same_format = match format {
        CacheFormat::TarZstd => !magic_is(&archive, b"PK"),
        CacheFormat::Zip => !magic_is(&archive, &[0x28, 0xb5, 0x2f, 0xfd]),
    };
    if same_format
        && archive.is_file()
        && std::fs::read(&manifest_path).is_ok_and(|old| old == new_manifest)
    {
        touch(&archive);
        return Ok((notes, Saved::UpToDate));
    }
    // An archive without its manifest was downloaded from the distributed cache (remote.rs):
    // when it holds exactly these files it is kept, and so is the remote object.
    if same_format
        && archive.is_file()
        && !manifest_path.exists()
        && manifest_of_archive(&archive, limits).is_ok_and(|m| m == new_manifest)
    {
        let tmp = temp_path(key_dir, "manifest");
        if std::fs::write(&tmp, &new_manifest)
            .and_then(|()| std::fs::rename(&tmp, &manifest_path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        touch(&archive);
        return Ok((notes, Saved::UpToDate));
    }
    std::fs::create_dir_all(key_dir)?;
    let tmp_archive = temp_path(key_dir, "archive");
    let tmp_manifest = temp_path(key_dir, "manifest");
    let result = (|| {
        let write = |pieces: Option<Pieces>| match format {
            CacheFormat::TarZstd => write_tar(&root, &sel, &tmp_archive, limits, level, pieces),
            CacheFormat::Zip => crate::artifacts::write_cache_zip(&root, &sel, &tmp_archive, level),
        };
        if let Err(e) = write(pieces.clone()) {
            // evict() may have pruned the (then empty) key dir in between: once more.
            if e.kind() != io::ErrorKind::NotFound || key_dir.is_dir() {
                return Err(e);
            }
            std::fs::create_dir_all(key_dir)?;
            // What was sent is not this archive: that upload is dropped.
            pieces = None;
            write(None)?;
        }
        std::fs::write(&tmp_manifest, &new_manifest)?;
        // Archive first: a manifest must never describe an archive that is not there yet.
        std::fs::rename(&tmp_archive, &archive)?;
        std::fs::rename(&tmp_manifest, &manifest_path)?;
        let len = std::fs::metadata(&archive).map(|m| m.len())?;
        if let Some(p) = pieces.take() {
            let _ = p.blocking_send(Piece::Commit(len));
        }
        Ok(len)
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

/// Extracts `archive` into `project_dir`, entry by entry beneath the project dir's handle:
/// `..` and absolute paths are refused, nothing is written through a link (whatever is in the
/// way is replaced), only directories, regular files and links are created, within `limits`.
/// Returns the number of entries extracted.
///
/// The format is told by the first bytes, as gitlab-runner's extractor does: ferry's (and
/// gitlab-runner's `tarzstd`) tar + zstd, or gitlab-runner's default zip (deflate, or zstd
/// entries with `CACHE_COMPRESSION_FORMAT=zipzstd`), so caches gitlab-runner uploaded to a
/// shared store restore here. Zip entries are unpacked by the artifacts' safe extractor.
pub(super) fn extract(
    archive: &Path,
    project_dir: &Path,
    limits: &Limits,
) -> io::Result<(Vec<Note>, u64)> {
    let root = JobDir::create(project_dir, 0o777)?;
    let mut f = std::fs::File::open(archive)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    drop(f);
    match &magic[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] => {
            let dec = zstd::Decoder::new(std::fs::File::open(archive)?)?;
            Ok((
                Vec::new(),
                unpack(ReadAhead::new(dec), &root, limits, None)?,
            ))
        }
        [b'P', b'K', ..] => {
            let summary = crate::artifacts::extract_cache_zip(archive, &root, limits)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            Ok((summary.notes, summary.files as u64))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a cache archive (neither tar + zstd nor zip)",
        )),
    }
}

/// Chunks read ahead from a reader by a thread of its own: an archive is decompressed while
/// this thread creates the files of the part before (as `zstd -d | tar -x` does with two
/// processes; docs/benchmarks.md). At most [`ReadAhead::CHUNKS`] chunks wait; the thread
/// ends at the end of the input, at an error (passed on) or when this side is dropped.
pub(super) struct ReadAhead {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the thread to be filled again.
    spare: std::sync::mpsc::SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ReadAhead {
    const CHUNKS: usize = 4;
    const CHUNK: usize = 256 * 1024;

    pub(super) fn new(mut inner: impl Read + Send + 'static) -> ReadAhead {
        let (tx, chunks) = std::sync::mpsc::sync_channel(Self::CHUNKS);
        let (spare, spares) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::CHUNKS + 2);
        std::thread::spawn(move || {
            loop {
                let mut buf = spares.try_recv().unwrap_or_default();
                buf.resize(Self::CHUNK, 0);
                let r = loop {
                    match inner.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r,
                    }
                };
                let end = matches!(r, Ok(0) | Err(_));
                let msg = r.map(|n| {
                    buf.truncate(n);
                    buf
                });
                if tx.send(msg).is_err() || end {
                    return;
                }
            }
        });
        ReadAhead {
            chunks,
            spare,
            cur: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            let next = match self.chunks.recv() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(io::Error::other("the decompressing thread ended early"));
                }
            };
            if next.is_empty() {
                self.done = true;
            }
            let old = std::mem::replace(&mut self.cur, next);
            let _ = self.spare.try_send(old);
            self.pos = 0;
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpacks a tar stream beneath `root` (see [`extract`]). With `strip`, entries must start
/// with that directory name, which is removed (Docker's archive API names the copied
/// directory first). As root, files get their owners back so that a non-root job user can
/// write them; set-id bits are never kept.
pub(crate) fn unpack(
    reader: impl Read,
    root: &JobDir,
    limits: &Limits,
    strip: Option<&str>,
) -> io::Result<u64> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut ar = tar::Archive::new(reader);
    let mut budget = Budget::new(limits);
    let mut creator = Creator::new(root);
    let mut n = 0;
    // Directory modes are set last: a read-only directory (a Go module cache) would refuse
    // its own entries.
    let mut dirs = Vec::new();
    for entry in ar.entries()? {
        budget.entry()?;
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        // A cache archive's stray entry is skipped (the rest is restored, as before); a copy
        // of a directory (`strip`) must be whole.
        let rel = match entry_path(&raw, strip) {
            Ok(r) => r,
            Err(_) if strip.is_none() => continue,
            Err(e) => return Err(e),
        };
        let link_rel = if entry.header().entry_type().is_hard_link() {
            match entry.link_name()?.map(|t| entry_path(&t, strip)) {
                Some(Ok(t)) => Some(t),
                Some(Err(_)) if strip.is_none() => continue,
                Some(Err(e)) => return Err(e),
                None => continue,
            }
        } else {
            None
        };
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644);
        let mtime = h
            .mtime()
            .ok()
            // A header's mtime can be any u64: `SystemTime + Duration` would panic.
            .and_then(|s| UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)));
        let owner = if as_root {
            match (h.uid(), h.gid()) {
                (Ok(u), Ok(g)) => u32::try_from(u).ok().zip(u32::try_from(g).ok()),
                _ => None,
            }
        } else {
            None
        };
        let kind = h.entry_type();
        let result = (|| -> io::Result<bool> {
            if rel.as_os_str().is_empty() {
                // The project dir itself keeps its own mode and owner.
                return Ok(false);
            }
            if kind.is_dir() {
                creator.create_dir_all(&rel, 0o777)?;
                dirs.push((rel.clone(), mode, owner));
                return Ok(true);
            }
            if kind.is_symlink() {
                let Some(target) = entry.link_name()? else {
                    return Ok(false);
                };
                creator.symlink(&target, &rel)?;
                return Ok(true);
            }
            if let Some(target) = &link_rel {
                // A second name of a file already unpacked: copied, so that no link ever
                // reaches what the host resolves.
                let mut src = root.open_file(target)?;
                let mut out = creator.create_file(&rel, mode, owner)?;
                budget.copy(&mut src, &mut out)?;
                JobDir::finish_file(&out, None, mtime, None)?;
                return Ok(true);
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                // FIFOs, device nodes: never created on the host.
                return Ok(false);
            }
            let mut out = creator.create_file(&rel, mode, owner)?;
            budget.copy(&mut entry, &mut out)?;
            JobDir::finish_file(&out, None, mtime, None)?;
            Ok(true)
        })();
        match result {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("{}: {e}", rel.display())));
            }
        }
    }
    for (rel, mode, owner) in dirs.into_iter().rev() {
        root.finish_dir(&rel, mode, owner)?;
    }
    Ok(n)
}

/// An entry's path relative to the directory unpacked into; with `strip`, the first
/// component must be that name. Anything else is an error naming the entry.
fn entry_path(raw: &Path, strip: Option<&str>) -> io::Result<std::path::PathBuf> {
    use std::path::Component;
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("archive entry {}: {why}", raw.display()),
        )
    };
    let mut rel = std::path::PathBuf::new();
    let mut stripped = strip.is_none();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) if !stripped => {
                if Some(n) != strip.map(std::ffi::OsStr::new) {
                    return Err(bad("outside the directory that was asked for"));
                }
                stripped = true;
            }
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(bad("escapes the directory it is unpacked into"));
            }
        }
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str, u32),
        Link(&'a str, &'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, p, io::empty()).unwrap();
                }
                E::File(p, body, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(body.len() as u64);
                    b.append_data(&mut h, p, body.as_bytes()).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack_into(dir: &Path, entries: &[E]) -> io::Result<u64> {
        let root = JobDir::create(dir, 0o777).unwrap();
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        unpack(&tar_of(entries)[..], &root, &limits, None)
    }

    /// The extraction keeps the last directory's handle (jobfs::Creator): an archive that
    /// replaces that directory, or one of its parents, by a link half-way must not get the
    /// files after it written through the link, nor into the directory it replaced.
    #[test]
    fn a_directory_replaced_by_a_link_half_way_is_never_written_through() {
        for (replaced, later) in [("d", "d/b"), ("d", "d/e/b"), ("d/e", "d/e/b")] {
            let t = tempfile::tempdir().unwrap();
            let (p, outside) = (t.path().join("p"), t.path().join("outside"));
            std::fs::create_dir_all(outside.join("e")).unwrap();
            let e = unpack_into(
                &p,
                &[
                    E::Dir("d/"),
                    E::Dir("d/e/"),
                    E::File("d/e/a", "first", 0o644),
                    E::File("d/a", "first", 0o644),
                    E::File("d/e/c", "first", 0o644),
                    E::Link(replaced, outside.to_str().unwrap()),
                    E::File(later, "pwned", 0o644),
                ],
            )
            .unwrap_err();
            assert!(e.to_string().contains("a symlink is in the way"), "{e}");
            assert!(
                std::fs::symlink_metadata(p.join(replaced))
                    .unwrap()
                    .is_symlink()
            );
            let mut found = Vec::new();
            for entry in walkdir(&outside) {
                found.push(entry);
            }
            assert_eq!(found, ["e"], "{replaced} then {later}: {found:?}");
        }
    }

    fn walkdir(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                out.push(
                    e.path()
                        .strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// A directory replaced by a file half-way: the entries below it after that are errors,
    /// the file stays.
    #[test]
    fn a_directory_replaced_by_a_file_half_way() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("p");
        let e = unpack_into(
            &p,
            &[
                E::Dir("d/"),
                E::File("d/a", "first", 0o644),
                E::File("d", "now a file", 0o644),
                E::File("d/b", "second", 0o644),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("d/b"), "{e}");
        assert_eq!(std::fs::read_to_string(p.join("d")).unwrap(), "now a file");
    }

    /// Files and links already there are replaced, never written through; modes are exact
    /// whatever the umask (set explicitly only when the umask would have changed them).
    #[test]
    fn existing_entries_are_replaced_and_modes_are_exact() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let (p, victim) = (t.path().join("p"), t.path().join("victim"));
        std::fs::write(&victim, "secret").unwrap();
        std::fs::create_dir_all(p.join("d/sub")).unwrap();
        std::fs::write(p.join("d/sub/deep"), "old").unwrap();
        std::os::unix::fs::symlink(&victim, p.join("d/link")).unwrap();
        std::fs::write(p.join("d/old"), "old").unwrap();
        let n = unpack_into(
            &p,
            &[
                E::File("d/link", "new", 0o644),
                E::File("d/old", "new", 0o664),
                E::File("d/sub", "new", 0o600),
                E::File("d/x", "new", 0o777),
                E::File("d/y", "new", 0o400),
                E::Link("d/z", "../victim"),
                E::Link("d/z", "elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(n, 7);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
        for (name, mode) in [
            ("link", 0o644),
            ("old", 0o664),
            ("sub", 0o600),
            ("x", 0o777),
            ("y", 0o400),
        ] {
            let m = std::fs::symlink_metadata(p.join("d").join(name)).unwrap();
            assert!(m.is_file(), "{name}");
            assert_eq!(m.permissions().mode() & 0o7777, mode, "{name}");
            assert_eq!(
                std::fs::read_to_string(p.join("d").join(name)).unwrap(),
                "new"
            );
        }
        assert_eq!(
            std::fs::read_link(p.join("d/z")).unwrap(),
            Path::new("elsewhere")
        );
    }

    #[test]
    fn read_ahead_passes_every_byte_and_errors_on() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut got = Vec::new();
        ReadAhead::new(io::Cursor::new(data.clone()))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
        let failing = io::Cursor::new(vec![1u8; 600_000]).chain(FailingReader);
        let mut got = Vec::new();
        let e = ReadAhead::new(failing).read_to_end(&mut got).unwrap_err();
        assert_eq!(e.to_string(), "broken input");
        assert_eq!(got.len(), 600_000);
    }

    struct FailingReader;

    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("broken input"))
        }
    }

    /// A tar header's mtime is any u64 (base-256 in GNU headers): `UNIX_EPOCH + Duration`
    /// panicked on it ("overflow when adding duration to instant"); the entry is restored.
    #[test]
    fn an_absurd_mtime_does_not_panic() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_mtime(u64::MAX);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, "f.txt", &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = JobDir::create(dir.path(), 0o777).unwrap();
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        unpack(&data[..], &root, &limits, None).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f.txt")).unwrap(), b"hi");
    }
}
