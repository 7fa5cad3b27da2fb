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
    // The project dirs (CI_CONCURRENT_PROJECT_ID) held by running jobs, twice as many as the
    // slots: see `pick_dir`.
    let mut dirs: Vec<bool> = vec![false; 2 * slots.len()];
    let mut dir_of: Vec<usize> = vec![0; jobs.len()];
    let short = runner.token.ci_short_token().to_string();
    // Whether project dir `n` of `job` is free: no job, nor the containers of one whose
    // cleanup still runs, holds it (the driver's claim, `Workspaces`).
    let dir_free = |job: &LocalJob, n: usize| {
        let ctx = JobContext {
            working_dir: opts.working_dir.clone(),
            concurrent_id: 0,
            concurrent_project_id: n,
            tls_ca_pem: None,
            object_cache: false,
            keep_step_output: false,
        };
        let dir = crate::plan::host_project_dir(&ctx, &short, job.payload.job_info.project_id);
        driver.workspaces.try_claim(&dir).is_some()
    };
    let mut attempts: Vec<u32> = vec![0; jobs.len()];
    let mut canceled = false;
    // Starts attempt `attempt` of job `i` on `slot` in project dir `dir`: its log file, then
    // the driver (after `when: delayed`'s `start_in`, which Ctrl-C cuts short: the job then
    // never runs).
    let launch = |running: &mut JoinSet<usize>,
                  job: &LocalJob,
                  i: usize,
                  slot: usize,
                  dir: usize,
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
            concurrent_project_id: dir,
            tls_ca_pem: None,
            object_cache: false,
            // Nothing resumes a `ferry exec` job (docs/exec.md): its steps stream their output.
            keep_step_output: false,
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
                let dir = pick_dir(&dirs, |n| dir_free(&jobs[i], n));
                dirs[dir] = true;
                dir_of[i] = dir;
                attempts[i] = 1;
                started[i] = Some(Instant::now());
                logs[i] = launch(&mut running, &jobs[i], i, slot, dir, 1);
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
                dirs[dir_of[i]] = false;
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
                    // A retry has its earlier attempt's job id, so its containers' names: it
                    // keeps that attempt's dir and waits there (the driver's claim) until they
                    // are removed.
                    let dir = dir_of[i];
                    dirs[dir] = true;
                    logs[i] = launch(&mut running, &jobs[i], i, slot_of[i], dir, attempts[i]);
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

/// The project dir (`CI_CONCURRENT_PROJECT_ID`, part of the builds dir's path on the host) a
/// job starts in: the lowest one that no running job holds (`held`) and that is `free` (the
/// containers of the job that used it last are removed), as gitlab-runner numbers its
/// `ProjectRunnerID` (a job keeps its number until its containers are removed); so a job never
/// waits for the previous job's cleanup while another dir is free (docs/exec.md, "Jobs and
/// their directories"). There are twice as many dirs as slots, so at most as many as the slots
/// wait for their cleanup; when none is free, the lowest one no running job holds: the job
/// then waits for its containers to be removed (`Workspaces`).
fn pick_dir(held: &[bool], free: impl Fn(usize) -> bool) -> usize {
    let unheld = || (0..held.len()).filter(|&n| !held[n]);
    unheld()
        .find(|&n| free(n))
        .or_else(|| unheld().next())
        .unwrap_or(0)
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
    fn a_job_takes_the_lowest_free_dir_no_running_job_holds() {
        let free_all = |_: usize| true;
        assert_eq!(pick_dir(&[false, false], free_all), 0);
        assert_eq!(pick_dir(&[true, false], free_all), 1);
        // Dir 0 still has the containers of a job being removed: the next one.
        assert_eq!(pick_dir(&[false, false], |n| n != 0), 1);
        assert_eq!(pick_dir(&[false, false, false, false], |n| n == 3), 3);
        // None free: the lowest no running job holds (the job waits for its cleanup).
        assert_eq!(pick_dir(&[false, false], |_| false), 0);
        assert_eq!(pick_dir(&[true, false], |_| false), 1);
    }

    /// An engine whose containers take a while to be removed, as Docker's are, and that
    /// records which project dir each job's containers had and any job whose containers start
    /// on a dir that another job's containers still have.
    #[derive(Default)]
    struct SlowTeardown {
        mounted: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
        dirs: std::sync::Mutex<Vec<(u64, PathBuf)>>,
        shared: std::sync::Mutex<Vec<String>>,
    }

    impl Engine for SlowTeardown {
        async fn prepare(
            &self,
            env: &ferry_executor::JobEnv,
            _log: &mut ferry_executor::LogSink<'_>,
            _cancel: &CancellationToken,
        ) -> Result<(), ferry_executor::EngineError> {
            let dir = env.host_project_dir.clone();
            self.dirs.lock().unwrap().push((env.job_id, dir.clone()));
            if let Some(other) = self.mounted.lock().unwrap().insert(dir, env.job_id) {
                self.shared.lock().unwrap().push(format!(
                    "job {} started on the dir of job {other}, whose containers were there",
                    env.job_id
                ));
            }
            Ok(())
        }

        async fn run_step(
            &self,
            _env: &ferry_executor::JobEnv,
            _step: &ferry_executor::StepSpec,
            _log: &mut ferry_executor::LogSink<'_>,
            _cancel: &CancellationToken,
        ) -> Result<ferry_executor::StepOutcome, ferry_executor::EngineError> {
            Ok(ferry_executor::StepOutcome {
                exit_code: 0,
                oom_killed: false,
                timed_out: false,
            })
        }

        async fn destroy(
            &self,
            env: &ferry_executor::JobEnv,
        ) -> Result<(), ferry_executor::EngineError> {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut mounted = self.mounted.lock().unwrap();
            if mounted.get(&env.host_project_dir) == Some(&env.job_id) {
                mounted.remove(&env.host_project_dir);
            }
            Ok(())
        }
    }

    fn local_job(id: u64, stage: usize) -> LocalJob {
        let payload = serde_json::json!({
            "id": id, "token": format!("glcbt-exectest{id}"),
            "job_info": {"id": id, "name": format!("j{id}"), "stage": "s", "project_id": 3,
                         "project_full_path": "g/p"},
            "runner_info": {"timeout": 3600},
            "variables": [{"key": "GIT_STRATEGY", "value": "none", "public": true}],
            "steps": [{"name": "script", "script": ["true"], "timeout": 3600,
                       "when": "on_success"}],
            "image": {"name": "busybox"},
        });
        LocalJob {
            node: Node {
                name: format!("j{id}"),
                stage,
                when: schedule::JobWhen::OnSuccess,
                allow_failure: false,
                needs: None,
                resource_group: None,
            },
            allow_failure_exit_codes: vec![],
            retry: None,
            start_in: None,
            payload: crate::gitlab::payload::parse_payload(&serde_json::to_vec(&payload).unwrap())
                .unwrap(),
        }
    }

    /// One job after the other on one slot: the second does not wait for the first one's
    /// containers to be removed (another dir is free), the third does (both dirs still have
    /// containers), and no job's containers ever start on a dir another job's still have.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_does_not_wait_for_the_previous_ones_cleanup_nor_shares_its_dir() {
        let work = tempfile::tempdir().unwrap();
        let runner = Arc::new(
            ferry_config::from_toml_str(
                "[[runners]]\nname = \"t\"\nurl = \"https://gitlab.example.com\"\n\
                 token = \"glrt-exectest0runner\"\nexecutor = \"docker\"\n\
                 [runners.docker]\nimage = \"busybox\"\n",
                "test.toml",
            )
            .unwrap()
            .runners
            .remove(0),
        );
        let api = LocalApi::new(
            &work.path().join("out"),
            terminal::Terminal::new(Box::new(std::io::sink()), false, false),
        )
        .unwrap();
        let engine = Arc::new(SlowTeardown::default());
        let driver = Arc::new(Driver {
            engine: engine.clone(),
            deployer: Arc::new(ferry_deploy::fake::FakeDeployer::default()),
            api: Arc::new(api),
            host: Arc::new(crate::driver::HostFs),
            metrics: crate::metrics::Metrics::new(),
            system_id: "s_test".into(),
            trace_timing: crate::trace::TraceTiming {
                update_interval: Duration::from_millis(20),
                ..Default::default()
            },
            cleanups: tokio_util::task::TaskTracker::new(),
            workspaces: Default::default(),
            journal: None,
        });
        let jobs = vec![local_job(1, 0), local_job(2, 1), local_job(3, 2)];
        let (status, results) = run_pipeline(
            driver.clone(),
            runner,
            jobs,
            Options {
                stages: vec!["a".into(), "b".into(), "c".into()],
                concurrent: 1,
                working_dir: work.path().join("work"),
                cancel: CancellationToken::new(),
                shutdown: CancellationToken::new(),
                to_source: None,
            },
        )
        .await;
        driver.cleanups.close();
        driver.cleanups.wait().await;
        assert_eq!(status, Status::Success, "{results:?}");
        let log = |i: usize| std::fs::read_to_string(results[i].log.as_ref().unwrap()).unwrap();
        const WAITING: &str = "Waiting for the containers of the previous job";
        assert!(!log(0).contains(WAITING), "{}", log(0));
        assert!(!log(1).contains(WAITING), "{}", log(1));
        assert!(log(2).contains(WAITING), "{}", log(2));
        assert_eq!(*engine.shared.lock().unwrap(), Vec::<String>::new());
        let dirs = engine.dirs.lock().unwrap().clone();
        let dir = |id: u64| {
            dirs.iter()
                .find(|(j, _)| *j == id)
                .map(|(_, d)| d.clone())
                .unwrap()
        };
        assert_ne!(dir(1), dir(2), "the second job took another dir");
        assert_eq!(
            dir(3),
            dir(1),
            "no third dir for one slot: the first one, once free"
        );
        assert!(
            dir(2).to_string_lossy().contains("/1/project-3/"),
            "{dirs:?}"
        );
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
