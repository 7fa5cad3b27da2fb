//! A job an earlier ferry left running (docs/crash-safety.md), from its journal entry: asked
//! about in GitLab, then followed to its end from the step it was in, or ended with the reason
//! it cannot be, and in every case its containers removed and its entry dropped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_config::RunnerSection;
use ferry_deploy::Deployer;
use ferry_executor::Engine;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::host::Host;
use super::sections::ResumedDeploy;
use super::signals::Signals;
use super::state::{AfterDone, JobState as Progress};
use super::{Driver, JobJournal, JobRun, internal_error, job_url};
use crate::api::{JobApi, JobState, JobUpdate, UpdateReply};
use crate::failure::FailureReason;
use crate::journal::{DeployPhase, Entry, Stage};
use crate::metrics::RunnerLabels;
use crate::plan::{self, Execution, JobContext, Plan};
use crate::trace::{self, TraceConfig, TraceWriter};

use super::state::Outcome;

/// What becomes of a journaled job.
enum Verdict {
    /// Follow the step `index`, started at `started`, from the log's checkpoint.
    Follow {
        index: usize,
        started: SystemTime,
        checkpoint: trace::Checkpoint,
    },
    /// Apply the deploy line `index` again and continue its wait; its log continues from
    /// the checkpoint if GitLab holds no more than it, else after what GitLab holds.
    Deploy {
        index: usize,
        checkpoint: Option<trace::Checkpoint>,
        resumed: ResumedDeploy,
    },
    /// Save the caches and upload the artifacts not done yet, the steps having ended with
    /// `failure` (none: success), the log continuing from the checkpoint.
    After {
        checkpoint: trace::Checkpoint,
        failure: Option<(FailureReason, Option<i32>)>,
        done: AfterDone,
    },
    /// Send the final update the earlier ferry was sending.
    Final(Outcome),
    /// End the job with `reason` and a log line saying why.
    End(FailureReason, String),
}

impl<E: Engine, D: Deployer, A: JobApi, H: Host> Driver<E, D, A, H> {
    /// Resumes the job of `entry` (whose runner entry is `runner`, slots as journaled in
    /// `ctx`; `workspace`: its project dir, claimed by [`claim_resumed`] at start). Never panics
    /// on what the journal holds; the entry is removed once GitLab has the job's final state,
    /// or no longer knows the job.
    pub async fn resume(
        &self,
        runner: Arc<RunnerSection>,
        entry: Entry,
        ctx: JobContext,
        workspace: Option<super::cleanup::Workspace>,
        shutdown: CancellationToken,
    ) {
        let span = tracing::info_span!(
            "job",
            job = entry.job_id,
            runner = %runner.token.short(),
            project = entry.project_id,
        );
        self.resume_job(runner, entry, ctx, workspace, shutdown)
            .instrument(span)
            .await
    }

    async fn resume_job(
        &self,
        runner: Arc<RunnerSection>,
        entry: Entry,
        ctx: JobContext,
        mut workspace: Option<super::cleanup::Workspace>,
        shutdown: CancellationToken,
    ) {
        let journaled = self.journal.as_ref().map(|j| JobJournal {
            journal: j.clone(),
            entry: Arc::new(std::sync::Mutex::new(entry.clone())),
        });
        let payload = entry.payload.clone();
        let mut job = payload.job_ref();
        let compiled =
            std::panic::catch_unwind(AssertUnwindSafe(|| plan::compile(&payload, &runner, &ctx)));
        let plan = match compiled {
            Ok(Ok(p)) => Some(p),
            _ => None,
        };
        let env = plan.as_ref().and_then(|p| match &p.execution {
            Execution::Docker { env, .. } => Some((**env).clone()),
            Execution::Deploy { .. } => None,
        });

        // GitLab's view first: a job it ended meanwhile is only cleaned up.
        let alive = JobUpdate {
            state: JobState::Running,
            failure_reason: None,
            exit_code: None,
            checksum: None,
            bytesize: None,
        };
        let asked = until_answered(
            "GitLab could not be asked about a job an earlier ferry left running",
            &shutdown,
            || self.api.update_job(&job, &alive),
        )
        .await;
        match asked {
            Ok(UpdateReply::Gone) => {
                info!("the job ended in GitLab while ferry was away: removing its containers");
                if let Some(env) = &env
                    && let Err(e) = self.engine.destroy(env).await
                {
                    warn!(error = %e, "removing the containers of a job that ended meanwhile failed");
                }
                if let Some(j) = &journaled {
                    j.remove().await;
                }
                return;
            }
            Ok(_) => {}
            Err(Stopped) => {
                // Stopped while GitLab could not be reached: its containers keep running, the
                // entry stays, the next start asks again.
                warn!(
                    "ferry stops: the job an earlier ferry left running is left for the next start"
                );
                return;
            }
        }
        info!(stage = ?entry.stage, "resuming a job an earlier ferry left running");

        let now = SystemTime::now();
        let mut verdict = verdict(&entry, plan.as_ref(), env.as_ref(), &*self.engine, now);
        let Some(plan) = plan.as_ref() else {
            self.end_unplanned(job, &runner, &entry, journaled).await;
            return;
        };
        job.debug_trace = plan.debug_trace || plan.debug_services;
        let cfg = TraceConfig {
            timestamps: plan.timestamps,
            ..self.trace_config(&runner, plan.masks.clone())
        };
        // A deploy line's log continues from its `applying` checkpoint, taken before its header.
        let mut deploy_header = false;
        let (log, handle) = match &verdict {
            Verdict::Follow { checkpoint, .. } | Verdict::After { checkpoint, .. } => {
                trace::resume(job.clone(), self.api.clone(), cfg, checkpoint)
            }
            _ => match until_answered(
                "the length of the job's log in GitLab could not be learnt",
                &shutdown,
                || trace::remote_length(&*self.api, &job),
            )
            .await
            {
                // A deploy's output is not written again byte for byte (it is applied again):
                // the log continues from the checkpoint only while GitLab holds no more than
                // it, else after what GitLab holds (docs/crash-safety.md).
                Ok(Some(len)) => match &verdict {
                    Verdict::Deploy {
                        checkpoint: Some(cp),
                        resumed,
                        ..
                    } if len >= cp.accepted && len <= cp.at => {
                        deploy_header = resumed.waiting_since_ms.is_none();
                        trace::resume(job.clone(), self.api.clone(), cfg, cp)
                    }
                    _ => trace::append(job.clone(), self.api.clone(), cfg, len),
                },
                Ok(None) => {
                    info!("GitLab no longer takes the job's log: removing its containers");
                    if let Some(env) = &env {
                        let _ = self.engine.destroy(env).await;
                    }
                    if let Some(j) = &journaled {
                        j.remove().await;
                    }
                    return;
                }
                Err(Stopped) => {
                    warn!(
                        "ferry stops: the job an earlier ferry left running is left for the next start"
                    );
                    return;
                }
            },
        };
        if let Verdict::Deploy { resumed, .. } = &mut verdict {
            resumed.header = deploy_header;
        }
        let labels = RunnerLabels {
            runner: runner.token.short().to_string(),
            runner_name: runner.name.clone(),
            system_id: self.system_id.clone(),
        };
        self.metrics.job_started(&labels);
        let running = self
            .metrics
            .running
            .add(job_url(&payload), labels.clone(), log.clone());
        let started = Instant::now()
            .checked_sub(
                now.duration_since(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(entry.started_ms),
                )
                .unwrap_or_default(),
            )
            .unwrap_or_else(Instant::now);
        let outcome = match verdict {
            Verdict::End(reason, line) => {
                log.write_error(&line);
                Outcome::failed(reason)
            }
            Verdict::Final(outcome) => outcome,
            verdict => {
                let signals = Signals {
                    deadline: ferry_executor::deadline_after(
                        entry
                            .deadline()
                            .duration_since(SystemTime::now())
                            .unwrap_or_default(),
                    ),
                    remote: handle.signals(),
                    shutdown,
                };
                let carried = AssertUnwindSafe(self.carry_on(
                    verdict,
                    plan,
                    &job,
                    &runner,
                    &log,
                    signals,
                    journaled.clone(),
                    &mut workspace,
                ))
                .catch_unwind()
                .await;
                let outcome = carried.unwrap_or_else(|panic| internal_error(&log, panic.as_ref()));
                if let Err(e) = self.host.remove_file_variables(plan).await {
                    warn!(error = %e, "removing the job's file variables failed");
                }
                self.write_timing(&log, &labels, started);
                outcome
            }
        };
        let update = self.final_update(&outcome, &plan.failure_reasons, &labels, &log);
        if let Some(j) = &journaled {
            j.stage(super::final_stage(&outcome)).await;
        }
        let final_outcome = handle.finish(update).await;
        if let Some(j) = &journaled {
            j.remove().await;
        }
        if let Some(env) = env {
            let timed = super::cleanup::Timed {
                metrics: self.metrics.clone(),
                labels: labels.clone(),
            };
            super::cleanup::cleanup(self.engine.clone(), env, workspace, &self.cleanups, timed);
        }
        drop(running);
        self.metrics.job_finished(&labels, started.elapsed());
        info!(?outcome, ?final_outcome, "resumed job finished");
    }

    /// Takes the job up where the earlier ferry left it (`verdict`: Follow, After or Deploy),
    /// in the project dir it left: the steps from the one it was in, then cache and artifacts;
    /// the cache and artifacts not done yet; or the deploy lines from the one it was in, applied
    /// again (server-side apply is idempotent) and its wait continued (docs/crash-safety.md).
    #[allow(clippy::too_many_arguments)]
    async fn carry_on(
        &self,
        verdict: Verdict,
        plan: &Plan,
        job: &crate::api::JobRef,
        runner: &RunnerSection,
        log: &TraceWriter,
        mut signals: Signals,
        journal: Option<JobJournal>,
        workspace: &mut Option<super::cleanup::Workspace>,
    ) -> Outcome {
        let mut claim = Progress::default();
        if workspace.is_none() {
            let claimed = self
                .workspaces
                .claim(&*self.engine, &plan.host_project_dir, log, &mut signals)
                .await;
            match claim.settle(claimed, log) {
                Some(guard) => *workspace = Some(guard),
                None => return claim.outcome(),
            }
        }
        let state = match &verdict {
            Verdict::After { failure, done, .. } => Progress::after_steps(*failure, *done),
            _ => claim,
        };
        let mut run = JobRun {
            plan,
            job,
            runner,
            log,
            signals,
            state,
            journal,
        };
        match (verdict, &plan.execution) {
            (Verdict::Follow { index, started, .. }, Execution::Docker { env, steps }) => {
                run.state.script_started = true;
                self.steps_from(&mut run, env, steps, index, Some(started))
                    .await;
                self.after_steps(&mut run, env).await;
            }
            (Verdict::After { .. }, Execution::Docker { env, .. }) => {
                self.after_steps(&mut run, env).await;
            }
            (Verdict::Deploy { index, resumed, .. }, Execution::Deploy { commands, facts }) => {
                // Journaled as `applying` before its header was written: the log continues
                // before the header, which is written now (docs/crash-safety.md).
                if let Some(cmd) = commands.get(index).filter(|_| resumed.header) {
                    log.write_command(&cmd.line);
                    log.section_start("deploy", "Deploying to Kubernetes", false);
                }
                log.write_warning(if resumed.waiting_since_ms.is_some() {
                    "ferry was restarted while this deploy waited for the rollout: applying the manifests again (server-side apply is idempotent), then waiting for what is left of the timeout"
                } else {
                    "ferry was restarted while this deploy applied the manifests: applying them again (server-side apply is idempotent)"
                });
                self.deploys_from(&mut run, commands, facts, index, Some(resumed))
                    .await;
            }
            _ => return Outcome::failed(FailureReason::RunnerSystemFailure),
        }
        run.state.outcome()
    }

    /// A journaled job whose payload no longer plans (the configuration changed): its log
    /// gets the reason, GitLab the failure; its containers are removed by the next start's
    /// leftover removal.
    async fn end_unplanned(
        &self,
        job: crate::api::JobRef,
        runner: &RunnerSection,
        entry: &Entry,
        journaled: Option<JobJournal>,
    ) {
        if let Ok(Some(len)) = trace::remote_length(&*self.api, &job).await {
            let cfg = self.trace_config(runner, plan::Masks::new(&entry.payload, runner));
            let (log, handle) = trace::append(job, self.api.clone(), cfg, len);
            log.write_error(
                "ferry was restarted while this job ran, and the job can no longer be planned with the current configuration: it cannot be resumed",
            );
            log.write_error("Job failed (runner_system_failure)");
            handle
                .finish(JobUpdate {
                    state: JobState::Failed,
                    failure_reason: Some(FailureReason::RunnerSystemFailure.as_str().into()),
                    exit_code: None,
                    checksum: None,
                    bytesize: None,
                })
                .await;
        }
        if let Some(j) = &journaled {
            j.remove().await;
        }
    }
}

/// The claim on the project dir of a journaled job, taken at start before the builds dir
/// eviction's first pass, so that it spares the dir while GitLab cannot be reached
/// (docs/crash-safety.md); none if the payload no longer plans.
pub fn claim_resumed(
    workspaces: &super::cleanup::Workspaces,
    entry: &Entry,
    runner: &RunnerSection,
    ctx: &JobContext,
) -> Option<super::cleanup::Workspace> {
    let compiled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        plan::compile(&entry.payload, runner, ctx)
    }));
    match compiled {
        Ok(Ok(plan)) => workspaces.try_claim(&plan.host_project_dir),
        _ => None,
    }
}

/// The first pause before GitLab is asked again about a resumed job; it doubles up to
/// [`MAX_UNHEALTHY_PARK`](crate::daemon::MAX_UNHEALTHY_PARK), each one jittered as the job
/// requests' (docs/crash-safety.md).
const FIRST_RETRY: Duration = Duration::from_secs(2);

/// Shutdown came before GitLab answered.
struct Stopped;

/// `call`'s answer, asked again after each failure (an unreachable or failing GitLab) with a
/// jittered back-off, until it answers or `shutdown` fires. The job's timeout keeps counting
/// meanwhile: the verdict that follows sees the time it is.
async fn until_answered<T, E: std::fmt::Display, F>(
    what: &str,
    shutdown: &CancellationToken,
    mut call: impl FnMut() -> F,
) -> Result<T, Stopped>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = FIRST_RETRY;
    loop {
        let e = tokio::select! {
            answer = call() => match answer {
                Ok(v) => return Ok(v),
                Err(e) => e,
            },
            _ = shutdown.cancelled() => return Err(Stopped),
        };
        let wait = crate::daemon::jittered(pause);
        warn!(error = %e, retry_in = ?wait, "{what}: asking again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Err(Stopped),
        }
        pause = (pause * 2).min(crate::daemon::MAX_UNHEALTHY_PARK);
    }
}

/// What can be done for a journaled job, `now`.
fn verdict<E: Engine>(
    entry: &Entry,
    plan: Option<&Plan>,
    env: Option<&ferry_executor::JobEnv>,
    engine: &E,
    now: SystemTime,
) -> Verdict {
    const AWAY: &str = "ferry was restarted while this job ran";
    // The final update goes out as decided, whatever the time.
    if let Stage::Final { failure, exit_code } = &entry.stage {
        return final_verdict(failure.as_deref(), *exit_code);
    }
    if now >= entry.deadline() {
        return Verdict::End(
            FailureReason::JobExecutionTimeout,
            format!("{AWAY}, and the job's timeout passed before it was back"),
        );
    }
    let Some(plan) = plan else {
        return Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!("{AWAY}, and the job can no longer be planned"),
        );
    };
    let env = match (&plan.execution, env) {
        (Execution::Deploy { commands, .. }, _) => return deploy_verdict(entry, commands.len()),
        (_, Some(env)) => env,
        (_, None) => {
            return Verdict::End(
                FailureReason::RunnerSystemFailure,
                format!("{AWAY}, and the job's containers are unknown"),
            );
        }
    };
    match &entry.stage {
        Stage::Step {
            index,
            started_ms,
            trace: Some(checkpoint),
            clean: true,
            ..
        } if engine.keeps_step_output(env) => Verdict::Follow {
            index: *index,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(*started_ms),
            checkpoint: checkpoint.clone(),
        },
        Stage::Step { .. } if !engine.keeps_step_output(env) => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!(
                "{AWAY}; its steps' output is not kept where a new ferry can read it (a remote Docker daemon), so it cannot be resumed"
            ),
        ),
        Stage::Step { .. } => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!(
                "{AWAY}, in a step that cannot be resumed (after a failure, or with output held back by masking)"
            ),
        ),
        Stage::Prepare => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!(
                "{AWAY}, while it was being prepared (sources, cache, dependencies, containers): that stage is not resumed"
            ),
        ),
        Stage::AfterSteps {
            trace: Some(checkpoint),
            failure,
            exit_code,
            caches_done,
            artifacts_done,
        } if engine.keeps_step_output(env) => match project_dir_left(plan) {
            Ok(()) => Verdict::After {
                checkpoint: checkpoint.clone(),
                failure: failure.as_deref().map(|r| {
                    (
                        FailureReason::parse(r).unwrap_or(FailureReason::RunnerSystemFailure),
                        *exit_code,
                    )
                }),
                done: AfterDone {
                    caches: *caches_done,
                    artifacts: *artifacts_done,
                },
            },
            Err(why) => Verdict::End(
                FailureReason::RunnerSystemFailure,
                format!(
                    "{AWAY}, while it saved its cache or artifacts, and {why}: they cannot be saved"
                ),
            ),
        },
        Stage::AfterSteps { .. } => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!(
                "{AWAY}, while it saved its cache or artifacts: that stage is not resumed here (a remote Docker daemon, CI_DEBUG_SERVICES, or a log that could not be continued)"
            ),
        ),
        Stage::Deploy { .. } => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!("{AWAY}, in a deploy, and the job no longer plans as a deploy job"),
        ),
        Stage::Final { failure, exit_code } => final_verdict(failure.as_deref(), *exit_code),
    }
}

/// What can be done for a journaled deploy job (`image: ferry:deploy`) of `commands` deploy
/// lines (docs/crash-safety.md).
fn deploy_verdict(entry: &Entry, commands: usize) -> Verdict {
    const AWAY: &str = "ferry was restarted while this job ran";
    match &entry.stage {
        Stage::Deploy {
            phase: DeployPhase::Failed,
            ..
        } => Verdict::End(
            FailureReason::ScriptFailure,
            format!(
                "{AWAY}, after its rollout had failed, during the diagnosis and rollback: applying the manifests again would undo the rollback, so the deploy is not resumed; check the workloads in the cluster"
            ),
        ),
        Stage::Deploy {
            index,
            started_ms,
            trace,
            phase,
        } if *index < commands => {
            let (waiting_since_ms, changed) = match phase {
                DeployPhase::Waiting { since_ms, changed } => (Some(*since_ms), changed.clone()),
                _ => (None, Vec::new()),
            };
            Verdict::Deploy {
                index: *index,
                checkpoint: trace.clone(),
                resumed: ResumedDeploy {
                    started_ms: *started_ms,
                    waiting_since_ms,
                    changed,
                    header: false,
                },
            }
        }
        Stage::Prepare => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!(
                "{AWAY}, while it was being prepared (sources, dependencies): that stage is not resumed"
            ),
        ),
        _ => Verdict::End(
            FailureReason::RunnerSystemFailure,
            format!("{AWAY}, in a stage this deploy job does not have: it cannot be resumed"),
        ),
    }
}

/// Whether the job's project dir, whose files cache and artifacts are made of, is still there
/// (a directory, not a link: docs/security.md); else why not.
fn project_dir_left(plan: &Plan) -> Result<(), String> {
    let dir = &plan.host_project_dir;
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "its project dir {} is no longer a directory",
            dir.display()
        )),
        Err(e) => Err(format!("its project dir {} is gone ({e})", dir.display())),
    }
}

/// The outcome the earlier ferry was sending (an unknown reason: a system failure).
fn final_verdict(failure: Option<&str>, exit_code: Option<i32>) -> Verdict {
    Verdict::Final(match failure {
        None => Outcome::Success,
        Some(r) => Outcome::Failed {
            reason: FailureReason::parse(r).unwrap_or(FailureReason::RunnerSystemFailure),
            exit_code,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::payload::JobPayload;

    fn entry(stage: Stage) -> Entry {
        let payload: JobPayload =
            serde_json::from_value(serde_json::json!({"id": 5, "token": "glcbt-x"})).unwrap();
        Entry {
            version: crate::journal::VERSION,
            runner: "t1_abcd".into(),
            url: "https://gitlab.example.com".into(),
            runner_label: Some("t1_abcd".into()),
            job_id: 5,
            project_id: 7,
            payload,
            concurrent_id: 0,
            concurrent_project_id: 0,
            started_ms: 1,
            deadline_ms: u64::MAX,
            stage,
            docker: false,
        }
    }

    fn deploy(index: usize, phase: DeployPhase) -> Stage {
        Stage::Deploy {
            index,
            started_ms: 1_000,
            trace: None,
            phase,
        }
    }

    #[test]
    fn a_deploy_applying_or_waiting_is_resumed_from_where_it_was() {
        let Verdict::Deploy { index, resumed, .. } =
            deploy_verdict(&entry(deploy(1, DeployPhase::Applying)), 2)
        else {
            panic!("not resumed");
        };
        assert_eq!(index, 1);
        assert_eq!(resumed.started_ms, 1_000);
        assert_eq!(resumed.waiting_since_ms, None);
        let waiting = DeployPhase::Waiting {
            since_ms: 2_000,
            changed: vec!["deployment.apps/web".into()],
        };
        let Verdict::Deploy { resumed, .. } = deploy_verdict(&entry(deploy(0, waiting)), 1) else {
            panic!("not resumed");
        };
        assert_eq!(resumed.waiting_since_ms, Some(2_000));
        assert_eq!(resumed.changed, vec!["deployment.apps/web".to_string()]);
    }

    #[test]
    fn a_deploy_that_cannot_be_resumed_ends_with_the_reason() {
        let end = |stage, commands| match deploy_verdict(&entry(stage), commands) {
            Verdict::End(reason, line) => (reason, line),
            _ => panic!("resumed"),
        };
        // After a failed rollout: applying again would undo the rollback.
        let (reason, line) = end(deploy(0, DeployPhase::Failed), 1);
        assert_eq!(reason, FailureReason::ScriptFailure);
        assert!(line.contains("rollback"), "{line}");
        // A line the plan no longer has (the journal is not trusted).
        let (reason, _) = end(deploy(3, DeployPhase::Applying), 1);
        assert_eq!(reason, FailureReason::RunnerSystemFailure);
        let (_, line) = end(Stage::Prepare, 1);
        assert!(line.contains("prepared"), "{line}");
        let (_, line) = end(
            Stage::AfterSteps {
                trace: None,
                failure: None,
                exit_code: None,
                caches_done: 0,
                artifacts_done: 0,
            },
            1,
        );
        assert!(line.contains("cannot be resumed"), "{line}");
    }

    #[tokio::test(start_paused = true)]
    async fn gitlab_is_asked_again_with_a_growing_jittered_pause_until_it_answers() {
        let calls = std::sync::Mutex::new(Vec::new());
        let start = Instant::now();
        let never = CancellationToken::new();
        let answer = until_answered("asking", &never, || {
            calls.lock().unwrap().push(Instant::now() - start);
            let n = calls.lock().unwrap().len();
            async move { if n < 8 { Err("502") } else { Ok(n) } }
        })
        .await;
        assert!(matches!(answer, Ok(8)));
        let calls = calls.into_inner().unwrap();
        let pauses: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        // 2 s doubling up to 30 s, each shortened by up to a half.
        let full = [2, 4, 8, 16, 30, 30, 30];
        for (pause, full) in pauses.iter().zip(full) {
            let full = Duration::from_secs(full);
            assert!(*pause <= full && *pause >= full / 2, "{pauses:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_stops_asking() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            s.cancel();
        });
        let start = Instant::now();
        let answer: Result<(), Stopped> =
            until_answered("asking", &stop, || async { Err::<(), _>("unreachable") }).await;
        assert!(answer.is_err());
        assert!(Instant::now() - start < Duration::from_secs(101));
    }
}
