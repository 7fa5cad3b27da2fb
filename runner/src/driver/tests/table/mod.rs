//! The driver's rules as a table: {job timeout, GitLab `canceling`, GitLab `canceled`, ferry
//! shutdown, an error, a lost connection} × {each stage}, plus the script's own exit codes.
//! Each row runs a whole job in process (FakeEngine, FakeHost, the in-memory GitLab) and
//! checks what the user sees: GitLab's final status, the failure reason and exit code, what
//! after_script saw as `CI_JOB_STATUS`, which sections the log shows, the cause and the last
//! line of the log, the timing line before it (those sections, each timed; the stage a job
//! timeout stopped took that timeout), and that the job's containers were removed.
//!
//! The clock is tokio's paused test clock: it jumps ahead whenever every task waits, so a
//! 1 s job timeout takes no time and always fires before a 1.5 s hang, however busy the
//! machine is.

mod run;

use crate::failure::FailureReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    /// The job's deadline passes (runner_info.timeout = 1 s) while the stage hangs.
    Timeout,
    /// GitLab answers `canceling` once the stage started (it hangs meanwhile).
    Canceling,
    /// GitLab answers `canceled` (403) once the stage started.
    Canceled,
    /// ferry is told to shut down once the stage started.
    Shutdown,
    /// The stage fails at once.
    Error,
    /// The stage writes a line, then loses its connection.
    Lost,
    /// The step exits with this code (script stages only).
    Exit(&'static str),
    /// ferry is told to shut down as the stage ends, successfully: the next stage must not
    /// run, and the job must not pass for a success.
    ShutdownBetween,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    GetSources,
    RestoreCache,
    DownloadArtifacts,
    PrepareExecutor,
    Script,
    AfterScript,
    ArchiveCache,
    UploadArtifacts,
}

/// What the user sees at the end.
struct Want {
    /// GitLab's job status.
    status: &'static str,
    /// failure_reason and exit_code of the final update.
    reason: Option<&'static str>,
    exit_code: Option<i32>,
    /// CI_JOB_STATUS as after_script saw it; `None`: after_script did not run.
    after: Option<&'static str>,
    /// The log's sections, in order.
    sections: &'static [&'static str],
    /// A line of the log that says why ("" for none).
    cause: &'static str,
    /// The log's last line. GitLab refuses the log of a job it canceled, so for those rows
    /// only the sections that reached it before are checked.
    last: &'static str,
}

const S1: &[&str] = &["get_sources"];
const S2: &[&str] = &["get_sources", "restore_cache"];
const S3: &[&str] = &["get_sources", "restore_cache", "download_artifacts"];
const S4: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
];
const S5: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
    "step_script",
];
const S6: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
    "step_script",
    "after_script",
];
const S7: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
    "step_script",
    "after_script",
    "archive_cache",
];
const ALL_OK: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
    "step_script",
    "after_script",
    "archive_cache",
    "upload_artifacts_on_success",
];
const ALL_FAILED: &[&str] = &[
    "get_sources",
    "restore_cache",
    "download_artifacts",
    "prepare_executor",
    "step_script",
    "after_script",
    "archive_cache_on_failure",
    "upload_artifacts_on_failure",
];

const TIMEOUT: &str = "ERROR: Job failed: execution took longer than the job timeout";
const CANCELED: &str = "ERROR: Job canceled by GitLab";
const STOPPED: &str =
    "ERROR: Job failed: the runner was stopped (ferry received a termination signal)";
const DOCKER_DOWN: &str = "ERROR: Job failed (system failure): docker: connection refused";
const DOCKER_LOST: &str =
    "ERROR: Job failed (system failure): docker: lost the connection to the Docker daemon";

const SUCCEEDED: &str = "Job succeeded";
const F_TIMEOUT: &str = "ERROR: Job failed (job_execution_timeout)";
const F_UNKNOWN: &str = "ERROR: Job failed (unknown_failure)";
const F_INTERRUPTED: &str = "ERROR: Job failed (runner_interrupted)";
const F_SYSTEM: &str = "ERROR: Job failed (runner_system_failure)";

/// The rows of one condition: one `Want` per stage, in `At` order.
fn stop_rows(
    status: &'static str,
    reason: &'static str,
    cause: &'static str,
    last: &'static str,
) -> Vec<(At, Want)> {
    let w = |sections, after| Want {
        status,
        reason: Some(reason),
        exit_code: None,
        after,
        sections,
        cause,
        last,
    };
    vec![
        (At::GetSources, w(S1, None)),
        (At::RestoreCache, w(S2, None)),
        (At::DownloadArtifacts, w(S3, None)),
        (At::PrepareExecutor, w(S4, None)),
    ]
}

fn ok(sections: &'static [&'static str], cause: &'static str, status: &'static str) -> Want {
    Want {
        status,
        reason: None,
        exit_code: None,
        after: Some("success"),
        sections,
        cause,
        last: SUCCEEDED,
    }
}

fn failed(
    reason: &'static str,
    after: Option<&'static str>,
    sections: &'static [&'static str],
    cause: &'static str,
    last: &'static str,
) -> Want {
    let status = match (reason, cause) {
        (_, CANCELED) => "canceled",
        _ => "failed",
    };
    Want {
        status,
        reason: Some(reason),
        exit_code: None,
        after,
        sections,
        cause,
        last,
    }
}

#[rustfmt::skip]
fn table() -> Vec<(Cond, At, Want)> {
    use At::*;
    use Cond::*;
    let mut rows = Vec::new();
    let mut add = |cond: Cond, list: Vec<(At, Want)>| {
        rows.extend(list.into_iter().map(|(at, w)| (cond, at, w)));
    };
    const JET: &str = FailureReason::JobExecutionTimeout.as_str();
    const UNKNOWN: &str = FailureReason::UnknownFailure.as_str();
    const INTERRUPTED: &str = FailureReason::RunnerInterrupted.as_str();

    // The job timeout: whatever runs stops; after_script still runs after the script's
    // timeout (seeing `timedout`), and so do the cache and `on_failure` artifacts. after_script
    // is not bound by the job timeout, only by its own (the engine's).
    let mut timeout = stop_rows("failed", JET, TIMEOUT, F_TIMEOUT);
    timeout.extend([
        (Script, failed(JET, Some("timedout"), ALL_FAILED, TIMEOUT, F_TIMEOUT)),
        (AfterScript, ok(ALL_OK, "ERROR: Step after_script timed out after 2s", "success")),
        (ArchiveCache, failed(JET, Some("success"), S7, TIMEOUT, F_TIMEOUT)),
        (UploadArtifacts, failed(JET, Some("success"), ALL_OK, TIMEOUT, F_TIMEOUT)),
    ]);
    add(Timeout, timeout);

    // GitLab's graceful `canceling`: the script stops, after_script (seeing `canceled`), the
    // cache and `on_failure` artifacts still run; what runs after the script is not stopped by
    // it. GitLab turns any final state into `canceled`.
    let mut canceling = stop_rows("canceled", UNKNOWN, CANCELED, F_UNKNOWN);
    canceling.extend([
        (Script, failed(UNKNOWN, Some("canceled"), ALL_FAILED, CANCELED, F_UNKNOWN)),
        (AfterScript, ok(ALL_OK, "ERROR: Step after_script timed out after 2s", "canceled")),
        (ArchiveCache, ok(ALL_OK, "", "canceled")),
        (UploadArtifacts, ok(ALL_OK, "", "canceled")),
    ]);
    add(Canceling, canceling);

    // GitLab's `canceled` (403): the job is over server-side; nothing more runs.
    let mut canceled = stop_rows("canceled", UNKNOWN, CANCELED, F_UNKNOWN);
    canceled.extend([
        (Script, failed(UNKNOWN, None, S5, CANCELED, F_UNKNOWN)),
        (AfterScript, failed(UNKNOWN, Some("success"), S6, CANCELED, F_UNKNOWN)),
        (ArchiveCache, failed(UNKNOWN, Some("success"), S7, CANCELED, F_UNKNOWN)),
        (UploadArtifacts, failed(UNKNOWN, Some("success"), ALL_OK, CANCELED, F_UNKNOWN)),
    ]);
    add(Canceled, canceled);

    // ferry shuts down: nothing more runs, the job is `runner_interrupted`.
    let mut shutdown = stop_rows("failed", INTERRUPTED, STOPPED, F_INTERRUPTED);
    shutdown.extend([
        (Script, failed(INTERRUPTED, None, S5, STOPPED, F_INTERRUPTED)),
        (AfterScript, failed(INTERRUPTED, Some("success"), S6, STOPPED, F_INTERRUPTED)),
        (ArchiveCache, failed(INTERRUPTED, Some("success"), S7, STOPPED, F_INTERRUPTED)),
        (UploadArtifacts, failed(INTERRUPTED, Some("success"), ALL_OK, STOPPED, F_INTERRUPTED)),
    ]);
    add(Shutdown, shutdown);
    rows.extend(failure_rows());
    rows
}

/// Errors, lost connections and exit codes.
#[rustfmt::skip]
fn failure_rows() -> Vec<(Cond, At, Want)> {
    use At::*;
    use Cond::*;
    let mut rows = Vec::new();
    let mut add = |cond: Cond, list: Vec<(At, Want)>| {
        rows.extend(list.into_iter().map(|(at, w)| (cond, at, w)));
    };
    const SYSTEM: &str = FailureReason::RunnerSystemFailure.as_str();
    const INTERRUPTED: &str = FailureReason::RunnerInterrupted.as_str();

    // Errors: a stage before the script ends the job as a system failure; the cache and
    // after_script only warn; a failed upload fails a job that had succeeded.
    add(Error, vec![
        (GetSources, failed(SYSTEM, None, S1, "ERROR: Job failed: getting the sources: git fetch origin failed (exit status: 128): fatal: repository not found", F_SYSTEM)),
        (RestoreCache, ok(ALL_OK, "WARNING: restoring cache \"k\": writing job log: connection reset", "success")),
        (DownloadArtifacts, failed(SYSTEM, None, S3, "ERROR: Job failed: downloading artifacts of build (5): GET /jobs/:id/artifacts: HTTP 404: 404 Not Found", F_SYSTEM)),
        (PrepareExecutor, failed(SYSTEM, None, S4, DOCKER_DOWN, F_SYSTEM)),
        (Script, failed(SYSTEM, Some("failed"), ALL_FAILED, DOCKER_DOWN, F_SYSTEM)),
        (AfterScript, ok(ALL_OK, "WARNING: after_script failed: docker: connection refused", "success")),
        (ArchiveCache, ok(ALL_OK, "WARNING: saving cache \"k\": writing job log: connection reset", "success")),
        (UploadArtifacts, failed(SYSTEM, Some("success"), ALL_OK, "ERROR: Job failed: uploading artifacts: POST /jobs/:id/artifacts: HTTP 500: fake outage", F_SYSTEM)),
    ]);

    // A connection lost in the middle of a stage: as an error, after the stage's first output.
    add(Lost, vec![
        (GetSources, failed(SYSTEM, None, S1, "ERROR: Job failed: getting the sources: reading the repository: connection reset", F_SYSTEM)),
        (RestoreCache, ok(ALL_OK, "WARNING: restoring cache \"k\": writing job log: connection reset", "success")),
        (DownloadArtifacts, failed(SYSTEM, None, S3, "ERROR: Job failed: extracting artifacts of build (5): reading artifacts archive", F_SYSTEM)),
        (PrepareExecutor, failed(SYSTEM, None, S4, DOCKER_LOST, F_SYSTEM)),
        (Script, failed(SYSTEM, Some("failed"), ALL_FAILED, DOCKER_LOST, F_SYSTEM)),
        (AfterScript, ok(ALL_OK, "WARNING: after_script failed: docker: lost the connection", "success")),
        (ArchiveCache, ok(ALL_OK, "WARNING: saving cache \"k\": writing job log: connection reset", "success")),
        (UploadArtifacts, failed(SYSTEM, Some("success"), ALL_OK, "ERROR: Job failed: archiving artifacts: writing artifacts archive", F_SYSTEM)),
    ]);

    // A shutdown that arrives between two stages stops the job before the next one.
    add(ShutdownBetween, vec![
        (GetSources, failed(INTERRUPTED, None, S1, STOPPED, F_INTERRUPTED)),
        (ArchiveCache, failed(INTERRUPTED, Some("success"), S7, STOPPED, F_INTERRUPTED)),
    ]);

    // The script's own exit code fails the job with it; after_script's only warns.
    let exit = |code, cause, last| Want {
        exit_code: Some(code),
        ..failed(FailureReason::ScriptFailure.as_str(), Some("failed"), ALL_FAILED, cause, last)
    };
    add(Exit("exit 3"), vec![(Script, exit(3, "", "ERROR: Job failed: exit code 3"))]);
    add(Exit("oom"), vec![(Script, exit(137, "ERROR: the job container was killed because it ran out of memory (OOM)", "ERROR: Job failed: exit code 137"))]);
    add(Exit("exit 3"), vec![(AfterScript, ok(ALL_OK, "WARNING: after_script failed with exit code 3", "success"))]);
    rows
}
