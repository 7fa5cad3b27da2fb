//! The job log pipeline: from the job's output to GitLab's trace.
//!
//! ```text
//! executor / deploy / driver ──► TraceWriter (AsyncWrite, write_line, sections)
//!                                   │ mask secrets (held-back tail across writes)
//!                                   │ output_limit (one notice, then drop)
//!                                   ▼
//!                                 store: ≤ mem_limit in memory, the rest in a temp file
//!                                   │ crc32 + byte count of exactly these bytes
//!                                   ▼
//!                  uploader task: every interval PATCH [accepted..] in ≤ 1 MiB chunks,
//!                  keep-alive PUT after 30 s without contact, Job-Status → RemoteSignal
//!                                   ▼
//!                  TraceHandle::finish(update): close, flush, final PUT until accepted
//! ```
//!
//! Use: [`start`] (inside a tokio runtime) returns the [`TraceWriter`] to hand to the executor
//! and the [`TraceHandle`] the job driver keeps: it selects on [`TraceHandle::signals`] to learn
//! that GitLab wants the job cancelled, and ends the job with [`TraceHandle::finish`].

mod buffer;
mod mask;
pub mod stages;
mod stamp;
mod store;
mod uploader;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::api::{JobApi, JobRef, JobUpdate};

pub use buffer::{Checkpoint, TraceWriter};
pub use mask::{DEFAULT_TOKEN_PREFIXES, URL_PARAM_KEYS};
pub use stamp::Stream;

/// Largest PATCH body (gitlab-runner's `DefaultTracePatchLimit`).
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// gitlab-runner's default `output_limit` (4096 KiB).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// What GitLab said about the job, as the job driver needs it. Only ever moves forward
/// (`None` → `Canceling` → `Abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteSignal {
    /// Nothing: keep running.
    None,
    /// `Job-Status: canceling`: stop the script, run after_script, upload `on_failure`
    /// artifacts, then `finish` with a failed state (GitLab turns it into `canceled`).
    Canceling,
    /// `Job-Status: canceled`/`failed`, or 403: the job is over server-side. Kill everything at
    /// once, skip after_script; `finish` will most likely answer [`FinalOutcome::Gone`].
    Abort,
}

/// How the final update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalOutcome {
    /// GitLab answered 200: the job has its final state and its whole log.
    Accepted,
    /// GitLab answered 403/404: the job no longer belongs to this runner.
    Gone,
    /// Retries were exhausted (see [`TraceTiming`]); `reason` is the last error.
    GaveUp { reason: String },
}

/// Timers of the uploader. The defaults are gitlab-runner's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceTiming {
    /// Time between two uploads until GitLab says otherwise (`X-GitLab-Trace-Update-Interval`).
    pub update_interval: Duration,
    /// GitLab's suggested interval is capped at this (15 min).
    pub max_update_interval: Duration,
    /// Without any successful contact for this long, a keep-alive `PUT state=running` is sent
    /// at the next tick to learn the job status (30 s).
    pub force_send_interval: Duration,
    /// Cap of the back-off between failed uploads while the job runs (60 s).
    pub patch_backoff_max: Duration,
    /// Final phase: failed attempts (PATCH or PUT) tolerated before giving up (10, gitlab-runner's
    /// `job_status_final_update_retry_limit`), but see `final_retry_min_duration`.
    pub final_retry_limit: u32,
    /// Final phase back-off: 1 s, doubling, capped at this (60 s).
    pub final_backoff_max: Duration,
    /// Final phase: do not give up before failures have lasted this long (10 min), so that a
    /// GitLab restart or a short outage never loses a job's result.
    pub final_retry_min_duration: Duration,
    /// Final phase: hard bound on the whole of `finish`, 202 loops included (30 min).
    pub final_timeout: Duration,
}

impl Default for TraceTiming {
    fn default() -> Self {
        TraceTiming {
            update_interval: Duration::from_secs(3),
            max_update_interval: Duration::from_secs(15 * 60),
            force_send_interval: Duration::from_secs(30),
            patch_backoff_max: Duration::from_secs(60),
            final_retry_limit: 10,
            final_backoff_max: Duration::from_secs(60),
            final_retry_min_duration: Duration::from_secs(10 * 60),
            final_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Settings of one job's log.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Most bytes of log kept (`output_limit` KiB × 1024 from config.toml); 0 means the default
    /// 4 MiB. The limit notice comes on top.
    pub output_limit: u64,
    /// Values replaced by `[MASKED]`: the masked variables of the payload and the runner token
    /// (the job token of the `JobRef` is added automatically). Empty values are ignored.
    pub masked: Vec<String>,
    /// Token prefixes from the payload's `features.token_mask_prefixes`, on top of
    /// [`DEFAULT_TOKEN_PREFIXES`].
    pub token_prefixes: Vec<String>,
    /// Most log bytes kept in memory; older bytes wait for upload in a temporary file.
    pub mem_limit: usize,
    /// Where that temporary file goes (it has no name and disappears with the job); the system's
    /// temporary directory (`$TMPDIR`) when `None`.
    pub spill_dir: Option<PathBuf>,
    /// `FF_TIMESTAMPS`: every line prefixed with its time and stream (docs/job-log.md).
    pub timestamps: bool,
    pub timing: TraceTiming,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            output_limit: DEFAULT_OUTPUT_LIMIT,
            masked: Vec::new(),
            token_prefixes: Vec::new(),
            mem_limit: 1024 * 1024,
            spill_dir: None,
            timestamps: false,
            timing: TraceTiming::default(),
        }
    }
}

impl std::fmt::Debug for TraceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceConfig")
            .field("output_limit", &self.output_limit)
            .field("masked", &format_args!("[{} values]", self.masked.len()))
            .field("token_prefixes", &self.token_prefixes)
            .field("mem_limit", &self.mem_limit)
            .field("spill_dir", &self.spill_dir)
            .field("timestamps", &self.timestamps)
            .field("timing", &self.timing)
            .finish()
    }
}

/// The job driver's side of the log: signals from GitLab and the final update.
///
/// Dropping it without calling [`finish`](TraceHandle::finish) stops the uploader at once.
pub struct TraceHandle {
    job_id: u64,
    writer: TraceWriter,
    signals: watch::Receiver<RemoteSignal>,
    finish_tx: oneshot::Sender<JobUpdate>,
    task: AbortOnDropHandle<FinalOutcome>,
    /// Sends the final state without the uploader, should it have panicked.
    fallback: Fallback,
}

type Fallback = Box<
    dyn FnOnce(
            JobUpdate,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = FinalOutcome> + Send>>
        + Send
        + Sync,
>;

/// Attempts of the fallback final update (1 s, 2 s, 4 s, ... apart, capped at 60 s).
const FALLBACK_ATTEMPTS: u32 = 10;

/// The final update sent directly, when the uploader task panicked: the log GitLab holds may be
/// incomplete, so no checksum is claimed, but the job gets its final state instead of staying
/// `running` until GitLab times it out.
async fn fallback_final_update<A: JobApi>(
    api: Arc<A>,
    job: JobRef,
    mut update: JobUpdate,
) -> FinalOutcome {
    update.checksum = None;
    update.bytesize = None;
    let mut last = String::new();
    for attempt in 1..=FALLBACK_ATTEMPTS {
        match api.update_job(&job, &update).await {
            Ok(crate::api::UpdateReply::Accepted { .. })
            | Ok(crate::api::UpdateReply::Pending { .. }) => return FinalOutcome::Accepted,
            Ok(crate::api::UpdateReply::Gone) => return FinalOutcome::Gone,
            Err(e) => last = e.to_string(),
        }
        if attempt < FALLBACK_ATTEMPTS {
            tokio::time::sleep(
                Duration::from_secs(1u64 << (attempt - 1).min(6)).min(Duration::from_secs(60)),
            )
            .await;
        }
    }
    FinalOutcome::GaveUp {
        reason: format!("final update after the uploader failed: {last}"),
    }
}

impl std::fmt::Debug for TraceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceHandle")
            .field("job_id", &self.job_id)
            .field("signal", &*self.signals.borrow())
            .finish()
    }
}

/// Starts the log of `job`: returns the writer for the job's output and the handle that ends it.
/// Spawns the uploader task, so it must be called inside a tokio runtime.
pub fn start<A: JobApi>(job: JobRef, api: Arc<A>, cfg: TraceConfig) -> (TraceWriter, TraceHandle) {
    start_inner(job, api, cfg, None)
}

/// Continues the log of a job an earlier ferry left at `cp` (docs/crash-safety.md): what is
/// written now follows byte `cp.at`; the upload starts where GitLab stood then, and GitLab's
/// 416 (it holds more: bytes the earlier ferry sent after `cp`) moves it on to GitLab's length,
/// so that the bytes written again are not sent twice.
pub fn resume<A: JobApi>(
    job: JobRef,
    api: Arc<A>,
    cfg: TraceConfig,
    cp: &Checkpoint,
) -> (TraceWriter, TraceHandle) {
    start_inner(job, api, cfg, Some(Resume::At(cp)))
}

/// Continues the log of a job an earlier ferry left with no usable checkpoint after the `len`
/// bytes GitLab holds ([`remote_length`]); the final update then claims no checksum.
pub fn append<A: JobApi>(
    job: JobRef,
    api: Arc<A>,
    cfg: TraceConfig,
    len: u64,
) -> (TraceWriter, TraceHandle) {
    start_inner(job, api, cfg, Some(Resume::Append(len)))
}

/// How GitLab's copy of a job's log stands: its length, from the `Range` of the 416 that a
/// PATCH at an offset no log reaches gets (the byte is never appended). `Ok(None)`: GitLab
/// no longer takes this job's log (403/404).
pub async fn remote_length<A: JobApi>(api: &A, job: &JobRef) -> Result<Option<u64>, String> {
    const NOWHERE: u64 = 1 << 62;
    match api
        .patch_trace(job, NOWHERE, bytes::Bytes::from_static(b"\n"))
        .await
    {
        Ok(crate::api::TraceReply::RangeMismatch { len }) => Ok(Some(len)),
        Ok(crate::api::TraceReply::Gone { .. } | crate::api::TraceReply::NotFound) => Ok(None),
        Ok(other) => Err(format!(
            "GitLab accepted a log chunk at offset {NOWHERE}: {other:?}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

enum Resume<'a> {
    At(&'a Checkpoint),
    Append(u64),
}

fn start_inner<A: JobApi>(
    job: JobRef,
    api: Arc<A>,
    cfg: TraceConfig,
    cp: Option<Resume<'_>>,
) -> (TraceWriter, TraceHandle) {
    let mut phrases = cfg.masked.clone();
    phrases.push(job.token.clone());
    let masker = mask::Masker::new(&phrases, &cfg.token_prefixes);
    let limit = if cfg.output_limit == 0 {
        DEFAULT_OUTPUT_LIMIT
    } else {
        cfg.output_limit
    };
    let mut buffer = match cp {
        None => buffer::TraceBuffer::new(
            job.id,
            masker,
            limit,
            store::Store::new(cfg.mem_limit, cfg.spill_dir.clone()),
        ),
        Some(Resume::At(cp)) => buffer::TraceBuffer::resumed(
            job.id,
            masker,
            limit,
            store::Store::starting_at(cfg.mem_limit, cfg.spill_dir.clone(), cp.accepted),
            cp,
        ),
        Some(Resume::Append(len)) => buffer::TraceBuffer::appending(
            job.id,
            masker,
            limit,
            store::Store::starting_at(cfg.mem_limit, cfg.spill_dir.clone(), len),
            len,
        ),
    };
    if cfg.timestamps {
        buffer = buffer.with_timestamps();
    }
    let writer = TraceWriter {
        shared: Arc::new(Mutex::new(buffer)),
        stream: Stream::EXECUTOR,
    };
    let (signal_tx, signals) = watch::channel(RemoteSignal::None);
    let (finish_tx, finish_rx) = oneshot::channel();
    let job_id = job.id;
    let (fallback_api, fallback_job) = (api.clone(), job.clone());
    let fallback: Fallback =
        Box::new(move |update| Box::pin(fallback_final_update(fallback_api, fallback_job, update)));
    let up = uploader::Uploader::new(job, api, writer.shared.clone(), cfg.timing, signal_tx);
    // The uploader logs under the job's span (its `job`, `runner` and `project`).
    let task = AbortOnDropHandle::new(tokio::spawn(up.run(finish_rx).in_current_span()));
    let handle = TraceHandle {
        job_id,
        writer: writer.clone(),
        signals,
        finish_tx,
        task,
        fallback,
    };
    (writer, handle)
}

impl TraceHandle {
    /// GitLab's view of the job. `rx.wait_for(|s| *s >= RemoteSignal::Canceling)` in a
    /// `select!` is how the driver learns about a cancel.
    pub fn signals(&self) -> watch::Receiver<RemoteSignal> {
        self.signals.clone()
    }

    /// Another writer for the same log.
    pub fn writer(&self) -> TraceWriter {
        self.writer.clone()
    }

    /// Ends the job: stops accepting output (releasing the held-back masking tail), uploads every
    /// remaining byte, then sends `update` with `checksum`/`bytesize` filled in (whatever they
    /// held is replaced), retrying as described in [`TraceTiming`] until GitLab accepts it.
    ///
    /// The final state is never sent before GitLab has accepted the whole log, unless GitLab
    /// stopped the log with 403/404. Bounded by `TraceTiming::final_timeout`; dropping the
    /// future abandons the update.
    ///
    /// Should the uploader task have panicked, the final state is sent directly (without a
    /// checksum: GitLab may hold only part of the log), so the job still ends.
    pub async fn finish(self, update: JobUpdate) -> FinalOutcome {
        buffer::lock(&self.writer.shared).close();
        let TraceHandle {
            job_id,
            finish_tx,
            task,
            fallback,
            ..
        } = self;
        if finish_tx.send(update.clone()).is_err() {
            // The uploader ended before the final update: only a panic does that.
            tracing::error!(
                job_id,
                "the job log uploader stopped early: sending the final state directly"
            );
            return fallback(update).await;
        }
        match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => {
                tracing::error!(
                    job_id,
                    "the job log uploader panicked: sending the final state directly"
                );
                fallback(update).await
            }
            Err(e) => FinalOutcome::GaveUp {
                reason: format!("the trace uploader task failed: {e}"),
            },
        }
    }
}
