//! `TRANSFER_METER_FREQUENCY`: progress lines in the job log while an artifact or cache
//! archive is uploaded or downloaded, in the format of gitlab-runner's transfer meter
//! (`commands/helpers/meter`): `\r<label> <bytes>[/<total>] (<rate>)` every interval, the
//! carriage return making GitLab's log viewer show one updating line, and the last one, when
//! the transfer ends, closed with a newline (docs/variables.md).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::engine::LogSink;

/// The shortest interval, as gitlab-runner's meter: a smaller one is one second.
const MIN_FREQUENCY: Duration = Duration::from_secs(1);

/// Bytes transferred so far, shared between the transfer and its meter.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every `Progress` is alike for comparisons: it is a channel, not a value.
impl PartialEq for Progress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Progress {}

/// `TRANSFER_METER_FREQUENCY`: a Go duration (or bare seconds). Unset, empty or zero is no
/// meter; under a second is one second. A value that cannot be read is no meter, with a
/// warning (gitlab-runner's helper would refuse the command line and fail the transfer).
pub fn frequency(value: Option<&str>) -> (Option<Duration>, Option<String>) {
    use ferry_config::duration::{DurationError, parse_job_duration};
    let Some(raw) = value else {
        return (None, None);
    };
    match parse_job_duration(raw) {
        Ok(d) if d.is_zero() => (None, None),
        Ok(d) => (Some(d.max(MIN_FREQUENCY)), None),
        Err(DurationError::Empty) => (None, None),
        Err(DurationError::TooLarge) => (Some(Duration::MAX), None),
        Err(_) => (
            None,
            Some(format!(
                "TRANSFER_METER_FREQUENCY: {raw:?} is not a duration: no transfer meter"
            )),
        ),
    }
}

/// gitlab-runner's `FormatBytes`: decimal units, two decimals (`999 B`, `1.50 MB`).
pub fn format_bytes(b: u64) -> String {
    match scaled(b) {
        (v, None) => format!("{} B", v as u64),
        (v, Some(p)) => format!("{v:.2} {p}B"),
    }
}

/// gitlab-runner's `FormatByteRate`: bytes per second of `d`, one decimal (`512 B/s`,
/// `2.3 MB/s`).
pub fn format_rate(b: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(1e-9);
    let rate = (b as f64 / secs) as u64;
    match scaled(rate) {
        (v, None) => format!("{} B/s", v as u64),
        (v, Some(p)) => format!("{v:.1} {p}B/s"),
    }
}

fn scaled(b: u64) -> (f64, Option<char>) {
    const UNIT: u64 = 1000;
    const PREFIX: [char; 6] = ['K', 'M', 'G', 'T', 'P', 'E'];
    if b < UNIT {
        return (b as f64, None);
    }
    let (mut div, mut exp, mut n) = (UNIT, 0, b / UNIT);
    while n >= UNIT {
        div *= UNIT;
        exp += 1;
        n /= UNIT;
    }
    (b as f64 / div as f64, Some(PREFIX[exp]))
}

/// One meter line, as gitlab-runner's `LabelledRateFormat` prints it.
pub fn line(label: &str, written: u64, total: Option<u64>, since: Duration, done: bool) -> String {
    let known = total
        .filter(|t| *t > 0)
        .map(|t| format!("/{}", format_bytes(t)))
        .unwrap_or_default();
    format!(
        "\r{label} {}{known} ({})                {}",
        format_bytes(written),
        format_rate(written, since),
        if done { "\n" } else { "" }
    )
}

/// Runs `transfer`; with a `frequency`, writes a meter line of the bytes `count` gives (e.g.
/// a [`Progress`]'s) to `log` at its start, every `frequency`, and when it ends (also when it
/// fails).
pub async fn metered<F: Future>(
    frequency: Option<Duration>,
    label: &str,
    total: Option<u64>,
    count: impl Fn() -> u64,
    log: &mut LogSink<'_>,
    transfer: F,
) -> F::Output {
    let Some(every) = frequency else {
        return transfer.await;
    };
    let started = Instant::now();
    tokio::pin!(transfer);
    loop {
        let text = line(label, count(), total, started.elapsed(), false);
        let _ = log.write_all(text.as_bytes()).await;
        let _ = log.flush().await;
        tokio::select! {
            out = &mut transfer => {
                let text = line(label, count(), total, started.elapsed(), true);
                let _ = log.write_all(text.as_bytes()).await;
                let _ = log.flush().await;
                return out;
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_rates_as_gitlab_runner_formats_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1000), "1.00 KB");
        assert_eq!(format_bytes(1_500_000), "1.50 MB");
        assert_eq!(format_bytes(2_345_678_901), "2.35 GB");
        assert_eq!(format_rate(500, Duration::from_secs(1)), "500 B/s");
        assert_eq!(format_rate(3_000_000, Duration::from_secs(2)), "1.5 MB/s");
        assert_eq!(format_rate(0, Duration::ZERO), "0 B/s");
    }

    #[test]
    fn lines_have_gitlab_runners_shape() {
        assert_eq!(
            line(
                "Uploading cache",
                1_500_000,
                Some(3_000_000),
                Duration::from_secs(1),
                false
            ),
            "\rUploading cache 1.50 MB/3.00 MB (1.5 MB/s)                "
        );
        assert_eq!(
            line(
                "Downloading artifacts",
                10,
                None,
                Duration::from_secs(1),
                true
            ),
            "\rDownloading artifacts 10 B (10 B/s)                \n"
        );
    }

    #[test]
    fn frequency_values() {
        assert_eq!(frequency(None), (None, None));
        assert_eq!(frequency(Some("")), (None, None));
        assert_eq!(frequency(Some("0")), (None, None));
        assert_eq!(frequency(Some("0s")), (None, None));
        assert_eq!(frequency(Some("5s")), (Some(Duration::from_secs(5)), None));
        assert_eq!(frequency(Some("100ms")), (Some(MIN_FREQUENCY), None));
        assert_eq!(frequency(Some("2")), (Some(Duration::from_secs(2)), None));
        let (f, w) = frequency(Some("often"));
        assert_eq!(f, None);
        assert_eq!(
            w.as_deref(),
            Some("TRANSFER_METER_FREQUENCY: \"often\" is not a duration: no transfer meter")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_is_metered_until_it_ends() {
        let progress = Progress::default();
        let mut out: Vec<u8> = Vec::new();
        let p = progress.clone();
        let transfer = async move {
            for _ in 0..3 {
                p.add(1000);
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            7
        };
        let got = metered(
            Some(Duration::from_secs(1)),
            "Uploading artifacts",
            None,
            || progress.get(),
            &mut out,
            transfer,
        )
        .await;
        assert_eq!(got, 7);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\r').filter(|l| !l.is_empty()).collect();
        // At the start (before the transfer ran), after 1, 2, 3 and 4 seconds, and the last
        // one at 4.5 s.
        assert_eq!(lines.len(), 6, "{text:?}");
        assert!(
            lines[0].starts_with("Uploading artifacts 0 B ("),
            "{text:?}"
        );
        assert!(
            lines[1].starts_with("Uploading artifacts 1.00 KB ("),
            "{text:?}"
        );
        assert!(
            lines[5].starts_with("Uploading artifacts 3.00 KB (") && lines[5].ends_with("\n"),
            "{text:?}"
        );
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    }

    #[tokio::test]
    async fn no_frequency_no_lines() {
        let mut out: Vec<u8> = Vec::new();
        let got = metered(None, "x", None, || 0, &mut out, async { 1 }).await;
        assert_eq!(got, 1);
        assert!(out.is_empty());
    }
}
