//! Remote Docker daemons: the daemon cannot see ferry's host, so the job's builds directory is a
//! per-job Docker volume, filled from the host directory through the archive API before the
//! first step (`sync_in`) and copied back after the last one (`sync_out`).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use futures::TryStreamExt;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::{DockerEngine, convert, docker_err, one_line};
use crate::engine::{EngineError, JobEnv};
use crate::jobfs::{self, Budget, JobDir, Kind, Limits};

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

/// The per-job volume that holds the project dir on a remote daemon.
pub fn builds_volume_name(env: &JobEnv) -> String {
    format!("{}-builds", convert::job_prefix(env))
}

/// The per-job volume that holds the file variables (`<project dir>.tmp`) on a remote daemon.
pub fn tmp_volume_name(env: &JobEnv) -> String {
    format!("{}-tmp", convert::job_prefix(env))
}

/// Write the tree of `dir` as a tar stream, entries relative to it (`./a`, `./b/c`): modes and
/// mtimes kept, links stored as links (never followed), FIFOs and device nodes left out,
/// owners left to the daemon. Read through [`JobDir`], within `limits`.
pub fn write_tree<W: io::Write>(dir: &JobDir, out: W, limits: &Limits) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut budget = Budget::new(limits);
    let mut entries = Vec::new();
    dir.walk(Path::new(""), &mut budget, &mut |rel, meta| {
        entries.push((rel.to_path_buf(), meta.clone()));
        Ok(true)
    })?;
    for (rel, _) in entries {
        limits.check_time()?;
        // The whole metadata (std's) for the header, as the walk found it: removed since,
        // it is left out.
        let meta = match dir.lstat(&rel) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let name = Path::new(".").join(&rel);
        match Kind::of(&meta) {
            Kind::Dir => {
                h.set_size(0);
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Symlink => {
                let target = dir.read_link(&rel)?;
                h.set_size(0);
                b.append_link(&mut h, &name, target)?;
            }
            Kind::File => {
                let (f, now) = dir.open_file_meta(&rel)?;
                let len = now.len().min(meta.len());
                budget.bytes(len)?;
                h.set_size(len);
                b.append_data(&mut h, &name, f.take(len))?;
            }
            Kind::Other => {}
        }
    }
    b.into_inner()
}

/// Unpack a tar stream into `dest` (see [`crate::cache::unpack`]): an absolute path, a `..`
/// component or an entry outside `strip` is an error naming the entry, and nothing is written
/// through a link.
pub fn unpack_tree<R: io::Read>(
    input: R,
    dest: &JobDir,
    strip: Option<&str>,
    limits: &Limits,
) -> io::Result<()> {
    crate::cache::unpack(input, dest, limits, strip).map(drop)
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> EngineError {
    move |e| EngineError::Docker(format!("{what}: {e}"))
}

impl DockerEngine {
    /// Create a per-job volume (labelled with the job, so `destroy` removes it).
    pub(super) async fn create_job_volume(
        &self,
        env: &JobEnv,
        name: String,
    ) -> Result<String, EngineError> {
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
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(convert::job_labels(env, "builds")),
                ..Default::default()
            })
            .await
            .map_err(|e| docker_err(&format!("creating volume {name}"), &e))?;
        Ok(name)
    }

    /// Copy the host directory `host` into `path` of the build container (a tar stream, built
    /// while it is sent).
    async fn upload_dir(&self, env: &JobEnv, host: &Path, path: &str) -> Result<(), EngineError> {
        let container = convert::build_container_name(env);
        let dir = host.to_path_buf();
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        let writer_task = tokio::task::spawn_blocking(move || {
            let root = JobDir::open(&dir)?;
            write_tree(&root, SyncIoBridge::new(writer), &limits).map(drop)
        });
        let body = bollard::body_try_stream(ReaderStream::new(reader));
        let opts = UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        let sent = self
            .docker
            .upload_to_container(&container, Some(opts), body)
            .await;
        let written = writer_task
            .await
            .map_err(|e| EngineError::Docker(format!("archiving {}: {e}", host.display())))?;
        // The archive error is the cause when both fail (the upload sees a cut stream).
        written.map_err(io_err(format!(
            "archiving {} for the remote daemon",
            host.display()
        )))?;
        sent.map_err(|e| docker_err(&format!("copying {path} into {container}"), &e))
    }

    /// Copy the project dir and the file variables into the build container's volumes.
    pub(super) async fn upload_builds(&self, env: &JobEnv) -> Result<(), EngineError> {
        self.upload_dir(env, &env.host_project_dir, &env.project_dir)
            .await?;
        self.upload_dir(env, &env.host_tmp_dir, &env.tmp_dir).await
    }

    /// Replace the contents of the host's project dir with the build container's.
    pub(super) async fn download_builds(&self, env: &JobEnv) -> Result<(), EngineError> {
        let container = convert::build_container_name(env);
        let project = env.project_dir.trim_end_matches('/');
        let root = Path::new(project)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let opts = DownloadFromContainerOptions {
            path: if project.is_empty() {
                "/".into()
            } else {
                project.into()
            },
        };
        let stream = self
            .docker
            .download_from_container(&container, Some(opts))
            .map_err(|e| io::Error::other(one_line(&e)));
        let reader = StreamReader::new(Box::pin(stream));
        // Unpack next to the host directory (both are ferry's), then swap: a failed copy
        // leaves the old tree.
        let host = env.host_project_dir.clone();
        let staging = {
            let mut s = host.clone().into_os_string();
            s.push(".ferry-sync");
            PathBuf::from(s)
        };
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        let result = jobfs::blocking({
            let staging = staging.clone();
            move || -> io::Result<()> {
                if std::fs::symlink_metadata(&staging).is_ok() {
                    std::fs::remove_dir_all(&staging)?;
                }
                let stage = JobDir::create(&staging, 0o700)?;
                unpack_tree(SyncIoBridge::new(reader), &stage, root.as_deref(), &limits)?;
                let dest = JobDir::create(&host, 0o777)?;
                for (name, _) in dest.list(Path::new(""))? {
                    dest.remove(Path::new(&name))?;
                }
                for (name, _) in stage.list(Path::new(""))? {
                    stage.move_entry(&name, &dest)?;
                }
                std::fs::remove_dir(&staging)
            }
        })
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        result.map_err(io_err(format!(
            "copying {project} from {container} to {}",
            env.host_project_dir.display()
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
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        let tar = write_tree(&JobDir::open(src.path()).unwrap(), Vec::new(), &limits).unwrap();

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

    fn unpack_tree(t: &[u8], dest: &Path, strip: Option<&str>) -> io::Result<()> {
        let limits = Limits::new(tokio_util::sync::CancellationToken::new());
        super::unpack_tree(t, &JobDir::open(dest).unwrap(), strip, &limits)
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
