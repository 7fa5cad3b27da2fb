//! The fake's in-memory model of a GitLab instance: runners, the job queue, jobs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::RngExt;
use serde_json::Value;
use tokio::time::Instant;

/// Server-side status of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Running,
    /// The user pressed Cancel and the runner advertised `cancel_gracefully`.
    Canceling,
    Canceled,
    Success,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        }
    }

    /// Whether job-token calls (PATCH, PUT, artifacts) are still allowed.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Running | JobStatus::Canceling)
    }
}

/// How a runner came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerOrigin {
    /// `POST /api/v4/runners` with a registration token.
    Registered,
    /// Created "in the UI" by a test ([`super::FakeGitLab::create_runner`]), `glrt-` token.
    Created,
}

/// A runner as GitLab stores it.
#[derive(Debug, Clone)]
pub struct RunnerRecord {
    pub id: u64,
    pub token: String,
    pub origin: RunnerOrigin,
    pub description: String,
    pub tags: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: String,
    pub maximum_timeout: Option<u64>,
    pub paused: bool,
    pub maintenance_note: String,
    pub token_expires_at: Option<String>,
    /// `system_id`s seen on verify / job requests (runner managers).
    pub managers: BTreeSet<String>,
    /// The last `info` object received (registration, verify or job request).
    pub info: Value,
}

impl RunnerRecord {
    pub fn features(&self) -> BTreeSet<String> {
        match self.info.get("features") {
            Some(Value::Object(m)) => m
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => BTreeSet::new(),
        }
    }
}

/// One artifacts upload.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub filename: String,
    pub artifact_type: String,
    pub artifact_format: String,
    pub expire_in: Option<String>,
    pub data: Vec<u8>,
}

/// A job waiting in the queue.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub id: u64,
    pub token: String,
    pub payload: Value,
    pub tags: Vec<String>,
    pub required_features: Vec<String>,
    /// Jobs whose artifacts this one downloads: filled in `dependencies` at hand-out.
    pub dependencies: Vec<u64>,
}

/// A job that was handed to a runner.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: u64,
    pub token: String,
    pub name: String,
    pub runner_id: u64,
    pub status: JobStatus,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub checksum: Option<String>,
    pub bytesize: Option<u64>,
    pub trace: Vec<u8>,
    pub artifacts: Vec<StoredArtifact>,
    /// Every PUT body received (tokens included; for assertions).
    pub updates: Vec<Value>,
    pub patches: usize,
    /// 202 answers still to give to a final PUT before applying it.
    pub final_202_left: u32,
    /// Answer 404 to trace PATCHes.
    pub trace_not_found: bool,
    /// A trace PATCH said `debug_trace=true`.
    pub debug_trace: bool,
}

/// What happened on one request (for assertions about retries and ordering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When it was answered (tokio time).
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
}

/// Knobs tests turn.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workhorse long polling: hold `/jobs/request` up to this long (None = off).
    pub long_poll: Option<Duration>,
    /// `X-GitLab-Trace-Update-Interval` on PATCH 202 and PUT (seconds, as a string so tests can
    /// send garbage). None = header absent.
    pub trace_update_interval: Option<String>,
    /// How many times a final PUT of each job is answered 202 before being applied.
    pub final_update_202: u32,
    /// Download answers with a 302 to a storage URL on the same server.
    pub artifact_redirect: bool,
    /// Artifact uploads not addressed to this `host:port` get a 307 there.
    pub upload_redirect_host: Option<String>,
    /// Maximum artifacts size in bytes (413 beyond).
    pub max_artifact_size: Option<u64>,
    /// Artifact uploads are received whole, then held (not stored, not answered) while set;
    /// a held upload is stored when released even if its client went away meanwhile, as Rails
    /// finishes a request Workhorse has passed on.
    pub hold_artifact_uploads: bool,
    /// Every response is delayed this long.
    pub delay: Option<Duration>,
    /// A `/jobs/request` that hands out a job answers this long after the job became the
    /// runner's (running in GitLab): the answer is in flight meanwhile.
    pub job_answer_delay: Option<Duration>,
    /// Until then, every request is answered `outage_status`.
    pub outage_until: Option<Instant>,
    /// The answer during an outage (502 unless set).
    pub outage_status: u16,
    /// Legacy registration disabled (410).
    pub registration_disabled: bool,
    /// `token_expires_at` given to new and reset tokens.
    pub token_expires_at: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            long_poll: None,
            trace_update_interval: Some("60".into()),
            final_update_202: 0,
            artifact_redirect: false,
            upload_redirect_host: None,
            max_artifact_size: None,
            hold_artifact_uploads: false,
            delay: None,
            job_answer_delay: None,
            outage_until: None,
            outage_status: 502,
            registration_disabled: false,
            token_expires_at: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub base_url: String,
    pub settings: Settings,
    pub registration_tokens: BTreeSet<String>,
    pub runners: Vec<RunnerRecord>,
    pub next_runner_id: u64,
    pub queue: VecDeque<QueuedJob>,
    pub jobs: BTreeMap<u64, JobRecord>,
    pub next_job_id: u64,
    /// The runner queue version (`X-GitLab-Last-Update`); changes when a job is queued.
    pub queue_version: String,
    /// Statuses to answer the next `/jobs/request` calls with, before normal processing.
    pub injected_request_statuses: VecDeque<u16>,
    /// Bodies of every `/jobs/request` received.
    pub job_requests: Vec<Value>,
    pub requests: Vec<RequestRecord>,
    /// Storage (redirect target) downloads that carried a JOB-TOKEN header.
    pub storage_requests_with_job_token: usize,
    /// Storage URLs handed out: secret → job id.
    pub storage_links: BTreeMap<String, u64>,
    /// The CI lint API: tokens, projects and their files, remote files, templates.
    pub ci_lint: super::ci_lint::CiLint,
    /// Artifact uploads received whole and held until `Settings::hold_artifact_uploads` is off.
    pub held_artifact_uploads: usize,
}

pub fn random_token(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..20)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

impl State {
    pub fn new() -> Self {
        State {
            next_runner_id: 1,
            next_job_id: 1000,
            queue_version: random_token("qv-"),
            ..Default::default()
        }
    }

    pub fn runner_by_token(&self, token: &str) -> Option<&RunnerRecord> {
        self.runners.iter().find(|r| r.token == token)
    }

    pub fn runner_by_token_mut(&mut self, token: &str) -> Option<&mut RunnerRecord> {
        self.runners.iter_mut().find(|r| r.token == token)
    }

    pub fn tick_queue(&mut self) {
        self.queue_version = random_token("qv-");
    }

    /// The first queued job this runner may take (tags ⊆ runner tags; untagged jobs need
    /// `run_untagged`), as GitLab's `RegisterJobService#assign_runner!` picks it: a job whose
    /// required features (`Ci::Build::RUNNER_FEATURES`) the runner does not advertise is not
    /// held back but dropped as `runner_unsupported`, and the next job is tried.
    pub fn take_job_for(&mut self, runner: &RunnerRecord) -> Option<QueuedJob> {
        let features = runner.features();
        loop {
            let pos = self.queue.iter().position(|job| {
                if job.tags.is_empty() {
                    runner.run_untagged
                } else {
                    job.tags.iter().all(|t| runner.tags.contains(t))
                }
            })?;
            let job = self.queue.remove(pos)?;
            if job.required_features.iter().all(|f| features.contains(f)) {
                return Some(job);
            }
            let mut record = JobRecord::new(&job, runner.id, 0);
            record.status = JobStatus::Failed;
            record.failure_reason = Some("runner_unsupported".into());
            self.jobs.insert(job.id, record);
        }
    }
}

impl JobRecord {
    /// The record of `job` as handed to runner `runner_id`: running, nothing received yet.
    pub fn new(job: &QueuedJob, runner_id: u64, final_202_left: u32) -> Self {
        let name = job
            .payload
            .pointer("/job_info/name")
            .and_then(Value::as_str)
            .unwrap_or("job")
            .to_owned();
        JobRecord {
            id: job.id,
            token: job.token.clone(),
            name,
            runner_id,
            status: JobStatus::Running,
            failure_reason: None,
            exit_code: None,
            checksum: None,
            bytesize: None,
            trace: Vec::new(),
            artifacts: Vec::new(),
            updates: Vec::new(),
            patches: 0,
            final_202_left,
            trace_not_found: false,
            debug_trace: false,
        }
    }
}

/// The features GitLab requires of a runner for this payload (`Ci::Build::RUNNER_FEATURES`,
/// EE's `vault_secrets`), read back from what the payload carries.
pub fn required_features(payload: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let artifacts = payload.get("artifacts").and_then(Value::as_array);
    let artifacts = artifacts.map(Vec::as_slice).unwrap_or_default();
    let non_empty = |v: Option<&Value>| match v {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    };
    // publishes_artifacts_reports?
    if artifacts.iter().any(|a| {
        a.get("artifact_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "archive")
    }) {
        out.push("upload_multiple_artifacts");
    }
    // merge_request_ref?
    if payload
        .pointer("/git_info/ref")
        .and_then(Value::as_str)
        .is_some_and(|r| r.starts_with("refs/merge-requests/"))
    {
        out.push("refspecs");
    }
    // supports_artifacts_exclude?
    if artifacts.iter().any(|a| non_empty(a.get("exclude"))) {
        out.push("artifacts_exclude");
    }
    // multi_build_steps?: a `release:` becomes a step named `release`.
    if payload
        .get("steps")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|s| s.get("name").and_then(Value::as_str) == Some("release"))
        })
    {
        out.push("multi_build_steps");
    }
    // fallback_cache_keys_defined?
    if payload
        .get("cache")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| non_empty(c.get("fallback_keys"))))
    {
        out.push("fallback_cache_keys");
    }
    // EE: secrets?
    if non_empty(payload.get("secrets")) {
        out.push("vault_secrets");
    }
    out.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::required_features;

    #[test]
    fn required_features_are_read_from_the_payload_as_gitlab_derives_them() {
        assert!(required_features(&json!({"steps": [{"name": "script"}], "cache": []})).is_empty());
        let payload = json!({
            "git_info": {"ref": "refs/merge-requests/4/head"},
            "steps": [{"name": "script"}, {"name": "release"}],
            "artifacts": [
                {"artifact_type": "archive", "exclude": ["*.o"]},
                {"artifact_type": "junit"},
            ],
            "cache": [{"key": "a", "fallback_keys": ["b"]}],
            "secrets": {"PW": {"vault": {"path": "db"}}},
        });
        assert_eq!(
            required_features(&payload),
            [
                "upload_multiple_artifacts",
                "refspecs",
                "artifacts_exclude",
                "multi_build_steps",
                "fallback_cache_keys",
                "vault_secrets"
            ]
        );
        // Empty lists require nothing.
        let empty = json!({"artifacts": [{"artifact_type": "archive", "exclude": []}],
                           "cache": [{"fallback_keys": []}], "secrets": {}});
        assert!(required_features(&empty).is_empty());
    }
}
