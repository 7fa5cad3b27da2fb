//! The job's variables, assembled in gitlab-runner's order (docs/variables.md) and expanded.

use std::time::Duration;

use ferry_config::RunnerSection;

use super::JobContext;
use crate::gitlab::payload::JobPayload;
use crate::variables::{Variable, Variables};

pub(super) struct Inputs<'a> {
    pub payload: &'a JobPayload,
    pub runner: &'a RunnerSection,
    pub ctx: &'a JobContext,
    pub builds_dir: &'a str,
    pub project_dir: &'a str,
    pub timeout: Duration,
}

pub(super) fn job_variables(i: &Inputs<'_>, image_name: &str) -> Variables {
    let mut v = Variables::new().with_file_dir(format!("{}.tmp", i.project_dir));
    // 1. feature flags from config.toml (they also win over job variables, re-added at the end)
    for (k, on) in &i.runner.feature_flags {
        v.set(k, on.to_string());
    }
    // 2-3.
    if !image_name.is_empty() {
        v.set("CI_JOB_IMAGE", image_name);
    }
    v.set("CI_RUNNER_SHORT_TOKEN", i.runner.token.ci_short_token());
    // 4. [[runners]] environment
    for (k, val) in &i.runner.environment {
        v.set(k, val.clone());
    }
    // 5.
    v.set("CI_BUILDS_DIR", i.builds_dir);
    v.set("CI_PROJECT_DIR", i.project_dir);
    v.set("CI_CONCURRENT_ID", i.ctx.concurrent_id.to_string());
    v.set(
        "CI_CONCURRENT_PROJECT_ID",
        i.ctx.concurrent_project_id.to_string(),
    );
    v.set("CI_SERVER", "yes");
    v.set("CI_JOB_STATUS", "running");
    v.set("CI_JOB_TIMEOUT", i.timeout.as_secs().to_string());
    // 6.
    if let Some(pem) = &i.ctx.tls_ca_pem {
        v.push(Variable {
            file: true,
            ..Variable::new("CI_SERVER_TLS_CA_FILE", pem.clone())
        });
    }
    // 7. the payload's variables (feature flags set in config.toml are not overridden)
    for pv in &i.payload.variables {
        if pv.key.starts_with("FF_") && i.runner.feature_flags.contains_key(&pv.key) {
            continue;
        }
        v.push(Variable {
            key: pv.key.clone(),
            value: pv.value.clone(),
            file: pv.file,
            masked: pv.masked,
            raw: pv.raw,
        });
    }
    // 8-9.
    v.set("CI_DISPOSABLE_ENVIRONMENT", "true");
    v.set("CI_RUNNER_VERSION", env!("CARGO_PKG_VERSION"));
    v.set("CI_RUNNER_REVISION", crate::REVISION);
    v.set(
        "CI_RUNNER_EXECUTABLE_ARCH",
        format!(
            "{}/{}",
            std::env::consts::OS,
            ferry_config::platform::go_arch()
        ),
    );
    // 11.
    v.set("RUNNER_TEMP_PROJECT_DIR", format!("{}.tmp", i.project_dir));
    v.expanded()
}
