//! The job driver: plan → engine (or deploy step) → final status, whatever fails.
//!
//! Every job ends with a final update and its complete log: the trace is started before anything
//! else can fail, every error becomes a line in the log and a failure_reason, cleanup runs on its
//! own deadline, and the final update is retried by the trace until GitLab accepts it.
//!
//! One cancellation source per step, with its cause recorded next to it: the job timeout, GitLab's
//! `canceling` (graceful: after_script still runs), GitLab's `canceled`/403 (abort: nothing more
//! runs) and a forced shutdown of ferry.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_config::RunnerSection;
use ferry_deploy::{DeployError, DeployRequest, Deployer, JobFacts, Origin};
use ferry_executor::jobfs::{self, FileReader, Limits};
use ferry_executor::{Engine, EngineError, EnvVar, JobEnv, StepOutcome};
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{JobApi, JobRef, JobState, JobUpdate};
use crate::failure::{FailureReason, JobStatus};
use crate::gitlab::payload::JobPayload;
use crate::metrics::{FailureLabels, JobStateLabels, Metrics, RunnerLabels};
use crate::plan::{self, Execution, JobContext, Plan, PlannedStep, StepWhen};
use crate::trace::{self, FinalOutcome, RemoteSignal, TraceConfig, TraceTiming, TraceWriter};

/// How long an engine may take to stop a step after it was told to.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Attempts at removing a finished job's containers (2 s, 4 s, 8 s apart).
const CLEANUP_ATTEMPTS: u32 = 4;
/// Deadline of the cleanup stage (containers, network, volumes).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a step was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Canceling,
    Abort,
    Shutdown,
}

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
    fn failed(reason: FailureReason) -> Self {
        Outcome::Failed {
            reason,
            exit_code: None,
        }
    }
}

/// The runner-side ingredients of a job.
pub struct Driver<E, D, A> {
    pub engine: Arc<E>,
    pub deployer: Arc<D>,
    pub api: Arc<A>,
    pub metrics: Metrics,
    pub system_id: String,
    pub trace_timing: TraceTiming,
    /// Container removals still running after their job's final update.
    pub cleanups: TaskTracker,
    /// One job at a time per project dir, until its containers are gone.
    pub workspaces: Workspaces,
}

/// One job at a time per project dir on the host, its containers included: a job's host work
/// on its sources (git, cache, dependencies) runs before its own containers start and after
/// the previous job's containers were removed, so no container can change the project dir
/// while git works in it (docs/security.md). Jobs of one project on one slot run one after the
/// other anyway; this only waits for the previous job's background cleanup.
#[derive(Clone, Default)]
pub struct Workspaces(Arc<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>);

impl Workspaces {
    fn get(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(dir.to_path_buf()).or_default().clone()
    }
}

fn engine_failure_reason(e: &EngineError) -> FailureReason {
    match e {
        EngineError::ImagePull { .. } => FailureReason::ImagePullFailure,
        EngineError::Configuration(_) => FailureReason::RunnerConfigurationError,
        EngineError::Docker(_) | EngineError::Cancelled => FailureReason::RunnerSystemFailure,
    }
}

/// The log line of an engine error: a configuration error is the job's or the runner's settings,
/// not a failure of the system.
fn engine_error_line(e: &EngineError) -> String {
    match e {
        EngineError::Configuration(_) => format!("Job failed: {e}"),
        _ => format!("Job failed (system failure): {e}"),
    }
}

fn deploy_failure_reason(e: &DeployError) -> FailureReason {
    match e {
        DeployError::Input(_) | DeployError::Rollout(_) | DeployError::Cluster(_) => {
            FailureReason::ScriptFailure
        }
        DeployError::Configuration(_) => FailureReason::RunnerConfigurationError,
        DeployError::Cancelled => FailureReason::RunnerSystemFailure,
    }
}

/// Tracks the job's stop signals: deadline, GitLab, shutdown.
struct Signals {
    deadline: tokio::time::Instant,
    remote: watch::Receiver<RemoteSignal>,
    shutdown: CancellationToken,
}

impl Signals {
    /// Bounds for host-side work on the job's files, under the job's deadline
    /// (docs/security.md).
    fn limits(&self, cancel: &CancellationToken) -> Limits {
        Limits {
            deadline: Some(self.deadline.into_std()),
            ..Limits::new(cancel.clone())
        }
    }

    /// What has already happened, if anything.
    fn current(&self) -> Option<Stop> {
        match *self.remote.borrow() {
            RemoteSignal::Abort => return Some(Stop::Abort),
            RemoteSignal::Canceling => return Some(Stop::Canceling),
            RemoteSignal::None => {}
        }
        if self.shutdown.is_cancelled() {
            return Some(Stop::Shutdown);
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Some(Stop::Timeout);
        }
        None
    }

    /// Resolves when a stop signal arrives (or at once if one already has).
    async fn next(&mut self, ignore_canceling: bool) -> Stop {
        loop {
            if let Some(s) = self.current()
                && !(ignore_canceling && s == Stop::Canceling)
            {
                return s;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return Stop::Timeout,
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                changed = self.remote.changed() => {
                    if changed.is_err() {
                        // The uploader is gone; only the deadline and shutdown remain.
                        tokio::select! {
                            _ = tokio::time::sleep_until(self.deadline) => return Stop::Timeout,
                            _ = self.shutdown.cancelled() => return Stop::Shutdown,
                        }
                    }
                }
            }
        }
    }
}

impl<E: Engine, D: Deployer, A: JobApi> Driver<E, D, A> {
    /// Run one job to its final status. Never panics on job input; always sends a final update
    /// (unless GitLab says the job is gone).
    pub async fn run(
        &self,
        runner: Arc<RunnerSection>,
        payload: JobPayload,
        ctx: JobContext,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let job = payload.job_ref();
        let short = runner.token.short().to_string();
        self.metrics
            .jobs_total
            .get_or_create(&RunnerLabels {
                runner: short.clone(),
            })
            .inc();
        let running = self
            .metrics
            .jobs
            .get_or_create(&JobStateLabels {
                runner: short.clone(),
                state: "running".into(),
            })
            .clone();
        running.inc();

        let mut masked = payload.secrets();
        masked.push(runner.token.expose().to_string());
        let cfg = TraceConfig {
            output_limit: runner.output_limit,
            masked,
            token_prefixes: payload.features.token_mask_prefixes.clone(),
            timing: TraceTiming {
                final_retry_limit: runner.job_status_final_update_retry_limit.max(1),
                ..self.trace_timing.clone()
            },
            ..TraceConfig::default()
        };
        let (log, handle) = trace::start(job.clone(), self.api.clone(), cfg);
        log.write_line(&format!(
            "\x1b[0;mRunning with ferry {} ({})\x1b[0;m",
            env!("CARGO_PKG_VERSION"),
            crate::REVISION
        ));
        // gitlab-runner's short token (no `glrt-` prefix, which the trace would mask).
        log.write_line(&format!(
            "\x1b[0;m  on {} {}, system ID: {}\x1b[0;m",
            runner.name,
            crate::variables::runner_short_token(runner.token.expose()),
            self.system_id
        ));

        // The job's containers are removed after the final update, in the background (tracked
        // by `cleanups`, which `ferry run` waits for before it exits): the job's result does not
        // depend on it, GitLab can start the next stage ~0.4 s sooner, and the job's slot is
        // free for the next job while Docker removes an idle container. Names of containers,
        // networks and volumes carry the job id, so the next job never collides with them.
        //
        // A panic anywhere in planning or executing still ends the job here: it is caught, the
        // job fails with `runner_system_failure` and a log line, and its containers are removed
        // (the environment to remove is taken before anything runs).
        let mut cleanup: Option<JobEnv> = None;
        let mut workspace = None;
        let compiled =
            std::panic::catch_unwind(AssertUnwindSafe(|| plan::compile(&payload, &runner, &ctx)));
        let outcome = match compiled {
            Ok(Ok(plan)) => {
                if let Execution::Docker { env, .. } = &plan.execution {
                    cleanup = Some((**env).clone());
                }
                let mut signals = Signals {
                    deadline: ferry_executor::deadline_after(plan.timeout),
                    remote: handle.signals(),
                    shutdown,
                };
                let executed = AssertUnwindSafe(async {
                    match self.claim_workspace(&plan, &log, &mut signals).await {
                        Ok(guard) => {
                            workspace = Some(guard);
                            self.execute(&plan, &job, &runner, &log, &mut signals).await
                        }
                        Err(stop) => stop_outcome(stop, &log),
                    }
                })
                .catch_unwind()
                .await;
                let outcome = match executed {
                    Ok(outcome) => outcome,
                    Err(panic) => internal_error(&job, &log, panic.as_ref()),
                };
                // File variables live only as long as their job (docs/security.md), also after
                // a panic.
                let tmp = plan.host_tmp_dir.clone();
                if let Err(e) = jobfs::blocking(move || jobfs::remove_files(&tmp)).await {
                    warn!(job = job.id, error = %e, "removing the job's file variables failed");
                }
                outcome
            }
            Ok(Err(e)) => {
                log.write_error(&format!("job {}: {e}", job.id));
                Outcome::failed(e.failure_reason())
            }
            Err(panic) => internal_error(&job, &log, panic.as_ref()),
        };

        let update = match &outcome {
            Outcome::Success => {
                log.write_line("\x1b[32;1mJob succeeded\x1b[0;m");
                JobUpdate {
                    state: JobState::Success,
                    failure_reason: None,
                    exit_code: None,
                    checksum: None,
                    bytesize: None,
                }
            }
            Outcome::Failed { reason, exit_code } => {
                let reason = reason.supported(&payload.features.failure_reasons);
                self.metrics
                    .failed_jobs
                    .get_or_create(&FailureLabels {
                        runner: short.clone(),
                        failure_reason: reason.as_str().to_string(),
                    })
                    .inc();
                match exit_code {
                    Some(code) => log.write_error(&format!("Job failed: exit code {code}")),
                    None => log.write_error(&format!("Job failed ({reason})")),
                }
                JobUpdate {
                    state: JobState::Failed,
                    failure_reason: Some(reason.as_str().to_string()),
                    exit_code: *exit_code,
                    checksum: None,
                    bytesize: None,
                }
            }
        };
        let final_outcome = handle.finish(update).await;
        if let Some(env) = cleanup {
            // Cleanup runs on every path, on its own deadline, not cancellable by the job's
            // signals.
            let engine = self.engine.clone();
            let id = job.id;
            self.cleanups.spawn(async move {
                // The project dir is free for the next job once the containers are gone.
                let _workspace = workspace;
                // Docker may be restarting: try again a few times; what is still left then is
                // removed by the janitor at ferry's next start (everything is labelled).
                let mut delay = Duration::from_secs(2);
                for attempt in 1..=CLEANUP_ATTEMPTS {
                    match tokio::time::timeout(CLEANUP_TIMEOUT, engine.destroy(&env)).await {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => warn!(job = id, attempt, error = %e, "cleanup failed"),
                        Err(_) => warn!(job = id, attempt, "cleanup timed out"),
                    }
                    if attempt < CLEANUP_ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            });
        }
        running.dec();
        self.metrics
            .job_duration
            .get_or_create(&RunnerLabels {
                runner: short.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        match final_outcome {
            FinalOutcome::Accepted => {
                info!(job = job.id, runner = %short, ?outcome, "job finished")
            }
            FinalOutcome::Gone => {
                info!(job = job.id, runner = %short, "job finished; GitLab no longer tracks it")
            }
            FinalOutcome::GaveUp { reason } => {
                warn!(job = job.id, runner = %short, %reason, "could not report the final job state to GitLab")
            }
        }
    }

    /// Waits until no other job (nor its containers) uses the project dir.
    async fn claim_workspace(
        &self,
        plan: &Plan,
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Stop> {
        let lock = self.workspaces.get(&plan.host_project_dir);
        if let Ok(guard) = lock.clone().try_lock_owned() {
            return Ok(guard);
        }
        log.write_line(
            "Waiting for the containers of the previous job of this project to be removed...",
        );
        tokio::select! {
            guard = lock.lock_owned() => Ok(guard),
            stop = signals.next(false) => Err(stop),
        }
    }

    async fn execute(
        &self,
        plan: &Plan,
        job: &JobRef,
        runner: &RunnerSection,
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Outcome {
        for w in &plan.warnings {
            log.write_warning(w);
        }
        if let Err(e) = create_host_dirs(plan).await {
            log.write_error(&format!("creating the build directory: {e}"));
            return Outcome::failed(FailureReason::RunnerSystemFailure);
        }
        match &plan.execution {
            Execution::Docker { env, steps } => {
                self.execute_docker(plan, job, env, steps, log, signals)
                    .await
            }
            Execution::Deploy { commands, facts } => {
                if let Err(o) = self.get_sources(plan, log, signals).await {
                    return o;
                }
                if let Err(o) = self.download_artifacts(plan, log, signals).await {
                    return o;
                }
                let mut outcome = Outcome::Success;
                for cmd in commands {
                    log.write_line(&format!("\x1b[32;1m$ {}\x1b[0;m", cmd.line));
                    outcome = self
                        .deploy(plan, runner, facts, &cmd.args, log, signals)
                        .await;
                    if outcome != Outcome::Success {
                        break;
                    }
                }
                outcome
            }
        }
    }

    async fn deploy(
        &self,
        plan: &Plan,
        runner: &RunnerSection,
        facts: &JobFacts,
        args: &[String],
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Outcome {
        // The runner's targets and GitLab's facts decide the policy; variables only configure
        // the deploy within it (docs/deploy.md, "Who decides what").
        let req = DeployRequest {
            args: args.to_vec(),
            project_dir: plan.host_project_dir.clone(),
            variables: plan
                .variables
                .deduplicated()
                .into_iter()
                .map(|v| (v.key.clone(), v.value.clone()))
                .collect(),
            targets: runner.deploy.targets.clone(),
            remaining: Some(
                signals
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now()),
            ),
            origin: Origin::Job(facts.clone()),
        };
        log.section_start("deploy", "Deploying to Kubernetes", false);
        let cancel = CancellationToken::new();
        let mut sink = log.clone();
        let fut = self.deployer.deploy(&req, &mut sink, &cancel);
        let (result, stop) = run_stoppable(fut, &cancel, signals, false).await;
        log.section_end("deploy");
        match (result, stop) {
            (_, Some(s)) => stop_outcome(s, log),
            (Some(Ok(_)), None) => Outcome::Success,
            (Some(Err(e)), None) => {
                log.write_error(&e.to_string());
                Outcome::failed(deploy_failure_reason(&e))
            }
            (None, None) => Outcome::failed(FailureReason::RunnerSystemFailure),
        }
    }

    async fn execute_docker(
        &self,
        plan: &Plan,
        job: &JobRef,
        env: &JobEnv,
        steps: &[PlannedStep],
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Outcome {
        let mut script_started = false;
        let mut outcome = self
            .docker_stages(plan, env, steps, log, signals, &mut script_started)
            .await;
        // Cache and artifacts after the script, by `when`, unless the job never got that far,
        // is over server-side, or ferry is stopping.
        if script_started && !matches!(signals.current(), Some(Stop::Abort | Stop::Shutdown)) {
            let succeeded = outcome == Outcome::Success;
            // Host work after the script runs under the job's deadline; after a timeout of
            // the script it gets a bounded time of its own, as after_script does, so that
            // `when: on_failure` caches and artifacts are still saved.
            let mut post = Signals {
                deadline: if signals.current() == Some(Stop::Timeout) {
                    tokio::time::Instant::now()
                        .checked_add(plan::DEFAULT_AFTER_SCRIPT_TIMEOUT)
                        .unwrap_or(signals.deadline)
                } else {
                    signals.deadline
                },
                remote: signals.remote.clone(),
                shutdown: signals.shutdown.clone(),
            };
            if let Err(stop) = self.archive_caches(plan, log, succeeded, &mut post).await {
                return stop_outcome(stop, log);
            }
            if let Err(o) = self
                .upload_artifacts(plan, job, log, succeeded, &mut post)
                .await
                && (succeeded
                    || matches!(
                        post.current(),
                        Some(Stop::Timeout | Stop::Abort | Stop::Shutdown)
                    ))
            {
                outcome = o;
            }
        }
        // `run` removes the containers after the final update.
        outcome
    }

    async fn docker_stages(
        &self,
        plan: &Plan,
        env: &JobEnv,
        steps: &[PlannedStep],
        log: &TraceWriter,
        signals: &mut Signals,
        script_started: &mut bool,
    ) -> Outcome {
        // Written before the container starts, which mounts them read-only.
        if let Err(e) = write_file_variables(plan, env).await {
            log.write_error(&format!("Job failed: writing file variables: {e}"));
            return Outcome::failed(FailureReason::RunnerSystemFailure);
        }
        // Sources, cache and dependencies before any container of the job starts: git works
        // in a project dir no container can change meanwhile (docs/security.md).
        if let Err(o) = self.get_sources(plan, log, signals).await {
            return o;
        }
        self.restore_caches(plan, log, signals).await;
        if let Err(o) = self.download_artifacts(plan, log, signals).await {
            return o;
        }
        log.section_start(
            "prepare_executor",
            "Preparing the \"docker\" executor",
            false,
        );
        let cancel = CancellationToken::new();
        let mut sink = log.clone();
        let prepared = run_stoppable(
            self.engine.prepare(env, &mut sink, &cancel),
            &cancel,
            signals,
            false,
        )
        .await;
        log.section_end("prepare_executor");
        match prepared {
            (_, Some(s)) => return stop_outcome(s, log),
            (Some(Err(e)), None) => {
                log.write_error(&engine_error_line(&e));
                return Outcome::failed(engine_failure_reason(&e));
            }
            (None, None) => return Outcome::failed(FailureReason::RunnerSystemFailure),
            (Some(Ok(())), None) => {}
        }
        // A remote daemon gets the prepared host directory copied in (a no-op when it is
        // bind-mounted).
        let cancel = CancellationToken::new();
        match run_stoppable(self.engine.sync_in(env), &cancel, signals, false).await {
            (_, Some(s)) => return stop_outcome(s, log),
            (Some(Err(e)), None) => {
                log.write_error(&engine_error_line(&e));
                return Outcome::failed(engine_failure_reason(&e));
            }
            (None, None) => return Outcome::failed(FailureReason::RunnerSystemFailure),
            (Some(Ok(())), None) => {}
        }

        *script_started = true;
        let mut outcome = Outcome::Success;
        // CI_JOB_STATUS for after_script: success, failed, canceled or timedout.
        let mut job_status = JobStatus::Success;
        for step in steps {
            let is_after = step.spec.name == "after_script";
            let failed = outcome != Outcome::Success;
            let runs = match step.when {
                StepWhen::Always => true,
                StepWhen::OnSuccess => !failed,
                StepWhen::OnFailure => failed,
            };
            if !runs {
                continue;
            }
            if is_after && signals.current() == Some(Stop::Abort) {
                break;
            }
            let mut spec = step.spec.clone();
            if is_after {
                spec.env.push(EnvVar {
                    name: "CI_JOB_STATUS".into(),
                    value: job_status.as_str().into(),
                });
            }
            log.section_start(
                &step.section,
                &format!("Executing \"{}\" stage of the job script", step.section),
                false,
            );
            let cancel = CancellationToken::new();
            let mut sink = log.clone();
            // after_script has its own timeout and still runs after a timeout or a graceful cancel.
            let result = if is_after {
                let limit = spec.timeout.unwrap_or(plan::DEFAULT_AFTER_SCRIPT_TIMEOUT);
                let mut after_signals = Signals {
                    deadline: ferry_executor::deadline_after(limit),
                    remote: signals.remote.clone(),
                    shutdown: signals.shutdown.clone(),
                };
                run_stoppable(
                    self.engine.run_step(env, &spec, &mut sink, &cancel),
                    &cancel,
                    &mut after_signals,
                    true,
                )
                .await
            } else {
                run_stoppable(
                    self.engine.run_step(env, &spec, &mut sink, &cancel),
                    &cancel,
                    signals,
                    false,
                )
                .await
            };
            log.section_end(&step.section);
            if is_after {
                // gitlab-runner ignores after_script failures by default.
                match result {
                    (Some(Ok(o)), None) if o.exit_code != 0 => log.write_warning(&format!(
                        "after_script failed with exit code {}",
                        o.exit_code
                    )),
                    (Some(Err(e)), None) => log.write_warning(&format!("after_script failed: {e}")),
                    (_, Some(Stop::Timeout)) => log.write_warning("after_script timed out"),
                    _ => {}
                }
                continue;
            }
            match result {
                (_, Some(s)) => {
                    outcome = stop_outcome(s, log);
                    job_status = if s == Stop::Timeout {
                        JobStatus::TimedOut
                    } else {
                        JobStatus::Canceled
                    };
                    if s == Stop::Abort || s == Stop::Shutdown {
                        return outcome;
                    }
                }
                (Some(Ok(StepOutcome { exit_code: 0, .. })), None) => {}
                (
                    Some(Ok(StepOutcome {
                        exit_code,
                        oom_killed,
                    })),
                    None,
                ) => {
                    if oom_killed {
                        log.write_error(
                            "the job container was killed because it ran out of memory (OOM)",
                        );
                    }
                    outcome = Outcome::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: Some(exit_code),
                    };
                    job_status = JobStatus::Failed;
                }
                (Some(Err(e)), None) => {
                    log.write_error(&engine_error_line(&e));
                    outcome = Outcome::failed(engine_failure_reason(&e));
                    job_status = JobStatus::Failed;
                }
                (None, None) => {
                    outcome = Outcome::failed(FailureReason::RunnerSystemFailure);
                    job_status = JobStatus::Failed;
                }
            }
        }
        // What the steps left, back to the host for cache and artifacts (a no-op when the
        // directory is bind-mounted). Not stoppable, like the archiving that follows.
        if let Err(e) = self.engine.sync_out(env).await {
            log.write_error(&engine_error_line(&e));
            if outcome == Outcome::Success {
                outcome = Outcome::failed(engine_failure_reason(&e));
            }
        }
        outcome
    }
}

impl<E: Engine, D: Deployer, A: JobApi> Driver<E, D, A> {
    async fn get_sources(
        &self,
        plan: &Plan,
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Result<(), Outcome> {
        log.section_start("get_sources", "Getting source from Git repository", false);
        let cancel = CancellationToken::new();
        let mut sink = log.clone();
        let r = run_stoppable(
            ferry_executor::sources::get_sources(&plan.sources, &mut sink, &cancel),
            &cancel,
            signals,
            false,
        )
        .await;
        log.section_end("get_sources");
        match r {
            (_, Some(s)) => Err(stop_outcome(s, log)),
            (Some(Ok(())), None) => Ok(()),
            (Some(Err(e)), None) => {
                log.write_error(&format!("Job failed: getting the sources: {e}"));
                Err(Outcome::failed(FailureReason::RunnerSystemFailure))
            }
            (None, None) => Err(Outcome::failed(FailureReason::RunnerSystemFailure)),
        }
    }

    async fn restore_caches(&self, plan: &Plan, log: &TraceWriter, signals: &mut Signals) {
        if plan.caches.is_empty() {
            return;
        }
        log.section_start("restore_cache", "Restoring cache", false);
        for spec in &plan.caches {
            let cancel = CancellationToken::new();
            let mut sink = log.clone();
            let limits = signals.limits(&cancel);
            let fut = ferry_executor::cache::restore(
                &plan.cache_store,
                spec,
                &plan.host_project_dir,
                &mut sink,
                &limits,
            );
            if let (Some(Err(e)), None) = run_stoppable(fut, &cancel, signals, false).await {
                log.write_warning(&format!("restoring cache {:?}: {e}", spec.key));
            }
        }
        log.section_end("restore_cache");
    }

    /// Saves the caches; `Err` when a stop signal (the job's deadline) ended it.
    async fn archive_caches(
        &self,
        plan: &Plan,
        log: &TraceWriter,
        succeeded: bool,
        signals: &mut Signals,
    ) -> Result<(), Stop> {
        if plan.caches.is_empty() {
            return Ok(());
        }
        let name = if succeeded {
            "archive_cache"
        } else {
            "archive_cache_on_failure"
        };
        log.section_start(name, "Saving cache", false);
        for spec in &plan.caches {
            let cancel = CancellationToken::new();
            let mut sink = log.clone();
            let limits = signals.limits(&cancel);
            let fut = ferry_executor::cache::save(
                &plan.cache_store,
                spec,
                &plan.host_project_dir,
                succeeded,
                &mut sink,
                &limits,
            );
            match run_stoppable(fut, &cancel, signals, true).await {
                (_, Some(stop)) => {
                    log.section_end(name);
                    return Err(stop);
                }
                (Some(Err(e)), None) => {
                    log.write_warning(&format!("saving cache {:?}: {e}", spec.key))
                }
                _ => {}
            }
        }
        log.section_end(name);
        Ok(())
    }

    async fn download_artifacts(
        &self,
        plan: &Plan,
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Result<(), Outcome> {
        if plan.dependencies.is_empty() {
            return Ok(());
        }
        log.section_start("download_artifacts", "Downloading artifacts", false);
        let result = async {
            for dep in &plan.dependencies {
                log.write_line(&format!(
                    "Downloading artifacts for {} ({})...",
                    dep.name, dep.id
                ));
                let tmp = tempfile::NamedTempFile::new()
                    .map_err(|e| Ok(format!("temporary file: {e}")))?;
                let cancel = CancellationToken::new();
                let fut = self.api.download_artifacts(dep.id, &dep.token, tmp.path());
                match run_stoppable(fut, &cancel, signals, false).await {
                    (_, Some(s)) => return Err(Err(stop_outcome(s, log))),
                    (Some(Ok(())), None) => {}
                    (Some(Err(e)), None) => {
                        return Err(Ok(format!(
                            "downloading artifacts of {} ({}): {e}",
                            dep.name, dep.id
                        )));
                    }
                    (None, None) => return Err(Ok("download abandoned".to_string())),
                }
                let (zip, dir) = (tmp.path().to_path_buf(), plan.host_project_dir.clone());
                let limits = signals.limits(&cancel);
                let summary = tokio::task::spawn_blocking(move || {
                    ferry_executor::artifacts::extract_archive(&zip, &dir, &limits)
                })
                .await
                .map_err(|e| Ok(e.to_string()))?
                .map_err(|e| {
                    Ok(format!(
                        "extracting artifacts of {} ({}): {e}",
                        dep.name, dep.id
                    ))
                })?;
                for n in &summary.notes {
                    log.write_str(&n.to_log_line());
                }
                log.write_line(&format!(
                    "Downloaded artifacts for {} ({}): {} files",
                    dep.name, dep.id, summary.files
                ));
            }
            Ok(())
        }
        .await;
        log.section_end("download_artifacts");
        match result {
            Ok(()) => Ok(()),
            Err(Err(o)) => Err(o),
            Err(Ok(msg)) => {
                log.write_error(&format!("Job failed: {msg}"));
                Err(Outcome::failed(FailureReason::RunnerSystemFailure))
            }
        }
    }

    async fn upload_artifacts(
        &self,
        plan: &Plan,
        job: &JobRef,
        log: &TraceWriter,
        succeeded: bool,
        signals: &mut Signals,
    ) -> Result<(), Outcome> {
        let due: Vec<_> = plan
            .artifacts
            .iter()
            .filter(|a| a.when.applies(succeeded))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let name = if succeeded {
            "upload_artifacts_on_success"
        } else {
            "upload_artifacts_on_failure"
        };
        let title = if succeeded {
            "Uploading artifacts for successful job"
        } else {
            "Uploading artifacts for failed job"
        };
        log.section_start(name, title, false);
        let mut failed = None;
        for spec in due {
            log.write_line(&format!("Uploading artifacts ({})...", spec.artifact_type));
            let tmp = match tempfile::NamedTempFile::new() {
                Ok(t) => t,
                Err(e) => {
                    failed = Some(format!("temporary file: {e}"));
                    break;
                }
            };
            let mut sink = log.clone();
            let cancel = CancellationToken::new();
            let limits = signals.limits(&cancel);
            let fut = ferry_executor::artifacts::archive(
                &plan.host_project_dir,
                spec,
                tmp.path(),
                &mut sink,
                &limits,
            );
            let summary = match run_stoppable(fut, &cancel, signals, true).await {
                (_, Some(stop)) => {
                    log.section_end(name);
                    return Err(stop_outcome(stop, log));
                }
                (Some(Ok(s)), None) => s,
                (Some(Err(e)), None) => {
                    failed = Some(format!("archiving artifacts: {e}"));
                    break;
                }
                (None, None) => {
                    failed = Some("archiving artifacts was abandoned".into());
                    break;
                }
            };
            if summary.files == 0 {
                continue;
            }
            let meta = crate::api::ArtifactMeta {
                artifact_type: spec.artifact_type.clone(),
                artifact_format: spec.format.as_str().to_string(),
                name: spec.upload_file_name(),
                expire_in: spec.expire_in.clone(),
            };
            match self.api.upload_artifacts(job, &meta, tmp.path()).await {
                Ok(()) => log.write_line(&format!(
                    "Uploading artifacts as \"{}\" to coordinator... 201 Created  id={} responseStatus=201 Created",
                    spec.format.as_str(),
                    job.id
                )),
                Err(e) => {
                    failed = Some(format!("uploading artifacts: {e}"));
                    break;
                }
            }
        }
        log.section_end(name);
        match failed {
            None => Ok(()),
            Some(msg) => {
                log.write_error(&format!("Job failed: {msg}"));
                Err(Outcome::failed(FailureReason::RunnerSystemFailure))
            }
        }
    }
}

/// A panic in a job's code: the job fails as a system failure with a line saying so (the
/// message says where; the trace masks secrets as in any other line), and ferry's own log
/// records it.
fn internal_error(job: &JobRef, log: &TraceWriter, panic: &(dyn std::any::Any + Send)) -> Outcome {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(job = job.id, panic = %message, "internal error in a job: failing it");
    log.write_error(&format!(
        "Job failed (system failure): internal error in ferry: {message}"
    ));
    Outcome::failed(FailureReason::RunnerSystemFailure)
}

/// Drive `fut` until it ends; on a stop signal, fire `cancel` and give it [`STOP_GRACE`] to end.
/// Returns the future's result (None if it had to be abandoned) and the stop, if any.
async fn run_stoppable<T>(
    fut: impl std::future::Future<Output = T>,
    cancel: &CancellationToken,
    signals: &mut Signals,
    ignore_canceling: bool,
) -> (Option<T>, Option<Stop>) {
    tokio::pin!(fut);
    let stop = tokio::select! {
        r = &mut fut => return (Some(r), None),
        s = signals.next(ignore_canceling) => s,
    };
    cancel.cancel();
    match tokio::time::timeout(STOP_GRACE, &mut fut).await {
        Ok(r) => (Some(r), Some(stop)),
        Err(_) => (None, Some(stop)),
    }
}

fn stop_outcome(stop: Stop, log: &TraceWriter) -> Outcome {
    match stop {
        Stop::Timeout => {
            log.write_error("Job failed: execution took longer than the job timeout");
            Outcome::failed(FailureReason::JobExecutionTimeout)
        }
        Stop::Canceling | Stop::Abort => {
            log.write_error("Job canceled by GitLab");
            // gitlab-runner reports a cancelled job as failed/unknown_failure; GitLab turns it
            // into `canceled`.
            Outcome::failed(FailureReason::UnknownFailure)
        }
        Stop::Shutdown => {
            log.write_error(
                "Job failed: the runner was stopped (ferry received a termination signal)",
            );
            Outcome::failed(FailureReason::RunnerInterrupted)
        }
    }
}

/// The job's directories on the host: the folder per project is ferry's alone (mode 0700, never
/// mounted), the project dir in it is what the job's containers mount (docs/security.md).
async fn create_host_dirs(plan: &Plan) -> std::io::Result<()> {
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

/// Writes file-type variables into the job's own `tmp` dir on the host, created anew for the
/// job before its container starts, which mounts it read-only at `<project dir>.tmp`.
async fn write_file_variables(plan: &Plan, env: &JobEnv) -> std::io::Result<()> {
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
    let reader = FileReader::for_user(env.image.user.as_deref());
    jobfs::blocking(move || {
        let refs: Vec<(String, &[u8])> = files.iter().map(|(k, v)| (k.clone(), &v[..])).collect();
        jobfs::write_files(&dir, &refs, reader)
    })
    .await
}

/// A job whose payload could not be decoded, but whose id and token could: report it failed so it
/// does not stay "running" in GitLab until its timeout.
pub async fn fail_undecodable<A: JobApi>(
    api: Arc<A>,
    job: JobRef,
    error: &str,
    timing: TraceTiming,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fake::FakeGitLab;
    use ferry_executor::fake::{Call, FakeEngine};

    const TOKEN: &str = "glcbt-drivertest0token";

    fn runner() -> Arc<RunnerSection> {
        let cfg = ferry_config::from_toml_str(
            r#"
[[runners]]
  name = "t"
  url = "https://gitlab.example.com"
  token = "glrt-drivertest0runner"
  executor = "docker"
  [runners.docker]
    image = "busybox"
"#,
            "test.toml",
        )
        .unwrap();
        Arc::new(cfg.runners.into_iter().next().unwrap())
    }

    /// A job of the fake engine's language; `patch` is merged into the payload's top level.
    fn payload(script: &[&str], after: &[&str], patch: serde_json::Value) -> JobPayload {
        let mut p = serde_json::json!({
            "id": 7, "token": TOKEN,
            "job_info": {"id": 7, "name": "t", "stage": "test", "project_id": 3,
                         "project_full_path": "g/p"},
            "runner_info": {"timeout": 3600},
            "variables": [{"key": "GIT_STRATEGY", "value": "none", "public": true}],
            "steps": [{"name": "script", "script": script, "timeout": 3600, "when": "on_success"},
                      {"name": "after_script", "script": after, "timeout": 3600, "when": "always"}],
            "image": {"name": "busybox"},
            "features": {"trace_sections": true}
        });
        if let (Some(p), serde_json::Value::Object(patch)) = (p.as_object_mut(), patch) {
            for (k, v) in patch {
                p.insert(k, v);
            }
        }
        crate::gitlab::payload::parse_payload(&serde_json::to_vec(&p).unwrap()).unwrap()
    }

    /// Runs the job to its final update; returns the fake GitLab, the engine and the job log.
    async fn run(p: JobPayload) -> (Arc<FakeGitLab>, Arc<FakeEngine>, String) {
        let dir = tempfile::tempdir().unwrap();
        let job = p.job_ref();
        let api = Arc::new(FakeGitLab::new(&job));
        let engine = Arc::new(FakeEngine::default());
        let driver = Driver {
            engine: engine.clone(),
            deployer: Arc::new(ferry_deploy::fake::FakeDeployer::default()),
            api: api.clone(),
            metrics: Metrics::new(),
            system_id: "s_test".into(),
            trace_timing: TraceTiming::default(),
            cleanups: TaskTracker::new(),
            workspaces: Workspaces::default(),
        };
        let ctx = JobContext {
            working_dir: dir.path().to_path_buf(),
            concurrent_id: 0,
            concurrent_project_id: 0,
            tls_ca_pem: None,
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            driver.run(runner(), p, ctx, CancellationToken::new()),
        )
        .await
        .expect("the job ended");
        driver.cleanups.close();
        driver.cleanups.wait().await;
        let log = String::from_utf8_lossy(&api.trace()).into_owned();
        (api, engine, log)
    }

    fn final_state(api: &FakeGitLab) -> (String, Option<String>) {
        api.with(|s| {
            let last = s.updates.last().expect("a final update");
            (s.status.clone(), last.update.failure_reason.clone())
        })
    }

    #[tokio::test]
    async fn a_panic_in_a_job_fails_it_with_a_log_line_and_removes_its_containers() {
        let (api, engine, log) = run(payload(
            &["echo before", "panic boom in the engine"],
            &[],
            serde_json::json!({}),
        ))
        .await;
        assert_eq!(
            final_state(&api),
            (
                "failed".to_string(),
                Some(FailureReason::RunnerSystemFailure.to_string())
            ),
            "{log}"
        );
        assert!(
            log.contains("internal error in ferry: boom in the engine"),
            "{log}"
        );
        assert!(log.contains("before"), "the log so far is kept: {log}");
        assert_eq!(
            engine.calls().last(),
            Some(&Call::Destroy(7)),
            "containers removed: {:?}",
            engine.calls()
        );
    }

    #[tokio::test]
    async fn an_absurd_job_timeout_fails_the_job_at_once_with_the_reason() {
        // 1e30 decodes (saturated) to u64::MAX; `Instant + Duration` panicked on it.
        for timeout in [serde_json::json!(1e30), serde_json::json!(u64::MAX)] {
            let p = payload(
                &["echo never"],
                &[],
                serde_json::json!({"runner_info": {"timeout": timeout}}),
            );
            let (api, engine, log) = run(p).await;
            assert_eq!(
                final_state(&api),
                (
                    "failed".to_string(),
                    Some(FailureReason::RunnerSystemFailure.to_string())
                ),
                "{log}"
            );
            assert!(log.contains("GitLab never sends such a value"), "{log}");
            assert!(
                engine.calls().is_empty(),
                "nothing ran: {:?}",
                engine.calls()
            );
        }
    }

    #[tokio::test]
    async fn a_huge_after_script_timeout_saturates() {
        // A job variable (the job controls it) far beyond what a deadline can hold.
        let p = payload(
            &["echo main"],
            &["echo after"],
            serde_json::json!({"variables": [
                {"key": "GIT_STRATEGY", "value": "none", "public": true},
                {"key": "RUNNER_AFTER_SCRIPT_TIMEOUT", "value": "99999999999999999999999h", "public": true}
            ]}),
        );
        let (api, engine, log) = run(p).await;
        assert_eq!(final_state(&api), ("success".to_string(), None), "{log}");
        assert!(log.contains("after"), "{log}");
        assert!(
            engine
                .calls()
                .contains(&Call::RunStep(7, "after_script".into()))
        );
    }
}
