//! Remote Docker daemons: the daemon cannot see ferry's host, so the job's builds directory is a
//! per-job Docker volume, filled from the host directory through the archive API before the
//! first step (`sync_in`) and copied back after the last one (`sync_out`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures::TryStreamExt;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::{DockerEngine, convert, docker_err, one_line};
use crate::engine::{EngineError, JobEnv};

/// Whether a Docker host address is a daemon on another machine, i.e. one that cannot see the
/// runner's files. Unix sockets and named pipes are local; `tcp://`, `http(s)://` and `ssh://`
/// are remote unless their address is loopback (`127.0.0.0/8`, `::1`, `localhost`) or
/// unspecified (`0.0.0.0`, `::`, which a client reaches on its own machine).
pub fn is_remote_host(host: &str) -> bool {
    let host = host.trim();
    let Some((scheme, rest)) = host.split_once("://") else {
        // A plain path is a Unix socket.
        return false;
    };
    match scheme.to_ascii_lowercase().as_str() {
        "tcp" | "http" | "https" | "ssh" => {}
        _ => return false,
    }
    // [user@]address[:port][/path]
    let authority = rest.split('/').next().unwrap_or("");
    let addr = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let name = if let Some(v6) = addr.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else if addr.matches(':').count() > 1 {
        // A bare IPv6 address.
        addr
    } else {
        addr.split(':').next().unwrap_or("")
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return false;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => !(ip.is_loopback() || ip.is_unspecified()),
        Err(_) => true,
    }
}

/// The per-job volume that holds `builds_dir` on a remote daemon.
pub fn builds_volume_name(env: &JobEnv) -> String {
    format!("{}-builds", convert::job_prefix(env))
}

/// Write `dir`'s tree as a tar stream, entries relative to `dir` (`./a`, `./b/c`): modes and
/// mtimes kept, symlinks stored as symlinks (never followed), owners left to the daemon.
pub fn write_tree<W: io::Write>(dir: &Path, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

/// Unpack a tar stream into `dest` (which must exist). Every entry must stay inside `dest`: an
/// absolute path, a `..` component, or a write through a symlink that points out of `dest` is an
/// error naming the entry. When `strip` is given, entries must start with that directory name,
/// which is removed (the form of Docker's archive of a directory).
pub fn unpack_tree<R: io::Read>(input: R, dest: &Path, strip: Option<&str>) -> io::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let bad = |p: &Path, why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("archive entry {}: {why}", p.display()),
        )
    };
    let mut dirs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut rel = PathBuf::new();
        let mut stripped = strip.is_none();
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::Normal(n) if !stripped => {
                    if Some(n) != strip.map(std::ffi::OsStr::new) {
                        return Err(bad(&path, "outside the directory that was asked for"));
                    }
                    stripped = true;
                }
                Component::Normal(n) => rel.push(n),
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(bad(&path, "escapes the builds directory"));
                }
            }
        }
        if rel.as_os_str().is_empty() {
            // The root itself: it exists already.
            continue;
        }
        // A hard link must point inside too.
        if let Some(target) = entry.link_name()?
            && entry.header().entry_type().is_hard_link()
            && target
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(&path, "hard link escapes the builds directory"));
        }
        let target = dest.join(&rel);
        // Never write through a symlink: every parent must be a real directory inside `dest`.
        let mut cur = dest.to_path_buf();
        let parents: Vec<_> = rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for c in parents {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(bad(&path, "would be written through a symlink"));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => std::fs::remove_file(&cur)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Replace what is there unless both are directories.
        if let Ok(m) = std::fs::symlink_metadata(&target)
            && !(m.is_dir() && entry.header().entry_type().is_dir())
        {
            if m.is_dir() {
                std::fs::remove_dir_all(&target)?;
            } else {
                std::fs::remove_file(&target)?;
            }
        }
        if entry.header().entry_type().is_hard_link() {
            // Docker writes hard-link targets with the same prefix as the entries.
            let Some(link) = entry.link_name()? else {
                continue;
            };
            let mut lrel = PathBuf::new();
            let mut skipped = strip.is_none();
            for c in link.components() {
                if let Component::Normal(n) = c {
                    if skipped {
                        lrel.push(n);
                    } else {
                        skipped = true;
                    }
                }
            }
            std::fs::hard_link(dest.join(lrel), &target)?;
            continue;
        }
        if entry.header().entry_type().is_dir() {
            // A read-only directory (a Go module cache) would refuse its own entries: its mode
            // is set once everything is written.
            std::fs::create_dir_all(&target)?;
            if let Ok(mode) = entry.header().mode() {
                dirs.push((target, mode));
            }
            continue;
        }
        entry.unpack(&target)?;
    }
    for (dir, mode) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

/// Remove everything inside `dir`, keeping `dir`.
fn clear_dir(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> EngineError {
    move |e| EngineError::Docker(format!("{what}: {e}"))
}

impl DockerEngine {
    /// Create the per-job builds volume (labelled with the job, so `destroy` removes it).
    pub(super) async fn create_builds_volume(&self, env: &JobEnv) -> Result<String, EngineError> {
        let name = builds_volume_name(env);
        // A volume of the same name from a crashed attempt of this job.
        let _ = self
            .docker
            .remove_volume(
                &name,
                Some(
                    bollard::query_parameters::RemoveVolumeOptionsBuilder::new()
                        .force(true)
                        .build(),
                ),
            )
            .await;
        self.docker
            .create_volume(bollard::models::VolumeCreateOptions {
                name: Some(name.clone()),
                labels: Some(convert::job_labels(env, "builds")),
                ..Default::default()
            })
            .await
            .map_err(|e| docker_err(&format!("creating builds volume {name}"), &e))?;
        Ok(name)
    }

    /// Copy `host_builds_dir` into the build container's `builds_dir` (a tar stream, built while
    /// it is sent).
    pub(super) async fn upload_builds(&self, env: &JobEnv) -> Result<(), EngineError> {
        let container = convert::build_container_name(env);
        let dir = env.host_builds_dir.clone();
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        let writer_task = tokio::task::spawn_blocking(move || {
            write_tree(&dir, SyncIoBridge::new(writer)).map(drop)
        });
        let body = bollard::body_try_stream(ReaderStream::new(reader));
        let opts = UploadToContainerOptions {
            path: env.builds_dir.clone(),
            ..Default::default()
        };
        let sent = self
            .docker
            .upload_to_container(&container, Some(opts), body)
            .await;
        let written = writer_task
            .await
            .map_err(|e| EngineError::Docker(format!("archiving the builds directory: {e}")))?;
        // The archive error is the cause when both fail (the upload sees a cut stream).
        written.map_err(io_err(format!(
            "archiving {} for the remote daemon",
            env.host_builds_dir.display()
        )))?;
        sent.map_err(|e| {
            docker_err(
                &format!("copying the builds directory into {container}"),
                &e,
            )
        })
    }

    /// Replace the contents of `host_builds_dir` with the build container's `builds_dir`.
    pub(super) async fn download_builds(&self, env: &JobEnv) -> Result<(), EngineError> {
        let container = convert::build_container_name(env);
        let builds = env.builds_dir.trim_end_matches('/');
        let root = Path::new(builds)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let opts = DownloadFromContainerOptions {
            path: if builds.is_empty() {
                "/".into()
            } else {
                builds.into()
            },
        };
        let stream = self
            .docker
            .download_from_container(&container, Some(opts))
            .map_err(|e| io::Error::other(one_line(&e)));
        let reader = StreamReader::new(Box::pin(stream));
        // Unpack next to the host directory, then swap: a failed copy leaves the old tree.
        let host = env.host_builds_dir.clone();
        let staging = {
            let mut s = host.clone().into_os_string();
            s.push(".ferry-sync");
            PathBuf::from(s)
        };
        let result = tokio::task::spawn_blocking({
            let staging = staging.clone();
            move || -> io::Result<()> {
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)?;
                }
                std::fs::create_dir_all(&staging)?;
                unpack_tree(SyncIoBridge::new(reader), &staging, root.as_deref())?;
                std::fs::create_dir_all(&host)?;
                clear_dir(&host)?;
                for e in std::fs::read_dir(&staging)? {
                    let e = e?;
                    std::fs::rename(e.path(), host.join(e.file_name()))?;
                }
                std::fs::remove_dir(&staging)
            }
        })
        .await
        .map_err(|e| EngineError::Docker(format!("copying the builds directory back: {e}")))?;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        result.map_err(io_err(format!(
            "copying {builds} from {container} to {}",
            env.host_builds_dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_detection() {
        for local in [
            "unix:///var/run/docker.sock",
            "/var/run/docker.sock",
            "npipe:////./pipe/docker_engine",
            "tcp://127.0.0.1:2375",
            "tcp://127.1.2.3:2375",
            "tcp://localhost:2375",
            "tcp://LOCALHOST",
            "http://localhost:2375/",
            "https://docker.localhost:2376",
            "tcp://[::1]:2375",
            "tcp://::1",
            "tcp://0.0.0.0:2375",
            "ssh://me@localhost",
        ] {
            assert!(!is_remote_host(local), "{local} is local");
        }
        for remote in [
            "tcp://other-host:2375",
            "tcp://10.0.0.5:2375",
            "https://docker.example.com:2376",
            "http://192.168.1.2",
            "tcp://[2001:db8::1]:2376",
            "ssh://user@build-host",
            "ssh://user@build-host:2222/path",
            "tcp://128.0.0.1:2375",
        ] {
            assert!(is_remote_host(remote), "{remote} is remote");
        }
    }

    #[test]
    fn tree_round_trip_keeps_modes_symlinks_and_git() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("p/.git/refs")).unwrap();
        std::fs::write(src.path().join("p/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(src.path().join("p/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.path().join("p/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("run.sh", src.path().join("p/link")).unwrap();
        let tar = write_tree(src.path(), Vec::new()).unwrap();

        let dst = tempfile::tempdir().unwrap();
        unpack_tree(&tar[..], dst.path(), None).unwrap();
        let p = dst.path().join("p");
        assert_eq!(
            std::fs::read_to_string(p.join(".git/HEAD")).unwrap(),
            "ref: refs/heads/main\n"
        );
        assert!(p.join(".git/refs").is_dir());
        let mode = std::fs::metadata(p.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(p.join("link")).unwrap(),
            Path::new("run.sh")
        );
    }

    fn tar_with(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind.is_file() { 2 } else { 0 });
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        // `set_path` refuses `..`; write the name bytes directly, as a hostile archive would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn unpack_refuses_entries_escaping_the_directory() {
        let dst = tempfile::tempdir().unwrap();
        let inner = dst.path().join("in");
        std::fs::create_dir(&inner).unwrap();
        for (path, kind, link) in [
            ("../evil", tar::EntryType::Regular, None),
            ("builds/../../evil", tar::EntryType::Regular, None),
            ("/etc/evil", tar::EntryType::Regular, None),
            ("builds/h", tar::EntryType::Link, Some("../../etc/passwd")),
        ] {
            let t = tar_with(path, kind, link);
            let err = unpack_tree(&t[..], &inner, Some("builds")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{path}: {err}");
        }
        assert!(!dst.path().join("evil").exists());

        // A symlink out of the directory, then a file written through it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_path("builds/out").unwrap();
        h.set_link_name(dst.path()).unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_path("builds/out/evil").unwrap();
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let err = unpack_tree(&t[..], &inner, Some("builds")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!dst.path().join("evil").exists());
    }

    #[test]
    fn unpack_strips_the_directory_name() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o600);
        h.set_path("builds/g/p/out.txt").unwrap();
        h.set_cksum();
        b.append(&h, &b"ok"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack_tree(&t[..], dst.path(), Some("builds")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("g/p/out.txt")).unwrap(),
            "ok"
        );
        let t = tar_with("other/x", tar::EntryType::Regular, None);
        assert!(unpack_tree(&t[..], dst.path(), Some("builds")).is_err());
    }
}
