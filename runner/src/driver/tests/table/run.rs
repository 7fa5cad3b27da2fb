//! Runs the rows of the table: each a whole job against the fakes, checked as a user sees it.

use std::time::Duration;

use ferry_executor::fake::Call;
use tokio_util::sync::CancellationToken;

use super::super::fake_host::{Act, FakeHost, HostStage};
use super::super::{Case, TOKEN, payload};
use super::{At, Cond, Want, table};
use crate::failure::FailureReason;

/// The job of one row: a script, an after_script, a cache, a dependency and an artifact, with
/// the stage `at` misbehaving as `cond` says.
fn job(
    cond: Cond,
    at: At,
    shutdown: &CancellationToken,
) -> (crate::gitlab::payload::JobPayload, FakeHost) {
    let act = match cond {
        Cond::Error => Act::Fail,
        Cond::Lost => Act::Lost,
        Cond::ShutdownBetween => Act::Signal(shutdown.clone()),
        _ => Act::Hang,
    };
    let command = match cond {
        Cond::Error => "fail-docker",
        Cond::Lost => "lost",
        Cond::Exit(command) => command,
        _ => "sleep 30",
    };
    let image = match (at, cond) {
        (At::PrepareExecutor, Cond::Error) => "docker-down",
        (At::PrepareExecutor, Cond::Lost) => "lost",
        (At::PrepareExecutor, _) => "hang",
        _ => "busybox",
    };
    let script = if at == At::Script {
        command
    } else {
        "echo main"
    };
    let after = if at == At::AfterScript {
        command
    } else {
        "echo after"
    };
    let host = match at {
        At::GetSources => FakeHost::with(HostStage::GetSources, act),
        At::RestoreCache => FakeHost::with(HostStage::RestoreCache, act),
        At::DownloadArtifacts if cond != Cond::Error => {
            FakeHost::with(HostStage::ExtractArtifacts, act)
        }
        At::ArchiveCache => FakeHost::with(HostStage::SaveCache, act),
        At::UploadArtifacts if cond != Cond::Error => {
            FakeHost::with(HostStage::ArchiveArtifacts, act)
        }
        _ => FakeHost::default(),
    };
    let timeout = if cond == Cond::Timeout { 1 } else { 3600 };
    let p = payload(
        &[script],
        &[after],
        serde_json::json!({
            "runner_info": {"timeout": timeout},
            "image": {"name": image},
            "variables": [
                {"key": "GIT_STRATEGY", "value": "none", "public": true},
                {"key": "RUNNER_AFTER_SCRIPT_TIMEOUT", "value": "2s", "public": true}
            ],
            "cache": [{"key": "k", "paths": ["vendor"], "policy": "pull-push", "when": "on_success"}],
            "artifacts": [{"name": "a", "paths": ["out"], "when": "always",
                           "artifact_type": "archive", "artifact_format": "zip"}],
            "dependencies": [{"id": 5, "name": "build", "token": TOKEN,
                              "artifacts_file": {"filename": "artifacts.zip", "size": 3}}],
            "features": {"trace_sections": true, "failure_reasons": [
                "unknown_failure", FailureReason::ScriptFailure.as_str(), FailureReason::RunnerSystemFailure.as_str(),
                "job_execution_timeout", "runner_interrupted"]}
        }),
    );
    (p, host)
}

/// Whether the stage `at` has started, as the fakes saw it.
fn reached(case: &Case<FakeHost>, at: At) -> bool {
    let step = |name: &str| {
        case.engine
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RunStep(_, n) if n == name))
    };
    match at {
        At::GetSources => case.host.entered(HostStage::GetSources),
        At::RestoreCache => case.host.entered(HostStage::RestoreCache),
        At::DownloadArtifacts => case.host.entered(HostStage::ExtractArtifacts),
        At::PrepareExecutor => case
            .engine
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Prepare(_))),
        At::Script => step("script"),
        At::AfterScript => step("after_script"),
        At::ArchiveCache => case.host.entered(HostStage::SaveCache),
        At::UploadArtifacts => case.host.entered(HostStage::ArchiveArtifacts),
    }
}

/// The log as a user reads it: without colours, section markers and empty lines.
fn plain_lines(log: &str) -> Vec<String> {
    let no_ansi = regex_lite_strip(log);
    no_ansi
        .lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l).trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn regex_lite_strip(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The names of the sections the log opens, in order.
fn sections(log: &str) -> Vec<String> {
    log.split("section_start:")
        .skip(1)
        .filter_map(|rest| rest.split(['\r', '[']).next())
        .filter_map(|head| head.split_once(':').map(|(_, name)| name.to_string()))
        .collect()
}

/// Runs one row; returns what differs from the row's `Want`, if anything.
async fn check(cond: Cond, at: At, want: &Want) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    let (p, host) = job(cond, at, &shutdown);
    let mut case = Case::new(&p, host);
    case.shutdown = shutdown;
    case.api.with(|s| {
        if !(cond == Cond::Error && at == At::DownloadArtifacts) {
            s.artifacts.insert(5, b"zip".to_vec());
        }
        if cond == Cond::Error && at == At::UploadArtifacts {
            s.upload_status = Some(500);
        }
    });
    let trigger = async {
        while !reached(&case, at) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match cond {
            Cond::Canceling => case.api.with(|s| s.status = "canceling".into()),
            Cond::Canceled => {
                // Time for the section's header to reach GitLab, which takes no more log
                // once it canceled the job.
                tokio::time::sleep(Duration::from_millis(150)).await;
                case.api.with(|s| s.status = "canceled".into())
            }
            Cond::Shutdown => case.shutdown.cancel(),
            _ => {}
        }
        std::future::pending::<()>().await
    };
    let log = tokio::select! {
        log = case.run(p) => log,
        _ = trigger => unreachable!(),
    };
    compare(cond, at, &case, &log, want).map_err(|e| format!("{cond:?} at {at:?}: {e}"))
}

/// What differs between the job `case` ran (its `log`) and the row's `want`.
fn compare(
    cond: Cond,
    at: At,
    case: &Case<FakeHost>,
    log: &str,
    want: &Want,
) -> Result<(), String> {
    let mut wrong = Vec::new();
    let (status, reason, exit_code) = case.api.with(|s| {
        let last = s.updates.last().map(|u| u.update.clone());
        (
            s.status.clone(),
            last.as_ref().and_then(|u| u.failure_reason.clone()),
            last.and_then(|u| u.exit_code),
        )
    });
    if status != want.status {
        wrong.push(format!("GitLab status {status:?}, want {:?}", want.status));
    }
    if reason.as_deref() != want.reason {
        wrong.push(format!("failure_reason {reason:?}, want {:?}", want.reason));
    }
    if exit_code != want.exit_code {
        wrong.push(format!(
            "exit_code {exit_code:?}, want {:?}",
            want.exit_code
        ));
    }
    let after = case
        .engine
        .steps()
        .iter()
        .find(|s| s.name == "after_script")
        .and_then(|s| s.env.iter().find(|e| e.name == "CI_JOB_STATUS"))
        .map(|e| e.value.clone());
    if after.as_deref() != want.after {
        wrong.push(format!("after_script saw {after:?}, want {:?}", want.after));
    }
    let seen = sections(log);
    if seen != want.sections {
        wrong.push(format!("sections {seen:?}, want {:?}", want.sections));
    }
    let lines = plain_lines(log);
    let outcome = case.api.with(|s| s.updates.last().map(|u| u.outcome));
    if cond == Cond::Canceled {
        if outcome != Some("403") {
            wrong.push(format!("final update answered {outcome:?}, want 403"));
        }
    } else if !want.cause.is_empty() && !lines.iter().any(|l| l.starts_with(want.cause)) {
        wrong.push(format!("no line {:?}", want.cause));
    }
    if cond != Cond::Canceled && lines.last().map(String::as_str) != Some(want.last) {
        wrong.push(format!(
            "last line {:?}, want {:?}",
            lines.last(),
            want.last
        ));
    }
    if cond != Cond::Canceled {
        let before_last = lines.len().checked_sub(2).map(|i| lines[i].as_str());
        if let Err(e) = check_timing(cond, at, before_last, want) {
            wrong.push(e);
        }
    }
    if case.engine.calls().last() != Some(&Call::Destroy(7)) {
        wrong.push(format!("no cleanup at the end: {:?}", case.engine.calls()));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "\n    {}\n{}",
            wrong.join("\n    "),
            lines.join("\n")
        ))
    }
}

/// The line before the final status is the timing line (docs/job-log.md): every section of
/// the log in the order it ran, each with its time, and the total. A stage the job timeout
/// stopped took the timeout (1 s on the paused clock).
fn check_timing(cond: Cond, at: At, line: Option<&str>, want: &Want) -> Result<(), String> {
    let line = line.unwrap_or_default();
    let parsed = line
        .strip_prefix("Job timing: ")
        .and_then(|rest| rest.split_once("; total "));
    let Some((stages, total)) = parsed else {
        return Err(format!(
            "line before the last {line:?}, want the timing line"
        ));
    };
    let seconds = |d: &str| d.strip_suffix('s').and_then(|n| n.parse::<f64>().ok());
    let stages: Vec<(&str, Option<f64>)> = stages
        .split(", ")
        .map(|s| {
            let (name, took) = s.rsplit_once(' ').unwrap_or((s, ""));
            (name, seconds(took))
        })
        .collect();
    let names: Vec<&str> = stages.iter().map(|(n, _)| *n).collect();
    if names != want.sections || stages.iter().any(|(_, t)| t.is_none()) || seconds(total).is_none()
    {
        return Err(format!(
            "timing line {line:?}, want the sections {:?}",
            want.sections
        ));
    }
    let stopped = match at {
        At::GetSources => "get_sources",
        At::RestoreCache => "restore_cache",
        At::DownloadArtifacts => "download_artifacts",
        At::PrepareExecutor => "prepare_executor",
        At::Script => "step_script",
        _ => return Ok(()),
    };
    let took = stages
        .iter()
        .find(|(n, _)| *n == stopped)
        .and_then(|(_, t)| *t);
    if cond == Cond::Timeout && !took.is_some_and(|t| (0.9..=1.1).contains(&t)) {
        return Err(format!(
            "timing line {line:?}: {stopped} should have taken the 1s timeout"
        ));
    }
    Ok(())
}

/// Every row of one condition, concurrently.
async fn check_rows(which: impl Fn(Cond) -> bool) -> usize {
    let rows: Vec<_> = table().into_iter().filter(|(c, _, _)| which(*c)).collect();
    let results =
        futures::future::join_all(rows.iter().map(|(cond, at, want)| check(*cond, *at, want)))
            .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
    rows.len()
}

#[test]
fn the_table_covers_every_stop_and_failure_in_every_stage() {
    let rows = table();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    for cond in [
        Cond::Timeout,
        Cond::Canceling,
        Cond::Canceled,
        Cond::Shutdown,
        Cond::Error,
        Cond::Lost,
    ] {
        assert_eq!(
            rows.iter().filter(|(c, _, _)| *c == cond).count(),
            8,
            "{cond:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn job_timeout_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Timeout).await, 8);
}

#[tokio::test(start_paused = true)]
async fn gitlab_canceling_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Canceling).await, 8);
}

#[tokio::test(start_paused = true)]
async fn gitlab_canceled_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Canceled).await, 8);
}

#[tokio::test(start_paused = true)]
async fn ferry_shutdown_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Shutdown).await, 8);
}

#[tokio::test(start_paused = true)]
async fn an_error_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Error).await, 8);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_in_each_stage() {
    assert_eq!(check_rows(|c| c == Cond::Lost).await, 8);
}

#[tokio::test(start_paused = true)]
async fn ferry_shutdown_between_two_stages() {
    assert_eq!(check_rows(|c| c == Cond::ShutdownBetween).await, 2);
}

#[tokio::test(start_paused = true)]
async fn the_script_exit_code() {
    assert_eq!(check_rows(|c| matches!(c, Cond::Exit(_))).await, 3);
}
