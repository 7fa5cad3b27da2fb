//! The job's progress (one object) and the rules on it: what runs next, and how a stage's end
//! becomes the job's failure reason, `CI_JOB_STATUS` and log line.

use ferry_deploy::DeployError;
use ferry_executor::EngineError;
use ferry_executor::artifacts::ArtifactError;
use ferry_executor::sources::SourceError;

use super::signals::{Stage, Stop};
use crate::api::ApiError;
use crate::failure::{FailureReason, JobStatus};
use crate::trace::TraceWriter;
use ferry_config::When;

/// How a job ended, before mapping to what this GitLab accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
    },
}

impl Outcome {
    pub(super) fn failed(reason: FailureReason) -> Self {
        Outcome::Failed {
            reason,
            exit_code: None,
        }
    }
}

/// Where a stage stands in the job's sequence, for the run policy ([`JobState::runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Everything before the script: host dirs, sources, cache, dependencies, prepare.
    BeforeScript,
    /// A script step (`script`, `release`, ...) and its `when`.
    Step(When),
    /// `after_script`.
    AfterScript,
    /// `archive_cache` and `upload_artifacts_on_success|failure`, after the steps.
    AfterSteps,
}

/// The job's progress: whether the script started, the first failure and its reason, the stop
/// that ended a stage, and what after_script will see as `CI_JOB_STATUS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobState {
    /// The steps were reached (containers prepared): cache and artifacts are saved after them.
    pub script_started: bool,
    failure: Option<(FailureReason, Option<i32>)>,
    stopped: Option<Stop>,
    status: JobStatus,
    /// While a script step runs under `RUNNER_SCRIPT_TIMEOUT` (`sequence.rs`): its section and
    /// the limit. A timeout then is the script's, and says so in the log.
    pub script_timeout: Option<(String, std::time::Duration)>,
    /// How many caches were saved and artifacts (of those due) uploaded after the steps, for
    /// the journal; a resumed job starts after them (docs/crash-safety.md).
    pub after: AfterDone,
}

/// Caches saved and artifacts uploaded so far after the steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AfterDone {
    pub caches: usize,
    pub artifacts: usize,
}

impl Default for JobState {
    fn default() -> Self {
        JobState {
            script_started: false,
            failure: None,
            stopped: None,
            status: JobStatus::Success,
            script_timeout: None,
            after: AfterDone::default(),
        }
    }
}

impl JobState {
    /// The run policy of every stage and step, given `now`, the stop signal present as it
    /// would start, if any. A stop that arrived between two stages and that this stage would
    /// obey is recorded (and written to the log) first, as if it had stopped the stage before.
    ///
    /// * Before the script, a stage runs while nothing failed or stopped the job.
    /// * A step runs by its `when` (`on_success`: nothing failed yet; `on_failure`: something
    ///   did; `always`), but none after GitLab aborted the job or ferry is shutting down.
    /// * after_script runs after a failure, a timeout or GitLab's graceful `canceling`, as in
    ///   gitlab-runner; not after an abort or a shutdown.
    /// * Cache and artifacts are saved only if the steps were reached, and not after an abort or
    ///   a shutdown, nor once their deadline passed (the job's, or after a timeout of the
    ///   script a time of their own: see `sequence.rs`).
    pub fn admit(&mut self, phase: Phase, now: Option<Stop>, log: &TraceWriter) -> bool {
        if let Some(stop) = now
            && self.stopped.is_none()
            && obeys(phase, stop)
        {
            self.halt(stop, log);
        }
        let over = [now, self.stopped]
            .iter()
            .any(|s| matches!(s, Some(Stop::Abort | Stop::Shutdown)));
        match phase {
            Phase::BeforeScript => !self.failed(),
            Phase::Step(_) if over => false,
            Phase::Step(When::OnSuccess) => !self.failed(),
            Phase::Step(When::OnFailure) => self.failed(),
            Phase::Step(When::Always) => true,
            Phase::AfterScript => !over,
            Phase::AfterSteps => self.script_started && !over && now != Some(Stop::Timeout),
        }
    }

    /// The progress of a job an earlier ferry left while it saved its cache or artifacts: the
    /// steps ran and ended with `failure` (none: success), and `after` is done.
    pub fn after_steps(failure: Option<(FailureReason, Option<i32>)>, after: AfterDone) -> Self {
        let mut state = JobState {
            script_started: true,
            after,
            ..JobState::default()
        };
        if let Some((reason, exit_code)) = failure {
            state.fail(reason, exit_code);
        }
        state
    }

    /// Something failed or stopped the job.
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// `CI_JOB_STATUS` for after_script: success, failed, canceled or timedout.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// A stage failed. The first failure is the job's.
    pub fn fail(&mut self, reason: FailureReason, exit_code: Option<i32>) {
        if self.failure.is_none() {
            self.failure = Some((reason, exit_code));
        }
        if self.status == JobStatus::Success {
            self.status = JobStatus::Failed;
        }
    }

    /// A stop signal ended a stage. The first stop decides the job's reason, also over an
    /// earlier failure of the script (a job that failed and then timed out while saving its
    /// artifacts timed out).
    pub fn stop(&mut self, stop: Stop) {
        if self.stopped.is_some() {
            return;
        }
        self.stopped = Some(stop);
        self.failure = Some((stop_reason(stop), None));
        self.status = match stop {
            Stop::Timeout => JobStatus::TimedOut,
            _ => JobStatus::Canceled,
        };
    }

    pub fn outcome(&self) -> Outcome {
        match self.failure {
            None => Outcome::Success,
            Some((reason, exit_code)) => Outcome::Failed { reason, exit_code },
        }
    }

    /// The one place a stage's end becomes the job's progress: a stop or an error is written to
    /// the log and recorded; what the stage produced is handed back when it succeeded.
    pub fn settle<T, E: Into<StageError>>(
        &mut self,
        stage: Stage<Result<T, E>>,
        log: &TraceWriter,
    ) -> Option<T> {
        match stage {
            Stage::Done(Ok(t)) => Some(t),
            Stage::Done(Err(e)) => {
                self.error(e.into(), log);
                None
            }
            Stage::Stopped(stop) => {
                self.halt(stop, log);
                None
            }
        }
    }

    /// A stage failed: its line goes to the log, its reason is recorded.
    pub fn error(&mut self, e: StageError, log: &TraceWriter) {
        log.write_error(&e.log_line());
        self.fail(e.reason(), None);
    }

    /// A stop signal ended a stage: recorded, and written to the log if it is the job's first
    /// (a later one changes nothing: the first stop decides).
    pub fn halt(&mut self, stop: Stop, log: &TraceWriter) {
        if self.stopped.is_none() {
            match (&self.script_timeout, stop) {
                // gitlab-runner's warning (its `warnTimeoutExceeded`), then the job's line.
                (Some((section, limit)), Stop::Timeout) => {
                    log.write_warning(&format!(
                        "{section} could not run to completion because the timeout was exceeded. For more control over job and script timeouts see: https://docs.gitlab.com/ci/runners/configure_runners/#set-script-and-after_script-timeouts"
                    ));
                    log.write_error(&format!(
                        "Job failed: execution took longer than the script timeout of {} (RUNNER_SCRIPT_TIMEOUT)",
                        ferry_config::duration::format_duration(*limit)
                    ));
                }
                _ => log.write_error(stop_line(stop)),
            }
        }
        self.stop(stop);
    }
}

/// Whether a stage of `phase` stops for `stop`: after_script and what follows it run through
/// GitLab's `canceling`, and after_script through the job timeout (it has its own).
fn obeys(phase: Phase, stop: Stop) -> bool {
    match phase {
        Phase::BeforeScript | Phase::Step(_) => true,
        Phase::AfterScript => matches!(stop, Stop::Abort | Stop::Shutdown),
        Phase::AfterSteps => stop != Stop::Canceling,
    }
}

fn stop_reason(stop: Stop) -> FailureReason {
    match stop {
        Stop::Timeout => FailureReason::JobExecutionTimeout,
        // gitlab-runner reports a cancelled job as failed/unknown_failure; GitLab turns it
        // into `canceled`.
        Stop::Canceling | Stop::Abort => FailureReason::UnknownFailure,
        Stop::Shutdown => FailureReason::RunnerInterrupted,
    }
}

fn stop_line(stop: Stop) -> &'static str {
    match stop {
        Stop::Timeout => "Job failed: execution took longer than the job timeout",
        Stop::Canceling | Stop::Abort => "Job canceled by GitLab",
        Stop::Shutdown => {
            "Job failed: the runner was stopped (ferry received a termination signal)"
        }
    }
}

/// Why a stage failed, with its cause kept (`#[source]`); the log line is formed from both
/// where it is shown ([`StageError::log_line`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum StageError {
    #[error("creating the build directory")]
    HostDirs(#[source] std::io::Error),
    #[error("writing file variables")]
    FileVariables(#[source] std::io::Error),
    #[error("getting the sources")]
    Sources(#[source] SourceError),
    #[error("temporary file")]
    TempFile(#[source] std::io::Error),
    #[error("downloading artifacts of {name} ({id})")]
    Download {
        name: String,
        id: u64,
        #[source]
        source: ApiError,
    },
    #[error("extracting artifacts of {name} ({id})")]
    Extract {
        name: String,
        id: u64,
        #[source]
        source: ArtifactError,
    },
    #[error("archiving artifacts")]
    Archive(#[source] ArtifactError),
    #[error("uploading artifacts")]
    Upload(#[source] ApiError),
    #[error("the executor")]
    Engine(#[source] EngineError),
    /// A get_sources hook's script ended with a non-zero exit code.
    #[error("{name} failed with exit code {exit_code}")]
    Hook { name: String, exit_code: i32 },
    #[error("the deploy step")]
    Deploy(#[source] DeployError),
    /// The containers of a previous job of the project dir, which may still use its files,
    /// could not be removed (docs/docker-executor.md, "Cleanup").
    #[error(
        "the containers of the previous job {job} of this project could not be removed and may still use its directory"
    )]
    Leftover {
        job: u64,
        #[source]
        source: EngineError,
    },
}

impl From<EngineError> for StageError {
    fn from(e: EngineError) -> Self {
        StageError::Engine(e)
    }
}

impl From<DeployError> for StageError {
    fn from(e: DeployError) -> Self {
        StageError::Deploy(e)
    }
}

impl StageError {
    pub fn reason(&self) -> FailureReason {
        match self {
            StageError::Engine(EngineError::ImagePull { .. }) => FailureReason::ImagePullFailure,
            StageError::Engine(EngineError::Configuration(_))
            | StageError::Deploy(DeployError::Configuration(_)) => {
                FailureReason::RunnerConfigurationError
            }
            // A bad deploy line, manifest or rollout is the job's own failure, like a script's.
            StageError::Deploy(
                DeployError::Input(_) | DeployError::Rollout(_) | DeployError::Cluster(_),
            ) => FailureReason::ScriptFailure,
            // The hook is the job's (or the runner's) shell, like a script step.
            StageError::Hook { .. } => FailureReason::ScriptFailure,
            _ => FailureReason::RunnerSystemFailure,
        }
    }

    /// The job log's line: a configuration error is the job's or the runner's settings, not a
    /// failure of the system; a deploy error speaks for itself.
    pub fn log_line(&self) -> String {
        match self {
            StageError::Engine(e @ EngineError::Configuration(_)) => format!("Job failed: {e}"),
            StageError::Engine(e) => format!("Job failed (system failure): {e}"),
            StageError::Deploy(e) => e.to_string(),
            other => match std::error::Error::source(other) {
                Some(cause) => format!("Job failed: {other}: {cause}"),
                None => format!("Job failed: {other}"),
            },
        }
    }
}
