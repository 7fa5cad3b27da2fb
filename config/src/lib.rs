//! ferry-config: gitlab-runner's `config.toml`, read unchanged, plus ferry's own
//! `[[runners.deploy.targets]]`.
//!
//! Two phases: a raw model that mirrors the file (everything optional, unknown keys kept with their
//! line for warnings), then the resolved [`Config`] the rest of ferry sees (defaults applied,
//! values validated). This crate is synchronous and reads nothing but the file it is given and the
//! process environment (for `$VAR` in `url`/`token`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A runner token or other secret: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The first 8 characters, as gitlab-runner shows a token (`glrt-abc`).
    pub fn short(&self) -> &str {
        let end = self
            .0
            .char_indices()
            .nth(8)
            .map(|(i, _)| i)
            .unwrap_or(self.0.len());
        &self.0[..end]
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}…)", self.short())
    }
}

/// The whole resolved file.
#[derive(Debug, Clone)]
pub struct Config {
    pub global: GlobalSection,
    pub runners: Vec<RunnerSection>,
    /// Unknown keys (and accepted-but-not-implemented ones), each with its line.
    pub warnings: Vec<ConfigWarning>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Runner,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct GlobalSection {
    pub concurrent: usize,
    pub check_interval: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub listen_address: Option<String>,
    pub shutdown_timeout: Duration,
    pub connection_max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RunnerSection {
    pub name: String,
    pub url: String,
    pub id: Option<u64>,
    pub token: Secret,
    /// Unix seconds; None when absent.
    pub token_obtained_at: Option<i64>,
    /// Unix seconds; None when absent or "never expires" (0001-01-01T00:00:00Z).
    pub token_expires_at: Option<i64>,
    pub executor: String,
    /// 0 = unlimited.
    pub limit: usize,
    pub request_concurrency: usize,
    /// Bytes (the file says kilobytes).
    pub output_limit: u64,
    pub builds_dir: String,
    pub cache_dir: String,
    /// `KEY=value` entries, in file order.
    pub environment: Vec<(String, String)>,
    pub clone_url: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub shell: Option<String>,
    pub debug_trace_disabled: bool,
    pub unhealthy_requests_limit: u32,
    pub unhealthy_interval: Duration,
    pub job_status_final_update_retry_limit: u32,
    pub feature_flags: BTreeMap<String, bool>,
    pub docker: DockerSection,
    pub cache: CacheSection,
    pub deploy: DeploySection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, Default)]
pub struct DockerSection {
    /// None = `$DOCKER_HOST`, else the local unix socket.
    pub host: Option<String>,
    pub tls_verify: bool,
    pub tls_cert_path: Option<PathBuf>,
    pub image: Option<String>,
    /// Never empty after resolution (default `[always]`).
    pub pull_policy: Vec<PullPolicy>,
    pub allowed_pull_policies: Vec<PullPolicy>,
    pub allowed_images: Vec<String>,
    pub allowed_services: Vec<String>,
    pub privileged: bool,
    pub services_privileged: Option<bool>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub cache_dir: Option<PathBuf>,
    pub disable_cache: bool,
    pub network_mode: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Vec<String>,
    /// Bytes.
    pub memory: Option<u64>,
    pub memory_swap: Option<u64>,
    pub memory_reservation: Option<u64>,
    /// CPUs, e.g. 1.5.
    pub cpus: Option<f64>,
    /// Bytes; 0 = Docker's default.
    pub shm_size: u64,
    /// None = don't wait (-1 in the file).
    pub wait_for_services_timeout: Option<Duration>,
    pub group_add: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub hostname: Option<String>,
    pub disable_entrypoint_overwrite: bool,
    pub oom_kill_disable: bool,
    pub services_limit: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct CacheSection {
    /// None = local cache only.
    pub kind: Option<String>,
    pub path: Option<String>,
    pub shared: bool,
    pub max_uploaded_archive_size: u64,
}

/// ferry's own: the built-in deploy step (deploy-step.md 4.1 and 4.11).
#[derive(Debug, Clone)]
pub struct DeploySection {
    /// The reserved image name that triggers the deploy step (default `ferry:deploy`).
    pub image: String,
    pub targets: Vec<DeployTarget>,
}

#[derive(Debug, Clone)]
pub struct DeployTarget {
    pub name: String,
    /// Globs on CI_ENVIRONMENT_NAME.
    pub environments: Vec<String>,
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// Allowlist of namespace globs.
    pub namespaces: Vec<String>,
    pub default_namespace: Option<String>,
    pub cluster_scoped: bool,
    pub protected_refs_only: bool,
}

/// A key ferry does not know (or knows but does not implement), with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.key, self.message)
    }
}

/// A file that cannot be used: names the file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// Parse and resolve a config file's text. `file` is only used in error messages.
pub fn from_toml_str(_text: &str, _file: &str) -> Result<Config, ConfigError> {
    Err(ConfigError::Invalid {
        file: _file.into(),
        line: 0,
        key: String::new(),
        message: "not implemented yet".into(),
    })
}

/// Read and resolve a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_toml_str(&text, &path.display().to_string())
}
