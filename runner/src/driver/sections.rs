//! One function per GitLab section of the job log, in the order GitLab names them:
//! `prepare_executor`, `get_sources`, `restore_cache`, `download_artifacts`, each script step,
//! `after_script`, `archive_cache`, `upload_artifacts_on_success|failure` (`cleanup` is in
//! `cleanup.rs`). Each runs its work under the job's signals and hands the end to
//! [`JobState::settle`](super::state::JobState::settle); the order they run in is `sequence.rs`.

use ferry_deploy::{DeployRequest, Deployer, JobFacts, Origin};
use ferry_executor::artifacts::ArtifactSpec;
use ferry_executor::meter::metered;
use ferry_executor::{Engine, EngineError, EnvVar, JobEnv, StepOutcome};

use tokio_util::sync::CancellationToken;

use super::host::Host;
use super::sequence::At;
use super::signals::{STOP_GRACE, Stage, Stop, cancellable};
use super::state::StageError;
use super::{Driver, JobRun};
use crate::api::{ApiError, ArtifactMeta, JobApi};
use crate::failure::FailureReason;
use crate::plan::{self, DeployCommand, PlannedStep};
use crate::trace::{Stream, TraceWriter};

impl<E: Engine, D: Deployer, A: JobApi, H: Host> Driver<E, D, A, H> {
    /// Pulls images, starts services, creates the build container, then makes the host's
    /// project dir appear in it (a no-op when it is bind-mounted).
    pub(super) async fn prepare_executor(&self, run: &mut JobRun<'_>, env: &JobEnv) {
        let (engine, log) = (&*self.engine, run.log);
        log.section_start(
            "prepare_executor",
            "Preparing the \"docker\" executor",
            false,
        );
        let stage = run
            .signals
            .run(false, |limits| async move {
                let mut sink = log.clone();
                engine.prepare(env, &mut sink, &limits.cancel).await
            })
            .await;
        log.section_end("prepare_executor");
        if run.state.settle(stage, log).is_some() {
            let stage = run
                .signals
                .run(false, |limits| async move {
                    let synced = cancellable(engine.sync_in(env), &limits.cancel).await;
                    synced.unwrap_or(Err(EngineError::Cancelled))
                })
                .await;
            run.state.settle(stage, log);
        }
    }

    /// git on the host, between the get_sources hooks, each in a container of its own that
    /// is gone before git starts (docs/sources-cache-artifacts.md, "get_sources hooks"); the
    /// git configuration the pre hook leaves reaches host git only through the allow-list.
    pub(super) async fn get_sources(&self, run: &mut JobRun<'_>) {
        let (host, engine, plan, log) = (&*self.host, &*self.engine, run.plan, run.log);
        log.section_start("get_sources", "Getting source from Git repository", false);
        let env = match &plan.execution {
            plan::Execution::Docker { env, .. } => Some(&**env),
            plan::Execution::Deploy { .. } => None,
        };
        let stage = run
            .signals
            .run(false, |limits| async move {
                let limits = &limits;
                let tries = (plan.attempts.get_sources, "GET_SOURCES_ATTEMPTS");
                with_attempts(tries, log, &limits.cancel, || async move {
                    let mut hook_config = Vec::new();
                    if let (Some(pre), Some(env)) = (&plan.hooks.pre, env) {
                        let listing = run_hook(engine, env, pre, true, log, &limits.cancel).await?;
                        hook_config = carried_config(&listing, log);
                    }
                    let mut sink = log.clone();
                    host.get_sources(plan, &hook_config, &mut sink, &limits.cancel)
                        .await
                        .map_err(StageError::Sources)?;
                    if let (Some(post), Some(env)) = (&plan.hooks.post, env) {
                        run_hook(engine, env, post, false, log, &limits.cancel).await?;
                    }
                    Ok(())
                })
                .await
            })
            .await;
        log.section_end("get_sources");
        run.state.settle(stage, log);
    }

    /// A cache that cannot be restored is a warning: the job goes on without it.
    pub(super) async fn restore_cache(&self, run: &mut JobRun<'_>) {
        let (host, plan, log) = (&*self.host, run.plan, run.log);
        if plan.caches.is_empty() {
            return;
        }
        log.section_start("restore_cache", "Restoring cache", false);
        for spec in &plan.caches {
            let stage = run
                .signals
                .run(false, |limits| async move {
                    let mut sink = log.clone();
                    host.restore_cache(plan, spec, &mut sink, &limits).await
                })
                .await;
            match stage {
                Stage::Done(Ok(())) => {}
                Stage::Done(Err(e)) => {
                    log.write_warning(&format!("restoring cache {:?}: {e}", spec.key))
                }
                Stage::Stopped(stop) => {
                    log.section_end("restore_cache");
                    run.state.halt(stop, log);
                    return;
                }
            }
        }
        log.section_end("restore_cache");
    }

    /// The artifacts of the jobs this one depends on, into the project dir.
    pub(super) async fn download_artifacts(&self, run: &mut JobRun<'_>) {
        let (host, api, plan, log) = (&*self.host, &*self.api, run.plan, run.log);
        if plan.dependencies.is_empty() {
            return;
        }
        log.section_start("download_artifacts", "Downloading artifacts", false);
        for dep in &plan.dependencies {
            log.write_line(&format!(
                "Downloading artifacts for {} ({})...",
                dep.name, dep.id
            ));
            let stage = run
                .signals
                .run(false, |limits| async move {
                    let limits = &limits;
                    let tries = (
                        plan.attempts.artifact_download,
                        "ARTIFACT_DOWNLOAD_ATTEMPTS",
                    );
                    with_attempts(tries, log, &limits.cancel, || async move {
                        let tmp = tempfile::NamedTempFile::new().map_err(StageError::TempFile)?;
                        let download = api.download_artifacts(dep.id, &dep.token, tmp.path());
                        // The meter counts what reached the file (ferry's own temporary file).
                        let written = || std::fs::metadata(tmp.path()).map_or(0, |m| m.len());
                        let (label, mut sink) = ("Downloading artifacts", log.clone());
                        let download = metered(
                            plan.transfer_meter,
                            label,
                            None,
                            written,
                            &mut sink,
                            download,
                        );
                        let downloaded = cancellable(download, &limits.cancel)
                            .await
                            .unwrap_or(Err(ApiError::Io("cancelled".into())));
                        downloaded.map_err(|source| StageError::Download {
                            name: dep.name.clone(),
                            id: dep.id,
                            source,
                        })?;
                        host.extract_artifacts(plan, tmp.path(), limits)
                            .await
                            .map_err(|source| StageError::Extract {
                                name: dep.name.clone(),
                                id: dep.id,
                                source,
                            })
                    })
                    .await
                })
                .await;
            let summary = match stage {
                Stage::Done(Ok(summary)) => summary,
                // Its line goes after the section, as every stage's does.
                failed => {
                    log.section_end("download_artifacts");
                    run.state.settle(failed, log);
                    return;
                }
            };
            for n in &summary.notes {
                log.write_str(&n.to_log_line());
            }
            log.write_line(&format!(
                "Downloaded artifacts for {} ({}): {} files",
                dep.name, dep.id, summary.files
            ));
        }
        log.section_end("download_artifacts");
    }

    /// One script step (`step_script`, `step_release`, ...): a non-zero exit code fails the job
    /// with `script_failure` and that code.
    pub(super) async fn step(
        &self,
        run: &mut JobRun<'_>,
        env: &JobEnv,
        step: &PlannedStep,
        at: At,
    ) {
        let (engine, log) = (&*self.engine, run.log);
        // Past the output limit the engine reads no more of the step's output file.
        let mut spec = step.spec.clone();
        spec.log_full = log.log_full();
        let spec = &spec;
        if let Some(started) = at.resumed {
            // Its header is in the log already (docs/crash-safety.md).
            let stage = run
                .signals
                .run(false, |limits| async move {
                    let mut sink = log.with_stream(Stream::WORK);
                    let ran = engine
                        .resume_step(env, spec, 0, started, &mut sink, &limits.cancel)
                        .await;
                    sink.end_stream();
                    ran
                })
                .await;
            self.step_ended(run, step, resumed_stage(stage, log));
            return;
        }
        log.section_start(
            &step.section,
            &format!("Executing \"{}\" stage of the job script", step.section),
            false,
        );
        self.journal_step(run, at, step).await;
        // EXECUTOR_JOB_SECTION_ATTEMPTS, as gitlab-runner's Docker executor (`runContainer`):
        // a step whose build container was removed under it runs again, from its start, in a
        // new one; no other failure is tried again.
        let attempts = run.plan.attempts.executor_job_section.max(1);
        let mut attempt = 1;
        let stage = loop {
            if attempt > 1 {
                log.write_line(&format!("Retrying {}", step.section));
            }
            let stage = run
                .signals
                .run(false, |limits| async move {
                    // The script's output is gitlab-runner's "work" stream (`FF_TIMESTAMPS`).
                    let mut sink = log.with_stream(Stream::WORK);
                    let ran = engine.run_step(env, spec, &mut sink, &limits.cancel).await;
                    sink.end_stream();
                    ran
                })
                .await;
            let Stage::Done(Err(EngineError::ContainerGone(name))) = &stage else {
                break stage;
            };
            log.write_error(&format!(
                "Container {name:?} not found or removed. Will retry..."
            ));
            if attempt >= attempts {
                if attempts > 1 {
                    log.write_error("Execution attempts exceeded");
                }
                break stage;
            }
            attempt += 1;
            let recreated = run
                .signals
                .run(false, |limits| async move {
                    let mut sink = log.clone();
                    engine
                        .recreate_build_container(env, &mut sink, &limits.cancel)
                        .await
                })
                .await;
            if !matches!(recreated, Stage::Done(Ok(()))) {
                log.section_end(&step.section);
                run.state.settle(recreated, log);
                return;
            }
        };
        self.step_ended(run, step, stage);
    }

    /// The end of a script step: its section, and its outcome as the job's.
    fn step_ended(
        &self,
        run: &mut JobRun<'_>,
        step: &PlannedStep,
        stage: Stage<Result<StepOutcome, EngineError>>,
    ) {
        let log = run.log;
        log.section_end(&step.section);
        if let Some(StepOutcome {
            exit_code,
            oom_killed,
            ..
        }) = run.state.settle(stage, log)
            && exit_code != 0
        {
            if oom_killed {
                log.write_error("the job container was killed because it ran out of memory (OOM)");
            }
            run.state
                .fail(FailureReason::ScriptFailure, Some(exit_code));
        }
    }

    /// `after_script` sees `CI_JOB_STATUS`, runs through GitLab's `canceling` and after the job
    /// timeout, and its failures are warnings (gitlab-runner ignores them by default). Its own
    /// timeout is the engine's to enforce (`StepSpec::timeout`, executor/src/engine.rs); the
    /// driver's deadline here is only a backstop for an engine that does not return.
    pub(super) async fn after_script(
        &self,
        run: &mut JobRun<'_>,
        env: &JobEnv,
        step: &PlannedStep,
        at: At,
    ) {
        let (engine, log) = (&*self.engine, run.log);
        let mut spec = step.spec.clone();
        spec.log_full = log.log_full();
        spec.env.push(EnvVar {
            name: "CI_JOB_STATUS".into(),
            value: run.state.status().as_str().into(),
        });
        if at.resumed.is_none() {
            log.section_start(
                &step.section,
                &format!("Executing \"{}\" stage of the job script", step.section),
                false,
            );
            self.journal_step(run, at, step).await;
        }
        let limit = spec.timeout.unwrap_or(plan::DEFAULT_AFTER_SCRIPT_TIMEOUT);
        let backstop = ferry_executor::deadline_after(limit.saturating_add(STOP_GRACE));
        let spec = &spec;
        let stage = run
            .signals
            .with_deadline(backstop)
            .run(true, |limits| async move {
                let mut sink = log.with_stream(Stream::WORK);
                let ran = match at.resumed {
                    Some(started) => {
                        engine
                            .resume_step(env, spec, 0, started, &mut sink, &limits.cancel)
                            .await
                    }
                    None => engine.run_step(env, spec, &mut sink, &limits.cancel).await,
                };
                sink.end_stream();
                ran
            })
            .await;
        let stage = match at.resumed {
            Some(_) => resumed_stage(stage, log),
            None => stage,
        };
        log.section_end(&step.section);
        match stage {
            // The engine's own line says it timed out.
            Stage::Done(Ok(o)) if o.timed_out => {}
            Stage::Done(Ok(o)) if o.exit_code != 0 => log.write_warning(&format!(
                "after_script failed with exit code {}",
                o.exit_code
            )),
            Stage::Done(Ok(_)) => {}
            Stage::Done(Err(e)) => log.write_warning(&format!("after_script failed: {e}")),
            Stage::Stopped(Stop::Timeout) => log.write_warning("after_script timed out"),
            // The job is over server-side, or ferry is stopping: nothing after this runs.
            Stage::Stopped(stop) => run.state.halt(stop, log),
        }
    }

    /// What the steps left, back to the host for cache and artifacts (a no-op when the
    /// project dir is bind-mounted; a copy from a remote daemon otherwise).
    pub(super) async fn sync_out(&self, run: &mut JobRun<'_>, env: &JobEnv) {
        let engine = &*self.engine;
        let stage = run
            .signals
            .run(true, |limits| async move {
                let synced = cancellable(engine.sync_out(env), &limits.cancel).await;
                synced.unwrap_or(Err(EngineError::Cancelled))
            })
            .await;
        run.state.settle(stage, run.log);
    }

    /// Saves the caches by their `when`; a cache that cannot be saved is a warning.
    pub(super) async fn archive_cache(&self, run: &mut JobRun<'_>) {
        let (host, plan, log) = (&*self.host, run.plan, run.log);
        if plan.caches.is_empty() {
            return;
        }
        let succeeded = !run.state.failed();
        let name = if succeeded {
            "archive_cache"
        } else {
            "archive_cache_on_failure"
        };
        // A resumed job skips the caches an earlier ferry saved; their section is open.
        let done = run.state.after.caches;
        if done >= plan.caches.len() {
            return;
        }
        if done == 0 {
            log.section_start(name, "Saving cache", false);
        }
        for (i, spec) in plan.caches.iter().enumerate().skip(done) {
            if i > done {
                // The one before is saved (docs/crash-safety.md).
                self.journal_after(run).await;
            }
            let stage = run
                .signals
                .run(true, |limits| async move {
                    let mut sink = log.clone();
                    host.save_cache(plan, spec, succeeded, &mut sink, &limits)
                        .await
                })
                .await;
            match stage {
                Stage::Done(Ok(())) => {}
                Stage::Done(Err(e)) => {
                    log.write_warning(&format!("saving cache {:?}: {e}", spec.key))
                }
                Stage::Stopped(stop) => {
                    log.section_end(name);
                    run.state.halt(stop, log);
                    return;
                }
            }
            run.state.after.caches = i + 1;
        }
        log.section_end(name);
        self.journal_after(run).await;
    }

    /// Archives and uploads the artifacts due by their `when`. A failure fails a job that had
    /// succeeded; a job that had failed keeps its first failure.
    pub(super) async fn upload_artifacts(&self, run: &mut JobRun<'_>) {
        let (plan, log) = (run.plan, run.log);
        let succeeded = !run.state.failed();
        let due: Vec<_> = plan
            .artifacts
            .iter()
            .filter(|a| a.when.applies(succeeded))
            .collect();
        // A resumed job skips the artifacts an earlier ferry uploaded; their section is open.
        let done = run.state.after.artifacts;
        if due.len() <= done {
            return;
        }
        let name = upload_section(succeeded);
        let title = if succeeded {
            "Uploading artifacts for successful job"
        } else {
            "Uploading artifacts for failed job"
        };
        if done == 0 {
            log.section_start(name, title, false);
        }
        let mut failure = None;
        for (i, spec) in due.into_iter().enumerate().skip(done) {
            if i > done {
                // The one before is uploaded (docs/crash-safety.md).
                self.journal_after(run).await;
            }
            match self.upload_one(run, spec).await {
                Ok(true) => run.state.after.artifacts = i + 1,
                Ok(false) => return,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        log.section_end(name);
        match failure {
            Some(e) => run.state.error(e, log),
            None => self.journal_after(run).await,
        }
    }

    /// Archives and uploads one `artifacts:` entry. `Ok(false)`: a stop signal ended it (the
    /// section is closed and the stop recorded).
    async fn upload_one(
        &self,
        run: &mut JobRun<'_>,
        spec: &ArtifactSpec,
    ) -> Result<bool, StageError> {
        let (host, api, plan, log) = (&*self.host, &*self.api, run.plan, run.log);
        log.write_line(&format!("Uploading artifacts ({})...", spec.artifact_type));
        let tmp = tempfile::NamedTempFile::new().map_err(StageError::TempFile)?;
        let (out, job) = (tmp.path(), run.job);
        let stage = run
            .signals
            .run(true, |limits| async move {
                let mut sink = log.clone();
                let summary = host
                    .archive_artifacts(plan, spec, out, &mut sink, &limits)
                    .await
                    .map_err(StageError::Archive)?;
                if summary.files == 0 {
                    return Ok(false);
                }
                let meta = ArtifactMeta {
                    artifact_type: spec.artifact_type.clone(),
                    artifact_format: spec.format.as_str().to_string(),
                    name: spec.upload_file_name(),
                    expire_in: spec.expire_in.clone(),
                    progress: Default::default(),
                };
                let upload = api.upload_artifacts(job, &meta, out);
                let sent = || meta.progress.get();
                let upload = metered(
                    plan.transfer_meter,
                    "Uploading artifacts",
                    None,
                    sent,
                    &mut sink,
                    upload,
                );
                cancellable(upload, &limits.cancel)
                    .await
                    .unwrap_or(Err(ApiError::Io("cancelled".into())))
                    .map_err(StageError::Upload)?;
                Ok(true)
            })
            .await;
        match stage {
            Stage::Stopped(stop) => {
                log.section_end(upload_section(!run.state.failed()));
                run.state.halt(stop, log);
                return Ok(false);
            }
            Stage::Done(Ok(true)) => log.write_line(&format!(
                "Uploading artifacts as \"{}\" to coordinator... 201 Created  id={} responseStatus=201 Created",
                spec.format.as_str(),
                job.id
            )),
            Stage::Done(Ok(false)) => {}
            Stage::Done(Err(e)) => return Err(e),
        }
        Ok(true)
    }

    /// One `ferry deploy` line of a deploy job. The runner's targets and GitLab's facts decide
    /// the policy; variables only configure the deploy within it (docs/deploy.md, "Who decides
    /// what").
    /// One `ferry deploy` line (`index` in the plan's deploy commands), journaled at its start
    /// and at each change of its phase; with `resumed`, one an earlier ferry started and left
    /// (docs/crash-safety.md): its header is in the log already, it is applied again and its
    /// wait continues.
    pub(super) async fn deploy(
        &self,
        run: &mut JobRun<'_>,
        facts: &JobFacts,
        cmd: &DeployCommand,
        index: usize,
        resumed: Option<&ResumedDeploy>,
    ) {
        let (deployer, plan, log) = (&*self.deployer, run.plan, run.log);
        let now = std::time::SystemTime::now();
        let (progress, mut phases) = tokio::sync::mpsc::unbounded_channel();
        let req = DeployRequest {
            args: cmd.args.clone(),
            project_dir: plan.host_project_dir.clone(),
            variables: plan
                .variables
                .deduplicated()
                .into_iter()
                .map(|v| (v.key.clone(), v.value.clone()))
                .collect(),
            targets: run.runner.deploy.targets.clone(),
            remaining: Some(run.signals.remaining()),
            origin: Origin::Job(facts.clone()),
            resumed: resumed.map(|r| r.request(now)),
            progress: run.journal.is_some().then_some(progress),
        };
        let started_ms = match resumed {
            Some(r) => r.started_ms,
            None => {
                // Journaled before the header, with the log's checkpoint there: a restart
                // before the entry is written repeats nothing, and one after it writes the
                // header if GitLab does not hold it (docs/crash-safety.md).
                let started_ms = crate::journal::epoch_ms(now);
                if let Some(j) = &run.journal {
                    j.stage(crate::journal::Stage::Deploy {
                        index,
                        started_ms,
                        trace: log.checkpoint(),
                        phase: crate::journal::DeployPhase::Applying,
                    })
                    .await;
                }
                log.write_command(&cmd.line);
                log.section_start("deploy", "Deploying to Kubernetes", false);
                started_ms
            }
        };
        // The wait of a resumed deploy still counts from its first start.
        let waiting_since = resumed.and_then(|r| r.waiting_since_ms);
        let journal = run.journal.clone();
        let record = |phase: ferry_deploy::Phase| {
            let journal = journal.clone();
            async move {
                let Some(j) = journal else { return };
                let phase = match phase {
                    ferry_deploy::Phase::Waiting { changed } => {
                        crate::journal::DeployPhase::Waiting {
                            since_ms: waiting_since.unwrap_or_else(|| {
                                crate::journal::epoch_ms(std::time::SystemTime::now())
                            }),
                            changed,
                        }
                    }
                    ferry_deploy::Phase::Failed => crate::journal::DeployPhase::Failed,
                };
                j.stage(crate::journal::Stage::Deploy {
                    index,
                    started_ms,
                    trace: log.checkpoint(),
                    phase,
                })
                .await;
            }
        };
        let req = &req;
        let deploying = run.signals.run(false, |limits| async move {
            let mut sink = log.clone();
            deployer.deploy(req, &mut sink, &limits.cancel).await
        });
        let mut deploying = std::pin::pin!(deploying);
        // Each phase is journaled as it begins, while the deploy goes on.
        // The deployer waits for the answer: a rollback starts only once `failed` is written.
        let stage = loop {
            tokio::select! {
                stage = &mut deploying => break stage,
                Some((phase, done)) = phases.recv() => {
                    record(phase).await;
                    let _ = done.send(());
                }
            }
        };
        while let Ok((phase, done)) = phases.try_recv() {
            record(phase).await;
            let _ = done.send(());
        }
        log.section_end("deploy");
        run.state.settle(stage, log);
    }
}

/// A `ferry deploy` line an earlier ferry started and left (docs/crash-safety.md).
#[derive(Debug, Clone)]
pub(super) struct ResumedDeploy {
    pub started_ms: u64,
    /// When its wait for the workloads began, if it had.
    pub waiting_since_ms: Option<u64>,
    /// The objects it created or configured.
    pub changed: Vec<String>,
    /// The log continues from the checkpoint journaled before the line's header: the header
    /// is written again.
    pub header: bool,
}

impl ResumedDeploy {
    fn request(&self, now: std::time::SystemTime) -> ferry_deploy::Resumed {
        let since = |ms: u64| {
            now.duration_since(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                .unwrap_or_default()
        };
        ferry_deploy::Resumed {
            elapsed: since(self.started_ms),
            waited: self.waiting_since_ms.map(since),
            changed: self.changed.clone(),
        }
    }
}

/// The section of the artifacts upload after a job that succeeded or failed.
/// A resumed step whose build container is gone: the line says why (docs/crash-safety.md).
fn resumed_stage(
    stage: Stage<Result<StepOutcome, EngineError>>,
    log: &TraceWriter,
) -> Stage<Result<StepOutcome, EngineError>> {
    if let Stage::Done(Err(e @ (EngineError::ContainerGone(_) | EngineError::Docker(_)))) = &stage {
        log.write_error(&format!(
            "ferry was restarted while this step ran, and the step could not be followed again: {e}"
        ));
    }
    stage
}

fn upload_section(succeeded: bool) -> &'static str {
    if succeeded {
        "upload_artifacts_on_success"
    } else {
        "upload_artifacts_on_failure"
    }
}

/// gitlab-runner's `attemptExecuteStage`: `work` is tried up to `attempts` times (the count and
/// the variable that set it) while it fails, with a warning naming the cause before each new
/// try, 1 s, 2 s, 4 s, then 5 s apart (gitlab-runner's default backoff). A stop signal ends the
/// waiting (the stage then reports the stop).
/// One get_sources hook in its container; a non-zero exit fails the stage. Returns what the
/// hook's `git config --global` holds when `read_git_config`.
async fn run_hook<E: Engine>(
    engine: &E,
    env: &JobEnv,
    hook: &ferry_executor::StepSpec,
    read_git_config: bool,
    log: &TraceWriter,
    cancel: &CancellationToken,
) -> Result<Vec<u8>, StageError> {
    log.write_line(&format!(
        "Running {} in a container of {} (not on the runner host)...",
        hook.name, env.image.name
    ));
    let mut sink = log.clone();
    let done = engine
        .run_hook(env, hook, read_git_config, &mut sink, cancel)
        .await?;
    if done.outcome.exit_code != 0 {
        if done.outcome.oom_killed {
            log.write_error("the hook's container ran out of memory (OOM)");
        }
        return Err(StageError::Hook {
            name: hook.name.clone(),
            exit_code: done.outcome.exit_code,
        });
    }
    Ok(done.git_config)
}

/// The allow-list over a pre hook's git configuration, each refused key in the log with its
/// reason, the carried ones by name (values can be secrets, e.g. `http.extraHeader`).
fn carried_config(listing: &[u8], log: &TraceWriter) -> Vec<(String, String)> {
    let config = ferry_executor::sources::carried_git_config(listing);
    for r in &config.refused {
        log.write_warning(&format!(
            "git config {:?} set by pre_get_sources_script is not used by git on the runner host: {}",
            r.key, r.reason
        ));
    }
    if !config.carried.is_empty() {
        let keys: Vec<&str> = config.carried.iter().map(|(k, _)| k.as_str()).collect();
        log.write_line(&format!(
            "Using git config from pre_get_sources_script: {}",
            keys.join(", ")
        ));
    }
    config.carried
}

async fn with_attempts<T, F, Fut>(
    (attempts, variable): (u32, &str),
    log: &TraceWriter,
    cancel: &CancellationToken,
    mut work: F,
) -> Result<T, StageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StageError>>,
{
    let attempts = attempts.max(1);
    let mut attempt = 1;
    loop {
        match work().await {
            Err(e) if attempt < attempts && !cancel.is_cancelled() && !permanent(&e) => {
                let cause = e.log_line();
                let cause = cause.strip_prefix("Job failed: ").unwrap_or(&cause);
                attempt += 1;
                log.write_warning(&format!(
                    "{cause}; trying again ({attempt}/{attempts}, {variable})"
                ));
                let wait = RETRY_BACKOFF[(attempt as usize - 2).min(RETRY_BACKOFF.len() - 1)];
                if cancellable(tokio::time::sleep(wait), cancel)
                    .await
                    .is_none()
                {
                    return Err(e);
                }
            }
            done => return done,
        }
    }
}

/// Failures another attempt cannot change: the job's settings, the host's missing git-lfs, a
/// transport host git refuses.
fn permanent(e: &StageError) -> bool {
    use ferry_executor::sources::SourceError;
    matches!(
        e,
        StageError::Sources(
            SourceError::InvalidVariable { .. }
                | SourceError::InvalidSpec(_)
                | SourceError::LfsMissing { .. }
                | SourceError::TransportRefused { .. }
        )
    )
}

/// The waits between attempts of [`with_attempts`].
const RETRY_BACKOFF: [std::time::Duration; 4] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(5),
];
