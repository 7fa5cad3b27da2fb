//! The job payload: the body of a `201` answer to `POST /api/v4/jobs/request`.
//!
//! Every type is lenient: unknown keys are ignored, missing keys and `null` take the default,
//! scalars are coerced where GitLab versions disagree (see [`super::lenient`]). Only structural
//! surprises (an object where a list must be, invalid JSON) are errors.
//!
//! `Debug` never prints secrets: the job token, dependency tokens, registry passwords, the
//! credentials inside `git_info.repo_url`, and the values of masked or non-public variables are
//! redacted. `Serialize` (for tests and fixtures) writes everything, so never log the JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::lenient;

const REDACTED: &str = "[REDACTED]";

/// Why a job payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape. The message carries serde's line/column.
    #[error("invalid job payload: {0}")]
    Invalid(String),
    /// Parsed, but without a job id, so no job call can be made for it.
    #[error("invalid job payload: no job id")]
    NoId,
    /// Parsed, but without a usable job token (missing, empty, or not a printable ASCII word):
    /// every job call needs it, so the job can be neither run nor reported. GitLab always sends
    /// one; refusing at once frees the slot instead of retrying calls that cannot succeed.
    #[error("invalid job payload: no usable job token")]
    NoToken,
}

/// A job token GitLab could have issued: non-empty printable ASCII without spaces (it travels in
/// the `JOB-TOKEN` header and in clone URLs).
fn usable_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Parse a job payload. Never panics, whatever the input.
pub fn parse_payload(bytes: &[u8]) -> Result<JobPayload, PayloadError> {
    let mut payload: JobPayload = serde_json::from_slice(bytes)
        .map_err(|e| PayloadError::Invalid(redact_quoted(&e.to_string())))?;
    if payload.id == 0 {
        return Err(PayloadError::NoId);
    }
    if !usable_token(&payload.token) {
        return Err(PayloadError::NoToken);
    }
    payload.normalize();
    Ok(payload)
}

/// serde quotes offending values in its messages (`invalid type: string "…"`); a value in the
/// wrong place could be a secret, so quoted text is cut from the message.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// Best effort for a payload [`parse_payload`] rejected: the job id and token if the body is a
/// JSON object with a readable `id` and `token`, so the caller can still report the job failed
/// (`runner_system_failure`) instead of leaving it running on GitLab until it times out.
pub fn salvage_job_ref(bytes: &[u8]) -> Option<crate::api::JobRef> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default, deserialize_with = "lenient::opt_u64")]
        id: Option<u64>,
        #[serde(default, deserialize_with = "lenient::opt_string")]
        token: Option<String>,
    }
    let head: Head = serde_json::from_slice(bytes).ok()?;
    match (head.id, head.token) {
        (Some(id), Some(token)) if id > 0 && usable_token(&token) => Some(crate::api::JobRef {
            id,
            token,
            debug_trace: false,
        }),
        _ => None,
    }
}

/// The whole job as GitLab hands it to a runner.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobPayload {
    #[serde(deserialize_with = "lenient::u64")]
    pub id: u64,
    /// Job token (`glcbt-…`): authenticates every job-scoped call. Secret.
    #[serde(deserialize_with = "lenient::string")]
    pub token: String,
    #[serde(deserialize_with = "lenient::bool")]
    pub allow_git_fetch: bool,
    #[serde(deserialize_with = "lenient::null_default")]
    pub job_info: JobInfo,
    #[serde(deserialize_with = "lenient::null_default")]
    pub git_info: GitInfo,
    #[serde(deserialize_with = "lenient::null_default")]
    pub runner_info: RunnerInfo,
    /// In GitLab's order; the last occurrence of a key wins.
    #[serde(deserialize_with = "lenient::null_default")]
    pub variables: Vec<Variable>,
    /// Empty for CI Steps (`run:`) jobs, which ferry does not support (see `run`).
    #[serde(deserialize_with = "lenient::null_default")]
    pub steps: Vec<Step>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub hooks: Vec<Hook>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub image: Option<Image>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub services: Vec<Service>,
    /// `null` in the JSON when the job defines no artifacts: empty here.
    #[serde(deserialize_with = "lenient::null_default")]
    pub artifacts: Vec<Artifact>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub cache: Vec<Cache>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub credentials: Vec<Credential>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub dependencies: Vec<Dependency>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub features: JobFeatures,
    /// CI Steps jobs only: a JSON string with the steps. Present means "not a script job".
    #[serde(deserialize_with = "lenient::opt_string")]
    pub run: Option<String>,
}

impl JobPayload {
    /// The id and token to make job calls with.
    pub fn job_ref(&self) -> crate::api::JobRef {
        crate::api::JobRef {
            id: self.id,
            token: self.token.clone(),
            debug_trace: false,
        }
    }

    /// Values the job log must never show: masked variables' values and every token/password
    /// in the payload (non-empty, deduplicated, longest first).
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: &str| {
            if !s.is_empty() && !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        };
        push(&self.token);
        for v in &self.variables {
            if v.masked {
                push(&v.value);
            }
        }
        for c in &self.credentials {
            push(&c.password);
        }
        for d in &self.dependencies {
            push(&d.token);
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }

    /// Fill in the defaults GitLab documents for empty values.
    fn normalize(&mut self) {
        for a in &mut self.artifacts {
            if a.artifact_type.is_empty() {
                a.artifact_type = "archive".into();
            }
            if a.artifact_format.is_empty() {
                a.artifact_format = if a.artifact_type == "archive" {
                    "zip"
                } else {
                    "gzip"
                }
                .into();
            }
        }
        for c in &mut self.cache {
            if c.policy.is_empty() {
                c.policy = "pull-push".into();
            }
        }
    }
}

impl fmt::Debug for JobPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobPayload")
            .field("id", &self.id)
            .field("token", &REDACTED)
            .field("allow_git_fetch", &self.allow_git_fetch)
            .field("job_info", &self.job_info)
            .field("git_info", &self.git_info)
            .field("runner_info", &self.runner_info)
            .field("variables", &self.variables)
            .field("steps", &self.steps)
            .field("hooks", &self.hooks)
            .field("image", &self.image)
            .field("services", &self.services)
            .field("artifacts", &self.artifacts)
            .field("cache", &self.cache)
            .field("credentials", &self.credentials)
            .field("dependencies", &self.dependencies)
            .field("features", &self.features)
            .field("run", &self.run.as_ref().map(|_| "…"))
            .finish()
    }
}

/// `job_info`. Older servers send only id, name, stage, project id and name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobInfo {
    #[serde(deserialize_with = "lenient::u64")]
    pub id: u64,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(deserialize_with = "lenient::string")]
    pub stage: String,
    #[serde(deserialize_with = "lenient::u64")]
    pub project_id: u64,
    #[serde(deserialize_with = "lenient::string")]
    pub project_name: String,
    #[serde(deserialize_with = "lenient::string")]
    pub project_full_path: String,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub namespace_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub root_namespace_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub organization_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub user_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub scoped_user_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub pipeline_id: Option<u64>,
    #[serde(deserialize_with = "lenient::f64")]
    pub time_in_queue_seconds: f64,
    /// `"0"`, `"1"`, `"2"`, `"3+"`: the project's jobs running on instance runners.
    #[serde(deserialize_with = "lenient::string")]
    pub project_jobs_running_on_instance_runners_count: String,
    /// The runner's queue as GitLab searched it for this job.
    #[serde(deserialize_with = "lenient::u64")]
    pub queue_size: u64,
    #[serde(deserialize_with = "lenient::u64")]
    pub queue_depth: u64,
}

/// `git_info`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GitInfo {
    /// Clone URL **with the job token as password**. Secret; Debug strips the credentials.
    #[serde(deserialize_with = "lenient::string")]
    pub repo_url: String,
    #[serde(rename = "ref", deserialize_with = "lenient::string")]
    pub git_ref: String,
    #[serde(deserialize_with = "lenient::string")]
    pub sha: String,
    #[serde(deserialize_with = "lenient::string")]
    pub before_sha: String,
    /// `branch` or `tag`.
    #[serde(deserialize_with = "lenient::string")]
    pub ref_type: String,
    #[serde(deserialize_with = "lenient::string_list")]
    pub refspecs: Vec<String>,
    /// 0 = full clone.
    #[serde(deserialize_with = "lenient::u64")]
    pub depth: u64,
    /// `sha1` or `sha256`; empty on older servers.
    #[serde(deserialize_with = "lenient::string")]
    pub repo_object_format: String,
    /// GitLab 18.3+; older servers: use variable `CI_COMMIT_REF_PROTECTED`.
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub protected: Option<bool>,
}

impl GitInfo {
    /// `repo_url` with any `user:password@` removed, safe to log.
    pub fn clean_repo_url(&self) -> String {
        strip_url_credentials(&self.repo_url)
    }
}

/// Remove the userinfo part of a URL (`https://user:pw@host/…` → `https://host/…`).
pub fn strip_url_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl fmt::Debug for GitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitInfo")
            .field("repo_url", &self.clean_repo_url())
            .field("ref", &self.git_ref)
            .field("sha", &self.sha)
            .field("before_sha", &self.before_sha)
            .field("ref_type", &self.ref_type)
            .field("refspecs", &self.refspecs)
            .field("depth", &self.depth)
            .field("repo_object_format", &self.repo_object_format)
            .field("protected", &self.protected)
            .finish()
    }
}

/// `runner_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerInfo {
    /// Effective job timeout in seconds (0 when GitLab did not say).
    #[serde(deserialize_with = "lenient::u64")]
    pub timeout: u64,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub runner_session_url: Option<String>,
}

/// One entry of `variables`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Variable {
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
    /// Predefined/YAML variables; only public ones go to service containers.
    #[serde(deserialize_with = "lenient::bool")]
    pub public: bool,
    /// The value must be replaced by `[MASKED]` in the log.
    #[serde(deserialize_with = "lenient::bool")]
    pub masked: bool,
    /// The value is file content: write it to a file, the variable holds the path.
    #[serde(deserialize_with = "lenient::bool")]
    pub file: bool,
    /// Do not expand `$VAR` references in the value.
    #[serde(deserialize_with = "lenient::bool")]
    pub raw: bool,
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only public, unmasked values are known not to be secrets.
        let value: &dyn fmt::Debug = if self.public && !self.masked {
            &self.value
        } else {
            &REDACTED
        };
        f.debug_struct("Variable")
            .field("key", &self.key)
            .field("value", value)
            .field("public", &self.public)
            .field("masked", &self.masked)
            .field("file", &self.file)
            .field("raw", &self.raw)
            .finish()
    }
}

/// `when:` of steps, artifacts and caches, read with [`lenient::when`].
pub use ferry_config::When;

/// One entry of `steps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    /// `script`, `after_script`, `release`, …
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(deserialize_with = "lenient::string_list")]
    pub script: Vec<String>,
    /// Seconds; 0 when absent.
    #[serde(deserialize_with = "lenient::u64")]
    pub timeout: u64,
    #[serde(deserialize_with = "lenient::when")]
    pub when: When,
    #[serde(deserialize_with = "lenient::bool")]
    pub allow_failure: bool,
}

/// What a step is, from its name in the payload: GitLab sends `script` (before_script merged
/// in), `release` (from `release:`) and `after_script`; other names are kept as they come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Script,
    Release,
    AfterScript,
    #[serde(untagged)]
    Other(String),
}

impl StepKind {
    /// The payload's step name.
    pub fn name(&self) -> &str {
        match self {
            StepKind::Script => "script",
            StepKind::Release => "release",
            StepKind::AfterScript => "after_script",
            StepKind::Other(name) => name,
        }
    }
}

impl Step {
    pub fn kind(&self) -> StepKind {
        match self.name.as_str() {
            "script" => StepKind::Script,
            "release" => StepKind::Release,
            "after_script" => StepKind::AfterScript,
            other => StepKind::Other(other.to_string()),
        }
    }
}

/// One entry of `hooks` (`pre_get_sources_script`, `post_get_sources_script`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hook {
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(deserialize_with = "lenient::string_list")]
    pub script: Vec<String>,
}

/// `image.ports[]` / `services[].ports[]` (web terminal proxy; informational).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Port {
    #[serde(deserialize_with = "lenient::u64")]
    pub number: u64,
    #[serde(deserialize_with = "lenient::string")]
    pub protocol: String,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
}

/// `executor_opts` of an image or service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorOpts {
    #[serde(deserialize_with = "lenient::null_default")]
    pub docker: Option<DockerOpts>,
    /// Other executors' options (`kubernetes`, …), kept so the plan compiler can reject
    /// options it does not implement, as the official runner does.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `executor_opts.docker`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DockerOpts {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub platform: Option<String>,
    /// `"uid[:gid]"` or a number (kept as its decimal string).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub user: Option<String>,
    /// Unknown docker options.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `image`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Image {
    /// May contain `$VARIABLES` to expand.
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    /// `None`: the image's own entrypoint. A plain string is read as a one-element list.
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub ports: Vec<Port>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub executor_opts: ExecutorOpts,
    /// `None` or empty: the runner's configured policy. Values: always, if-not-present, never.
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub pull_policy: Option<Vec<String>>,
}

/// One service variable (no masked/public flags exist for these).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceVariable {
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(deserialize_with = "lenient::string")]
    pub value: String,
}

impl fmt::Debug for ServiceVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Service variables often hold passwords (POSTGRES_PASSWORD) and carry no flags.
        f.debug_struct("ServiceVariable")
            .field("key", &self.key)
            .field("value", &REDACTED)
            .finish()
    }
}

/// One entry of `services`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    /// One or more aliases separated by commas and/or spaces; `None` → derive from the name.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub alias: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub command: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub ports: Vec<Port>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub variables: Vec<ServiceVariable>,
    #[serde(deserialize_with = "lenient::null_default")]
    pub executor_opts: ExecutorOpts,
    #[serde(deserialize_with = "lenient::opt_string_list")]
    pub pull_policy: Option<Vec<String>>,
}

impl Service {
    /// The aliases listed in `alias` (split on commas and whitespace, empty parts dropped).
    pub fn aliases(&self) -> Vec<String> {
        self.alias
            .as_deref()
            .unwrap_or("")
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// One entry of `artifacts`: one upload to perform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Artifact {
    /// `None`: the official runner uses `artifacts`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient::bool")]
    pub untracked: bool,
    #[serde(deserialize_with = "lenient::string_list")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "lenient::string_list")]
    pub exclude: Vec<String>,
    #[serde(deserialize_with = "lenient::when")]
    pub when: When,
    /// Human duration string, passed through to the upload unparsed.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub expire_in: Option<String>,
    /// `archive`, `junit`, … (`archive` when GitLab sent none).
    #[serde(deserialize_with = "lenient::string")]
    pub artifact_type: String,
    /// `zip`, `gzip`, `raw` (`zip` for archives when GitLab sent none).
    #[serde(deserialize_with = "lenient::string")]
    pub artifact_format: String,
}

/// One entry of `cache`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cache {
    /// Already suffixed by GitLab (`-protected` / `-non_protected`); use verbatim.
    #[serde(deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(deserialize_with = "lenient::bool")]
    pub untracked: bool,
    /// `pull-push` (also when GitLab sent none), `pull`, `push`.
    #[serde(deserialize_with = "lenient::string")]
    pub policy: String,
    #[serde(deserialize_with = "lenient::string_list")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "lenient::when")]
    pub when: When,
    #[serde(deserialize_with = "lenient::string_list")]
    pub fallback_keys: Vec<String>,
}

/// One entry of `credentials`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Credential {
    /// Only `registry` exists today.
    #[serde(rename = "type", deserialize_with = "lenient::string")]
    pub kind: String,
    /// Registry host[:port].
    #[serde(deserialize_with = "lenient::string")]
    pub url: String,
    #[serde(deserialize_with = "lenient::string")]
    pub username: String,
    /// Secret (normally the job token).
    #[serde(deserialize_with = "lenient::string")]
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("type", &self.kind)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

/// One entry of `dependencies`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dependency {
    #[serde(deserialize_with = "lenient::u64")]
    pub id: u64,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    /// Token to download this dependency's artifacts with. Secret. Use as given.
    #[serde(deserialize_with = "lenient::string")]
    pub token: String,
    /// Present only when the dependency has a downloadable archive.
    #[serde(deserialize_with = "lenient::null_default")]
    pub artifacts_file: Option<ArtifactsFile>,
}

impl Dependency {
    /// Whether there is an archive to download (the official runner's rule: non-empty filename).
    pub fn has_artifacts(&self) -> bool {
        self.artifacts_file
            .as_ref()
            .is_some_and(|f| !f.filename.is_empty())
    }
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token", &REDACTED)
            .field("artifacts_file", &self.artifacts_file)
            .finish()
    }
}

/// `dependencies[].artifacts_file`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArtifactsFile {
    #[serde(deserialize_with = "lenient::string")]
    pub filename: String,
    #[serde(deserialize_with = "lenient::u64")]
    pub size: u64,
}

/// `features`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobFeatures {
    /// Emit `section_start`/`section_end` markers.
    #[serde(deserialize_with = "lenient::bool")]
    pub trace_sections: bool,
    /// Failure reasons this GitLab accepts in `PUT /jobs/:id`.
    #[serde(deserialize_with = "lenient::string_list")]
    pub failure_reasons: Vec<String>,
    /// Extra token prefixes to mask in the log.
    #[serde(deserialize_with = "lenient::string_list")]
    pub token_mask_prefixes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FULL: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/payloads/full.json"
    ));

    #[test]
    fn full_example_parses() {
        let p = parse_payload(FULL).expect("full.json parses");
        assert_eq!(p.id, 4821);
        assert_eq!(p.token, "glcbt-EXAMPLEjobtoken000000");
        assert!(p.allow_git_fetch);
        assert_eq!(p.job_info.name, "test:integration");
        assert_eq!(p.job_info.stage, "test");
        assert_eq!(p.job_info.project_id, 42);
        assert_eq!(p.job_info.scoped_user_id, None);
        assert_eq!(p.git_info.git_ref, "main");
        assert_eq!(p.git_info.depth, 20);
        assert_eq!(p.git_info.refspecs.len(), 2);
        assert_eq!(p.git_info.protected, Some(true));
        assert_eq!(p.runner_info.timeout, 3600);
        assert_eq!(p.variables.len(), 21);
        let ca = p.variables.iter().find(|v| v.key == "DEPLOY_CA").unwrap();
        assert!(ca.file && !ca.raw && !ca.masked);
        let greeting = p.variables.iter().find(|v| v.key == "GREETING").unwrap();
        assert!(greeting.raw && !greeting.file);
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].name, "script");
        assert_eq!(p.steps[0].when, When::OnSuccess);
        assert_eq!(p.steps[1].when, When::Always);
        assert!(p.steps[1].allow_failure);
        let image = p.image.as_ref().unwrap();
        assert_eq!(image.name, "rust:1.80");
        assert_eq!(image.entrypoint, None);
        assert_eq!(image.pull_policy, None);
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.services[0].aliases(), vec!["db"]);
        assert_eq!(p.services[0].variables[0].key, "POSTGRES_PASSWORD");
        assert_eq!(
            p.services[0].pull_policy.as_deref(),
            Some(&["if-not-present".to_owned()][..])
        );
        assert_eq!(p.artifacts.len(), 2);
        assert_eq!(p.artifacts[0].artifact_type, "archive");
        assert_eq!(p.artifacts[0].artifact_format, "zip");
        assert_eq!(p.artifacts[0].expire_in.as_deref(), Some("1 week"));
        assert_eq!(p.artifacts[1].artifact_type, "junit");
        assert_eq!(p.artifacts[1].when, When::Always);
        assert!(!p.artifacts[1].untracked);
        assert_eq!(p.cache[0].fallback_keys, vec!["cargo-default-protected"]);
        assert_eq!(p.credentials[0].kind, "registry");
        assert!(p.dependencies[0].has_artifacts());
        assert_eq!(
            p.dependencies[0].artifacts_file.as_ref().unwrap().size,
            1048576
        );
        assert!(p.features.trace_sections);
        assert!(
            p.features
                .failure_reasons
                .iter()
                .any(|r| r == crate::failure::FailureReason::RunnerSystemFailure.as_str())
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let p = parse_payload(FULL).unwrap();
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("EXAMPLEjobtoken"),
            "job token in Debug output: {dbg}"
        );
        assert!(
            !dbg.contains("s3cr3t-api-key-value"),
            "masked value in Debug output"
        );
        assert!(
            !dbg.contains("BEGIN CERTIFICATE"),
            "private file variable in Debug output"
        );
        assert!(dbg.contains("https://gitlab.example.com/acme/shop-backend.git"));
        assert!(dbg.contains("shop_test"), "public variables stay visible");
        let pretty = format!("{p:#?}");
        assert!(!pretty.contains("EXAMPLEjobtoken"));
    }

    #[test]
    fn secrets_lists_tokens_and_masked_values() {
        let p = parse_payload(FULL).unwrap();
        let s = p.secrets();
        assert!(s.contains(&"glcbt-EXAMPLEjobtoken000000".to_owned()));
        assert!(s.contains(&"s3cr3t-api-key-value".to_owned()));
        assert_eq!(
            s.iter()
                .filter(|x| x.as_str() == "glcbt-EXAMPLEjobtoken000000")
                .count(),
            1
        );
    }

    #[test]
    fn nulls_missing_keys_and_odd_types_take_defaults() {
        let body = br#"{"id": "17", "token": "t", "job_info": null, "git_info": {"depth": null,
            "refspecs": null, "protected": "false"}, "variables": [{"key": "A", "value": null,
            "masked": "true"}, {"key": "N", "value": 5}], "steps": [{"name": "script",
            "script": "echo one", "when": null, "timeout": "60"}], "image": {"name": "alpine",
            "entrypoint": "/bin/sh", "executor_opts": {"docker": {"user": 1000, "platform": null},
            "kubernetes": {"user": "1"}}}, "services": null, "artifacts": null, "cache": [{}],
            "dependencies": [{"id": 3, "artifacts_file": null}], "features": null,
            "brand_new_key": {"x": [1, 2]}}"#;
        let p = parse_payload(body).unwrap();
        assert_eq!(p.id, 17);
        assert_eq!(p.git_info.depth, 0);
        assert_eq!(p.git_info.protected, Some(false));
        assert_eq!(p.variables[0].value, "");
        assert!(p.variables[0].masked);
        assert_eq!(p.variables[1].value, "5");
        assert_eq!(p.steps[0].script, vec!["echo one"]);
        assert_eq!(p.steps[0].timeout, 60);
        assert_eq!(p.steps[0].when, When::OnSuccess);
        let image = p.image.unwrap();
        assert_eq!(image.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        let docker = image.executor_opts.docker.unwrap();
        assert_eq!(docker.user.as_deref(), Some("1000"));
        assert!(image.executor_opts.other.contains_key("kubernetes"));
        assert!(p.services.is_empty() && p.artifacts.is_empty());
        assert_eq!(p.cache[0].policy, "pull-push");
        assert!(!p.dependencies[0].has_artifacts());
        assert!(p.features.failure_reasons.is_empty());
    }

    #[test]
    fn a_payload_without_a_usable_token_is_refused() {
        for body in [
            &br#"{"id": 5}"#[..],
            br#"{"id": 5, "token": ""}"#,
            br#"{"id": 5, "token": null}"#,
            br#"{"id": 5, "token": "a b"}"#,
            br#"{"id": 5, "token": "tok\nX-Evil: 1"}"#,
        ] {
            assert!(
                matches!(parse_payload(body), Err(PayloadError::NoToken)),
                "{}",
                String::from_utf8_lossy(body)
            );
            // Nothing to report it with either.
            assert!(salvage_job_ref(body).is_none());
        }
        assert_eq!(
            PayloadError::NoToken.to_string(),
            "invalid job payload: no usable job token"
        );
    }

    #[test]
    fn absurd_numbers_decode_without_panicking() {
        let body = br#"{"id": 1, "token": "t", "runner_info": {"timeout": 1e30},
            "steps": [{"name": "script", "script": ["x"], "timeout": 1e20},
                      {"name": "after_script", "script": ["y"], "timeout": 18446744073709551615}],
            "git_info": {"depth": -3}, "job_info": {"time_in_queue_seconds": 1e308,
            "project_id": 1.5e300}}"#;
        let p = parse_payload(body).unwrap();
        assert_eq!(p.runner_info.timeout, u64::MAX, "saturated");
        assert_eq!(p.steps[0].timeout, u64::MAX);
        assert_eq!(p.steps[1].timeout, u64::MAX);
        assert_eq!(p.git_info.depth, 0);
        let p = parse_payload(br#"{"id": 1, "token": "t", "runner_info": {"timeout": "1e30"}}"#)
            .unwrap();
        assert_eq!(
            p.runner_info.timeout, 0,
            "unreadable string: GitLab did not say"
        );
        let p = parse_payload(
            br#"{"id": 1, "token": "t", "runner_info": {"timeout": 18446744073709551615}}"#,
        )
        .unwrap();
        assert_eq!(p.runner_info.timeout, u64::MAX);
    }

    #[test]
    fn unknown_when_means_on_success() {
        let p = parse_payload(
            br#"{"id": 1, "token": "t", "steps": [{"name": "x", "when": "manual"},
                {"name": "y", "when": null}, {"name": "z", "when": 3}, {"name": "a"},
                {"name": "b", "when": "on_failure"}]}"#,
        )
        .unwrap();
        let whens: Vec<When> = p.steps.iter().map(|s| s.when).collect();
        assert_eq!(
            whens,
            [
                When::OnSuccess,
                When::OnSuccess,
                When::OnSuccess,
                When::OnSuccess,
                When::OnFailure
            ]
        );
    }

    #[test]
    fn structural_errors_are_errors() {
        assert!(matches!(parse_payload(b""), Err(PayloadError::Invalid(_))));
        assert!(parse_payload(b"[]").is_err());
        assert!(matches!(
            parse_payload(br#"{"id": 1, "steps": 3}"#),
            Err(PayloadError::Invalid(_))
        ));
        assert!(matches!(
            parse_payload(br#"{"token": "x"}"#),
            Err(PayloadError::NoId)
        ));
        let err = parse_payload(br#"{"id": 1, "steps": [1]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn error_messages_do_not_quote_values() {
        let err = parse_payload(br#"{"id": 1, "variables": "API_KEY=s3cr3t-value"}"#).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("line 1"), "{text}");
        assert_eq!(
            redact_quoted(r#"invalid type: string "abc", expected x"#),
            r#"invalid type: string "…", expected x"#
        );
    }

    #[test]
    fn salvage_reads_id_and_token_from_unusable_payloads() {
        let r = salvage_job_ref(br#"{"id": 9, "token": "tok", "steps": 3}"#).unwrap();
        assert_eq!((r.id, r.token.as_str()), (9, "tok"));
        assert!(salvage_job_ref(br#"{"id": 9}"#).is_none());
        assert!(salvage_job_ref(b"garbage").is_none());
    }

    #[test]
    fn url_credentials_are_stripped() {
        assert_eq!(
            strip_url_credentials("https://a:b@h.example/x@y"),
            "https://h.example/x@y"
        );
        assert_eq!(
            strip_url_credentials("https://h.example/p"),
            "https://h.example/p"
        );
        assert_eq!(strip_url_credentials("no url"), "no url");
        assert_eq!(strip_url_credentials("http://u:p@host"), "http://host");
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("id".to_owned()),
                Just("token".to_owned()),
                Just("steps".to_owned()),
                Just("variables".to_owned()),
                Just("image".to_owned()),
                Just("services".to_owned()),
                Just("artifacts".to_owned()),
                Just("name".to_owned()),
                Just("script".to_owned()),
                Just("git_info".to_owned()),
                Just("executor_opts".to_owned()),
                Just("docker".to_owned()),
                Just("when".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_payload(&bytes);
            let _ = salvage_job_ref(&bytes);
        }

        #[test]
        fn never_panics_on_json(v in arb_json()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let _ = parse_payload(&bytes);
            let _ = salvage_job_ref(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_fixture(path in prop::collection::vec(0usize..32, 1..4), v in arb_json()) {
            let mut doc: serde_json::Value = serde_json::from_slice(FULL).unwrap();
            // Walk down a pseudo-random path and replace what is there with an arbitrary value.
            let mut pointer = String::new();
            let mut cur = &doc;
            for i in path {
                let next = match cur {
                    serde_json::Value::Object(m) if !m.is_empty() => {
                        let (k, v) = m.iter().nth(i % m.len()).unwrap();
                        pointer.push('/');
                        pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                        Some(v)
                    }
                    serde_json::Value::Array(a) if !a.is_empty() => {
                        let n = i % a.len();
                        pointer.push_str(&format!("/{n}"));
                        a.get(n)
                    }
                    _ => None,
                };
                match next { Some(n) => cur = n, None => break }
            }
            *doc.pointer_mut(&pointer).unwrap() = v;
            let bytes = serde_json::to_vec(&doc).unwrap();
            if let Ok(p) = parse_payload(&bytes) {
                let _ = format!("{p:?}");
            }
        }
    }
}
