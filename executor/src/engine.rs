//! The `Engine` seam: its contract and the types that cross it.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Where a job's output goes. The runner's trace writer implements this.
pub type LogSink<'a> = dyn tokio::io::AsyncWrite + Send + Unpin + 'a;

/// Set by the owner of a step's log once that log takes no more output (the job log reached
/// its `output_limit`, docs/job-log.md): the engine then reads no more of a kept step's output
/// file (docs/crash-safety.md), though it still waits for the step's end and exit code.
/// Clones share the flag; unset by default.
#[derive(Debug, Clone, Default)]
pub struct LogFull(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl LogFull {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A signal about the log, not part of what a step is: any two are equal.
impl PartialEq for LogFull {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LogFull {}

/// One environment variable as the job's processes see it (already expanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// `pull_policy` as gitlab-runner defines it (one type for config.toml, the plan and the engine).
pub use ferry_config::PullPolicy;

/// The job's `image:` (or the runner's default image), resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    pub name: String,
    /// `image:entrypoint`; empty = the image's own entrypoint.
    pub entrypoint: Vec<String>,
    /// Policies to try in order (the job's within `allowed_pull_policies`, else the runner's).
    pub pull_policy: Vec<PullPolicy>,
    /// `image:docker:user` (expanded), if set. Never the runner's `user`: the engine applies
    /// that one (it takes precedence for the build container, as in gitlab-runner).
    pub user: Option<String>,
    /// `image:docker:platform`, if set.
    pub platform: Option<String>,
    /// The job named no image: this is the runner's default (`[runners.docker] image`).
    /// gitlab-runner matches `allowed_privileged_images` against the job's image name, which is
    /// empty then (see `docker::convert::privileged_allowed`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub runner_default: bool,
}

/// One `services:` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub image: ImageSpec,
    /// Every alias the service must be reachable by (explicit ones plus the names
    /// gitlab-runner derives from the image name).
    pub aliases: Vec<String>,
    pub command: Vec<String>,
    pub variables: Vec<EnvVar>,
}

/// Credentials for a registry (from the payload, DOCKER_AUTH_CONFIG or the runner's docker config).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct RegistryAuth {
    pub registry: String,
    pub username: String,
    #[serde(skip_serializing)]
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"[MASKED]")
            .finish()
    }
}

/// Everything the engine needs to know about one job's containers.
///
/// Runner-wide settings (`[runners.docker]`) are given to the engine's constructor, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobEnv {
    pub job_id: u64,
    pub project_id: u64,
    /// Short token (first 8 characters) of the runner, used in labels and names.
    pub runner_short_token: String,
    pub image: ImageSpec,
    pub services: Vec<ServiceSpec>,
    /// Job variables (runner environment merged in), as the build container's environment.
    pub variables: Vec<EnvVar>,
    /// What service containers get of the job's variables: only the public ones (and the
    /// runner's own), as in gitlab-runner; never masked or other non-public values.
    pub service_variables: Vec<EnvVar>,
    /// CI_BUILDS_DIR inside the container.
    pub builds_dir: String,
    /// CI_PROJECT_DIR inside the container (the working directory of every step).
    pub project_dir: String,
    /// The host directory mounted at `project_dir` (sources checked out by the runner,
    /// restored cache, artifacts of dependencies), and nothing above it: a job cannot rename
    /// or replace it, and never sees another project's files (docs/security.md).
    pub host_project_dir: PathBuf,
    /// `<project_dir>.tmp` inside the container: the file variables.
    pub tmp_dir: String,
    /// The host directory mounted read-only at `tmp_dir`, written before the container starts.
    pub host_tmp_dir: PathBuf,
    /// A directory of ferry's on the host, mounted writable at `<project_dir>.steps` in the
    /// build container only, where each step of the build container writes its output
    /// (`<step>.log`) and exit code (`<step>.exit`), so that both survive ferry
    /// (docs/crash-safety.md). `None`: steps stream their output to ferry only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_steps_dir: Option<PathBuf>,
    pub registry_auth: Vec<RegistryAuth>,
    /// `[runners.docker] container_labels`, values expanded with the job's variables.
    pub container_labels: std::collections::BTreeMap<String, String>,
    /// The first `runner_services` of `services` come from `[[runners.docker.services]]`: the
    /// runner's own, so `allowed_services` does not apply to them (as in gitlab-runner).
    pub runner_services: usize,
}

/// One step to run in the build container (`step_script` or `after_script`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepSpec {
    /// GitLab's step name: `script`, `after_script`, ...
    pub name: String,
    /// Commands in order; the engine echoes each one (`$ cmd`) and stops at the first failure,
    /// as gitlab-runner's bash/sh shells do.
    pub commands: Vec<String>,
    /// Extra variables for this step only (e.g. CI_JOB_STATUS for after_script).
    pub env: Vec<EnvVar>,
    /// The step's own deadline (after_script: 5 min by default), enforced by the engine (see
    /// [`Engine::run_step`]); the job timeout is the driver's.
    pub timeout: Option<Duration>,
    /// `CI_DEBUG_TRACE`: the shell prints each command as it runs it (`set -o xtrace`), values
    /// expanded; the job log masks them like any output.
    pub xtrace: bool,
    /// `FF_SCRIPT_SECTIONS`: the section id of each command (`script_step_0`, ...; empty when
    /// the flag is off). A multi-line command is then shown in full in a collapsed section
    /// `section_<id>` of its own instead of by its first line, as gitlab-runner's shells do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script_sections: Vec<String>,
    /// Set once the step's log takes no more output (see [`LogFull`]).
    #[serde(skip)]
    pub log_full: LogFull,
}

/// The exit code a step reports when it ran past `StepSpec::timeout` (as GNU `timeout` does).
pub const STEP_TIMEOUT_EXIT_CODE: i32 = 124;

/// The result of a step that ran. A non-zero exit code is a normal outcome, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    pub exit_code: i32,
    pub oom_killed: bool,
    /// The step ran past its own timeout (`StepSpec::timeout`): the engine stopped it and
    /// said so in the log; `exit_code` is [`STEP_TIMEOUT_EXIT_CODE`].
    pub timed_out: bool,
}

/// What a get_sources hook left: how its script ended and, when asked for, what
/// `git config --global --no-includes --list -z` printed in its container afterwards
/// (untrusted, at most [`HOOK_GIT_CONFIG_LIMIT`] bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub outcome: StepOutcome,
    pub git_config: Vec<u8>,
}

/// The most bytes of a hook's git configuration that are read back.
pub const HOOK_GIT_CONFIG_LIMIT: usize = 256 * 1024;

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image could not be pulled, or is missing under `never`.
    #[error("pulling image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The job's configuration is not allowed or not valid here (image not in allowed_images,
    /// bad volume spec, ...).
    #[error("{0}")]
    Configuration(String),
    /// Docker failed, or could not be reached.
    #[error("docker: {0}")]
    Docker(String),
    /// The step was cancelled (job cancel, timeout or shutdown) before it finished.
    #[error("cancelled")]
    Cancelled,
    /// The build container the step runs in is gone (removed by someone else): the step can be
    /// run again in a new one ([`Engine::recreate_build_container`],
    /// `EXECUTOR_JOB_SECTION_ATTEMPTS`, docs/variables.md).
    #[error("docker: the build container {0:?} was not found or was removed")]
    ContainerGone(String),
}

/// Executes the container side of one job.
///
/// Per job the driver calls, in order: `prepare` once; `sync_in` once; then `run_step` any number
/// of times (one at a time); `sync_out` at most once; then `destroy` exactly once on every path.
/// `destroy` must succeed when `prepare` failed half way, and must be harmless if called twice. Everything an engine creates is
/// labelled with the job id so leftovers of a crash can be found and removed.
pub trait Engine: Send + Sync + 'static {
    /// Pull images, create the network, start services, create the build container.
    fn prepare(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Run one step in the build container. Cancellation stops the step (SIGTERM, then SIGKILL
    /// after a grace period) and returns `Err(EngineError::Cancelled)`.
    ///
    /// The engine owns the step's own timeout (`step.timeout`): when it passes, the engine
    /// writes `ERROR: Step <name> timed out after <t>` to the log, stops the step and returns
    /// exit code [`STEP_TIMEOUT_EXIT_CODE`]. The driver owns the job's deadline and GitLab's
    /// and ferry's stop signals, and tells the engine through `cancel`.
    fn run_step(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<StepOutcome, EngineError>> + Send;

    /// Whether `run_step` keeps the step's output and exit code where they survive ferry
    /// (`JobEnv::host_steps_dir`, a daemon that can bind-mount it), so that a later ferry can
    /// [`Engine::resume_step`] it. Default: no.
    fn keeps_step_output(&self, env: &JobEnv) -> bool {
        let _ = env;
        false
    }

    /// Follows a step that an earlier ferry process started with `run_step` and left running
    /// (or that ended while no ferry watched): copies its kept output from byte `from` of its
    /// output file into `log` as it comes, until the step ended, and returns how it ended, as
    /// `run_step` would have. The step's own timeout counts from `started` (wall clock), and
    /// cancellation stops it as in `run_step`. A build container that is gone is
    /// [`EngineError::ContainerGone`]; kept output that is missing is an error naming it.
    /// Default: not possible (an engine that keeps nothing).
    fn resume_step(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        from: u64,
        started: std::time::SystemTime,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<StepOutcome, EngineError>> + Send {
        let _ = (env, step, from, started, log, cancel);
        async {
            Err(EngineError::Docker(
                "this engine cannot follow a step a previous ferry started".into(),
            ))
        }
    }

    /// Make the host's `host_project_dir` and `host_tmp_dir` appear at `project_dir` and
    /// `tmp_dir` in the build container. Called once, after `prepare` and after the runner
    /// filled the host directory (sources, cache, artifacts of dependencies), before the
    /// first step. An engine whose
    /// containers bind-mount the host directory has nothing to do (the default); one on a remote
    /// daemon copies the tree in.
    fn sync_in(&self, env: &JobEnv) -> impl Future<Output = Result<(), EngineError>> + Send {
        let _ = env;
        async { Ok(()) }
    }

    /// The reverse of `sync_in`: make `host_project_dir` hold what the steps left in the
    /// container's `project_dir`, so the runner can archive cache and artifacts from it. Called
    /// at most once, after the last step, before cache and artifacts are saved (only if
    /// `sync_in` succeeded, and not after GitLab aborted the job or ferry is shutting down).
    /// Default: nothing to do.
    fn sync_out(&self, env: &JobEnv) -> impl Future<Output = Result<(), EngineError>> + Send {
        let _ = env;
        async { Ok(()) }
    }

    /// `CI_DEBUG_SERVICES`: copies the output of the job's service containers, from their
    /// start, into `log` (each line prefixed with the service's aliases, see
    /// [`inline_service_log`]), until `stop` is cancelled or every service has stopped. Called
    /// after a successful `prepare`; an error is a warning in `log`, never the job's failure.
    /// Default: nothing (an engine without services).
    fn stream_service_logs(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        stop: &CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        let _ = (env, log, stop);
        async {}
    }

    /// Runs a get_sources hook (`pre_get_sources_script`, `post_get_sources_script`) in a
    /// short-lived container of the job's image, with the build container's settings (user,
    /// mounts, privileges, limits) but no services, and removes that container before it
    /// returns, on every path: git on the host never works while a container of the job runs
    /// (docs/security.md). With `read_git_config`, after a script that succeeded, the hook's
    /// global git configuration is read back for [`HookOutcome::git_config`].
    /// Default: refused (an engine that cannot run them must not run them on the host).
    fn run_hook(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        read_git_config: bool,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<HookOutcome, EngineError>> + Send {
        let _ = (env, step, read_git_config, log, cancel);
        async {
            Err(EngineError::Configuration(
                "this executor cannot run get_sources hooks".into(),
            ))
        }
    }

    /// Create and start the build container again, as `prepare` made it, after a step found
    /// it gone ([`EngineError::ContainerGone`]); services, network and volumes stay as they
    /// are. Default: not possible.
    fn recreate_build_container(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        let _ = (env, log, cancel);
        async {
            Err(EngineError::Docker(
                "this engine cannot create the build container again".into(),
            ))
        }
    }

    /// Remove every container, network and temporary volume of the job.
    fn destroy(&self, env: &JobEnv) -> impl Future<Output = Result<(), EngineError>> + Send;
}

/// `now + d` without the overflow panic of `Instant + Duration`: a duration from a job payload,
/// a job variable or the config may be anything up to `Duration::MAX`. Capped at 100 years,
/// which is "never" for a job (tokio's timer clamps far deadlines itself).
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = tokio::time::Instant::now();
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_saturate_instead_of_panicking() {
        let now = tokio::time::Instant::now();
        for d in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(1 << 62),
        ] {
            let at = deadline_after(d);
            assert!(
                at > now + Duration::from_secs(50 * 365 * 24 * 3600),
                "{d:?}"
            );
        }
        let at = deadline_after(Duration::from_secs(5));
        assert!(at >= now + Duration::from_secs(5) && at < now + Duration::from_secs(60));
    }
}

/// One chunk of a service container's output as the job log shows it under
/// `CI_DEBUG_SERVICES`, as gitlab-runner's `InlineServiceLogWriter`: each line (the chunk split
/// at its newlines, a last line without one included) becomes
/// `\e[0;37m[service:<aliases joined by ->] <line>\e[0;m\n`.
pub fn inline_service_log(aliases: &str, chunk: &[u8], out: &mut Vec<u8>) {
    use ferry_config::joblog::{GREY, RESET};
    let mut n = 0;
    while n < chunk.len() {
        let end = chunk[n..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(chunk.len() - n);
        out.extend_from_slice(format!("{GREY}[service:{aliases}] ").as_bytes());
        out.extend_from_slice(&chunk[n..n + end]);
        n += end;
        if n < chunk.len() {
            n += 1; // the newline
        }
        out.extend_from_slice(format!("{RESET}\n").as_bytes());
    }
}

#[cfg(test)]
mod inline_service_log_tests {
    use super::inline_service_log;

    fn show(chunk: &str) -> String {
        let mut out = Vec::new();
        inline_service_log("db", chunk.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_line_gets_the_service_prefix_in_grey() {
        let (pre, suf) = ("\x1b[0;37m[service:db] ", "\x1b[0;m\n");
        assert_eq!(show("ready"), format!("{pre}ready{suf}"));
        assert_eq!(show("ready\n"), format!("{pre}ready{suf}"));
        assert_eq!(
            show("\none\ntwo\n\n"),
            format!("{pre}{suf}{pre}one{suf}{pre}two{suf}{pre}{suf}")
        );
        assert_eq!(show(""), "");
    }
}
