//! An in-memory `JobApi` that keeps a job's trace and status the way GitLab does, for the
//! uploader tests: a PATCH is appended only when its offset equals the current length (else 416
//! with the real length), `Job-Status` comes back on every answer, a job that is over answers
//! 403, and faults (5xx, transport errors, 202s on the final update) can be scripted.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::api::{
    ApiError, ArtifactMeta, JobApi, JobRef, JobState, JobUpdate, RemoteStatus, TraceReply,
    UpdateReply,
};

/// A scripted failure of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An HTTP 5xx after the client's own retries.
    Status(u16),
    /// Connection refused / reset.
    Transport,
}

impl Fault {
    fn error(self, endpoint: &'static str) -> ApiError {
        match self {
            Fault::Status(status) => ApiError::Status {
                endpoint,
                status,
                message: "fake outage".to_string(),
            },
            Fault::Transport => ApiError::Transport {
                endpoint,
                message: "connection refused (fake outage)".to_string(),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PatchRecord {
    pub at: Instant,
    pub offset: u64,
    pub len: usize,
    pub outcome: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct UpdateRecord {
    pub at: Instant,
    pub update: JobUpdate,
    /// The trace length GitLab held when the update arrived.
    pub trace_len: usize,
    pub outcome: &'static str,
}

#[derive(Debug)]
pub(crate) struct FakeState {
    pub token: String,
    pub job_id: u64,
    pub trace: Vec<u8>,
    /// GitLab's job status: `running`, `canceling`, `canceled`, `failed`, `success`.
    pub status: String,
    /// Sent as `X-GitLab-Trace-Update-Interval` on PATCH 202 and PUT answers.
    pub interval: Option<Duration>,
    pub patch_faults: VecDeque<Fault>,
    pub update_faults: VecDeque<Fault>,
    /// Answer 403 to everything (token revoked, job reassigned).
    pub forbidden: bool,
    /// Answer 404 to PATCH (trace endpoint gone).
    pub trace_not_found: bool,
    /// Final updates answered 202 before one is accepted.
    pub final_pending: u32,
    /// `X-GitLab-Trace-Update-Interval` of those 202s.
    pub pending_interval: Option<Duration>,
    pub patches: Vec<PatchRecord>,
    pub updates: Vec<UpdateRecord>,
    /// Protocol violations seen (empty or oversized bodies, wrong token, ...).
    pub violations: Vec<String>,
    /// Artifacts archives GitLab holds, by job id (downloads of dependencies).
    pub artifacts: std::collections::HashMap<u64, Vec<u8>>,
    /// Artifacts uploaded by the job, in order.
    pub uploaded: Vec<ArtifactMeta>,
    /// Answer uploads with this HTTP status instead of 201.
    pub upload_status: Option<u16>,
}

#[derive(Debug)]
pub(crate) struct FakeGitLab {
    pub state: Mutex<FakeState>,
}

impl FakeGitLab {
    pub(crate) fn new(job: &JobRef) -> Self {
        FakeGitLab {
            state: Mutex::new(FakeState {
                token: job.token.clone(),
                job_id: job.id,
                trace: Vec::new(),
                status: "running".to_string(),
                interval: Some(Duration::from_secs(3)),
                patch_faults: VecDeque::new(),
                update_faults: VecDeque::new(),
                forbidden: false,
                trace_not_found: false,
                final_pending: 0,
                pending_interval: Some(Duration::from_secs(3)),
                patches: Vec::new(),
                updates: Vec::new(),
                violations: Vec::new(),
                artifacts: Default::default(),
                uploaded: Vec::new(),
                upload_status: None,
            }),
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    pub(crate) fn trace(&self) -> Vec<u8> {
        self.with(|s| s.trace.clone())
    }

    fn remote_status(status: &str) -> RemoteStatus {
        match status {
            "running" => RemoteStatus::Running,
            "canceling" => RemoteStatus::Canceling,
            "canceled" | "failed" => RemoteStatus::Gone,
            other => RemoteStatus::Other(other.to_string()),
        }
    }

    fn is_over(status: &str) -> bool {
        matches!(status, "canceled" | "failed" | "success")
    }
}

impl JobApi for FakeGitLab {
    async fn update_job(&self, job: &JobRef, update: &JobUpdate) -> Result<UpdateReply, ApiError> {
        self.with(|s| {
            let trace_len = s.trace.len();
            let record = |outcome: &'static str, s: &mut FakeState| {
                s.updates.push(UpdateRecord {
                    at: Instant::now(),
                    update: update.clone(),
                    trace_len,
                    outcome,
                });
            };
            if job.token != s.token || job.id != s.job_id {
                s.violations
                    .push(format!("update for job {} with a wrong token", job.id));
                record("403", s);
                return Ok(UpdateReply::Gone);
            }
            if let Some(fault) = s.update_faults.pop_front() {
                record("fault", s);
                return Err(fault.error("PUT /jobs/:id"));
            }
            if s.forbidden || Self::is_over(&s.status) {
                record("403", s);
                return Ok(UpdateReply::Gone);
            }
            match update.state {
                JobState::Running | JobState::Pending => {
                    record("200", s);
                    Ok(UpdateReply::Accepted {
                        status: Some(Self::remote_status(&s.status)),
                        interval: s.interval,
                    })
                }
                JobState::Success | JobState::Failed => {
                    if update.checksum.is_none() || update.bytesize.is_none() {
                        s.violations
                            .push("final update without checksum/bytesize".to_string());
                    }
                    if s.final_pending > 0 {
                        s.final_pending -= 1;
                        record("202", s);
                        return Ok(UpdateReply::Pending {
                            interval: s.pending_interval,
                        });
                    }
                    s.status = match (s.status.as_str(), update.state) {
                        ("canceling", _) => "canceled",
                        (_, JobState::Success) => "success",
                        _ => "failed",
                    }
                    .to_string();
                    record("200", s);
                    Ok(UpdateReply::Accepted {
                        status: None,
                        interval: None,
                    })
                }
            }
        })
    }

    async fn patch_trace(
        &self,
        job: &JobRef,
        offset: u64,
        chunk: Bytes,
    ) -> Result<TraceReply, ApiError> {
        self.with(|s| {
            let record = |outcome: &'static str, s: &mut FakeState| {
                s.patches.push(PatchRecord {
                    at: Instant::now(),
                    offset,
                    len: chunk.len(),
                    outcome,
                });
            };
            if chunk.is_empty() || chunk.len() > super::MAX_PATCH_BYTES {
                s.violations
                    .push(format!("PATCH body of {} bytes", chunk.len()));
            }
            if job.token != s.token || job.id != s.job_id {
                s.violations
                    .push(format!("PATCH for job {} with a wrong token", job.id));
                record("403", s);
                return Ok(TraceReply::Gone { status: None });
            }
            if let Some(fault) = s.patch_faults.pop_front() {
                record("fault", s);
                return Err(fault.error("PATCH /jobs/:id/trace"));
            }
            if s.trace_not_found {
                record("404", s);
                return Ok(TraceReply::NotFound);
            }
            if s.forbidden || Self::is_over(&s.status) {
                record("403", s);
                return Ok(TraceReply::Gone {
                    status: Some(Self::remote_status(&s.status)),
                });
            }
            if offset != s.trace.len() as u64 {
                record("416", s);
                return Ok(TraceReply::RangeMismatch {
                    len: s.trace.len() as u64,
                });
            }
            s.trace.extend_from_slice(&chunk);
            record("202", s);
            Ok(TraceReply::Accepted {
                len: Some(s.trace.len() as u64),
                status: Some(Self::remote_status(&s.status)),
                interval: s.interval,
            })
        })
    }

    async fn upload_artifacts(
        &self,
        job: &JobRef,
        meta: &ArtifactMeta,
        _path: &Path,
    ) -> Result<(), ApiError> {
        self.with(|s| {
            if job.token != s.token || s.forbidden || Self::is_over(&s.status) {
                return Err(ApiError::Status {
                    endpoint: "POST /jobs/:id/artifacts",
                    status: 403,
                    message: "403 Forbidden".into(),
                });
            }
            if let Some(status) = s.upload_status {
                return Err(ApiError::Status {
                    endpoint: "POST /jobs/:id/artifacts",
                    status,
                    message: "fake outage".into(),
                });
            }
            s.uploaded.push(meta.clone());
            Ok(())
        })
    }

    async fn download_artifacts(
        &self,
        job_id: u64,
        _token: &str,
        dest: &Path,
    ) -> Result<(), ApiError> {
        let bytes = self.with(|s| s.artifacts.get(&job_id).cloned());
        match bytes {
            Some(b) => std::fs::write(dest, b).map_err(|e| ApiError::Io(e.to_string())),
            None => Err(ApiError::Status {
                endpoint: "GET /jobs/:id/artifacts",
                status: 404,
                message: "404 Not Found".into(),
            }),
        }
    }
}
