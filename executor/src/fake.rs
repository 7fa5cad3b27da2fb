//! A behavioural fake engine for the runner's tests.
//!
//! It interprets a tiny language in step commands, so tests read like job definitions:
//! `echo TEXT` prints TEXT, `exit N` ends the step with code N, `sleep SECS` waits (cancellable),
//! `oom` ends as an OOM kill, `fail-docker` returns a Docker error, `panic TEXT` panics (as a
//! bug would, for the driver's panic handling), `lost` prints a line and ends as a lost
//! connection to Docker does. An image named `missing:*` fails `prepare` with an image pull
//! error, `docker-down` with a Docker error, `lost` with a lost connection after a first line,
//! and `hang` waits until it is cancelled. `gone N` ends the step as a build container that
//! was removed does, until the container was created again N times. [`FakeEngine::fail_destroys`]
//! makes the next `destroy` calls fail, as a Docker daemon that is down does. It records calls and panics on an
//! illegal order (`run_step` before `prepare`), so the driver's contract is checked.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::engine::STEP_TIMEOUT_EXIT_CODE;
use crate::engine::{Engine, EngineError, JobEnv, LogSink, StepOutcome, StepSpec};

/// What a lost connection to the Docker daemon looks like.
const LOST: &str = "lost the connection to the Docker daemon (did the daemon stop or restart?)";

/// What the fake was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Prepare(u64),
    /// `recreate_build_container`.
    Recreate(u64),
    SyncIn(u64),
    RunStep(u64, String),
    SyncOut(u64),
    Destroy(u64),
}

#[derive(Debug, Default)]
pub struct FakeEngine {
    calls: Mutex<Vec<Call>>,
    steps: Mutex<Vec<StepSpec>>,
    /// How many times the build container was created again.
    recreated: Mutex<u32>,
    /// How many of the next `destroy` calls fail.
    failing_destroys: Mutex<u32>,
}

impl FakeEngine {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The steps run, as the engine received them (their `env` included).
    pub fn steps(&self) -> Vec<StepSpec> {
        self.steps.lock().unwrap().clone()
    }

    /// The next `n` calls of `destroy` fail with a Docker error (the containers stay).
    pub fn fail_destroys(&self, n: u32) {
        *self.failing_destroys.lock().unwrap() = n;
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Engine for FakeEngine {
    async fn prepare(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        self.record(Call::Prepare(env.job_id));
        if env.image.name.starts_with("missing:") || env.image.name == "missing" {
            return Err(EngineError::ImagePull {
                image: env.image.name.clone(),
                message: "manifest unknown".into(),
            });
        }
        let _ = log
            .write_all(format!("Using fake engine with image {}\n", env.image.name).as_bytes())
            .await;
        match env.image.name.as_str() {
            "docker-down" => Err(EngineError::Docker("connection refused".into())),
            "lost" => Err(EngineError::Docker(LOST.into())),
            "hang" => {
                cancel.cancelled().await;
                Err(EngineError::Cancelled)
            }
            _ => Ok(()),
        }
    }

    async fn run_step(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, EngineError> {
        assert!(
            self.calls().contains(&Call::Prepare(env.job_id)),
            "run_step before prepare"
        );
        self.record(Call::RunStep(env.job_id, step.name.clone()));
        self.steps.lock().unwrap().push(step.clone());
        let recreated = *self.recreated.lock().unwrap();
        // The step's own timeout is the engine's to enforce (see `Engine::run_step`).
        let Some(limit) = step.timeout else {
            return run_commands(step, log, cancel, recreated).await;
        };
        match tokio::time::timeout(limit, run_commands(step, log, cancel, recreated)).await {
            Ok(result) => result,
            Err(_) => {
                let line = format!(
                    "\n{}",
                    ferry_config::joblog::error_line(&format!(
                        "Step {} timed out after {limit:?}",
                        step.name
                    ))
                );
                let _ = log.write_all(line.as_bytes()).await;
                Ok(StepOutcome {
                    exit_code: STEP_TIMEOUT_EXIT_CODE,
                    oom_killed: false,
                    timed_out: true,
                })
            }
        }
    }

    async fn sync_in(&self, env: &JobEnv) -> Result<(), EngineError> {
        assert!(
            self.calls().contains(&Call::Prepare(env.job_id)),
            "sync_in before prepare"
        );
        self.record(Call::SyncIn(env.job_id));
        Ok(())
    }

    async fn sync_out(&self, env: &JobEnv) -> Result<(), EngineError> {
        assert!(
            self.calls().contains(&Call::SyncIn(env.job_id)),
            "sync_out without sync_in"
        );
        self.record(Call::SyncOut(env.job_id));
        Ok(())
    }

    async fn recreate_build_container(
        &self,
        env: &JobEnv,
        _log: &mut LogSink<'_>,
        _cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        self.record(Call::Recreate(env.job_id));
        *self.recreated.lock().unwrap() += 1;
        Ok(())
    }

    async fn destroy(&self, env: &JobEnv) -> Result<(), EngineError> {
        self.record(Call::Destroy(env.job_id));
        let mut failing = self.failing_destroys.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return Err(EngineError::Docker("connection refused".into()));
        }
        Ok(())
    }
}

/// Interprets the step's commands (see the module's doc).
async fn run_commands(
    step: &StepSpec,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
    recreated: u32,
) -> Result<StepOutcome, EngineError> {
    for cmd in &step.commands {
        let line = ferry_config::joblog::command_line(cmd);
        let _ = log.write_all(line.as_bytes()).await;
        let (word, rest) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
        match word {
            "echo" => {
                let _ = log.write_all(format!("{rest}\n").as_bytes()).await;
            }
            "exit" => {
                let code = rest.trim().parse().unwrap_or(1);
                if code != 0 {
                    return Ok(StepOutcome {
                        exit_code: code,
                        oom_killed: false,
                        timed_out: false,
                    });
                }
            }
            "sleep" => {
                let secs: f64 = rest.trim().parse().unwrap_or(1.0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)) => {}
                    _ = cancel.cancelled() => return Err(EngineError::Cancelled),
                }
            }
            "oom" => {
                return Ok(StepOutcome {
                    exit_code: 137,
                    oom_killed: true,
                    timed_out: false,
                });
            }
            "fail-docker" => return Err(EngineError::Docker("connection refused".into())),
            "gone" if recreated < rest.trim().parse().unwrap_or(u32::MAX) => {
                return Err(EngineError::ContainerGone("fake-build".into()));
            }
            "lost" => {
                let _ = log.write_all(b"partial output\n").await;
                return Err(EngineError::Docker(LOST.into()));
            }
            "panic" => panic!("{rest}"),
            _ => {}
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
    }
    let _ = log.flush().await;
    Ok(StepOutcome {
        exit_code: 0,
        oom_killed: false,
        timed_out: false,
    })
}
