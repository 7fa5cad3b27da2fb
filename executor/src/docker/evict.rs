//! Evicting the Docker data ferry creates: `"/path"` cache volumes unused for too long, and
//! (opt-in) images ferry pulled, least recently used first (docs/docker-executor.md, "Disk use").
//! Nothing a container uses is removed, and no image ferry did not pull.

use std::collections::HashSet;
use std::time::SystemTime;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};

use super::{DockerEngine, convert, is_not_found, label_filter, one_line};
use crate::disk::{Candidate, Limits, Lru, Pass, Removed};

/// What every container (running or not) holds on to.
struct InUse {
    volumes: HashSet<String>,
    /// Host paths bind-mounted into a container.
    binds: HashSet<String>,
    images: HashSet<String>,
}

impl DockerEngine {
    async fn in_use(&self) -> Result<InUse, String> {
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(|e| format!("listing containers: {}", one_line(&e)))?;
        let mut used = InUse {
            volumes: HashSet::new(),
            binds: HashSet::new(),
            images: HashSet::new(),
        };
        for c in containers {
            if let Some(id) = c.image_id {
                used.images.insert(id);
            }
            for m in c.mounts.unwrap_or_default() {
                if let Some(name) = m.name {
                    used.volumes.insert(name);
                }
                if let Some(source) = m.source {
                    used.binds.insert(source);
                }
            }
        }
        Ok(used)
    }

    /// Removes this runner's cache volumes unused for longer than `limits.max_age` (Docker
    /// gives no size of a volume without measuring every one, so there is no size limit).
    /// A volume ferry has no record of counts as used now: it goes after `max_age` more.
    pub async fn evict_cache_volumes(&self, limits: Limits, now: SystemTime) -> Pass {
        let mut pass = Pass::default();
        let Some(usage) = self.usage.clone() else {
            return pass;
        };
        let filters = label_filter(&[
            (convert::LABEL_MANAGED, "true"),
            (convert::LABEL_RUNNER, &self.runner_short),
            (convert::LABEL_CACHE, "true"),
        ]);
        let volumes = match self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
        {
            Ok(v) => v.volumes.unwrap_or_default(),
            Err(e) => {
                pass.errors
                    .push(format!("listing cache volumes: {}", one_line(&e)));
                return pass;
            }
        };
        let in_use = match self.in_use().await {
            Ok(u) => u,
            Err(e) => {
                pass.errors.push(e);
                return pass;
            }
        };
        let names: Vec<String> = volumes.iter().map(|v| v.name.clone()).collect();
        if let Err(e) = usage.forget_volumes(&format!("runner-{}-", self.runner_short), &names) {
            pass.errors.push(format!("{}: {e}", usage.path().display()));
        }
        let mut items: Vec<Candidate<String>> = Vec::new();
        for name in names {
            let busy = in_use.volumes.contains(&name);
            let last_used = match usage.volume_last_used(&name) {
                Some(t) if !busy => t,
                _ => {
                    if let Err(e) = usage.touch_volume(&name, now) {
                        pass.errors.push(format!("{}: {e}", usage.path().display()));
                    }
                    now
                }
            };
            items.push(Candidate {
                in_use: busy,
                key: name,
                bytes: 0,
                last_used,
            });
        }
        let limits = Limits {
            max_bytes: None,
            ..limits
        };
        let mut lru = Lru::new(&mut items, limits, now);
        pass.remaining = items.len();
        for item in &items {
            let Some(reason) = lru.verdict(item) else {
                continue;
            };
            // A job may have started with it since the list was read.
            if usage
                .volume_last_used(&item.key)
                .is_some_and(|t| t > item.last_used)
            {
                continue;
            }
            let opts = RemoveVolumeOptionsBuilder::new().force(false).build();
            match self.docker.remove_volume(&item.key, Some(opts)).await {
                Ok(()) => {
                    lru.removed(item.bytes);
                    pass.remaining -= 1;
                    let _ = usage.forget_volume(&item.key);
                    pass.removed.push(Removed {
                        kind: "cache volume",
                        name: item.key.clone(),
                        bytes: None,
                        unused_for: lru.unused_for(item),
                        reason,
                    });
                }
                Err(e) if is_not_found(&e) => {
                    pass.remaining -= 1;
                    let _ = usage.forget_volume(&item.key);
                }
                // 409: a container uses it (a job started in between).
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => {
                    pass.errors
                        .push(format!("removing volume {}: {}", item.key, one_line(&e)))
                }
            }
        }
        pass
    }

    /// With `[runners.docker] cache_dir`, `"/path"` volumes are directories
    /// `<cache_dir>/runner-<short>-project-<id>[-concurrent-<n>]/<hash>`: those of this runner
    /// unused for longer than `limits.max_age` are removed like volumes (a directory ferry has
    /// no record of counts as used now). Links are not followed.
    pub async fn evict_cache_dirs(&self, limits: Limits, now: SystemTime) -> Pass {
        let mut pass = Pass::default();
        let (Some(usage), Some(root)) = (self.usage.clone(), self.section.cache_dir.clone()) else {
            return pass;
        };
        let prefix = format!("runner-{}-project-", self.runner_short);
        let listed = tokio::task::spawn_blocking(move || {
            walkdir::WalkDir::new(&root)
                .follow_links(false)
                .follow_root_links(false)
                .min_depth(2)
                .max_depth(2)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_dir())
                .filter(|e| {
                    e.path()
                        .parent()
                        .and_then(|p| p.file_name())
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                        && e.file_name().len() == 16
                        && e.file_name()
                            .to_string_lossy()
                            .chars()
                            .all(|c| c.is_ascii_hexdigit())
                })
                .map(|e| {
                    let bytes = crate::disk::dir_size(e.path());
                    (e.into_path(), bytes)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let dirs = match listed {
            Ok(d) => d,
            Err(e) => {
                pass.errors.push(format!("listing cache volume dirs: {e}"));
                return pass;
            }
        };
        if dirs.is_empty() {
            return pass;
        }
        let in_use = match self.in_use().await {
            Ok(u) => u,
            Err(e) => {
                pass.errors.push(e);
                return pass;
            }
        };
        let mut items = Vec::new();
        for (dir, bytes) in dirs {
            let key = dir.display().to_string();
            // Containers name the daemon's side of the directory: translated when ferry runs
            // in a container (a volume in use counts for every directory in it).
            let busy = in_use.binds.contains(&key)
                || match self.place(&dir) {
                    Ok(super::hostpaths::HostSide::Path(p)) => {
                        in_use.binds.contains(&p.display().to_string())
                    }
                    Ok(super::hostpaths::HostSide::Volume { name, .. }) => {
                        in_use.volumes.contains(&name)
                    }
                    Err(_) => false,
                };
            let last_used = match usage.volume_last_used(&key) {
                Some(t) if !busy => t,
                _ => {
                    if let Err(e) = usage.touch_volume(&key, now) {
                        pass.errors.push(format!("{}: {e}", usage.path().display()));
                    }
                    now
                }
            };
            items.push(Candidate {
                in_use: busy,
                bytes,
                key,
                last_used,
            });
        }
        let limits = Limits {
            max_bytes: None,
            ..limits
        };
        let mut lru = Lru::new(&mut items, limits, now);
        pass.remaining = items.len();
        for item in &items {
            let Some(reason) = lru.verdict(item) else {
                continue;
            };
            if usage
                .volume_last_used(&item.key)
                .is_some_and(|t| t > item.last_used)
            {
                continue;
            }
            // std's remove_dir_all never follows a link out of the tree.
            match tokio::fs::remove_dir_all(&item.key).await {
                Ok(()) => {
                    lru.removed(item.bytes);
                    pass.remaining -= 1;
                    let _ = usage.forget_volume(&item.key);
                    if let Some(parent) = std::path::Path::new(&item.key).parent() {
                        // Fails (and is meant to) unless empty.
                        let _ = tokio::fs::remove_dir(parent).await;
                    }
                    pass.removed.push(Removed {
                        kind: "cache volume dir",
                        name: item.key.clone(),
                        bytes: Some(item.bytes),
                        unused_for: lru.unused_for(item),
                        reason,
                    });
                }
                Err(e) => pass.errors.push(format!("removing {}: {e}", item.key)),
            }
        }
        pass.remaining_bytes = lru.remaining();
        pass
    }

    /// Removes images ferry pulled on this daemon that no container uses, least recently used
    /// first, down to `limits` (counting only images ferry pulled). An image that also has other
    /// names is left (Docker refuses to remove it by id without force, which ferry never uses).
    pub async fn evict_images(&self, limits: Limits, now: SystemTime) -> Pass {
        let mut pass = Pass::default();
        let Some(usage) = self.usage.clone() else {
            return pass;
        };
        let pulled = usage.pulled_images(&self.host);
        if pulled.is_empty() {
            return pass;
        }
        let in_use = match self.in_use().await {
            Ok(u) => u,
            Err(e) => {
                pass.errors.push(e);
                return pass;
            }
        };
        let mut items = Vec::new();
        for (id, rec) in pulled {
            let busy = in_use.images.contains(&id);
            let mut last_used = super::usage::from_unix(rec.last_used);
            if busy {
                // A container of it exists: used until now.
                last_used = now;
                let _ = usage.used_image(&id, now);
            }
            match self.docker.inspect_image(&id).await {
                Ok(i) => items.push(Candidate {
                    in_use: busy,
                    bytes: i.size.unwrap_or(0).max(0) as u64,
                    last_used,
                    key: (id, rec.name),
                }),
                Err(e) if is_not_found(&e) => {
                    // Removed by someone else.
                    let _ = usage.forget_image(&id);
                }
                Err(e) => pass
                    .errors
                    .push(format!("inspecting image {id}: {}", one_line(&e))),
            }
        }
        let mut lru = Lru::new(&mut items, limits, now);
        pass.remaining = items.len();
        for item in &items {
            let Some(reason) = lru.verdict(item) else {
                continue;
            };
            let (id, name) = &item.key;
            let opts = RemoveImageOptionsBuilder::new().force(false).build();
            match self.docker.remove_image(id, Some(opts), None).await {
                Ok(_) => {
                    lru.removed(item.bytes);
                    pass.remaining -= 1;
                    let _ = usage.forget_image(id);
                    pass.removed.push(Removed {
                        kind: "image",
                        name: format!("{name} ({id})"),
                        bytes: Some(item.bytes),
                        unused_for: lru.unused_for(item),
                        reason,
                    });
                }
                Err(e) if is_not_found(&e) => {
                    lru.removed(item.bytes);
                    pass.remaining -= 1;
                    let _ = usage.forget_image(id);
                }
                // 409: used by a container, or has other names.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => pass
                    .errors
                    .push(format!("removing image {name} ({id}): {}", one_line(&e))),
            }
        }
        pass.remaining_bytes = lru.remaining();
        pass
    }
}
