//! The host stages behind a seam: the job's files on the host (directories, file variables,
//! sources, cache, artifacts). [`HostFs`] does the real work through `ferry_executor`'s
//! `jobfs`, `sources`, `cache` and `artifacts` (docs/security.md); the driver's tests put a
//! fake in its place to run without git or a file system.

use std::future::Future;
use std::path::Path;

use ferry_executor::LogSink;
use ferry_executor::artifacts::{ArchiveSummary, ArtifactError, ArtifactSpec, ExtractSummary};
use ferry_executor::cache::{CacheError, CacheSpec};
use ferry_executor::jobfs::{self, FileReader, Limits};
use ferry_executor::sources::SourceError;
use tokio_util::sync::CancellationToken;

use crate::plan::Plan;

/// What the driver asks of the host for one job, in the order it asks.
pub trait Host: Send + Sync + 'static {
    /// Creates the job's folder (ferry's alone, mode 0700) and the project dir in it.
    fn create_dirs(&self, plan: &Plan) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Writes the job's file variables into its own `tmp` dir, readable by the job's `user`.
    fn write_file_variables(
        &self,
        plan: &Plan,
        user: Option<&str>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Removes the file variables: they live only as long as their job.
    fn remove_file_variables(
        &self,
        plan: &Plan,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// `hook_config`: what the job's `pre_get_sources_script` configured, already through the
    /// allow-list (`ferry_executor::sources::carried_git_config`).
    fn get_sources(
        &self,
        plan: &Plan,
        hook_config: &[(String, String)],
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Restores one cache; a cache that cannot be restored is a warning in the log, so `Err`
    /// means only that the log could not be written or the stage was cancelled.
    fn restore_cache(
        &self,
        plan: &Plan,
        cache: &CacheSpec,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Saves one cache after a job that succeeded or failed; failures are warnings, as in
    /// restore.
    fn save_cache(
        &self,
        plan: &Plan,
        cache: &CacheSpec,
        succeeded: bool,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Unpacks a downloaded artifacts archive of a dependency into the project dir.
    fn extract_artifacts(
        &self,
        plan: &Plan,
        archive: &Path,
        limits: &Limits,
    ) -> impl Future<Output = Result<ExtractSummary, ArtifactError>> + Send;

    /// Archives the files of one `artifacts:` entry into `out`.
    fn archive_artifacts(
        &self,
        plan: &Plan,
        spec: &ArtifactSpec,
        out: &Path,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> impl Future<Output = Result<ArchiveSummary, ArtifactError>> + Send;
}

/// The host's real file system and git.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

impl Host for HostFs {
    /// The folder per project is ferry's alone (mode 0700, never mounted); the project dir in
    /// it is what the job's containers mount (docs/security.md).
    async fn create_dirs(&self, plan: &Plan) -> std::io::Result<()> {
        let project = plan.host_project_dir.clone();
        jobfs::blocking(move || {
            if let Some(base) = project.parent() {
                std::fs::create_dir_all(base)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))?;
            }
            // World-writable as gitlab-runner's helper creates it (umask 0000), for non-root jobs.
            jobfs::JobDir::create(&project, 0o777).map(drop)
        })
        .await
    }

    /// Created anew for the job before its container starts, which mounts the dir read-only
    /// at `<project dir>.tmp`.
    async fn write_file_variables(&self, plan: &Plan, user: Option<&str>) -> std::io::Result<()> {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for v in plan.variables.deduplicated().into_iter().filter(|v| v.file) {
            // GitLab's variable keys are letters, digits and `_`; anything else is not a key
            // GitLab sends, and never becomes a path.
            if v.key.is_empty() || !v.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{:?} is not a valid variable key", v.key),
                ));
            }
            files.push((v.key.clone(), v.value.clone().into_bytes()));
        }
        let dir = plan.host_tmp_dir.clone();
        let reader = FileReader::for_user(user);
        jobfs::blocking(move || {
            let refs: Vec<(String, &[u8])> =
                files.iter().map(|(k, v)| (k.clone(), &v[..])).collect();
            jobfs::write_files(&dir, &refs, reader)
        })
        .await
    }

    async fn remove_file_variables(&self, plan: &Plan) -> std::io::Result<()> {
        let tmp = plan.host_tmp_dir.clone();
        jobfs::blocking(move || jobfs::remove_files(&tmp)).await
    }

    async fn get_sources(
        &self,
        plan: &Plan,
        hook_config: &[(String, String)],
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), SourceError> {
        if hook_config.is_empty() {
            return ferry_executor::sources::get_sources(&plan.sources, log, cancel).await;
        }
        let mut spec = plan.sources.clone();
        spec.hook_git_config = hook_config.to_vec();
        ferry_executor::sources::get_sources(&spec, log, cancel).await
    }

    async fn restore_cache(
        &self,
        plan: &Plan,
        cache: &CacheSpec,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<(), CacheError> {
        ferry_executor::cache::restore(
            &plan.cache_store,
            cache,
            &plan.host_project_dir,
            log,
            limits,
        )
        .await
        .map(drop)
    }

    async fn save_cache(
        &self,
        plan: &Plan,
        cache: &CacheSpec,
        succeeded: bool,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<(), CacheError> {
        ferry_executor::cache::save(
            &plan.cache_store,
            cache,
            &plan.host_project_dir,
            succeeded,
            log,
            limits,
        )
        .await
        .map(drop)
    }

    async fn extract_artifacts(
        &self,
        plan: &Plan,
        archive: &Path,
        limits: &Limits,
    ) -> Result<ExtractSummary, ArtifactError> {
        let (zip, dir, limits) = (
            archive.to_path_buf(),
            plan.host_project_dir.clone(),
            limits.clone(),
        );
        tokio::task::spawn_blocking(move || {
            ferry_executor::artifacts::extract_archive(&zip, &dir, &limits)
        })
        .await
        .map_err(|e| ArtifactError::Write {
            path: archive.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn archive_artifacts(
        &self,
        plan: &Plan,
        spec: &ArtifactSpec,
        out: &Path,
        log: &mut LogSink<'_>,
        limits: &Limits,
    ) -> Result<ArchiveSummary, ArtifactError> {
        ferry_executor::artifacts::archive(&plan.host_project_dir, spec, out, log, limits).await
    }
}
