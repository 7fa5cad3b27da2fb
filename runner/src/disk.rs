//! A host that never fills its disk (docs/docker-executor.md, "Disk use"): `ferry run` bounds
//! every kind of data it creates, at start and every `--evict-interval`, and logs one line per
//! thing it removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_config::Config;
use ferry_executor::DockerEngine;
use ferry_executor::disk::{Candidate, Limits, Lru, Pass, Removed, builds_dirs};
use ferry_executor::docker::usage::UsageRecord;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::driver::Workspaces;

/// The limits `ferry run` was started with (docs/commands.md).
#[derive(Debug, Clone)]
pub struct DiskLimits {
    pub cache: Limits,
    pub builds: Limits,
    pub volumes: Limits,
    pub images: Limits,
    pub interval: Duration,
}

/// Removes builds directories (`<working dir>/builds/<runner>/<slot>/project-<id>`) over the
/// limits, least recently used first. A directory a job holds is skipped; one that is being
/// removed is held, so a job that wants it waits and then fetches its sources afresh.
pub fn evict_builds(
    builds_root: &Path,
    workspaces: &Workspaces,
    limits: Limits,
    now: SystemTime,
) -> Pass {
    let mut pass = Pass::default();
    if !limits.any() || !builds_root.is_dir() {
        return pass;
    }
    let mut items: Vec<Candidate<PathBuf>> = builds_dirs(builds_root);
    let mut lru = Lru::new(&mut items, limits, now);
    pass.remaining = items.len();
    for item in &items {
        if lru.verdict(item).is_none() {
            continue;
        }
        // The claim jobs take (keyed by the project dir, `<dir>/src`), held during removal.
        let Some(_claim) = workspaces.try_claim(&item.key.join("src")) else {
            continue;
        };
        // Measured again under the claim: the job that just released it may have changed it.
        let Some(item) = builds_dirs_entry(&item.key) else {
            continue;
        };
        let Some(reason) = lru.verdict(&item) else {
            continue;
        };
        // std's remove_dir_all never follows a link out of the tree.
        match std::fs::remove_dir_all(&item.key) {
            Ok(()) => {
                // The slot and runner dirs it leaves empty (fails, as meant, unless empty).
                let slot = item.key.parent();
                if let Some(slot) = slot
                    && std::fs::remove_dir(slot).is_ok()
                    && let Some(runner) = slot.parent()
                {
                    let _ = std::fs::remove_dir(runner);
                }
                lru.removed(item.bytes);
                pass.remaining -= 1;
                pass.removed.push(Removed {
                    kind: "builds dir",
                    name: item.key.display().to_string(),
                    bytes: Some(item.bytes),
                    unused_for: lru.unused_for(&item),
                    reason,
                });
            }
            Err(e) => pass
                .errors
                .push(format!("removing {}: {e}", item.key.display())),
        }
    }
    pass.remaining_bytes = lru.remaining();
    pass
}

/// One builds dir, read again (`None` when gone).
fn builds_dirs_entry(dir: &Path) -> Option<Candidate<PathBuf>> {
    let parent = dir.parent()?.parent()?.parent()?;
    builds_dirs(parent).into_iter().find(|c| c.key == dir)
}

fn log_pass(what: &str, where_: &str, pass: &Pass) {
    for r in &pass.removed {
        info!("{r}");
    }
    for e in &pass.errors {
        warn!(error = %e, "{what} eviction: could not remove or list something in {where_}");
    }
}

/// Where the local cache and git object caches live on this host: ferry's own cache and git
/// object caches, and every `[runners.docker] cache_dir`.
pub fn cache_roots(working_dir: &Path, config: &Config) -> Vec<PathBuf> {
    let mut roots = vec![working_dir.join("cache"), working_dir.join("git-cache")];
    for r in &config.runners {
        if let Some(d) = &r.docker.cache_dir
            && !roots.contains(d)
        {
            roots.push(d.clone());
        }
    }
    roots
}

/// One pass over everything.
async fn pass(
    working_dir: &Path,
    limits: &DiskLimits,
    workspaces: &Workspaces,
    usage: &Arc<UsageRecord>,
    config: &Config,
) {
    for root in cache_roots(working_dir, config) {
        if !root.exists() {
            continue;
        }
        let (r, cache) = (root.clone(), limits.cache);
        match tokio::task::spawn_blocking(move || {
            ferry_executor::cache::evict(&r, cache.max_bytes, cache.max_age)
        })
        .await
        {
            Ok(Ok(report)) => {
                for p in &report.removed {
                    info!("removed cache {}", p.display());
                }
                tracing::debug!(root = %root.display(), entries = report.entries, bytes = report.total_bytes - report.removed_bytes, "cache eviction");
                for e in &report.errors {
                    warn!(root = %root.display(), error = %e, "cache eviction");
                }
            }
            Ok(Err(e)) => warn!(root = %root.display(), error = %e, "cache eviction failed"),
            Err(e) => warn!(error = %e, "cache eviction task failed"),
        }
    }

    let builds_root = working_dir.join("builds");
    let (root, ws, builds) = (builds_root.clone(), workspaces.clone(), limits.builds);
    match tokio::task::spawn_blocking(move || evict_builds(&root, &ws, builds, SystemTime::now()))
        .await
    {
        Ok(p) => log_pass("builds dir", &builds_root.display().to_string(), &p),
        Err(e) => warn!(error = %e, "builds dir eviction task failed"),
    }

    // Docker: each runner's cache volumes; images once per daemon.
    let mut hosts_done: Vec<String> = Vec::new();
    for r in &config.runners {
        let Ok(engine) = DockerEngine::new(&r.docker, r.token.ci_short_token()).await else {
            continue;
        };
        let engine = engine.with_usage(usage.clone());
        if limits.volumes.any() {
            let p = engine
                .evict_cache_volumes(limits.volumes, SystemTime::now())
                .await;
            log_pass("cache volume", engine.host(), &p);
            let p = engine
                .evict_cache_dirs(limits.volumes, SystemTime::now())
                .await;
            log_pass("cache volume dir", engine.host(), &p);
        }
        if limits.images.any() && !hosts_done.iter().any(|h| h == engine.host()) {
            hosts_done.push(engine.host().to_string());
            let p = engine.evict_images(limits.images, SystemTime::now()).await;
            log_pass("image", engine.host(), &p);
        }
    }
}

/// Runs a pass at start and then every `limits.interval` until `stop`.
pub async fn evictor(
    working_dir: PathBuf,
    limits: DiskLimits,
    workspaces: Workspaces,
    usage: Arc<UsageRecord>,
    config: watch::Receiver<Arc<Config>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(limits.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let cfg = config.borrow().clone();
        tokio::select! {
            _ = pass(&working_dir, &limits, &workspaces, &usage, &cfg) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(root: &Path, rel: &str, bytes: usize, hours_ago: u64) -> PathBuf {
        let d = root.join(rel);
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::write(d.join("src/data"), vec![1u8; bytes]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(hours_ago * 3600);
        std::fs::File::create(d.join(ferry_executor::disk::BUILDS_LAST_USED))
            .unwrap()
            .set_modified(t)
            .unwrap();
        d
    }

    #[test]
    fn builds_dirs_go_oldest_first_but_never_one_a_job_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let held = dir_with(root, "r1/0/project-1", 1000, 30);
        let old = dir_with(root, "r1/1/project-1", 1000, 20);
        let mid = dir_with(root, "r1/0/project-2", 1000, 10);
        let new = dir_with(root, "r2/0/project-3", 1000, 1);
        let ws = Workspaces::default();
        let _job = ws.try_claim(&held.join("src")).expect("free");
        let limits = Limits {
            max_bytes: Some(3500),
            max_age: None,
        };
        // The held one is the oldest but stays; the next oldest goes to get under the size.
        let pass = evict_builds(root, &ws, limits, SystemTime::now());
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        let names: Vec<&str> = pass.removed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec![old.to_str().unwrap()]);
        assert!(held.exists() && mid.exists() && new.exists() && !old.exists());
        assert_eq!(pass.remaining_bytes, 3000);
        let line = pass.removed[0].to_string();
        assert!(
            line.starts_with(&format!("removed builds dir {}", old.display())),
            "{line}"
        );
        assert!(line.contains("unused for 20h"), "{line}");

        // Over the age limit: everything unused goes; the held one stays; empty slot dirs go.
        let limits = Limits {
            max_bytes: None,
            max_age: Some(Duration::from_secs(5 * 3600)),
        };
        let pass = evict_builds(root, &ws, limits, SystemTime::now());
        assert_eq!(pass.removed.len(), 1, "{pass:?}");
        assert!(!mid.exists() && held.exists() && new.exists());
        assert!(!root.join("r1/1").exists(), "empty slot dir pruned");
    }

    #[test]
    fn a_job_link_out_of_its_dir_is_not_followed_when_removing() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let d = dir_with(tmp.path(), "r/0/project-9", 10, 100);
        std::os::unix::fs::symlink(outside.path(), d.join("src/link")).unwrap();
        let limits = Limits {
            max_bytes: Some(0),
            max_age: None,
        };
        let pass = evict_builds(
            tmp.path(),
            &Workspaces::default(),
            limits,
            SystemTime::now(),
        );
        assert_eq!(pass.removed.len(), 1, "{pass:?}");
        assert!(!d.exists());
        assert!(outside.path().join("keep").exists());
    }
}
