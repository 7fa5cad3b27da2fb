//! `ferry exec`: a pipeline run on this machine through the machinery that runs CI
//! (docs/exec.md). Each job is a `JobPayload` as GitLab would send it; it runs through
//! `plan::compile` and the [`Driver`] with a local [`api::LocalApi`] in GitLab's place, sources
//! from a [`snapshot`] of the working tree, and the daemon's Docker engine and cache.
//!
//! * `snapshot.rs`: the working tree as one commit in a repository of ferry's.
//! * `git.rs`: how git runs on the user's repository and ferry's store.
//! * `api.rs`: the `JobApi` that keeps logs and artifacts on disk and shows the logs.
//! * `terminal.rs`: a job log as a terminal shows it.
//! * `schedule.rs`: which job starts when (stages, needs, `when`, resource groups).
//! * `to_source.rs`: `--artifacts-to-source`, a job's artifacts into the working tree.
//! * `include.rs`: includes only GitLab can read, resolved by its CI lint API (`--gitlab`).
//! * `deploy.rs`: deploy jobs with the user's kubeconfig when no runner is named.

pub mod api;
pub mod convert;
pub mod deploy;
pub mod git;
pub mod include;
pub mod predefined;
pub mod schedule;
pub mod snapshot;
pub mod terminal;
pub mod to_source;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_config::RunnerSection;
use ferry_deploy::Deployer;
use ferry_executor::Engine;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::driver::{Driver, Host};
use crate::gitlab::payload::JobPayload;
use crate::plan::JobContext;

use api::LocalApi;
use schedule::{Node, Schedule, Status};

/// One job of the pipeline, ready to run.
pub struct LocalJob {
    pub node: Node,
    /// `allow_failure: exit_codes:`: a failure with one of these codes is allowed.
    pub allow_failure_exit_codes: Vec<i64>,
    /// `retry:`.
    pub retry: Option<RetryPolicy>,
    /// `when: delayed`: how long after its predecessors the job starts (`start_in`).
    pub start_in: Option<Duration>,
    /// As GitLab would send it; `dependencies` list every job whose artifacts it may get (the
    /// ones that end up without an archive are dropped before it starts, as GitLab does).
    pub payload: JobPayload,
}

/// `retry:` as GitLab applies it: up to `max` more attempts of a failed job, when its failure
/// reason is one of `when` (`always` or unset: any) and, with `exit_codes`, its exit code is
/// one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max: u32,
    pub when: Vec<String>,
    pub exit_codes: Vec<i64>,
}

impl RetryPolicy {
    /// Whether attempt number `attempt` (1 for the first run) ending with `update` is retried.
    pub fn allows(&self, attempt: u32, update: Option<&crate::api::JobUpdate>) -> bool {
        if attempt > self.max {
            return false;
        }
        let reason = update
            .and_then(|u| u.failure_reason.as_deref())
            .unwrap_or("unknown_failure");
        let reason_ok =
            self.when.is_empty() || self.when.iter().any(|w| w == "always" || w == reason);
        let code_ok = self.exit_codes.is_empty()
            || update
                .and_then(|u| u.exit_code)
                .is_some_and(|c| self.exit_codes.contains(&i64::from(c)));
        reason_ok && code_ok
    }
}

/// How one job ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobResult {
    pub name: String,
    pub stage: String,
    pub status: Status,
    pub failure_reason: Option<String>,
    pub allow_failure: bool,
    pub duration_s: Option<f64>,
    pub log: Option<PathBuf>,
    /// Why a job did not run (skipped, manual).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the pipeline run needs besides its jobs.
pub struct Options {
    pub stages: Vec<String>,
    /// Jobs run at once.
    pub concurrent: usize,
    pub working_dir: PathBuf,
    /// First Ctrl-C: GitLab's Cancel for the running jobs; nothing more starts.
    pub cancel: CancellationToken,
    /// Second Ctrl-C: ferry's shutdown (the jobs stop at once, their containers are removed).
    pub shutdown: CancellationToken,
    /// `--artifacts-to-source`: where a successful job's artifacts are unpacked.
    pub to_source: Option<to_source::ToSource>,
}

/// Runs the jobs to their ends and returns each one's result, in the jobs' order.
pub async fn run_pipeline<E, D, H>(
    driver: Arc<Driver<E, D, LocalApi, H>>,
    runner: Arc<RunnerSection>,
    jobs: Vec<LocalJob>,
    opts: Options,
) -> (Status, Vec<JobResult>)
where
    E: Engine,
    D: Deployer,
    H: Host,
{
    let api = driver.api.clone();
    let mut schedule = Schedule::new(jobs.iter().map(|j| j.node.clone()).collect());
    let mut started: Vec<Option<Instant>> = vec![None; jobs.len()];
    let mut durations: Vec<Option<f64>> = vec![None; jobs.len()];
    let mut logs: Vec<Option<PathBuf>> = vec![None; jobs.len()];
    let mut running: JoinSet<usize> = JoinSet::new();
    let mut slots: Vec<bool> = vec![false; opts.concurrent.max(1)];
    let mut slot_of: Vec<usize> = vec![0; jobs.len()];
    let mut attempts: Vec<u32> = vec![0; jobs.len()];
    let mut canceled = false;
    // Starts attempt `attempt` of job `i` on `slot`: its log file, then the driver (after
    // `when: delayed`'s `start_in`, which Ctrl-C cuts short: the job then never runs).
    let launch = |running: &mut JoinSet<usize>,
                  job: &LocalJob,
                  i: usize,
                  slot: usize,
                  attempt: u32|
     -> Option<PathBuf> {
        let mut payload = job.payload.clone();
        payload.dependencies.retain(|d| api.has_archive(d.id));
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        for v in payload.variables.iter_mut() {
            if v.key == "CI_JOB_STARTED_AT" {
                v.value = now.clone();
            }
        }
        let file = match attempt {
            1 => format!("{}-{}.log", payload.id, file_name(&job.node.name)),
            n => format!(
                "{}-{}-retry{}.log",
                payload.id,
                file_name(&job.node.name),
                n - 1
            ),
        };
        let log = api.register(&payload.job_ref(), &file);
        api.terminal().name(payload.id, &job.node.name);
        if attempt > 1 {
            api.terminal().say(&format!(
                "ferry: retrying {} (attempt {attempt}, retry:)",
                job.node.name
            ));
        }
        let ctx = JobContext {
            working_dir: opts.working_dir.clone(),
            concurrent_id: slot,
            concurrent_project_id: slot,
            tls_ca_pem: None,
            object_cache: false,
            // As before `--no-journal` existed; nothing resumes a `ferry exec` job.
            keep_step_output: true,
        };
        let (driver, runner, shutdown, cancel) = (
            driver.clone(),
            runner.clone(),
            opts.shutdown.clone(),
            opts.cancel.clone(),
        );
        let delay = (attempt == 1).then_some(job.start_in).flatten();
        running.spawn(async move {
            if let Some(delay) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return i,
                }
            }
            driver.run(runner, payload, ctx, shutdown).await;
            i
        });
        match log {
            Ok(path) => Some(path),
            Err(e) => {
                api.terminal().say(&format!(
                    "ferry: cannot write the log of {}: {e}",
                    job.node.name
                ));
                None
            }
        }
    };
    loop {
        if !canceled {
            let free = slots.iter().filter(|s| !**s).count();
            for i in schedule.next(free) {
                let slot = slots.iter().position(|s| !*s).unwrap_or(0);
                slots[slot] = true;
                slot_of[i] = slot;
                attempts[i] = 1;
                started[i] = Some(Instant::now());
                logs[i] = launch(&mut running, &jobs[i], i, slot, 1);
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            ended = running.join_next() => {
                let Some(ended) = ended else { continue };
                // A panic is caught inside the driver; a join error is a bug of ferry's.
                let Ok(i) = ended else { continue };
                let id = jobs[i].payload.id;
                api.terminal().end(id);
                slots[slot_of[i]] = false;
                durations[i] = started[i].map(|t| t.elapsed().as_secs_f64());
                let outcome = api.outcome(id);
                if let Some(code) = outcome.as_ref().and_then(|u| u.exit_code)
                    && jobs[i].allow_failure_exit_codes.contains(&i64::from(code))
                {
                    schedule.allow_failure(i);
                }
                let status = match &outcome {
                    Some(u) if u.state == crate::api::JobState::Success => Status::Success,
                    _ if canceled => Status::Canceled,
                    _ => Status::Failed,
                };
                let retry = status == Status::Failed
                    && !schedule.nodes()[i].allow_failure
                    && jobs[i].retry.as_ref().is_some_and(|r| {
                        r.allows(attempts[i], outcome.as_ref())
                    });
                if retry {
                    attempts[i] += 1;
                    slots[slot_of[i]] = true;
                    logs[i] = launch(&mut running, &jobs[i], i, slot_of[i], attempts[i]);
                    continue;
                }
                // Before the jobs after it start: their ends cannot interleave with these files.
                if status == Status::Success
                    && let Some(to) = &opts.to_source
                    && let Some(archive) = api.archive_of(id)
                {
                    for line in to.extract(&jobs[i].node.name, archive, opts.shutdown.clone()).await {
                        api.terminal().say(&line);
                    }
                }
                schedule.finished(i, status);
            }
            _ = opts.cancel.cancelled(), if !canceled => {
                canceled = true;
                api.cancel_all();
                schedule.cancel();
            }
        }
    }
    // Jobs that never started (their predecessors were canceled or never ended).
    if !schedule.done() {
        schedule.cancel();
    }
    let results = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let outcome = api.outcome(j.payload.id);
            JobResult {
                name: j.node.name.clone(),
                stage: opts.stages.get(j.node.stage).cloned().unwrap_or_default(),
                status: schedule.status(i),
                failure_reason: outcome.and_then(|u| u.failure_reason),
                allow_failure: schedule.nodes()[i].allow_failure,
                duration_s: durations[i],
                log: logs[i].clone(),
                reason: schedule.reason(i).map(str::to_string),
            }
        })
        .collect();
    (schedule.pipeline_status(), results)
}

/// A job name as part of a file name: letters, digits, `-`, `_` and `.`; the rest `_`; at most
/// 100 characters (GitLab's job names may have 255, more than a file name can).
pub fn file_name(name: &str) -> String {
    name.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The summary table printed at the end: job, stage, status, duration, reason.
pub fn summary(results: &[JobResult]) -> String {
    let rows: Vec<[String; 5]> = results
        .iter()
        .map(|r| {
            let status = serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let status = if r.status == Status::Failed && r.allow_failure {
                format!("{status} (allowed)")
            } else {
                status
            };
            [
                r.name.clone(),
                r.stage.clone(),
                status,
                r.duration_s
                    .map(|d| format!("{:.1}s", d))
                    .unwrap_or_else(|| "-".into()),
                r.failure_reason
                    .clone()
                    .or_else(|| r.reason.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["JOB", "STAGE", "STATUS", "DURATION", "REASON"].map(String::from);
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// How long the driver waits between two log uploads to the local API: short, so the
/// terminal follows the job closely.
pub const LOCAL_UPDATE_INTERVAL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobState, JobUpdate};

    fn failed(reason: &str, code: Option<i32>) -> JobUpdate {
        JobUpdate {
            state: JobState::Failed,
            failure_reason: Some(reason.into()),
            exit_code: code,
            checksum: None,
            bytesize: None,
        }
    }

    #[test]
    fn retry_follows_max_when_and_exit_codes() {
        let any = RetryPolicy {
            max: 2,
            when: vec![],
            exit_codes: vec![],
        };
        let f = failed("script_failure", Some(1));
        assert!(any.allows(1, Some(&f)));
        assert!(any.allows(2, Some(&f)));
        assert!(!any.allows(3, Some(&f)), "at most max retries");
        let system = RetryPolicy {
            max: 1,
            when: vec!["runner_system_failure".into()],
            exit_codes: vec![],
        };
        assert!(!system.allows(1, Some(&f)));
        assert!(system.allows(1, Some(&failed("runner_system_failure", None))));
        let codes = RetryPolicy {
            max: 1,
            when: vec!["always".into()],
            exit_codes: vec![137],
        };
        assert!(!codes.allows(1, Some(&f)));
        assert!(codes.allows(1, Some(&failed("script_failure", Some(137)))));
    }
}
