//! The whole pipeline against the stateful fake GitLab, with paused time.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::{Instant, sleep};

use super::buffer::{TraceBuffer, limit_notice, lock};
use super::fake::{FakeGitLab, Fault};
use super::mask::Masker;
use super::*;
use crate::api::{JobRef, JobState, JobUpdate};
use crate::failure::FailureReason;

const JOB_TOKEN: &str = "glcbt-64_Jt0kenVALUE123abc";

fn job() -> JobRef {
    JobRef {
        id: 42,
        token: JOB_TOKEN.to_string(),
        debug_trace: false,
    }
}

fn setup(cfg: TraceConfig) -> (Arc<FakeGitLab>, TraceWriter, TraceHandle) {
    let job = job();
    let fake = Arc::new(FakeGitLab::new(&job));
    let (w, h) = start(job, fake.clone(), cfg);
    (fake, w, h)
}

fn final_update(state: JobState) -> JobUpdate {
    JobUpdate {
        state,
        failure_reason: (state == JobState::Failed)
            .then(|| FailureReason::ScriptFailure.to_string()),
        exit_code: (state == JobState::Failed).then_some(1),
        checksum: None,
        bytesize: None,
    }
}

fn crc(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

/// Checks what every test expects of GitLab's view: no protocol violation, the final update
/// describes exactly the stored trace and came after its last byte.
fn assert_consistent(fake: &FakeGitLab) {
    fake.with(|s| {
        assert!(
            s.violations.is_empty(),
            "protocol violations: {:?}",
            s.violations
        );
        for u in &s.updates {
            if matches!(u.update.state, JobState::Success | JobState::Failed)
                && u.outcome != "fault"
            {
                assert_eq!(
                    u.update.bytesize,
                    Some(u.trace_len as u64),
                    "final update before the last byte"
                );
            }
        }
        if let Some(last) = s
            .updates
            .last()
            .filter(|u| u.outcome == "200" && u.update.state != JobState::Running)
        {
            assert_eq!(
                last.update.checksum.as_deref(),
                Some(crc(&s.trace).as_str())
            );
            assert_eq!(last.update.bytesize, Some(s.trace.len() as u64));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn output_reaches_gitlab_in_order_and_the_final_update_describes_it() {
    let (fake, w, h) = setup(TraceConfig::default());
    w.write_line("$ make");
    w.write_str("building...");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.trace(), b"$ make\nbuilding...");
    w.write_line(" done");
    let outcome = h.finish(final_update(JobState::Success)).await;
    assert_eq!(outcome, FinalOutcome::Accepted);
    assert_eq!(fake.trace(), b"$ make\nbuilding... done\n");
    assert_consistent(&fake);
    fake.with(|s| {
        assert_eq!(s.status, "success");
        let last = s.updates.last().unwrap();
        assert_eq!(
            last.update.checksum.as_deref(),
            Some(crc(b"$ make\nbuilding... done\n").as_str())
        );
        assert_eq!(last.update.bytesize, Some(24));
    });
}

#[tokio::test(start_paused = true)]
async fn secrets_never_reach_gitlab_even_split_across_writes() {
    let cfg = TraceConfig {
        masked: vec![
            "hunter2hunter2".to_string(),
            "glrt-t1_runnerTOKENxyz".to_string(),
        ],
        ..TraceConfig::default()
    };
    let (fake, w, h) = setup(cfg);
    w.write_str("password=hunter2hu");
    sleep(Duration::from_secs(4)).await;
    // The possible start of a secret is held back, everything before it is sent.
    assert_eq!(fake.trace(), b"password=");
    w.write_str("nter2 next\n");
    w.write_line(&format!("job token {JOB_TOKEN}"));
    w.write_str("runner token glrt-t1_run");
    w.write_str("nerTOKENxyz and a PAT glpat-");
    w.write_str("AbCdEf123 and ?private_token=s3cr3t&x=1\n");
    let outcome = h.finish(final_update(JobState::Success)).await;
    assert_eq!(outcome, FinalOutcome::Accepted);
    let text = String::from_utf8(fake.trace()).unwrap();
    assert_eq!(
        text,
        "password=[MASKED] next\njob token [MASKED]\nrunner token [MASKED] and a PAT glpat-[MASKED] \
         and ?private_token=[MASKED]&x=1\n"
    );
    for secret in ["hunter2", "Jt0ken", "runnerTOKEN", "AbCdEf", "s3cr3t"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert_consistent(&fake);
}

#[tokio::test(start_paused = true)]
async fn the_writer_is_an_async_write_log_sink() {
    use tokio::io::AsyncWriteExt;
    let (fake, w, h) = setup(TraceConfig::default());
    let mut sink = w.clone();
    {
        let log: &mut ferry_executor::engine::LogSink<'_> = &mut sink;
        log.write_all(b"from the executor\n").await.unwrap();
        log.flush().await.unwrap();
        log.shutdown().await.unwrap();
    }
    w.write_line("from the driver");
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), b"from the executor\nfrom the driver\n");
}

#[tokio::test(start_paused = true)]
async fn finish_releases_the_held_back_tail() {
    let cfg = TraceConfig {
        masked: vec!["topsecretvalue".to_string()],
        ..TraceConfig::default()
    };
    let (fake, w, h) = setup(cfg);
    w.write_str("last words: topsec");
    assert_eq!(
        h.finish(final_update(JobState::Failed)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), b"last words: topsec");
    fake.with(|s| assert_eq!(s.status, "failed"));
    assert_consistent(&fake);
}

/// A deterministic pseudo-random byte source (no secrets, no token prefixes in it).
fn log_lines(total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 100);
    let mut n: u64 = 1;
    while out.len() < total {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let width = (n >> 33) % 200;
        out.extend_from_slice(
            format!("line {} {}\n", out.len(), "x".repeat(width as usize)).as_bytes(),
        );
    }
    out.truncate(total);
    out
}

#[tokio::test(start_paused = true)]
async fn a_large_log_spills_to_disk_while_memory_stays_bounded() {
    let mem_limit = 64 * 1024;
    let cfg = TraceConfig {
        output_limit: 64 * 1024 * 1024,
        mem_limit,
        masked: vec!["neverprinted1".to_string()],
        ..TraceConfig::default()
    };
    let (fake, w, h) = setup(cfg);
    let data = log_lines(12 * 1024 * 1024 + 12345);
    let mut pos = 0;
    let mut size = 1usize;
    while pos < data.len() {
        let end = (pos + size).min(data.len());
        w.write_bytes(&data[pos..end]);
        pos = end;
        size = (size * 7 + 13) % (300 * 1024) + 1;
        {
            let b = lock(&w.shared);
            assert!(
                b.store().mem_len() <= mem_limit,
                "{} bytes in memory",
                b.store().mem_len()
            );
            assert!(b.masker().pending_len() <= b.masker().max_pending());
        }
        if pos % 7 == 0 {
            sleep(Duration::from_secs(3)).await;
        }
    }
    let spilled = lock(&w.shared).store().spilled();
    assert!(spilled > 10 * 1024 * 1024, "only {spilled} bytes spilled");
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    let trace = fake.trace();
    assert_eq!(trace.len(), data.len());
    assert!(trace == data, "uploaded log differs from the output");
    assert_consistent(&fake);
    fake.with(|s| {
        assert!(s.patches.iter().all(|p| p.len <= MAX_PATCH_BYTES));
        assert!(s.patches.iter().any(|p| p.len == MAX_PATCH_BYTES));
    });
}

#[tokio::test(start_paused = true)]
async fn patch_bodies_are_at_most_one_mib_and_contiguous() {
    let (fake, w, h) = setup(TraceConfig::default());
    let data = log_lines(3 * 1024 * 1024 + 512 * 1024);
    w.write_bytes(&data);
    sleep(Duration::from_secs(4)).await;
    fake.with(|s| {
        let lens: Vec<usize> = s.patches.iter().map(|p| p.len).collect();
        assert_eq!(lens, [1 << 20, 1 << 20, 1 << 20, 512 * 1024]);
        let offsets: Vec<u64> = s.patches.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [0, 1 << 20, 2 << 20, 3 << 20]);
    });
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), data);
    assert_consistent(&fake);
}

#[tokio::test(start_paused = true)]
async fn output_limit_notice_is_uploaded_once_and_the_job_goes_on() {
    let cfg = TraceConfig {
        output_limit: 1000,
        ..TraceConfig::default()
    };
    let (fake, w, h) = setup(cfg);
    let data = log_lines(5000);
    // The engine's signal to stop reading a step's output file (every writer of the log
    // shares it).
    let full = w.with_stream(Stream::WORK).log_full();
    w.write_bytes(&data[..700]);
    assert!(!full.is_set());
    sleep(Duration::from_secs(4)).await;
    w.write_bytes(&data[700..]);
    assert!(full.is_set());
    sleep(Duration::from_secs(4)).await;
    w.write_line("still running, not collected");
    let mut expected = data[..1000].to_vec();
    expected.extend_from_slice(limit_notice(1000).as_bytes());
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), expected);
    let text = String::from_utf8(fake.trace()).unwrap();
    assert_eq!(
        text.matches("Job's log exceeded limit of 1000 bytes.")
            .count(),
        1
    );
    assert!(text.contains("Job execution will continue but no more output will be collected."));
    assert_consistent(&fake);
}

#[tokio::test(start_paused = true)]
async fn range_mismatch_resends_from_gitlabs_length() {
    let (fake, w, h) = setup(TraceConfig::default());
    w.write_str("0123456789");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.trace(), b"0123456789");
    // GitLab lost the tail of what it had accepted (e.g. a chunk not persisted).
    fake.with(|s| s.trace.truncate(4));
    w.write_str("abcdef");
    sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.trace(), b"0123456789abcdef");
    fake.with(|s| {
        let outcomes: Vec<(u64, &str)> = s.patches.iter().map(|p| (p.offset, p.outcome)).collect();
        assert_eq!(outcomes, [(0, "202"), (10, "416"), (4, "202")]);
    });
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_consistent(&fake);
}

#[tokio::test(start_paused = true)]
async fn when_gitlab_holds_more_than_we_produced_we_continue_after_it() {
    let (fake, w, h) = setup(TraceConfig::default());
    fake.with(|s| s.trace.extend_from_slice(b"older runner output\n")); // 20 bytes
    w.write_str("hello\n");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.trace(), b"older runner output\n");
    w.write_str("0123456789abcdefghijklmnop\n"); // our bytes 6..33; 20.. is "efgh..."
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), b"older runner output\nefghijklmnop\n");
    fake.with(|s| {
        let outcomes: Vec<(u64, &str)> = s.patches.iter().map(|p| (p.offset, p.outcome)).collect();
        assert_eq!(outcomes, [(0, "416"), (20, "202")]);
    });
}

#[tokio::test(start_paused = true)]
async fn an_outage_loses_and_duplicates_nothing() {
    let (fake, w, h) = setup(TraceConfig::default());
    fake.with(|s| {
        s.patch_faults.extend([
            Fault::Status(502),
            Fault::Transport,
            Fault::Status(503),
            Fault::Status(500),
            Fault::Transport,
            Fault::Status(502),
        ]);
    });
    let mut expected = Vec::new();
    for i in 0..120 {
        let line = format!("second {i}\n");
        w.write_str(&line);
        expected.extend_from_slice(line.as_bytes());
        sleep(Duration::from_secs(1)).await;
    }
    // Recovered during the job: after one more tick everything so far is there, exactly once.
    sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.trace(), expected);
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), expected);
    assert_consistent(&fake);
    fake.with(|s| {
        let faults: Vec<Instant> = s
            .patches
            .iter()
            .filter(|p| p.outcome == "fault")
            .map(|p| p.at)
            .collect();
        assert_eq!(faults.len(), 6);
        // Retries back off: never sooner than the 3 s interval, then 4 s, 8 s, 16 s, each
        // shortened by a random part of up to a half (jitter).
        let gaps: Vec<u64> = faults.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_backoff(&gaps);
        // Only 202s and faults: the retries never produced a 416 (nothing duplicated).
        assert!(
            s.patches
                .iter()
                .all(|p| p.outcome == "202" || p.outcome == "fault")
        );
    });
}

#[tokio::test(start_paused = true)]
async fn canceling_then_canceled_raise_the_signals() {
    let (fake, w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    w.write_line("working");
    sleep(Duration::from_secs(4)).await;
    assert_eq!(*rx.borrow(), RemoteSignal::None);

    fake.with(|s| s.status = "canceling".to_string());
    w.write_line("still working");
    let t0 = Instant::now();
    rx.wait_for(|s| *s == RemoteSignal::Canceling)
        .await
        .unwrap();
    assert!(Instant::now() - t0 <= Duration::from_secs(3));

    // The job keeps logging while it cancels gracefully (after_script ...).
    w.write_line("running after_script");
    sleep(Duration::from_secs(4)).await;
    assert!(fake.trace().ends_with(b"running after_script\n"));

    fake.with(|s| s.status = "canceled".to_string());
    w.write_line("more");
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == RemoteSignal::Abort),
    )
    .await
    .expect("abort signal")
    .unwrap();
    // The job is over server-side: the final update is refused.
    assert_eq!(
        h.finish(final_update(JobState::Failed)).await,
        FinalOutcome::Gone
    );
}

#[tokio::test(start_paused = true)]
async fn canceling_then_final_update_turns_the_job_canceled() {
    let (fake, w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    fake.with(|s| s.status = "canceling".to_string());
    w.write_line("x");
    rx.wait_for(|s| *s == RemoteSignal::Canceling)
        .await
        .unwrap();
    assert_eq!(
        h.finish(final_update(JobState::Failed)).await,
        FinalOutcome::Accepted
    );
    fake.with(|s| assert_eq!(s.status, "canceled"));
    assert_consistent(&fake);
}

#[tokio::test(start_paused = true)]
async fn forbidden_aborts_the_job_and_stops_the_trace() {
    let (fake, w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    w.write_line("one");
    sleep(Duration::from_secs(4)).await;
    fake.with(|s| s.forbidden = true);
    w.write_line("two");
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == RemoteSignal::Abort),
    )
    .await
    .expect("abort signal")
    .unwrap();
    let patches = fake.with(|s| s.patches.len());
    w.write_line("three");
    sleep(Duration::from_secs(30)).await;
    assert_eq!(
        fake.with(|s| s.patches.len()),
        patches,
        "PATCHes after a 403"
    );
    assert_eq!(
        h.finish(final_update(JobState::Failed)).await,
        FinalOutcome::Gone
    );
    assert_eq!(fake.trace(), b"one\n");
}

#[tokio::test(start_paused = true)]
async fn not_found_stops_the_trace_but_the_final_update_is_sent() {
    let (fake, w, h) = setup(TraceConfig::default());
    let rx = h.signals();
    fake.with(|s| s.trace_not_found = true);
    for i in 0..5 {
        w.write_line(&format!("line {i}"));
        sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(fake.with(|s| s.patches.len()), 1);
    assert_eq!(*rx.borrow(), RemoteSignal::None);
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    fake.with(|s| {
        assert_eq!(s.patches.len(), 1);
        assert_eq!(s.status, "success");
    });
}

#[tokio::test(start_paused = true)]
async fn keep_alive_after_thirty_seconds_of_silence() {
    let (fake, _w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    let t0 = Instant::now();
    sleep(Duration::from_secs(29)).await;
    assert!(fake.with(|s| s.updates.is_empty()));
    sleep(Duration::from_secs(2)).await;
    fake.with(|s| {
        assert_eq!(s.updates.len(), 1);
        let u = &s.updates[0];
        assert_eq!(u.at - t0, Duration::from_secs(30));
        assert_eq!(u.update.state, JobState::Running);
        assert_eq!(u.update.checksum.as_deref(), Some("crc32:00000000"));
        assert_eq!(u.update.bytesize, Some(0));
        assert!(s.patches.is_empty());
    });
    // The keep-alive is how a silent job learns that it was cancelled.
    fake.with(|s| s.status = "canceling".to_string());
    tokio::time::timeout(
        Duration::from_secs(31),
        rx.wait_for(|s| *s == RemoteSignal::Canceling),
    )
    .await
    .expect("canceling seen through the keep-alive")
    .unwrap();
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn a_watched_job_page_makes_silent_jobs_notice_a_cancel_within_seconds() {
    let (fake, w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    // GitLab asks for 3 s updates while somebody watches the job page.
    fake.with(|s| s.interval = Some(Duration::from_secs(3)));
    w.write_line("started");
    sleep(Duration::from_secs(4)).await;
    fake.with(|s| assert_eq!(s.patches.len(), 1));
    // The job goes silent; the user presses Cancel.
    sleep(Duration::from_secs(10)).await;
    fake.with(|s| s.status = "canceling".to_string());
    tokio::time::timeout(
        Duration::from_secs(4),
        rx.wait_for(|s| *s == RemoteSignal::Canceling),
    )
    .await
    .expect("canceling seen within one 3 s interval, not after 30 s")
    .unwrap();
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn a_refused_keep_alive_aborts_the_job() {
    let (fake, _w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    fake.with(|s| s.forbidden = true);
    tokio::time::timeout(
        Duration::from_secs(31),
        rx.wait_for(|s| *s == RemoteSignal::Abort),
    )
    .await
    .expect("abort after the keep-alive got 403")
    .unwrap();
    fake.with(|s| assert_eq!(s.updates.len(), 1));
    assert_eq!(
        h.finish(final_update(JobState::Failed)).await,
        FinalOutcome::Gone
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_failed_server_side_aborts_through_the_patch_answer() {
    let (fake, w, h) = setup(TraceConfig::default());
    let mut rx = h.signals();
    fake.with(|s| s.status = "failed".to_string());
    w.write_line("x");
    tokio::time::timeout(
        Duration::from_secs(4),
        rx.wait_for(|s| *s == RemoteSignal::Abort),
    )
    .await
    .expect("abort after Job-Status: failed")
    .unwrap();
    // The signal never goes back, even when a later answer (the keep-alive) says `running`.
    fake.with(|s| s.status = "running".to_string());
    w.write_line("y");
    sleep(Duration::from_secs(40)).await;
    fake.with(|s| assert_eq!(s.updates.last().map(|u| u.outcome), Some("200")));
    assert_eq!(*rx.borrow(), RemoteSignal::Abort);
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn no_keep_alive_while_the_log_flows() {
    let (fake, w, h) = setup(TraceConfig::default());
    // No interval header (nobody watching, older GitLab): ferry's own 3 s tick, 30 s keep-alive.
    fake.with(|s| s.interval = None);
    for i in 0..40 {
        w.write_line(&format!("tick {i}"));
        sleep(Duration::from_secs(2)).await;
    }
    fake.with(|s| {
        assert!(s.updates.is_empty());
        assert!(s.patches.len() >= 20);
    });
    // Silence after output: the keep-alive comes 30 s after the last accepted PATCH, with the
    // checksum of the log so far.
    sleep(Duration::from_secs(34)).await;
    fake.with(|s| {
        assert_eq!(s.updates.len(), 1);
        assert_eq!(
            s.updates[0].update.checksum.as_deref(),
            Some(crc(&s.trace).as_str())
        );
        assert_eq!(s.updates[0].update.bytesize, Some(s.trace.len() as u64));
    });
    drop(h);
}

#[tokio::test(start_paused = true)]
async fn gitlabs_update_interval_is_obeyed_capped_and_garbage_ignored() {
    let (fake, w, h) = setup(TraceConfig::default());
    fake.with(|s| s.interval = Some(Duration::from_secs(60)));
    let t0 = Instant::now();
    w.write_line("a");
    sleep(Duration::from_secs(4)).await; // first PATCH at 3 s (default), learns 60 s
    w.write_line("b");
    sleep(Duration::from_secs(70)).await;
    fake.with(|s| {
        let at: Vec<u64> = s.patches.iter().map(|p| (p.at - t0).as_secs()).collect();
        assert_eq!(at, [3, 63]);
        s.interval = Some(Duration::ZERO); // ignored
    });
    w.write_line("c");
    sleep(Duration::from_secs(60)).await; // PATCH at 123 s, interval stays 60 s
    fake.with(|s| s.interval = Some(Duration::from_secs(3600)));
    w.write_line("d");
    sleep(Duration::from_secs(60)).await; // PATCH at 183 s, learns 1 h -> capped at 15 min
    w.write_line("e");
    sleep(Duration::from_secs(15 * 60 + 1)).await;
    fake.with(|s| {
        let at: Vec<u64> = s.patches.iter().map(|p| (p.at - t0).as_secs()).collect();
        assert_eq!(at, [3, 63, 123, 183, 183 + 900]);
    });
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), b"a\nb\nc\nd\ne\n");
}

#[tokio::test(start_paused = true)]
async fn a_failing_gitlab_gets_one_call_per_interval_and_no_keep_alive_burst() {
    let (fake, w, h) = setup(TraceConfig::default());
    let t0 = Instant::now();
    // A job that printed once and is silent since: its PATCHes fail for a while, long past
    // the 30 s keep-alive point.
    w.write_line("one line");
    fake.with(|s| s.patch_faults.extend([Fault::Status(502); 7]));
    sleep(Duration::from_secs(150)).await;
    fake.with(|s| {
        let patches = s.patches.iter().filter(|p| p.outcome == "fault").count();
        assert_eq!(patches, 7);
        let recovered = s.patches.iter().find(|p| p.outcome == "202").unwrap().at;
        assert!(
            s.updates.iter().all(|u| u.at > recovered),
            "no keep-alive while the PATCHes failed: {:?}",
            s.updates.iter().map(|u| u.at - t0).collect::<Vec<_>>()
        );
    });
    // Then the keep-alives (nothing left to PATCH) fail too: they back off as well.
    fake.with(|s| s.update_faults.extend([Fault::Status(503); 4]));
    sleep(Duration::from_secs(120)).await;
    fake.with(|s| {
        let failed_puts: Vec<u64> = s
            .updates
            .iter()
            .filter(|u| u.outcome == "fault")
            .map(|u| (u.at - t0).as_secs())
            .collect();
        assert_eq!(failed_puts.len(), 4, "{failed_puts:?}");
        let gaps: Vec<u64> = failed_puts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_backoff(&gaps);
        // Never two calls to GitLab within one 3 s update interval.
        let mut calls: Vec<Instant> = s.patches.iter().map(|p| p.at).collect();
        calls.extend(s.updates.iter().map(|u| u.at));
        calls.sort();
        for pair in calls.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_secs(3),
                "two calls {:?} apart",
                pair[1] - pair[0]
            );
        }
    });
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
}

#[tokio::test(start_paused = true)]
async fn final_update_is_retried_through_an_outage_and_202s() {
    let (fake, w, h) = setup(TraceConfig::default());
    w.write_line("the end");
    fake.with(|s| {
        s.update_faults.extend([
            Fault::Status(502),
            Fault::Transport,
            Fault::Status(503),
            Fault::Transport,
            Fault::Status(500),
        ]);
        s.final_pending = 3;
        s.pending_interval = Some(Duration::from_secs(5));
    });
    let t0 = Instant::now();
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_consistent(&fake);
    fake.with(|s| {
        let seen: Vec<(u64, &str)> = s
            .updates
            .iter()
            .map(|u| ((u.at - t0).as_secs(), u.outcome))
            .collect();
        let outcomes: Vec<&str> = seen.iter().map(|(_, o)| *o).collect();
        assert_eq!(
            outcomes,
            [
                "fault", "fault", "fault", "fault", "fault", "202", "202", "202", "200"
            ]
        );
        // Failed attempts back off as the job's uploads do (jittered, never sooner than the
        // update interval); the 202s follow GitLab's 5 s.
        let gaps: Vec<u64> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert_backoff(&gaps[..5]);
        assert_eq!(gaps[5..], [5, 5, 5]);
        // The same final update every time, describing the complete log.
        for u in &s.updates {
            assert_eq!(u.update.state, JobState::Success);
            assert_eq!(u.update.bytesize, Some(8));
            assert_eq!(
                u.update.checksum.as_deref(),
                Some(crc(b"the end\n").as_str())
            );
        }
        assert_eq!(s.status, "success");
    });
}

#[tokio::test(start_paused = true)]
async fn final_state_waits_for_every_byte_through_a_trace_outage() {
    let (fake, w, h) = setup(TraceConfig::default());
    let data = log_lines(2 * 1024 * 1024 + 10);
    w.write_bytes(&data);
    fake.with(|s| {
        s.patch_faults
            .extend([Fault::Transport, Fault::Status(502), Fault::Transport]);
    });
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    assert_eq!(fake.trace(), data);
    assert_consistent(&fake);
    fake.with(|s| {
        assert_eq!(s.updates.len(), 1);
        let last_patch = s.patches.last().unwrap().at;
        assert!(s.updates[0].at >= last_patch);
        assert_eq!(s.updates[0].trace_len, data.len());
    });
}

#[tokio::test(start_paused = true)]
async fn final_update_gives_up_only_after_a_long_outage() {
    let (fake, w, h) = setup(TraceConfig::default());
    w.write_line("bye");
    fake.with(|s| {
        s.update_faults
            .extend(std::iter::repeat_n(Fault::Status(503), 10_000))
    });
    let t0 = Instant::now();
    let outcome = h.finish(final_update(JobState::Success)).await;
    let elapsed = Instant::now() - t0;
    assert!(
        matches!(&outcome, FinalOutcome::GaveUp { reason } if reason.contains("503")),
        "{outcome:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(10 * 60),
        "gave up after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(12 * 60),
        "kept trying for {elapsed:?}"
    );
    let attempts = fake.with(|s| s.updates.len());
    assert!(attempts > 10, "{attempts} attempts");
    assert_eq!(fake.trace(), b"bye\n");
}

#[tokio::test(start_paused = true)]
async fn final_update_gives_up_at_the_hard_timeout_on_endless_202s() {
    let cfg = TraceConfig {
        timing: TraceTiming {
            final_timeout: Duration::from_secs(120),
            ..TraceTiming::default()
        },
        ..TraceConfig::default()
    };
    let (fake, _w, h) = setup(cfg);
    fake.with(|s| s.final_pending = u32::MAX);
    let t0 = Instant::now();
    let outcome = h.finish(final_update(JobState::Success)).await;
    assert!(
        matches!(outcome, FinalOutcome::GaveUp { .. }),
        "{outcome:?}"
    );
    assert!(Instant::now() - t0 <= Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_uploader() {
    let (fake, w, h) = setup(TraceConfig::default());
    drop(h);
    w.write_line("nobody uploads this");
    sleep(Duration::from_secs(60)).await;
    fake.with(|s| {
        assert!(s.patches.is_empty());
        assert!(s.updates.is_empty());
    });
}

#[tokio::test(start_paused = true)]
async fn many_small_writes_with_secrets_upload_exactly_the_single_write_result() {
    let secrets = ["Sup3rS3cretValue", "anotherSECRET99"];
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "step {i}: {} / glpat-Tok{i}en / {}\n",
            secrets[i % 2],
            &secrets[0][..i % 16]
        ));
    }
    let cfg = TraceConfig {
        masked: secrets.iter().map(|s| s.to_string()).collect(),
        ..TraceConfig::default()
    };
    let (fake, w, h) = setup(cfg);
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut step = 1;
    while pos < bytes.len() {
        let end = (pos + step).min(bytes.len());
        w.write_bytes(&bytes[pos..end]);
        pos = end;
        step = step % 23 + 1;
        if pos % 5 == 0 {
            sleep(Duration::from_millis(700)).await;
        }
    }
    assert_eq!(
        h.finish(final_update(JobState::Success)).await,
        FinalOutcome::Accepted
    );
    let expected = super::mask::mask_all(&[secrets[0], secrets[1], JOB_TOKEN], bytes);
    assert_eq!(fake.trace(), expected);
    let uploaded = String::from_utf8(fake.trace()).unwrap();
    for s in secrets {
        assert!(!uploaded.contains(s));
    }
    assert!(!uploaded.contains("Tok1en"));
    assert_consistent(&fake);
}

// ---- masking across arbitrary split points --------------------------------------------------

fn stored(b: &TraceBuffer) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = b
            .plan_read(out.len() as u64, MAX_PATCH_BYTES)
            .read()
            .unwrap();
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

fn run_buffer(secrets: &[String], text: &[u8], cuts: &[usize], mem_limit: usize) -> Vec<u8> {
    let mut b = TraceBuffer::new(
        1,
        Masker::new::<String, &str>(secrets, &[]),
        u64::MAX,
        super::store::Store::new(mem_limit, None),
    );
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    cuts.sort_unstable();
    let mut last = 0;
    for c in cuts {
        b.write(&text[last..c]);
        last = c;
    }
    b.write(&text[last..]);
    b.close();
    stored(&b)
}

#[derive(Debug, Clone)]
enum Piece {
    Filler(String),
    Secret(usize),
    /// The first bytes of a secret, to exercise held-back partial matches.
    Partial(usize, usize),
    Token(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        "[ -~\n]{0,12}".prop_map(Piece::Filler),
        (0usize..4).prop_map(Piece::Secret),
        (0usize..4, 1usize..16).prop_map(|(i, n)| Piece::Partial(i, n)),
        "[A-Za-z0-9_]{12,20}".prop_map(Piece::Token),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn masking_does_not_depend_on_write_splits(
        secrets in proptest::collection::vec("[A-Za-z0-9]{8,20}", 1..4),
        pieces in proptest::collection::vec(piece(), 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        mem_limit in 1usize..64,
    ) {
        let mut text = Vec::new();
        let mut tokens = Vec::new();
        for p in &pieces {
            match p {
                Piece::Filler(s) => text.extend_from_slice(s.as_bytes()),
                Piece::Secret(i) => text.extend_from_slice(secrets[i % secrets.len()].as_bytes()),
                Piece::Partial(i, n) => {
                    let s = &secrets[i % secrets.len()];
                    text.extend_from_slice(&s.as_bytes()[..(*n).min(s.len())]);
                }
                Piece::Token(t) => {
                    // A separator first: a secret ending in `g` would otherwise overlap the
                    // prefix, and phrases are masked first (the secret is masked, the token
                    // behind it is not recognised as one).
                    text.push(b' ');
                    text.extend_from_slice(b"glpat-");
                    text.extend_from_slice(t.as_bytes());
                    text.push(b' ');
                    tokens.push(t.clone());
                }
            }
        }
        let whole = run_buffer(&secrets, &text, &[], 1 << 20);
        let split = run_buffer(&secrets, &text, &cuts, mem_limit);
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(&whole, &super::mask::mask_all(&secrets, &text));
        for s in &secrets {
            prop_assert!(
                !whole.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret {} leaked", s
            );
        }
        for t in &tokens {
            prop_assert!(!whole.windows(t.len()).any(|w| w == t.as_bytes()), "token {} leaked", t);
        }
    }
}

#[test]
fn handles_can_move_into_job_tasks() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<TraceWriter>();
    send_sync_static::<TraceHandle>();
    send_sync_static::<RemoteSignal>();
}

/// GitLab whose PATCH answer makes the uploader panic (standing for a bug in it): only the
/// job update works.
struct PanicOnPatch(Arc<FakeGitLab>);

impl JobApi for PanicOnPatch {
    async fn update_job(
        &self,
        job: &JobRef,
        update: &JobUpdate,
    ) -> Result<crate::api::UpdateReply, crate::api::ApiError> {
        self.0.update_job(job, update).await
    }

    async fn patch_trace(
        &self,
        _job: &JobRef,
        _offset: u64,
        _chunk: bytes::Bytes,
    ) -> Result<crate::api::TraceReply, crate::api::ApiError> {
        panic!("uploader bug");
    }

    async fn upload_artifacts(
        &self,
        job: &JobRef,
        meta: &crate::api::ArtifactMeta,
        path: &std::path::Path,
    ) -> Result<(), crate::api::ApiError> {
        self.0.upload_artifacts(job, meta, path).await
    }

    async fn download_artifacts(
        &self,
        job_id: u64,
        token: &str,
        dest: &std::path::Path,
    ) -> Result<(), crate::api::ApiError> {
        self.0.download_artifacts(job_id, token, dest).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_uploader_still_sends_the_final_state() {
    for finish_after in [Duration::from_secs(10), Duration::ZERO] {
        let job = job();
        let fake = Arc::new(FakeGitLab::new(&job));
        let (w, h) = start(
            job,
            Arc::new(PanicOnPatch(fake.clone())),
            TraceConfig::default(),
        );
        w.write_line("some output");
        // Either the uploader panicked at a tick before `finish`, or it panics inside it.
        sleep(finish_after).await;
        let outcome = h.finish(final_update(JobState::Failed)).await;
        assert_eq!(outcome, FinalOutcome::Accepted, "{finish_after:?}");
        fake.with(|s| {
            assert_eq!(s.status, "failed", "{finish_after:?}");
            let last = s.updates.last().unwrap();
            assert_eq!(last.update.state, JobState::Failed);
            assert_eq!(
                last.update.failure_reason.as_deref(),
                Some(FailureReason::ScriptFailure.as_str())
            );
        });
    }
}

/// Gaps between failed attempts: at least the 3 s update interval, and the doubling back-off
/// (1, 2, 4, 8, 16 s) shortened by at most a half.
fn assert_backoff(gaps: &[u64]) {
    for (i, gap) in gaps.iter().enumerate() {
        let b = 1u64 << i;
        let (lo, hi) = ((b / 2).max(3), b.max(3));
        assert!(
            (lo..=hi).contains(gap),
            "gap {i} = {gap}s, expected {lo}..={hi}s: {gaps:?}"
        );
    }
}

/// Cache and artifacts after the steps (docs/crash-safety.md): nothing past the held byte
/// reaches GitLab until the hold moves or the log is closed.
#[tokio::test(start_paused = true)]
async fn held_bytes_reach_gitlab_only_once_released_or_closed() {
    let (fake, w, h) = setup(TraceConfig::default());
    w.write_line("step output");
    let at = w.checkpoint().expect("checkpoint").at;
    w.hold_from(Some(at));
    w.write_line("Saving cache");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.trace(), b"step output\n");
    let at = w.checkpoint().expect("checkpoint").at;
    w.hold_from(Some(at));
    w.write_line("Uploading artifacts");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.trace(), b"step output\nSaving cache\n");
    let outcome = h.finish(final_update(JobState::Success)).await;
    assert_eq!(outcome, FinalOutcome::Accepted);
    assert_eq!(
        fake.trace(),
        b"step output\nSaving cache\nUploading artifacts\n"
    );
    assert_consistent(&fake);
}

/// A log continued after the bytes GitLab holds (a deploy resumed without a usable
/// checkpoint, docs/crash-safety.md) knows no checksum of the whole log: it offers no
/// checkpoint (a later ferry would take its CRC, over the new bytes only, for the whole
/// log's), and its final update claims no checksum.
#[tokio::test(start_paused = true)]
async fn appended_log_offers_no_checkpoint() {
    let job = job();
    let fake = Arc::new(FakeGitLab::new(&job));
    fake.with(|s| s.trace = b"earlier ferry\n".to_vec());
    let (w, h) = append(job, fake.clone(), TraceConfig::default(), 14);
    w.write_line("applied again");
    sleep(Duration::from_secs(10)).await;
    assert!(w.checkpoint().is_none(), "checkpoint of an appended log");
    let outcome = h.finish(final_update(JobState::Success)).await;
    assert_eq!(outcome, FinalOutcome::Accepted);
    assert_eq!(fake.trace(), b"earlier ferry\napplied again\n");
    fake.with(|s| {
        let last = s.updates.last().unwrap();
        assert_eq!(last.update.checksum, None);
    });
}
