//! Prometheus metrics with gitlab-runner's names and labels, the process metrics, the running
//! jobs, and the HTTP server of `/metrics`, `/health`, `/health/ready` and `/debug/jobs/list`
//! (docs/monitoring.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::health::Health;
use crate::trace::TraceWriter;

/// gitlab-runner's labels of a runner entry: its short token, name and the host's system ID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunnerLabels {
    pub runner: String,
    pub runner_name: String,
    pub system_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    runner: String,
    runner_name: String,
    system_id: String,
    mode: String,
}

/// A received job's `job_info` queue fields.
#[derive(Clone, Debug, Default)]
pub struct QueueInfo {
    pub time_in_queue_seconds: f64,
    pub project_jobs_running: String,
    pub size: u64,
    pub depth: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    runner: String,
    runner_name: String,
    system_id: String,
    project_jobs_running: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    runner: String,
    runner_name: String,
    system_id: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    runner: String,
    runner_name: String,
    failure_reason: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    runner: String,
    system_id: String,
    endpoint: String,
    status: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiDurationLabels {
    runner: String,
    system_id: String,
    endpoint: String,
    status_class: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    runner: String,
    system_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutionModeLabels {
    mode: String,
    executor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    name: String,
    version: String,
    revision: String,
    os: String,
    architecture: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobsLabels {
    runner: String,
    runner_name: String,
    system_id: String,
    state: String,
    stage: String,
    executor_stage: String,
}

/// gitlab-runner's job execution mode: ferry runs every job as a script ("traditional"), not
/// as CI steps.
const MODE: &str = "traditional";

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// gitlab-runner's buckets of `gitlab_runner_job_duration_seconds`.
fn job_histogram() -> Histogram {
    Histogram::new([
        30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
    ])
}

/// gitlab-runner's buckets of `gitlab_runner_job_stage_duration_seconds`: from a second (a
/// cache restore) to an hour (a long script).
fn stage_histogram() -> Histogram {
    Histogram::new([
        1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
    ])
}

/// gitlab-runner's buckets of `gitlab_runner_api_request_duration_seconds`.
fn api_histogram() -> Histogram {
    Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// Every metric ferry exports, the running jobs, and the health state. Cheap to clone (all
/// handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    jobs_total: Family<RunnerLabels, Counter>,
    execution_mode: Family<ExecutionModeLabels, Counter>,
    failed_jobs: Family<FailureLabels, Counter>,
    job_duration: HistogramFamily<ModeLabels>,
    stage_duration: HistogramFamily<StageLabels>,
    queue_duration: HistogramFamily<QueueLabels>,
    queue_size: Family<RunnerLabels, Gauge>,
    queue_depth: Family<RunnerLabels, Gauge>,
    api_requests: Family<ApiLabels, Counter>,
    api_durations: HistogramFamily<ApiDurationLabels>,
    requests_in_flight: Family<RequestLabels, Gauge>,
    requests_exceeded: Family<RequestLabels, Counter>,
    request_hard_limit: Family<RequestLabels, Gauge>,
    config_loaded: Counter,
    config_loading_errors: Counter,
    config_saved: Counter,
    config_saving_errors: Counter,
    /// gitlab_runner_concurrent.
    pub concurrent: Gauge,
    /// gitlab_runner_limit{runner,runner_name,system_id}.
    pub limit: Family<RunnerLabels, Gauge>,
    /// The jobs running now (`gitlab_runner_jobs`, `/debug/jobs/list`).
    pub running: RunningJobs,
    /// What `/health` reports.
    pub health: Health,
    state: ProcessState,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("gitlab_runner");
        let running = RunningJobs::default();
        registry.register_collector(Box::new(running.clone()));
        registry.register_collector(Box::new(ErrorsCollector));
        let state = ProcessState::default();
        registry.register_collector(Box::new(state.clone()));
        let jobs_total = Family::<RunnerLabels, Counter>::default();
        let execution_mode = Family::<ExecutionModeLabels, Counter>::default();
        let failed_jobs = Family::<FailureLabels, Counter>::default();
        let job_duration = HistogramFamily::<ModeLabels>::new_with_constructor(job_histogram);
        let stage_duration = HistogramFamily::<StageLabels>::new_with_constructor(stage_histogram);
        // gitlab-runner's buckets are the stage histogram's.
        let queue_duration = HistogramFamily::<QueueLabels>::new_with_constructor(stage_histogram);
        let queue_size = Family::<RunnerLabels, Gauge>::default();
        let queue_depth = Family::<RunnerLabels, Gauge>::default();
        registry.register(
            "job_queue_duration_seconds",
            "A histogram representing job queue duration",
            queue_duration.clone(),
        );
        registry.register(
            "job_queue_size",
            "A gauge representing the size of the queue for the runner",
            queue_size.clone(),
        );
        registry.register(
            "job_queue_depth",
            "A gauge representing the search depth in the queue for the runner",
            queue_depth.clone(),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        let api_durations =
            HistogramFamily::<ApiDurationLabels>::new_with_constructor(api_histogram);
        let requests_in_flight = Family::<RequestLabels, Gauge>::default();
        let requests_exceeded = Family::<RequestLabels, Counter>::default();
        registry.register(
            "request_concurrency_exceeded",
            "Count of excess requests above the configured request_concurrency limit",
            requests_exceeded.clone(),
        );
        let request_hard_limit = Family::<RequestLabels, Gauge>::default();
        let config_loaded = Counter::default();
        let config_loading_errors = Counter::default();
        let config_saved = Counter::default();
        let config_saving_errors = Counter::default();
        let concurrent = Gauge::default();
        let limit = Family::<RunnerLabels, Gauge>::default();
        let version = Family::<VersionLabels, Gauge>::default();
        registry.register("jobs", "Total number of handled jobs", jobs_total.clone());
        registry.register(
            "job_execution_mode",
            "Total number of jobs grouped by execution mode and executor",
            execution_mode.clone(),
        );
        registry.register(
            "failed_jobs",
            "Total number of failed jobs",
            failed_jobs.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Histogram of job durations",
            job_duration.clone(),
        );
        registry.register(
            "job_stage_duration_seconds",
            "Histogram of each job stage duration",
            stage_duration.clone(),
        );
        registry.register(
            "api_request_statuses",
            "The total number of API requests made by GitLab Runner, partitioned by runner, system_id, endpoint, status and method.",
            api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Latency histogram of API requests made by GitLab Runner, partitioned by runner, system_id, endpoint, status_class and method.",
            api_durations.clone(),
        );
        registry.register(
            "request_concurrency",
            "The current number of concurrent requests for a new job",
            requests_in_flight.clone(),
        );
        registry.register(
            "request_concurrency_hard_limit",
            "Configured request_concurrency limit",
            request_hard_limit.clone(),
        );
        registry.register(
            "configuration_saved",
            "Total number of times the configuration file was saved by Runner process",
            config_saved.clone(),
        );
        registry.register(
            "configuration_saving_error",
            "Total number of times the configuration file was not saved by Runner process due to errors",
            config_saving_errors.clone(),
        );
        registry.register(
            "configuration_loaded",
            "Total number of times the configuration file was loaded by Runner process",
            config_loaded.clone(),
        );
        registry.register(
            "configuration_loading_error",
            "Total number of times the configuration file was not loaded by Runner process due to errors",
            config_loading_errors.clone(),
        );
        registry.register(
            "concurrent",
            "The current value of concurrent setting",
            concurrent.clone(),
        );
        registry.register("limit", "The current value of limit setting", limit.clone());
        registry.register(
            "version_info",
            "A metric with a constant '1' value labeled by different build stats fields.",
            version.clone(),
        );
        version
            .get_or_create(&VersionLabels {
                name: "ferry".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                revision: crate::REVISION.into(),
                os: std::env::consts::OS.into(),
                architecture: ferry_config::platform::go_arch().into(),
            })
            .set(1);
        Metrics {
            registry: Arc::new(root),
            jobs_total,
            queue_duration,
            queue_size,
            queue_depth,
            execution_mode,
            failed_jobs,
            job_duration,
            stage_duration,
            api_requests,
            api_durations,
            requests_in_flight,
            requests_exceeded,
            request_hard_limit,
            config_loaded,
            config_loading_errors,
            config_saved,
            config_saving_errors,
            concurrent,
            limit,
            running,
            health: Health::default(),
            state,
        }
    }

    /// Count one API request (endpoint like `request_job`, status like `201`, or `error` when
    /// GitLab did not answer; method in lower case) and, when answered, its time.
    pub fn api_request(
        &self,
        runner: &str,
        system_id: &str,
        endpoint: &str,
        status: &str,
        method: &str,
        took: Duration,
    ) {
        self.api_requests
            .get_or_create(&ApiLabels {
                runner: runner.into(),
                system_id: system_id.into(),
                endpoint: endpoint.into(),
                status: status.into(),
                method: method.into(),
            })
            .inc();
        if let Some(class) = status.chars().next().filter(char::is_ascii_digit) {
            self.api_durations
                .get_or_create(&ApiDurationLabels {
                    runner: runner.into(),
                    system_id: system_id.into(),
                    endpoint: endpoint.into(),
                    status_class: format!("{class}xx"),
                    method: method.into(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// A job request is being sent: counted in `gitlab_runner_request_concurrency` until the
    /// guard is dropped.
    pub fn request_started(&self, runner: &str, system_id: &str) -> InFlight {
        let gauge = self
            .requests_in_flight
            .get_or_create(&RequestLabels {
                runner: runner.into(),
                system_id: system_id.into(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// A job request was due while `request_concurrency` requests were in flight.
    pub fn request_concurrency_exceeded(&self, runner: &str, system_id: &str) {
        self.requests_exceeded
            .get_or_create(&RequestLabels {
                runner: runner.into(),
                system_id: system_id.into(),
            })
            .inc();
    }

    /// A runner entry's `request_concurrency`.
    pub fn request_limit(&self, runner: &str, system_id: &str, limit: usize) {
        self.request_hard_limit
            .get_or_create(&RequestLabels {
                runner: runner.into(),
                system_id: system_id.into(),
            })
            .set(limit as i64);
    }

    /// The state of the ferry process: `starting`, `running`, `graceful-shutdown` or
    /// `forceful-shutdown` (gitlab-runner's names), or ferry's `handover` (docs/crash-safety.md).
    pub fn set_process_state(&self, state: &'static str) {
        *self.state.0.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The config file was written (a rotated token), or failed to be.
    pub fn config_save(&self, ok: bool) {
        if ok {
            self.config_saved.inc();
        } else {
            self.config_saving_errors.inc();
        }
    }

    /// What GitLab said of a received job's time in its queue (`job_info`), as gitlab-runner
    /// records it: the time, the queue size and the search depth.
    pub fn job_queue(&self, runner: &RunnerLabels, queue: &QueueInfo) {
        let labels = QueueLabels {
            runner: runner.runner.clone(),
            runner_name: runner.runner_name.clone(),
            system_id: runner.system_id.clone(),
            project_jobs_running: queue.project_jobs_running.clone(),
        };
        if queue.time_in_queue_seconds.is_finite() && queue.time_in_queue_seconds >= 0.0 {
            self.queue_duration
                .get_or_create(&labels)
                .observe(queue.time_in_queue_seconds);
        }
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_size.get_or_create(runner).set(clamp(queue.size));
        self.queue_depth
            .get_or_create(runner)
            .set(clamp(queue.depth));
    }

    /// A job was received.
    pub fn job_started(&self, runner: &RunnerLabels) {
        self.jobs_total.get_or_create(runner).inc();
        self.execution_mode
            .get_or_create(&ExecutionModeLabels {
                mode: MODE.into(),
                executor: "docker".into(),
            })
            .inc();
    }

    /// A job failed with `failure_reason` (as sent to GitLab).
    pub fn job_failed(&self, runner: &RunnerLabels, failure_reason: &str) {
        self.failed_jobs
            .get_or_create(&FailureLabels {
                runner: runner.runner.clone(),
                runner_name: runner.runner_name.clone(),
                failure_reason: failure_reason.into(),
                mode: MODE.into(),
            })
            .inc();
    }

    /// A job ended after `took`.
    pub fn job_finished(&self, runner: &RunnerLabels, took: Duration) {
        self.job_duration
            .get_or_create(&ModeLabels {
                runner: runner.runner.clone(),
                runner_name: runner.runner_name.clone(),
                system_id: runner.system_id.clone(),
                mode: MODE.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// One stage of a job (a section of its log, or `cleanup`) took `took`.
    pub fn stage_finished(&self, runner: &RunnerLabels, stage: &str, took: Duration) {
        self.stage_duration
            .get_or_create(&StageLabels {
                runner: runner.runner.clone(),
                runner_name: runner.runner_name.clone(),
                system_id: runner.system_id.clone(),
                stage: stage.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The config file was (re)loaded, or failed to.
    pub fn config_load(&self, ok: bool) {
        if ok {
            self.config_loaded.inc();
        } else {
            self.config_loading_errors.inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A job request in flight (see [`Metrics::request_started`]).
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `gitlab_runner_process_state_info{state}` and `/debug/process/state`.
#[derive(Clone, Debug)]
struct ProcessState(Arc<Mutex<&'static str>>);

impl Default for ProcessState {
    fn default() -> Self {
        ProcessState(Arc::new(Mutex::new("starting")))
    }
}

impl ProcessState {
    fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

impl Collector for ProcessState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "process_state_info",
            "This metric provides info about the current state of the GitLab Runner process",
            None,
            MetricType::Gauge,
        )?;
        let labels = StateLabels { state: self.get() };
        ConstGauge::new(1).encode(family.encode_family(&labels)?)
    }
}

/// `gitlab_runner_errors_total{level}`: warnings and errors in ferry's own log
/// ([`crate::logging::logged_problems`]).
#[derive(Debug)]
struct ErrorsCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LevelLabels {
    level: &'static str,
}

impl Collector for ErrorsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (warnings, errors) = crate::logging::logged_problems();
        let mut family = encoder.encode_descriptor(
            "errors",
            "The number of caught errors.",
            None,
            MetricType::Counter,
        )?;
        for (level, n) in [("error", errors), ("warning", warnings)] {
            ConstCounter::new(n).encode(family.encode_family(&LevelLabels { level })?)?;
        }
        Ok(())
    }
}

/// The standard process metrics (`process_cpu_seconds_total`, ...), read from /proc at each
/// scrape; a value the system does not give is left out.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(v) = m.cpu_seconds_total {
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(e)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                m.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                m.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                m.virtual_memory_max_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                m.resident_memory_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                m.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                m.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v as f64).encode(e)?;
            }
        }
        Ok(())
    }
}

/// One running job, for `gitlab_runner_jobs` and `/debug/jobs/list`.
struct RunningJob {
    url: String,
    runner: RunnerLabels,
    started: tokio::time::Instant,
    log: TraceWriter,
}

/// The jobs running now. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct RunningJobs {
    jobs: Arc<Mutex<BTreeMap<u64, RunningJob>>>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for RunningJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningJobs").finish_non_exhaustive()
    }
}

/// A job's place in [`RunningJobs`]: dropped when the job ends.
pub struct RunningGuard {
    jobs: RunningJobs,
    key: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.jobs.lock().remove(&self.key);
    }
}

/// One line of `/debug/jobs/list` or one job of `gitlab_runner_jobs`.
struct JobView {
    url: String,
    runner: RunnerLabels,
    stage: String,
    executor_stage: &'static str,
    duration: Duration,
}

impl RunningJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, RunningJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job (its web `url`, its runner, its log for the current stage) until the guard
    /// is dropped.
    pub fn add(&self, url: String, runner: RunnerLabels, log: TraceWriter) -> RunningGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let job = RunningJob {
            url,
            runner,
            started: tokio::time::Instant::now(),
            log,
        };
        self.lock().insert(key, job);
        RunningGuard {
            jobs: self.clone(),
            key,
        }
    }

    fn views(&self) -> Vec<JobView> {
        self.lock()
            .values()
            .map(|j| {
                let stage = j.log.current_stage();
                JobView {
                    url: j.url.clone(),
                    runner: j.runner.clone(),
                    executor_stage: executor_stage(stage.as_deref()),
                    stage: stage.unwrap_or_default(),
                    duration: j.started.elapsed(),
                }
            })
            .collect()
    }

    /// `/debug/jobs/list`: gitlab-runner's format, one line per job.
    pub fn list(&self) -> String {
        self.views()
            .iter()
            .map(|j| {
                format!(
                    "url={} state=running stage={} executor_stage={} duration={}\n",
                    j.url,
                    j.stage,
                    j.executor_stage,
                    go_duration(j.duration)
                )
            })
            .collect()
    }
}

/// `gitlab_runner_jobs`: the running jobs by runner, state, stage and executor stage.
impl Collector for RunningJobs {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts: BTreeMap<Vec<String>, (JobsLabels, i64)> = BTreeMap::new();
        for j in self.views() {
            let labels = JobsLabels {
                runner: j.runner.runner,
                runner_name: j.runner.runner_name,
                system_id: j.runner.system_id,
                state: "running".into(),
                stage: j.stage,
                executor_stage: j.executor_stage.into(),
            };
            let key = vec![
                labels.runner.clone(),
                labels.runner_name.clone(),
                labels.system_id.clone(),
                labels.stage.clone(),
                labels.executor_stage.clone(),
            ];
            counts.entry(key).or_insert((labels, 0)).1 += 1;
        }
        let mut family = encoder.encode_descriptor(
            "jobs",
            "The current number of running builds.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, n) in counts.values() {
            ConstGauge::new(*n).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// gitlab-runner's executor stage of a job in the section `stage`: `docker_prepare` while the
/// containers are prepared, `docker_run` while a step runs in them, `created` before any
/// section; ferry's own `host` while it works on the host (sources, cache, artifacts).
fn executor_stage(stage: Option<&str>) -> &'static str {
    match stage {
        None => "created",
        Some("prepare_executor") => "docker_prepare",
        Some(s) if s.starts_with("step_") || s == "after_script" => "docker_run",
        Some(_) => "host",
    }
}

/// A duration as Go prints it (`850ms`, `12.5s`, `2m5.25s`, `1h0m3s`), millisecond precision.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let s = (ms % 60_000) as f64 / 1000.0;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s}s"));
    out
}

/// Serve `/metrics`, `/health` (and gitlab-runner's `/health/ready`) and `/debug/jobs/list`
/// on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::{Router, routing::get};
    let health = {
        let h = metrics.health.clone();
        move || {
            let report = h.report();
            let status = if report.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            async move {
                (
                    status,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    report.text,
                )
            }
        }
    };
    let jobs = metrics.running.clone();
    let state = metrics.state.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/debug/process/state",
            get(move || {
                let state = state.get();
                async move { format!("{state}\n") }
            }),
        )
        .route("/health", get(health.clone()))
        .route("/health/ready", get(health))
        .route(
            "/debug/jobs/list",
            get(move || {
                let list = jobs.list();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "text/plain"),
                            (header::HeaderName::from_static("x-list-version"), "2"),
                        ],
                        list,
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `host:port`, with gitlab-runner's default port 9252 when none is given.
pub fn listen_address(addr: &str) -> String {
    let addr = addr.trim();
    let has_port = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once(']')
            .is_some_and(|(_, p)| p.starts_with(':'))
    } else {
        addr.contains(':')
    };
    let addr = if has_port {
        addr.to_string()
    } else {
        format!("{addr}:9252")
    };
    if let Some(port) = addr.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RunnerLabels {
        RunnerLabels {
            runner: "abcd1234".into(),
            runner_name: "docker-1".into(),
            system_id: "s_0123456789ab".into(),
        }
    }

    #[test]
    fn renders_gitlab_runner_metric_names_and_labels() {
        let m = Metrics::new();
        m.job_started(&labels());
        m.job_failed(
            &labels(),
            crate::failure::FailureReason::ScriptFailure.as_str(),
        );
        m.stage_finished(&labels(), "step_script", Duration::from_millis(2500));
        m.job_finished(&labels(), Duration::from_secs(40));
        m.api_request(
            "abcd1234",
            "s_0123456789ab",
            "request_job",
            "204",
            "post",
            Duration::from_millis(300),
        );
        let in_flight = m.request_started("abcd1234", "s_0123456789ab");
        m.request_limit("abcd1234", "s_0123456789ab", 3);
        m.concurrent.set(4);
        m.config_load(true);
        assert!(
            m.render()
                .contains("gitlab_runner_process_state_info{state=\"starting\"} 1")
        );
        m.set_process_state("running");
        let text = m.render();
        for name in [
            "gitlab_runner_jobs_total{runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\"} 1",
            "gitlab_runner_job_execution_mode_total{mode=\"traditional\",executor=\"docker\"} 1",
            "gitlab_runner_failed_jobs_total{runner=\"abcd1234\",runner_name=\"docker-1\",failure_reason=\"script_failure\",mode=\"traditional\"} 1",
            "gitlab_runner_job_stage_duration_seconds_bucket{le=\"1.0\",runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",stage=\"step_script\"} 0",
            "gitlab_runner_job_stage_duration_seconds_bucket{le=\"3.0\",runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",stage=\"step_script\"} 1",
            "gitlab_runner_job_duration_seconds_bucket{le=\"60.0\",runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",mode=\"traditional\"} 1",
            "gitlab_runner_api_request_statuses_total{runner=\"abcd1234\",system_id=\"s_0123456789ab\",endpoint=\"request_job\",status=\"204\",method=\"post\"} 1",
            "gitlab_runner_api_request_duration_seconds_bucket{le=\"0.5\",runner=\"abcd1234\",system_id=\"s_0123456789ab\",endpoint=\"request_job\",status_class=\"2xx\",method=\"post\"} 1",
            "gitlab_runner_request_concurrency{runner=\"abcd1234\",system_id=\"s_0123456789ab\"} 1",
            "gitlab_runner_request_concurrency_hard_limit{runner=\"abcd1234\",system_id=\"s_0123456789ab\"} 3",
            "gitlab_runner_concurrent 4",
            "gitlab_runner_configuration_loaded_total 1",
            "gitlab_runner_process_state_info{state=\"running\"} 1",
            "gitlab_runner_errors_total{level=\"error\"} ",
            "gitlab_runner_errors_total{level=\"warning\"} ",
            "gitlab_runner_configuration_loading_error_total 0",
            "gitlab_runner_version_info{name=\"ferry\"",
            "\nprocess_cpu_seconds_total ",
            "\nprocess_resident_memory_bytes ",
            "\nprocess_virtual_memory_bytes ",
            "\nprocess_open_fds ",
            "\nprocess_max_fds ",
            "\nprocess_start_time_seconds ",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        drop(in_flight);
        assert!(m.render().contains(
            "gitlab_runner_request_concurrency{runner=\"abcd1234\",system_id=\"s_0123456789ab\"} 0"
        ));
        m.api_request(
            "abcd1234",
            "s",
            "request_job",
            "error",
            "post",
            Duration::ZERO,
        );
        assert!(
            !m.render().contains("status_class=\"error"),
            "no answer, no time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn running_jobs_are_listed_and_counted_by_stage() {
        let m = Metrics::new();
        let job = crate::api::JobRef {
            id: 7,
            token: "t".into(),
            debug_trace: false,
        };
        let (log, _handle) = crate::trace::start(
            job,
            std::sync::Arc::new(crate::trace::fake::FakeGitLab::new(&crate::api::JobRef {
                id: 7,
                token: "t".into(),
                debug_trace: false,
            })),
            crate::trace::TraceConfig::default(),
        );
        let guard = m.running.add(
            "https://gitlab.example.com/g/p/-/jobs/7".into(),
            labels(),
            log.clone(),
        );
        assert!(
            m.running
                .list()
                .ends_with("stage= executor_stage=created duration=0ms\n")
        );
        log.section_start("step_script", "Executing", false);
        tokio::time::sleep(Duration::from_millis(62_500)).await;
        assert_eq!(
            m.running.list(),
            "url=https://gitlab.example.com/g/p/-/jobs/7 state=running stage=step_script executor_stage=docker_run duration=1m2.5s\n"
        );
        assert!(m.render().contains(
            "gitlab_runner_jobs{runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",state=\"running\",stage=\"step_script\",executor_stage=\"docker_run\"} 1"
        ));
        drop(guard);
        assert_eq!(m.running.list(), "");
        assert!(!m.render().contains("gitlab_runner_jobs{"));
    }

    #[test]
    fn job_queue_series_are_gitlab_runners() {
        let m = Metrics::new();
        let queue = QueueInfo {
            time_in_queue_seconds: 4.5,
            project_jobs_running: "3+".into(),
            size: 12,
            depth: 2,
        };
        m.job_queue(&labels(), &queue);
        // GitLab's garbage is not a time in the queue.
        let bad = QueueInfo {
            time_in_queue_seconds: f64::NAN,
            ..queue.clone()
        };
        m.job_queue(&labels(), &bad);
        m.request_concurrency_exceeded("abcd1234", "s_0123456789ab");
        let text = m.render();
        for line in [
            "gitlab_runner_job_queue_duration_seconds_bucket{le=\"10.0\",runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",project_jobs_running=\"3+\"} 1",
            "gitlab_runner_job_queue_duration_seconds_bucket{le=\"3.0\",runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\",project_jobs_running=\"3+\"} 0",
            "gitlab_runner_job_queue_size{runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\"} 12",
            "gitlab_runner_job_queue_depth{runner=\"abcd1234\",runner_name=\"docker-1\",system_id=\"s_0123456789ab\"} 2",
            "gitlab_runner_request_concurrency_exceeded_total{runner=\"abcd1234\",system_id=\"s_0123456789ab\"} 1",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(850)), "850ms");
        assert_eq!(go_duration(ms(12_500)), "12.5s");
        assert_eq!(go_duration(ms(125_250)), "2m5.25s");
        assert_eq!(go_duration(ms(3_603_000)), "1h0m3s");
    }

    #[test]
    fn listen_address_defaults_port_9252() {
        assert_eq!(listen_address("localhost"), "localhost:9252");
        assert_eq!(listen_address("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(listen_address(":9252"), "0.0.0.0:9252");
        assert_eq!(listen_address("[::1]"), "[::1]:9252");
        assert_eq!(listen_address("[::1]:80"), "[::1]:80");
    }
}
