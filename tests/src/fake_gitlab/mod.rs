//! A stateful fake GitLab speaking the runner API over real HTTP (docs/gitlab-api.md).
//!
//! ```ignore
//! let gitlab = FakeGitLab::start().await;
//! let (runner_id, token) = gitlab.create_runner(RunnerSpec::default());
//! let job_id = gitlab.push_job(JobSpec::new("build").script(["make"]));
//! // ... run ferry against gitlab.url() ...
//! assert_eq!(gitlab.job(job_id).unwrap().status, JobStatus::Success);
//! ```
//!
//! What it models: registration tokens → runners (tags etc. recorded), `glrt-` runners created
//! by the test plus `/runners/verify`, unregister of runners and runner managers, token reset,
//! a job queue matched on tags and required features, the job state machine (running,
//! canceling, canceled, success, failed with reason/exit code/checksum/bytesize), trace PATCH
//! with exact `Content-Range` checks and 416 + `Range` resync, configurable
//! `X-GitLab-Trace-Update-Interval`, 202 on final updates, artifacts upload (multipart) and
//! download (optionally through a 302 to a "storage" URL), `X-GitLab-Last-Update` and
//! Workhorse-style long polling, outages (502), slow responses, injected statuses, and
//! stopping/restarting the listener on the same port; and the CI lint API that resolves
//! includes (`POST /projects/:id/ci/lint`, [`ci_lint`]).
//!
//! Stricter than GitLab where that catches client bugs: a trace PATCH needs a `Content-Type`
//! and an inclusive `Content-Range` end matching the body (GitLab ignores the end).

mod ci_lint;
mod job_spec;
mod routes;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use job_spec::{FAILURE_REASONS, JobSpec};
pub use server::TestCert;
pub use state::{JobRecord, JobStatus, RequestRecord, RunnerOrigin, RunnerRecord, StoredArtifact};

use routes::Shared;
use state::{QueuedJob, RunnerRecord as Runner, State, random_token};

/// Server-side settings of a runner created "in the UI".
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub paused: bool,
}

impl Default for RunnerSpec {
    fn default() -> Self {
        RunnerSpec {
            description: "fake runner".into(),
            tags: Vec::new(),
            run_untagged: true,
            paused: false,
        }
    }
}

/// The fake server. Dropping it stops the listener.
pub struct FakeGitLab {
    shared: Arc<Shared>,
    addr: SocketAddr,
    scheme: &'static str,
    tls: Option<TestCert>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FakeGitLab {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl FakeGitLab {
    /// Start on `127.0.0.1:<any port>` over plain HTTP.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Start over HTTPS with a fresh self-signed certificate for `localhost`/`127.0.0.1`
    /// ([`FakeGitLab::ca_pem`] gives it, to use as `tls-ca-file`).
    pub async fn start_tls() -> Self {
        Self::start_with(Some(TestCert::generate())).await
    }

    /// Start over HTTPS requiring a client certificate: [`FakeGitLab::ca_pem`] is the CA,
    /// [`FakeGitLab::client_cert_pem`] / [`FakeGitLab::client_key_pem`] the accepted client pair.
    pub async fn start_mtls() -> Self {
        Self::start_with(Some(TestCert::generate_mtls())).await
    }

    async fn start_with(tls: Option<TestCert>) -> Self {
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binding the fake GitLab");
        let addr = listener.local_addr().expect("local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut state = State::new();
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        state.base_url = format!("{scheme}://{host}:{}", addr.port());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            queue_changed: Default::default(),
        });
        let task = server::spawn(
            listener,
            routes::router(shared.clone()),
            tls.as_ref().map(|t| t.acceptor.clone()),
        );
        FakeGitLab {
            shared,
            addr,
            scheme,
            tls,
            task: Mutex::new(Some(task)),
        }
    }

    /// Base URL (`http://127.0.0.1:<port>`, or `https://localhost:<port>` with TLS).
    pub fn url(&self) -> String {
        self.shared.lock().base_url.clone()
    }

    /// The same API under a relative URL root (`<url>/gitlab`).
    pub fn url_with_root(&self) -> String {
        format!("{}/gitlab", self.url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// PEM of the server certificate (TLS mode only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.cert_pem.as_str())
    }

    /// Client certificate the server accepts (mutual-TLS mode only).
    pub fn client_cert_pem(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.client_cert_pem.as_deref())
    }

    /// Key of [`FakeGitLab::client_cert_pem`].
    pub fn client_key_pem(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.client_key_pem.as_deref())
    }

    /// Close the listener and every connection: clients get "connection refused".
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listen again on the same port, with the same state.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = server::bind(self.addr)
            .await
            .expect("rebinding the fake GitLab port");
        let task = server::spawn(
            listener,
            routes::router(self.shared.clone()),
            self.tls.as_ref().map(|t| t.acceptor.clone()),
        );
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    // ---- runners -------------------------------------------------------------------------

    /// Accept `token` as a registration token on `POST /api/v4/runners`.
    pub fn add_registration_token(&self, token: &str) {
        self.shared
            .lock()
            .registration_tokens
            .insert(token.to_owned());
    }

    /// Answer 410 to registrations with registration tokens.
    pub fn set_registration_disabled(&self, disabled: bool) {
        self.shared.lock().settings.registration_disabled = disabled;
    }

    /// `token_expires_at` for tokens issued from now on (`None`: tokens never expire).
    pub fn set_token_expires_at(&self, value: Option<&str>) {
        self.shared.lock().settings.token_expires_at = value.map(str::to_owned);
    }

    /// Create a runner as an admin would in the UI; returns its id and `glrt-` token.
    pub fn create_runner(&self, spec: RunnerSpec) -> (u64, String) {
        let mut s = self.shared.lock();
        let id = s.next_runner_id;
        s.next_runner_id += 1;
        let token = random_token("glrt-");
        let expires = s.settings.token_expires_at.clone();
        s.runners.push(Runner {
            id,
            token: token.clone(),
            origin: RunnerOrigin::Created,
            description: spec.description,
            tags: spec.tags,
            run_untagged: spec.run_untagged,
            locked: false,
            access_level: "not_protected".into(),
            maximum_timeout: None,
            paused: spec.paused,
            maintenance_note: String::new(),
            token_expires_at: expires,
            managers: Default::default(),
            info: serde_json::Value::Null,
        });
        (id, token)
    }

    pub fn runners(&self) -> Vec<RunnerRecord> {
        self.shared.lock().runners.clone()
    }

    pub fn runner(&self, id: u64) -> Option<RunnerRecord> {
        self.shared
            .lock()
            .runners
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    pub fn set_runner_paused(&self, id: u64, paused: bool) {
        if let Some(r) = self.shared.lock().runners.iter_mut().find(|r| r.id == id) {
            r.paused = paused;
        }
    }

    // ---- jobs ----------------------------------------------------------------------------

    /// Queue a job; returns its id. Wakes long-polling requests.
    pub fn push_job(&self, spec: JobSpec) -> u64 {
        let id = {
            let mut s = self.shared.lock();
            let id = s.next_job_id;
            s.next_job_id += 1;
            let token = random_token("glcbt-");
            let payload = spec.payload(id, &token, &s.base_url);
            let mut required_features = state::required_features(&payload);
            required_features.extend(spec.required_features.iter().cloned());
            s.queue.push_back(QueuedJob {
                id,
                token,
                payload,
                tags: spec.tags.clone(),
                required_features,
                dependencies: spec.dependencies.clone(),
            });
            s.tick_queue();
            id
        };
        self.shared.queue_changed.notify_waiters();
        id
    }

    /// Jobs still waiting for a runner.
    pub fn queued_jobs(&self) -> Vec<u64> {
        self.shared.lock().queue.iter().map(|j| j.id).collect()
    }

    pub fn job(&self, id: u64) -> Option<JobRecord> {
        self.shared.lock().jobs.get(&id).cloned()
    }

    pub fn job_status(&self, id: u64) -> Option<JobStatus> {
        self.shared.lock().jobs.get(&id).map(|j| j.status)
    }

    /// The job's token (to make job calls from a test).
    pub fn job_token(&self, id: u64) -> Option<String> {
        let s = self.shared.lock();
        s.jobs
            .get(&id)
            .map(|j| j.token.clone())
            .or_else(|| s.queue.iter().find(|j| j.id == id).map(|j| j.token.clone()))
    }

    pub fn trace(&self, id: u64) -> Vec<u8> {
        self.shared
            .lock()
            .jobs
            .get(&id)
            .map(|j| j.trace.clone())
            .unwrap_or_default()
    }

    pub fn trace_string(&self, id: u64) -> String {
        String::from_utf8_lossy(&self.trace(id)).into_owned()
    }

    /// Pretend GitLab already holds `bytes` of this job's log (e.g. after a runner restart).
    pub fn set_trace(&self, id: u64, bytes: &[u8]) {
        if let Some(j) = self.shared.lock().jobs.get_mut(&id) {
            j.trace = bytes.to_vec();
        }
    }

    /// Answer 404 to this job's trace PATCHes.
    pub fn set_trace_not_found(&self, id: u64, not_found: bool) {
        if let Some(j) = self.shared.lock().jobs.get_mut(&id) {
            j.trace_not_found = not_found;
        }
    }

    pub fn artifacts(&self, id: u64) -> Vec<StoredArtifact> {
        self.shared
            .lock()
            .jobs
            .get(&id)
            .map(|j| j.artifacts.clone())
            .unwrap_or_default()
    }

    /// The user presses Cancel: `canceling` if the job's runner advertised
    /// `cancel_gracefully`, else `canceled` at once (as GitLab does).
    pub fn cancel(&self, id: u64) {
        let mut s = self.shared.lock();
        let graceful = s
            .jobs
            .get(&id)
            .and_then(|j| s.runners.iter().find(|r| r.id == j.runner_id))
            .is_some_and(|r| r.features().contains("cancel_gracefully"));
        if let Some(j) = s.jobs.get_mut(&id) {
            j.status = match j.status {
                JobStatus::Running if graceful => JobStatus::Canceling,
                JobStatus::Running | JobStatus::Canceling => JobStatus::Canceled,
                other => other,
            };
        }
    }

    /// Force-cancel: straight to `canceled`.
    pub fn force_cancel(&self, id: u64) {
        if let Some(j) = self.shared.lock().jobs.get_mut(&id)
            && j.status.is_active()
        {
            j.status = JobStatus::Canceled;
        }
    }

    /// Fail the job server-side (e.g. GitLab's own timeout).
    pub fn fail_job(&self, id: u64, reason: &str) {
        if let Some(j) = self.shared.lock().jobs.get_mut(&id)
            && j.status.is_active()
        {
            j.status = JobStatus::Failed;
            j.failure_reason = Some(reason.to_owned());
        }
    }

    /// Wait (polling every 10 ms of tokio time) until the job has `status`; false on timeout.
    pub async fn wait_for_status(&self, id: u64, status: JobStatus, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.job_status(id) == Some(status) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ---- behaviour knobs -----------------------------------------------------------------

    /// `X-GitLab-Trace-Update-Interval` value on PATCH 202 and PUT (None: no header).
    /// Default `"60"`.
    pub fn set_trace_update_interval(&self, value: Option<&str>) {
        self.shared.lock().settings.trace_update_interval = value.map(str::to_owned);
    }

    /// Answer the final PUT of each job (also already running ones) with 202 `n` times first.
    pub fn set_final_update_202(&self, n: u32) {
        let mut s = self.shared.lock();
        s.settings.final_update_202 = n;
        for j in s.jobs.values_mut().filter(|j| j.status.is_active()) {
            j.final_202_left = n;
        }
    }

    /// Serve artifact downloads through a 302 to a pre-signed-looking storage URL.
    pub fn set_artifact_redirect(&self, redirect: bool) {
        self.shared.lock().settings.artifact_redirect = redirect;
    }

    /// Answer artifact uploads whose `Host` is not `host` (e.g. `localhost:<port>`) with a
    /// 307 to the same path on `host`.
    pub fn set_upload_redirect_host(&self, host: Option<&str>) {
        self.shared.lock().settings.upload_redirect_host = host.map(str::to_owned);
    }

    /// Hold artifact uploads once received (true) or store and answer them (false, the
    /// default; also releases those held).
    pub fn hold_artifact_uploads(&self, hold: bool) {
        self.shared.lock().settings.hold_artifact_uploads = hold;
    }

    /// How many artifact uploads are held now.
    pub fn held_artifact_uploads(&self) -> usize {
        self.shared.lock().held_artifact_uploads
    }

    pub fn set_max_artifact_size(&self, bytes: Option<u64>) {
        self.shared.lock().settings.max_artifact_size = bytes;
    }

    /// Workhorse long polling (None: off, the default).
    pub fn set_long_poll(&self, duration: Option<Duration>) {
        self.shared.lock().settings.long_poll = duration;
    }

    /// Delay every response.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().settings.delay = delay;
    }

    /// Answer a `/jobs/request` that hands out a job `delay` after the job was assigned to the
    /// runner (it is `running` at once), as a slow network between GitLab and the runner would.
    pub fn set_job_answer_delay(&self, delay: Option<Duration>) {
        self.shared.lock().settings.job_answer_delay = delay;
    }

    /// Answer 502 to everything for `duration` (tokio time) from now.
    pub fn outage(&self, duration: Duration) {
        self.outage_with(502, duration);
    }

    /// Answer `status` (e.g. 502, 503) to everything for `duration` (tokio time) from now.
    pub fn outage_with(&self, status: u16, duration: Duration) {
        let mut s = self.shared.lock();
        s.settings.outage_status = status;
        s.settings.outage_until = Some(Instant::now() + duration);
    }

    pub fn end_outage(&self) {
        self.shared.lock().settings.outage_until = None;
    }

    /// Answer the next `/jobs/request` with `status` (queue them to script several).
    pub fn inject_job_request_status(&self, status: u16) {
        self.shared
            .lock()
            .injected_request_statuses
            .push_back(status);
    }

    // ---- observation ---------------------------------------------------------------------

    /// CI lint API: a personal access token whose user is a developer of `projects`.
    pub fn add_api_token(&self, token: &str, projects: &[&str]) {
        self.shared.lock().ci_lint.tokens.insert(
            token.into(),
            projects.iter().map(|p| p.to_string()).collect(),
        );
    }

    /// CI lint API: a project (full path) and the files of its default branch.
    pub fn add_project(&self, path: &str, files: &[(&str, &str)]) {
        self.shared.lock().ci_lint.projects.insert(
            path.to_lowercase(),
            files
                .iter()
                .map(|(p, t)| (p.trim_start_matches('/').to_string(), t.to_string()))
                .collect(),
        );
    }

    /// CI lint API: what `include:remote` of `url` reads.
    pub fn add_remote_file(&self, url: &str, text: &str) {
        let mut s = self.shared.lock();
        s.ci_lint.remote_files.insert(url.into(), text.into());
    }

    /// CI lint API: what `include:template` of `name` reads.
    pub fn add_template(&self, name: &str, text: &str) {
        let mut s = self.shared.lock();
        s.ci_lint.templates.insert(name.into(), text.into());
    }

    /// CI lint API: the JSON body of each request (`content`, `dry_run`, …).
    pub fn ci_lint_requests(&self) -> Vec<serde_json::Value> {
        self.shared.lock().ci_lint.requests.clone()
    }

    /// CI lint API, test mode: echo the request's `PRIVATE-TOKEN` in every error message (a
    /// 401/403/404 body's message, each `valid: false` error: see `ci_lint::answer`).
    pub fn ci_lint_echo_token(&self, on: bool) {
        self.shared.lock().ci_lint.echo_token = on;
    }

    /// CI lint API, test mode: answer every request with `status` and the HTML `page` (a
    /// proxy's); `None` ends it.
    pub fn ci_lint_proxy_page(&self, page: Option<(u16, &str)>) {
        self.shared.lock().ci_lint.proxy_page = page.map(|(s, p)| (s, p.to_string()));
    }

    /// Every request served: method, path, status.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many requests hit `path` (exact, with method).
    pub fn count_requests(&self, method: &str, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Every `/jobs/request` body received.
    pub fn job_requests(&self) -> Vec<serde_json::Value> {
        self.shared.lock().job_requests.clone()
    }

    /// Current `X-GitLab-Last-Update` value.
    pub fn queue_version(&self) -> String {
        self.shared.lock().queue_version.clone()
    }

    /// Downloads from the storage redirect target that (wrongly) carried `JOB-TOKEN`.
    pub fn storage_requests_with_job_token(&self) -> usize {
        self.shared.lock().storage_requests_with_job_token
    }
}
