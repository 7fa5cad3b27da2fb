//! ferry-config: gitlab-runner's `config.toml`, read unchanged, plus ferry's own
//! `[[runners.deploy.targets]]`.
//!
//! Two phases: the file is parsed with `toml_edit` (which keeps every key's position), then each
//! table is read key by key (`walk.rs`: type checks, unknown keys kept with their line for
//! warnings) and resolved into the [`Config`] the rest of ferry sees (`resolve.rs`, `docker.rs`:
//! defaults applied, units converted, values validated). `edit.rs` rewrites the file in place for
//! register/unregister/token rotation; `system_id.rs` handles `.runner_system_id`.
//!
//! This crate is synchronous and reads nothing but the files it is given and the process
//! environment (for `$VAR` in `url`/`token`). The key-by-key reference is docs/configuration.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod certs;
mod container;
mod docker;
pub mod duration;
pub mod edit;
pub mod joblog;
pub mod keys;
pub mod platform;
mod pull_policy;
mod resolve;
mod system_id;
pub mod token;
mod units;
mod walk;
mod when;

pub use container::{
    Device, GpuRequest, LOG_OPTIONS_ALLOWED, parse_device, parse_gpus, parse_ulimit,
};
pub use edit::{
    NewDocker, NewRunner, RunnerIdent, add_runner, add_runner_table, default_config_path,
    gitlab_runner_config_path, layout_runner_table, remove_runners, runner_table,
    set_runner_credentials, update_token,
};
pub use pull_policy::PullPolicy;
pub use system_id::{SYSTEM_ID_FILE, SystemIdState, load_or_create_system_id, system_id_state};
pub use when::When;

/// A runner token or other secret: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// How ferry names the token in log lines and messages: [`token::display_prefix`]
    /// (`glrt-abc`).
    pub fn short(&self) -> &str {
        token::display_prefix(&self.0)
    }
    /// gitlab-runner's short token, `CI_RUNNER_SHORT_TOKEN`: [`token::ci_short_token`].
    pub fn ci_short_token(&self) -> &str {
        token::ci_short_token(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}…)", self.short())
    }
}

/// A credential of which not even a prefix may be shown (`SecretKey`, `AccountKey`): `Debug`
/// prints `<redacted>` (or `<empty>`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redacted(pub String);

impl Redacted {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
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
    /// Age after which the connections to GitLab are replaced; `None` = never (≤ 0 in the file).
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
    /// `pre_build_script` / `post_build_script`: commands run in the build container before and
    /// after the commands of each script step (`script`, `release`), in the same shell.
    pub pre_build_script: Option<String>,
    pub post_build_script: Option<String>,
    /// `pre_get_sources_script` / `post_get_sources_script`: commands run before and after git
    /// gets the sources, in a short-lived container of the job's image, never on the host
    /// (docs/sources-cache-artifacts.md, "get_sources hooks").
    pub pre_get_sources_script: Option<String>,
    pub post_get_sources_script: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub shell: Option<String>,
    pub debug_trace_disabled: bool,
    pub unhealthy_requests_limit: u32,
    pub unhealthy_interval: Duration,
    pub job_status_final_update_retry_limit: u32,
    pub feature_flags: BTreeMap<String, bool>,
    /// `[runners.custom_build_dir] enabled`: may jobs set `GIT_CLONE_PATH` (under `builds_dir`)?
    /// Default true (the docker executor's default).
    pub custom_build_dir_enabled: bool,
    pub docker: DockerSection,
    pub cache: CacheSection,
    pub deploy: DeploySection,
}

/// `[runners.docker]`. `Default` is what an empty `[runners.docker]` resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSection {
    /// None = `$DOCKER_HOST`, else the local unix socket.
    pub host: Option<String>,
    pub tls_verify: bool,
    pub tls_cert_path: Option<PathBuf>,
    pub image: Option<String>,
    /// Never empty after resolution (default `[always]`). A list is a fallback chain.
    pub pull_policy: Vec<PullPolicy>,
    /// Policies a job may request; never empty after resolution (default = `pull_policy`).
    pub allowed_pull_policies: Vec<PullPolicy>,
    /// Doublestar globs, `!` negates; empty = all allowed. Checked to be valid globs.
    pub allowed_images: Vec<String>,
    pub allowed_services: Vec<String>,
    pub privileged: bool,
    pub services_privileged: Option<bool>,
    /// Doublestar globs (no negation, as in gitlab-runner): the job images and services that run
    /// privileged when `privileged` / `services_privileged` is on. Empty = all of them.
    pub allowed_privileged_images: Vec<String>,
    pub allowed_privileged_services: Vec<String>,
    pub user: Option<String>,
    /// Users a job's `image:docker:user` may name; empty = any (but see gitlab-runner's rule in
    /// `ferry_executor`: with `user` set, only that user).
    pub allowed_users: Vec<String>,
    /// ferry's own key: `HostConfig.PidsLimit` of build and service containers. None = not set
    /// (the daemon's default, normally unlimited); `Some(-1)` = unlimited.
    pub pids_limit: Option<i64>,
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
    /// None = don't wait (negative in the file); default 30 s.
    pub wait_for_services_timeout: Option<Duration>,
    pub group_add: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub hostname: Option<String>,
    pub disable_entrypoint_overwrite: bool,
    pub oom_kill_disable: bool,
    /// None = unlimited (-1 in the file).
    pub services_limit: Option<usize>,
    /// The container options gitlab-runner maps onto the engine's `HostConfig`, the per-job
    /// network and the containers' labels (docs/configuration.md, `[runners.docker]`).
    pub containers: ContainerOptions,
    /// `[[runners.docker.services]]`: started for every job, before the job's own services.
    pub services: Vec<RunnerService>,
}

/// `[runners.docker]` keys that become container, network or label settings. Values are
/// checked at load time; empty strings and zeros mean "not set", as in gitlab-runner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerOptions {
    /// Mount point → tmpfs options, for the build container / service containers.
    pub tmpfs: BTreeMap<String, String>,
    pub services_tmpfs: BTreeMap<String, String>,
    /// `PathOnHost[:PathInContainer[:permissions]]`, checked at load.
    pub devices: Vec<String>,
    /// Service image glob → devices.
    pub services_devices: BTreeMap<String, Vec<String>>,
    pub device_cgroup_rules: Vec<String>,
    /// `docker run --gpus` syntax (`all`, `2`, `count=1,capabilities=utility`), checked at load.
    pub gpus: Option<String>,
    pub service_gpus: Option<String>,
    pub services_security_opt: Vec<String>,
    pub runtime: Option<String>,
    pub userns_mode: Option<String>,
    pub pid_mode: Option<String>,
    pub ipc_mode: Option<String>,
    pub cgroup_parent: Option<String>,
    pub service_cgroup_parent: Option<String>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub service_cpuset_cpus: Option<String>,
    pub cpu_shares: Option<i64>,
    pub service_cpu_shares: Option<i64>,
    pub oom_score_adjust: Option<i64>,
    /// Name → (soft, hard).
    pub ulimit: BTreeMap<String, (i64, i64)>,
    pub sysctls: BTreeMap<String, String>,
    /// Bytes.
    pub service_memory: Option<u64>,
    pub service_memory_swap: Option<u64>,
    pub service_memory_reservation: Option<u64>,
    pub service_cpus: Option<f64>,
    /// MTU of the per-job network.
    pub network_mtu: Option<u32>,
    /// IPv6 on the per-job network.
    pub enable_ipv6: bool,
    pub volumes_from: Vec<String>,
    /// Driver and options of the volumes ferry creates (cache volumes), as gitlab-runner.
    pub volume_driver: Option<String>,
    pub volume_driver_ops: BTreeMap<String, String>,
    /// Legacy links of the build container (`container:alias`).
    pub links: Vec<String>,
    /// Extra labels of every container; values are expanded with the job's variables. A key
    /// in ferry's own `ferry.` namespace is refused at load.
    pub container_labels: BTreeMap<String, String>,
    /// Options of the `json-file` log driver: only `env` and `labels` (as gitlab-runner).
    pub log_options: BTreeMap<String, String>,
}

/// One `[[runners.docker.services]]` entry (gitlab-runner's `Service`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerService {
    /// Image; expanded with the job's variables.
    pub name: String,
    /// Space- or comma-separated aliases; expanded with the job's variables.
    pub alias: String,
    pub command: Vec<String>,
    pub entrypoint: Vec<String>,
    /// `(name, value)` from `environment = ["K=V"]`.
    pub environment: Vec<(String, String)>,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            host: None,
            tls_verify: false,
            tls_cert_path: None,
            image: None,
            pull_policy: vec![PullPolicy::Always],
            allowed_pull_policies: vec![PullPolicy::Always],
            allowed_images: Vec::new(),
            allowed_services: Vec::new(),
            privileged: false,
            services_privileged: None,
            allowed_privileged_images: Vec::new(),
            allowed_privileged_services: Vec::new(),
            user: None,
            allowed_users: Vec::new(),
            pids_limit: None,
            volumes: Vec::new(),
            cache_dir: None,
            disable_cache: false,
            network_mode: None,
            dns: Vec::new(),
            dns_search: Vec::new(),
            extra_hosts: Vec::new(),
            memory: None,
            memory_swap: None,
            memory_reservation: None,
            cpus: None,
            shm_size: 0,
            wait_for_services_timeout: Some(Duration::from_secs(30)),
            group_add: Vec::new(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            hostname: None,
            disable_entrypoint_overwrite: false,
            oom_kill_disable: false,
            services_limit: None,
            containers: ContainerOptions::default(),
            services: Vec::new(),
        }
    }
}

/// `[runners.cache]`, as gitlab-runner defines it (docs/configuration.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheSection {
    /// None = local cache only. Otherwise `s3`, `gcs`, `gcsv2` or `azure`, and the matching
    /// table is complete enough to be used (a `Type` whose table lacks its bucket was turned
    /// into None with a warning).
    pub kind: Option<String>,
    /// Prefix of every object name.
    pub path: Option<String>,
    /// Objects are not put under `runner/<short token>/`.
    pub shared: bool,
    /// Bytes; 0 = no limit.
    pub max_uploaded_archive_size: u64,
    pub s3: CacheS3,
    pub gcs: CacheGcs,
    pub azure: CacheAzure,
}

/// `AuthenticationType` of `[runners.cache.s3]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum S3Auth {
    /// `AccessKey`/`SecretKey`.
    #[default]
    AccessKey,
    /// The host's credentials: environment, web identity, ECS task role, EC2 instance profile.
    Iam,
}

/// `ServerSideEncryption` of `[runners.cache.s3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Encryption {
    /// `S3` / `AES256`.
    Aes256,
    /// `KMS` / `aws:kms`.
    Kms,
    /// `DSSE-KMS` / `aws:kms:dsse`.
    DsseKms,
}

/// `[runners.cache.s3]` (or the pre-12.0 keys directly in `[runners.cache]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheS3 {
    /// `host[:port]`, no scheme; empty = AWS.
    pub server_address: String,
    pub access_key: String,
    pub secret_key: Redacted,
    pub session_token: Redacted,
    pub bucket_name: String,
    pub bucket_location: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Resolved as gitlab-runner does: `iam` when no server address or keys are given.
    pub authentication_type: S3Auth,
    pub server_side_encryption: Option<S3Encryption>,
    pub server_side_encryption_key_id: String,
    /// `None` = decided from the address: virtual-host style on AWS and Google, path style
    /// elsewhere (MinIO and other self-hosted servers).
    pub path_style: Option<bool>,
    pub role_arn: String,
}

/// `[runners.cache.gcs]` (also used by `Type = "gcsv2"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheGcs {
    /// A service account JSON key file; empty = Application Default Credentials.
    pub credentials_file: String,
    /// `AccessID` + `PrivateKey`: a service account's e-mail and PEM key.
    pub access_id: String,
    pub private_key: Redacted,
    pub bucket_name: String,
}

/// `[runners.cache.azure]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheAzure {
    pub account_name: String,
    pub account_key: Redacted,
    pub container_name: String,
    /// Default `blob.core.windows.net`.
    pub storage_domain: String,
}

/// ferry's own: the built-in deploy step (deploy-step.md 4.1 and 4.11).
#[derive(Debug, Clone)]
pub struct DeploySection {
    /// The reserved image name that triggers the deploy step (default `ferry:deploy`).
    pub image: String,
    pub targets: Vec<DeployTarget>,
}

#[derive(Debug, Clone, Default)]
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

/// gitlab-runner's defaults for the global section.
impl Default for GlobalSection {
    fn default() -> Self {
        GlobalSection {
            concurrent: 1,
            check_interval: Duration::from_secs(DEFAULT_CHECK_INTERVAL_SECS),
            log_level: "info".into(),
            log_format: LogFormat::Runner,
            listen_address: None,
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            connection_max_age: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// gitlab-runner's defaults for a `[[runners]]` entry (empty name, url and token).
impl Default for RunnerSection {
    fn default() -> Self {
        RunnerSection {
            name: String::new(),
            url: String::new(),
            id: None,
            token: Secret::default(),
            token_obtained_at: None,
            token_expires_at: None,
            executor: "docker".into(),
            limit: 0,
            request_concurrency: 1,
            output_limit: DEFAULT_OUTPUT_LIMIT_KB * 1024,
            builds_dir: "/builds".into(),
            cache_dir: "/cache".into(),
            environment: Vec::new(),
            clone_url: None,
            pre_build_script: None,
            post_build_script: None,
            pre_get_sources_script: None,
            post_get_sources_script: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            shell: None,
            debug_trace_disabled: false,
            unhealthy_requests_limit: 3,
            unhealthy_interval: Duration::from_secs(60 * 60),
            job_status_final_update_retry_limit: 10,
            feature_flags: BTreeMap::new(),
            custom_build_dir_enabled: true,
            docker: DockerSection::default(),
            cache: CacheSection::default(),
            deploy: DeploySection::default(),
        }
    }
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            image: DEFAULT_DEPLOY_IMAGE.into(),
            targets: Vec::new(),
        }
    }
}

/// The reserved job image that runs ferry's built-in deploy step.
pub const DEFAULT_DEPLOY_IMAGE: &str = "ferry:deploy";
/// `check_interval` when absent or <= 0, in seconds.
pub const DEFAULT_CHECK_INTERVAL_SECS: u64 = 3;
/// `shutdown_timeout` when absent or <= 0, in seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// `output_limit` when absent or 0, in kilobytes.
pub const DEFAULT_OUTPUT_LIMIT_KB: u64 = 4096;
/// Port of `listen_address` when the address has none.
pub const DEFAULT_METRICS_PORT: u16 = 9252;

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
///
/// Each message carries its cause in its text and no variant has a `source()`, so a caller that
/// prints the error with its chain (anyhow's `{:#}`) prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Read {
        path: String,
        /// Not a `#[source]`: the message already says it.
        error: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// Not valid TOML at all.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// Writing the file back (or `.runner_system_id`) failed.
    #[error("writing {path}: {error}")]
    Write {
        path: String,
        /// Not a `#[source]`: the message already says it.
        error: std::io::Error,
    },
    /// An edit that cannot be done (no runner with that token, unusual file layout).
    #[error("{path}: {message}")]
    Edit { path: String, message: String },
}

/// Parse and resolve a config file's text. `file` is only used in error messages. `$VAR` in
/// `url` and `token` is expanded from the process environment.
pub fn from_toml_str(text: &str, file: &str) -> Result<Config, ConfigError> {
    from_toml_str_with_env(text, file, &|name| std::env::var(name).ok())
}

/// [`from_toml_str`] with an explicit environment (tests, or a caller that captured it).
pub fn from_toml_str_with_env(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    resolve::resolve(text, file, env)
}

/// Read and resolve a config file. TLS files a runner entry does not set are looked up by host
/// name in the certificate directories ([`certs`]), as gitlab-runner does.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    let mut config = from_toml_str(&text, &path.display().to_string())?;
    let dirs = certs::certificate_dirs(path);
    for runner in &mut config.runners {
        certs::fill_from_dirs(runner, &dirs);
    }
    Ok(config)
}
