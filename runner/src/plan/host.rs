//! The host-side parts of the plan: sources, cache, artifacts and dependencies.

use std::path::{Path, PathBuf};

use ferry_config::RunnerSection;
use ferry_executor::artifacts::{ArtifactFormat, ArtifactSpec, strip_project_prefix};
use ferry_executor::cache::{
    CacheFormat, CachePolicy, CacheSpec, CacheStore, RemoteCache, SINGLE_PUT_MAX, object_prefix,
    request_timeout, restore_attempts,
};
use ferry_executor::compression::CompressionLevel;
use ferry_executor::sources::{ForceHttps, GitVariables, RefType, SourceSpec};
use serde::Serialize;

use super::PlanError;
use crate::gitlab::payload::JobPayload;
use crate::variables::Variables;

/// A dependency whose artifacts are downloaded before the script.
#[derive(Clone, Serialize)]
pub struct DependencySpec {
    pub id: u64,
    pub name: String,
    /// The token to download with (the payload gives one per dependency).
    #[serde(skip)]
    pub token: String,
}

impl std::fmt::Debug for DependencySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DependencySpec({} {})", self.id, self.name)
    }
}

/// `clone_url` replaces the scheme and host of the repository URL (credentials kept).
fn apply_clone_url(repo_url: &str, clone_url: Option<&str>) -> String {
    let Some(clone) = clone_url.filter(|c| !c.is_empty()) else {
        return repo_url.to_string();
    };
    let Some((_, rest)) = repo_url.split_once("://") else {
        return repo_url.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let creds = authority
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    let Some((scheme, host)) = clone.trim_end_matches('/').split_once("://") else {
        return repo_url.to_string();
    };
    format!("{scheme}://{creds}{host}/{path}")
}

/// How many times the host stages are tried before they fail the job (gitlab-runner's
/// `attemptExecuteStage`): `GET_SOURCES_ATTEMPTS`, `ARTIFACT_DOWNLOAD_ATTEMPTS`, and a step
/// whose container disappeared (`EXECUTOR_JOB_SECTION_ATTEMPTS`), from 1 (the default) to 10. `RESTORE_CACHE_ATTEMPTS` is the remote cache's (`CacheStore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attempts {
    pub get_sources: u32,
    pub artifact_download: u32,
    /// `EXECUTOR_JOB_SECTION_ATTEMPTS`: runs of a step whose build container disappeared.
    pub executor_job_section: u32,
}

impl Default for Attempts {
    fn default() -> Self {
        Attempts {
            get_sources: 1,
            artifact_download: 1,
            executor_job_section: 1,
        }
    }
}

/// An `*_ATTEMPTS` variable as gitlab-runner reads it: unset or not a number gives 1 (with a
/// warning for a value that is not a number), a number outside 1..=10 is clamped with a warning.
fn attempts(variables: &Variables, name: &str, warnings: &mut Vec<String>) -> u32 {
    let Some(value) = variables
        .value(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return 1;
    };
    let Ok(n) = value.parse::<i64>() else {
        warnings.push(format!(
            "{name}: {value:?} is not a number of attempts: using 1"
        ));
        return 1;
    };
    let clamped = n.clamp(1, 10);
    if clamped != n {
        warnings.push(format!(
            "{name}: number of attempts out of the range [1, 10], clamping to: {clamped}"
        ));
    }
    clamped as u32
}

/// `ARTIFACT_COMPRESSION_LEVEL` / `CACHE_COMPRESSION_LEVEL` as gitlab-runner reads them: an
/// invalid name is `default`, with its warning in the job log.
fn compression_level(
    variables: &Variables,
    name: &str,
    warnings: &mut Vec<String>,
) -> CompressionLevel {
    let (level, warning) = CompressionLevel::parse(name, variables.value(name));
    warnings.extend(warning);
    level
}

pub(super) struct HostPlan {
    pub attempts: Attempts,
    pub transfer_meter: Option<std::time::Duration>,
    pub sources: SourceSpec,
    pub cache_store: CacheStore,
    pub caches: Vec<CacheSpec>,
    pub artifacts: Vec<ArtifactSpec>,
    pub dependencies: Vec<DependencySpec>,
    pub warnings: Vec<String>,
}

/// What the host side of a plan is compiled from.
pub(super) struct HostInputs<'a> {
    pub payload: &'a JobPayload,
    pub runner: &'a RunnerSection,
    pub variables: &'a Variables,
    /// ferry's data directory on the host.
    pub working_dir: &'a Path,
    /// `JobContext::object_cache`.
    pub object_cache: bool,
    /// The project dir on the host, and as the job's containers see it.
    pub host_project_dir: PathBuf,
    pub project_dir: &'a str,
    pub short_token: &'a str,
    pub project_path: &'a str,
}

pub(super) fn host_plan(inputs: HostInputs<'_>) -> Result<HostPlan, PlanError> {
    let HostInputs {
        payload,
        runner,
        variables,
        working_dir,
        object_cache,
        host_project_dir,
        project_dir,
        short_token,
        project_path,
    } = inputs;
    let git = GitVariables::resolve(
        |k| variables.value(k),
        payload.allow_git_fetch,
        payload.git_info.depth.min(u32::MAX as u64) as u32,
    )
    .map_err(|e| PlanError::Job(e.to_string()))?;
    let mut git_config = Vec::new();
    if let Some(ca) = &runner.tls_ca_file {
        git_config.push(("http.sslCAInfo".to_string(), ca.display().to_string()));
    }
    let object_format =
        Some(payload.git_info.repo_object_format.clone()).filter(|f| !f.is_empty() && f != "sha1");
    // GIT_SUBMODULE_FORCE_HTTPS: gitlab-runner's base is `clone_url`, else the runner's `url`
    // (helpers/url/gitauth.go); the SSH host and port are GitLab's predefined variables.
    let force_https = git.submodule_force_https.then(|| {
        let base = runner
            .clone_url
            .as_deref()
            .filter(|c| c.contains("://"))
            .unwrap_or(&runner.url);
        let host = variables
            .value("CI_SERVER_SHELL_SSH_HOST")
            .filter(|h| !h.is_empty())
            .or_else(|| variables.value("CI_SERVER_HOST"))
            .unwrap_or_default();
        ForceHttps {
            base: base.trim_end_matches('/').to_string(),
            ssh_host: host.to_string(),
            ssh_port: variables
                .value("CI_SERVER_SHELL_SSH_PORT")
                .unwrap_or_default()
                .to_string(),
        }
    });
    let sources = SourceSpec {
        repo_url: apply_clone_url(&payload.git_info.repo_url, runner.clone_url.as_deref()),
        sha: payload.git_info.sha.clone(),
        before_sha: payload.git_info.before_sha.clone(),
        ref_name: payload.git_info.git_ref.clone(),
        ref_type: RefType::parse(&payload.git_info.ref_type),
        refspecs: payload.git_info.refspecs.clone(),
        depth: git.depth,
        object_format,
        strategy: git.strategy,
        checkout: git.checkout,
        clean_flags: git.clean_flags,
        fetch_extra_flags: git.fetch_extra_flags,
        submodule_strategy: git.submodule_strategy,
        submodule_depth: git.submodule_depth,
        submodule_update_flags: git.submodule_update_flags,
        submodule_paths: git.submodule_paths,
        lfs: git.lfs,
        git_config,
        force_https: force_https.filter(|f| !f.ssh_host.is_empty()),
        hook_git_config: Vec::new(),
        project_dir: host_project_dir,
        display_dir: Some(project_dir.to_string()),
        object_cache_dir: object_cache.then(|| {
            working_dir
                .join("git-cache")
                .join(format!("project-{}.git", payload.job_info.project_id))
        }),
    };

    let mut warnings = git.warnings;
    let (transfer_meter, meter_warning) =
        ferry_executor::meter::frequency(variables.value("TRANSFER_METER_FREQUENCY"));
    warnings.extend(meter_warning);
    let cache_root = runner
        .docker
        .cache_dir
        .clone()
        .unwrap_or_else(|| working_dir.join("cache"));
    let cache_store = CacheStore {
        root: cache_root,
        namespace: format!("{short_token}/{project_path}"),
        disabled: runner.docker.disable_cache,
        remote: runner.cache.kind.as_ref().map(|_| RemoteCache {
            config: std::sync::Arc::new(runner.cache.clone()),
            prefix: object_prefix(
                &runner.cache,
                runner.token.ci_short_token(),
                payload.job_info.project_id,
            ),
            request_timeout: request_timeout(variables.value("CACHE_REQUEST_TIMEOUT")),
            restore_attempts: restore_attempts(variables.value("RESTORE_CACHE_ATTEMPTS")),
            transfer_meter,
            single_put_max: SINGLE_PUT_MAX,
        }),
        format: CacheFormat::parse(variables.value("CACHE_COMPRESSION_FORMAT")),
        compression: compression_level(variables, "CACHE_COMPRESSION_LEVEL", &mut warnings),
    };
    let mut caches = Vec::new();
    for c in &payload.cache {
        let policy = CachePolicy::parse(&c.policy).ok_or_else(|| {
            PlanError::Job(format!(
                "cache: unknown policy {:?} (use pull, push or pull-push)",
                c.policy
            ))
        })?;
        let mut fallback_keys: Vec<String> = c
            .fallback_keys
            .iter()
            .map(|k| variables.expand(k))
            .collect();
        if let Some(k) = variables
            .value("CACHE_FALLBACK_KEY")
            .filter(|k| !k.is_empty() && !k.ends_with("-protected"))
        {
            fallback_keys.push(variables.expand(k));
        }
        caches.push(CacheSpec {
            key: variables.expand(&c.key),
            fallback_keys,
            paths: c
                .paths
                .iter()
                .map(|p| strip_project_prefix(&variables.expand(p), project_dir))
                .collect(),
            untracked: c.untracked,
            policy,
            when: c.when,
        });
    }

    let attempts = Attempts {
        get_sources: attempts(variables, "GET_SOURCES_ATTEMPTS", &mut warnings),
        artifact_download: attempts(variables, "ARTIFACT_DOWNLOAD_ATTEMPTS", &mut warnings),
        executor_job_section: attempts(variables, "EXECUTOR_JOB_SECTION_ATTEMPTS", &mut warnings),
    };
    // Read by the remote cache (`CacheStore`); here only for its warning.
    self::attempts(variables, "RESTORE_CACHE_ATTEMPTS", &mut warnings);
    let artifact_compression =
        compression_level(variables, "ARTIFACT_COMPRESSION_LEVEL", &mut warnings);
    let mut artifacts = Vec::new();
    for a in &payload.artifacts {
        let Some(format) = ArtifactFormat::parse(&a.artifact_format) else {
            warnings.push(format!(
                "artifacts: unknown format {:?} for {:?}: skipped",
                a.artifact_format, a.artifact_type
            ));
            continue;
        };
        artifacts.push(ArtifactSpec {
            name: a
                .name
                .as_ref()
                .map(|n| variables.expand(n))
                .filter(|n| !n.is_empty()),
            paths: a
                .paths
                .iter()
                .map(|p| strip_project_prefix(&variables.expand(p), project_dir))
                .collect(),
            exclude: a
                .exclude
                .iter()
                .map(|p| strip_project_prefix(&variables.expand(p), project_dir))
                .collect(),
            untracked: a.untracked,
            when: a.when,
            expire_in: a.expire_in.clone().filter(|e| !e.is_empty()),
            artifact_type: a.artifact_type.clone(),
            format,
            compression: artifact_compression,
        });
    }
    let dependencies = payload
        .dependencies
        .iter()
        .filter(|d| d.has_artifacts())
        .map(|d| DependencySpec {
            id: d.id,
            name: d.name.clone(),
            token: d.token.clone(),
        })
        .collect();
    Ok(HostPlan {
        attempts,
        transfer_meter,
        sources,
        cache_store,
        caches,
        artifacts,
        dependencies,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_url_replaces_scheme_and_host_only() {
        assert_eq!(
            apply_clone_url(
                "https://gitlab-ci-token:tok@gitlab.example.com/g/p.git",
                Some("http://10.0.0.5:8080")
            ),
            "http://gitlab-ci-token:tok@10.0.0.5:8080/g/p.git"
        );
        assert_eq!(
            apply_clone_url("https://h/g/p.git", None),
            "https://h/g/p.git"
        );
    }
}
