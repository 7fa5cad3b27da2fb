//! How ferry's own directories (the job's project dir and file variables, `cache_dir`) reach the
//! Docker daemon when ferry itself runs in a container (docs/docker-executor.md, "ferry in a
//! container").
//!
//! A bind source is a path on the daemon's machine, not in ferry's container. So when ferry runs
//! in a container of the daemon it talks to, each of its paths is translated to the source of the
//! mount it lives on: the host path of a bind mount, or the named volume with a subpath (Engine
//! API 1.45+), or on older engines the local volume's mount point on the daemon's machine. A path
//! on no such mount (the container's own filesystem, a tmpfs) cannot be shown to a job container:
//! the job then gets per-job volumes filled through the archive API, as with a remote daemon.
//! The user's own `volumes` are passed as given (they name the daemon's paths already).

use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use bollard::models::MountType;

use super::one_line;

/// Engine API version that added `VolumeOptions.Subpath` (Docker 26.0).
pub const SUBPATH_API: (usize, usize) = (1, 45);

/// One mount of ferry's own container, as its inspect shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfMount {
    /// Where it is in ferry's container.
    pub destination: PathBuf,
    pub kind: SelfMountKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfMountKind {
    /// A bind mount of `source`, a path on the daemon's machine.
    Bind { source: PathBuf },
    /// A named volume; `mountpoint` is its directory on the daemon's machine (Docker's `Source`
    /// for a volume), `subpath` the part of the volume ferry's container mounts (if any).
    Volume {
        name: String,
        driver: String,
        mountpoint: Option<PathBuf>,
        subpath: Option<String>,
    },
    /// tmpfs, npipe, cluster, image: nothing another container can mount.
    Other(String),
}

/// Where one of ferry's paths is for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSide {
    /// A path on the daemon's machine (a bind source).
    Path(PathBuf),
    /// A named volume, or a directory in it (`VolumeOptions.Subpath`).
    Volume {
        name: String,
        subpath: Option<String>,
    },
}

/// ferry's container as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// The container's id (full).
    pub id: String,
    pub mounts: Vec<SelfMount>,
    /// The engine speaks API 1.45+: volumes can be mounted with a subpath.
    pub subpath: bool,
}

/// What ferry found out about where it runs (decided once per engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// ferry is not in a container: its paths are the daemon's paths.
    Host,
    /// `/.dockerenv` exists but no container of this daemon has ferry's hostname (no id in
    /// mountinfo or cgroup either): taken as the host, as before, with this note for the log.
    HostAssumed(String),
    /// ferry runs in a container of this daemon: its paths are translated.
    Container(ContainerView),
    /// ferry runs in a container the daemon does not know (another machine's, or a daemon in
    /// another container): nothing of ferry's is visible to it.
    Unknown(String),
}

impl ContainerView {
    /// The daemon-side place of `path` (absolute, in ferry's container), or why there is none.
    pub fn translate(&self, path: &Path) -> Result<HostSide, String> {
        let path = normalize(path)
            .ok_or_else(|| format!("{} is not a plain absolute path", path.display()))?;
        let Some(m) = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.destination))
            .max_by_key(|m| m.destination.components().count())
        else {
            return Err(format!(
                "{} is on the container's own filesystem, not on a volume or bind mount",
                path.display()
            ));
        };
        // `starts_with` compared whole components, so this cannot fail.
        let rest = path.strip_prefix(&m.destination).unwrap_or(Path::new(""));
        match &m.kind {
            SelfMountKind::Bind { source } => Ok(HostSide::Path(join(source, rest))),
            SelfMountKind::Volume {
                name,
                driver,
                mountpoint,
                subpath,
            } => {
                let sub = match (subpath.as_deref(), rest.as_os_str().is_empty()) {
                    (None, true) => None,
                    (None, false) => Some(rest.to_string_lossy().into_owned()),
                    (Some(s), true) => Some(s.to_string()),
                    (Some(s), false) => Some(join(Path::new(s), rest).to_string_lossy().into()),
                };
                if self.subpath || sub.is_none() {
                    return Ok(HostSide::Volume {
                        name: name.clone(),
                        subpath: sub,
                    });
                }
                // Before API 1.45: the directory of a `local` volume on the daemon's machine
                // is a path the daemon can bind (it exists while ferry's container uses it).
                match mountpoint {
                    Some(mp) if driver == "local" && subpath.is_none() => {
                        Ok(HostSide::Path(join(mp, rest)))
                    }
                    _ => Err(format!(
                        "{} is in volume {name} (driver {driver}), and mounting a directory of \
                         a volume needs Docker Engine API {}.{}+",
                        path.display(),
                        SUBPATH_API.0,
                        SUBPATH_API.1
                    )),
                }
            }
            SelfMountKind::Other(kind) => Err(format!(
                "{} is on a {kind} mount, which other containers cannot mount",
                path.display()
            )),
        }
    }

    /// One line for ferry's log: how the directories under `dir` (the working directory) reach
    /// job containers.
    pub fn describe(&self, dir: &Path) -> String {
        let id = short_id(&self.id);
        // A directory below it: the working directory itself may be a whole volume, which
        // needs no subpath where its builds directories do.
        match self.translate(&dir.join("builds")) {
            Ok(HostSide::Path(p)) => format!(
                "ferry runs in container {id}: {} is {} on the Docker host, bind-mounted into job containers from there",
                dir.display(),
                p.parent().unwrap_or(&p).display()
            ),
            Ok(HostSide::Volume { name, subpath }) => format!(
                "ferry runs in container {id}: {} is in volume {name}; job containers mount its directories with a subpath (e.g. {})",
                dir.display(),
                subpath.as_deref().unwrap_or("")
            ),
            Err(why) => format!(
                "ferry runs in container {id}: {}; builds directories are copied through the archive API",
                // Name the working directory itself when it is the reason.
                self.translate(dir).err().unwrap_or(why)
            ),
        }
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn join(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// `path` made absolute (against the current directory) without `.`; `None` with a `..`, which
/// would need the filesystem to resolve.
fn normalize(path: &Path) -> Option<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Unescape a path field of /proc/self/mountinfo (`\040` is a space, etc.).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// ferry's own container id, from /proc/self/mountinfo and /proc/self/cgroup.
///
/// Docker bind-mounts `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` from
/// `<docker root>/containers/<id>/` (Podman from `…/overlay-containers/<id>/userdata/`), and
/// this holds with any network mode and cgroup version. With cgroup v1 the cgroup path also
/// names the container (`/docker/<id>`, `docker-<id>.scope`).
pub fn own_container_id(mountinfo: &str, cgroup: &str) -> Option<String> {
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(root), Some(target)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        if !matches!(*target, "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf") {
            continue;
        }
        let root = unescape_mountinfo(root);
        let parts: Vec<&str> = root.split('/').collect();
        for w in parts.windows(2) {
            if (w[0] == "containers" || w[0] == "overlay-containers") && is_hex_id(w[1]) {
                return Some(w[1].to_string());
            }
        }
    }
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            let part = part
                .strip_prefix("docker-")
                .and_then(|p| p.strip_suffix(".scope"))
                .unwrap_or(part);
            if is_hex_id(part) && path.contains("docker") {
                return Some(part.to_string());
            }
        }
    }
    None
}

/// The mounts of an inspected container, with the subpaths of its own volume mounts.
pub fn self_mounts(inspect: &bollard::models::ContainerInspectResponse) -> Vec<SelfMount> {
    let declared = inspect
        .host_config
        .as_ref()
        .and_then(|h| h.mounts.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in inspect.mounts.iter().flatten() {
        let Some(dest) = m.destination.as_deref().filter(|d| d.starts_with('/')) else {
            continue;
        };
        let Some(destination) = normalize(Path::new(dest)) else {
            continue;
        };
        let kind = match m.typ.as_deref() {
            Some("bind") => match m.source.as_deref() {
                Some(s) if s.starts_with('/') => SelfMountKind::Bind {
                    source: PathBuf::from(s),
                },
                _ => SelfMountKind::Other("bind".into()),
            },
            Some("volume") => {
                let Some(name) = m.name.clone().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let subpath = declared
                    .iter()
                    .find(|d| {
                        d.typ == Some(MountType::VOLUME)
                            && d.target.as_deref().and_then(|t| normalize(Path::new(t)))
                                == Some(destination.clone())
                    })
                    .and_then(|d| d.volume_options.as_ref())
                    .and_then(|o| o.subpath.clone())
                    .filter(|s| !s.is_empty());
                SelfMountKind::Volume {
                    name,
                    driver: m.driver.clone().unwrap_or_else(|| "local".into()),
                    mountpoint: m
                        .source
                        .as_deref()
                        .filter(|s| s.starts_with('/'))
                        .map(PathBuf::from),
                    subpath,
                }
            }
            Some(other) => SelfMountKind::Other(other.to_string()),
            None => SelfMountKind::Other("unknown".into()),
        };
        out.push(SelfMount { destination, kind });
    }
    out
}

/// Find out whether ferry runs in a container of the daemon behind `docker`, and its mounts.
pub async fn discover(docker: &Docker) -> Placement {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let dockerenv = Path::new("/.dockerenv").exists();
    let inspect = |id: String| async move {
        docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
    };
    let id = match own_container_id(&mountinfo, &cgroup) {
        Some(id) => id,
        None if dockerenv => {
            // A weak sign (some machines have the file without being a container): Docker's
            // default hostname is the short container id; it counts only when the daemon has
            // a container of that id with that hostname.
            let hostname = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let found = if hostname.is_empty() {
                None
            } else {
                inspect(hostname.clone()).await.ok().filter(|i| {
                    i.config.as_ref().and_then(|c| c.hostname.as_deref()) == Some(hostname.as_str())
                })
            };
            return match found {
                Some(i) => container(docker, i, hostname),
                None => Placement::HostAssumed(format!(
                    "/.dockerenv exists, but the Docker daemon has no container with ferry's \
                     hostname {hostname:?}"
                )),
            };
        }
        None => return Placement::Host,
    };
    match inspect(id.clone()).await {
        Ok(i) => container(docker, i, id),
        Err(e) => Placement::Unknown(format!(
            "ferry runs in container {}, which this Docker daemon does not know ({})",
            short_id(&id),
            one_line(&e)
        )),
    }
}

fn container(
    docker: &Docker,
    inspect: bollard::models::ContainerInspectResponse,
    id: String,
) -> Placement {
    let v = docker.client_version();
    Placement::Container(ContainerView {
        id: inspect.id.clone().unwrap_or(id),
        mounts: self_mounts(&inspect),
        subpath: (v.major_version, v.minor_version) >= SUBPATH_API,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_id_from_mountinfo_and_cgroup() {
        let mi = format!(
            "1000 900 0:51 / / rw,relatime master:1 - overlay overlay rw\n\
             1010 1000 254:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n\
             1011 1000 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
        );
        assert_eq!(own_container_id(&mi, "0::/\n").as_deref(), Some(ID));
        // Docker's root on its own filesystem: the root field starts at that filesystem.
        let mi = format!("7 1 8:1 /containers/{ID}/hosts /etc/hosts rw - ext4 /dev/sdb rw\n");
        assert_eq!(own_container_id(&mi, "").as_deref(), Some(ID));
        // Podman.
        let mi = format!(
            "7 1 0:3 /containers/storage/overlay-containers/{ID}/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n"
        );
        assert_eq!(own_container_id(&mi, "").as_deref(), Some(ID));
        // cgroup v1.
        assert_eq!(
            own_container_id("", &format!("12:pids:/docker/{ID}\n")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            own_container_id(
                "",
                &format!("1:name=systemd:/system.slice/docker-{ID}.scope\n")
            )
            .as_deref(),
            Some(ID)
        );
        // The host: /etc/hostname is not a mount, cgroup v2 shows a systemd slice.
        let host = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_container_id(host, "0::/user.slice/session-1.scope\n"),
            None
        );
        // A 64-hex name elsewhere is not a container id.
        let mi = format!("7 1 8:1 /data/{ID} /etc/hostname rw - ext4 /dev/sdb rw\n");
        assert_eq!(own_container_id(&mi, ""), None);
    }

    fn view(subpath: bool) -> ContainerView {
        ContainerView {
            id: ID.into(),
            subpath,
            mounts: vec![
                SelfMount {
                    destination: "/var/lib/ferry".into(),
                    kind: SelfMountKind::Volume {
                        name: "ferry-data".into(),
                        driver: "local".into(),
                        mountpoint: Some("/var/lib/docker/volumes/ferry-data/_data".into()),
                        subpath: None,
                    },
                },
                SelfMount {
                    destination: "/var/lib/ferry/cache".into(),
                    kind: SelfMountKind::Bind {
                        source: "/srv/ferry-cache".into(),
                    },
                },
                SelfMount {
                    destination: "/work".into(),
                    kind: SelfMountKind::Bind {
                        source: "/home/me/runner work".into(),
                    },
                },
                SelfMount {
                    destination: "/scratch".into(),
                    kind: SelfMountKind::Other("tmpfs".into()),
                },
                SelfMount {
                    destination: "/nfs".into(),
                    kind: SelfMountKind::Volume {
                        name: "shared".into(),
                        driver: "nfs-plugin".into(),
                        mountpoint: None,
                        subpath: None,
                    },
                },
            ],
        }
    }

    #[test]
    fn translation_follows_the_innermost_mount() {
        let v = view(true);
        assert_eq!(
            v.translate(Path::new("/work/builds/abc/0/project-1/src")),
            Ok(HostSide::Path(
                "/home/me/runner work/builds/abc/0/project-1/src".into()
            ))
        );
        assert_eq!(
            v.translate(Path::new("/var/lib/ferry/cache/x")),
            Ok(HostSide::Path("/srv/ferry-cache/x".into()))
        );
        assert_eq!(
            v.translate(Path::new("/var/lib/ferry/builds/./a/src")),
            Ok(HostSide::Volume {
                name: "ferry-data".into(),
                subpath: Some("builds/a/src".into())
            })
        );
        assert_eq!(
            v.translate(Path::new("/var/lib/ferry")),
            Ok(HostSide::Volume {
                name: "ferry-data".into(),
                subpath: None
            })
        );
        // A name that only starts like a mount is not on it.
        assert!(v.translate(Path::new("/workshop/x")).is_err());
        assert!(
            v.translate(Path::new("/scratch/x"))
                .unwrap_err()
                .contains("tmpfs")
        );
        assert!(v.translate(Path::new("/work/../etc")).is_err());
        assert!(
            v.translate(Path::new("/opt/ferry"))
                .unwrap_err()
                .contains("own filesystem")
        );
    }

    #[test]
    fn old_engines_bind_a_local_volume_from_its_mount_point() {
        let v = view(false);
        assert_eq!(
            v.translate(Path::new("/var/lib/ferry/builds/a")),
            Ok(HostSide::Path(
                "/var/lib/docker/volumes/ferry-data/_data/builds/a".into()
            ))
        );
        // The whole volume needs no subpath.
        assert_eq!(
            v.translate(Path::new("/nfs")),
            Ok(HostSide::Volume {
                name: "shared".into(),
                subpath: None
            })
        );
        let err = v.translate(Path::new("/nfs/builds")).unwrap_err();
        assert!(err.contains("API 1.45+"), "{err}");
        assert!(view(true).translate(Path::new("/nfs/builds")).is_ok());
    }

    #[test]
    fn describe_says_how_the_working_dir_reaches_jobs() {
        let v = view(true);
        let s = v.describe(Path::new("/work"));
        assert!(
            s.starts_with("ferry runs in container 0123456789ab: /work is /home/me/runner work"),
            "{s}"
        );
        let s = v.describe(Path::new("/var/lib/ferry"));
        assert!(
            s.contains("/var/lib/ferry is in volume ferry-data; job containers mount its directories with a subpath (e.g. builds)"),
            "{s}"
        );
        let s = view(false).describe(Path::new("/var/lib/ferry"));
        assert!(
            s.contains(
                "/var/lib/ferry is /var/lib/docker/volumes/ferry-data/_data on the Docker host"
            ),
            "{s}"
        );
        let s = v.describe(Path::new("/opt"));
        assert!(
            s.contains(": /opt is on the container's own filesystem")
                && s.contains("copied through the archive API"),
            "{s}"
        );
    }

    #[test]
    fn inspect_mounts_become_self_mounts() {
        let inspect: bollard::models::ContainerInspectResponse =
            serde_json::from_value(serde_json::json!({
                "Id": ID,
                "HostConfig": {"Mounts": [{"Type": "volume", "Source": "data", "Target": "/var/lib/ferry/",
                    "VolumeOptions": {"Subpath": "ferry"}}]},
                "Mounts": [
                    {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": true},
                    {"Type": "volume", "Name": "data", "Source": "/var/lib/docker/volumes/data/_data",
                     "Destination": "/var/lib/ferry", "Driver": "local", "RW": true},
                    {"Type": "tmpfs", "Source": "", "Destination": "/tmp", "RW": true}
                ]
            }))
            .unwrap();
        let m = self_mounts(&inspect);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1].kind,
            SelfMountKind::Volume {
                name: "data".into(),
                driver: "local".into(),
                mountpoint: Some("/var/lib/docker/volumes/data/_data".into()),
                subpath: Some("ferry".into()),
            }
        );
        assert_eq!(m[2].kind, SelfMountKind::Other("tmpfs".into()));
        let v = ContainerView {
            id: ID.into(),
            mounts: m,
            subpath: true,
        };
        assert_eq!(
            v.translate(Path::new("/var/lib/ferry/builds")),
            Ok(HostSide::Volume {
                name: "data".into(),
                subpath: Some("ferry/builds".into())
            })
        );
    }
}
