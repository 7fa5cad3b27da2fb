//! When ferry last used each Docker cache volume, and which images it pulled (Docker keeps no
//! last-use time for either): `<working dir>/docker-usage.json`, mode 0600, replaced atomically
//! on every change. Eviction (docs/docker-executor.md, "Disk use") reads it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const USAGE_FILE: &str = "docker-usage.json";

/// An image ferry pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    /// The Docker daemon it was pulled on (the engine's address).
    pub host: String,
    /// The name it was pulled as (for the log).
    pub name: String,
    /// Unix seconds.
    pub last_used: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Volume name -> last use (unix seconds). Volume names carry the runner's token.
    #[serde(default)]
    volumes: BTreeMap<String, u64>,
    /// Image id -> what ferry knows of it.
    #[serde(default)]
    images: BTreeMap<String, PulledImage>,
}

/// The record; shared by every runner's engine.
#[derive(Debug)]
pub struct UsageRecord {
    path: PathBuf,
    state: Mutex<State>,
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

impl UsageRecord {
    /// Reads the record in `dir`. A missing file is an empty record; an unreadable one is
    /// replaced, and the returned warning says so (it only delays evictions).
    pub fn open(dir: &Path) -> (UsageRecord, Option<String>) {
        let path = dir.join(USAGE_FILE);
        let (state, warning) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (
                    State::default(),
                    Some(format!(
                        "{}: {e}; starting a new record of Docker volume and image use",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), None),
            Err(e) => (
                State::default(),
                Some(format!(
                    "{}: {e}; starting a new record of Docker volume and image use",
                    path.display()
                )),
            ),
        };
        (
            UsageRecord {
                path,
                state: Mutex::new(state),
            },
            warning,
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn change(&self, f: impl FnOnce(&mut State)) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
        self.save(&state)
    }

    /// Writes through a temporary file in the same directory (created 0600) and a rename.
    fn save(&self, state: &State) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".docker-usage-")
            .tempfile_in(dir)?;
        tmp.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// A job used the cache volume `name` now.
    pub fn touch_volume(&self, name: &str, now: SystemTime) -> std::io::Result<()> {
        self.change(|s| {
            s.volumes.insert(name.to_string(), unix(now));
        })
    }

    /// The last use of volume `name`, if recorded.
    pub fn volume_last_used(&self, name: &str) -> Option<SystemTime> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.volumes.get(name).copied().map(from_unix)
    }

    /// Forgets volumes starting with `prefix` that are not in `present` (removed by someone).
    pub fn forget_volumes(&self, prefix: &str, present: &[String]) -> std::io::Result<()> {
        let stale = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.volumes
                .keys()
                .any(|k| k.starts_with(prefix) && !present.contains(k))
        };
        if !stale {
            return Ok(());
        }
        self.change(|s| {
            s.volumes
                .retain(|k, _| !k.starts_with(prefix) || present.contains(k))
        })
    }

    pub fn forget_volume(&self, name: &str) -> std::io::Result<()> {
        self.change(|s| {
            s.volumes.remove(name);
        })
    }

    /// ferry pulled image `id` as `name` on `host`, now.
    pub fn pulled_image(
        &self,
        host: &str,
        id: &str,
        name: &str,
        now: SystemTime,
    ) -> std::io::Result<()> {
        self.change(|s| {
            s.images.insert(
                id.to_string(),
                PulledImage {
                    host: host.to_string(),
                    name: name.to_string(),
                    last_used: unix(now),
                },
            );
        })
    }

    /// A job used image `id`: its last use moves if ferry pulled it (else nothing is recorded:
    /// images ferry did not pull are never evicted).
    pub fn used_image(&self, id: &str, now: SystemTime) -> std::io::Result<()> {
        let known = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.images.contains_key(id)
        };
        if !known {
            return Ok(());
        }
        self.change(|s| {
            if let Some(i) = s.images.get_mut(id) {
                i.last_used = unix(now);
            }
        })
    }

    /// The images ferry pulled on `host`: (id, record).
    pub fn pulled_images(&self, host: &str) -> Vec<(String, PulledImage)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.images
            .iter()
            .filter(|(_, i)| i.host == host)
            .map(|(id, i)| (id.clone(), i.clone()))
            .collect()
    }

    pub fn forget_image(&self, id: &str) -> std::io::Result<()> {
        self.change(|s| {
            s.images.remove(id);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_record_survives_a_restart_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let t = from_unix(1_700_000_000);
        {
            let (r, w) = UsageRecord::open(dir.path());
            assert!(w.is_none());
            r.touch_volume("runner-abc-project-1-cache-00", t).unwrap();
            r.pulled_image("unix:///d.sock", "sha256:1", "alpine:3", t)
                .unwrap();
            // Not pulled by ferry: not recorded.
            r.used_image("sha256:2", t).unwrap();
        }
        let mode = std::fs::metadata(dir.path().join(USAGE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (r, _) = UsageRecord::open(dir.path());
        assert_eq!(r.volume_last_used("runner-abc-project-1-cache-00"), Some(t));
        let later = from_unix(1_700_000_100);
        r.used_image("sha256:1", later).unwrap();
        let images = r.pulled_images("unix:///d.sock");
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].1.last_used, 1_700_000_100);
        assert!(r.pulled_images("tcp://other:2375").is_empty());
        r.forget_volumes("runner-abc-", &[]).unwrap();
        assert_eq!(r.volume_last_used("runner-abc-project-1-cache-00"), None);
    }

    #[test]
    fn a_damaged_record_is_replaced_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(USAGE_FILE), "{not json").unwrap();
        let (r, w) = UsageRecord::open(dir.path());
        let w = w.expect("a warning");
        assert!(w.contains(USAGE_FILE), "{w}");
        assert!(r.pulled_images("x").is_empty());
    }
}
