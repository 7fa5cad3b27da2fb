//! `ferry run`: the composition root. Builds every component from the config, polls GitLab, runs
//! jobs, reloads the config on change and SIGHUP, and stops on SIGQUIT (graceful) or
//! SIGTERM/SIGINT (forced; a second signal exits at once).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ferry_config::{Config, RunnerSection};
use ferry_deploy::KubeDeployer;
use ferry_executor::docker::DockerEngine;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api::ApiError;
use crate::cli::RunArgs;
use crate::daemon::{Daemon, JobHandler, JobSource, Polled};
use crate::driver::{Driver, fail_undecodable};
use crate::gitlab::{ClientOptions, GitLabClient, JobPayload, JobRequest};
use crate::metrics::{Metrics, RunnerLabels};
use crate::plan::JobContext;
use crate::trace::TraceTiming;

/// How often the config file's modification time is checked (gitlab-runner: 3 s).
const RELOAD_CHECK: Duration = Duration::from_secs(3);

type RunnerKey = (String, String);

fn key(r: &RunnerSection) -> RunnerKey {
    (r.url.clone(), r.token.expose().to_string())
}

/// ferry's data directory on the host: builds, git object cache, local cache.
pub fn default_working_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/lib/ferry")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".ferry")
    }
}

/// gitlab-runner's API series for one runner entry's job calls, and the entry's GitLab health
/// (docs/monitoring.md).
struct ApiMetrics {
    metrics: Metrics,
    runner: String,
    system_id: String,
}

impl crate::gitlab::ApiObserver for ApiMetrics {
    fn answered(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        took: Duration,
    ) {
        // Every answer shows GitLab is reachable, also while all slots are busy and no job
        // request is sent (a running job's trace or keep-alive calls reach GitLab every 30 s).
        let probe = match status {
            Some(code) => Ok(code.to_string()),
            None => Err(format!("no answer to {endpoint}")),
        };
        self.metrics.health.gitlab(&self.runner, probe);
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.metrics.api_request(
            &self.runner,
            &self.system_id,
            endpoint,
            &status,
            method,
            took,
        );
    }
}

/// Asks GitLab for jobs, one client per runner entry.
pub struct GitLabSource {
    /// Each entry's client, with the options it was built from: a reload that changes them
    /// (TLS files, executor, shell) gets a new client for the requests and jobs that follow.
    clients: Mutex<HashMap<RunnerKey, (ClientOptions, Arc<GitLabClient>)>>,
    last_update: Mutex<HashMap<RunnerKey, String>>,
    system_id: String,
    metrics: Metrics,
    config_path: PathBuf,
    trace_timing: TraceTiming,
    /// The global `connection_max_age`, read at start (docs/configuration.md).
    connection_max_age: Option<std::time::Duration>,
    /// Fired at a handover (`SIGUSR2`): no new request is sent (docs/crash-safety.md).
    handing_over: CancellationToken,
    /// Where each job GitLab hands out is marked as being prepared (a handover waits for it).
    journal: Option<Arc<crate::journal::Journal>>,
}

impl GitLabSource {
    pub fn new(system_id: String, metrics: Metrics, config_path: PathBuf) -> Self {
        GitLabSource {
            clients: Mutex::default(),
            last_update: Mutex::default(),
            system_id,
            metrics,
            config_path,
            trace_timing: TraceTiming::default(),
            connection_max_age: None,
            handing_over: CancellationToken::new(),
            journal: None,
        }
    }

    /// A handover stops requests (`handing_over`), and the jobs they bring are marked in
    /// `journal` as being prepared until a later ferry can resume them.
    pub fn with_handover(
        mut self,
        handing_over: CancellationToken,
        journal: Option<Arc<crate::journal::Journal>>,
    ) -> Self {
        self.handing_over = handing_over;
        self.journal = journal;
        self
    }

    /// Every client's connections are replaced after `max_age` (`connection_max_age`).
    pub fn with_connection_max_age(mut self, max_age: Option<std::time::Duration>) -> Self {
        self.connection_max_age = max_age;
        self
    }

    pub fn client(&self, r: &RunnerSection) -> Result<Arc<GitLabClient>, String> {
        let options = ClientOptions::from_runner(r);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_from, c)) = clients.get(&key(r))
            && *built_from == options
        {
            return Ok(c.clone());
        }
        let observer = Arc::new(ApiMetrics {
            metrics: self.metrics.clone(),
            runner: r.token.short().to_string(),
            system_id: self.system_id.clone(),
        });
        let c = GitLabClient::new(&options).map_err(|e| e.to_string())?;
        let c = Arc::new(
            c.with_observer(observer)
                .with_connection_max_age(self.connection_max_age),
        );
        clients.insert(key(r), (options, c.clone()));
        Ok(c)
    }

    /// Rotate the token when 3/4 of its lifetime has passed (gitlab-runner's rule), writing the new
    /// one to config.toml; the reload then moves the entry to the new token.
    async fn rotate_token_if_due(&self, r: &RunnerSection, client: &GitLabClient) {
        let (Some(obtained), Some(expires)) = (r.token_obtained_at, r.token_expires_at) else {
            return;
        };
        let now = unix_now();
        if expires <= obtained || now < obtained + (expires - obtained) * 3 / 4 {
            return;
        }
        match client.reset_token(r.token.expose()).await {
            Ok(reset) => {
                let exp = reset
                    .token_expires_at
                    .as_deref()
                    .and_then(crate::gitlab::parse_expiry);
                match ferry_config::update_token(
                    &self.config_path,
                    r.token.expose(),
                    &reset.token,
                    now,
                    exp,
                ) {
                    Ok(()) => {
                        self.metrics.config_save(true);
                        info!(
                            runner = r.token.short(),
                            "runner token rotated before expiry"
                        )
                    }
                    Err(e) => {
                        self.metrics.config_save(false);
                        error!(runner = r.token.short(), error = %e, "token rotated but config not saved")
                    }
                }
            }
            Err(e) => {
                warn!(runner = r.token.short(), error = %e, "token rotation failed; will retry")
            }
        }
    }
}

impl JobSource for GitLabSource {
    type Job = Box<JobPayload>;

    fn request_concurrency_exceeded(&self, r: &RunnerSection) {
        self.metrics
            .request_concurrency_exceeded(r.token.short(), &self.system_id);
    }

    async fn request_job(&self, r: &RunnerSection) -> Polled<Self::Job> {
        let short = r.token.short();
        if self.handing_over.is_cancelled() {
            // A poll that was due as the handover began: never a new request.
            return Polled::Nothing;
        }
        let client = match self.client(r) {
            Ok(c) => c,
            Err(e) => {
                error!(runner = short, error = %e, "cannot reach GitLab with this runner's settings");
                self.metrics.health.gitlab(short, Err(e));
                return Polled::Failed;
            }
        };
        self.rotate_token_if_due(r, &client).await;
        let last = self
            .last_update
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(r))
            .cloned();
        let in_flight = self.metrics.request_started(short, &self.system_id);
        let began = std::time::Instant::now();
        let result = client
            .request_job(r.token.expose(), &self.system_id, last.as_deref())
            .await;
        let took = began.elapsed();
        drop(in_flight);
        let (status, polled) = match result {
            Ok(JobRequest::Job { payload, .. }) => {
                // Before the job's task starts: a handover that began meanwhile waits for it.
                if let Some(j) = &self.journal {
                    j.received(short, payload.id);
                }
                ("201".to_string(), Polled::Job(payload))
            }
            Ok(JobRequest::Unusable { job, error, .. }) => {
                if let Some(job) = job {
                    error!(runner = short, job = job.id, %error, "GitLab sent a job ferry cannot read: failing it");
                    let (api, timing, msg) =
                        (client.clone(), self.trace_timing.clone(), error.to_string());
                    tokio::spawn(async move { fail_undecodable(api, job, &msg, timing).await });
                }
                ("201".to_string(), Polled::Nothing)
            }
            Ok(JobRequest::NoJob { last_update }) => {
                if let Some(lu) = last_update {
                    self.last_update
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key(r), lu);
                }
                ("204".to_string(), Polled::Nothing)
            }
            Ok(JobRequest::Conflict) => ("409".to_string(), Polled::Nothing),
            Ok(JobRequest::Forbidden { message }) => {
                error!(runner = short, %message, "GitLab refused the runner token (403): is the runner deleted?");
                ("403".to_string(), Polled::Failed)
            }
            Err(ApiError::Status {
                status, message, ..
            }) if status == 429 || status >= 500 => {
                // GitLab (or its proxy) is overloaded or down: counts towards parking the entry,
                // like no answer at all (docs/gitlab-api.md, "Outages").
                warn!(runner = short, status, %message, "job request failed");
                (status.to_string(), Polled::Failed)
            }
            Err(ApiError::Status {
                status, message, ..
            }) => {
                warn!(runner = short, status, %message, "job request failed");
                // GitLab answered: a healthy (if unhappy) server.
                (status.to_string(), Polled::Nothing)
            }
            Err(e) => {
                warn!(runner = short, error = %e, "job request failed");
                self.metrics
                    .health
                    .gitlab(short, Err(format!("no answer: {e}")));
                ("error".to_string(), Polled::Failed)
            }
        };
        if status != "error" {
            self.metrics.health.gitlab(short, Ok(status.clone()));
        }
        self.metrics
            .api_request(short, &self.system_id, "request_job", &status, "post", took);
        polled
    }
}

/// Lowest free slot numbers, for CI_CONCURRENT_ID and CI_CONCURRENT_PROJECT_ID.
#[derive(Default)]
struct Slots(Mutex<HashMap<String, BTreeSet<usize>>>);

impl Slots {
    /// The slot `n` of `scope`, as a resumed job had it (its project dir depends on it).
    fn take_n(self: &Arc<Self>, scope: String, n: usize) -> SlotGuard {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(scope.clone()).or_default().insert(n);
        SlotGuard {
            slots: self.clone(),
            scope,
            n,
        }
    }

    fn take(self: &Arc<Self>, scope: String) -> SlotGuard {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let used = map.entry(scope.clone()).or_default();
        let n = (0..).find(|n| !used.contains(n)).unwrap_or(0);
        used.insert(n);
        SlotGuard {
            slots: self.clone(),
            scope,
            n,
        }
    }
}

struct SlotGuard {
    slots: Arc<Slots>,
    scope: String,
    n: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut map = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = map.get_mut(&self.scope) {
            used.remove(&self.n);
        }
    }
}

/// Runs jobs with a driver per runner entry (each entry has its own `[runners.docker]`).
pub struct Handler {
    source: Arc<GitLabSource>,
    working_dir: PathBuf,
    metrics: Metrics,
    system_id: String,
    /// Each entry's engine, with the `[runners.docker]` it was built from: a reload that changes
    /// the section gets a new engine for the jobs that follow (running jobs keep theirs).
    engines:
        tokio::sync::Mutex<HashMap<RunnerKey, (ferry_config::DockerSection, Arc<DockerEngine>)>>,
    /// `FERRY_DOCKER_REMOTE`: force the remote (copy) or local (bind mount) builds directory.
    docker_remote: Option<bool>,
    /// Runners whose path mode was logged (`DockerEngine::describe_paths`).
    described: tokio::sync::Mutex<BTreeSet<RunnerKey>>,
    slots: Arc<Slots>,
    /// Container removals that outlive their job (waited for before ferry exits).
    cleanups: TaskTracker,
    workspaces: crate::driver::Workspaces,
    /// The last use of cache volumes and the images ferry pulled, for eviction.
    usage: Arc<ferry_executor::docker::usage::UsageRecord>,
    /// The journal of running jobs (docs/crash-safety.md); `None` if it cannot be written.
    journal: Option<Arc<crate::journal::Journal>>,
    /// `--no-journal`: the jobs this ferry takes are neither journaled nor keep their step
    /// output for a later ferry (docs/crash-safety.md); resumed jobs still are.
    no_journal: bool,
}

impl Handler {
    /// The driver of one job, on the runner's Docker engine (or on `Unavailable`, which fails
    /// the job with the reason Docker could not be reached).
    /// `journaled`: whether the job's stages are written to the journal.
    fn driver<E, A>(
        &self,
        engine: Arc<E>,
        api: Arc<A>,
        journaled: bool,
    ) -> Driver<E, KubeDeployer, A> {
        Driver {
            engine,
            deployer: Arc::new(KubeDeployer::default()),
            api,
            metrics: self.metrics.clone(),
            system_id: self.system_id.clone(),
            trace_timing: TraceTiming::default(),
            cleanups: self.cleanups.clone(),
            workspaces: self.workspaces.clone(),
            host: Arc::new(crate::driver::HostFs),
            journal: self.journal.clone().filter(|_| journaled),
        }
    }

    async fn engine(&self, r: &RunnerSection) -> Result<Arc<DockerEngine>, String> {
        let mut engines = self.engines.lock().await;
        if let Some((built_from, e)) = engines.get(&key(r))
            && *built_from == r.docker
        {
            return Ok(e.clone());
        }
        let mut engine = DockerEngine::new(&r.docker, r.token.ci_short_token())
            .await
            .map_err(|e| match e {
                // `Unavailable` reports it as a Docker error again: no "docker: docker:".
                ferry_executor::EngineError::Docker(msg) => msg,
                other => other.to_string(),
            })?;
        if let Some(remote) = self.docker_remote {
            engine = engine.with_remote(remote);
        }
        engine = engine.with_usage(self.usage.clone());
        // Said once per runner: at start (below, in `run`), or here for a runner added later.
        if self.described.lock().await.insert(key(r)) {
            info!(
                runner = r.token.short(),
                "{}",
                engine.describe_paths(&self.working_dir)
            );
        }
        let engine = Arc::new(engine);
        engines.insert(key(r), (r.docker.clone(), engine.clone()));
        Ok(engine)
    }
}

impl JobHandler<Box<JobPayload>> for Handler {
    async fn run_job(
        &self,
        runner: Arc<RunnerSection>,
        job: Box<JobPayload>,
        cancel: CancellationToken,
    ) {
        let api = match self.source.client(&runner) {
            Ok(c) => c,
            Err(e) => {
                error!(job = job.id, error = %e, "no GitLab client for the job's runner");
                if let Some(j) = &self.journal {
                    j.ended(runner.token.short(), job.id);
                }
                return;
            }
        };
        let concurrent = self.slots.take(runner.token.short().to_string());
        let project = self.slots.take(format!(
            "{}/{}",
            runner.token.short(),
            job.job_info.project_id
        ));
        let ctx = JobContext {
            working_dir: self.working_dir.clone(),
            concurrent_id: concurrent.n,
            concurrent_project_id: project.n,
            tls_ca_pem: runner
                .tls_ca_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok()),
            object_cache: true,
            keep_step_output: !self.no_journal,
        };
        info!(job = job.id, runner = runner.token.short(), project = %job.job_info.project_full_path, "job received");
        let (short, id) = (runner.token.short().to_string(), job.id);
        match self.engine(&runner).await {
            Ok(engine) => {
                let driver = self.driver(engine, api, !self.no_journal);
                driver.run(runner, *job, ctx, cancel).await;
            }
            Err(e) => {
                let driver = self.driver(
                    Arc::new(crate::driver::Unavailable(e)),
                    api,
                    !self.no_journal,
                );
                driver.run(runner, *job, ctx, cancel).await;
            }
        }
        if let Some(j) = &self.journal {
            j.ended(&short, id);
        }
    }
}

/// What a journaled job holds from ferry's start on: its slots (`CI_CONCURRENT_ID`,
/// `CI_CONCURRENT_PROJECT_ID`, on which its builds dir depends) and the claim on its project
/// dir (spared by the builds dir eviction).
struct ResumedHold {
    _concurrent: SlotGuard,
    _project: SlotGuard,
    ctx: JobContext,
    workspace: Option<crate::driver::Workspace>,
}

impl Handler {
    /// Takes what the journaled job `entry` had, before any new job could take it.
    fn hold_resumed(&self, runner: &RunnerSection, entry: &crate::journal::Entry) -> ResumedHold {
        let short = runner.token.short().to_string();
        let project = format!("{short}/{}", entry.project_id);
        let ctx = JobContext {
            working_dir: self.working_dir.clone(),
            concurrent_id: entry.concurrent_id,
            concurrent_project_id: entry.concurrent_project_id,
            tls_ca_pem: runner
                .tls_ca_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok()),
            object_cache: true,
            // A resumed job was journaled: it stays so, `--no-journal` or not.
            keep_step_output: true,
        };
        let workspace = crate::driver::claim_resumed(&self.workspaces, entry, runner, &ctx);
        ResumedHold {
            _concurrent: self.slots.take_n(short, entry.concurrent_id),
            _project: self.slots.take_n(project, entry.concurrent_project_id),
            ctx,
            workspace,
        }
    }

    /// Resumes a job an earlier ferry left running (docs/crash-safety.md), in what it had
    /// ([`hold_resumed`](Self::hold_resumed)).
    async fn resume(
        &self,
        runner: Arc<RunnerSection>,
        entry: crate::journal::Entry,
        mut hold: ResumedHold,
        cancel: CancellationToken,
    ) {
        let api = match self.source.client(&runner) {
            Ok(c) => c,
            Err(e) => {
                error!(job = entry.job_id, error = %e, "no GitLab client for the job's runner");
                return;
            }
        };
        let (ctx, workspace) = (hold.ctx.clone(), hold.workspace.take());
        match self.engine(&runner).await {
            Ok(engine) => {
                let driver = self.driver(engine, api, true);
                driver.resume(runner, entry, ctx, workspace, cancel).await;
            }
            Err(e) => {
                let driver = self.driver(Arc::new(crate::driver::Unavailable(e)), api, true);
                driver.resume(runner, entry, ctx, workspace, cancel).await;
            }
        }
        drop(hold);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reload the config when the file changes (checked every 3 s) and on SIGHUP. A file that fails
/// to load keeps the previous config and logs the error.
async fn reloader(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    metrics: Metrics,
    system_id: String,
    stop: CancellationToken,
) {
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut seen = mtime(&path);
    let mut tick = tokio::time::interval(RELOAD_CHECK);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = stop.cancelled() => return,
        };
        let now = mtime(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match ferry_config::load(&path) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    warn!("{}: {w}", path.display());
                }
                info!(
                    runners = cfg.runners.len(),
                    concurrent = cfg.global.concurrent,
                    "configuration reloaded"
                );
                publish_settings(&metrics, &cfg, &system_id);
                tx.send_replace(Arc::new(cfg));
            }
            Err(e) => {
                error!(error = %e, "configuration not reloaded: keeping the previous one");
                metrics.config_load(false);
                metrics.health.config_reload_failed(e.to_string());
            }
        }
    }
}

/// The limits of `ferry run`'s flags.
fn disk_limits(args: &RunArgs) -> crate::disk::DiskLimits {
    use ferry_executor::disk::Limits;
    crate::disk::DiskLimits {
        cache: Limits {
            max_bytes: Some(args.cache_max_size),
            max_age: Some(args.cache_max_age),
        },
        builds: Limits {
            max_bytes: Some(args.builds_max_size),
            max_age: Some(args.builds_max_age),
        },
        volumes: Limits {
            max_bytes: None,
            max_age: Some(args.volume_max_age),
        },
        images: Limits {
            max_bytes: args.image_max_size,
            max_age: args.image_max_age,
        },
        interval: args.evict_interval,
    }
}

/// A config (at start or reloaded) is in force: its settings as metrics, its runners to /health.
fn publish_settings(metrics: &Metrics, cfg: &Config, system_id: &str) {
    metrics.config_load(true);
    metrics.health.config_loaded(cfg);
    metrics.concurrent.set(cfg.global.concurrent as i64);
    for r in &cfg.runners {
        metrics
            .limit
            .get_or_create(&RunnerLabels {
                runner: r.token.short().to_string(),
                runner_name: r.name.clone(),
                system_id: system_id.to_string(),
            })
            .set(r.limit as i64);
        metrics.request_limit(r.token.short(), system_id, r.request_concurrency);
    }
}

/// Returns once a handover (`SIGUSR2`) can leave every job to the next ferry
/// (docs/crash-safety.md): the requests in flight were answered (each within its own timeout)
/// and no job they brought, nor any other, is still being prepared. Without a journal, jobs
/// cannot be left: it returns once the requests are answered (as before the handover waited).
async fn handed_over(
    handing_over: &CancellationToken,
    requests: TaskTracker,
    journal: Option<&crate::journal::Journal>,
) {
    handing_over.cancelled().await;
    requests.close();
    requests.wait().await;
    let Some(journal) = journal else {
        return;
    };
    let mut told = false;
    loop {
        let preparing = journal.being_prepared(std::time::Instant::now());
        if preparing == 0 {
            return;
        }
        if !told {
            info!(
                jobs = preparing,
                "handing over: waiting for jobs being prepared to start their first step (a second SIGUSR2 does not wait)"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pings each runner's Docker daemon every [`DOCKER_PROBE_EVERY`](crate::health::DOCKER_PROBE_EVERY) for `/health`.
async fn probe_docker(
    config: watch::Receiver<Arc<Config>>,
    health: crate::health::Health,
    stop: CancellationToken,
) {
    use crate::health::{DOCKER_PROBE_EVERY, DOCKER_PROBE_TIMEOUT};
    let mut tick = tokio::time::interval(DOCKER_PROBE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let runners = config.borrow().runners.clone();
        for r in &runners {
            let ping = async {
                let engine = DockerEngine::new(&r.docker, r.token.ci_short_token()).await?;
                engine.ping().await
            };
            let outcome = match tokio::time::timeout(DOCKER_PROBE_TIMEOUT, ping).await {
                Ok(Ok(version)) => Ok(version),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "the Docker daemon did not answer within {}s",
                    DOCKER_PROBE_TIMEOUT.as_secs()
                )),
            };
            health.docker(r.token.short(), outcome);
        }
    }
}

/// `FERRY_DOCKER_REMOTE=true|false` (also `1`/`0`): force how the builds directory reaches the
/// Docker daemon; unset or empty = decided from the daemon's address.
fn docker_remote_override(value: Option<String>) -> anyhow::Result<Option<bool>> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
        Some(v) => anyhow::bail!("FERRY_DOCKER_REMOTE={v:?}: expected true or false"),
    }
}

pub async fn run(path: &Path, config: Config, args: &RunArgs) -> anyhow::Result<()> {
    let connection_max_age = config.global.connection_max_age;
    info!(service = %args.service, config = %path.display(), "starting ferry");
    if let Some(user) = &args.user {
        // gitlab-runner runs shell-executor builds as --user; ferry has no shell executor.
        info!(
            user = %user,
            "--user applies to gitlab-runner's shell executor only; ferry runs jobs in Docker containers (as their image's user) and ignores it"
        );
    }
    if args.syslog && !Path::new("/dev/log").exists() {
        warn!(
            "--syslog: /dev/log does not exist (no system logger runs here); logging to stderr only"
        );
    }
    for w in &config.warnings {
        warn!("{}: {w}", path.display());
    }
    let system_id = ferry_config::load_or_create_system_id(path)?;
    let docker_remote = docker_remote_override(std::env::var("FERRY_DOCKER_REMOTE").ok())?;
    let working_dir = args
        .working_directory
        .clone()
        .unwrap_or_else(default_working_dir);
    std::fs::create_dir_all(&working_dir)
        .with_context(|| format!("creating {}", working_dir.display()))?;
    let metrics = Metrics::new();
    publish_settings(&metrics, &config, &system_id);
    let stop = CancellationToken::new();

    if let Some(addr) = args
        .listen_address
        .clone()
        .or_else(|| config.global.listen_address.clone())
    {
        let addr = crate::metrics::listen_address(&addr);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listen_address {addr}"))?;
        info!(address = %addr, "metrics server listening (/metrics, /health, /debug/jobs/list)");
        let (m, s) = (metrics.clone(), stop.clone());
        tokio::spawn(async move {
            crate::metrics::serve(listener, m, async move { s.cancelled().await }).await
        });
    }

    // The jobs an earlier ferry left running (docs/crash-safety.md): read before the
    // leftovers are removed, whose removal spares them.
    let journal = match crate::journal::Journal::open(&working_dir) {
        Ok(j) => Some(Arc::new(j)),
        Err(e) => {
            warn!(error = %e, "the job journal cannot be used: jobs of this run cannot be resumed after a restart");
            None
        }
    };
    let journaled = match &journal {
        Some(j) => {
            let j = j.clone();
            let found = tokio::task::spawn_blocking(move || j.read_all())
                .await
                .unwrap_or_default();
            for w in &found.warnings {
                warn!("{w}");
            }
            found.entries
        }
        None => Vec::new(),
    };
    // A journaled job is resumed by the [[runners]] entry of the same runner (short token) and
    // GitLab URL. One that matches none (the token or URL was changed, the entry removed)
    // cannot be resumed nor reported: its containers and its journal entry are removed below
    // (docs/crash-safety.md). The same match spares its containers and resumes it.
    let belongs = |e: &crate::journal::Entry, r: &RunnerSection| {
        r.token.short() == e.runner && r.url == e.url
    };
    let (journaled, orphaned): (Vec<_>, Vec<_>) = journaled
        .into_iter()
        .partition(|e| config.runners.iter().any(|r| belongs(e, r)));
    for e in &orphaned {
        warn!(
            job = e.job_id,
            runner = %e.runner,
            url = %e.url,
            "a journaled job belongs to no [[runners]] entry of this configuration (same token and URL): its containers and journal entry are removed"
        );
    }
    // Their objects, by the runner label they carry (an entry of an earlier ferry without it:
    // its containers cannot be told from another runner's, and are left).
    let orphaned_ids: Vec<(String, u64)> = orphaned
        .iter()
        .filter_map(|e| e.runner_label.clone().map(|l| (l, e.job_id)))
        .collect();

    // Leftovers of a crashed earlier run: containers, networks and volumes labelled as ferry's.
    // And once per runner: how the job's directories reach its containers.
    let mut described = BTreeSet::new();
    // The containers of `orphaned` are gone (or there were none to remove): their journal
    // entries can go; else they are kept for the next start.
    let mut orphans_removed = orphaned_ids.is_empty();
    for r in &config.runners {
        if let Ok(engine) = DockerEngine::new(&r.docker, r.token.ci_short_token()).await {
            let engine = match docker_remote {
                Some(remote) => engine.with_remote(remote),
                None => engine,
            };
            if described.insert(key(r)) {
                info!(
                    runner = r.token.short(),
                    "{}",
                    engine.describe_paths(&working_dir)
                );
            }
            let keep: Vec<u64> = journaled
                .iter()
                .filter(|e| belongs(e, r))
                .map(|e| e.job_id)
                .collect();
            // Labelled with the old runner's token, which no runner here removes.
            if !orphaned_ids.is_empty() {
                match engine.remove_jobs_of(&orphaned_ids).await {
                    Ok(_) => orphans_removed = true,
                    Err(e) => {
                        warn!(runner = r.token.short(), error = %e, "removing the containers of journaled jobs no runner resumes")
                    }
                }
            }
            match engine.cleanup_leftovers_except(&keep).await {
                Ok(0) => {}
                Ok(n) => info!(
                    runner = r.token.short(),
                    removed = n,
                    "removed leftovers of an earlier run"
                ),
                Err(e) => {
                    warn!(runner = r.token.short(), error = %e, "Docker is not reachable; jobs will fail until it is")
                }
            }
        }
    }

    if let Some(j) = &journal
        && orphans_removed
    {
        for e in &orphaned {
            if let Err(err) = j.remove(&e.runner, e.job_id) {
                warn!(job = e.job_id, error = %err, "removing a journal entry");
            }
        }
    }

    match ferry_executor::sources::check_git().await {
        Ok(v) => info!(git = %v, "git found: sources are fetched on this host"),
        Err(e) => warn!(error = %e, "git is missing or too old: jobs that need sources will fail"),
    }
    let confined = tokio::task::spawn_blocking(ferry_executor::sources::confinement_available)
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match confined {
        Ok(()) => {
            info!("host git runs with a read-only view of the host but the job's directories")
        }
        Err(reason) => warn!(
            %reason,
            "host git cannot be confined to the job's directories (needs root with CAP_SYS_ADMIN on Linux 5.12+): it runs with ferry's full rights"
        ),
    }
    let shutdown_timeout = config.global.shutdown_timeout;
    let (tx, rx) = watch::channel(Arc::new(config));

    // Bounding ferry's data on this host (docs/docker-executor.md, "Disk use").
    let (usage, warning) = ferry_executor::docker::usage::UsageRecord::open(&working_dir);
    if let Some(w) = warning {
        warn!("{w}");
    }
    let usage = Arc::new(usage);
    let workspaces = crate::driver::Workspaces::default();
    tokio::spawn(reloader(
        path.to_path_buf(),
        tx,
        metrics.clone(),
        system_id.clone(),
        stop.clone(),
    ));
    tokio::spawn(probe_docker(
        rx.clone(),
        metrics.health.clone(),
        stop.clone(),
    ));

    let handing_over = CancellationToken::new();
    let source = Arc::new(
        GitLabSource::new(system_id.clone(), metrics.clone(), path.to_path_buf())
            .with_connection_max_age(connection_max_age)
            // With `--no-journal` no job it takes can be left for a later ferry: a handover
            // does not wait for them to start (docs/crash-safety.md).
            .with_handover(
                handing_over.clone(),
                journal.clone().filter(|_| !args.no_journal),
            ),
    );
    let cleanups = TaskTracker::new();
    let handler = Arc::new(Handler {
        source: source.clone(),
        working_dir,
        metrics: metrics.clone(),
        system_id,
        engines: tokio::sync::Mutex::default(),
        docker_remote,
        described: tokio::sync::Mutex::new(described),
        slots: Arc::default(),
        cleanups: cleanups.clone(),
        workspaces,
        usage,
        journal: journal.clone(),
        no_journal: args.no_journal,
    });
    let daemon = Daemon::new(source, handler.clone());

    // The jobs an earlier ferry left running, each followed to its end in the slots it had:
    // its CI_CONCURRENT_ID and CI_CONCURRENT_PROJECT_ID (taken here), a `concurrent` slot and
    // its runner's `limit` slot (taken by the daemon before its first request), as any running
    // job (docs/crash-safety.md).
    let mut adopted = Vec::new();
    {
        let config = rx.borrow().clone();
        for entry in journaled {
            let Some(runner) = config.runners.iter().find(|r| belongs(&entry, r)) else {
                continue;
            };
            let hold = handler.hold_resumed(runner, &entry);
            let (handler, section) = (handler.clone(), Arc::new(runner.clone()));
            adopted.push(crate::daemon::Adopted {
                runner: runner.clone(),
                job: Box::new(move |cancel| {
                    Box::pin(async move { handler.resume(section, entry, hold, cancel).await })
                }),
            });
        }
    }
    // After the resumed jobs claimed their project dirs, which it spares.
    tokio::spawn(crate::disk::evictor(
        handler.working_dir.clone(),
        disk_limits(args),
        handler.workspaces.clone(),
        handler.usage.clone(),
        rx.clone(),
        stop.clone(),
    ));
    let forced = CancellationToken::new();

    let mut quit = signal(SignalKind::quit())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let graceful_started = CancellationToken::new();
    let signals = {
        let (forced, graceful_started) = (forced.clone(), graceful_started.clone());
        let handing_over = handing_over.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = quit.recv() => {
                        info!("SIGQUIT: stopping polling, waiting for running jobs to finish");
                        metrics.set_process_state("graceful-shutdown");
                        graceful_started.cancel();
                    }
                    _ = usr2.recv() => {
                        // Handover (docs/crash-safety.md): the jobs keep running, their
                        // journal entries stay, and the next ferry resumes them. First the
                        // requests in flight are answered and the jobs being prepared reach
                        // their first step; a second SIGUSR2 does not wait.
                        if handing_over.is_cancelled() {
                            info!("second SIGUSR2: handing over now");
                            std::process::exit(0);
                        }
                        info!("SIGUSR2: handing over: no new job is requested; exiting once the requests in flight are answered and no job is being prepared");
                        metrics.set_process_state("handover");
                        handing_over.cancel();
                    }
                    _ = term.recv() => { count += 1; }
                    _ = int.recv() => { count += 1; }
                }
                if count == 1 && !forced.is_cancelled() {
                    info!(
                        ?shutdown_timeout,
                        "stopping: cancelling running jobs (a second signal exits at once)"
                    );
                    metrics.set_process_state("forceful-shutdown");
                    forced.cancel();
                } else if count >= 2 {
                    error!("second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
    };
    metrics.set_process_state("running");
    let (g, f, h) = (
        graceful_started.clone(),
        forced.clone(),
        handing_over.clone(),
    );
    let requests = daemon.requests();
    let run = daemon.run_with(
        rx,
        adopted,
        async move { g.cancelled().await },
        async move { f.cancelled().await },
        async move { h.cancelled().await },
    );
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => {}
        _ = async { forced.cancelled().await; tokio::time::sleep(shutdown_timeout).await } => {
            error!(?shutdown_timeout, "shutdown_timeout reached: exiting with jobs still running");
        }
        _ = handed_over(&handing_over, requests, journal.as_deref()) => {
            info!("handing over: running jobs are left for the next ferry");
            std::process::exit(0);
        }
    }
    // Jobs are over; their containers may still be being removed.
    cleanups.close();
    if tokio::time::timeout(crate::driver::CLEANUP_TIMEOUT, cleanups.wait())
        .await
        .is_err()
    {
        warn!("containers of finished jobs were still being removed at exit");
    }
    stop.cancel();
    signals.abort();
    info!("ferry stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::docker_remote_override;

    #[test]
    fn ferry_docker_remote_values() {
        assert_eq!(docker_remote_override(None).unwrap(), None);
        assert_eq!(docker_remote_override(Some(" ".into())).unwrap(), None);
        assert_eq!(
            docker_remote_override(Some("TRUE".into())).unwrap(),
            Some(true)
        );
        assert_eq!(
            docker_remote_override(Some("1".into())).unwrap(),
            Some(true)
        );
        assert_eq!(
            docker_remote_override(Some("false".into())).unwrap(),
            Some(false)
        );
        let err = docker_remote_override(Some("yes".into())).unwrap_err();
        assert!(err.to_string().contains("FERRY_DOCKER_REMOTE"), "{err}");
    }
}
