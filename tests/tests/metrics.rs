//! Monitoring end to end (docs/monitoring.md): the real `ferry run` against the fake GitLab,
//! scraping `/metrics`, `/health` and `/debug/jobs/list` while a job runs and after it, the
//! job log's timing line, and `/health` turning 503 when GitLab goes away or Docker is
//! unreachable. Where Docker is not usable the tests print SKIP with the reason.

use std::time::Duration;

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;

const WAIT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn with_listener(port: u16) -> Setup {
    Setup {
        global: format!("listen_address = \"127.0.0.1:{port}\""),
        ..Setup::default()
    }
}

struct Scraper {
    client: reqwest::Client,
    base: String,
}

impl Scraper {
    fn new(port: u16) -> Self {
        ferry_runner::gitlab::install_crypto_provider();
        Scraper {
            client: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Status, `X-List-Version` header and body of `GET path` (None: not listening yet).
    async fn get(&self, path: &str) -> Option<(u16, Option<String>, String)> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let version = r
            .headers()
            .get("x-list-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Some((status, version, r.text().await.unwrap_or_default()))
    }

    /// Polls `path` until `done(status, body)`; returns the last status and body.
    async fn until(&self, path: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = (0, String::new());
        while tokio::time::Instant::now() < deadline {
            if let Some((status, _, body)) = self.get(path).await {
                if done(status, &body) {
                    return (status, body);
                }
                last = (status, body);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        last
    }
}

/// The log's lines as a user reads them: no colours, no section markers, no empty lines.
fn plain_lines(trace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let line = line.rsplit('\r').next().unwrap_or(line);
        let mut plain = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' && chars.peek() == Some(&'[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
                continue;
            }
            plain.push(c);
        }
        let plain = plain.trim_end();
        if !plain.is_empty() {
            out.push(plain.to_string());
        }
    }
    out
}

/// Seconds of `stage` in a timing line (`... step_script 5.1s, ...`).
fn stage_seconds(line: &str, stage: &str) -> Option<f64> {
    let rest = line.split(&format!(" {stage} ")).nth(1)?;
    let took = rest.split([',', ';']).next()?;
    took.strip_suffix('s')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_the_jobs_list_follow_a_job_and_gitlab_going_away() {
    let port = free_port();
    let Some(h) = Harness::start(with_listener(port)).await else {
        return;
    };
    let s = Scraper::new(port);

    // Ready once Docker answered a ping and GitLab a job request.
    let (status, body) = s.until("/health", |st, _| st == 200).await;
    assert_eq!(status, 200, "{body}\n{}", h.ferry_log());
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("ok   config: loaded, 1 runner(s)"), "{body}");
    assert!(body.contains(": docker: pinged Docker "), "{body}");
    assert!(body.contains(": gitlab: answered 204 "), "{body}");
    let (status, ready) = s.until("/health/ready", |st, _| st == 200).await;
    assert_eq!(status, 200, "gitlab-runner's readiness path: {ready}");
    let (_, _, state) = s.get("/debug/process/state").await.expect("listening");
    assert_eq!(state, "running\n");

    let id = h.push(
        h.job("timed")
            .script(["echo started", "sleep 8", "echo done"]),
    );
    h.wait_trace(id, "started", WAIT).await;

    // While the script runs: the job, its stage and its executor stage.
    let (status, version, list) = s.get("/debug/jobs/list").await.expect("listening");
    assert_eq!(status, 200);
    assert_eq!(
        version.as_deref(),
        Some("2"),
        "gitlab-runner's X-List-Version"
    );
    let prefix = format!(
        "url={}/acme/app/-/jobs/{id} state=running stage=step_script executor_stage=docker_run duration=",
        h.gitlab.url().trim_end_matches('/')
    );
    assert!(
        list.starts_with(&prefix) && list.ends_with("s\n") && list.lines().count() == 1,
        "{list}\nwant {prefix}..."
    );
    let (_, _, metrics) = s.get("/metrics").await.expect("listening");
    assert!(
        metrics.contains("runner_name=\"e2e\",system_id=\"s_")
            && metrics.contains(
                "state=\"running\",stage=\"step_script\",executor_stage=\"docker_run\"} 1"
            ),
        "gitlab_runner_jobs of the running job:\n{metrics}"
    );
    for name in [
        "\nprocess_cpu_seconds_total ",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_virtual_memory_bytes ",
        "\nprocess_open_fds ",
        "\nprocess_max_fds ",
        "\nprocess_start_time_seconds ",
        "\ngitlab_runner_jobs_total{runner=",
        "\ngitlab_runner_process_state_info{state=\"running\"} 1\n",
        "\ngitlab_runner_request_concurrency_hard_limit{runner=",
        "endpoint=\"request_job\",status_class=\"2xx\",method=\"post\"}",
        "endpoint=\"request_job\",status=\"201\",method=\"post\"} 1",
    ] {
        assert!(metrics.contains(name), "no {name:?} in\n{metrics}");
    }

    // The log ends with the timing line, then the final status.
    let job = h.wait_final(id, WAIT).await;
    assert_eq!(job.status, JobStatus::Success, "{}", h.describe(id));
    let lines = plain_lines(&h.gitlab.trace_string(id));
    let n = lines.len();
    assert_eq!(lines[n - 1], "Job succeeded", "{lines:#?}");
    let timing = &lines[n - 2];
    assert!(
        timing.starts_with("Job timing: ") && timing.contains("prepare_executor "),
        "{lines:#?}"
    );
    let script = stage_seconds(timing, "step_script").unwrap_or_default();
    assert!(
        (8.0..120.0).contains(&script),
        "the script slept 8 s: {timing}"
    );

    // The stage histogram has the job's stages; cleanup comes after the final update.
    let (_, metrics) = s
        .until("/metrics", |_, b| {
            b.contains("stage=\"cleanup\"} 1") && b.contains("stage=\"step_script\"} 1")
        })
        .await;
    assert!(
        metrics.contains("gitlab_runner_job_stage_duration_seconds_count{")
            && metrics.contains("stage=\"step_script\"} 1")
            && metrics.contains("stage=\"cleanup\"} 1"),
        "{metrics}"
    );
    let step_le_3 = metrics
        .lines()
        .any(|l| l.contains("le=\"3.0\"") && l.contains("stage=\"step_script\"} 0"));
    assert!(
        step_le_3,
        "an 8 s script is not in the 3 s bucket:\n{metrics}"
    );
    let (_, _, list) = s.get("/debug/jobs/list").await.expect("listening");
    assert_eq!(list, "", "no job runs any more");

    // GitLab goes away: not ready, saying why; back when GitLab is.
    h.gitlab.stop().await;
    let (status, body) = s.until("/health", |st, _| st == 503).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready\n"), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("FAIL runner e2e (") && l.contains(": gitlab: no answer")),
        "{body}"
    );
    assert!(
        body.contains(": docker: pinged Docker "),
        "Docker is fine: {body}"
    );
    let (_, _, metrics) = s.get("/metrics").await.expect("listening");
    let warnings = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gitlab_runner_errors_total{level=\"warning\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        warnings.is_some_and(|n| n >= 1),
        "the failed job requests were logged as warnings:\n{metrics}"
    );
    h.gitlab.restart().await;
    let (status, body) = s.until("/health", |st, _| st == 200).await;
    assert_eq!(status, 200, "ready again once GitLab answers: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_docker_is_unreachable() {
    let port = free_port();
    let Some(mut h) = Harness::prepare(with_listener(port)).await else {
        return;
    };
    let dead = h.root.path().join("no-docker.sock");
    h.ferry_env
        .push(("DOCKER_HOST".into(), format!("unix://{}", dead.display())));
    h.spawn_ferry();
    let s = Scraper::new(port);
    // GitLab answers, Docker does not.
    let (status, body) = s
        .until("/health", |_, b| b.contains(": gitlab: answered 204 "))
        .await;
    assert_eq!(status, 503, "{body}\n{}", h.ferry_log());
    assert!(body.starts_with("not ready\n"), "{body}");
    let docker = body
        .lines()
        .find(|l| l.contains(": docker: "))
        .unwrap_or_default();
    assert!(
        docker.starts_with("FAIL runner e2e (") && docker.contains("no-docker.sock"),
        "the failing part names the daemon it tried: {body}"
    );
    let (status, _) = s.until("/health/ready", |st, _| st == 503).await;
    assert_eq!(status, 503);
}
