//! The job driver: plan → host stages and engine (or deploy step) → final status, whatever
//! fails (docs/architecture.md, "A job's stages").
//!
//! Every job ends with a final update and its complete log: the trace is started before anything
//! can fail (only the plan, a pure function whose panics are caught, is compiled before it, for
//! the masks it gives the trace), every error becomes a line in the log and a failure_reason,
//! cleanup runs on its own deadline, and the final update is retried by the trace until GitLab
//! accepts it.
//!
//! * `signals.rs`: the stop signals (job timeout, GitLab's `canceling` and `canceled`, shutdown)
//!   and the one way a stage runs under them.
//! * `state.rs`: the job's progress, the run policy, and how a stage's end becomes the job's.
//! * `sequence.rs`: the order of the stages; `sections.rs`: one function per log section.
//! * `host.rs`: the host stages behind a seam; `cleanup.rs`: the project dir's claim, cleanup.

mod cleanup;
mod host;
mod resume;
mod sections;
mod sequence;
mod signals;
mod state;
#[cfg(test)]
mod tests;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

use ferry_config::RunnerSection;
use ferry_deploy::Deployer;
use ferry_executor::{Engine, EngineError, JobEnv, StepOutcome};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::api::{JobApi, JobRef, JobState, JobUpdate};
use crate::failure::FailureReason;
use crate::gitlab::payload::JobPayload;
use crate::journal::{self, Journal};
use crate::metrics::{Metrics, RunnerLabels};
use crate::plan::{self, Execution, JobContext, Masks, Plan};
use crate::trace::{self, FinalOutcome, TraceConfig, TraceTiming, TraceWriter};

pub use cleanup::{CLEANUP_TIMEOUT, Workspace, Workspaces};
pub use host::{Host, HostFs};
pub use resume::claim_resumed;
pub use state::Outcome;

use signals::Signals;
use state::JobState as Progress;

/// The runner-side ingredients of a job.
pub struct Driver<E, D, A, H = HostFs> {
    pub engine: Arc<E>,
    pub deployer: Arc<D>,
    pub api: Arc<A>,
    /// The job's files on the host: sources, cache, artifacts.
    pub host: Arc<H>,
    pub metrics: Metrics,
    pub system_id: String,
    pub trace_timing: TraceTiming,
    /// Container removals still running after their job's final update.
    pub cleanups: TaskTracker,
    /// One job at a time per project dir, until its containers are gone.
    pub workspaces: Workspaces,
    /// The journal of running jobs (`ferry run`; docs/crash-safety.md), written at each
    /// change of a job's stage.
    pub journal: Option<Arc<Journal>>,
}

/// A job's journal entry, replaced at each change of its stage.
#[derive(Clone)]
pub(crate) struct JobJournal {
    journal: Arc<Journal>,
    entry: Arc<std::sync::Mutex<journal::Entry>>,
}

impl JobJournal {
    /// Records that the job is now at `stage` (off the async workers). A failure is ferry's
    /// warning, never the job's: the job runs on, only a restart could not resume it.
    /// Whether the entry was written.
    pub(crate) async fn stage(&self, stage: journal::Stage) -> bool {
        let entry = match self.entry.lock() {
            Ok(mut e) => {
                e.stage = stage;
                e.clone()
            }
            Err(_) => return false,
        };
        let j = self.journal.clone();
        match tokio::task::spawn_blocking(move || j.write(&entry)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "writing the job's journal entry failed");
                false
            }
            Err(e) => {
                warn!(error = %e, "writing the job's journal entry failed");
                false
            }
        }
    }

    /// The job is over in GitLab: its entry goes.
    pub(crate) async fn remove(&self) {
        let Ok((runner, id)) = self.entry.lock().map(|e| (e.runner.clone(), e.job_id)) else {
            return;
        };
        let j = self.journal.clone();
        match tokio::task::spawn_blocking(move || j.remove(&runner, id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "removing the job's journal entry failed"),
            Err(e) => warn!(error = %e, "removing the job's journal entry failed"),
        }
    }
}

/// One job on its way: what it runs, its log, its stop signals and its progress.
struct JobRun<'a> {
    plan: &'a Plan,
    job: &'a JobRef,
    runner: &'a RunnerSection,
    log: &'a TraceWriter,
    signals: Signals,
    state: Progress,
    /// The job's journal entry (`ferry run` only).
    journal: Option<JobJournal>,
}

impl<E: Engine, D: Deployer, A: JobApi, H: Host> Driver<E, D, A, H> {
    /// Run one job to its final status. Never panics on job input; always sends a final update
    /// (unless GitLab says the job is gone). ferry's own log lines of the job (from the
    /// executor, the deploy step and the trace too) carry its `job`, `runner` and `project`.
    pub async fn run(
        &self,
        runner: Arc<RunnerSection>,
        payload: JobPayload,
        ctx: JobContext,
        shutdown: CancellationToken,
    ) {
        let span = tracing::info_span!(
            "job",
            job = payload.id,
            runner = %runner.token.short(),
            project = payload.job_info.project_id,
        );
        self.run_job(runner, payload, ctx, shutdown)
            .instrument(span)
            .await
    }

    async fn run_job(
        &self,
        runner: Arc<RunnerSection>,
        payload: JobPayload,
        ctx: JobContext,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let labels = RunnerLabels {
            runner: runner.token.short().to_string(),
            runner_name: runner.name.clone(),
            system_id: self.system_id.clone(),
        };
        self.metrics.job_started(&labels);
        let info = &payload.job_info;
        let queue = crate::metrics::QueueInfo {
            time_in_queue_seconds: info.time_in_queue_seconds,
            project_jobs_running: info.project_jobs_running_on_instance_runners_count.clone(),
            size: info.queue_size,
            depth: info.queue_depth,
        };
        self.metrics.job_queue(&labels, &queue);
        let mut job = payload.job_ref();
        // A panic in planning still ends the job: it is caught like one while executing.
        let compiled =
            std::panic::catch_unwind(AssertUnwindSafe(|| plan::compile(&payload, &runner, &ctx)));
        // What the log masks and which failure reasons GitLab takes come from the plan; a job
        // that cannot be planned still gets the masks and reasons of its payload.
        let (masks, failure_reasons, timestamps) = match &compiled {
            Ok(Ok(plan)) => {
                // gitlab-runner's `IsDebugModeEnabled`: either makes GitLab keep a debug log.
                job.debug_trace = plan.debug_trace || plan.debug_services;
                (
                    plan.masks.clone(),
                    plan.failure_reasons.clone(),
                    plan.timestamps,
                )
            }
            _ => (
                Masks::new(&payload, &runner),
                payload.features.failure_reasons.clone(),
                plan::timestamps_unplanned(&payload, &runner),
            ),
        };
        let (log, handle) = trace::start(
            job.clone(),
            self.api.clone(),
            TraceConfig {
                timestamps,
                ..self.trace_config(&runner, masks)
            },
        );
        let running = self
            .metrics
            .running
            .add(job_url(&payload), labels.clone(), log.clone());
        self.write_header(&log, &runner);
        let mut cleanup = None;
        let mut journaled = None;
        let outcome = match compiled {
            Ok(Ok(plan)) => {
                let signals = Signals {
                    deadline: ferry_executor::deadline_after(plan.timeout),
                    remote: handle.signals(),
                    shutdown,
                };
                journaled = self.journal.as_ref().map(|j| JobJournal {
                    journal: j.clone(),
                    entry: Arc::new(std::sync::Mutex::new(journal_entry(
                        &runner, &payload, &ctx, &plan,
                    ))),
                });
                let (outcome, workspace) = self
                    .execute_plan(&plan, &job, &runner, &log, signals, journaled.clone())
                    .await;
                if let Execution::Docker { env, .. } = plan.execution {
                    cleanup = Some((*env, workspace));
                }
                outcome
            }
            Ok(Err(e)) => {
                log.write_error(&format!("job {}: {e}", job.id));
                Outcome::failed(e.failure_reason())
            }
            Err(panic) => internal_error(&log, panic.as_ref()),
        };
        self.write_timing(&log, &labels, started);
        let update = self.final_update(&outcome, &failure_reasons, &labels, &log);
        if let Some(j) = &journaled {
            j.stage(final_stage(&outcome)).await;
        }
        let final_outcome = handle.finish(update).await;
        if let Some(j) = &journaled {
            j.remove().await;
        }
        if let Some((env, workspace)) = cleanup {
            let timed = cleanup::Timed {
                metrics: self.metrics.clone(),
                labels: labels.clone(),
            };
            cleanup::cleanup(self.engine.clone(), env, workspace, &self.cleanups, timed);
        }
        drop(running);
        self.metrics.job_finished(&labels, started.elapsed());
        match final_outcome {
            FinalOutcome::Accepted => info!(?outcome, "job finished"),
            FinalOutcome::Gone => info!("job finished; GitLab no longer tracks it"),
            FinalOutcome::GaveUp { reason } => {
                warn!(%reason, "could not report the final job state to GitLab")
            }
        }
    }

    /// Claims the project dir and runs the job's stages. A panic anywhere in them still ends
    /// the job: it is caught, the job fails with `runner_system_failure` and a log line, and
    /// its containers are removed (the environment to remove is known before anything runs).
    /// File variables live only as long as their job (docs/security.md), also after a panic.
    async fn execute_plan(
        &self,
        plan: &Plan,
        job: &JobRef,
        runner: &RunnerSection,
        log: &TraceWriter,
        mut signals: Signals,
        journal: Option<JobJournal>,
    ) -> (Outcome, Option<cleanup::Workspace>) {
        let mut workspace = None;
        let executed = AssertUnwindSafe(async {
            if let Some(j) = &journal {
                j.stage(journal::Stage::Prepare).await;
            }
            let claimed = self
                .workspaces
                .claim(&*self.engine, &plan.host_project_dir, log, &mut signals)
                .await;
            let mut run = JobRun {
                plan,
                job,
                runner,
                log,
                signals,
                state: Progress::default(),
                journal,
            };
            if let Some(guard) = run.state.settle(claimed, log) {
                workspace = Some(guard);
                // The builds dir's last use, for eviction (docs/docker-executor.md).
                if let Some(base) = plan.host_project_dir.parent()
                    && let Err(e) = ferry_executor::disk::touch_builds_dir(base)
                {
                    warn!(dir = %base.display(), error = %e, "marking the builds dir as used failed");
                }
                self.execute(&mut run).await;
            }
            run.state.outcome()
        })
        .catch_unwind()
        .await;
        let outcome = executed.unwrap_or_else(|panic| internal_error(log, panic.as_ref()));
        if let Err(e) = self.host.remove_file_variables(plan).await {
            warn!(error = %e, "removing the job's file variables failed");
        }
        (outcome, workspace)
    }

    fn trace_config(&self, runner: &RunnerSection, masks: Masks) -> TraceConfig {
        TraceConfig {
            output_limit: runner.output_limit,
            masked: masks.values,
            token_prefixes: masks.prefixes,
            timing: TraceTiming {
                final_retry_limit: runner.job_status_final_update_retry_limit.max(1),
                ..self.trace_timing.clone()
            },
            ..TraceConfig::default()
        }
    }

    fn write_header(&self, log: &TraceWriter, runner: &RunnerSection) {
        use ferry_config::joblog::RESET;
        log.write_line(&format!(
            "{RESET}Running with ferry {} ({}){RESET}",
            env!("CARGO_PKG_VERSION"),
            crate::REVISION
        ));
        // gitlab-runner's short token (no `glrt-` prefix, which the trace would mask).
        log.write_line(&format!(
            "{RESET}  on {} {}, system ID: {}{RESET}",
            runner.name,
            runner.token.ci_short_token(),
            self.system_id
        ));
    }

    /// The timing line, just before the final status (docs/job-log.md, "The timing line"), and
    /// each section's time into `gitlab_runner_job_stage_duration_seconds`.
    fn write_timing(&self, log: &TraceWriter, labels: &RunnerLabels, started: Instant) {
        let stages = log.stage_times();
        log.write_line(&trace::stages::timing_line(&stages, started.elapsed()));
        for (stage, took) in &stages {
            self.metrics.stage_finished(labels, stage, *took);
        }
    }

    /// The final update of `outcome`, in what this GitLab accepts, and its last log line.
    fn final_update(
        &self,
        outcome: &Outcome,
        failure_reasons: &[String],
        labels: &RunnerLabels,
        log: &TraceWriter,
    ) -> JobUpdate {
        let (state, failure_reason, exit_code) = match outcome {
            Outcome::Success => {
                log.write_notice("Job succeeded");
                (JobState::Success, None, None)
            }
            Outcome::Failed { reason, exit_code } => {
                let cause = *reason;
                let reason = cause.supported(failure_reasons);
                self.metrics.job_failed(labels, reason.as_str());
                match exit_code {
                    Some(code) => log.write_error(&format!("Job failed: exit code {code}")),
                    None if reason == cause => log.write_error(&format!("Job failed ({reason})")),
                    // The log keeps the cause that GitLab's reason cannot say (docs/job-log.md).
                    None => log.write_error(&format!(
                        "Job failed ({cause}; reported as {reason}: this GitLab does not list {cause} in features.failure_reasons)"
                    )),
                }
                (
                    JobState::Failed,
                    Some(reason.as_str().to_string()),
                    *exit_code,
                )
            }
        };
        JobUpdate {
            state,
            failure_reason,
            exit_code,
            checksum: None,
            bytesize: None,
        }
    }
}

/// The journal's stage of a job whose final update is being sent.
fn final_stage(outcome: &Outcome) -> journal::Stage {
    match outcome {
        Outcome::Success => journal::Stage::Final {
            failure: None,
            exit_code: None,
        },
        Outcome::Failed { reason, exit_code } => journal::Stage::Final {
            failure: Some(reason.as_str().to_string()),
            exit_code: *exit_code,
        },
    }
}

/// The first journal entry of a job (docs/crash-safety.md).
fn journal_entry(
    runner: &RunnerSection,
    payload: &JobPayload,
    ctx: &JobContext,
    plan: &Plan,
) -> journal::Entry {
    let now = std::time::SystemTime::now();
    journal::Entry {
        version: journal::VERSION,
        runner: runner.token.short().to_string(),
        url: runner.url.clone(),
        runner_label: Some(runner.token.ci_short_token().to_string()),
        job_id: payload.id,
        project_id: payload.job_info.project_id,
        payload: payload.clone(),
        concurrent_id: ctx.concurrent_id,
        concurrent_project_id: ctx.concurrent_project_id,
        started_ms: journal::epoch_ms(now),
        deadline_ms: journal::epoch_ms(now)
            .saturating_add(u64::try_from(plan.timeout.as_millis()).unwrap_or(u64::MAX)),
        stage: journal::Stage::Prepare,
        docker: matches!(plan.execution, Execution::Docker { .. }),
    }
}

/// The job's page in GitLab, as gitlab-runner's `/debug/jobs/list` shows it: the project's URL
/// (the clone URL without credentials and `.git`) and `/-/jobs/<id>`.
fn job_url(payload: &JobPayload) -> String {
    let repo = payload.git_info.clean_repo_url();
    let project = repo.strip_suffix(".git").unwrap_or(&repo);
    format!("{project}/-/jobs/{}", payload.id)
}

/// A panic in a job's code: the job fails as a system failure with a line saying so (the
/// message says where; the trace masks secrets as in any other line), and ferry's own log
/// records it.
fn internal_error(log: &TraceWriter, panic: &(dyn std::any::Any + Send)) -> Outcome {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(panic = %message, "internal error in a job: failing it");
    log.write_error(&format!(
        "Job failed (system failure): internal error in ferry: {message}"
    ));
    Outcome::failed(FailureReason::RunnerSystemFailure)
}

/// A job whose payload could not be decoded, but whose id and token could: report it failed so it
/// does not stay "running" in GitLab until its timeout.
pub async fn fail_undecodable<A: JobApi>(
    api: Arc<A>,
    job: JobRef,
    error: &str,
    timing: TraceTiming,
) {
    let span = tracing::info_span!("job", job = job.id);
    async move {
        let (log, handle) = trace::start(
            job,
            api,
            TraceConfig {
                timing,
                ..TraceConfig::default()
            },
        );
        log.write_error(&format!(
            "ferry could not read the job sent by GitLab: {error}"
        ));
        handle
            .finish(JobUpdate {
                state: JobState::Failed,
                failure_reason: Some(FailureReason::RunnerSystemFailure.as_str().to_string()),
                exit_code: None,
                checksum: None,
                bytesize: None,
            })
            .await;
    }
    .instrument(span)
    .await
}

/// The engine of a runner whose Docker settings could not be turned into a client: every job
/// fails in `prepare_executor` with the cause, and the next job tries again.
/// `sync_in`/`sync_out` keep their no-op defaults: `prepare` never succeeds, so they never run.
pub struct Unavailable(pub String);

impl Engine for Unavailable {
    async fn prepare(
        &self,
        _env: &JobEnv,
        _log: &mut ferry_executor::LogSink<'_>,
        _cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        Err(EngineError::Docker(self.0.clone()))
    }

    async fn run_step(
        &self,
        _env: &JobEnv,
        _step: &ferry_executor::StepSpec,
        _log: &mut ferry_executor::LogSink<'_>,
        _cancel: &CancellationToken,
    ) -> Result<StepOutcome, EngineError> {
        Err(EngineError::Docker(self.0.clone()))
    }

    async fn destroy(&self, _env: &JobEnv) -> Result<(), EngineError> {
        Ok(())
    }
}
