//! The local `JobApi` of `ferry exec` (docs/exec.md): what GitLab stores for a job, kept on
//! disk, and its log shown on the terminal. The driver cannot tell it from GitLab: the trace
//! is PATCHed to it, the final update PUT, artifacts uploaded and downloaded by job id.
//!
//! A first Ctrl-C makes every job's next status answer `canceling`, as GitLab's Cancel
//! button does (the script stops, after_script runs); the caller stops ferry at once on a
//! second one through the driver's shutdown token.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::api::{
    ApiError, ArtifactMeta, JobApi, JobRef, JobState, JobUpdate, RemoteStatus, TraceReply,
    UpdateReply,
};

use super::terminal::Terminal;

/// One job's record.
struct Record {
    /// Shared with the blocking thread that writes a chunk.
    log: Arc<std::fs::File>,
    len: u64,
    token: String,
    last: Option<JobUpdate>,
}

/// Logs under `<dir>/logs/`, artifacts under `<dir>/artifacts/<job id>/`.
pub struct LocalApi {
    dir: PathBuf,
    jobs: Mutex<HashMap<u64, Record>>,
    /// Shared with the blocking threads that show the logs (a terminal can block).
    terminal: Arc<Mutex<Terminal>>,
    canceling: AtomicBool,
}

impl LocalApi {
    pub fn new(dir: &Path, terminal: Terminal) -> std::io::Result<LocalApi> {
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("artifacts"))?;
        Ok(LocalApi {
            dir: dir.to_path_buf(),
            jobs: Mutex::new(HashMap::new()),
            terminal: Arc::new(Mutex::new(terminal)),
            canceling: AtomicBool::new(false),
        })
    }

    /// Announces a job before it runs: its log file (returned) and the token its calls carry.
    pub fn register(&self, job: &JobRef, file_name: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join("logs").join(file_name);
        let log = Arc::new(std::fs::File::create(&path)?);
        self.lock().insert(
            job.id,
            Record {
                log,
                len: 0,
                token: job.token.clone(),
                last: None,
            },
        );
        Ok(path)
    }

    /// The final update a job ended with, once it was sent.
    pub fn outcome(&self, id: u64) -> Option<JobUpdate> {
        self.lock()
            .get(&id)
            .and_then(|r| r.last.clone())
            .filter(|u| matches!(u.state, JobState::Success | JobState::Failed))
    }

    /// GitLab's Cancel for every running job.
    pub fn cancel_all(&self) {
        self.canceling.store(true, Ordering::SeqCst);
    }

    pub fn terminal(&self) -> std::sync::MutexGuard<'_, Terminal> {
        self.terminal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Record>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> RemoteStatus {
        if self.canceling.load(Ordering::SeqCst) {
            RemoteStatus::Canceling
        } else {
            RemoteStatus::Running
        }
    }

    /// The job's record, if `job` carries the token it was registered with (as GitLab checks
    /// the job token).
    fn check(&self, job: &JobRef, endpoint: &'static str) -> Result<(), ApiError> {
        match self.lock().get(&job.id) {
            Some(r) if r.token == job.token => Ok(()),
            _ => Err(ApiError::Status {
                endpoint,
                status: 403,
                message: format!("job {} is not a job of this pipeline", job.id),
            }),
        }
    }

    /// Whether job `id` uploaded an `archive` artifact (what a dependency downloads).
    pub fn has_archive(&self, id: u64) -> bool {
        self.archive_of(id).is_some()
    }

    /// Where job `id`'s `archive` artifact is stored, if it uploaded one.
    pub fn archive_of(&self, id: u64) -> Option<PathBuf> {
        let dir = self.dir.join("artifacts").join(id.to_string());
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("archive-"))
            })
    }

    fn archive_path(&self, job_id: u64, name: &str) -> PathBuf {
        self.dir
            .join("artifacts")
            .join(job_id.to_string())
            .join(name)
    }
}

impl JobApi for LocalApi {
    async fn update_job(&self, job: &JobRef, update: &JobUpdate) -> Result<UpdateReply, ApiError> {
        self.check(job, "update_job")?;
        if let Some(r) = self.lock().get_mut(&job.id) {
            r.last = Some(update.clone());
        }
        Ok(UpdateReply::Accepted {
            status: Some(self.status()),
            interval: None,
        })
    }

    async fn patch_trace(
        &self,
        job: &JobRef,
        offset: u64,
        chunk: Bytes,
    ) -> Result<TraceReply, ApiError> {
        self.check(job, "patch_trace")?;
        let log = {
            let jobs = self.lock();
            let Some(r) = jobs.get(&job.id) else {
                return Ok(TraceReply::NotFound);
            };
            // GitLab's rule: a chunk must start where the stored log ends.
            if offset != r.len {
                return Ok(TraceReply::RangeMismatch { len: r.len });
            }
            r.log.clone()
        };
        // The file and the terminal are written off the async workers (a terminal or a full
        // pipe can block), and outside the lock. A job's trace is sent one chunk at a time, so
        // nothing else writes at this offset meanwhile.
        let (id, terminal, shown) = (job.id, self.terminal.clone(), chunk.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            log.write_all_at(&shown, offset)?;
            terminal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .show(id, &shown);
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| ApiError::Io(format!("writing the log of job {}: {e}", job.id)))?;
        let fresh = {
            let mut jobs = self.lock();
            let Some(r) = jobs.get_mut(&job.id) else {
                return Ok(TraceReply::NotFound);
            };
            if r.len == offset {
                r.len += chunk.len() as u64;
            }
            r.len
        };
        Ok(TraceReply::Accepted {
            len: Some(fresh),
            status: Some(self.status()),
            interval: None,
        })
    }

    async fn upload_artifacts(
        &self,
        job: &JobRef,
        meta: &ArtifactMeta,
        path: &Path,
    ) -> Result<(), ApiError> {
        self.check(job, "upload_artifacts")?;
        // `name` comes from the job's YAML: only its last component names the stored file.
        let name = Path::new(&meta.name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}.{}", meta.artifact_type, meta.artifact_format));
        let kind = super::file_name(&format!("{}-{name}", meta.artifact_type));
        let dest = self.archive_path(job.id, &kind);
        // Archives can be large: copied off the async workers.
        let copy = async {
            tokio::fs::create_dir_all(dest.parent().unwrap_or(&self.dir)).await?;
            tokio::fs::copy(path, &dest).await.map(drop)
        };
        copy.await
            .map_err(|e| ApiError::Io(format!("storing artifacts of job {}: {e}", job.id)))
    }

    async fn download_artifacts(
        &self,
        job_id: u64,
        token: &str,
        dest: &Path,
    ) -> Result<(), ApiError> {
        if self.lock().get(&job_id).map(|r| r.token.as_str()) != Some(token) {
            return Err(ApiError::Status {
                endpoint: "download_artifacts",
                status: 403,
                message: format!("job {job_id} is not a job of this pipeline"),
            });
        }
        // The `archive` artifact, as GitLab serves for a dependency.
        let Some(src) = self.archive_of(job_id) else {
            return Err(ApiError::Status {
                endpoint: "download_artifacts",
                status: 404,
                message: format!("job {job_id} has no artifacts archive"),
            });
        };
        tokio::fs::copy(&src, dest)
            .await
            .map(drop)
            .map_err(|e| ApiError::Io(format!("reading artifacts of job {job_id}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> (tempfile::TempDir, LocalApi) {
        let d = tempfile::tempdir().unwrap();
        let api = LocalApi::new(d.path(), Terminal::sink()).unwrap();
        (d, api)
    }

    fn job(id: u64) -> JobRef {
        JobRef {
            id,
            token: format!("token-{id}"),
            debug_trace: false,
        }
    }

    #[tokio::test]
    async fn the_log_file_holds_every_byte_once_and_out_of_order_chunks_are_resynced() {
        let (_d, api) = api();
        let path = api.register(&job(1), "1-build.log").unwrap();
        let r = api
            .patch_trace(&job(1), 0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        assert!(matches!(r, TraceReply::Accepted { len: Some(6), .. }));
        let r = api
            .patch_trace(&job(1), 3, Bytes::from_static(b"xx"))
            .await
            .unwrap();
        assert_eq!(r, TraceReply::RangeMismatch { len: 6 });
        api.patch_trace(&job(1), 6, Bytes::from_static(b"world\n"))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hello world\n");
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_as_gitlab_does() {
        let (_d, api) = api();
        api.register(&job(1), "1.log").unwrap();
        let mut other = job(1);
        other.token = "forged".into();
        let e = api
            .patch_trace(&other, 0, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Status { status: 403, .. }), "{e}");
        let dest = tempfile::NamedTempFile::new().unwrap();
        let e = api
            .download_artifacts(1, "forged", dest.path())
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Status { status: 403, .. }), "{e}");
    }

    #[tokio::test]
    async fn artifacts_reach_a_later_job_and_a_job_without_them_is_a_404() {
        let (d, api) = api();
        api.register(&job(1), "1.log").unwrap();
        api.register(&job(2), "2.log").unwrap();
        let zip = d.path().join("upload.zip");
        std::fs::write(&zip, b"PK-archive").unwrap();
        let meta = ArtifactMeta {
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
            name: "../../escape/artifacts.zip".into(),
            expire_in: None,
            progress: Default::default(),
        };
        api.upload_artifacts(&job(1), &meta, &zip).await.unwrap();
        assert!(!d.path().join("escape").exists());
        let dest = d.path().join("down.zip");
        api.download_artifacts(1, "token-1", &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"PK-archive");
        let e = api
            .download_artifacts(2, "token-2", &dest)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Status { status: 404, .. }), "{e}");
    }

    #[tokio::test]
    async fn cancel_turns_the_status_to_canceling_and_the_outcome_is_the_final_update() {
        let (_d, api) = api();
        api.register(&job(1), "1.log").unwrap();
        let running = JobUpdate {
            state: JobState::Running,
            failure_reason: None,
            exit_code: None,
            checksum: None,
            bytesize: None,
        };
        let r = api.update_job(&job(1), &running).await.unwrap();
        assert_eq!(
            r,
            UpdateReply::Accepted {
                status: Some(RemoteStatus::Running),
                interval: None
            }
        );
        assert_eq!(api.outcome(1), None);
        api.cancel_all();
        let r = api
            .patch_trace(&job(1), 0, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(matches!(
            r,
            TraceReply::Accepted {
                status: Some(RemoteStatus::Canceling),
                ..
            }
        ));
        let failed = JobUpdate {
            state: JobState::Failed,
            failure_reason: Some("script_failure".into()),
            ..running
        };
        api.update_job(&job(1), &failed).await.unwrap();
        assert_eq!(api.outcome(1), Some(failed));
    }
}
