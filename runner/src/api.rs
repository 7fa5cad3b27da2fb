//! The job-scoped GitLab calls (the `JobApi` seam) and the types that cross it.
//!
//! The job driver and the trace uploader only talk to GitLab through [`JobApi`]; the real
//! implementation is `gitlab::GitLabClient`, tests may use another. Registration, verification and
//! job requests are inherent methods of the client (used by the CLI and the poll loop).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

/// One job as GitLab knows it: its id and the job token that authenticates job calls.
#[derive(Clone, PartialEq, Eq)]
pub struct JobRef {
    pub id: u64,
    pub token: String,
    /// `CI_DEBUG_TRACE` is in force: log uploads say `debug_trace=true`, as gitlab-runner's do.
    pub debug_trace: bool,
}

impl std::fmt::Debug for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobRef({})", self.id)
    }
}

/// The state sent with `PUT /api/v4/jobs/:id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Success,
    Failed,
}

/// A `PUT /api/v4/jobs/:id` body (without the token, which comes from the `JobRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    pub state: JobState,
    /// Only with `Failed`; a value from GitLab's `failure_reason` enum.
    pub failure_reason: Option<String>,
    pub exit_code: Option<i32>,
    /// `crc32:%08x` over every trace byte sent, and their count.
    pub checksum: Option<String>,
    pub bytesize: Option<u64>,
}

/// What GitLab's job status header says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteStatus {
    Running,
    /// The user pressed Cancel: stop the script, run after_script, finish as failed.
    Canceling,
    /// The job is over server-side (canceled, failed, erased, token expired): abort at once.
    Gone,
    Other(String),
}

/// Reply to a job update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateReply {
    /// 200: applied.
    Accepted {
        status: Option<RemoteStatus>,
        interval: Option<Duration>,
    },
    /// 202: final state accepted, GitLab still persisting the trace; send the same PUT again
    /// after `interval`.
    Pending { interval: Option<Duration> },
    /// 403/404: the job no longer belongs to this runner.
    Gone,
}

/// Reply to a trace PATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceReply {
    /// 202: appended. `len` is GitLab's new trace length (from the `Range` header) when given.
    Accepted {
        len: Option<u64>,
        status: Option<RemoteStatus>,
        interval: Option<Duration>,
    },
    /// 416: GitLab holds `len` bytes; resend from there.
    RangeMismatch { len: u64 },
    /// 403: the job is gone (cancelled, trace too large, token invalid): abort the job.
    Gone { status: Option<RemoteStatus> },
    /// 404: stop sending the trace (the final PUT is still sent).
    NotFound,
}

/// Metadata of one artifacts upload (`POST /api/v4/jobs/:id/artifacts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactMeta {
    /// `archive`, `junit`, `dotenv`, ...
    pub artifact_type: String,
    /// `zip`, `gzip`, `raw`.
    pub artifact_format: String,
    /// File name GitLab stores (e.g. `artifacts.zip`).
    pub name: String,
    pub expire_in: Option<String>,
    /// Bytes sent so far, for the transfer meter (`TRANSFER_METER_FREQUENCY`).
    #[serde(skip)]
    pub progress: ferry_executor::meter::Progress,
}

/// Why a call did not get an answer GitLab-level code could act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Connection refused, reset, timed out, TLS failure: worth retrying.
    #[error("{endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    /// An HTTP status the caller cannot act on (5xx after retries, 400, ...).
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    /// The answer could not be read.
    #[error("{endpoint}: invalid response: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    /// Local file problem while uploading or downloading.
    #[error("{0}")]
    Io(String),
}

impl ApiError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The calls a running job makes.
pub trait JobApi: Send + Sync + 'static {
    fn update_job(
        &self,
        job: &JobRef,
        update: &JobUpdate,
    ) -> impl Future<Output = Result<UpdateReply, ApiError>> + Send;

    /// `chunk` is at most 1 MiB and never empty; `offset` is where it starts in the whole log.
    fn patch_trace(
        &self,
        job: &JobRef,
        offset: u64,
        chunk: Bytes,
    ) -> impl Future<Output = Result<TraceReply, ApiError>> + Send;

    /// Upload the file at `path` (streamed from disk).
    fn upload_artifacts(
        &self,
        job: &JobRef,
        meta: &ArtifactMeta,
        path: &Path,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Download the artifacts of job `job_id` (authenticated with `token`, the token the payload
    /// gives for that dependency) into the file `dest`, following redirects.
    fn download_artifacts(
        &self,
        job_id: u64,
        token: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}
