//! Least privilege for host git (docs/security.md, "What git can reach"): each git process
//! ferry runs gets a private mount namespace in which the whole file system is read-only except
//! the directories that job's git must write (its project dir and its project's object cache).
//! A git bug exploited through files an earlier job left can then change nothing else on the
//! host. Set up between fork and exec with plain system calls (nothing is allocated there).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_int = 0x8000;

/// What the child does before exec: the writable directories and where to work.
pub(crate) struct Confinement {
    writable: Vec<CString>,
    /// chdir targets, in order (the project dir, then a path below it).
    cwd: Vec<CString>,
}

fn cstring(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

impl Confinement {
    pub(crate) fn new(writable: &[&Path], cwd: &[&Path]) -> Option<Confinement> {
        Some(Confinement {
            writable: writable.iter().map(|p| cstring(p)).collect::<Option<_>>()?,
            cwd: cwd.iter().map(|p| cstring(p)).collect::<Option<_>>()?,
        })
    }

    /// Runs in the child between fork and exec: only async-signal-safe system calls.
    ///
    /// # Safety
    /// Call only in a freshly forked child (a `pre_exec` hook).
    pub(crate) unsafe fn enter(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: plain system calls on pointers that live as long as `self`.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(err());
            }
            let root = c"/".as_ptr();
            if libc::mount(
                std::ptr::null(),
                root,
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            for w in &self.writable {
                if libc::mount(
                    w.as_ptr(),
                    w.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
            }
            let set = |path: *const libc::c_char, attr: &MountAttr| {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path,
                    AT_RECURSIVE,
                    attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            let readonly = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            if set(root, &readonly) != 0 {
                return Err(err());
            }
            let writable = MountAttr {
                attr_set: 0,
                attr_clr: MOUNT_ATTR_RDONLY,
                propagation: 0,
                userns_fd: 0,
            };
            for w in &self.writable {
                if set(w.as_ptr(), &writable) != 0 {
                    return Err(err());
                }
            }
            // The working directory was entered before the new mounts existed: enter it again
            // through them.
            for c in &self.cwd {
                if libc::chdir(c.as_ptr()) != 0 {
                    return Err(err());
                }
            }
        }
        Ok(())
    }
}

/// Whether this host lets ferry confine git (root with CAP_SYS_ADMIN, Linux 5.12 or newer);
/// the reason when it does not. Probed once, with a child that enters a confinement.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = std::env::temp_dir();
            let Some(c) = Confinement::new(&[&dir], &[&dir]) else {
                return Err("temporary directory path".into());
            };
            let mut cmd = std::process::Command::new("true");
            // SAFETY: `enter` makes only async-signal-safe system calls.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || c.enter());
            }
            match cmd.status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("the probe exited with {s}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .clone()
}
