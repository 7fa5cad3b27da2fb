//! ferry-deploy: the built-in Kubernetes deploy step (`image: ferry:deploy` jobs and
//! `ferry deploy` on a workstation). See docs/deploy.md.
//!
//! This crate knows nothing about GitLab or Docker. The runner hands it a [`DeployRequest`]
//! (the checked-out sources on the host, the job's variables, the runner's deploy targets and the
//! `ferry deploy` arguments); progress goes to a [`LogSink`].

pub mod apply;
pub mod args;
pub mod cluster;
mod deployer;
#[cfg(feature = "fake")]
pub mod fake;
pub mod files;
pub mod health;
mod object;
pub mod render;
pub mod rollback;
pub mod summary;
pub mod target;
pub mod wait;
pub mod yaml;

pub use args::{DeployArgs, parse_script_line};
pub use deployer::KubeDeployer;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use ferry_config::{DeploySection, DeployTarget};

/// Where the deploy step's output goes (the job log, or stdout for `ferry deploy`).
pub type LogSink<'a> = dyn tokio::io::AsyncWrite + Send + Unpin + 'a;

/// One `ferry deploy [ARGS]` invocation.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The arguments after `ferry deploy`, already split (no shell).
    pub args: Vec<String>,
    /// The project directory on the host (relative manifest paths start here).
    pub project_dir: PathBuf,
    /// The job's variables (FERRY_*, CI_ENVIRONMENT_NAME, template values, ...), in order.
    pub variables: Vec<(String, String)>,
    /// The targets of the runner that took the job (empty for a workstation run, whose target
    /// is built from `--kubeconfig`/`--context`).
    pub targets: Vec<DeployTarget>,
    /// Time left before the GitLab job timeout; caps FERRY_TIMEOUT and the reading of the
    /// manifests.
    pub remaining: Option<Duration>,
    /// Who asked for this deploy: a deploy job (the runner) or a person (`ferry deploy`). Only
    /// a workstation run may name a kubeconfig or context, or read files outside the project.
    pub origin: Origin,
    /// This deploy was started by an earlier ferry that went away (docs/crash-safety.md): it is
    /// applied again (server-side apply is idempotent) and its wait continues.
    pub resumed: Option<Resumed>,
    /// Where the deploy reports each change of its phase (the runner journals it, so that a
    /// later ferry can resume the deploy: docs/crash-safety.md).
    pub progress: Option<Progress>,
}

/// Receives the phases of a deploy as they begin, each with a sender the receiver answers
/// (or drops) once the phase is recorded: the deploy goes on only then, so that a restart
/// never finds a phase older than what the cluster was told (docs/crash-safety.md).
pub type Progress = tokio::sync::mpsc::UnboundedSender<(Phase, tokio::sync::oneshot::Sender<()>)>;

/// A phase of a deploy, as a later ferry needs to know it (docs/crash-safety.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Every object is applied; the wait for the workloads begins. `changed`: the objects
    /// this deploy created or configured (their namespaces and names, `Planned::key`), which a failed rollout
    /// rolls back.
    Waiting { changed: Vec<String> },
    /// A rollout failed: diagnosis and rollback run. Applying the manifests again would undo
    /// the rollback, so such a deploy is not resumed.
    Failed,
}

/// What an earlier ferry's run of the same deploy left (docs/crash-safety.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Time since the deploy first started (progress lines count from then).
    pub elapsed: Duration,
    /// Time since its wait for the workloads began, if it had: the wait continues with what
    /// is left of its timeout.
    pub waited: Option<Duration>,
    /// The objects it created or configured: applied again they are `unchanged`, but a
    /// failed rollout still rolls them back.
    pub changed: Vec<String>,
}

/// Who asked for a deploy. See docs/deploy.md ("Who decides what").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `ferry deploy` run by a person: their own kubeconfig, no target policy, manifests may
    /// be anywhere.
    Workstation,
    /// A deploy job: only the runner's targets, manifests only inside the project directory,
    /// and the policy facts the runner took from GitLab's payload.
    Job(JobFacts),
}

/// What GitLab asserts about a job, as the runner read it from the job payload (never from
/// variables the job can set). The target policy is decided on these only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobFacts {
    /// Whether GitLab says the job's ref is protected; `None`: GitLab did not say, which the
    /// policy treats as not protected.
    pub ref_protected: Option<bool>,
    /// The job's ref (`git_info.ref`), for messages.
    pub ref_name: String,
    /// The job's environment as GitLab set it.
    pub environment: JobEnvironment,
}

/// The environment of a deploy job, as GitLab set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEnvironment {
    /// The job has no `environment:` (no target with `environments` matches it).
    #[default]
    None,
    /// `environment: name` of the job.
    Named(String),
    /// The payload defines CI_ENVIRONMENT_NAME more than once with different values: the job's
    /// `variables:` redefine it. Every deploy to a target is refused.
    Conflicting(Vec<String>),
}

/// What a successful deploy did.
#[derive(Debug, Clone, Default)]
pub struct DeployReport {
    pub applied: usize,
    /// `(object, created|configured|unchanged)` in apply order (empty for dry runs).
    pub objects: Vec<(String, String)>,
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The user's input is wrong (manifests, templates, arguments, target policy).
    #[error("{0}")]
    Input(String),
    /// The rollout failed or timed out (the job's own failure, like a failing script).
    #[error("{0}")]
    Rollout(String),
    /// The cluster could not be reached or refused the credentials.
    #[error("{0}")]
    Cluster(String),
    /// The runner's deploy configuration is missing or wrong (no target, bad kubeconfig).
    #[error("{0}")]
    Configuration(String),
    #[error("cancelled")]
    Cancelled,
}

/// Applies manifests and waits for the rollout.
pub trait Deployer: Send + Sync + 'static {
    fn deploy(
        &self,
        req: &DeployRequest,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<DeployReport, DeployError>> + Send;
}
