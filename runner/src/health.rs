//! What `/health` and `/health/ready` answer (docs/monitoring.md, "Health"): the config is
//! loaded with at least one runner, each runner's Docker daemon answered a recent ping, and
//! each runner's last request to GitLab got an HTTP answer, recently.
//!
//! A probe only reads this cached state: the Docker pings run in the background
//! ([`DOCKER_PROBE_EVERY`]), GitLab's answers are those of the job requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_config::Config;

/// How often each runner's Docker daemon is pinged.
pub const DOCKER_PROBE_EVERY: Duration = Duration::from_secs(10);
/// A ping without an answer after this long failed.
pub const DOCKER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A Docker ping older than this no longer counts (three probes missed).
const DOCKER_STALE: Duration = Duration::from_secs(35);
/// A runner's last answer from GitLab counts for this long past its `check_interval` (a job
/// request can be held by GitLab's long polling for up to a minute, and an entry is parked for
/// up to 30 s after failed requests).
const GITLAB_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Probe {
    at: Instant,
    /// What answered (`Docker 27.1 (API 1.46)`, `204`), or why nothing did.
    outcome: Result<String, String>,
}

#[derive(Debug, Clone)]
struct RunnerId {
    short: String,
    name: String,
}

#[derive(Debug, Default)]
struct State {
    loaded: bool,
    runners: Vec<RunnerId>,
    check_interval: Duration,
    reload_error: Option<String>,
    docker: HashMap<String, Probe>,
    gitlab: HashMap<String, Probe>,
}

/// The state `/health` reports. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<State>>);

/// The answer to a probe: ready or not, and one line per part checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ready: bool,
    pub text: String,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config in force (at start and after each reload).
    pub fn config_loaded(&self, cfg: &Config) {
        let mut s = self.state();
        s.loaded = true;
        s.reload_error = None;
        s.check_interval = cfg.global.check_interval;
        s.runners = cfg
            .runners
            .iter()
            .map(|r| RunnerId {
                short: r.token.short().to_string(),
                name: r.name.clone(),
            })
            .collect();
    }

    /// The config file changed but could not be loaded (the previous config stays in force).
    pub fn config_reload_failed(&self, error: String) {
        self.state().reload_error = Some(error);
    }

    /// The result of pinging the Docker daemon of the runner `short`.
    pub fn docker(&self, short: &str, outcome: Result<String, String>) {
        let probe = Probe {
            at: Instant::now(),
            outcome,
        };
        self.state().docker.insert(short.to_string(), probe);
    }

    /// How the last job request of the runner `short` ended: `Ok(HTTP status)` for any answer
    /// of GitLab, `Err(why)` when none came.
    pub fn gitlab(&self, short: &str, outcome: Result<String, String>) {
        let probe = Probe {
            at: Instant::now(),
            outcome,
        };
        self.state().gitlab.insert(short.to_string(), probe);
    }

    pub fn report(&self) -> Report {
        self.report_at(Instant::now())
    }

    fn report_at(&self, now: Instant) -> Report {
        let s = self.state();
        let mut lines = Vec::new();
        let mut ready = true;
        let mut line = |ok: bool, text: String| {
            ready &= ok;
            lines.push(format!("{} {text}", if ok { "ok  " } else { "FAIL" }));
        };
        let config_ok = s.loaded && !s.runners.is_empty();
        let config = match (s.loaded, s.runners.len()) {
            (false, _) => "config: not loaded yet".to_string(),
            (true, 0) => "config: loaded, but it has no [[runners]]".to_string(),
            (true, n) => format!("config: loaded, {n} runner(s)"),
        };
        let config = match &s.reload_error {
            Some(e) => format!("{config}; the last reload failed, the previous config stays: {e}"),
            None => config,
        };
        line(config_ok, config);
        let gitlab_bound = s.check_interval + GITLAB_GRACE;
        for r in &s.runners {
            let who = format!("runner {} ({})", r.name, r.short);
            let (ok, text) = judge(s.docker.get(&r.short), now, DOCKER_STALE, "pinged");
            line(ok, format!("{who}: docker: {text}"));
            let (ok, text) = judge(s.gitlab.get(&r.short), now, gitlab_bound, "answered");
            line(ok, format!("{who}: gitlab: {text}"));
        }
        let head = if ready { "ready" } else { "not ready" };
        Report {
            ready,
            text: format!("{head}\n{}\n", lines.join("\n")),
        }
    }
}

/// Whether `probe` is a success younger than `bound`, and a line saying so.
fn judge(probe: Option<&Probe>, now: Instant, bound: Duration, verb: &str) -> (bool, String) {
    let Some(p) = probe else {
        return (false, "not checked yet".to_string());
    };
    let age = now.saturating_duration_since(p.at);
    let ago = format!("{}s ago", age.as_secs());
    match &p.outcome {
        Err(e) => (false, format!("{e} ({ago})")),
        Ok(what) if age > bound => (
            false,
            format!(
                "last {verb} {what} {ago}, more than {}s ago",
                bound.as_secs()
            ),
        ),
        Ok(what) => (true, format!("{verb} {what} {ago}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(runners: usize) -> Config {
        let mut text = String::from("check_interval = 3\n");
        for i in 0..runners {
            text.push_str(&format!(
                "[[runners]]\nname = \"r{i}\"\nurl = \"https://gitlab.example.com\"\n\
                 token = \"glrt-healthtest{i}token\"\nexecutor = \"docker\"\n\
                 [runners.docker]\nimage = \"busybox\"\n"
            ));
        }
        ferry_config::from_toml_str(&text, "test.toml").unwrap()
    }

    #[test]
    fn ready_only_when_config_docker_and_gitlab_all_answer_recently() {
        let h = Health::default();
        let r = h.report();
        assert!(!r.ready);
        assert!(r.text.contains("FAIL config: not loaded yet"), "{}", r.text);

        h.config_loaded(&config(1));
        let short = config(1).runners[0].token.short().to_string();
        let r = h.report();
        assert!(!r.ready, "nothing checked yet: {}", r.text);
        assert!(
            r.text.contains(&format!(
                "FAIL runner r0 ({short}): docker: not checked yet"
            )),
            "{}",
            r.text
        );

        h.docker(&short, Ok("Docker 27.1 (API 1.46)".into()));
        h.gitlab(&short, Ok("204".into()));
        let r = h.report();
        assert!(r.ready, "{}", r.text);
        assert!(
            r.text
                .starts_with("ready\nok   config: loaded, 1 runner(s)\n")
        );
        assert!(r.text.contains("gitlab: answered 204 0s ago"), "{}", r.text);

        // Old answers no longer count.
        let later = Instant::now() + Duration::from_secs(200);
        let r = h.report_at(later);
        assert!(!r.ready);
        assert!(
            r.text.contains("docker: last pinged Docker 27.1"),
            "{}",
            r.text
        );
        assert!(r.text.contains("more than 123s ago"), "{}", r.text);

        // GitLab gone: the last request got no answer.
        h.gitlab(&short, Err("connection refused".into()));
        let r = h.report();
        assert!(!r.ready);
        assert!(
            r.text.contains("FAIL runner r0") && r.text.contains("gitlab: connection refused"),
            "{}",
            r.text
        );

        // A failed reload is said, the config in force still counts.
        h.gitlab(&short, Ok("204".into()));
        h.config_reload_failed("config.toml:3: bad".into());
        let r = h.report();
        assert!(r.ready, "{}", r.text);
        assert!(r.text.contains("the last reload failed"), "{}", r.text);

        h.config_loaded(&config(0));
        assert!(!h.report().ready, "no runners: nothing to do");
    }
}
