//! A repository's `.gitlab-ci.yml` read as GitLab reads it: given the pipeline's ref, source,
//! variables and changed paths, the jobs GitLab would create (with what it would send a runner
//! for each) and, for every job left out, why. Pure: files of the repository in, data out; no
//! Docker, no network. See docs/pipeline.md for what is and is not supported.
//!
//! ```no_run
//! use ferry_pipeline::{plan, Input, RefKind};
//! let input = Input::new("main", RefKind::Branch, "push");
//! let pipeline = plan(std::path::Path::new("."), &input).unwrap();
//! for job in &pipeline.jobs {
//!     println!("{} ({})", job.name, job.stage);
//! }
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod expr;
pub mod job;
pub mod load;
mod plan;
pub mod rules;
pub mod yaml;

pub use expr::Vars;
pub use job::{
    AllowFailure, Artifacts, Cache, CacheKey, DockerOptions, Environment, Hook, Image, Need,
    Parallel, Port, Retry, Service, Variable, When,
};
pub use load::GitLabRequest;

/// A configuration GitLab would refuse, or a file that cannot be read: the message (GitLab's
/// own wording where it has one) and, when known, the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub message: String,
    pub at: Option<yaml::Pos>,
}

impl Error {
    pub fn new(message: String) -> Error {
        Error { message, at: None }
    }
    pub fn at(pos: yaml::Pos, message: String) -> Error {
        Error {
            message,
            at: Some(pos),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(pos) => write!(f, "{pos}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }
}

/// The pipeline to plan. The caller computes the predefined variables (from git, the project);
/// [`plan`] adds only `CI_COMMIT_REF_NAME`, `CI_COMMIT_BRANCH`/`CI_COMMIT_TAG`,
/// `CI_PIPELINE_SOURCE` and `CI_PROJECT_PATH` from the fields below when `predefined` lacks them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The branch or tag name.
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub ref_kind: RefKind,
    /// `CI_PIPELINE_SOURCE`: `push`, `web`, `schedule`, `merge_request_event`, `api`,
    /// `trigger`, `pipeline`, `parent_pipeline`, `chat`, `external`, …
    #[serde(default = "default_source")]
    pub source: String,
    /// `group/project`, for `only: refs: [branch@group/project]`.
    #[serde(default)]
    pub project_path: Option<String>,
    /// Predefined variables: the YAML's variables override them.
    #[serde(default)]
    pub predefined: Vars,
    /// Project, group, instance and pipeline (trigger, schedule, manual) variables: they
    /// override the YAML's.
    #[serde(default)]
    pub variables: Vars,
    /// Paths changed by the push (for `changes`); `None`: unknown, and `changes` is true, as
    /// GitLab's is for pipelines without a diff.
    #[serde(default)]
    pub changed_paths: Option<Vec<String>>,
    /// The configuration file (default `.gitlab-ci.yml`).
    #[serde(default)]
    pub config_path: Option<String>,
}

fn default_source() -> String {
    "push".into()
}

impl Input {
    pub fn new(ref_name: &str, ref_kind: RefKind, source: &str) -> Input {
        Input {
            ref_name: ref_name.into(),
            ref_kind,
            source: source.into(),
            project_path: None,
            predefined: Vars::new(),
            variables: Vars::new(),
            changed_paths: None,
            config_path: None,
        }
    }
}

/// The pipeline GitLab would create.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// Why GitLab would create no pipeline at all (workflow rules, no job left); then `jobs`
    /// is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_created: Option<String>,
    pub stages: Vec<String>,
    /// In GitLab's order: by stage, then as defined.
    pub jobs: Vec<Job>,
    /// Jobs of the configuration that are not in this pipeline, in definition order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Excluded>,
}

/// A job left out, and why (`rules`, `only`/`except`, `when: never`).
#[derive(Debug, Clone, Serialize)]
pub struct Excluded {
    pub name: String,
    pub reason: String,
}

/// One job of the pipeline, with the fields GitLab puts in its payload.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub stage: String,
    /// Index of `stage` in the pipeline's stages.
    pub stage_idx: usize,
    pub when: When,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_in: Option<String>,
    pub allow_failure: AllowFailure,
    /// `None`: runs after the previous stages; `Some`: after these jobs only (`needs: []`:
    /// at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<Need>>,
    /// Jobs whose artifacts to download; `None`: every job of the previous stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before_script: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_script: Vec<String>,
    /// YAML variables: global, then the job's, the matched rule's and `parallel:matrix`'s over
    /// them. The caller adds predefined and project variables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
    /// As written (`1h 30m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `timeout` in seconds (GitLab's job timeout before the runner's and project's limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Parallel>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interruptible: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<String>,
    /// A trigger job (downstream pipeline): GitLab runs it, no runner does; not run by ferry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<serde_json::Value>,
    /// The matched rule, when the job has `rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Where the job is defined (`file:line`).
    pub defined_at: String,
}

/// Plan the pipeline of the repository at `repo` for `input`. An include only GitLab can read
/// (`project`, `remote`, `template`, `component`) is an error naming it: see [`gitlab_request`].
pub fn plan(repo: &Path, input: &Input) -> Result<Pipeline, Error> {
    plan::plan(&load::Repo::new(repo), input, None)
}

/// For a configuration with includes only GitLab can read: the content to send to GitLab's CI
/// lint API (`POST /api/v4/projects/:id/ci/lint`), with the repository's own includes already
/// merged in from its files (so uncommitted changes count) and the others left for GitLab.
/// `None` when there is no such include. Its `merged_yaml` then goes to [`plan_merged`].
pub fn gitlab_request(repo: &Path, input: &Input) -> Result<Option<GitLabRequest>, Error> {
    plan::gitlab_request(&load::Repo::new(repo), input)
}

/// [`plan`], from the `merged_yaml` GitLab answered to [`gitlab_request`]'s content. Jobs and
/// keys of the repository's files keep their `file:line`; those of files GitLab read are at
/// [`load::MERGED_FILE`]`:line`.
pub fn plan_merged(repo: &Path, input: &Input, merged_yaml: &str) -> Result<Pipeline, Error> {
    plan::plan(&load::Repo::new(repo), input, Some(merged_yaml))
}
