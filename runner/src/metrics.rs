//! Prometheus metrics with gitlab-runner's names, and the `/metrics` + `/health` endpoint.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunnerLabels {
    pub runner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabels {
    pub runner: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub runner: String,
    pub failure_reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub runner: String,
    pub endpoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub name: String,
    pub version: String,
    pub revision: String,
    pub os: String,
    pub architecture: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
    ])
}

/// Every metric ferry exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// gitlab_runner_jobs{runner,state}: jobs currently handled, by state.
    pub jobs: Family<JobStateLabels, Gauge>,
    /// gitlab_runner_jobs_total{runner}: jobs received.
    pub jobs_total: Family<RunnerLabels, Counter>,
    /// gitlab_runner_failed_jobs_total{runner,failure_reason}.
    pub failed_jobs: Family<FailureLabels, Counter>,
    /// gitlab_runner_job_duration_seconds{runner}.
    pub job_duration: Family<RunnerLabels, Histogram, fn() -> Histogram>,
    /// gitlab_runner_api_request_statuses_total{runner,endpoint,status}.
    pub api_requests: Family<ApiLabels, Counter>,
    /// gitlab_runner_concurrent.
    pub concurrent: Gauge,
    /// gitlab_runner_limit{runner}.
    pub limit: Family<RunnerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gitlab_runner");
        let jobs = Family::<JobStateLabels, Gauge>::default();
        let jobs_total = Family::<RunnerLabels, Counter>::default();
        let failed_jobs = Family::<FailureLabels, Counter>::default();
        let job_duration =
            Family::<RunnerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let api_requests = Family::<ApiLabels, Counter>::default();
        let concurrent = Gauge::default();
        let limit = Family::<RunnerLabels, Gauge>::default();
        let version = Family::<VersionLabels, Gauge>::default();
        registry.register("jobs", "The number of running jobs", jobs.clone());
        registry.register("jobs", "Total number of handled jobs", jobs_total.clone());
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
            "api_request_statuses",
            "The total number of api requests, partitioned by runner, endpoint and status.",
            api_requests.clone(),
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
            registry: Arc::new(registry),
            jobs,
            jobs_total,
            failed_jobs,
            job_duration,
            api_requests,
            concurrent,
            limit,
        }
    }

    /// Count one API request (endpoint like `request_job`, status like `201` or `error`).
    pub fn api_request(&self, runner: &str, endpoint: &str, status: &str) {
        self.api_requests
            .get_or_create(&ApiLabels {
                runner: runner.into(),
                endpoint: endpoint.into(),
                status: status.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serve `/metrics` and `/health` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{Router, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }));
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

    #[test]
    fn renders_gitlab_runner_metric_names() {
        let m = Metrics::new();
        m.jobs_total
            .get_or_create(&RunnerLabels {
                runner: "abcd1234".into(),
            })
            .inc();
        m.failed_jobs
            .get_or_create(&FailureLabels {
                runner: "abcd1234".into(),
                failure_reason: crate::failure::FailureReason::ScriptFailure.to_string(),
            })
            .inc();
        m.api_request("abcd1234", "request_job", "204");
        m.concurrent.set(4);
        let text = m.render();
        for name in [
            "gitlab_runner_jobs_total{runner=\"abcd1234\"} 1",
            "gitlab_runner_failed_jobs_total{runner=\"abcd1234\",failure_reason=\"script_failure\"} 1",
            "gitlab_runner_api_request_statuses_total{runner=\"abcd1234\",endpoint=\"request_job\",status=\"204\"} 1",
            "gitlab_runner_concurrent 4",
            "gitlab_runner_version_info{name=\"ferry\"",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
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
