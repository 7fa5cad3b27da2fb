//! A planned job of a local pipeline as the payload GitLab would send for it (docs/exec.md,
//! "From YAML to job"): the same fields, in GitLab's order of variables, so that `plan::compile`
//! and the driver treat it as they treat a CI job.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use ferry_pipeline::{CacheKey, Job, Pipeline};

use crate::gitlab::payload::{
    Artifact, ArtifactsFile, Cache, Dependency, DockerOpts, ExecutorOpts, GitInfo, Hook, Image,
    JobFeatures, JobInfo, JobPayload, RunnerInfo, Service, ServiceVariable, Step, Variable, When,
};

use super::schedule::{JobWhen, Node};
use super::snapshot::Snapshot;
use super::{LocalJob, RetryPolicy};

/// GitLab's default job timeout (a project's default: 1 h).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// What every job of the pipeline shares.
pub struct PipelineContext<'a> {
    pub pipeline_id: u64,
    pub snapshot: &'a Snapshot,
    pub ref_is_tag: bool,
    /// Predefined variables of the pipeline (before the YAML's).
    pub predefined: &'a [(String, String)],
    /// `--var`/`--var-file`: project-level variables, over the YAML's.
    pub user: &'a [(String, String)],
    /// `group/project`.
    pub project_path: &'a str,
    /// `CI_SERVER_URL`.
    pub server_url: &'a str,
    /// Keys of `cache:key` hashes (`files`, `files_commits`), computed by the caller (it
    /// needs git).
    pub files_key: &'a dyn Fn(FilesKey<'_>) -> String,
}

/// A `cache:key` hash, of the job's cache number `index` (GitLab's default prefix).
pub struct FilesKey<'a> {
    pub files: Option<&'a [String]>,
    pub files_commits: Option<&'a [String]>,
    pub prefix: Option<&'a str>,
    pub index: usize,
}

/// The failure reasons the local pipeline takes: every one ferry reports, so a job's summary
/// shows the precise cause.
const FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "runner_system_failure",
    "job_execution_timeout",
    "image_pull_failure",
    "runner_configuration_error",
    "runner_external_dependency_failure",
    "runner_interrupted",
    "runner_unsupported",
];

/// A random job token: only this process's local API knows it.
fn token() -> String {
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("ferry-exec-{a:016x}{b:016x}")
}

fn var(key: &str, value: &str, public: bool) -> Variable {
    Variable {
        key: key.into(),
        value: value.into(),
        public,
        masked: false,
        file: false,
        raw: false,
    }
}

/// `1h 30m`, `90 minutes`, `2 hours 10 min`, or a Go duration / bare seconds.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim())
        .ok()
        .or_else(|| ferry_config::duration::parse_job_duration(text).ok())
}

fn when(text: &str) -> When {
    match text {
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        _ => When::OnSuccess,
    }
}

/// Every job of `pipeline` (trigger jobs excepted: no runner runs them), with its job id
/// (`first_id`, counting up) and token.
pub fn local_jobs(pipeline: &Pipeline, ctx: &PipelineContext<'_>, first_id: u64) -> Vec<LocalJob> {
    let jobs: Vec<&Job> = pipeline
        .jobs
        .iter()
        .filter(|j| j.trigger.is_none())
        .collect();
    let ids: Vec<u64> = (0..jobs.len() as u64).map(|i| first_id + i).collect();
    let tokens: Vec<String> = jobs.iter().map(|_| token()).collect();
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    // `needs: [build]` of a parallel job means every one of its instances (`build 1/2`, …).
    let instances = |name: &str| -> Vec<usize> {
        if let Some(&i) = index.get(name) {
            return vec![i];
        }
        jobs.iter()
            .enumerate()
            .filter(|(_, j)| {
                j.parallel.is_some()
                    && (j.name.starts_with(&format!("{name} "))
                        || j.name.starts_with(&format!("{name}: ")))
            })
            .map(|(i, _)| i)
            .collect()
    };
    jobs.iter()
        .enumerate()
        .map(|(i, job)| {
            let needs = job.needs.as_ref().map(|needs| {
                needs
                    .iter()
                    .flat_map(|n| instances(&n.job))
                    .collect::<Vec<usize>>()
            });
            // Whose artifacts the job downloads: `dependencies`, else its `needs` with
            // artifacts, else every job of the earlier stages.
            let deps: Vec<usize> = match (&job.dependencies, &job.needs) {
                (Some(names), _) => names.iter().flat_map(|n| instances(n)).collect(),
                (None, Some(needs)) => needs
                    .iter()
                    .filter(|n| n.artifacts)
                    .flat_map(|n| instances(&n.job))
                    .collect(),
                (None, None) => (0..jobs.len())
                    .filter(|&j| jobs[j].stage_idx < job.stage_idx)
                    .collect(),
            };
            let dependencies = deps
                .into_iter()
                .map(|d| Dependency {
                    id: ids[d],
                    name: jobs[d].name.clone(),
                    token: tokens[d].clone(),
                    artifacts_file: Some(ArtifactsFile {
                        filename: "artifacts.zip".into(),
                        size: 0,
                    }),
                })
                .collect();
            let node = Node {
                name: job.name.clone(),
                stage: job.stage_idx,
                when: match job.when {
                    ferry_pipeline::When::OnFailure => JobWhen::OnFailure,
                    ferry_pipeline::When::Always => JobWhen::Always,
                    ferry_pipeline::When::Manual => JobWhen::Manual,
                    _ => JobWhen::OnSuccess,
                },
                allow_failure: job.allow_failure.allowed && job.allow_failure.exit_codes.is_empty(),
                needs,
                resource_group: job.resource_group.clone(),
            };
            LocalJob {
                node,
                allow_failure_exit_codes: job.allow_failure.exit_codes.clone(),
                // GitLab allows 0 to 2 retries.
                retry: job
                    .retry
                    .as_ref()
                    .filter(|r| r.max > 0)
                    .map(|r| RetryPolicy {
                        max: r.max.clamp(0, 2) as u32,
                        when: r.when.clone(),
                        exit_codes: r.exit_codes.clone(),
                    }),
                start_in: (job.when == ferry_pipeline::When::Delayed)
                    .then(|| job.start_in.as_deref().and_then(parse_timeout))
                    .flatten(),
                payload: payload(job, ctx, ids[i], tokens[i].clone(), dependencies),
            }
        })
        .collect()
}

fn payload(
    job: &Job,
    ctx: &PipelineContext<'_>,
    id: u64,
    token: String,
    dependencies: Vec<Dependency>,
) -> JobPayload {
    let snap = ctx.snapshot;
    let timeout = job
        .timeout
        .as_deref()
        .and_then(parse_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let (namespace, name) = ctx
        .project_path
        .rsplit_once('/')
        .unwrap_or(("", ctx.project_path));
    // GitLab's order: predefined, then the YAML's, then project-level (`--var`).
    let mut variables: Vec<Variable> = ctx
        .predefined
        .iter()
        .map(|(k, v)| var(k, v, true))
        .collect();
    let job_url = format!("{}/{}/-/jobs/{id}", ctx.server_url, ctx.project_path);
    let mut own = vec![
        ("CI_JOB_ID", id.to_string()),
        ("CI_JOB_NAME", job.name.clone()),
        ("CI_JOB_NAME_SLUG", super::predefined::slug(&job.name)),
        ("CI_JOB_STAGE", job.stage.clone()),
        ("CI_JOB_URL", job_url),
        ("CI_JOB_STARTED_AT", String::new()),
        ("CI_BUILD_ID", id.to_string()),
    ];
    if let Some(p) = &job.parallel {
        own.push(("CI_NODE_INDEX", p.index.to_string()));
        own.push(("CI_NODE_TOTAL", p.total.to_string()));
    } else {
        own.push(("CI_NODE_TOTAL", "1".to_string()));
    }
    if let Some(env) = &job.environment {
        own.push(("CI_ENVIRONMENT_NAME", env.name.clone()));
        own.push(("CI_ENVIRONMENT_SLUG", super::predefined::slug(&env.name)));
        if let Some(url) = &env.url {
            own.push(("CI_ENVIRONMENT_URL", url.clone()));
        }
        if let Some(action) = &env.action {
            own.push(("CI_ENVIRONMENT_ACTION", action.clone()));
        }
        if let Some(tier) = &env.deployment_tier {
            own.push(("CI_ENVIRONMENT_TIER", tier.clone()));
        }
    }
    variables.extend(own.iter().map(|(k, v)| var(k, v, true)));
    variables.push(Variable {
        key: "CI_JOB_TOKEN".into(),
        value: token.clone(),
        public: false,
        masked: true,
        file: false,
        raw: false,
    });
    variables.extend(job.variables.iter().map(|v| Variable {
        raw: v.raw,
        ..var(&v.key, &v.value, true)
    }));
    variables.extend(ctx.user.iter().map(|(k, v)| var(k, v, false)));

    let mut steps = vec![Step {
        name: "script".into(),
        script: job
            .before_script
            .iter()
            .chain(job.script.iter())
            .cloned()
            .collect(),
        timeout: timeout.as_secs(),
        when: When::OnSuccess,
        allow_failure: false,
    }];
    if let Some(release) = &job.release {
        steps.push(Step {
            name: "release".into(),
            script: vec![release_cli(release)],
            timeout: timeout.as_secs(),
            when: When::OnSuccess,
            allow_failure: false,
        });
    }
    if !job.after_script.is_empty() {
        steps.push(Step {
            name: "after_script".into(),
            script: job.after_script.clone(),
            timeout: timeout.as_secs(),
            when: When::Always,
            allow_failure: true,
        });
    }
    let docker_opts = |d: &Option<ferry_pipeline::DockerOptions>| ExecutorOpts {
        docker: d.as_ref().map(|d| DockerOpts {
            platform: d.platform.clone(),
            user: d.user.clone(),
            other: Default::default(),
        }),
        other: Default::default(),
    };
    let image = job.image.as_ref().map(|i| Image {
        name: i.name.clone(),
        entrypoint: i.entrypoint.clone(),
        ports: Vec::new(),
        executor_opts: docker_opts(&i.docker),
        pull_policy: i.pull_policy.clone(),
    });
    let services = job
        .services
        .iter()
        .map(|s| Service {
            name: s.name.clone(),
            alias: s.alias.clone(),
            entrypoint: s.entrypoint.clone(),
            command: s.command.clone(),
            ports: Vec::new(),
            variables: s
                .variables
                .iter()
                .map(|v| ServiceVariable {
                    key: v.key.clone(),
                    value: v.value.clone(),
                })
                .collect(),
            executor_opts: docker_opts(&s.docker),
            pull_policy: s.pull_policy.clone(),
        })
        .collect();
    let mut artifacts = Vec::new();
    if let Some(a) = &job.artifacts {
        if !a.paths.is_empty() || a.untracked {
            artifacts.push(Artifact {
                name: a.name.clone(),
                untracked: a.untracked,
                paths: a.paths.clone(),
                exclude: a.exclude.clone(),
                when: when(&a.when),
                expire_in: a.expire_in.clone(),
                artifact_type: "archive".into(),
                artifact_format: "zip".into(),
            });
        }
        for (kind, paths) in &a.reports {
            // GitLab's report types are lowercase words (`junit`, `dotenv`, …); nothing else
            // becomes an artifact type (it names a stored file).
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || kind == "archive"
            {
                continue;
            }
            let paths: Vec<String> = match paths {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(list) => list
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect(),
                _ => continue,
            };
            artifacts.push(Artifact {
                name: Some(kind.clone()),
                untracked: false,
                paths,
                exclude: Vec::new(),
                when: When::Always,
                expire_in: a.expire_in.clone(),
                artifact_type: kind.clone(),
                artifact_format: if kind == "dotenv" || kind == "junit" {
                    "gzip".into()
                } else {
                    "raw".into()
                },
            });
        }
    }
    let cache = job
        .cache
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let key = match &c.key {
                CacheKey::Key(k) => k.clone(),
                CacheKey::Files {
                    files,
                    files_commits,
                    prefix,
                } => (ctx.files_key)(FilesKey {
                    files: files.as_deref(),
                    files_commits: files_commits.as_deref(),
                    prefix: prefix.as_deref(),
                    index,
                }),
            };
            // GitLab keeps separate caches for protected refs; local refs are not protected.
            let suffix = if c.unprotect { "" } else { "-non_protected" };
            Cache {
                key: format!("{key}{suffix}"),
                untracked: c.untracked,
                policy: c.policy.clone(),
                paths: c.paths.clone(),
                when: when(&c.when),
                fallback_keys: c.fallback_keys.clone(),
            }
        })
        .collect();
    let refspecs = if ctx.ref_is_tag {
        vec![format!("+refs/tags/{0}:refs/tags/{0}", snap.ref_name)]
    } else {
        vec![format!(
            "+refs/heads/{0}:refs/remotes/origin/{0}",
            snap.ref_name
        )]
    };
    JobPayload {
        id,
        token,
        allow_git_fetch: true,
        job_info: JobInfo {
            id,
            name: job.name.clone(),
            stage: job.stage.clone(),
            project_id: 1,
            project_name: name.to_string(),
            project_full_path: ctx.project_path.to_string(),
            pipeline_id: Some(ctx.pipeline_id),
            namespace_id: (!namespace.is_empty()).then_some(1),
            ..JobInfo::default()
        },
        git_info: GitInfo {
            repo_url: snap.repo_url.clone(),
            git_ref: snap.ref_name.clone(),
            sha: snap.sha.clone(),
            before_sha: "0".repeat(40),
            ref_type: if ctx.ref_is_tag { "tag" } else { "branch" }.into(),
            refspecs,
            depth: 20,
            repo_object_format: "sha1".into(),
            protected: Some(false),
        },
        runner_info: RunnerInfo {
            timeout: timeout.as_secs(),
            runner_session_url: None,
        },
        variables,
        steps,
        hooks: job
            .hooks
            .iter()
            .map(|h| Hook {
                name: h.name.clone(),
                script: h.script.clone(),
            })
            .collect(),
        image,
        services,
        artifacts,
        cache,
        credentials: Vec::new(),
        dependencies,
        features: JobFeatures {
            trace_sections: true,
            failure_reasons: FAILURE_REASONS.iter().map(|s| s.to_string()).collect(),
            token_mask_prefixes: Vec::new(),
        },
        run: None,
    }
}

/// The `release-cli` command GitLab puts in a `release` step (its
/// `Gitlab::Ci::Build::Releaser`): the step runs it in the job's image, as in CI.
fn release_cli(release: &serde_json::Value) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut cmd = String::from("release-cli create");
    for (key, flag) in [
        ("name", "--name"),
        ("description", "--description"),
        ("tag_name", "--tag-name"),
        ("tag_message", "--tag-message"),
        ("ref", "--ref"),
        ("released_at", "--released-at"),
    ] {
        if let Some(v) = release.get(key).and_then(|v| v.as_str()) {
            cmd.push_str(&format!(" {flag} {}", quote(v)));
        }
    }
    if let Some(ms) = release.get("milestones").and_then(|v| v.as_array()) {
        for m in ms.iter().filter_map(|m| m.as_str()) {
            cmd.push_str(&format!(" --milestone {}", quote(m)));
        }
    }
    cmd
}
