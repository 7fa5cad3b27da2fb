//! The plan compiler: job payload + runner config + job context → [`Plan`].
//!
//! Pure: no I/O, no clock, no randomness. Everything the job driver does is decided here, so
//! "we ran the wrong thing" bugs are string comparisons against golden files
//! (`runner/testdata/plans/`, rewritten with `FERRY_BLESS=1`).

mod host;
mod images;
mod vars;

pub use host::Attempts;

use std::path::PathBuf;
use std::time::Duration;

use ferry_config::RunnerSection;
use ferry_executor::artifacts::ArtifactSpec;
use ferry_executor::cache::{CacheSpec, CacheStore};
use ferry_executor::sources::SourceSpec;
use ferry_executor::{JobEnv, StepSpec};
use serde::Serialize;

use crate::gitlab::payload::{JobPayload, Step, StepKind, When};
use crate::variables::Variables;

pub use host::DependencySpec;

/// Job timeout when GitLab sends none.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// after_script's own timeout (RUNNER_AFTER_SCRIPT_TIMEOUT overrides it).
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest job or step timeout ferry accepts from GitLab: a year. GitLab caps job timeouts far
/// below that (project and runner maximum timeouts are validated to under a month), so a larger
/// value is a payload GitLab would never send, and the job is refused with that reason rather
/// than run with a deadline nobody meant (docs/security.md).
pub const MAX_PAYLOAD_TIMEOUT_SECS: u64 = 366 * 24 * 3600;

/// What the driver needs besides the payload and the config: facts of this host and slot.
#[derive(Debug, Clone, Serialize)]
pub struct JobContext {
    /// ferry's data directory on the host (builds, git object cache, local cache).
    pub working_dir: PathBuf,
    /// Slot of the job within its runner entry (CI_CONCURRENT_ID).
    pub concurrent_id: usize,
    /// Slot among concurrent jobs of the same project (CI_CONCURRENT_PROJECT_ID).
    pub concurrent_project_id: usize,
    /// Contents of the runner's tls-ca-file, for CI_SERVER_TLS_CA_FILE.
    #[serde(skip)]
    pub tls_ca_pem: Option<String>,
    /// Whether the sources go through the project's git object cache under `working_dir`
    /// (docs/sources-cache-artifacts.md). `ferry exec` fetches from a repository on this
    /// machine, which a cache would only copy once more (docs/exec.md).
    pub object_cache: bool,
    /// Whether the build container's steps keep their output and exit code in the job's steps
    /// dir (`JobEnv::host_steps_dir`), where a later `ferry run` can follow them
    /// (docs/crash-safety.md). Off with `ferry run --no-journal`: the steps stream their output
    /// to ferry only, as on a remote Docker daemon.
    pub keep_step_output: bool,
}

/// How the job runs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Execution {
    /// In Docker containers.
    Docker {
        env: Box<JobEnv>,
        steps: Vec<PlannedStep>,
    },
    /// The built-in deploy step (`image: ferry:deploy`): no container.
    Deploy {
        commands: Vec<DeployCommand>,
        /// What GitLab asserts about the job (ref protection, environment), read from the
        /// payload: the deploy policy is decided on these, never on job variables.
        facts: ferry_deploy::JobFacts,
    },
}

/// One `ferry deploy` line of a deploy job.
#[derive(Debug, Serialize)]
pub struct DeployCommand {
    pub line: String,
    pub args: Vec<String>,
}

/// A step and when it runs.
#[derive(Debug, Serialize)]
pub struct PlannedStep {
    pub spec: StepSpec,
    pub when: When,
    /// What the step is, from the payload (no code compares step names).
    pub kind: StepKind,
    /// GitLab's section name in the job log (`step_script`, `after_script`, ...).
    pub section: String,
}

/// Everything the driver will do for one job.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub job_id: u64,
    pub job_name: String,
    pub project_path: String,
    pub timeout: Duration,
    pub execution: Execution,
    /// The project directory on the host (sources, cache and artifacts land here).
    pub host_project_dir: PathBuf,
    /// The job's file variables on the host, mounted read-only at `<project dir>.tmp`.
    pub host_tmp_dir: PathBuf,
    pub sources: SourceSpec,
    pub cache_store: CacheStore,
    pub caches: Vec<CacheSpec>,
    pub artifacts: Vec<ArtifactSpec>,
    pub dependencies: Vec<DependencySpec>,
    /// How many times get_sources and download_artifacts are tried.
    pub attempts: Attempts,
    /// `pre_get_sources_script` / `post_get_sources_script` (the runner's and the job's), run
    /// in a short-lived container before and after git (docs/sources-cache-artifacts.md).
    #[serde(skip_serializing_if = "GetSourcesHooks::is_empty")]
    pub hooks: GetSourcesHooks,
    /// `RUNNER_SCRIPT_TIMEOUT`: how long the script steps together may run, from the first
    /// one's start; below the job timeout, so after_script, cache and artifacts still run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_timeout: Option<Duration>,
    /// `TRANSFER_METER_FREQUENCY`: progress lines while artifacts are uploaded and downloaded
    /// (the distributed cache has its own copy, `RemoteCache::transfer_meter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_meter: Option<Duration>,
    /// `CI_DEBUG_TRACE` is in force (the steps trace their commands).
    pub debug_trace: bool,
    /// `CI_DEBUG_SERVICES` is in force: the service containers' output goes to the job log.
    #[serde(skip_serializing_if = "is_false")]
    pub debug_services: bool,
    /// `FF_TIMESTAMPS`: every line of the log carries its time (docs/job-log.md).
    #[serde(skip_serializing_if = "is_false")]
    pub timestamps: bool,
    /// Settings that were ignored, shown as warnings in the job log.
    pub warnings: Vec<String>,
    /// The job's final variables, expanded (masked values are redacted when serialized).
    pub variables: Variables,
    /// Values and token prefixes the trace must mask.
    #[serde(flatten)]
    pub masks: Masks,
    /// failure_reason values this GitLab accepts (features.failure_reasons).
    pub failure_reasons: Vec<String>,
}

/// The get_sources hooks of a job, in gitlab-runner's order (`writeGetSourcesScript`): the
/// runner's `pre_get_sources_script` then the job's `hooks:pre_get_sources_script`; the job's
/// `hooks:post_get_sources_script` then the runner's `post_get_sources_script`. None with
/// `GIT_STRATEGY` `none` or `empty`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GetSourcesHooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<StepSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<StepSpec>,
}

impl GetSourcesHooks {
    pub fn is_empty(&self) -> bool {
        self.pre.is_none() && self.post.is_none()
    }
}

/// Why a job cannot be planned. Each maps to a failure_reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// The runner's configuration does not allow or support the job.
    #[error("{0}")]
    Configuration(String),
    /// The job itself is wrong (e.g. a deploy job's script line).
    #[error("{0}")]
    Job(String),
    /// GitLab sent something it never sends (an absurd timeout): the job is refused at once.
    #[error("{0}")]
    Payload(String),
}

impl PlanError {
    pub fn failure_reason(&self) -> crate::failure::FailureReason {
        use crate::failure::FailureReason;
        match self {
            PlanError::Configuration(_) => FailureReason::RunnerConfigurationError,
            PlanError::Job(_) => FailureReason::ScriptFailure,
            PlanError::Payload(_) => FailureReason::RunnerSystemFailure,
        }
    }
}

/// Timeouts GitLab would never send refuse the job (see [`MAX_PAYLOAD_TIMEOUT_SECS`]).
fn check_payload_timeouts(payload: &JobPayload) -> Result<(), PlanError> {
    let refuse = |what: &str, secs: u64| {
        PlanError::Payload(format!(
            "GitLab sent {what} of {secs} seconds, more than the {} seconds (a year) ferry accepts; GitLab never sends such a value, so the job is not run",
            MAX_PAYLOAD_TIMEOUT_SECS
        ))
    };
    if payload.runner_info.timeout > MAX_PAYLOAD_TIMEOUT_SECS {
        return Err(refuse(
            "a job timeout (runner_info.timeout)",
            payload.runner_info.timeout,
        ));
    }
    for step in &payload.steps {
        if step.timeout > MAX_PAYLOAD_TIMEOUT_SECS {
            return Err(refuse(
                &format!("a timeout for step {:?}", step.name),
                step.timeout,
            ));
        }
    }
    Ok(())
}

/// What a job's log masks: values replaced wholesale (tokens, masked variables, the runner
/// token) and the token prefixes whose tokens are masked: the one default list
/// ([`crate::trace::DEFAULT_TOKEN_PREFIXES`]) and what the payload adds.
#[derive(Clone, Default, Serialize)]
pub struct Masks {
    #[serde(skip)]
    pub values: Vec<String>,
    #[serde(rename = "mask_prefixes")]
    pub prefixes: Vec<String>,
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masks")
            .field("values", &format_args!("[{} values]", self.values.len()))
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

impl Masks {
    /// The masks known from the payload and the runner alone: what the log uses when the job
    /// cannot be planned. [`compile`] adds the masked values of the job's variables.
    pub fn new(payload: &JobPayload, runner: &RunnerSection) -> Masks {
        let mut values = payload.secrets();
        values.push(runner.token.expose().to_string());
        let mut prefixes: Vec<String> = crate::trace::DEFAULT_TOKEN_PREFIXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        for p in &payload.features.token_mask_prefixes {
            if !p.is_empty() && !prefixes.contains(p) {
                prefixes.push(p.clone());
            }
        }
        let mut masks = Masks { values, prefixes };
        masks.normalize();
        masks
    }

    fn normalize(&mut self) {
        self.values.retain(|s| !s.is_empty());
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.values.dedup();
    }
}

/// Compile one job.
pub fn compile(
    payload: &JobPayload,
    runner: &RunnerSection,
    ctx: &JobContext,
) -> Result<Plan, PlanError> {
    if payload.run.is_some() {
        return Err(PlanError::Configuration(
            "this job uses CI Steps (`run:`), which ferry does not support yet".into(),
        ));
    }
    check_payload_timeouts(payload)?;
    let timeout = match payload.runner_info.timeout {
        0 => DEFAULT_JOB_TIMEOUT,
        s => Duration::from_secs(s),
    };
    let project_path = project_path(payload);
    let builds_dir = runner.builds_dir.trim_end_matches('/').to_string();
    let builds_dir = if builds_dir.is_empty() {
        "/builds".to_string()
    } else {
        builds_dir
    };
    let project_dir = format!("{builds_dir}/{project_path}");
    let short = runner.token.ci_short_token();
    let host = HostDirs::new(ctx, short, payload.job_info.project_id);
    let host_project_dir = host.project.clone();

    let image_name = payload
        .image
        .as_ref()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let vars_in = vars::Inputs {
        payload,
        runner,
        ctx,
        builds_dir: &builds_dir,
        project_dir: &project_dir,
        timeout,
    };
    let mut variables = vars::job_variables(&vars_in, &image_name);
    // GIT_CLONE_PATH moves the checkout in the container (and CI_PROJECT_DIR with it); the
    // host dir stays the project's own (docs/variables.md).
    let project_dir = match clone_path(&variables, &builds_dir, runner.custom_build_dir_enabled)? {
        Some(dir) => {
            let vars_in = vars::Inputs {
                project_dir: &dir,
                ..vars_in
            };
            variables = vars::job_variables(&vars_in, &image_name);
            dir
        }
        None => project_dir,
    };
    let expanded_image = variables.expand(&image_name);
    let (xtrace, trace_refused) = debug_trace(&variables, runner);
    let debug_services = !runner.debug_trace_disabled && flag_on(&variables, "CI_DEBUG_SERVICES");
    // gitlab-runner numbers script sections only when GitLab can show them (its
    // `features.trace_sections`).
    let script_sections =
        payload.features.trace_sections && flag_on(&variables, "FF_SCRIPT_SECTIONS");
    let mut timeout_warnings = Vec::new();
    let script_timeout = script_timeout(&variables, timeout, &mut timeout_warnings);

    let mut masks = Masks::new(payload, runner);
    masks.values.extend(variables.masked_values());
    masks.normalize();

    let host_plan = host::host_plan(host::HostInputs {
        payload,
        runner,
        variables: &variables,
        working_dir: &ctx.working_dir,
        object_cache: ctx.object_cache,
        host_project_dir: host_project_dir.clone(),
        project_dir: &project_dir,
        short_token: short,
        project_path: &project_path,
    })?;
    let hooks = get_sources_hooks(payload, runner, &host_plan.sources, xtrace);
    let execution = if !runner.deploy.image.is_empty() && expanded_image == runner.deploy.image {
        if !hooks.is_empty() {
            return Err(PlanError::Configuration(
                "pre_get_sources_script/post_get_sources_script cannot run in a deploy job: it has no container, and they never run on the runner host".into(),
            ));
        }
        Execution::Deploy {
            commands: deploy_commands(payload)?,
            facts: deploy_facts(payload),
        }
    } else {
        let mut env = images::job_env(
            payload,
            runner,
            &variables,
            &expanded_image,
            &builds_dir,
            &project_dir,
            &host,
            short,
        )?;
        if !ctx.keep_step_output {
            env.host_steps_dir = None;
        }
        Execution::Docker {
            env: Box::new(env),
            steps: steps(
                payload,
                runner,
                &variables,
                xtrace,
                script_sections,
                &mut timeout_warnings,
            )?,
        }
    };

    Ok(Plan {
        job_id: payload.id,
        job_name: payload.job_info.name.clone(),
        project_path,
        timeout,
        execution,
        host_project_dir,
        host_tmp_dir: host.tmp,
        sources: host_plan.sources,
        cache_store: host_plan.cache_store,
        caches: host_plan.caches,
        artifacts: host_plan.artifacts,
        dependencies: host_plan.dependencies,
        attempts: host_plan.attempts,
        hooks,
        script_timeout,
        transfer_meter: host_plan.transfer_meter,
        debug_trace: xtrace,
        debug_services,
        timestamps: flag_on(&variables, "FF_TIMESTAMPS"),
        warnings: host_plan
            .warnings
            .into_iter()
            .chain(trace_refused)
            .chain(timeout_warnings)
            .collect(),
        variables,
        masks,
        failure_reasons: payload.features.failure_reasons.clone(),
    })
}

/// The job's and the runner's get_sources hooks ([`GetSourcesHooks`]).
fn get_sources_hooks(
    payload: &JobPayload,
    runner: &RunnerSection,
    sources: &SourceSpec,
    xtrace: bool,
) -> GetSourcesHooks {
    use ferry_executor::sources::GitStrategy;
    if matches!(sources.strategy, GitStrategy::None | GitStrategy::Empty) {
        return GetSourcesHooks::default();
    }
    // gitlab-runner's `Hooks.Get`: the first entry of that name.
    let job = |name: &str| -> Vec<String> {
        payload
            .hooks
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.script.clone())
            .unwrap_or_default()
    };
    let spec = |name: &str, commands: Vec<String>| {
        (!commands.is_empty()).then(|| StepSpec {
            name: name.to_string(),
            commands,
            env: vec![],
            timeout: None,
            xtrace,
            // gitlab-runner's script sections are for the build's script steps only.
            script_sections: Vec::new(),
            log_full: Default::default(),
        })
    };
    let mut pre: Vec<String> = runner.pre_get_sources_script.iter().cloned().collect();
    pre.extend(job("pre_get_sources_script"));
    let mut post = job("post_get_sources_script");
    post.extend(runner.post_get_sources_script.iter().cloned());
    GetSourcesHooks {
        pre: spec("pre_get_sources_script", pre),
        post: spec("post_get_sources_script", post),
    }
}

/// `GIT_CLONE_PATH` as gitlab-runner's `getCustomBuildDir` checks it: only with
/// `[runners.custom_build_dir] enabled`, and only within `builds_dir` (after `.`/`..` are
/// resolved). Characters Docker's mount syntax cannot carry (`:`, `,`, control characters)
/// are refused too.
fn clone_path(
    variables: &Variables,
    builds_dir: &str,
    enabled: bool,
) -> Result<Option<String>, PlanError> {
    let Some(raw) = variables.value("GIT_CLONE_PATH").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !enabled {
        return Err(PlanError::Configuration(
            "setting GIT_CLONE_PATH is not allowed, enable `custom_build_dir` feature".into(),
        ));
    }
    let outside = || {
        PlanError::Configuration(format!(
            "the GIT_CLONE_PATH={raw:?} has to be within {builds_dir:?}"
        ))
    };
    if !raw.starts_with('/') {
        return Err(outside());
    }
    if raw.chars().any(|c| c == ':' || c == ',' || c.is_control()) {
        return Err(PlanError::Configuration(format!(
            "GIT_CLONE_PATH={raw:?}: `:`, `,` and control characters cannot be part of a mount path"
        )));
    }
    let clean = clean_abs_path(raw);
    let base = clean_abs_path(builds_dir);
    let within = clean == base
        || clean
            .strip_prefix(base.as_str())
            .is_some_and(|rest| rest.starts_with('/') || base == "/");
    if !within {
        return Err(outside());
    }
    Ok(Some(clean))
}

/// Go's `path.Clean` for an absolute path: no empty, `.` or `..` components.
fn clean_abs_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A job's directories on the host (docs/security.md): one folder per runner, slot and
/// project, `<working dir>/builds/<short token>/<slot>/project-<id>/`, which no job container
/// ever sees, holding `src/` (mounted at `CI_PROJECT_DIR`), `tmp/` (mounted read-only at
/// `CI_PROJECT_DIR.tmp`) and `steps/` (the build container's step output, mounted at
/// `CI_PROJECT_DIR.steps`; docs/crash-safety.md).
#[derive(Debug, Clone)]
pub struct HostDirs {
    pub project: PathBuf,
    pub tmp: PathBuf,
    pub steps: PathBuf,
}

impl HostDirs {
    fn new(ctx: &JobContext, short: &str, project_id: u64) -> HostDirs {
        let base = ctx
            .working_dir
            .join("builds")
            .join(short)
            .join(ctx.concurrent_project_id.to_string())
            .join(format!("project-{project_id}"));
        HostDirs {
            project: base.join("src"),
            tmp: base.join("tmp"),
            steps: base.join("steps"),
        }
    }
}

/// The project dir on the host (`src/` of [`HostDirs`]) that a job of `project_id` on the
/// runner `short` (its CI short token) gets in `ctx`'s slot: what the driver claims for it.
pub fn host_project_dir(ctx: &JobContext, short: &str, project_id: u64) -> PathBuf {
    HostDirs::new(ctx, short, project_id).project
}

/// `namespace/project` from the payload, safe as a relative path.
fn project_path(payload: &JobPayload) -> String {
    let raw = if !payload.job_info.project_full_path.is_empty() {
        payload.job_info.project_full_path.clone()
    } else {
        // Older servers: take it from the repository URL.
        let url = payload.git_info.clean_repo_url();
        let path = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split_once('/'))
            .map(|(_, p)| p)
            .unwrap_or("");
        path.trim_end_matches(".git").to_string()
    };
    let parts: Vec<String> = raw
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect();
    if parts.is_empty() {
        format!("project-{}", payload.job_info.project_id)
    } else {
        parts.join("/")
    }
}

/// The container steps, in gitlab-runner's order: `script` (before_script is already merged into
/// it by GitLab), other steps, then `after_script`. As gitlab-runner's `writeUserScript`: every
/// step but `after_script` runs the runner's `pre_build_script` first and its `post_build_script`
/// last, in the same shell (a failure stops the step), and the `release` step's lines are
/// expanded with the job's variables (GitLab sends them unexpanded).
fn steps(
    payload: &JobPayload,
    runner: &RunnerSection,
    variables: &Variables,
    xtrace: bool,
    script_sections: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<PlannedStep>, PlanError> {
    let mut out = Vec::new();
    let mut after: Option<&Step> = None;
    for step in &payload.steps {
        let kind = step.kind();
        if kind == StepKind::AfterScript {
            after = Some(step);
            continue;
        }
        let section = match &kind {
            StepKind::Script => "step_script".to_string(),
            other => format!("step_{}", other.name()),
        };
        let mut commands = Vec::with_capacity(step.script.len() + 2);
        commands.extend(runner.pre_build_script.clone());
        if kind == StepKind::Release {
            commands.extend(step.script.iter().map(|l| variables.expand(l)));
        } else {
            commands.extend(step.script.iter().cloned());
        }
        commands.extend(runner.post_build_script.clone());
        // gitlab-runner's `writeUserScript`: each of the three numbers its own commands.
        let sections = if script_sections {
            let mut names = Vec::with_capacity(commands.len());
            if runner.pre_build_script.is_some() {
                names.push("pre_build_script_0".to_string());
            }
            names.extend((0..step.script.len()).map(|i| format!("script_step_{i}")));
            if runner.post_build_script.is_some() {
                names.push("post_build_script_0".to_string());
            }
            names
        } else {
            Vec::new()
        };
        out.push(PlannedStep {
            spec: StepSpec {
                name: kind.name().to_string(),
                commands,
                env: vec![],
                timeout: None,
                xtrace,
                script_sections: sections,
                log_full: Default::default(),
            },
            when: step.when,
            kind,
            section,
        });
    }
    if let Some(step) = after
        && !step.script.is_empty()
    {
        // The engine enforces this timeout (`StepSpec::timeout`, executor/src/engine.rs).
        let name = "RUNNER_AFTER_SCRIPT_TIMEOUT";
        let timeout = variables
            .value(name)
            .and_then(|v| {
                let parsed = ferry_config::duration::parse_job_duration_saturating(v);
                if parsed.is_none() {
                    warnings.extend(timeout_warning(name, v));
                }
                parsed
            })
            .or_else(|| (step.timeout > 0).then(|| Duration::from_secs(step.timeout)))
            .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT);
        out.push(PlannedStep {
            spec: StepSpec {
                name: StepKind::AfterScript.name().to_string(),
                commands: step.script.clone(),
                env: vec![],
                timeout: Some(timeout),
                xtrace,
                script_sections: if script_sections {
                    (0..step.script.len())
                        .map(|i| format!("after_script_step_{i}"))
                        .collect()
                } else {
                    Vec::new()
                },
                log_full: Default::default(),
            },
            when: When::Always,
            kind: StepKind::AfterScript,
            section: "after_script".into(),
        });
    }
    Ok(out)
}

/// `RUNNER_SCRIPT_TIMEOUT` as gitlab-runner's `getStageTimeoutContexts` reads it (plus bare
/// seconds, as for `RUNNER_AFTER_SCRIPT_TIMEOUT`): unset, empty or `0` is no timeout of its own;
/// a value that cannot be read, a negative one, or one not below the job timeout is ignored
/// with gitlab-runner's warning (the job timeout then applies alone).
fn script_timeout(
    variables: &Variables,
    job_timeout: Duration,
    warnings: &mut Vec<String>,
) -> Option<Duration> {
    use ferry_config::duration::{DurationError, parse_job_duration};
    let name = "RUNNER_SCRIPT_TIMEOUT";
    let raw = variables.value(name)?;
    match parse_job_duration(raw) {
        Ok(d) if d.is_zero() => None,
        Ok(d) if d < job_timeout => Some(d),
        Ok(_) | Err(DurationError::TooLarge) => {
            warnings.push(format!(
                "{name} timeout: {raw} is longer than job timeout. Setting to job timeout"
            ));
            None
        }
        Err(_) => {
            warnings.extend(timeout_warning(name, raw));
            None
        }
    }
}

/// gitlab-runner's warning for a stage timeout variable that is ignored: malformed or negative
/// (`None` for an empty value, which is simply unset).
fn timeout_warning(name: &str, raw: &str) -> Option<String> {
    use ferry_config::duration::{DurationError, parse_job_duration};
    match parse_job_duration(raw) {
        Err(DurationError::Empty) | Ok(_) | Err(DurationError::TooLarge) => None,
        Err(DurationError::Negative) => Some(format!("Ignoring relative {name} timeout: {raw}")),
        Err(DurationError::Invalid { .. }) => {
            Some(format!("Ignoring malformed {name} timeout: {raw}"))
        }
    }
}

/// `CI_DEBUG_TRACE` (a Go boolean, as gitlab-runner reads it): every shell traces its commands.
/// With the runner's `debug_trace_disabled`, it and `CI_DEBUG_SERVICES` are refused with
/// gitlab-runner's warnings, and the job runs without the trace.
fn debug_trace(variables: &Variables, runner: &RunnerSection) -> (bool, Vec<String>) {
    let on = |name: &str| flag_on(variables, name);
    if !runner.debug_trace_disabled {
        return (on("CI_DEBUG_TRACE"), Vec::new());
    }
    let refused = ["CI_DEBUG_TRACE", "CI_DEBUG_SERVICES"]
        .into_iter()
        .filter(|n| on(n))
        .map(|n| format!("{n}: usage is disabled on this Runner"))
        .collect();
    (false, refused)
}

/// Whether the variable `name` is a true Go boolean (`1`, `t`, `TRUE`, ...), as gitlab-runner
/// reads `CI_DEBUG_*` and feature flags. `[runners.feature_flags]` are already in the job's
/// variables, winning over the job's own (docs/variables.md).
pub fn flag_on(variables: &Variables, name: &str) -> bool {
    variables
        .value(name)
        .is_some_and(|v| matches!(v.trim(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// `FF_TIMESTAMPS` for a job that could not be planned (its log still starts): the runner's
/// `[runners.feature_flags]`, else the payload's last definition.
pub fn timestamps_unplanned(payload: &JobPayload, runner: &RunnerSection) -> bool {
    const NAME: &str = "FF_TIMESTAMPS";
    let value = match runner.feature_flags.get(NAME) {
        Some(on) => return *on,
        None => payload.variables.iter().rev().find(|v| v.key == NAME),
    };
    value.is_some_and(|v| matches!(v.value.trim(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Each script line of a deploy job must be `ferry deploy [ARGS]`.
fn deploy_commands(payload: &JobPayload) -> Result<Vec<DeployCommand>, PlanError> {
    let mut out = Vec::new();
    for step in &payload.steps {
        for line in &step.script {
            if line.trim().is_empty() {
                continue;
            }
            let args = ferry_deploy::args::parse_script_line(line)
                .map_err(|e| PlanError::Job(format!("{} (in {})", e, step.name)))?;
            out.push(DeployCommand {
                line: line.clone(),
                args,
            });
        }
    }
    if out.is_empty() {
        return Err(PlanError::Job(
            "deploy job has no `ferry deploy` line in its script".into(),
        ));
    }
    Ok(out)
}

/// The deploy policy's facts, from what GitLab put in the payload (docs/deploy.md, "Who decides
/// what"):
///
/// * ref protection: `git_info.protected`. GitLab versions that do not send it: the payload's
///   `CI_COMMIT_REF_PROTECTED`, which GitLab always sets (as "true" or "false"), and only when
///   every definition in the payload says "true" (a job's `variables:` can add a definition,
///   never remove GitLab's).
/// * environment: `CI_ENVIRONMENT_NAME`, which GitLab sets from the job's `environment:` among
///   its predefined variables, before the job's `variables:` (`Gitlab::Ci::Variables::Builder#
///   scoped_variables`). The first definition is GitLab's; a later one with another value is the
///   job redefining it, and then no target is chosen at all (GitLab may reorder variables that
///   reference each other, so "first" alone is not trusted when they disagree).
fn deploy_facts(payload: &JobPayload) -> ferry_deploy::JobFacts {
    let defs = |key: &str| -> Vec<&str> {
        payload
            .variables
            .iter()
            .filter(|v| v.key == key)
            .map(|v| v.value.as_str())
            .collect()
    };
    let ref_protected = payload.git_info.protected.or_else(|| {
        let values = defs("CI_COMMIT_REF_PROTECTED");
        (!values.is_empty()).then(|| values.iter().all(|v| *v == "true"))
    });
    let envs = defs("CI_ENVIRONMENT_NAME");
    let environment = match envs.first() {
        None => ferry_deploy::JobEnvironment::None,
        Some(first) if envs.iter().all(|v| v == first) => {
            if first.is_empty() {
                ferry_deploy::JobEnvironment::None
            } else {
                ferry_deploy::JobEnvironment::Named(first.to_string())
            }
        }
        Some(_) => {
            let mut distinct: Vec<String> = Vec::new();
            for v in envs {
                if !distinct.iter().any(|d| d == v) {
                    distinct.push(v.to_string());
                }
            }
            ferry_deploy::JobEnvironment::Conflicting(distinct)
        }
    };
    ferry_deploy::JobFacts {
        ref_protected,
        ref_name: payload.git_info.git_ref.clone(),
        environment,
    }
}

#[cfg(test)]
mod tests;
