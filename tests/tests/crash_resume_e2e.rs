//! Crash-safe jobs, end to end through the real `ferry run` binary, the fake GitLab and the real
//! Docker engine (docs/crash-safety.md): ferry is killed (`kill -9`) or hands over (`SIGUSR2`)
//! while a job runs, and a new `ferry run` with the same configuration finishes the job with
//! its whole log, each line once; or reports what cannot be resumed.
//!
//! Needs Docker and the images of scripts/build-test-images.sh (built on first use); without
//! Docker the tests print `SKIP: <reason>` and return.

use std::time::Duration;

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;

/// `n` numbered lines, one every 100 ms.
fn numbered(n: u32) -> String {
    format!("i=1; while [ $i -le {n} ]; do echo line $i; i=$((i+1)); sleep 0.1; done")
}

/// Every `line <i>` for i in 1..=n is in `trace` exactly once, in order.
fn assert_lines_once(trace: &str, n: u32) {
    let got: Vec<&str> = trace.lines().filter(|l| l.starts_with("line ")).collect();
    let want: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want, "{trace}");
}

/// The CRC-32 of the trace as GitLab holds it is the one ferry claimed.
fn assert_checksum(h: &Harness, id: u64) {
    let job = h.gitlab.job(id).expect("job");
    let want = format!("crc32:{:08x}", crc32fast::hash(&h.gitlab.trace(id)));
    assert_eq!(
        job.checksum.as_deref(),
        Some(want.as_str()),
        "{}",
        h.describe(id)
    );
}

fn journal_entries(h: &Harness) -> Vec<String> {
    std::fs::read_dir(h.work_dir.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// ferry on the fake GitLab, which asks for the log every second (as GitLab does while
/// somebody watches the job), so that the tests see it grow.
async fn start() -> Option<Harness> {
    let mut h = Harness::prepare(Setup::default()).await?;
    h.gitlab.set_trace_update_interval(Some("1"));
    h.spawn_ferry();
    Some(h)
}

/// The journal has no entry left (removed just after the final update).
async fn assert_journal_drained(h: &Harness) {
    let drained =
        ferry_tests::e2e::poll_until(Duration::from_secs(10), || journal_entries(h).is_empty())
            .await;
    assert!(drained, "{:?}", journal_entries(h));
}

async fn kill_ferry(h: &mut Harness) {
    h.signal("KILL");
    h.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_kill_9_and_ends_with_every_line_once() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("resume").script([numbered(200)]));
    h.wait_trace(id, "\nline 30\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    assert_eq!(journal_entries(&h).len(), 1, "{}", h.describe(id));
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 200);
    assert_checksum(&h, id);
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_journal_drained(&h).await;
    h.assert_takes_next_job().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_after_script_survives_kill_9() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(
        h.job("resume-after")
            .script(["echo script-done"])
            .after_script([numbered(60)]),
    );
    h.wait_trace(id, "\nline 10\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 60);
    assert_eq!(trace.matches("\nscript-done\n").count(), 1, "{trace}");
    assert_checksum(&h, id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_leaves_the_job_to_the_next_ferry() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("handover").script([numbered(50)]));
    h.wait_trace(id, "\nline 5\n", Duration::from_secs(120))
        .await;
    h.signal("USR2");
    let status = h.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}: {}", h.ferry_log());
    assert!(h.ferry_log().contains("SIGUSR2: handing over"));
    // The job is still running in GitLab, its container too.
    assert_eq!(h.gitlab.job_status(id), Some(JobStatus::Running));
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 50);
    assert_checksum(&h, id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_job_whose_container_was_removed_fails_with_the_reason() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("resume-gone").script([numbered(300)]));
    h.wait_trace(id, "\nline 3\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    for o in h.docker_objects(Some(id)) {
        if let Some(name) = o.strip_prefix("container ") {
            ferry_tests::e2e::cmd("docker", &["rm", "-f", name]);
        }
    }
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert!(
        trace.contains("ferry was restarted while this step ran"),
        "{trace}"
    );
    assert_journal_drained(&h).await;
    h.assert_takes_next_job().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_job_canceled_meanwhile_is_cleaned_up() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("resume-canceled").script([numbered(300)]));
    h.wait_trace(id, "\nline 3\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    h.gitlab.force_cancel(id);
    assert!(!h.docker_objects(Some(id)).is_empty());
    h.spawn_ferry();
    let gone = ferry_tests::e2e::poll_until(Duration::from_secs(60), || {
        h.docker_objects(Some(id)).is_empty() && journal_entries(&h).is_empty()
    })
    .await;
    assert!(gone, "{:?}\n{}", h.docker_objects(Some(id)), h.ferry_log());
    assert_eq!(h.gitlab.job_status(id), Some(JobStatus::Canceled));
    h.assert_takes_next_job().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_entry_is_skipped_with_a_warning() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    let journal = h.work_dir.join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("x-77.json"), b"{\"version\": 1, \"runner\"").unwrap();
    h.spawn_ferry();
    h.assert_takes_next_job().await;
    let log = h.ferry_log();
    assert!(
        log.contains("journal entry") && log.contains("x-77.json") && log.contains("skipped"),
        "{log}"
    );
    assert!(journal.join("x-77.json.corrupt").exists());
    h.stop().await;
}

/// A journaled job of a runner whose GitLab URL changed meanwhile can be neither resumed nor
/// reported: its containers and journal entry are removed, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_job_of_no_configured_runner_is_removed() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("resume-orphan").script([numbered(300)]));
    h.wait_trace(id, "\nline 3\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    let entries = journal_entries(&h);
    assert_eq!(entries.len(), 1);
    let path = h.work_dir.join("journal").join(&entries[0]);
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    entry["url"] = serde_json::Value::String("https://gitlab.elsewhere.invalid/".into());
    std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
    assert!(!h.docker_objects(Some(id)).is_empty());
    h.spawn_ferry();
    let gone = ferry_tests::e2e::poll_until(Duration::from_secs(60), || {
        h.docker_objects(Some(id)).is_empty() && journal_entries(&h).is_empty()
    })
    .await;
    assert!(gone, "{:?}\n{}", h.docker_objects(Some(id)), h.ferry_log());
    assert!(
        h.ferry_log()
            .contains("belongs to no [[runners]] entry of this configuration"),
        "{}",
        h.ferry_log()
    );
    h.assert_takes_next_job().await;
    h.stop().await;
}

/// The stage of the job's journal entry (`after_steps`, `step`, ...).
fn journal_stage(h: &Harness) -> Option<String> {
    let entries = journal_entries(h);
    let path = h.work_dir.join("journal").join(entries.first()?);
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    entry["stage"]["stage"].as_str().map(str::to_string)
}

/// ferry is killed while GitLab holds the job's artifacts upload; GitLab stores that upload
/// after all (as Rails finishes a request Workhorse passed on). The next ferry uploads the
/// same archive again, which GitLab takes without storing it twice, and the job succeeds with
/// every line once: the lines of the interrupted upload never reached GitLab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_while_it_uploads_artifacts_is_resumed() {
    let Some(mut h) = start().await else {
        return;
    };
    h.gitlab.hold_artifact_uploads(true);
    let mut spec = h.job("resume-artifacts").script([
        numbered(20),
        "mkdir -p out && echo artifact-content > out/a.txt".to_string(),
    ]);
    spec.artifacts
        .push(serde_json::json!({"name": "out", "untracked": false,
        "paths": ["out/"], "when": "on_success", "expire_in": "1 day",
        "artifact_type": "archive", "artifact_format": "zip"}));
    let id = h.push(spec);
    let held = ferry_tests::e2e::poll_until(Duration::from_secs(120), || {
        h.gitlab.held_artifact_uploads() == 1
    })
    .await;
    assert!(held, "{}", h.describe(id));
    // The log up to the upload reaches GitLab; the upload's own lines wait for its end.
    h.wait_trace(id, "\nline 20\n", Duration::from_secs(30))
        .await;
    let sent = h.gitlab.trace_string(id);
    assert!(!sent.contains("Uploading artifacts"), "{sent}");
    kill_ferry(&mut h).await;
    assert_eq!(
        journal_stage(&h).as_deref(),
        Some("after_steps"),
        "{}",
        h.describe(id)
    );
    // The upload the killed ferry sent reaches GitLab after all.
    h.gitlab.hold_artifact_uploads(false);
    let stored = ferry_tests::e2e::poll_until(Duration::from_secs(10), || {
        h.gitlab.artifacts(id).len() == 1
    })
    .await;
    assert!(stored, "{}", h.describe(id));
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 20);
    assert_checksum(&h, id);
    assert_eq!(
        trace
            .matches("Uploading artifacts for successful job")
            .count(),
        1,
        "{trace}"
    );
    assert_eq!(
        trace.matches("to coordinator... 201 Created").count(),
        1,
        "{trace}"
    );
    let artifacts = h.gitlab.artifacts(id);
    assert_eq!(artifacts.len(), 1, "{}", h.describe(id));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(artifacts[0].data.clone())).unwrap();
    let mut content = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("out/a.txt").unwrap(), &mut content).unwrap();
    assert_eq!(content, "artifact-content\n");
    assert_journal_drained(&h).await;
    h.assert_takes_next_job().await;
    h.stop().await;
}

/// A job whose project dir is gone when ferry comes back while it uploaded its artifacts
/// fails with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_in_its_upload_whose_project_dir_is_gone_fails_with_the_reason() {
    let Some(mut h) = start().await else {
        return;
    };
    h.gitlab.hold_artifact_uploads(true);
    let mut spec = h
        .job("resume-artifacts-gone")
        .script(["mkdir -p out && echo x > out/a.txt".to_string()]);
    spec.artifacts
        .push(serde_json::json!({"name": "out", "untracked": false,
        "paths": ["out/"], "when": "on_success", "artifact_type": "archive",
        "artifact_format": "zip"}));
    let id = h.push(spec);
    let held = ferry_tests::e2e::poll_until(Duration::from_secs(120), || {
        h.gitlab.held_artifact_uploads() == 1
    })
    .await;
    assert!(held, "{}", h.describe(id));
    kill_ferry(&mut h).await;
    let dir = h.project_dir(0);
    assert!(dir.is_dir(), "{}", dir.display());
    // The project dir's files belong to the job's user: removed from a container.
    let parent = dir.parent().unwrap().display().to_string();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    ferry_tests::e2e::cmd(
        "docker",
        &[
            "run",
            "--rm",
            "-v",
            &format!("{parent}:/b"),
            ferry_tests::e2e::BUSYBOX,
            "rm",
            "-rf",
            &format!("/b/{name}"),
        ],
    );
    assert!(!dir.exists(), "{}", dir.display());
    h.gitlab.hold_artifact_uploads(false);
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert!(
        trace.contains("while it saved its cache or artifacts, and its project dir"),
        "{trace}"
    );
    assert_journal_drained(&h).await;
    h.stop().await;
}

/// ferry is killed while it saves a (local) cache: the next ferry saves it again and the job
/// succeeds, with one archive in the cache and every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_while_it_saves_its_cache_is_resumed() {
    let Some(mut h) = start().await else {
        return;
    };
    let mut spec = h
        .job("resume-cache")
        .variable("GIT_STRATEGY", "empty", false)
        .script([
            // Random bytes, so that compressing them takes a while.
            "mkdir -p vendor && head -c 268435456 /dev/urandom > vendor/big".to_string(),
            // The cache's lines follow these at once.
            numbered(10),
        ]);
    spec.cache
        .push(serde_json::json!({"key": "big", "untracked": false,
        "policy": "pull-push", "paths": ["vendor/"], "when": "on_success",
        "fallback_keys": []}));
    let id = h.push(spec);
    let cache_dir = h.work_dir.join("cache");
    // The archive being written appears under a temporary name, renamed when complete; the
    // log up to the cache reaches GitLab meanwhile (every second), the cache's own lines wait
    // for its end.
    let saving = ferry_tests::e2e::poll_until(Duration::from_secs(180), || {
        files_named(&cache_dir, ".tmp-archive-").len() == 1
            && h.gitlab.trace_string(id).contains("\nline 10\n")
    })
    .await;
    assert!(saving, "{}", h.describe(id));
    kill_ferry(&mut h).await;
    let sent = h.gitlab.trace_string(id);
    assert!(!sent.contains("Saving cache"), "{sent}");
    assert_eq!(
        journal_stage(&h).as_deref(),
        Some("after_steps"),
        "{}",
        h.describe(id)
    );
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(180)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 10);
    assert_checksum(&h, id);
    assert_eq!(trace.matches("Saving cache").count(), 1, "{trace}");
    assert_eq!(trace.matches("Creating cache big").count(), 1, "{trace}");
    let archives: Vec<_> = files_named(&cache_dir, ".tar.zst");
    assert_eq!(archives.len(), 1, "{archives:?}");
    assert_journal_drained(&h).await;
    h.stop().await;
}

/// Files under `dir` (recursively) whose name contains `part`.
fn files_named(dir: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, part));
        } else if e.file_name().to_string_lossy().contains(part) {
            out.push(p);
        }
    }
    out
}

/// `ferry run --no-journal` (docs/crash-safety.md): its jobs run as before the journal, with
/// no journal entry and no kept step output, and end as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_journal_a_job_is_neither_journaled_nor_keeps_its_output() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    h.gitlab.set_trace_update_interval(Some("1"));
    h.ferry_args.push("--no-journal".into());
    h.spawn_ferry();
    let id = h.push(h.job("unjournaled").script([numbered(30)]));
    h.wait_trace(id, "\nline 3\n", Duration::from_secs(120))
        .await;
    assert!(journal_entries(&h).is_empty(), "{:?}", journal_entries(&h));
    let steps = h.project_dir(0).with_file_name("steps");
    assert!(!steps.exists(), "{}", steps.display());
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 30);
    assert_checksum(&h, id);
    h.stop().await;
}

/// A resumed job holds its `concurrent` slot (and its CI_CONCURRENT_ID) until it ends: with
/// `concurrent = 1`, the next job is not taken while the resumed one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_holds_its_concurrent_slot_until_it_ends() {
    let Some(mut h) = start().await else {
        return;
    };
    let a = h.push(h.job("resume-slot").script([numbered(100)]));
    h.wait_trace(a, "\nline 5\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    let b = h.push(h.job("after-resumed").script(["echo b-ran"]));
    h.spawn_ferry();
    // Until a's final update, b stays queued.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let a_status = h.gitlab.job_status(a);
        let b_taken = h.gitlab.job_status(b).is_some();
        if a_status != Some(JobStatus::Running) {
            break;
        }
        assert!(
            !b_taken,
            "job {b} was taken while the resumed job {a} ran (concurrent = 1)\n{}",
            h.ferry_log()
        );
        assert!(std::time::Instant::now() < deadline, "{}", h.describe(a));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = h.wait_final(a, Duration::from_secs(60)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 100);
    let job = h.wait_final(b, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nb-ran"), "{trace}");
    h.stop().await;
}

/// A GitLab that cannot be reached when ferry starts is asked again while ferry runs: the
/// resumed job ends with its whole log once GitLab is back, without another restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_waits_for_an_unreachable_gitlab_and_then_ends() {
    let Some(mut h) = start().await else {
        return;
    };
    let id = h.push(h.job("resume-outage").script([numbered(100)]));
    h.wait_trace(id, "\nline 5\n", Duration::from_secs(120))
        .await;
    kill_ferry(&mut h).await;
    h.gitlab.outage(Duration::from_secs(15));
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 100);
    assert_checksum(&h, id);
    assert!(h.ferry_log().contains("asking again"), "{}", h.ferry_log());
    assert_journal_drained(&h).await;
    h.stop().await;
}

/// A job GitLab hands out while the answer to ferry's request is still on its way when a
/// handover begins: ferry waits for the answer, starts the job and hands it over once its
/// first step runs; the next ferry finishes it. (Before, the answer was dropped and the job
/// stayed `running` in GitLab until its timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_waits_for_a_job_request_in_flight_and_leaves_its_job_to_the_next_ferry() {
    let Some(mut h) = start().await else {
        return;
    };
    h.gitlab.set_job_answer_delay(Some(Duration::from_secs(3)));
    let id = h.push(h.job("handover-in-flight").script([numbered(50)]));
    let assigned = ferry_tests::e2e::poll_until(Duration::from_secs(60), || {
        h.gitlab.job_status(id).is_some()
    })
    .await;
    assert!(assigned, "{}", h.ferry_log());
    let signalled = tokio::time::Instant::now();
    h.signal("USR2");
    let status = h.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}: {}", h.ferry_log());
    h.gitlab.set_job_answer_delay(None);
    assert_eq!(h.gitlab.job_status(id), Some(JobStatus::Running));
    assert_eq!(journal_entries(&h).len(), 1, "{}", h.ferry_log());
    // Answered after the signal: only the request in flight (no new one was sent).
    let answered_after: Vec<u16> = h
        .gitlab
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/jobs/request") && r.at > signalled)
        .map(|r| r.status)
        .collect();
    assert_eq!(answered_after, vec![201], "{}", h.ferry_log());
    h.spawn_ferry();
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert_lines_once(&trace, 50);
    assert_checksum(&h, id);
    h.stop().await;
}
