//! End to end through `ferry run`, the fake GitLab and real Docker: the job variables that
//! change the job log (docs/job-log.md): `FF_TIMESTAMPS`, `FF_SCRIPT_SECTIONS` and
//! `CI_DEBUG_SERVICES`, asserted on the trace GitLab receives.
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker every test
//! prints `SKIP: <reason>` and returns.

use std::time::Duration;

use ferry_tests::e2e::{Harness, SERVICE, Setup};
use ferry_tests::fake_gitlab::JobStatus;
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// One line of a timestamped log: its stream (`01O`), its flag (' ' or '+') and its text.
#[derive(Debug)]
struct Stamped {
    stream: String,
    flag: char,
    text: String,
}

/// Every line of `trace` split into its gitlab-runner header and text; panics on a line without
/// a valid header (an RFC 3339 time in UTC with microseconds, 2 hex digits, `O`/`E`, ` `/`+`),
/// except the output-limit notice, which is not stamped.
fn stamped_lines(trace: &str) -> Vec<Stamped> {
    let mut out = Vec::new();
    // Up to the output-limit notice, without the line the limit cut.
    let body = match trace.find("\n\x1b[33;1mJob's log exceeded limit") {
        Some(i) => &trace[..trace[..i].rfind('\n').map_or(0, |j| j + 1)],
        None => trace,
    };
    let body = body.strip_suffix('\n').unwrap_or(body);
    for line in body.split('\n') {
        assert!(line.len() >= 32, "no header: {line:?}\n{trace}");
        let (time, rest) = line.split_at(27);
        assert!(
            time.ends_with('Z')
                && time.as_bytes()[19] == b'.'
                && chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "not a UTC time with microseconds: {line:?}"
        );
        let bytes = rest.as_bytes();
        assert_eq!(bytes[0], b' ', "{line:?}");
        let stream = &rest[1..4];
        assert!(
            stream[..2].chars().all(|c| c.is_ascii_hexdigit()) && matches!(&stream[2..], "O" | "E"),
            "{line:?}"
        );
        let flag = bytes[4] as char;
        assert!(flag == ' ' || flag == '+', "{line:?}");
        out.push(Stamped {
            stream: stream.to_string(),
            flag,
            text: rest[5..].to_string(),
        });
    }
    out
}

/// The line whose text is `text` (a command's output, not its echo).
fn exact<'a>(lines: &'a [Stamped], text: &str) -> &'a Stamped {
    lines
        .iter()
        .find(|l| l.text == text)
        .unwrap_or_else(|| panic!("no line {text:?}: {lines:#?}"))
}

fn find<'a>(lines: &'a [Stamped], needle: &str) -> &'a Stamped {
    lines
        .iter()
        .find(|l| l.text.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} in no line: {lines:#?}"))
}

/// `FF_TIMESTAMPS` from `[runners.feature_flags]`: every line GitLab receives has
/// gitlab-runner's header (ferry's own lines stream 00, the script's 01), masked values stay
/// masked, the section markers and the timing line are intact, and `output_limit` counts the
/// headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ff_timestamps_from_the_config_prefix_every_line() {
    let setup =
        Setup::default().runner("output_limit = 16\n[runners.feature_flags]\nFF_TIMESTAMPS = true");
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let id = h.push(
        h.job("stamped")
            .variable("DEPLOY_SECRET", "s3cr3t-value-42", true)
            .script([
                "echo \"secret=$DEPLOY_SECRET\"",
                // (Each stream of a container is one stream of the log: a line on stderr while
                // stdout has a partial line would join it, and Docker does not order the two
                // streams: so stderr goes first here, well before.)
                "echo on-stderr >&2; sleep 1",
                // A process of its own, so that no shell buffer holds the first part back.
                "sh -c \"printf 'part-one '\"; sleep 1; echo part-two",
                "sh -c \"printf no-newline-at-the-end\"",
            ]),
    );
    let big = h.push(
        h.job("big")
            .script(["i=0; while [ $i -lt 1000 ]; do echo ferry-output-line; i=$((i+1)); done"]),
    );

    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(!trace.contains("s3cr3t-value-42"), "{trace}");
    let lines = stamped_lines(&trace);
    assert_eq!(find(&lines, "Running with ferry").stream, "00O");
    let secret = exact(&lines, "secret=[MASKED]");
    assert_eq!((secret.stream.as_str(), secret.flag), ("01O", ' '));
    // A line written in two parts a second apart is one line, with one header.
    assert_eq!(exact(&lines, "part-one part-two").stream, "01O");
    assert_eq!(exact(&lines, "on-stderr").stream, "01O");
    // The end of the step ends its partial line.
    assert_eq!(exact(&lines, "no-newline-at-the-end").stream, "01O");
    // Section markers follow the header; each section opened is closed.
    for name in ["get_sources", "prepare_executor", "step_script"] {
        let start = find(&lines, &format!(":{name}\r"));
        assert!(start.text.starts_with("\x1b[0Ksection_start:"), "{start:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.text.starts_with("\x1b[0Ksection_end:")
                    && l.text.contains(&format!(":{name}\r"))),
            "{name} is closed: {trace}"
        );
    }
    let timing = find(&lines, "Job timing: ");
    assert!(timing.text.contains("step_script "), "{timing:?}");
    assert_eq!(timing.stream, "00O");
    assert!(
        lines.last().unwrap().text.contains("Job succeeded"),
        "{trace}"
    );

    // output_limit (16 KiB) counts the headers; the notice comes on top, unstamped.
    let job = h.wait_final(big, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let (kept, notice) = trace
        .split_once("\n\x1b[33;1mJob's log exceeded limit of 16384 bytes.")
        .unwrap_or_else(|| panic!("no limit notice: {trace}"));
    assert_eq!(kept.len(), 16384, "the limit is in bytes of stamped log");
    assert!(
        notice.ends_with("no more output will be collected.\x1b[0;m\n"),
        "{notice:?}"
    );
    let lines = stamped_lines(&trace);
    let out = exact(&lines, "ferry-output-line");
    assert_eq!(out.stream, "01O");
    h.stop().await;
}

/// The job variables: `FF_TIMESTAMPS` turns timestamps on for one job; `FF_SCRIPT_SECTIONS`
/// puts a multi-line command in a collapsed section named as gitlab-runner's
/// (`section_script_step_<n>`, `[hide_duration=true,collapsed=true]`); `CI_DEBUG_SERVICES`
/// streams the services' output, masked, in grey with the service's aliases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_variables_stamp_lines_open_script_sections_and_show_service_logs() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let plain = h.push(h.job("plain").script(["echo plain-output"]));
    let stamped = h.push(
        h.job("stamped")
            .variable("FF_TIMESTAMPS", "true", false)
            .script(["echo stamped-output"]),
    );
    let sections = h.push(
        h.job("sections")
            .variable("FF_SCRIPT_SECTIONS", "true", false)
            .script(["echo single-line", "echo first \\\n  second-half"])
            .after_script(["echo after\necho after-two"]),
    );
    let services = h.push(
        h.job("services")
            .variable("CI_DEBUG_SERVICES", "true", false)
            .variable("SVC_SECRET", "svc-s3cr3t-value", true)
            .service(json!({"name": SERVICE, "alias": "db", "command": [
                "sh", "-c",
                "echo svc-started-svc-s3cr3t-value; echo svc-stderr >&2; exec httpd -f -p 8080 -h /www"
            ]}))
            .script(["wget -q -O- http://db:8080/", "sleep 2", "echo script-done"]),
    );

    let job = h.wait_final(plain, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        trace.contains("\nplain-output\n"),
        "no timestamps by default: {trace}"
    );

    let job = h.wait_final(stamped, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let lines = stamped_lines(&trace);
    assert_eq!(exact(&lines, "stamped-output").stream, "01O");

    let job = h.wait_final(sections, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    // A single-line command is echoed as always.
    assert!(
        trace.contains("\x1b[32;1m$ echo single-line\x1b[0;m\nsingle-line\n"),
        "{trace}"
    );
    let start = trace
        .find(":section_script_step_1[hide_duration=true,collapsed=true]\r\x1b[0K")
        .unwrap_or_else(|| panic!("no script section: {trace}"));
    let (before, rest) = trace.split_at(start);
    let ts = before.rsplit_once("\nsection_start:").map(|(_, t)| t);
    assert!(ts.is_some_and(|t| t.parse::<u64>().is_ok()), "{trace}");
    assert!(
        rest.starts_with(
            ":section_script_step_1[hide_duration=true,collapsed=true]\r\x1b[0K\
             \x1b[32;1m$ echo first \\\n  second-half\x1b[0;m\nsection_end:"
        ),
        "{rest:?}"
    );
    assert!(
        rest.contains(":section_script_step_1\r\x1b[0K\nfirst second-half\n"),
        "the output follows the closed section: {rest:?}"
    );
    assert!(!trace.contains("collapsed multi-line command"), "{trace}");
    assert!(
        trace.contains(":section_after_script_step_0[hide_duration=true,collapsed=true]\r\x1b[0K\x1b[32;1m$ echo after\necho after-two\x1b[0;m\n"),
        "{trace}"
    );

    let job = h.wait_final(services, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(!trace.contains("svc-s3cr3t-value"), "{trace}");
    assert!(
        job.debug_trace,
        "uploaded as a debug log, as gitlab-runner does"
    );
    let line = trace
        .lines()
        .find(|l| l.contains("svc-started-"))
        .unwrap_or_else(|| panic!("no service output: {trace}"));
    let (prefix, rest) = line.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
    assert!(prefix.starts_with("\x1b[0;37m[service:db-"), "{line:?}");
    // Docker's timestamp of the line, then the line, then the colour reset.
    let (time, text) = rest.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{line:?}"
    );
    assert_eq!(text, "svc-started-[MASKED]\x1b[0;m", "{line:?}");
    assert!(
        trace
            .lines()
            .any(|l| l.starts_with(prefix) && l.ends_with(" svc-stderr\x1b[0;m")),
        "stderr too: {trace}"
    );
    // httpd logs nothing more; the streaming stops with the job: nothing after the final line.
    assert!(trace.contains("\nscript-done\n"), "{trace}");
    assert!(trace.ends_with("Job succeeded\x1b[0;m\n"), "{trace}");
    h.stop().await;
}
