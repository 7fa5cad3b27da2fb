//! `DockerEngine`: the [`Engine`] on a Docker daemon, through bollard.
//!
//! Per job: a user-defined network (unless `network_mode` is set), one container per service,
//! and one long-lived build container whose steps run with `docker exec` (see
//! docs/docker-executor.md for why exec and not one attached container per step). Everything is
//! labelled `ferry.managed=true`, `ferry.runner=<short token>`, `ferry.job_id=<id>`, so `destroy`
//! finds what to remove by label (it keeps no state and works after a half-failed `prepare`) and
//! `cleanup_leftovers` can remove what a crashed ferry left behind.

mod auth;
pub mod convert;
mod evict;
pub mod hostconfig;
pub mod hostpaths;
mod pull;
pub mod remote;
mod services;
mod step;
pub mod usage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use ferry_config::DockerSection;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub use convert::service_aliases_from_image;
use convert::{AllowList, PrivilegedList, VolumeSpec};
use hostpaths::{HostSide, Placement};

use crate::engine::{Engine, EngineError, HookOutcome, JobEnv, LogSink, StepOutcome, StepSpec};

/// Seconds bollard waits for the response headers of one request.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// How long a step may take to stop after SIGTERM before it is killed.
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The Docker engine of one `[[runners]]` entry.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    section: DockerSection,
    runner_short: String,
    stop_grace: Duration,
    /// Probe service ports from ferry's host (else only from inside the service).
    host_probe: bool,
    allowed_images: std::sync::Arc<AllowList>,
    allowed_services: std::sync::Arc<AllowList>,
    /// `allowed_privileged_images` / `allowed_privileged_services`.
    privileged_images: std::sync::Arc<PrivilegedList>,
    privileged_services: std::sync::Arc<PrivilegedList>,
    /// The daemon cannot see ferry's files: the builds directory is a per-job volume, copied in
    /// and out through the archive API (see [`remote::is_remote_host`]).
    remote: bool,
    /// Whether ferry runs in a container, and its mounts (see [`hostpaths`]).
    placement: std::sync::Arc<Placement>,
    /// The daemon's address (which daemon a pulled image is on, in the usage record).
    host: String,
    /// Where the last use of cache volumes and the images ferry pulled are recorded.
    usage: Option<std::sync::Arc<usage::UsageRecord>>,
    /// How each running job's build container was created (by its name), so a step that
    /// finds it gone can have it created again (`recreate_build_container`).
    build_recipes: std::sync::Arc<std::sync::Mutex<HashMap<String, BuildRecipe>>>,
}

/// What `prepare` created a build container from: its platform and its create body.
#[derive(Clone)]
struct BuildRecipe {
    platform: Option<String>,
    body: bollard::models::ContainerCreateBody,
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("host", &self.section.host)
            .field("runner", &self.runner_short)
            .field("remote", &self.remote)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

/// A bollard error as one line (`Docker responded with status code 404: No such image: x`).
pub(crate) fn one_line(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => {
            format!("{} (HTTP {status_code})", message.trim())
        }
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => {
            // The cause is often only in the source chain ("client error (Connect)" says
            // nothing; its source says "No such file or directory").
            let mut s = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = cause.source();
            }
            s.replace('\n', " ")
        }
    }
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub(crate) fn docker_err(what: &str, e: &BollardError) -> EngineError {
    EngineError::Docker(format!("{what}: {}", one_line(e)))
}

fn label_filter(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut f = HashMap::new();
    f.insert(
        "label".to_string(),
        labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.to_string()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect(),
    );
    f
}

/// Connect to `host` (`unix://`, `tcp://`, `http(s)://`); TLS when `tls_verify` or a
/// `tls_cert_path` is given (that directory holds `ca.pem`, `cert.pem`, `key.pem`).
fn connect(host: &str, tls: Option<&Path>) -> Result<Docker, EngineError> {
    let fail = |e: BollardError| {
        EngineError::Docker(format!(
            "cannot connect to the Docker daemon at {host}: {}",
            one_line(&e)
        ))
    };
    if let Some(path) = host.strip_prefix("unix://") {
        return Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(fail);
    }
    if host.starts_with('/') {
        return Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(fail);
    }
    if host.starts_with("tcp://") || host.starts_with("http://") || host.starts_with("https://") {
        if let Some(dir) = tls {
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                if !dir.join(f).is_file() {
                    return Err(EngineError::Docker(format!(
                        "TLS for {host}: {} is missing",
                        dir.join(f).display()
                    )));
                }
            }
            return Docker::connect_with_ssl(
                host,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                REQUEST_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            )
            .map_err(fail);
        }
        return Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(fail);
    }
    Err(EngineError::Docker(format!(
        "unsupported Docker host {host:?} (expected unix://, tcp://, http:// or https://)"
    )))
}

/// Where the TLS files are: `tls_cert_path`, else (with `tls_verify` or `DOCKER_TLS_VERIFY`)
/// `DOCKER_CERT_PATH` or `~/.docker`.
fn tls_dir(section: &DockerSection, host_from_env: bool) -> Option<PathBuf> {
    if let Some(p) = &section.tls_cert_path {
        return Some(p.clone());
    }
    let env_verify = host_from_env
        && std::env::var("DOCKER_TLS_VERIFY")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
    if section.tls_verify || env_verify {
        if let Ok(p) = std::env::var("DOCKER_CERT_PATH")
            && !p.is_empty()
        {
            return Some(PathBuf::from(p));
        }
        if let Ok(home) = std::env::var("HOME") {
            return Some(Path::new(&home).join(".docker"));
        }
    }
    None
}

impl DockerEngine {
    /// Connect (lazily: no request is made) and negotiate the API version with the daemon, so an
    /// older engine (20.10 = API 1.41) gets requests it understands.
    pub async fn new(
        section: &DockerSection,
        runner_short_token: &str,
    ) -> Result<Self, EngineError> {
        let env_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let (host, from_env) = match (&section.host, env_host) {
            (Some(h), _) if !h.is_empty() => (h.clone(), false),
            (_, Some(h)) => (h, true),
            _ => ("unix:///var/run/docker.sock".to_string(), false),
        };
        let tls = tls_dir(section, from_env);
        let docker = connect(&host, tls.as_deref())?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            EngineError::Docker(format!(
                "cannot reach the Docker daemon at {host}: {}",
                one_line(&e)
            ))
        })?;
        // ferry in a container: its paths are not the daemon's (docs/docker-executor.md).
        let placement = hostpaths::discover(&docker).await;
        let remote = remote::is_remote_host(&host) || matches!(placement, Placement::Unknown(_));
        Ok(Self {
            docker,
            placement: std::sync::Arc::new(placement),
            runner_short: runner_short_token.to_string(),
            stop_grace: DEFAULT_STOP_GRACE,
            host_probe: true,
            allowed_images: std::sync::Arc::new(AllowList::new(
                &section.allowed_images,
                "allowed_images",
            )?),
            allowed_services: std::sync::Arc::new(AllowList::new(
                &section.allowed_services,
                "allowed_services",
            )?),
            privileged_images: std::sync::Arc::new(PrivilegedList::new(
                &section.allowed_privileged_images,
            )),
            privileged_services: std::sync::Arc::new(PrivilegedList::new(
                &section.allowed_privileged_services,
            )),
            section: section.clone(),
            remote,
            host,
            usage: None,
            build_recipes: Default::default(),
        })
    }

    /// Force remote mode on (the builds directory is a per-job volume filled through the
    /// archive API) or off (bind mount of the host directory), whatever the daemon's address
    /// says. `new` decides with [`remote::is_remote_host`], and chooses remote mode too when ferry
    /// runs in a container that the daemon does not know.
    pub fn with_remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }

    /// Record the use of cache volumes and images (and what ferry pulled) in `record`, for
    /// eviction (docs/docker-executor.md, "Disk use").
    pub fn with_usage(mut self, record: std::sync::Arc<usage::UsageRecord>) -> Self {
        self.usage = Some(record);
        self
    }

    /// The Docker daemon's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether jobs copy their builds directory to and from the daemon.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Where ferry runs, as `new` found out (see [`hostpaths::discover`]).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// One line for ferry's log: how directories under `working_dir` reach job containers.
    pub fn describe_paths(&self, working_dir: &Path) -> String {
        match (&*self.placement, self.remote) {
            (Placement::Unknown(why), true) => {
                format!("{why}: builds directories are copied through the archive API")
            }
            (_, true) => {
                "remote Docker daemon: builds directories are copied through the archive API".into()
            }
            (Placement::Container(view), false) => view.describe(working_dir),
            (Placement::Unknown(why), false) => format!(
                "{why}; local mode was forced: builds directories are bind-mounted as ferry sees them"
            ),
            (Placement::Host, false) => {
                "Docker daemon on this machine: builds directories are bind-mounted".into()
            }
            (Placement::HostAssumed(note), false) => format!(
                "{note}: taken as the Docker host, builds directories are bind-mounted as ferry sees them"
            ),
        }
    }

    /// Where `path` (one of ferry's directories) is for the daemon: translated when ferry runs
    /// in a container, else the path itself.
    fn place(&self, path: &Path) -> Result<HostSide, String> {
        match &*self.placement {
            Placement::Container(view) => view.translate(path),
            _ => Ok(HostSide::Path(path.to_path_buf())),
        }
    }

    /// Whether the job's project dir and file variables are copied through the archive API
    /// (a remote daemon, or ferry in a container with its working directory on no mount the
    /// daemon can see).
    pub fn copies_builds(&self, env: &JobEnv) -> bool {
        self.remote
            || self.place(&env.host_project_dir).is_err()
            || self.place(&env.host_tmp_dir).is_err()
    }

    /// Whether the build container's steps keep their output and exit code in the job's steps
    /// dir (bind-mounted: a daemon that sees ferry's directories), so that a later ferry can
    /// follow them (docs/crash-safety.md). A daemon that gets the builds dir copied does not.
    pub fn keeps_steps(&self, env: &JobEnv) -> bool {
        !self.copies_builds(env)
            && env
                .host_steps_dir
                .as_deref()
                .is_some_and(|d| self.place(d).is_ok())
    }

    /// How long a cancelled or timed-out step gets between SIGTERM and SIGKILL (default 10 s).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Whether the service wait may connect from ferry's host to the service's IP (default
    /// true). Without it, only the service's own socket table counts (`/proc/net/tcp`, read with
    /// `cat` in the service container).
    pub fn with_host_probe(mut self, yes: bool) -> Self {
        self.host_probe = yes;
        self
    }

    /// Start-up health check: the daemon answers and its version.
    pub async fn ping(&self) -> Result<String, EngineError> {
        self.docker.ping().await.map_err(|e| {
            EngineError::Docker(format!("Docker daemon unreachable: {}", one_line(&e)))
        })?;
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| docker_err("docker version", &e))?;
        Ok(format!(
            "Docker {} (API {})",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default()
        ))
    }

    /// The bollard client (for tests and diagnostics).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Remove every container, network and per-job volume labelled `ferry.managed=true` and
    /// `ferry.runner=<this runner>` (what a crashed ferry left behind). Persistent cache volumes
    /// and anything not labelled so are left alone. Call before taking jobs. Returns how many
    /// objects were removed.
    pub async fn cleanup_leftovers(&self) -> Result<usize, EngineError> {
        self.cleanup_leftovers_except(&[]).await
    }

    /// [`Self::cleanup_leftovers`], leaving alone the objects of the jobs `keep` (journaled
    /// jobs a restarted ferry resumes or reports: docs/crash-safety.md).
    pub async fn cleanup_leftovers_except(&self, keep: &[u64]) -> Result<usize, EngineError> {
        let keep: Vec<String> = keep.iter().map(u64::to_string).collect();
        self.remove_labelled_except(
            &[
                (convert::LABEL_MANAGED, "true"),
                (convert::LABEL_RUNNER, &self.runner_short),
            ],
            &keep,
        )
        .await
    }

    /// Removes the containers, networks and per-job volumes of the jobs `jobs`, each with the
    /// runner short token (`CI_RUNNER_SHORT_TOKEN`) its objects are labelled with (journaled
    /// jobs whose runner is no longer configured: docs/crash-safety.md). Returns how many
    /// objects were removed.
    pub async fn remove_jobs_of(&self, jobs: &[(String, u64)]) -> Result<usize, EngineError> {
        let mut removed = 0;
        for (runner, job) in jobs {
            let job = job.to_string();
            removed += self
                .remove_labelled(&[
                    (convert::LABEL_MANAGED, "true"),
                    (convert::LABEL_RUNNER, runner),
                    (convert::LABEL_JOB, &job),
                ])
                .await?;
        }
        Ok(removed)
    }

    async fn remove_labelled(&self, labels: &[(&str, &str)]) -> Result<usize, EngineError> {
        self.remove_labelled_except(labels, &[]).await
    }

    /// Removes what carries every one of `labels`, except what belongs to a job of `keep`.
    async fn remove_labelled_except(
        &self,
        labels: &[(&str, &str)],
        keep: &[String],
    ) -> Result<usize, EngineError> {
        let kept = |l: Option<&HashMap<String, String>>| {
            l.and_then(|l| l.get(convert::LABEL_JOB))
                .is_some_and(|j| keep.contains(j))
        };
        let mut removed = 0;
        let mut errors = Vec::new();
        let filters = label_filter(labels);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| docker_err("listing containers", &e))?;
        for c in containers {
            if kept(c.labels.as_ref()) {
                continue;
            }
            let Some(id) = c.id else { continue };
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(&id, Some(opts)).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                // 409: removal already in progress (a concurrent destroy).
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => errors.push(format!("removing container {id}: {}", one_line(&e))),
            }
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| docker_err("listing networks", &e))?;
        for n in networks {
            if kept(n.labels.as_ref()) {
                continue;
            }
            let Some(id) = n.id else { continue };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => errors.push(format!("removing network {id}: {}", one_line(&e))),
            }
        }
        // Only per-job volumes: they carry a job label; cache volumes do not.
        let mut vol_labels = labels.to_vec();
        if !vol_labels.iter().any(|(k, _)| *k == convert::LABEL_JOB) {
            vol_labels.push((convert::LABEL_JOB, ""));
        }
        let vfilters = label_filter(&vol_labels);
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&vfilters).build(),
            ))
            .await
            .map_err(|e| docker_err("listing volumes", &e))?;
        for v in volumes.volumes.unwrap_or_default() {
            if kept(Some(&v.labels)) {
                continue;
            }
            match self
                .docker
                .remove_volume(
                    &v.name,
                    Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
                )
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => errors.push(format!("removing volume {}: {}", v.name, one_line(&e))),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(EngineError::Docker(errors.join("; ")))
        }
    }

    fn check_allowed(&self, env: &JobEnv) -> Result<(), EngineError> {
        // The runner's own default image is always allowed (gitlab-runner does the same).
        if self.section.image.as_deref() != Some(env.image.name.as_str()) {
            self.allowed_images
                .check(&env.image.name, "image", "allowed_images")?;
        }
        // The runner's own services are always allowed, and so is a job service naming one of
        // their images (gitlab-runner's `getServicesDefinitions`).
        let (runner_services, job_services) = env
            .services
            .split_at(env.runner_services.min(env.services.len()));
        for s in job_services {
            if runner_services.iter().any(|r| r.image.name == s.image.name) {
                continue;
            }
            self.allowed_services
                .check(&s.image.name, "service", "allowed_services")?;
        }
        if let Some(limit) = self.section.services_limit
            && env.services.len() > limit
        {
            return Err(EngineError::Configuration(format!(
                "the job has {} services but [runners.docker] services_limit = {limit}",
                env.services.len()
            )));
        }
        Ok(())
    }

    /// Remove a container left with the same name (a crashed earlier attempt).
    async fn remove_stale(&self, name: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(docker_err(&format!("removing old container {name}"), &e)),
        }
    }

    async fn ensure_cache_volumes(
        &self,
        env: &JobEnv,
        vols: &[VolumeSpec],
    ) -> Result<(), EngineError> {
        if self.section.disable_cache {
            return Ok(());
        }
        for v in vols {
            if let (VolumeSpec::Cache { destination }, Some(dir)) = (v, &self.section.cache_dir) {
                let path = convert::cache_host_dir(dir, env, destination);
                tokio::fs::create_dir_all(&path).await.map_err(|e| {
                    EngineError::Configuration(format!(
                        "[runners.docker] cache_dir: cannot create {}: {e}",
                        path.display()
                    ))
                })?;
                if let Some(u) = &self.usage
                    && let Err(e) =
                        u.touch_volume(&path.display().to_string(), std::time::SystemTime::now())
                {
                    tracing::warn!(file = %u.path().display(), error = %e, "recording the use of a cache volume failed");
                }
                continue;
            }
            if let VolumeSpec::Cache { destination } = v {
                let name = convert::cache_volume_name(env, destination);
                let mut labels = HashMap::new();
                labels.insert(convert::LABEL_MANAGED.to_string(), "true".to_string());
                labels.insert(
                    convert::LABEL_RUNNER.to_string(),
                    env.runner_short_token.clone(),
                );
                labels.insert(
                    convert::LABEL_PROJECT.to_string(),
                    env.project_id.to_string(),
                );
                labels.insert(convert::LABEL_CACHE.to_string(), "true".to_string());
                labels.insert("ferry.destination".to_string(), destination.clone());
                // Creating an existing named volume is a no-op that returns it.
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(name.clone()),
                        labels: Some(labels),
                        // gitlab-runner's volume_driver / volume_driver_ops
                        driver: self.section.containers.volume_driver.clone(),
                        driver_opts: (!self.section.containers.volume_driver_ops.is_empty()).then(
                            || {
                                self.section
                                    .containers
                                    .volume_driver_ops
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect()
                            },
                        ),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| docker_err(&format!("creating cache volume {name}"), &e))?;
                if let Some(u) = &self.usage
                    && let Err(e) = u.touch_volume(&name, std::time::SystemTime::now())
                {
                    tracing::warn!(file = %u.path().display(), error = %e, "recording the use of a cache volume failed");
                }
            }
        }
        Ok(())
    }

    async fn create_network(&self, env: &JobEnv) -> Result<String, EngineError> {
        let name = convert::network_name(env);
        // A network of the same name from a crashed attempt of this job.
        if let Ok(old) = self
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            && let Some(id) = old.id
        {
            let _ = self.docker.remove_network(&id).await;
        }
        let (enable_ipv6, options) = hostconfig::network_settings(&self.section.containers);
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(convert::job_labels(env, "network")),
                enable_ipv6,
                options,
                ..Default::default()
            })
            .await
            .map_err(|e| docker_err(&format!("creating network {name}"), &e))?;
        Ok(name)
    }

    /// The build container (`name` = `convert::build_container_name`), or a get_sources
    /// hook's (`convert::hook_container_name`, `env` without services): same checks, image,
    /// user, mounts and settings.
    async fn prepare_inner(
        &self,
        env: &JobEnv,
        name: &str,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        self.check_allowed(env)?;
        // allowed_users: refused before anything is created or pulled.
        let user = convert::build_container_user(&self.section, &env.image)?;
        let volumes = convert::parse_volumes(env, &self.section.volumes)?;
        if name == convert::build_container_name(env) {
            let _ = log
                .write_all(
                    format!("Using Docker executor with image {} ...\n", env.image.name).as_bytes(),
                )
                .await;
        }
        if self.section.disable_cache {
            for v in &volumes {
                if let VolumeSpec::Cache { destination } = v {
                    let line = ferry_config::joblog::warning_line(&format!(
                        "Container based cache volumes creation is disabled. Will not create volume for {destination:?}"
                    ));
                    let _ = log.write_all(line.as_bytes()).await;
                }
            }
        }
        self.ensure_cache_volumes(env, &volumes).await?;
        let copies = self.copies_builds(env);
        let builds = match (
            copies,
            self.place(&env.host_project_dir),
            self.place(&env.host_tmp_dir),
        ) {
            (false, Ok(project), Ok(tmp)) => {
                // A volume's subpath must exist (Docker creates a missing bind source itself).
                for (side, dir) in [(&project, &env.host_project_dir), (&tmp, &env.host_tmp_dir)] {
                    if matches!(
                        side,
                        HostSide::Volume {
                            subpath: Some(_),
                            ..
                        }
                    ) {
                        tokio::fs::create_dir_all(dir).await.map_err(|e| {
                            EngineError::Docker(format!("creating {}: {e}", dir.display()))
                        })?;
                    }
                }
                convert::BuildsMounts {
                    project,
                    tmp,
                    tmp_read_only: true,
                }
            }
            _ => {
                // The daemon cannot see the directories: per-job volumes, filled by `sync_in`
                // (the file variables' one writable: the archive API cannot write a read-only
                // mount).
                let volume = self
                    .create_job_volume(env, remote::builds_volume_name(env))
                    .await?;
                let tmp = self
                    .create_job_volume(env, remote::tmp_volume_name(env))
                    .await?;
                convert::BuildsMounts {
                    project: HostSide::Volume {
                        name: volume,
                        subpath: None,
                    },
                    tmp: HostSide::Volume {
                        name: tmp,
                        subpath: None,
                    },
                    tmp_read_only: false,
                }
            }
        };
        // A `cache_dir` directory on no mount the daemon can see stays as given: a path on the
        // daemon's machine, as in gitlab-runner.
        let place = |p: &Path| {
            self.place(p)
                .unwrap_or_else(|_| HostSide::Path(p.to_path_buf()))
        };
        let mounts = convert::job_mounts(
            env,
            &volumes,
            self.section.disable_cache,
            self.section.cache_dir.as_deref(),
            builds,
            &place,
        );

        // The network: per job unless the operator chose one. A job without services needs no
        // aliases, so it uses Docker's default bridge, as gitlab-runner does without
        // FF_NETWORK_PER_BUILD (creating and removing a network costs ~0.4 s per job). With the
        // flag, every job gets its own network, as in gitlab-runner: its containers do not
        // share the default bridge with other jobs (docs/docker-executor.md).
        let (network_mode, per_job_network) = match self.section.network_mode.as_deref() {
            None | Some("") if env.services.is_empty() && !network_per_build(&env.variables) => {
                (None, None)
            }
            None | Some("") => {
                let n = self.create_network(env).await?;
                (Some(n.clone()), Some(n))
            }
            Some(m) => (Some(m.to_string()), None),
        };
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }

        let links = services::start_services(
            self,
            env,
            &mounts,
            network_mode.clone(),
            per_job_network.is_some(),
            log,
            cancel,
        )
        .await?;

        let image = pull::ensure_image(self, &env.image, env, log, cancel).await?;
        let image_id = image.id.clone().unwrap_or_else(|| env.image.name.clone());
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        // The steps dir, for the build container only (services and hooks never see it),
        // emptied for the job: nothing a previous job left there is ever read.
        let mut mounts = mounts;
        if name == convert::build_container_name(env)
            && self.keeps_steps(env)
            && let Some(dir) = env.host_steps_dir.as_deref()
        {
            step::reset_steps_dir(dir).await?;
            mounts.add(place(dir), &convert::steps_dir(env), false);
        }
        let privileged =
            convert::build_privileged(&self.section, &self.privileged_images, &env.image);
        let mut host_config =
            convert::build_host_config(&self.section, &mounts, network_mode, links, privileged);
        hostconfig::apply_build(&mut host_config, &self.section.containers);
        let mut body =
            convert::build_container_body(&self.section, env, &image_id, host_config, user);
        if let Some(labels) = body.labels.as_mut() {
            hostconfig::add_labels(labels, &env.container_labels);
        }
        let name = name.to_string();
        self.remove_stale(&name).await?;
        let recipe = BuildRecipe {
            platform: env.image.platform.clone(),
            body,
        };
        if let Ok(mut recipes) = self.build_recipes.lock() {
            recipes.insert(name.clone(), recipe.clone());
        }
        self.create_build_container(&name, recipe).await
    }

    /// Creates and starts the build container `name` from `recipe`, and checks that it runs.
    async fn create_build_container(
        &self,
        name: &str,
        recipe: BuildRecipe,
    ) -> Result<(), EngineError> {
        let name = name.to_string();
        let mut opts = CreateContainerOptionsBuilder::new().name(&name);
        if let Some(p) = &recipe.platform {
            opts = opts.platform(p);
        }
        self.docker
            .create_container(Some(opts.build()), recipe.body)
            .await
            .map_err(|e| docker_err(&format!("creating build container {name}"), &e))?;
        self.docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| docker_err(&format!("starting build container {name}"), &e))?;
        // An entrypoint that ignores its command exits at once; say so now rather than at the
        // first step.
        let running = self
            .docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running);
        if running == Some(false) {
            return Err(step::not_running(self, &name).await);
        }
        Ok(())
    }
}

impl Engine for DockerEngine {
    async fn prepare(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let name = convert::build_container_name(env);
        let r = tokio::select! {
            r = self.prepare_inner(env, &name, log, cancel) => r,
            _ = cancel.cancelled() => Err(EngineError::Cancelled),
        };
        let _ = log.flush().await;
        r
    }

    async fn run_step(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, EngineError> {
        let r = step::run_step(self, env, step, log, cancel).await;
        let _ = log.flush().await;
        r
    }

    fn keeps_step_output(&self, env: &JobEnv) -> bool {
        self.keeps_steps(env)
    }

    async fn resume_step(
        &self,
        env: &JobEnv,
        spec: &StepSpec,
        from: u64,
        started: std::time::SystemTime,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, EngineError> {
        let r = step::resume_step(self, env, spec, from, started, log, cancel).await;
        let _ = log.flush().await;
        r
    }

    async fn sync_in(&self, env: &JobEnv) -> Result<(), EngineError> {
        if !self.copies_builds(env) {
            return Ok(());
        }
        self.upload_builds(env).await
    }

    async fn sync_out(&self, env: &JobEnv) -> Result<(), EngineError> {
        if !self.copies_builds(env) {
            return Ok(());
        }
        self.download_builds(env).await
    }

    async fn stream_service_logs(
        &self,
        env: &JobEnv,
        log: &mut LogSink<'_>,
        stop: &CancellationToken,
    ) {
        services::stream_logs(self, env, log, stop).await;
        let _ = log.flush().await;
    }

    async fn run_hook(
        &self,
        env: &JobEnv,
        step: &StepSpec,
        read_git_config: bool,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<HookOutcome, EngineError> {
        if self.copies_builds(env) {
            return Err(EngineError::Configuration(
                "get_sources hooks (pre_get_sources_script, post_get_sources_script) need a Docker daemon that can bind-mount the project dir; this one copies it (docs/docker-executor.md)".into(),
            ));
        }
        let mut hook_env = env.clone();
        hook_env.services.clear();
        hook_env.runner_services = 0;
        hook_env.host_steps_dir = None;
        let name = convert::hook_container_name(env);
        let r = async {
            tokio::select! {
                r = self.prepare_inner(&hook_env, &name, log, cancel) => r?,
                _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            }
            let outcome = step::run_step_in(self, &hook_env, &name, step, log, cancel).await?;
            let git_config = if read_git_config && outcome.exit_code == 0 {
                step::read_global_git_config(self, &hook_env, &name, cancel).await?
            } else {
                Vec::new()
            };
            Ok(HookOutcome {
                outcome,
                git_config,
            })
        }
        .await;
        let _ = log.flush().await;
        // Gone before git starts, whatever happened (docs/security.md).
        let removed = self.remove_stale(&name).await;
        match (r, removed) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(o), Ok(())) => Ok(o),
        }
    }

    async fn recreate_build_container(
        &self,
        env: &JobEnv,
        _log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), EngineError> {
        let name = convert::build_container_name(env);
        let recipe = self
            .build_recipes
            .lock()
            .ok()
            .and_then(|r| r.get(&name).cloned())
            .ok_or_else(|| {
                EngineError::Docker(format!("no build container {name} was prepared"))
            })?;
        tokio::select! {
            r = async {
                self.remove_stale(&name).await?;
                self.create_build_container(&name, recipe).await
            } => r,
            _ = cancel.cancelled() => Err(EngineError::Cancelled),
        }
    }

    async fn destroy(&self, env: &JobEnv) -> Result<(), EngineError> {
        if let Ok(mut recipes) = self.build_recipes.lock() {
            recipes.remove(&convert::build_container_name(env));
        }
        let job = env.job_id.to_string();
        self.remove_labelled(&[
            (convert::LABEL_MANAGED, "true"),
            (convert::LABEL_RUNNER, &env.runner_short_token),
            (convert::LABEL_JOB, &job),
        ])
        .await?;
        // The kept step output is the job's log, already sent; nothing writes it once the
        // containers are gone (docs/crash-safety.md). `remove_dir_all` follows no link.
        if let Some(dir) = env.host_steps_dir.clone() {
            let shown = dir.display().to_string();
            if let Err(e) = crate::jobfs::blocking(move || crate::jobfs::remove_files(&dir)).await {
                tracing::warn!(dir = %shown, "removing the job's step output: {e}");
            }
        }
        Ok(())
    }
}

/// `FF_NETWORK_PER_BUILD` of the job's variables (config.toml's `[runners.feature_flags]` win
/// over the job's own, docs/variables.md), read as Go's `strconv.ParseBool`, as gitlab-runner.
fn network_per_build(variables: &[crate::engine::EnvVar]) -> bool {
    variables
        .iter()
        .rev()
        .find(|v| v.name == "FF_NETWORK_PER_BUILD")
        .is_some_and(|v| matches!(v.value.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

#[cfg(test)]
mod network_per_build_tests {
    use super::network_per_build;
    use crate::engine::EnvVar;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn ff_network_per_build_is_read_like_go_parse_bool() {
        assert!(!network_per_build(&[]));
        assert!(network_per_build(&[var("FF_NETWORK_PER_BUILD", "true")]));
        assert!(network_per_build(&[var("FF_NETWORK_PER_BUILD", "1")]));
        assert!(!network_per_build(&[var("FF_NETWORK_PER_BUILD", "false")]));
        assert!(!network_per_build(&[var("FF_NETWORK_PER_BUILD", "yes")]));
        // the last value wins, as in the job's environment
        assert!(!network_per_build(&[
            var("FF_NETWORK_PER_BUILD", "true"),
            var("FF_NETWORK_PER_BUILD", "false"),
        ]));
    }
}
