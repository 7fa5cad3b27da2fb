//! How long each section of a job's log took, for the timing line at the end of the log and
//! the stage histogram (docs/monitoring.md, "The timing line").
//!
//! The clock is tokio's, so on a paused test clock the durations are exact.

use std::time::Duration;

use tokio::time::Instant;

/// The sections of one job: the one open now and the time each closed one took.
#[derive(Debug, Default)]
pub struct StageClock {
    open: Option<(String, Instant)>,
    /// Closed sections in the order they first ran; a name that runs twice adds up.
    done: Vec<(String, Duration)>,
    /// The section that closed last.
    last: Option<String>,
}

impl StageClock {
    pub fn start(&mut self, name: &str) {
        self.open = Some((name.to_string(), Instant::now()));
    }

    /// Closes `name` if it is the open section (a stray end is ignored).
    pub fn end(&mut self, name: &str) {
        let Some((open, since)) = self.open.take_if(|(open, _)| open == name) else {
            return;
        };
        let took = since.elapsed();
        self.last = Some(open.clone());
        match self.done.iter_mut().find(|(n, _)| *n == open) {
            Some((_, total)) => *total += took,
            None => self.done.push((open, took)),
        }
    }

    /// The section open now, else the last one that ran.
    pub fn current(&self) -> Option<&str> {
        self.open
            .as_ref()
            .map(|(n, _)| n.as_str())
            .or(self.last.as_deref())
    }

    /// Every closed section and its time, in the order they first ran.
    pub fn done(&self) -> Vec<(String, Duration)> {
        self.done.clone()
    }
}

/// The timing line: `Job timing: get_sources 0.4s, prepare_executor 1.2s, step_script 12.1s;
/// total 14.0s` (sections in the order they ran; the total includes the time between them).
pub fn timing_line(stages: &[(String, Duration)], total: Duration) -> String {
    let parts: Vec<String> = stages
        .iter()
        .map(|(name, took)| format!("{name} {}", human(*took)))
        .collect();
    if parts.is_empty() {
        format!("Job timing: total {}", human(total))
    } else {
        format!("Job timing: {}; total {}", parts.join(", "), human(total))
    }
}

/// `0.4s`, `59.9s`, `2m05.3s`, `1h02m05s`.
pub fn human(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    if secs < 3600 {
        return format!(
            "{}m{:02}.{}s",
            tenths / 600,
            (tenths % 600) / 10,
            tenths % 10
        );
    }
    format!(
        "{}h{:02}m{:02}s",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_minutes_and_hours() {
        let ms = Duration::from_millis;
        assert_eq!(human(ms(0)), "0.0s");
        assert_eq!(human(ms(449)), "0.4s");
        assert_eq!(human(ms(12_060)), "12.1s");
        assert_eq!(human(ms(59_940)), "59.9s");
        assert_eq!(human(ms(59_960)), "1m00.0s");
        assert_eq!(human(ms(125_300)), "2m05.3s");
        assert_eq!(human(ms(3_725_400)), "1h02m05s");
    }

    #[tokio::test(start_paused = true)]
    async fn sections_add_up_by_name_in_the_order_they_first_ran() {
        let mut c = StageClock::default();
        assert_eq!(c.current(), None);
        c.start("get_sources");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.current(), Some("get_sources"));
        c.end("get_sources");
        c.start("step_script");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.end("not_open");
        c.end("step_script");
        c.start("get_sources");
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.end("get_sources");
        assert_eq!(c.current(), Some("get_sources"));
        assert_eq!(
            timing_line(&c.done(), Duration::from_secs(3)),
            "Job timing: get_sources 0.5s, step_script 2.0s; total 3.0s"
        );
        assert_eq!(
            timing_line(&[], Duration::from_millis(10)),
            "Job timing: total 0.0s"
        );
    }
}
