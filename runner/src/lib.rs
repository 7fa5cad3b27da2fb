//! ferry-runner: the GitLab side of ferry (API client, job payload, plan compiler, job driver,
//! trace pipeline, polling daemon) and the `ferry` CLI.
pub mod api;
pub mod trace;
