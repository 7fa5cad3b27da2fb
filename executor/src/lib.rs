//! ferry-executor: the container side of a job.
//!
//! The runner compiles a GitLab job into a [`JobEnv`] (what the job's containers look like) and a
//! list of [`StepSpec`]s (what to run in them), then drives an [`Engine`]. This crate knows nothing
//! about GitLab: no payload types, no HTTP client. Job output leaves through a [`LogSink`], a plain
//! `AsyncWrite`, so the executor never knows where the bytes go.

pub mod artifacts;
pub mod cache;
pub mod compression;
pub mod disk;
pub mod docker;
pub mod engine;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod hostio;
pub mod jobfs;
pub mod meter;
pub mod sources;

pub use docker::DockerEngine;
pub use engine::{
    Engine, EngineError, EnvVar, HOOK_GIT_CONFIG_LIMIT, HookOutcome, ImageSpec, JobEnv, LogFull,
    LogSink, PullPolicy, RegistryAuth, ServiceSpec, StepOutcome, StepSpec, deadline_after,
};
