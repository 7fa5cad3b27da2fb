//! The job's project dir, claimed for one job at a time, and the `cleanup` stage that frees it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_executor::{Engine, EngineError, JobEnv};
use tokio::sync::OwnedMutexGuard;
use tracing::{Instrument, warn};

use super::signals::{Signals, Stage, cancellable};
use super::state::StageError;
use crate::trace::TraceWriter;

/// Attempts at removing a finished job's containers (2 s, 4 s, 8 s apart).
pub(super) const CLEANUP_ATTEMPTS: u32 = 4;
/// Deadline of the cleanup stage (containers, network, volumes).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);

/// One job at a time per project dir on the host, its containers included: a job's host work
/// on its sources (git, cache, dependencies) runs before its own containers start and after
/// the previous job's containers were removed, so no container can change the project dir
/// while git works in it (docs/security.md). Jobs of one project on one slot run one after the
/// other anyway; this only waits for the previous job's background cleanup.
///
/// A job whose containers could not be removed (every attempt of its cleanup failed) leaves
/// its environment in the claim: the dir stays claimed by those containers. The next job of
/// the dir first tries once more to remove them; if that fails too, it fails with
/// `runner_system_failure` without touching the dir, and the next one tries again
/// (docs/docker-executor.md, "Cleanup").
#[derive(Clone, Default)]
pub struct Workspaces(Arc<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<Leftover>>>>>);

/// The environment of a previous job whose containers may still use the project dir.
type Leftover = Option<JobEnv>;

/// The claim on a project dir: dropped when the job's containers are gone, or, if they could
/// not be removed, dropped holding their environment (see [`Workspaces`]).
pub type Workspace = OwnedMutexGuard<Leftover>;

impl Workspaces {
    fn get(&self, dir: &Path) -> Arc<tokio::sync::Mutex<Leftover>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(dir.to_path_buf()).or_default().clone()
    }

    /// The claim on `dir` if no job (nor its containers) holds it; held while eviction removes
    /// the directory, so a job that wants it waits and then starts afresh. None too while
    /// containers that could not be removed may still use it.
    pub fn try_claim(&self, dir: &Path) -> Option<Workspace> {
        self.get(dir)
            .try_lock_owned()
            .ok()
            .filter(|guard| guard.is_none())
    }

    /// Waits until no other job (nor its containers) uses the project dir `dir`; removes the
    /// containers of a previous job whose cleanup failed, or fails if they are still there.
    pub(super) async fn claim<E: Engine>(
        &self,
        engine: &E,
        dir: &Path,
        log: &TraceWriter,
        signals: &mut Signals,
    ) -> Stage<Result<Workspace, StageError>> {
        let lock = self.get(dir);
        let guard = match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                log.write_line(
                    "Waiting for the containers of the previous job of this project to be removed...",
                );
                let claimed = signals
                    .run(false, |limits| async move {
                        cancellable(lock.lock_owned(), &limits.cancel).await
                    })
                    .await;
                match claimed {
                    Stage::Done(Some(guard)) => guard,
                    Stage::Stopped(stop) => return Stage::Stopped(stop),
                    // `run` cancels only on a stop signal, and then reports the stop.
                    Stage::Done(None) => {
                        unreachable!("the claim was cancelled without a stop signal")
                    }
                }
            }
        };
        let Some(previous) = guard.as_ref().map(|env| env.job_id) else {
            return Stage::Done(Ok(guard));
        };
        log.write_line(&format!(
            "Removing the containers of the previous job {previous} of this project, left after its cleanup failed..."
        ));
        // Stopped or failed: the guard is dropped still holding the leftover environment.
        let removed = signals
            .run(false, |limits| {
                let guard = guard;
                async move {
                    let env = guard.as_ref().expect("checked above");
                    let attempt = tokio::time::timeout(CLEANUP_TIMEOUT, engine.destroy(env));
                    let result = match cancellable(attempt, &limits.cancel).await? {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(EngineError::Docker(format!(
                            "timed out after {}s",
                            CLEANUP_TIMEOUT.as_secs()
                        ))),
                    };
                    Some(result.map(|()| guard))
                }
            })
            .await;
        match removed {
            Stage::Done(Some(Ok(mut guard))) => {
                *guard = None;
                Stage::Done(Ok(guard))
            }
            Stage::Done(Some(Err(source))) => Stage::Done(Err(StageError::Leftover {
                job: previous,
                source,
            })),
            Stage::Stopped(stop) => Stage::Stopped(stop),
            Stage::Done(None) => unreachable!("the removal was cancelled without a stop signal"),
        }
    }
}

/// Removes the job's containers, network and volumes; false if they may still be there. Docker
/// may be restarting: try again a few times; what is still left then is removed by the next
/// job of the project dir (see [`Workspaces`]) or by the janitor at ferry's next start
/// (everything is labelled).
async fn remove<E: Engine>(engine: &E, env: &JobEnv) -> bool {
    let mut delay = Duration::from_secs(2);
    for attempt in 1..=CLEANUP_ATTEMPTS {
        match tokio::time::timeout(CLEANUP_TIMEOUT, engine.destroy(env)).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => warn!(attempt, error = %e, "cleanup failed"),
            Err(_) => warn!(attempt, "cleanup timed out"),
        }
        if attempt < CLEANUP_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    false
}

/// Where the `cleanup` stage's time goes: `gitlab_runner_job_stage_duration_seconds` with
/// `stage="cleanup"` (it runs after the final update, so the job's timing line cannot hold it).
pub(super) struct Timed {
    pub metrics: crate::metrics::Metrics,
    pub labels: crate::metrics::RunnerLabels,
}

impl Timed {
    fn observe(&self, took: Duration) {
        self.metrics.stage_finished(&self.labels, "cleanup", took);
    }
}

/// The `cleanup` stage: removes the job's containers, network and volumes after its final
/// update, in the background (tracked by `cleanups`, which `ferry run` waits for before it
/// exits): the job's result does not depend on it, GitLab can start the next stage ~0.4 s
/// sooner, and the slot is free for the next job while Docker removes an idle container. It
/// runs on every path, on its own deadline, not cancellable by the job's signals. The project
/// dir is free for the next job once the containers are gone; if they could not be removed, the
/// claim keeps their environment for the next job (see [`Workspaces`]).
pub(super) fn cleanup<E: Engine>(
    engine: Arc<E>,
    env: JobEnv,
    workspace: Option<Workspace>,
    cleanups: &tokio_util::task::TaskTracker,
    timed: Timed,
) {
    let task = async move {
        let started = tokio::time::Instant::now();
        let removed = remove(&*engine, &env).await;
        timed.observe(started.elapsed());
        if let Some(mut workspace) = workspace
            && !removed
        {
            warn!(
                job = env.job_id,
                "containers left after every cleanup attempt: the next job of this project dir removes them first"
            );
            *workspace = Some(env);
        }
    };
    cleanups.spawn(task.in_current_span());
}
