//! Getting an image: the pull-policy fallback chain, registry credentials, and a short progress
//! summary in the job log.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{CreateImageInfo, ImageInspect};
use bollard::query_parameters::CreateImageOptionsBuilder;
use ferry_config::joblog;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::convert::split_image;
use super::{is_not_found, one_line};
use crate::engine::{EngineError, ImageSpec, JobEnv, LogSink, PullPolicy};

/// How often at most a progress line is written while a pull runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Make sure `image.name` is present under its pull policies, tried in order (a repeated policy
/// is a retry). Returns the inspected image.
pub async fn ensure_image(
    engine: &super::DockerEngine,
    image: &ImageSpec,
    env: &JobEnv,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<ImageInspect, EngineError> {
    let docker = &engine.docker;
    let name = image.name.as_str();
    let policies: &[PullPolicy] = if image.pull_policy.is_empty() {
        &[PullPolicy::Always]
    } else {
        &image.pull_policy
    };
    let mut last_err = String::new();
    for (i, policy) in policies.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if i > 0 {
            let line = joblog::warning_line(&format!(
                "Failed to pull image with policy \"{}\": {last_err}",
                policies[i - 1]
            ));
            let _ = log.write_all(line.as_bytes()).await;
        }
        match try_policy(docker, image, *policy, env, log, cancel).await {
            Ok((inspect, pulled)) => {
                let id = inspect.id.clone().unwrap_or_default();
                record_use(engine, &id, name, pulled);
                let digest = inspect
                    .repo_digests
                    .as_ref()
                    .and_then(|d| d.first().cloned())
                    .map(|d| format!(" with digest {d}"))
                    .unwrap_or_default();
                let _ = log
                    .write_all(
                        format!("Using docker image {id} for {name}{digest} ...\n").as_bytes(),
                    )
                    .await;
                return Ok(inspect);
            }
            Err(_) if cancel.is_cancelled() => return Err(EngineError::Cancelled),
            Err(e) => last_err = e,
        }
    }
    Err(EngineError::ImagePull {
        image: name.to_string(),
        message: last_err,
    })
}

async fn inspect(docker: &Docker, name: &str) -> Result<Option<ImageInspect>, String> {
    match docker.inspect_image(name).await {
        Ok(i) => Ok(Some(i)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(one_line(&e)),
    }
}

/// Records that a job uses image `id` and, when ferry just pulled it, that ferry pulled it:
/// only images ferry pulled are ever evicted (docs/docker-executor.md, "Disk use").
fn record_use(engine: &super::DockerEngine, id: &str, name: &str, pulled: bool) {
    let Some(u) = &engine.usage else { return };
    if id.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now();
    let r = if pulled {
        u.pulled_image(&engine.host, id, name, now)
    } else {
        u.used_image(id, now)
    };
    if let Err(e) = r {
        tracing::warn!(file = %u.path().display(), error = %e, "recording the use of an image failed");
    }
}

/// One policy; the error is a message for the log / the final ImagePull error. The flag says
/// whether the image was pulled.
async fn try_policy(
    docker: &Docker,
    image: &ImageSpec,
    policy: PullPolicy,
    env: &JobEnv,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(ImageInspect, bool), String> {
    let name = image.name.as_str();
    let local = inspect(docker, name).await?;
    match policy {
        PullPolicy::Never => local.map(|i| (i, false)).ok_or_else(|| {
            format!(
                "image {name:?} is not present on the Docker host and the pull policy is \"never\""
            )
        }),
        PullPolicy::IfNotPresent if local.is_some() => {
            let _ = log
                .write_all(
                    b"Using locally found image version due to \"if-not-present\" pull policy\n",
                )
                .await;
            local.map(|i| (i, false)).ok_or_else(String::new)
        }
        // `always` does not need to pull an image pinned by digest that is already here.
        PullPolicy::Always if local.is_some() && name.contains("@sha256:") => {
            local.map(|i| (i, false)).ok_or_else(String::new)
        }
        _ => {
            pull(docker, image, env, log, cancel)
                .await
                .map_err(|e| match e {
                    PullError::Cancelled => "cancelled".to_string(),
                    PullError::Failed(m) => m,
                })?;
            if cancel.is_cancelled() {
                return Err("cancelled".into());
            }
            inspect(docker, name)
                .await?
                .map(|i| (i, true))
                .ok_or_else(|| format!("image {name:?} is missing after a successful pull"))
        }
    }
}

/// Folds Docker's per-layer pull messages into a line every [`PROGRESS_EVERY`] at most, plus
/// Docker's final `Digest:` and `Status:` lines.
struct PullProgress {
    name: String,
    /// layer id -> (bytes downloaded, bytes total, done)
    layers: HashMap<String, (i64, i64, bool)>,
    last: tokio::time::Instant,
}

impl PullProgress {
    fn new(name: &str, now: tokio::time::Instant) -> Self {
        Self {
            name: name.to_string(),
            layers: HashMap::new(),
            last: now,
        }
    }

    fn update(&mut self, info: &CreateImageInfo, now: tokio::time::Instant) -> Vec<String> {
        let mut out = Vec::new();
        let status = info.status.as_deref().unwrap_or_default();
        match (&info.id, status) {
            (Some(id), "Pulling fs layer" | "Waiting") => {
                self.layers.entry(id.clone()).or_insert((0, 0, false));
            }
            (Some(id), "Downloading") => {
                let e = self.layers.entry(id.clone()).or_insert((0, 0, false));
                if let Some(d) = &info.progress_detail {
                    e.0 = d.current.unwrap_or(e.0);
                    e.1 = d.total.unwrap_or(e.1);
                }
            }
            (Some(id), "Download complete" | "Pull complete" | "Already exists") => {
                let e = self.layers.entry(id.clone()).or_insert((0, 0, false));
                e.0 = e.1;
                e.2 = true;
            }
            (_, s) if s.starts_with("Digest:") || s.starts_with("Status:") => {
                out.push(s.to_string())
            }
            _ => {}
        }
        if now.duration_since(self.last) >= PROGRESS_EVERY && !self.layers.is_empty() {
            self.last = now;
            let done = self.layers.values().filter(|l| l.2).count();
            let cur: i64 = self.layers.values().map(|l| l.0).sum();
            let total: i64 = self.layers.values().map(|l| l.1).sum();
            out.push(format!(
                "Pulling {}: {done}/{} layers, {:.1} of {:.1} MB",
                self.name,
                self.layers.len(),
                cur as f64 / 1e6,
                total as f64 / 1e6
            ));
        }
        out
    }
}

enum PullError {
    Cancelled,
    Failed(String),
}

/// Pull, writing a few summary lines instead of Docker's per-layer progress.
async fn pull(
    docker: &Docker,
    image: &ImageSpec,
    env: &JobEnv,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<(), PullError> {
    let name = image.name.as_str();
    let (_, _, reference) = split_image(name);
    // Pull one tag, not every tag of the repository.
    let from_image = if name.contains('@') || name.ends_with(&format!(":{reference}")) {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    let creds = match super::auth::resolve(name, env).await {
        Some((c, source)) => {
            let _ = log
                .write_all(format!("Authenticating with credentials from {source}\n").as_bytes())
                .await;
            Some(c)
        }
        None => None,
    };
    let _ = log
        .write_all(format!("Pulling docker image {name} ...\n").as_bytes())
        .await;
    let mut opts = CreateImageOptionsBuilder::new().from_image(&from_image);
    if let Some(p) = &image.platform {
        opts = opts.platform(p);
    }
    let mut stream = docker.create_image(Some(opts.build()), None, creds);
    let mut progress = PullProgress::new(name, tokio::time::Instant::now());
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return Err(PullError::Cancelled),
            item = stream.next() => item,
        };
        let Some(item) = item else { break };
        let info = match item {
            Ok(info) => info,
            Err(e) => return Err(PullError::Failed(one_line(&e))),
        };
        // bollard turns an `errorDetail` message into an `Err` item already; one
        // without a message would otherwise pass as progress.
        if let Some(detail) = info.error_detail {
            let err = detail.message.unwrap_or_else(|| "image pull failed".into());
            return Err(PullError::Failed(err));
        }
        for line in progress.update(&info, tokio::time::Instant::now()) {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: Option<&str>, status: &str, cur: i64, total: i64) -> CreateImageInfo {
        CreateImageInfo {
            id: id.map(str::to_string),
            status: Some(status.into()),
            progress_detail: Some(bollard::models::ProgressDetail {
                current: Some(cur),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_progress_is_a_few_lines() {
        let t0 = tokio::time::Instant::now();
        let mut p = PullProgress::new("ruby:3", t0);
        let mut lines = Vec::new();
        lines.extend(p.update(&msg(None, "Pulling from library/ruby", 0, 0), t0));
        for layer in ["a", "b"] {
            lines.extend(p.update(&msg(Some(layer), "Pulling fs layer", 0, 0), t0));
        }
        // Hundreds of progress messages within 10 s: no line.
        for i in 0..300 {
            let t = t0 + Duration::from_millis(i * 30);
            lines.extend(p.update(
                &msg(Some("a"), "Downloading", i as i64 * 1000, 2_000_000),
                t,
            ));
        }
        assert!(lines.is_empty(), "{lines:?}");
        lines.extend(p.update(
            &msg(Some("a"), "Download complete", 0, 0),
            t0 + Duration::from_secs(11),
        ));
        assert_eq!(lines, vec!["Pulling ruby:3: 1/2 layers, 2.0 of 2.0 MB"]);
        lines.clear();
        lines.extend(p.update(
            &msg(Some("b"), "Pull complete", 0, 0),
            t0 + Duration::from_secs(12),
        ));
        lines.extend(p.update(
            &msg(None, "Digest: sha256:ff", 0, 0),
            t0 + Duration::from_secs(12),
        ));
        lines.extend(p.update(
            &msg(None, "Status: Downloaded newer image for ruby:3", 0, 0),
            t0 + Duration::from_secs(12),
        ));
        assert_eq!(
            lines,
            vec![
                "Digest: sha256:ff",
                "Status: Downloaded newer image for ruby:3"
            ]
        );
    }
}
