//! The job cache (`cache:` in `.gitlab-ci.yml`), kept on the runner host.
//!
//! GitLab has no cache API: the runner stores archives where it likes. ferry keeps one
//! `tar` + `zstd` archive per key:
//!
//! ```text
//! <cache_dir>/<namespace>/<key>/cache.tar.zst     the archive
//! <cache_dir>/<namespace>/<key>/manifest.json     path, type, size, mode, mtime of every entry
//! <cache_dir>/<namespace>/<key>/.ferry-prepared/  the archive extracted in advance (tier.rs)
//! ```
//!
//! `namespace` is chosen by the runner (`project/<project id>` recommended) so projects never
//! see each other's caches. The manifest lets [`save`] skip re-archiving a cache nothing
//! changed in. The archive's modification time is its "last used" time: [`restore`] and an
//! unchanged [`save`] refresh it, and [`evict`] removes the oldest first.

mod archive;
mod evict;
mod remote;
mod tier;

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::artifacts::{Note, When, write_notes};
use crate::compression::CompressionLevel;
use crate::engine::LogSink;
use crate::hostio::{self, Level};
use crate::jobfs::Limits;
use crate::meter::{Progress, metered};

pub(crate) use archive::unpack;
pub use evict::{EvictReport, evict};
pub(crate) use evict::{GIT_CACHE_LOCK, GIT_CACHE_MARKER};
pub use remote::{
    DEFAULT_REQUEST_TIMEOUT, RemoteCache, SINGLE_PUT_MAX, object_prefix, request_timeout,
    restore_attempts,
};
pub use tier::{Preparation, preparations_done};

/// `cache:policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CachePolicy {
    #[default]
    PullPush,
    Pull,
    Push,
}

impl CachePolicy {
    /// Parses the payload's value (empty = `pull-push`). `None` for an unknown policy, which
    /// gitlab-runner treats as an error of the job.
    pub fn parse(s: &str) -> Option<CachePolicy> {
        match s {
            "" | "pull-push" => Some(CachePolicy::PullPush),
            "pull" => Some(CachePolicy::Pull),
            "push" => Some(CachePolicy::Push),
            _ => None,
        }
    }

    fn pulls(self) -> bool {
        self != CachePolicy::Push
    }

    fn pushes(self) -> bool {
        self != CachePolicy::Pull
    }
}

/// One `cache[]` entry of the payload, with variables already expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheSpec {
    /// As GitLab sent it (it already carries `-protected`/`-non_protected`). Sanitised here.
    pub key: String,
    /// Tried in order when `key` has no archive. The runner appends `CACHE_FALLBACK_KEY`
    /// here unless it ends in `-protected` (gitlab-runner refuses those).
    pub fallback_keys: Vec<String>,
    pub paths: Vec<String>,
    pub untracked: bool,
    pub policy: CachePolicy,
    pub when: When,
}

/// The format of the archives [`save`] writes (`CACHE_COMPRESSION_FORMAT`). Restores read both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheFormat {
    /// tar + zstd: ferry's default; gitlab-runner reads it since 16.2.
    #[default]
    TarZstd,
    /// gitlab-runner's default zip (deflate), for fleets with older gitlab-runners.
    Zip,
}

impl CacheFormat {
    /// `CACHE_COMPRESSION_FORMAT`: `zip` (and gitlab-runner's `zipzstd`, written as plain
    /// zip) or `tarzstd`; unset or anything else is ferry's default.
    pub fn parse(value: Option<&str>) -> CacheFormat {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("zip" | "zipzstd") => CacheFormat::Zip,
            _ => CacheFormat::TarZstd,
        }
    }

    fn is_default(&self) -> bool {
        *self == CacheFormat::TarZstd
    }
}

/// Where caches live for one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheStore {
    /// The runner's cache dir on the host (`cache_dir` / `[runners.docker] cache_dir`).
    pub root: PathBuf,
    /// Sub-directory per project, e.g. `project/42`. Sanitised like a key.
    pub namespace: String,
    /// `[runners.docker] disable_cache = true`: nothing is restored or saved.
    pub disabled: bool,
    /// `[runners.cache] Type = ...`: archives are also kept in an object store, shared by
    /// every host of the fleet (remote.rs). The local archives are then this host's tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteCache>,
    /// What new archives are written as.
    #[serde(skip_serializing_if = "CacheFormat::is_default")]
    pub format: CacheFormat,
    /// `CACHE_COMPRESSION_LEVEL`: the zstd level of tar + zstd archives, the deflate level of
    /// zip ones.
    #[serde(skip_serializing_if = "CompressionLevel::is_default")]
    pub compression: CompressionLevel,
}

impl CacheStore {
    fn key_dir(&self, key: &str) -> Result<PathBuf, CacheError> {
        let ns = sanitize_key(&self.namespace).map_err(|_| CacheError::BadNamespace {
            namespace: self.namespace.clone(),
        })?;
        Ok(self.root.join(ns.key).join(key))
    }

    /// The archive of `key` (already sanitised).
    pub fn archive_path(&self, key: &str) -> Result<PathBuf, CacheError> {
        Ok(self.key_dir(key)?.join(archive::ARCHIVE_NAME))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache namespace {namespace:?} is not a usable relative path")]
    BadNamespace { namespace: String },
    #[error("writing job log: {0}")]
    Log(#[source] io::Error),
    #[error("cancelled")]
    Cancelled,
}

/// A key after gitlab-runner's sanitising rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizedKey {
    pub key: String,
    /// Set when the key had to be changed (shown to the user as a warning).
    pub warning: Option<String>,
}

/// Applies gitlab-runner's cache key rules: `%2F`/`%2E` decoded, `\` turned into `/`, the
/// key rooted so that `..` cannot climb out, trailing spaces of each element dropped. A key
/// may contain `/` (it becomes nested directories). Keys that end up empty are refused.
pub fn sanitize_key(raw: &str) -> Result<SanitizedKey, String> {
    let decoded = raw
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%2e", ".")
        .replace("%2E", ".")
        .replace('\\', "/");
    let mut parts: Vec<String> = Vec::new();
    for part in decoded.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p.to_string()),
        }
    }
    // Trailing whitespace of the last element is dropped; an element left empty goes.
    while let Some(last) = parts.last_mut() {
        let trimmed = last.trim_end().to_string();
        if trimmed.is_empty() {
            parts.pop();
        } else {
            *last = trimmed;
            break;
        }
    }
    let key = parts.join("/");
    if key.is_empty() {
        return Err(format!("cache key {raw:?} could not be sanitized"));
    }
    // Reserved by ferry for its own files inside a key directory.
    if parts.iter().any(|p| {
        p == archive::ARCHIVE_NAME
            || p == archive::MANIFEST_NAME
            || p == remote::STATE_NAME
            || p == tier::PREPARED_NAME
            || p.starts_with(".tmp-")
    }) {
        return Err(format!("cache key {raw:?} uses a name reserved by ferry"));
    }
    let warning = (key != raw).then(|| format!("cache key {raw:?} sanitized to {key:?}"));
    Ok(SanitizedKey { key, warning })
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Extracted the archive of `key` (`fallback`: not the primary key).
    Restored {
        key: String,
        fallback: bool,
        files: u64,
    },
    /// No key had an archive, or extraction failed (a warning was shown; not fatal).
    NotRestored,
    /// `policy: push`.
    SkippedByPolicy,
    /// No `paths` and no `untracked`, or no usable key.
    Nothing,
    Disabled,
}

/// What [`save`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    Created {
        key: String,
        files: u64,
        bytes: u64,
    },
    /// Same files, sizes and times as the stored archive: nothing written.
    UpToDate {
        key: String,
    },
    NoFiles,
    /// Archiving failed (a warning was shown; not fatal, as in gitlab-runner).
    Failed,
    SkippedByPolicy,
    /// `when:` does not match the job's result.
    SkippedByWhen,
    Nothing,
    Disabled,
}

/// `e` and its sources, `: `-separated (tar hides the cause of a failed unpack there).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(&format!(": {c}"));
        cur = c.source();
    }
    text
}

async fn note(log: &mut LogSink<'_>, level: Level, text: &str) -> Result<(), CacheError> {
    hostio::write(log, level, text)
        .await
        .map_err(CacheError::Log)
}

/// Restores the cache of `spec` into `project_dir`: the primary key first, then each
/// fallback key. An archive this host prepared a copy of is restored by moving the copy into
/// place (tier.rs); the next copy is then prepared in the background. Failures are warnings, not errors (the job goes on without a cache), so
/// `Err` only means the log could not be written or the job was cancelled.
pub async fn restore(
    store: &CacheStore,
    spec: &CacheSpec,
    project_dir: &Path,
    log: &mut LogSink<'_>,
    limits: &Limits,
) -> Result<RestoreOutcome, CacheError> {
    let cancel = &limits.cancel;
    if spec.paths.is_empty() && !spec.untracked {
        return Ok(RestoreOutcome::Nothing);
    }
    if store.disabled {
        note(
            log,
            Level::Notice,
            "Skipping cache extraction: the cache is disabled on this runner",
        )
        .await?;
        return Ok(RestoreOutcome::Disabled);
    }
    let primary = match sanitize_key(&spec.key) {
        Ok(k) => k,
        Err(e) => {
            note(
                log,
                Level::Notice,
                &format!("Skipping cache extraction due to {e}"),
            )
            .await?;
            return Ok(RestoreOutcome::Nothing);
        }
    };
    if let Some(w) = &primary.warning {
        note(log, Level::Warning, w).await?;
    }
    if !spec.policy.pulls() {
        note(
            log,
            Level::Notice,
            &format!("Not downloading cache {} due to policy", primary.key),
        )
        .await?;
        return Ok(RestoreOutcome::SkippedByPolicy);
    }
    let mut candidates = vec![(primary.key.clone(), false)];
    for fk in &spec.fallback_keys {
        match sanitize_key(fk) {
            Ok(k) => {
                if let Some(w) = &k.warning {
                    note(log, Level::Warning, w).await?;
                }
                if !candidates.iter().any(|(c, _)| *c == k.key) {
                    candidates.push((k.key, true));
                }
            }
            Err(e) => {
                note(
                    log,
                    Level::Notice,
                    &format!("Skipping cache extraction due to {e}"),
                )
                .await?
            }
        }
    }
    for (key, fallback) in candidates {
        if cancel.is_cancelled() {
            return Err(CacheError::Cancelled);
        }
        note(log, Level::Notice, &format!("Checking cache for {key}...")).await?;
        let path = store.archive_path(&key)?;
        let available = match &store.remote {
            None => path.is_file(),
            Some(remote) => fetch(remote, store, &key, log, limits).await?,
        };
        if !available {
            note(log, Level::Warning, "file does not exist").await?;
            note(log, Level::Warning, "Failed to extract cache").await?;
            continue;
        }
        // This host's prepared copy of the archive, moved into place (tier.rs).
        let key_dir = store.key_dir(&key)?;
        let (kd, p, dir, lim) = (
            key_dir.clone(),
            path.clone(),
            project_dir.to_path_buf(),
            limits.clone(),
        );
        let taken = tokio::task::spawn_blocking(move || tier::take(&kd, &p, &dir, &lim))
            .await
            .unwrap_or_else(|e| Err(tier::NotUsed::Failed(e.to_string())));
        if cancel.is_cancelled() {
            return Err(CacheError::Cancelled);
        }
        let not_used = match taken {
            Ok(files) => {
                archive::touch(&path);
                note(
                    log,
                    Level::Plain,
                    "Using this host's prepared copy of the cache (extracted in advance)",
                )
                .await?;
                note(log, Level::Notice, "Successfully extracted cache").await?;
                tier::prepare_in_background(&key_dir, project_dir, limits);
                return Ok(RestoreOutcome::Restored {
                    key,
                    fallback,
                    files,
                });
            }
            Err(why) => why,
        };
        if let Some(reason) = not_used.reason() {
            note(
                log,
                Level::Plain,
                &format!("Not using this host's prepared copy of the cache: {reason}"),
            )
            .await?;
        }
        let (p, dir, lim) = (path.clone(), project_dir.to_path_buf(), limits.clone());
        let res = tokio::task::spawn_blocking(move || archive::extract(&p, &dir, &lim))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        if cancel.is_cancelled() {
            return Err(CacheError::Cancelled);
        }
        match res {
            Ok((notes, files)) => {
                write_notes(log, &notes).await.map_err(CacheError::Log)?;
                archive::touch(&path);
                note(log, Level::Notice, "Successfully extracted cache").await?;
                if not_used.prepare_next() {
                    tier::prepare_in_background(&key_dir, project_dir, limits);
                }
                return Ok(RestoreOutcome::Restored {
                    key,
                    fallback,
                    files,
                });
            }
            Err(e) => {
                note(log, Level::Warning, &format!("{key}: {}", error_chain(&e))).await?;
                note(log, Level::Warning, "Failed to extract cache").await?;
            }
        }
    }
    Ok(RestoreOutcome::NotRestored)
}

/// Archives the paths of `spec` from `project_dir` under its key, after a job that
/// succeeded (`job_succeeded`) or failed. Skips the work when the files are unchanged since
/// the stored archive. Failures are warnings, as in gitlab-runner.
pub async fn save(
    store: &CacheStore,
    spec: &CacheSpec,
    project_dir: &Path,
    job_succeeded: bool,
    log: &mut LogSink<'_>,
    limits: &Limits,
) -> Result<SaveOutcome, CacheError> {
    let cancel = &limits.cancel;
    if cancel.is_cancelled() {
        return Err(CacheError::Cancelled);
    }
    if !spec.when.applies(job_succeeded) {
        return Ok(SaveOutcome::SkippedByWhen);
    }
    if spec.paths.is_empty() && !spec.untracked {
        return Ok(SaveOutcome::Nothing);
    }
    if store.disabled {
        note(
            log,
            Level::Notice,
            "Skipping cache archiving: the cache is disabled on this runner",
        )
        .await?;
        return Ok(SaveOutcome::Disabled);
    }
    let key = match sanitize_key(&spec.key) {
        Ok(k) => k,
        Err(e) => {
            note(
                log,
                Level::Notice,
                &format!("Skipping cache archiving due to {e}"),
            )
            .await?;
            return Ok(SaveOutcome::Nothing);
        }
    };
    if let Some(w) = &key.warning {
        note(log, Level::Warning, w).await?;
    }
    let key = key.key;
    if !spec.policy.pushes() {
        note(
            log,
            Level::Notice,
            &format!("Not uploading cache {key} due to policy"),
        )
        .await?;
        return Ok(SaveOutcome::SkippedByPolicy);
    }
    note(log, Level::Notice, &format!("Creating cache {key}...")).await?;
    let key_dir = store.key_dir(&key)?;
    let (dir, sp, kd, c, format, level) = (
        project_dir.to_path_buf(),
        spec.clone(),
        key_dir.clone(),
        limits.clone(),
        store.format,
        store.compression,
    );
    // A new tar + zstd archive is handed to its upload while it is written: one PUT once
    // complete, or parts from when it passes the single-PUT size (docs/sources-cache-artifacts.md).
    // It stops (dropping its PUT, aborting its multipart upload) when the job is cancelled or
    // this save is dropped.
    let stop_upload = cancel.child_token();
    let _stop_upload_on_drop = stop_upload.clone().drop_guard();
    let stream = match (&store.remote, store.format) {
        (Some(remote), CacheFormat::TarZstd) => remote.store().ok().map(|client| {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let progress = Progress::default();
            let (r, k, p) = (remote.clone(), key.clone(), progress.clone());
            let max = remote.config.max_uploaded_archive_size;
            let stop = stop_upload.clone();
            let task =
                tokio::spawn(async move { r.upload_stream(client, &k, rx, p, max, stop).await });
            (tx, task, progress)
        }),
        _ => None,
    };
    let (pieces, stream) = match stream {
        Some((tx, task, progress)) => (Some(tx), Some((task, progress))),
        None => (None, None),
    };
    let res = tokio::task::spawn_blocking(move || {
        archive::save(&dir, &sp, &kd, &c, (format, level), pieces)
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    if cancel.is_cancelled() {
        if let Some((task, _)) = stream {
            // It saw the cancel too: it aborts its multipart upload (bounded), so the store
            // keeps no parts of it.
            let _ = task.await;
        }
        return Err(CacheError::Cancelled);
    }
    let (notes, result): (Vec<Note>, _) = match res {
        Ok((notes, r)) => (notes, Ok(r)),
        Err(e) => (Vec::new(), Err(e)),
    };
    write_notes(log, &notes).await.map_err(CacheError::Log)?;
    match result {
        Ok(archive::Saved::NoFiles) => {
            note(
                log,
                Level::Warning,
                "No files to archive, cache not updated",
            )
            .await?;
            Ok(SaveOutcome::NoFiles)
        }
        Ok(archive::Saved::UpToDate) => {
            note(log, Level::Plain, "Archive is up to date!").await?;
            note(log, Level::Notice, "Created cache").await?;
            if let Some(remote) = &store.remote {
                push(remote, store, &key, false, log).await?;
            }
            Ok(SaveOutcome::UpToDate { key })
        }
        Ok(archive::Saved::Written {
            files,
            bytes,
            archive_bytes,
        }) => {
            note(
                log,
                Level::Plain,
                &format!(
                    "{}: {files} files, {} ({} compressed)",
                    match store.format {
                        CacheFormat::TarZstd => "cache.tar.zst",
                        CacheFormat::Zip => "cache.zip",
                    },
                    hostio::human_bytes(bytes),
                    hostio::human_bytes(archive_bytes)
                ),
            )
            .await?;
            note(log, Level::Notice, "Created cache").await?;
            if let Some(remote) = &store.remote {
                let uploaded = match stream {
                    Some(s) => push_streamed(remote, store, &key, s, log).await?,
                    None => false,
                };
                // A streamed upload the job's cancel stopped is not started again from the file.
                if cancel.is_cancelled() {
                    return Err(CacheError::Cancelled);
                }
                if !uploaded {
                    push(remote, store, &key, true, log).await?;
                }
            }
            Ok(SaveOutcome::Created { key, files, bytes })
        }
        Err(e) => {
            note(log, Level::Warning, &format!("{key}: {}", error_chain(&e))).await?;
            note(log, Level::Warning, "Failed to create cache").await?;
            Ok(SaveOutcome::Failed)
        }
    }
}

/// Makes the remote archive of `key` available locally: this host's copy when the remote
/// object is the one this host last saw (or the store cannot be reached), else a download.
/// `false` when there is nothing to extract. Store failures are warnings.
async fn fetch(
    remote: &RemoteCache,
    store: &CacheStore,
    key: &str,
    log: &mut LogSink<'_>,
    limits: &Limits,
) -> Result<bool, CacheError> {
    let key_dir = store.key_dir(key)?;
    let path = key_dir.join(archive::ARCHIVE_NAME);
    let client = match remote.store() {
        Ok(c) => c,
        Err(e) => {
            note(log, Level::Warning, &format!("Cache store: {e}")).await?;
            return local_copy(&path, log).await;
        }
    };
    let attempts = remote.restore_attempts.max(1);
    let mut failure = None;
    for attempt in 1..=attempts {
        if limits.cancel.is_cancelled() {
            return Err(CacheError::Cancelled);
        }
        if let Some(e) = failure.take() {
            note(
                log,
                Level::Warning,
                &format!("{e}; trying again ({attempt}/{attempts}, RESTORE_CACHE_ATTEMPTS)"),
            )
            .await?;
        }
        let state = match remote.head(&*client, key).await {
            Ok(remote::Head::Missing) => return Ok(false),
            Ok(remote::Head::Found(state)) => state,
            Err(e) => {
                failure = Some(e);
                continue;
            }
        };
        if path.is_file() && remote::RemoteState::read(&key_dir).as_ref() == Some(&state) {
            note(
                log,
                Level::Plain,
                "Remote cache is unchanged: using this host's copy",
            )
            .await?;
            return Ok(true);
        }
        note(
            log,
            Level::Plain,
            &format!("Downloading cache {}", remote.object(key)),
        )
        .await?;
        if let Err(e) = std::fs::create_dir_all(&key_dir) {
            failure = Some(remote::RemoteError(format!(
                "creating {}: {e}",
                key_dir.display()
            )));
            continue;
        }
        let tmp = archive::temp_path(&key_dir, "download");
        let progress = Progress::default();
        let download = remote.download(&*client, key, &tmp, &state, &progress);
        let size = Some(state.size);
        let freq = remote.transfer_meter;
        match metered(
            freq,
            "Downloading cache",
            size,
            || progress.get(),
            log,
            download,
        )
        .await
        {
            Ok((state, bytes)) => {
                // The manifest described the archive being replaced: without it the next save
                // archives again. Manifest first, so it never describes the wrong archive.
                let _ = std::fs::remove_file(key_dir.join(archive::MANIFEST_NAME));
                remote::RemoteState::forget(&key_dir);
                if let Err(e) = std::fs::rename(&tmp, &path) {
                    let _ = std::fs::remove_file(&tmp);
                    failure = Some(remote::RemoteError(format!("storing the download: {e}")));
                    continue;
                }
                let _ = state.write(&key_dir);
                let ranges = match state.ranges() {
                    1 => String::new(),
                    n => format!(" in {n} parallel ranges"),
                };
                note(
                    log,
                    Level::Plain,
                    &format!("Downloaded {}{ranges}", hostio::human_bytes(bytes)),
                )
                .await?;
                return Ok(true);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                failure = Some(e);
            }
        }
    }
    if let Some(e) = failure {
        note(log, Level::Warning, &e.to_string()).await?;
    }
    local_copy(&path, log).await
}

async fn local_copy(path: &Path, log: &mut LogSink<'_>) -> Result<bool, CacheError> {
    if path.is_file() {
        note(
            log,
            Level::Plain,
            "Cache store not reachable: using this host's copy",
        )
        .await?;
        return Ok(true);
    }
    Ok(false)
}

/// Finishes the upload that was fed while the archive of `key` was written; `false` when it
/// was dropped (then [`push`] decides, from the archive file). Failures are warnings.
async fn push_streamed(
    remote: &RemoteCache,
    store: &CacheStore,
    key: &str,
    (task, progress): (tokio::task::JoinHandle<remote::Streamed>, Progress),
    log: &mut LogSink<'_>,
) -> Result<bool, CacheError> {
    let key_dir = store.key_dir(key)?;
    let size = std::fs::metadata(key_dir.join(archive::ARCHIVE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    remote::RemoteState::forget(&key_dir);
    let max = remote.config.max_uploaded_archive_size;
    if max == 0 || size <= max {
        note(
            log,
            Level::Plain,
            &format!(
                "Uploading cache to {} ({})",
                remote.object(key),
                hostio::human_bytes(size)
            ),
        )
        .await?;
    }
    let freq = remote.transfer_meter;
    let done = async {
        task.await
            .unwrap_or_else(|e| remote::Streamed::Failed(remote::RemoteError(e.to_string())))
    };
    match metered(
        freq,
        "Uploading cache",
        Some(size),
        || progress.get(),
        log,
        done,
    )
    .await
    {
        remote::Streamed::Uploaded(state) => {
            let _ = state.write(&key_dir);
            note(log, Level::Notice, "Uploaded cache").await?;
        }
        remote::Streamed::Failed(e) => {
            note(log, Level::Warning, &e.to_string()).await?;
            note(log, Level::Warning, "Failed to upload cache").await?;
        }
        // Over the size limit (push() says so), or not this archive: push() decides.
        remote::Streamed::Dropped => return Ok(false),
    }
    Ok(true)
}

/// Uploads the local archive of `key` (just written when `changed`) unless it is over
/// `MaxUploadedArchiveSize` or the remote object is still the one this host uploaded or
/// downloaded for it. Failures are warnings.
async fn push(
    remote: &RemoteCache,
    store: &CacheStore,
    key: &str,
    changed: bool,
    log: &mut LogSink<'_>,
) -> Result<(), CacheError> {
    let key_dir = store.key_dir(key)?;
    let path = key_dir.join(archive::ARCHIVE_NAME);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let max = remote.config.max_uploaded_archive_size;
    if max > 0 && size > max {
        note(
            log,
            Level::Warning,
            &format!(
                "Cache archive of {} is over MaxUploadedArchiveSize ({}): not uploaded",
                hostio::human_bytes(size),
                hostio::human_bytes(max)
            ),
        )
        .await?;
        return Ok(());
    }
    let client = match remote.store() {
        Ok(c) => c,
        Err(e) => {
            note(log, Level::Warning, &format!("Cache store: {e}")).await?;
            note(log, Level::Warning, "Failed to upload cache").await?;
            return Ok(());
        }
    };
    let known = if changed {
        None
    } else {
        remote::RemoteState::read(&key_dir)
    };
    if let Some(known) = known
        && let Ok(remote::Head::Found(now)) = remote.head(&*client, key).await
        && now == known
    {
        note(
            log,
            Level::Plain,
            "Remote cache is up to date: not uploading",
        )
        .await?;
        return Ok(());
    }
    remote::RemoteState::forget(&key_dir);
    note(
        log,
        Level::Plain,
        &format!(
            "Uploading cache to {} ({})",
            remote.object(key),
            hostio::human_bytes(size)
        ),
    )
    .await?;
    let progress = Progress::default();
    let upload = remote.upload(&*client, key, &path, &progress);
    let freq = remote.transfer_meter;
    match metered(
        freq,
        "Uploading cache",
        Some(size),
        || progress.get(),
        log,
        upload,
    )
    .await
    {
        Ok(state) => {
            let _ = state.write(&key_dir);
            note(log, Level::Notice, "Uploaded cache").await?;
        }
        Err(e) => {
            note(log, Level::Warning, &e.to_string()).await?;
            note(log, Level::Warning, "Failed to upload cache").await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Result<String, String> {
        sanitize_key(s).map(|k| k.key)
    }

    #[test]
    fn keys_are_sanitized_like_gitlab_runner() {
        assert_eq!(k("main-protected").unwrap(), "main-protected");
        assert_eq!(k("a/b").unwrap(), "a/b");
        assert_eq!(k("../../etc").unwrap(), "etc");
        assert_eq!(k("%2e%2e%2Fx").unwrap(), "x");
        assert_eq!(k("a\\..\\..\\b").unwrap(), "b");
        assert_eq!(k("key  ").unwrap(), "key");
        assert_eq!(k("a/ ").unwrap(), "a");
        assert!(k("..").is_err());
        assert!(k("").is_err());
        assert!(k("x/cache.tar.zst").is_err());
        assert!(k("x/.ferry-prepared").is_err());
        assert!(sanitize_key("a/../b").unwrap().warning.is_some());
        assert!(sanitize_key("plain").unwrap().warning.is_none());
    }

    #[test]
    fn policies() {
        assert_eq!(CachePolicy::parse(""), Some(CachePolicy::PullPush));
        assert!(CachePolicy::parse("pull").unwrap().pulls());
        assert!(!CachePolicy::parse("pull").unwrap().pushes());
        assert!(!CachePolicy::parse("push").unwrap().pulls());
        assert_eq!(CachePolicy::parse("bogus"), None);
    }
}
