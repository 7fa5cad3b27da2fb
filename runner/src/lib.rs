//! ferry-runner: the GitLab side of ferry (API client, job payload, plan compiler, job driver,
//! trace pipeline, polling daemon) and the `ferry` CLI.

pub mod api;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod disk;
pub mod driver;
pub mod exec;
pub mod failure;
pub mod gitlab;
pub mod health;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod trace;
pub mod variables;

/// The source revision ferry was built from (FERRY_REVISION at build time), or "unknown".
pub const REVISION: &str = match option_env!("FERRY_REVISION") {
    Some(r) => r,
    None => "unknown",
};
