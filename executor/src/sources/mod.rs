//! Getting the job's sources on the runner host, with the git CLI, as gitlab-runner's
//! `get_sources` stage does inside its helper container.
//!
//! The runner turns the payload's `git_info` and the `GIT_*` variables into a [`SourceSpec`]
//! ([`GitVariables::resolve`] does the variable part), then calls [`get_sources`] before the
//! build container starts. The project dir it fills is what the engine mounts at
//! `CI_PROJECT_DIR`.

mod checks;
mod confine;
mod git;
mod hooks;
mod run;
mod submodules;

use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

pub use confine::available as confinement_available;
pub use hooks::{HookConfig, RefusedKey, carried_git_config};
pub use run::{MIN_GIT_VERSION, check_git, get_sources};

/// `GIT_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GitStrategy {
    /// Start from an empty project dir every time.
    Clone,
    /// Reuse the previous checkout of the project dir when there is one.
    Fetch,
    /// Leave the project dir as it is (created if missing); no git at all.
    None,
    /// Empty the project dir; no git at all.
    Empty,
}

/// `git_info.ref_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefType {
    Branch,
    Tag,
}

impl RefType {
    pub fn parse(s: &str) -> RefType {
        if s == "tag" {
            RefType::Tag
        } else {
            RefType::Branch
        }
    }
}

/// `GIT_SUBMODULE_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmoduleStrategy {
    None,
    Normal,
    Recursive,
}

/// Everything [`get_sources`] needs. No GitLab types: the runner fills it from the payload.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct SourceSpec {
    /// `git_info.repo_url`, credentials included
    /// (`https://gitlab-ci-token:TOKEN@host/group/project.git`). The credentials are only ever
    /// given to git through the environment of its process; they never reach `.git/config`,
    /// a command line or the log.
    #[serde(serialize_with = "redacted_url")]
    pub repo_url: String,
    pub sha: String,
    pub before_sha: String,
    /// `git_info.ref` (branch or tag name).
    pub ref_name: String,
    pub ref_type: RefType,
    /// `git_info.refspecs`, fetched as given.
    pub refspecs: Vec<String>,
    /// Shallow depth; 0 = full history. `git_info.depth`, overridden by `GIT_DEPTH`.
    pub depth: u32,
    /// `git_info.repo_object_format` when it is not `sha1` (e.g. `sha256`).
    pub object_format: Option<String>,
    pub strategy: GitStrategy,
    /// `GIT_CHECKOUT` (default true).
    pub checkout: bool,
    /// `GIT_CLEAN_FLAGS` split into words; empty = no `git clean` (`none`).
    pub clean_flags: Vec<String>,
    /// `GIT_FETCH_EXTRA_FLAGS` split into words (default `--prune --quiet`).
    pub fetch_extra_flags: Vec<String>,
    pub submodule_strategy: SubmoduleStrategy,
    /// `GIT_SUBMODULE_DEPTH` (default: `depth`); 0 = full.
    pub submodule_depth: u32,
    /// `GIT_SUBMODULE_UPDATE_FLAGS` split into words.
    pub submodule_update_flags: Vec<String>,
    /// `GIT_SUBMODULE_PATHS` split into words (`:(exclude)x` entries allowed).
    pub submodule_paths: Vec<String>,
    /// Fetch and check out Git LFS objects after the checkout (`GIT_LFS_SKIP_SMUDGE` unset or
    /// false).
    pub lfs: bool,
    /// Extra `git -c` settings for every git command ferry runs, e.g.
    /// `http.https://gitlab.example.com/.sslCAInfo` for a private CA. Given through the
    /// environment, never written to the repository.
    pub git_config: Vec<(String, String)>,
    /// `GIT_SUBMODULE_FORCE_HTTPS`: the runner's GitLab URL (`clone_url`, else `url`) that
    /// submodule URLs in SSH form (`git@host:g/p.git`, `ssh://git@host[:port]/g/p.git`) are
    /// rewritten to, with the SSH host and port (`CI_SERVER_SHELL_SSH_HOST`/`_PORT`, else
    /// `CI_SERVER_HOST`). The job token's header is scoped to this URL's origin too.
    /// docs/sources-cache-artifacts.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_https: Option<ForceHttps>,
    /// What the job's `pre_get_sources_script` configured with `git config --global`, after the
    /// allow-list ([`carried_git_config`]); filled when the hook has run, never by the plan.
    #[serde(skip)]
    pub hook_git_config: Vec<(String, String)>,
    /// The checkout on the host (what the engine mounts at `CI_PROJECT_DIR`).
    pub project_dir: PathBuf,
    /// How the project dir is called inside the container (`/builds/group/project`); used in
    /// log lines instead of the host path. `None`: the host path is shown.
    pub display_dir: Option<String>,
    /// A bare repository per project on the host (e.g. `<cache_dir>/git/project-42.git`)
    /// that keeps every object fetched so far: the remote is asked only for what is new, and
    /// the project dir is filled from this local copy. `None`: fetch straight from the remote.
    pub object_cache_dir: Option<PathBuf>,
}

/// Where `GIT_SUBMODULE_FORCE_HTTPS` sends SSH submodule URLs ([`SourceSpec::force_https`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForceHttps {
    /// `https://gitlab.example.com` (no credentials, no trailing `/`).
    pub base: String,
    pub ssh_host: String,
    /// Empty or `22`: the default port.
    pub ssh_port: String,
}

impl ForceHttps {
    /// gitlab-runner's `insteadOf` rewrites (`helpers/url/gitauth.go`, `sshInsteadOfs`), as
    /// `(url.<base>.insteadOf, value)` pairs: the default port covers the scp-like and the
    /// `ssh://` forms, another port only `ssh://git@host:port`.
    pub fn insteadofs(&self) -> Vec<(String, String)> {
        let base = self.base.trim_end_matches('/');
        let host = &self.ssh_host;
        if self.ssh_port.is_empty() || self.ssh_port == "22" {
            vec![
                (format!("url.{base}/.insteadOf"), format!("git@{host}:")),
                (format!("url.{base}.insteadOf"), format!("ssh://git@{host}")),
            ]
        } else {
            vec![(
                format!("url.{base}.insteadOf"),
                format!("ssh://git@{host}:{}", self.ssh_port),
            )]
        }
    }
}

fn redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&git::strip_credentials(url))
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("repo_url", &git::strip_credentials(&self.repo_url))
            .field("sha", &self.sha)
            .field("ref_name", &self.ref_name)
            .field("ref_type", &self.ref_type)
            .field("refspecs", &self.refspecs)
            .field("depth", &self.depth)
            .field("strategy", &self.strategy)
            .field("checkout", &self.checkout)
            .field("clean_flags", &self.clean_flags)
            .field("submodule_strategy", &self.submodule_strategy)
            .field("project_dir", &self.project_dir)
            .field("object_cache_dir", &self.object_cache_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A `GIT_*` variable has a value gitlab-runner would refuse too.
    #[error("{name}: invalid value {value:?}")]
    InvalidVariable { name: &'static str, value: String },
    /// The spec cannot be used (empty sha, bad URL...).
    #[error("{0}")]
    InvalidSpec(String),
    /// A git command failed; `command` has no credentials in it, `output` is masked.
    #[error("git {command} failed ({status}): {output}")]
    Git {
        command: String,
        status: String,
        output: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// git refused a transport ferry does not allow on the host (a submodule URL with ssh,
    /// `file://`, a local path, `ext::`): docs/sources-cache-artifacts.md#host-safety.
    #[error(
        "git {command}: a URL uses the {transport:?} transport, which ferry's host git refuses (only https, and http when the project's URL is http; never ssh, file:// or local paths, ext::), so no connection was made; for SSH submodule URLs on the GitLab host set GIT_SUBMODULE_FORCE_HTTPS=true, other submodules need an https URL"
    )]
    TransportRefused { command: String, transport: String },
    /// The repository has Git LFS files and the host has no git-lfs.
    #[error(
        "this repository uses Git LFS ({files} files with filter=lfs, e.g. {example:?}) but git-lfs is not installed on the runner host: install it (Debian: apt-get install git-lfs), or set GIT_LFS_SKIP_SMUDGE=1 to keep the pointer files"
    )]
    LfsMissing { files: usize, example: String },
    #[error("cancelled")]
    Cancelled,
}

/// The `GIT_*` variables of a job resolved to the values [`SourceSpec`] wants, with
/// gitlab-runner's defaults and parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitVariables {
    pub strategy: GitStrategy,
    pub depth: u32,
    pub checkout: bool,
    pub clean_flags: Vec<String>,
    pub fetch_extra_flags: Vec<String>,
    pub submodule_strategy: SubmoduleStrategy,
    pub submodule_depth: u32,
    pub submodule_update_flags: Vec<String>,
    pub submodule_paths: Vec<String>,
    /// `GIT_LFS_SKIP_SMUDGE` is not true.
    pub lfs: bool,
    /// `GIT_SUBMODULE_FORCE_HTTPS` is true (Go's `strconv.ParseBool`; other values: false,
    /// with a warning).
    pub submodule_force_https: bool,
    /// Values that were ignored, for a warning in the job log.
    pub warnings: Vec<String>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// `none` (any case) means "no flags"; unset means the default.
fn flags(value: Option<&str>, default: &str) -> Vec<String> {
    match value {
        None => words(default),
        Some(v) if v.trim().eq_ignore_ascii_case("none") => Vec::new(),
        Some(v) if v.trim().is_empty() => words(default),
        Some(v) => words(v),
    }
}

impl GitVariables {
    /// `get` returns a job variable's value; `allow_git_fetch` is the payload's flag and
    /// `payload_depth` is `git_info.depth`.
    pub fn resolve<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        allow_git_fetch: bool,
        payload_depth: u32,
    ) -> Result<GitVariables, SourceError> {
        let mut warnings = Vec::new();
        let strategy = match get("GIT_STRATEGY").map(str::trim) {
            Some("clone") => GitStrategy::Clone,
            Some("fetch") => GitStrategy::Fetch,
            Some("none") => GitStrategy::None,
            Some("empty") => GitStrategy::Empty,
            other => {
                if let Some(v) = other.filter(|v| !v.is_empty()) {
                    warnings.push(format!(
                        "GIT_STRATEGY: unknown value {v:?}, using the default"
                    ));
                }
                if allow_git_fetch {
                    GitStrategy::Fetch
                } else {
                    GitStrategy::Clone
                }
            }
        };
        let depth = match get("GIT_DEPTH").map(str::trim).filter(|v| !v.is_empty()) {
            None => payload_depth,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
                Ok(_) => 0,
                Err(_) => {
                    warnings.push(format!(
                        "GIT_DEPTH: {v:?} is not a number, using {payload_depth}"
                    ));
                    payload_depth
                }
            },
        };
        let no_git = matches!(strategy, GitStrategy::None | GitStrategy::Empty);
        let checkout = match get("GIT_CHECKOUT").map(str::trim).filter(|v| !v.is_empty()) {
            None => true,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" | "yes" => true,
                "false" | "0" | "f" | "no" => false,
                _ => {
                    warnings.push(format!("GIT_CHECKOUT: {v:?} is not a boolean, using true"));
                    true
                }
            },
        } && !no_git;
        let submodule_strategy = match get("GIT_SUBMODULE_STRATEGY").map(str::trim) {
            None | Some("") | Some("none") => SubmoduleStrategy::None,
            Some("normal") => SubmoduleStrategy::Normal,
            Some("recursive") => SubmoduleStrategy::Recursive,
            Some(v) => {
                return Err(SourceError::InvalidVariable {
                    name: "GIT_SUBMODULE_STRATEGY",
                    value: v.to_string(),
                });
            }
        };
        let submodule_strategy = if no_git {
            SubmoduleStrategy::None
        } else {
            submodule_strategy
        };
        let submodule_depth = match get("GIT_SUBMODULE_DEPTH")
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => depth,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
                Ok(_) => 0,
                Err(_) => {
                    warnings.push(format!(
                        "GIT_SUBMODULE_DEPTH: {v:?} is not a number, using {depth}"
                    ));
                    depth
                }
            },
        };
        let lfs = match get("GIT_LFS_SKIP_SMUDGE")
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => true,
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" | "yes" => false,
                "false" | "0" | "f" | "no" => true,
                _ => {
                    warnings.push(format!(
                        "GIT_LFS_SKIP_SMUDGE: {v:?} is not a boolean, using false"
                    ));
                    true
                }
            },
        };
        let submodule_force_https = match get("GIT_SUBMODULE_FORCE_HTTPS")
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            None => false,
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
            Some(v) => {
                warnings.push(format!(
                    "GIT_SUBMODULE_FORCE_HTTPS: {v:?} is not a boolean, using false"
                ));
                false
            }
        };
        let submodule_paths = words(get("GIT_SUBMODULE_PATHS").unwrap_or(""));
        for p in &submodule_paths {
            let path = p.strip_prefix(":(exclude)").unwrap_or(p);
            if path.starts_with('-') {
                return Err(SourceError::InvalidVariable {
                    name: "GIT_SUBMODULE_PATHS",
                    value: p.clone(),
                });
            }
        }
        Ok(GitVariables {
            strategy,
            depth,
            checkout,
            clean_flags: flags(get("GIT_CLEAN_FLAGS"), "-ffdx"),
            fetch_extra_flags: flags(get("GIT_FETCH_EXTRA_FLAGS"), "--prune --quiet"),
            submodule_strategy,
            submodule_depth,
            submodule_update_flags: words(get("GIT_SUBMODULE_UPDATE_FLAGS").unwrap_or("")),
            submodule_paths,
            lfs,
            submodule_force_https,
            warnings,
        })
    }
}

impl GitVariables {
    /// Copies the resolved values into `spec` (the fields the variables control).
    pub fn apply(&self, spec: &mut SourceSpec) {
        spec.strategy = self.strategy;
        spec.depth = self.depth;
        spec.checkout = self.checkout;
        spec.clean_flags = self.clean_flags.clone();
        spec.fetch_extra_flags = self.fetch_extra_flags.clone();
        spec.submodule_strategy = self.submodule_strategy;
        spec.submodule_depth = self.submodule_depth;
        spec.submodule_update_flags = self.submodule_update_flags.clone();
        spec.submodule_paths = self.submodule_paths.clone();
        spec.lfs = self.lfs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], allow_fetch: bool) -> Result<GitVariables, SourceError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        GitVariables::resolve(|k| map.get(k).copied(), allow_fetch, 20)
    }

    #[test]
    fn defaults_match_gitlab_runner() {
        let v = resolve(&[], true).unwrap();
        assert_eq!(v.strategy, GitStrategy::Fetch);
        assert_eq!(v.depth, 20);
        assert!(v.checkout);
        assert_eq!(v.clean_flags, ["-ffdx"]);
        assert_eq!(v.fetch_extra_flags, ["--prune", "--quiet"]);
        assert_eq!(v.submodule_strategy, SubmoduleStrategy::None);
        assert_eq!(v.submodule_depth, 20);
        assert_eq!(resolve(&[], false).unwrap().strategy, GitStrategy::Clone);
    }

    #[test]
    fn variables_override() {
        let v = resolve(
            &[
                ("GIT_STRATEGY", "clone"),
                ("GIT_DEPTH", "3"),
                ("GIT_CHECKOUT", "false"),
                ("GIT_CLEAN_FLAGS", "none"),
                ("GIT_FETCH_EXTRA_FLAGS", "--no-tags"),
                ("GIT_SUBMODULE_STRATEGY", "recursive"),
                ("GIT_SUBMODULE_DEPTH", "1"),
                ("GIT_SUBMODULE_UPDATE_FLAGS", "--remote --jobs 4"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(v.strategy, GitStrategy::Clone);
        assert_eq!(v.depth, 3);
        assert!(!v.checkout);
        assert!(v.clean_flags.is_empty());
        assert_eq!(v.fetch_extra_flags, ["--no-tags"]);
        assert_eq!(v.submodule_strategy, SubmoduleStrategy::Recursive);
        assert_eq!(v.submodule_depth, 1);
        assert_eq!(v.submodule_update_flags, ["--remote", "--jobs", "4"]);
        assert_eq!(resolve(&[("GIT_DEPTH", "0")], true).unwrap().depth, 0);
    }

    #[test]
    fn none_strategy_disables_checkout_and_submodules() {
        let v = resolve(
            &[
                ("GIT_STRATEGY", "none"),
                ("GIT_SUBMODULE_STRATEGY", "normal"),
            ],
            true,
        )
        .unwrap();
        assert!(!v.checkout);
        assert_eq!(v.submodule_strategy, SubmoduleStrategy::None);
    }

    #[test]
    fn bad_values() {
        assert!(matches!(
            resolve(&[("GIT_SUBMODULE_STRATEGY", "sideways")], true),
            Err(SourceError::InvalidVariable {
                name: "GIT_SUBMODULE_STRATEGY",
                ..
            })
        ));
        let v = resolve(
            &[("GIT_STRATEGY", "teleport"), ("GIT_DEPTH", "lots")],
            false,
        )
        .unwrap();
        assert_eq!(v.strategy, GitStrategy::Clone);
        assert_eq!(v.depth, 20);
        assert_eq!(v.warnings.len(), 2);
    }

    #[test]
    fn debug_and_serialize_hide_the_token() {
        let spec = SourceSpec {
            repo_url: "https://gitlab-ci-token:glcbt-SECRET@gitlab.example.com/g/p.git".into(),
            sha: "a".repeat(40),
            before_sha: String::new(),
            ref_name: "main".into(),
            ref_type: RefType::Branch,
            refspecs: vec![],
            depth: 0,
            object_format: None,
            strategy: GitStrategy::Clone,
            checkout: true,
            clean_flags: vec![],
            fetch_extra_flags: vec![],
            submodule_strategy: SubmoduleStrategy::None,
            submodule_depth: 0,
            submodule_update_flags: vec![],
            submodule_paths: vec![],
            lfs: true,
            git_config: vec![],
            force_https: None,
            hook_git_config: vec![],
            project_dir: "/tmp/p".into(),
            display_dir: None,
            object_cache_dir: None,
        };
        assert!(!format!("{spec:?}").contains("SECRET"));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("SECRET"));
        assert!(json.contains("https://gitlab.example.com/g/p.git"));
    }
}
