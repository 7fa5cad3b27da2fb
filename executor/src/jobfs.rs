//! The one place where ferry touches a job's files on the host (docs/security.md).
//!
//! A job is an attacker: while ferry archives or extracts, the job's containers may still be
//! running and can swap any entry for a link, a FIFO or a device node. So nothing here resolves
//! a job path from `/`: every access starts at a [`JobDir`], a directory handle opened from a
//! path whose parents no job can write, and goes down with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: a link anywhere on the way is an error, never
//! followed. Files are opened as `O_PATH` first and their type checked before they are read
//! (a FIFO never blocks, a device node is never opened); new files are created with `O_EXCL`
//! after whatever was in the way is removed. Everything here is blocking: callers run it in
//! `spawn_blocking`, under the job's deadline.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Instant, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use tokio_util::sync::CancellationToken;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Bounds on one host-side walk, copy or extraction (docs/security.md, "Bounded host work").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Entries (files, directories, links) visited or written.
    pub max_entries: u64,
    /// Bytes of file content read or written.
    pub max_bytes: u64,
    /// Directory depth below the start.
    pub max_depth: usize,
    /// The job's deadline and cancellation.
    pub cancel: CancellationToken,
    pub deadline: Option<Instant>,
}

/// Entries of one archive, cache or dependency: enough for any real project, small enough
/// that a hostile tree cannot keep the host busy for long.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Bytes of one archive's content (uncompressed).
pub const MAX_BYTES: u64 = 20 * 1024 * 1024 * 1024;
/// Directory depth.
pub const MAX_DEPTH: usize = 256;

impl Limits {
    pub fn new(cancel: CancellationToken) -> Limits {
        Limits {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_BYTES,
            max_depth: MAX_DEPTH,
            cancel,
            deadline: None,
        }
    }

    /// `Err` when the job was cancelled or its deadline passed.
    pub fn check_time(&self) -> io::Result<()> {
        if self.cancel.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "cancelled"));
        }
        Ok(())
    }
}

/// Counts entries and bytes against [`Limits`].
pub struct Budget<'a> {
    pub limits: &'a Limits,
    pub entries: u64,
    pub bytes: u64,
    /// [`Budget::copy`]'s buffer, allocated once: zeroing a fresh 256 KiB buffer for every file
    /// is far more work than copying a small file (docs/benchmarks.md, the cache benchmark).
    buf: Vec<u8>,
}

impl std::fmt::Debug for Budget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limits", &self.limits)
            .field("entries", &self.entries)
            .field("bytes", &self.bytes)
            .finish()
    }
}

const COPY_BUF: usize = 256 * 1024;

impl<'a> Budget<'a> {
    pub fn new(limits: &'a Limits) -> Budget<'a> {
        Budget {
            limits,
            entries: 0,
            bytes: 0,
            buf: Vec::new(),
        }
    }

    pub fn entry(&mut self) -> io::Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(limit_error(format!(
                "more than {} files and directories",
                self.limits.max_entries
            )));
        }
        self.limits.check_time()
    }

    pub fn bytes(&mut self, n: u64) -> io::Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(limit_error(format!(
                "more than {} of file content",
                crate::hostio::human_bytes(self.limits.max_bytes)
            )));
        }
        Ok(())
    }

    /// Copies `from` into `to` in chunks, counting bytes and checking the deadline.
    pub fn copy(&mut self, from: &mut impl Read, to: &mut impl io::Write) -> io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(COPY_BUF, 0);
        let r = self.copy_with(&mut buf, from, to);
        self.buf = buf;
        r
    }

    fn copy_with(
        &mut self,
        buf: &mut [u8],
        from: &mut impl Read,
        to: &mut impl io::Write,
    ) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let n = match from.read(buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.bytes(n as u64)?;
            self.limits.check_time()?;
            to.write_all(&buf[..n])?;
            total += n as u64;
        }
    }
}

/// The error of a limit that was hit; its text says which.
pub fn limit_error(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::QuotaExceeded,
        format!("limit reached: {what}"),
    )
}

/// Whether `e` is a hit limit or the deadline (the job must fail with it, not skip an entry).
pub fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::QuotaExceeded | io::ErrorKind::TimedOut
    )
}

/// Runs host file work off the async workers (a slow or hostile file system must never stall
/// the daemon).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("host file task failed: {e}")))?
}

/// Who reads a job's file variables in its container, from `image:docker:user` / `user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileReader {
    /// root, or a numeric `uid[:gid]`: files are that user's, mode 0600.
    Owner(u32, u32),
    /// A user named in the image's `/etc/passwd`, unknown on the host: mode 0644 (the
    /// directory above is ferry's, mode 0700, so no host user can read them).
    Named,
}

impl FileReader {
    pub fn for_user(user: Option<&str>) -> FileReader {
        let user = user.map(str::trim).unwrap_or("");
        if user.is_empty() || user == "root" {
            return FileReader::Owner(0, 0);
        }
        let (u, g) = user.split_once(':').unwrap_or((user, ""));
        match (u.parse::<u32>(), g.parse::<u32>()) {
            (Ok(uid), Ok(gid)) => FileReader::Owner(uid, gid),
            (Ok(uid), Err(_)) if g.is_empty() => FileReader::Owner(uid, uid),
            _ => FileReader::Named,
        }
    }
}

/// Writes a job's file variables into `dir` (a path of ferry's), created anew for the job so
/// that nothing a job left there (a link, a FIFO) is ever opened: the old directory is removed
/// first, each file is created with `O_EXCL`. `name` must be a plain file name.
pub fn write_files(dir: &Path, files: &[(String, &[u8])], reader: FileReader) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir)?,
        Ok(_) => std::fs::remove_file(dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let root = JobDir::create(dir, 0o755)?;
    let (mode, owner) = match reader {
        FileReader::Owner(uid, gid) => (0o600, Some((uid, gid))),
        FileReader::Named => (0o644, None),
    };
    for (name, content) in files {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid file variable name"),
            ));
        }
        let fd = rustix::fs::openat(
            &root.fd,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| errno(e, &dir.join(name)))?;
        let mut f = File::from(fd);
        io::Write::write_all(&mut f, content)?;
        JobDir::finish_file(&f, Some(mode), None, owner)?;
    }
    Ok(())
}

/// Removes a job's file variables (the directory [`write_files`] wrote) when the job ends.
pub fn remove_files(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What an entry is, read without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket, device node: never read, written or archived.
    Other,
}

impl Kind {
    pub fn of(meta: &Metadata) -> Kind {
        let ft = meta.file_type();
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// What a walk or a listing tells of an entry (the link itself for a link): one `fstatat`
/// of its name in its directory's handle, which never follows anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub len: u64,
    /// The permission bits, set-id and sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    fn of_stat(st: &rustix::fs::Stat) -> Meta {
        let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Directory => Kind::Dir,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        let mtime = u64::try_from(st.st_mtime)
            .ok()
            .and_then(|s| {
                std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
                    s,
                    (st.st_mtime_nsec as u32).min(999_999_999),
                ))
            })
            .unwrap_or(std::time::UNIX_EPOCH);
        Meta {
            kind,
            len: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

impl From<&Metadata> for Meta {
    fn from(m: &Metadata) -> Meta {
        Meta {
            kind: Kind::of(m),
            len: m.len(),
            mode: m.mode() & 0o7777,
            mtime: m.modified().unwrap_or(std::time::UNIX_EPOCH),
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

/// A directory handle every job path is resolved beneath.
#[derive(Debug)]
pub struct JobDir {
    fd: OwnedFd,
    /// For error messages only.
    shown: PathBuf,
}

fn errno(e: Errno, what: &Path) -> io::Error {
    let io: io::Error = e.into();
    match e {
        Errno::LOOP | Errno::XDEV => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: a symlink is in the way (links are never followed)",
                what.display()
            ),
        ),
        _ => io::Error::new(io.kind(), format!("{}: {io}", what.display())),
    }
}

/// `rel` as plain relative components (`.` dropped); `..`, `/` and prefixes are refused.
fn plain(rel: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a plain relative path", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

impl JobDir {
    /// Opens `path`, a directory whose parents only ferry can write (never a path a job chose).
    /// `path` itself must not be a link.
    pub fn open(path: &Path) -> io::Result<JobDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(e, path))?;
        Ok(JobDir {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// Creates `path` (and its parents, which must be ferry's) with `mode`, then opens it.
    pub fn create(path: &Path, mode: u32) -> io::Result<JobDir> {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            if std::fs::symlink_metadata(path).is_ok() {
                std::fs::remove_file(path)?;
            }
            std::fs::create_dir_all(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        JobDir::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The descriptor, e.g. for a child process to `fchdir` into.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn open_raw(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = plain(rel)?;
        let target: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        // openat2 refuses O_PATH with anything but these flags (EINVAL).
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&self.fd, target, flags, mode, RESOLVE) {
                Ok(fd) => return Ok(fd),
                // A concurrent rename anywhere on the system: openat2 asks to try again.
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                Err(Errno::NOSYS) => return self.open_walk(&rel, flags, mode),
                Err(e) => return Err(errno(e, &self.shown.join(&rel))),
            }
        }
    }

    /// openat2 is missing (Linux before 5.6): one component at a time, none of them a link.
    fn open_walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let comps: Vec<&OsStr> = rel.iter().collect();
        let shown = self.shown.join(rel);
        let Some((last, parents)) = comps.split_last() else {
            return rustix::fs::openat(&self.fd, ".", flags, mode).map_err(|e| errno(e, &shown));
        };
        let mut cur: Option<OwnedFd> = None;
        for c in parents {
            let base = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let next = rustix::fs::openat(
                base,
                *c,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(e, &shown))?;
            cur = Some(next);
        }
        let base = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
        rustix::fs::openat(base, *last, flags | OFlags::NOFOLLOW, mode)
            .map_err(|e| errno(e, &shown))
    }

    /// The metadata of `rel` itself (a link is described, not followed).
    pub fn lstat(&self, rel: &Path) -> io::Result<Metadata> {
        let fd = self.open_raw(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        File::from(fd).metadata()
    }

    /// The directory `rel` below this one.
    pub fn sub_dir(&self, rel: &Path) -> io::Result<JobDir> {
        let fd = self.open_raw(
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        Ok(JobDir {
            fd,
            shown: self.shown.join(rel),
        })
    }

    /// Opens the regular file `rel` for reading. Anything else (a link, FIFO, device node,
    /// directory) is refused before it is opened for reading.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        self.open_file_meta(rel).map(|(f, _)| f)
    }

    /// [`JobDir::open_file`], with the metadata of the file as opened.
    pub fn open_file_meta(&self, rel: &Path) -> io::Result<(File, Metadata)> {
        let path_fd = self.open_raw(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        let path_file = File::from(path_fd);
        let meta = path_file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", self.shown.join(rel).display()),
            ));
        }
        // Re-open the very inode that was checked (its O_PATH descriptor names it).
        let proc = format!("/proc/self/fd/{}", path_file.as_raw_fd());
        let fd = match rustix::fs::open(
            proc.as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // No /proc: open by name; the type is checked again below.
            Err(Errno::NOENT) => self.open_raw(
                rel,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
                Mode::empty(),
            )?,
            Err(e) => return Err(errno(e, &self.shown.join(rel))),
        };
        let file = File::from(fd);
        let again = file.metadata()?;
        if !again.is_file() || again.ino() != meta.ino() || again.dev() != meta.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: changed while being opened",
                    self.shown.join(rel).display()
                ),
            ));
        }
        Ok((file, again))
    }

    /// The target of the link `rel`.
    pub fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let fd = self.open_raw(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())
            .map_err(|e| errno(e, &self.shown.join(rel)))?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// The entries of the directory `rel`, sorted by name, with their metadata (not followed:
    /// `fstatat(AT_SYMLINK_NOFOLLOW)` of a single name in the directory's handle).
    pub fn list(&self, rel: &Path) -> io::Result<Vec<(OsString, Meta)>> {
        let dir = self.sub_dir(rel)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir.fd).map_err(|e| errno(e, &dir.shown))? {
            let entry = entry.map_err(|e| errno(e, &dir.shown))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            names.push(name.to_os_string());
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match rustix::fs::statat(&dir.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push((name, Meta::of_stat(&st))),
                // Removed in between: it is simply not there.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(errno(e, &dir.shown.join(&name))),
            }
        }
        Ok(out)
    }

    /// Creates the directory `rel` and its parents (mode `mode` for the ones created). A
    /// non-directory in the way is an error; nothing is followed.
    pub fn create_dir_all(&self, rel: &Path, mode: u32) -> io::Result<JobDir> {
        let rel = plain(rel)?;
        let mut cur = JobDir {
            fd: self.fd.try_clone()?,
            shown: self.shown.clone(),
        };
        for c in rel.iter() {
            match rustix::fs::mkdirat(&cur.fd, c, Mode::from_raw_mode(mode)) {
                Ok(()) => {
                    let d = cur.sub_dir(Path::new(c))?;
                    rustix::fs::fchmod(&d.fd, Mode::from_raw_mode(mode))
                        .map_err(|e| errno(e, &d.shown))?;
                    cur = d;
                }
                Err(Errno::EXIST) => {
                    cur = match cur.sub_dir(Path::new(c)) {
                        Ok(d) => d,
                        Err(_) if cur.lstat(Path::new(c)).is_ok_and(|m| m.is_symlink()) => {
                            return Err(errno(Errno::LOOP, &cur.shown.join(c)));
                        }
                        Err(e) => {
                            return Err(io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                format!("{e}: exists and is not a directory"),
                            ));
                        }
                    };
                }
                Err(e) => return Err(errno(e, &cur.shown.join(c))),
            }
        }
        Ok(cur)
    }

    /// The parent directory of `rel` (created) and the last component.
    fn parent_of<'p>(&self, rel: &'p Path, create: bool) -> io::Result<(JobDir, &'p OsStr)> {
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no file name", rel.display()),
            )
        })?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = if create {
            self.create_dir_all(parent, 0o777)?
        } else {
            self.sub_dir(parent)?
        };
        Ok((dir, name))
    }

    /// Creates the regular file `rel` (mode `mode`), replacing whatever was there (a file, a
    /// link, a directory tree); parents are created as needed.
    pub fn create_file(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let rel = plain(rel)?;
        let (dir, name) = self.parent_of(&rel, true)?;
        let f = dir.create_entry_file(name, mode)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(f)
    }

    /// Creates the regular file `name` in this directory with `O_EXCL | O_NOFOLLOW` (mode
    /// `mode` less the umask); whatever is in the way is removed, unfollowed, and the creation
    /// tried once more.
    fn create_entry_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let create = || {
            rustix::fs::openat(
                &self.fd,
                name,
                OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NOCTTY,
                Mode::from_raw_mode(mode),
            )
        };
        let fd = match create() {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                self.remove_entry(name)?;
                create().map_err(|e| errno(e, &self.shown.join(name)))?
            }
            Err(e) => return Err(errno(e, &self.shown.join(name))),
        };
        Ok(File::from(fd))
    }

    /// Creates the link `rel` -> `target`, replacing whatever was there. The target is stored,
    /// never resolved by ferry.
    pub fn symlink(&self, target: &Path, rel: &Path) -> io::Result<()> {
        let rel = plain(rel)?;
        let (dir, name) = self.parent_of(&rel, true)?;
        dir.create_entry_link(target, name)
    }

    /// Creates the link `name` -> `target` in this directory, replacing whatever was there.
    fn create_entry_link(&self, target: &Path, name: &OsStr) -> io::Result<()> {
        match rustix::fs::symlinkat(target, &self.fd, name) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                self.remove_entry(name)?;
                rustix::fs::symlinkat(target, &self.fd, name)
                    .map_err(|e| errno(e, &self.shown.join(name)))
            }
            Err(e) => Err(errno(e, &self.shown.join(name))),
        }
    }

    /// Removes `rel` whatever it is (a directory with everything below it); missing is fine.
    pub fn remove(&self, rel: &Path) -> io::Result<()> {
        let rel = plain(rel)?;
        if rel.as_os_str().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to remove the job directory itself",
            ));
        }
        let (dir, name) = match self.parent_of(&rel, false) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        dir.remove_entry(name)
    }

    /// Removes the entry `name` of this directory, not following it.
    fn remove_entry(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                // A directory: std's remove_dir_all opens each level with O_NOFOLLOW and never
                // leaves the tree; /proc/self/fd names this very directory.
                let fd_path = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
                if !fd_path.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "removing {}: /proc is not mounted",
                            self.shown.join(name).display()
                        ),
                    ));
                }
                let path = fd_path.join(name);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", self.shown.join(name).display()),
                    )),
                }
            }
            Err(e) => Err(errno(e, &self.shown.join(name))),
        }
    }

    /// Moves the entry `name` of this directory into `to` (same file system).
    pub fn move_entry(&self, name: &OsStr, to: &JobDir) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, name, &to.fd, name)
            .map_err(|e| errno(e, &self.shown.join(name)))
    }

    /// Sets the permission bits, modification time and (as root) owner of `file`.
    pub fn finish_file(
        file: &File,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        if let Some((uid, gid)) = owner {
            // Ownership first: chown clears set-id bits, and mode never keeps them anyway.
            let _ = rustix::fs::fchown(
                file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
        }
        if let Some(m) = mode {
            file.set_permissions(std::fs::Permissions::from_mode(m & 0o777))?;
        }
        if let Some(t) = mtime {
            file.set_modified(t)?;
        }
        Ok(())
    }

    /// Sets mode (and as root owner) of the directory `rel`.
    pub fn finish_dir(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
        let d = self.sub_dir(rel)?;
        if let Some((uid, gid)) = owner {
            let _ = rustix::fs::fchown(
                &d.fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
        }
        rustix::fs::fchmod(&d.fd, Mode::from_raw_mode(mode & 0o777)).map_err(|e| errno(e, &d.shown))
    }

    /// Walks `start` (a directory below this one, or this one for `""`) depth first, in name
    /// order, calling `visit` with each entry's path relative to this directory. Links are
    /// reported, never followed; `visit` returns whether to descend into a directory.
    pub fn walk(
        &self,
        start: &Path,
        budget: &mut Budget<'_>,
        visit: &mut dyn FnMut(&Path, &Meta) -> io::Result<bool>,
    ) -> io::Result<()> {
        let start = plain(start)?;
        // Pre-order, depth first: pending entries, next one last.
        let mut stack: Vec<(PathBuf, Meta, usize)> = Vec::new();
        let push_children =
            |stack: &mut Vec<(PathBuf, Meta, usize)>, dir: &Path, depth: usize| -> io::Result<()> {
                for (name, meta) in self.list(dir)?.into_iter().rev() {
                    stack.push((dir.join(name), meta, depth));
                }
                Ok(())
            };
        push_children(&mut stack, &start, 0)?;
        while let Some((rel, meta, depth)) = stack.pop() {
            budget.entry()?;
            if !visit(&rel, &meta)? || !meta.is_dir() {
                continue;
            }
            if depth + 1 >= budget.limits.max_depth {
                return Err(limit_error(format!(
                    "{}: deeper than {} directories",
                    rel.display(),
                    budget.limits.max_depth
                )));
            }
            match push_children(&mut stack, &rel, depth + 1) {
                Ok(()) => {}
                // Replaced by a link or removed while walking: nothing to read there.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.kind() == io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Creates the entries of an extraction beneath a [`JobDir`], one after the other, keeping
/// the handle of the directory the last one went into: the files of one directory then cost
/// one `openat` each instead of a resolution (`mkdirat` + `openat2`) of every level of their
/// path, and their mode and owner are set only when the creation did not already give them
/// (docs/benchmarks.md).
///
/// The kept handle stays beneath the root: this extraction only ever changes the tree at the
/// path of an entry it creates (and below), and every entry whose path is the kept directory or
/// one of its parents drops the handle first (a directory replaced by a link or a file
/// half-way is resolved again, and refused as before). A job can only move a directory by
/// `rename`, which stays within one mount and needs write access to where it goes; a file
/// created there with `O_EXCL | O_NOFOLLOW` is one the job could have written itself.
pub struct Creator<'a> {
    root: &'a JobDir,
    /// The last parent directory: its path (plain, relative to `root`), handle, and whether
    /// it is set-group-id (new files then take its group, not ferry's).
    last: Option<(PathBuf, JobDir, bool)>,
    /// The process's umask, when it could be read (else modes are always set explicitly).
    umask: Option<u32>,
    /// ferry's effective uid and gid: a new file's owner unless its directory says otherwise.
    ids: (u32, u32),
}

impl std::fmt::Debug for Creator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creator")
            .field("root", &self.root.shown)
            .finish()
    }
}

/// The umask, from /proc/self/status (Linux 4.7+): reading it with umask(2) would change it
/// for a moment for every thread of the daemon.
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

impl<'a> Creator<'a> {
    pub fn new(root: &'a JobDir) -> Creator<'a> {
        Creator {
            root,
            last: None,
            umask: current_umask(),
            // SAFETY: geteuid and getegid have no preconditions and cannot fail.
            ids: unsafe { (libc::geteuid(), libc::getegid()) },
        }
    }

    /// Something is about to be created or replaced at `rel` (plain): a kept handle of `rel`
    /// or of a directory below it is dropped.
    fn touching(&mut self, rel: &Path) {
        if self
            .last
            .as_ref()
            .is_some_and(|(p, _, _)| p.starts_with(rel))
        {
            self.last = None;
        }
    }

    /// The directory `parent` (created as needed with `mode`), kept for the next entries.
    fn parent(&mut self, parent: &Path, mode: u32) -> io::Result<&(PathBuf, JobDir, bool)> {
        if self.last.as_ref().is_none_or(|(p, _, _)| p != parent) {
            self.last = None;
            let dir = self.root.create_dir_all(parent, mode)?;
            let setgid = rustix::fs::fstat(&dir.fd)
                .map_err(|e| errno(e, &dir.shown))?
                .st_mode
                & libc::S_ISGID
                != 0;
            self.last = Some((parent.to_path_buf(), dir, setgid));
        }
        Ok(self.last.as_ref().expect("set above"))
    }

    fn split(rel: &Path) -> io::Result<(PathBuf, &OsStr)> {
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no file name", rel.display()),
            )
        })?;
        Ok((rel.parent().unwrap_or(Path::new("")).to_path_buf(), name))
    }

    /// The directory `rel` and its parents (see [`JobDir::create_dir_all`]); kept for the
    /// files that follow it.
    pub fn create_dir_all(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        let rel = plain(rel)?;
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        self.touching(&rel);
        self.parent(&rel, mode).map(drop)
    }

    /// Creates the regular file `rel` with the permission bits `mode & 0o777` and, when
    /// given, the owner `owner`, replacing whatever was there (see [`JobDir::create_file`]).
    pub fn create_file(
        &mut self,
        rel: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> io::Result<File> {
        let rel = plain(rel)?;
        let (parent, name) = Self::split(&rel)?;
        self.touching(&rel);
        let (umask, ids) = (self.umask, self.ids);
        let (_, dir, setgid) = self.parent(&parent, 0o777)?;
        let mode = mode & 0o777;
        let f = dir.create_entry_file(name, mode)?;
        if let Some((uid, gid)) = owner
            && ((uid, gid) != ids || *setgid)
        {
            // Only root gets here with another owner; chown clears set-id bits, which a
            // restored mode never has anyway.
            let _ = rustix::fs::fchown(
                &f,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
        }
        if umask.is_none_or(|u| mode & u != 0) {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(f)
    }

    /// Creates the link `rel` -> `target`, replacing whatever was there (see
    /// [`JobDir::symlink`]).
    pub fn symlink(&mut self, target: &Path, rel: &Path) -> io::Result<()> {
        let rel = plain(rel)?;
        let (parent, name) = Self::split(&rel)?;
        self.touching(&rel);
        let (_, dir, _) = self.parent(&parent, 0o777)?;
        dir.create_entry_link(target, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, JobDir) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("job");
        std::fs::create_dir(&root).unwrap();
        let d = JobDir::open(&root).unwrap();
        (t, d)
    }

    #[test]
    fn links_are_never_followed() {
        let (t, d) = setup();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::create_dir(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("file-link")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), d.path().join("dir-link")).unwrap();
        assert!(d.open_file(Path::new("file-link")).is_err());
        assert!(d.lstat(Path::new("file-link")).unwrap().is_symlink());
        assert!(d.open_file(Path::new("dir-link/x")).is_err());
        assert!(d.create_file(Path::new("dir-link/new"), 0o644).is_err());
        assert!(!t.path().join("outside/new").exists());
        // Replacing the link writes a new file in the job dir, not through the link.
        use std::io::Write;
        d.create_file(Path::new("file-link"), 0o644)
            .unwrap()
            .write_all(b"mine")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
        assert_eq!(
            std::fs::read_to_string(d.path().join("file-link")).unwrap(),
            "mine"
        );
        assert!(d.open_file(Path::new("../victim")).is_err());
        assert_eq!(
            d.read_link(Path::new("dir-link")).unwrap(),
            t.path().join("outside")
        );
        // Removing a link to a directory removes the link only.
        d.remove(Path::new("dir-link")).unwrap();
        assert!(t.path().join("outside").is_dir());
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let (_t, d) = setup();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let e = d.open_file(Path::new("fifo")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        use std::io::Write;
        d.create_file(Path::new("fifo"), 0o600)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
    }

    #[test]
    fn walks_are_bounded_and_do_not_enter_links() {
        let (_t, d) = setup();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(".", d.path().join("a/loop")).unwrap();
        let limits = Limits::new(CancellationToken::new());
        let mut seen = Vec::new();
        d.walk(Path::new(""), &mut Budget::new(&limits), &mut |p, _| {
            seen.push(p.to_path_buf());
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, ["a", "a/b", "a/b/f", "a/loop"].map(PathBuf::from));
        let small = Limits {
            max_entries: 2,
            ..Limits::new(CancellationToken::new())
        };
        let e = d
            .walk(Path::new(""), &mut Budget::new(&small), &mut |_, _| {
                Ok(true)
            })
            .unwrap_err();
        assert!(is_fatal(&e) && e.to_string().contains("more than 2"), "{e}");
        let cancelled = Limits::new(CancellationToken::new());
        cancelled.cancel.cancel();
        let e = d
            .walk(Path::new(""), &mut Budget::new(&cancelled), &mut |_, _| {
                Ok(true)
            })
            .unwrap_err();
        assert!(is_fatal(&e));
    }

    #[test]
    fn directories_are_created_never_through_links() {
        let (t, d) = setup();
        std::os::unix::fs::symlink(t.path(), d.path().join("up")).unwrap();
        assert!(d.create_dir_all(Path::new("up/x"), 0o777).is_err());
        assert!(!t.path().join("x").exists());
        d.create_dir_all(Path::new("p/q"), 0o755).unwrap();
        assert!(d.path().join("p/q").is_dir());
        d.remove(Path::new("p")).unwrap();
        assert!(!d.path().join("p").exists());
    }
}
