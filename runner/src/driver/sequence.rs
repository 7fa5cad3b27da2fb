//! The order of a job's stages (docs/architecture.md, "A job's stages"): what runs after what,
//! decided by the run policy of [`JobState::admit`](super::state::JobState::admit).

use ferry_deploy::{Deployer, JobFacts};
use ferry_executor::{Engine, JobEnv};
use tokio_util::sync::CancellationToken;

use crate::trace::Stream;

use super::host::Host;
use super::signals::Stop;
use super::state::{Phase, StageError};
use super::{Driver, JobRun};
use crate::api::JobApi;
use crate::gitlab::payload::StepKind;
use crate::plan::{self, DeployCommand, Execution, PlannedStep};
use ferry_config::When;

/// The sections before the script, in the order they run.
enum Before {
    GetSources,
    RestoreCache,
    DownloadArtifacts,
    PrepareExecutor,
}

/// Which step runs: its index in the plan's steps, and whether an earlier ferry started it
/// (when) and left it running.
#[derive(Debug, Clone, Copy)]
pub(super) struct At {
    pub index: usize,
    pub resumed: Option<std::time::SystemTime>,
}

/// The stages after the steps, in the order they run.
enum After {
    SyncOut,
    ArchiveCache,
    UploadArtifacts,
}

impl<E: Engine, D: Deployer, A: JobApi, H: Host> Driver<E, D, A, H> {
    /// Everything between the job's start and its final update, except cleanup.
    pub(super) async fn execute(&self, run: &mut JobRun<'_>) {
        for w in &run.plan.warnings {
            run.log.write_warning(w);
        }
        if let Err(e) = self.host.create_dirs(run.plan).await {
            run.state.error(StageError::HostDirs(e), run.log);
            return;
        }
        match &run.plan.execution {
            Execution::Docker { env, steps } => self.docker_job(run, env, steps).await,
            Execution::Deploy { commands, facts } => self.deploy_job(run, commands, facts).await,
        }
    }

    /// A job in containers. Sources, cache and dependencies come before any container of the
    /// job starts, so git works in a project dir no container can change meanwhile
    /// (docs/security.md); the file variables are written before the container that mounts
    /// them read-only.
    async fn docker_job(&self, run: &mut JobRun<'_>, env: &JobEnv, steps: &[PlannedStep]) {
        if let Err(e) = self
            .host
            .write_file_variables(run.plan, env.image.user.as_deref())
            .await
        {
            run.state.error(StageError::FileVariables(e), run.log);
            return;
        }
        for section in [
            Before::GetSources,
            Before::RestoreCache,
            Before::DownloadArtifacts,
            Before::PrepareExecutor,
        ] {
            if !self.admit(run, Phase::BeforeScript) {
                return;
            }
            match section {
                Before::GetSources => self.get_sources(run).await,
                Before::RestoreCache => self.restore_cache(run).await,
                Before::DownloadArtifacts => self.download_artifacts(run).await,
                Before::PrepareExecutor => self.prepare_executor(run, env).await,
            }
        }
        if !run.state.admit(Phase::BeforeScript, None, run.log) {
            return;
        }
        run.state.script_started = true;
        if !run.plan.debug_services || env.services.is_empty() {
            self.steps(run, env, steps).await;
            self.after_steps(run, env).await;
            return;
        }
        // CI_DEBUG_SERVICES: the services' output goes to the log while the steps, cache and
        // artifacts run (docs/job-log.md, "Service logs").
        let stop = CancellationToken::new();
        let mut sink = run.log.with_stream(Stream::SERVICES);
        let services = self.engine.stream_service_logs(env, &mut sink, &stop);
        let work = async {
            self.steps(run, env, steps).await;
            self.after_steps(run, env).await;
            stop.cancel();
        };
        tokio::join!(services, work);
        sink.end_stream();
    }

    /// Whether a stage of `phase` runs now ([`JobState::admit`](super::state::JobState::admit)).
    fn admit(&self, run: &mut JobRun<'_>, phase: Phase) -> bool {
        let now = run.signals.current();
        run.state.admit(phase, now, run.log)
    }

    /// The script steps by their `when`, then after_script. With `RUNNER_SCRIPT_TIMEOUT`, the
    /// script steps together run under a deadline of their own, from the first one's start
    /// (gitlab-runner's `executeUserScripts`); after_script, cache and artifacts then run under
    /// the job's deadline as usual.
    async fn steps(&self, run: &mut JobRun<'_>, env: &JobEnv, steps: &[PlannedStep]) {
        self.steps_from(run, env, steps, 0, None).await
    }

    /// The steps from `first` on; with `resumed`, the first one is a step an earlier ferry
    /// started at that time and left running (docs/crash-safety.md): it is followed, not
    /// started again.
    pub(super) async fn steps_from(
        &self,
        run: &mut JobRun<'_>,
        env: &JobEnv,
        steps: &[PlannedStep],
        first: usize,
        resumed: Option<std::time::SystemTime>,
    ) {
        let script = run.plan.script_timeout.and_then(|limit| {
            let deadline = ferry_executor::deadline_after(limit);
            (deadline < run.signals.deadline).then_some((deadline, limit))
        });
        for (index, step) in steps.iter().enumerate().skip(first) {
            let at = At {
                index,
                resumed: resumed.filter(|_| index == first),
            };
            if step.kind == StepKind::AfterScript {
                if self.admit(run, Phase::AfterScript) {
                    self.after_script(run, env, step, at).await;
                }
                continue;
            }
            let Some((deadline, limit)) = script else {
                if self.admit(run, Phase::Step(step.when)) {
                    self.step(run, env, step, at).await;
                }
                continue;
            };
            // Under these signals a timeout is the script's: its deadline is the earlier one.
            let script_signals = run.signals.with_deadline(deadline);
            let job_signals = std::mem::replace(&mut run.signals, script_signals);
            run.state.script_timeout = Some((step.section.clone(), limit));
            if self.admit(run, Phase::Step(step.when)) {
                self.step(run, env, step, at).await;
            }
            run.state.script_timeout = None;
            run.signals = job_signals;
        }
    }

    /// Records in the journal that the step `at` starts now, with where the log stands
    /// (taken after its section header, so a later ferry continues after it).
    pub(super) async fn journal_step(&self, run: &JobRun<'_>, at: At, step: &PlannedStep) {
        if let Some(j) = &run.journal {
            j.stage(crate::journal::Stage::Step {
                index: at.index,
                name: step.spec.name.clone(),
                started_ms: crate::journal::epoch_ms(std::time::SystemTime::now()),
                trace: run.log.checkpoint(),
                clean: !run.state.failed(),
            })
            .await;
        }
    }

    /// Cache and artifacts after the steps, by `when`. (The after_steps stage.) They run under the job's deadline;
    /// after a timeout of the script they get a bounded time of their own, as after_script
    /// does, so that `when: on_failure` caches and artifacts are still saved. First, what the
    /// steps left comes back to the host (a no-op when the directory is bind-mounted).
    pub(super) async fn after_steps(&self, run: &mut JobRun<'_>, env: &JobEnv) {
        if run.signals.current() == Some(Stop::Timeout) {
            let grace = ferry_executor::deadline_after(plan::DEFAULT_AFTER_SCRIPT_TIMEOUT);
            run.signals = run.signals.with_deadline(grace);
        }
        if let Some(j) = &run.journal {
            j.stage(crate::journal::Stage::AfterSteps).await;
        }
        for section in [After::SyncOut, After::ArchiveCache, After::UploadArtifacts] {
            if !self.admit(run, Phase::AfterSteps) {
                return;
            }
            match section {
                After::SyncOut => self.sync_out(run, env).await,
                After::ArchiveCache => self.archive_cache(run).await,
                After::UploadArtifacts => self.upload_artifacts(run).await,
            }
        }
    }

    /// A deploy job (`image: ferry:deploy`): no container; each `ferry deploy` line in turn.
    async fn deploy_job(&self, run: &mut JobRun<'_>, commands: &[DeployCommand], facts: &JobFacts) {
        if self.admit(run, Phase::BeforeScript) {
            self.get_sources(run).await;
        }
        if self.admit(run, Phase::BeforeScript) {
            self.download_artifacts(run).await;
        }
        self.deploys_from(run, commands, facts, 0, None).await;
    }

    /// The `ferry deploy` lines from `first` on; with `resumed`, the first one is a line an
    /// earlier ferry started and left (docs/crash-safety.md): it is applied again and its wait
    /// continues.
    pub(super) async fn deploys_from(
        &self,
        run: &mut JobRun<'_>,
        commands: &[DeployCommand],
        facts: &JobFacts,
        first: usize,
        resumed: Option<super::sections::ResumedDeploy>,
    ) {
        for (index, cmd) in commands.iter().enumerate().skip(first) {
            if !self.admit(run, Phase::Step(When::OnSuccess)) {
                return;
            }
            let at = resumed.as_ref().filter(|_| index == first);
            self.deploy(run, facts, cmd, index, at).await;
        }
    }
}
