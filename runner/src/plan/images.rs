//! The Docker side of the plan: image, pull policy, services and their aliases, registry auth.

use ferry_config::{PullPolicy, RunnerSection};
use ferry_executor::docker::service_aliases_from_image;
use ferry_executor::{EnvVar, ImageSpec, JobEnv, RegistryAuth, ServiceSpec};

use super::PlanError;
use crate::gitlab::payload::{Image, JobPayload, Service};
use crate::variables::Variables;

/// The effective pull policies: the job's (`image:pull_policy`) if it asks, which must be among
/// `allowed_pull_policies` (default: the runner's `pull_policy`); else the runner's.
fn pull_policies(
    runner: &RunnerSection,
    requested: Option<&Vec<String>>,
    what: &str,
) -> Result<Vec<PullPolicy>, PlanError> {
    let mut runner_policies: Vec<PullPolicy> = runner.docker.pull_policy.clone();
    if runner_policies.is_empty() {
        runner_policies.push(PullPolicy::Always);
    }
    let requested = match requested {
        Some(r) if !r.is_empty() => r,
        _ => return Ok(runner_policies),
    };
    let allowed: Vec<PullPolicy> = if runner.docker.allowed_pull_policies.is_empty() {
        runner_policies.clone()
    } else {
        runner.docker.allowed_pull_policies.clone()
    };
    let mut out = Vec::new();
    for name in requested {
        let p = PullPolicy::parse(name.trim()).ok_or_else(|| {
            PlanError::Job(format!(
                "{what}: unknown pull_policy {name:?} (use always, if-not-present or never)"
            ))
        })?;
        if allowed.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        let allowed: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
        return Err(PlanError::Configuration(format!(
            "{what}: pull_policy ({}) is not allowed by this runner: allowed_pull_policies are [{}]",
            requested.join(", "),
            allowed.join(", ")
        )));
    }
    Ok(out)
}

/// `user` is the job's `docker:user`, expanded as gitlab-runner does; the runner's `user` and
/// `allowed_users` are applied by the engine.
fn image_spec(
    runner: &RunnerSection,
    variables: &Variables,
    name: String,
    image: Option<&Image>,
    what: &str,
) -> Result<ImageSpec, PlanError> {
    let docker_opts = image.and_then(|i| i.executor_opts.docker.as_ref());
    Ok(ImageSpec {
        name,
        entrypoint: image.and_then(|i| i.entrypoint.clone()).unwrap_or_default(),
        pull_policy: pull_policies(runner, image.and_then(|i| i.pull_policy.as_ref()), what)?,
        user: docker_opts
            .and_then(|d| d.user.as_deref())
            .map(|u| variables.expand(u))
            .filter(|u| !u.is_empty()),
        platform: docker_opts.and_then(|d| d.platform.clone()),
        runner_default: false,
    })
}

fn service_spec(
    runner: &RunnerSection,
    svc: &Service,
    variables: &Variables,
) -> Result<ServiceSpec, PlanError> {
    let name = variables.expand(&svc.name);
    let mut aliases: Vec<String> = Vec::new();
    for a in svc
        .aliases()
        .iter()
        .map(|a| variables.expand(a))
        .chain(service_aliases_from_image(&name))
    {
        if !a.is_empty() && !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    let image = Image {
        name: name.clone(),
        entrypoint: svc.entrypoint.clone(),
        ports: svc.ports.clone(),
        executor_opts: svc.executor_opts.clone(),
        pull_policy: svc.pull_policy.clone(),
    };
    let what = format!("service {name:?}");
    Ok(ServiceSpec {
        image: image_spec(runner, variables, name, Some(&image), &what)?,
        aliases,
        command: svc.command.clone().unwrap_or_default(),
        variables: svc
            .variables
            .iter()
            .map(|v| EnvVar {
                name: v.key.clone(),
                value: variables.expand(&v.value),
            })
            .collect(),
    })
}

/// A `[[runners.docker.services]]` entry: its name, alias and environment values are expanded
/// with the job's variables (as in gitlab-runner); the aliases derived from the image name are
/// added as for a job's service; the runner's pull policy applies.
fn runner_service_spec(
    runner: &RunnerSection,
    svc: &ferry_config::RunnerService,
    variables: &Variables,
) -> Result<ServiceSpec, PlanError> {
    let name = variables.expand(&svc.name);
    let mut aliases: Vec<String> = Vec::new();
    for a in variables
        .expand(&svc.alias)
        .replace(',', " ")
        .split_whitespace()
        .map(str::to_string)
        .chain(service_aliases_from_image(&name))
    {
        if !a.is_empty() && !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    let what = format!("[[runners.docker.services]] {name:?}");
    let mut image = image_spec(runner, variables, name, None, &what)?;
    image.entrypoint = svc.entrypoint.clone();
    Ok(ServiceSpec {
        image,
        aliases,
        command: svc.command.clone(),
        variables: svc
            .environment
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: variables.expand(v),
            })
            .collect(),
    })
}

/// Registry credentials GitLab sends for its own registry (used after DOCKER_AUTH_CONFIG and the
/// runner user's docker config, which the engine consults itself).
fn registry_auth(payload: &JobPayload) -> Vec<RegistryAuth> {
    payload
        .credentials
        .iter()
        .filter(|c| c.kind == "registry" && !c.url.is_empty())
        .map(|c| RegistryAuth {
            registry: c.url.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn job_env(
    payload: &JobPayload,
    runner: &RunnerSection,
    variables: &Variables,
    image_name: &str,
    builds_dir: &str,
    project_dir: &str,
    host: &super::HostDirs,
    short_token: &str,
) -> Result<JobEnv, PlanError> {
    let runner_default = image_name.is_empty();
    let name = if runner_default {
        runner.docker.image.clone().unwrap_or_default()
    } else {
        image_name.to_string()
    };
    if name.is_empty() {
        return Err(PlanError::Configuration(
            "the job sets no image and this runner has no default ([runners.docker] image)".into(),
        ));
    }
    let mut image = image_spec(runner, variables, name, payload.image.as_ref(), "image")?;
    image.runner_default = runner_default;
    // The runner's `[[runners.docker.services]]` first, then the job's (gitlab-runner's
    // `getServicesDefinitions`); all of them count towards `services_limit`.
    let mut services = Vec::new();
    for s in &runner.docker.services {
        services.push(runner_service_spec(runner, s, variables)?);
    }
    let runner_services = services.len();
    for s in &payload.services {
        services.push(service_spec(runner, s, variables)?);
    }
    if let Some(limit) = runner.docker.services_limit
        && services.len() > limit
    {
        return Err(PlanError::Configuration(format!(
            "the job defines {} services, more than this runner's services_limit of {limit}",
            services.len()
        )));
    }
    let env: Vec<EnvVar> = variables
        .deduplicated()
        .into_iter()
        .map(|v| EnvVar {
            name: v.key.clone(),
            value: variables.get(&v.key).unwrap_or_default(),
        })
        .collect();
    // Services get what is public: the runner's own variables and the job's public ones
    // (gitlab-runner's `PublicOrInternal`), never masked or other non-public values.
    let hidden: Vec<&str> = payload
        .variables
        .iter()
        .filter(|v| !v.public || v.masked)
        .map(|v| v.key.as_str())
        .collect();
    let service_variables = env
        .iter()
        .filter(|v| !hidden.contains(&v.name.as_str()))
        .cloned()
        .collect();
    Ok(JobEnv {
        job_id: payload.id,
        project_id: payload.job_info.project_id,
        runner_short_token: short_token.to_string(),
        image,
        services,
        variables: env,
        service_variables,
        builds_dir: builds_dir.to_string(),
        project_dir: project_dir.to_string(),
        host_project_dir: host.project.clone(),
        tmp_dir: format!("{project_dir}.tmp"),
        host_tmp_dir: host.tmp.clone(),
        host_steps_dir: Some(host.steps.clone()),
        registry_auth: registry_auth(payload),
        container_labels: runner
            .docker
            .containers
            .container_labels
            .iter()
            .map(|(k, v)| (k.clone(), variables.expand(v)))
            .collect(),
        runner_services,
    })
}
