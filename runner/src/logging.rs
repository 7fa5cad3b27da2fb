//! Operator logs (tracing-subscriber), with gitlab-runner's log_level and log_format.
//!
//! Job output never goes here; it goes to the job's trace. No token is ever logged: where a runner
//! must be named, its short token (first 8 characters) is used.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Warnings and errors logged since start (`gitlab_runner_errors_total`, docs/monitoring.md).
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// `(warnings, errors)` logged so far.
pub fn logged_problems() -> (u64, u64) {
    (
        WARNINGS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    )
}

/// Counts each warning and error that passes the log level, as gitlab-runner's log hook does.
struct CountProblems;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountProblems {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        match *event.metadata().level() {
            tracing::Level::ERROR => ERRORS.fetch_add(1, Ordering::Relaxed),
            tracing::Level::WARN => WARNINGS.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// Map gitlab-runner's level names (which include `fatal` and `panic`) to tracing's.
pub fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let level = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        other => {
            return Err(format!(
                "unknown log level {other:?} (use debug, info, warn or error)"
            ));
        }
    };
    // Quiet the HTTP stack unless the user asked for trace.
    let directives = if level == "trace" {
        "trace".to_string()
    } else {
        format!(
            "{level},hyper=warn,reqwest=warn,h2=warn,rustls=warn,bollard=warn,kube=warn,tower=warn"
        )
    };
    EnvFilter::try_new(directives).map_err(|e| e.to_string())
}

/// Install the global subscriber. `format` is `runner`, `text` or `json`; the log goes to stderr
/// (which a systemd unit's journal captures). With `syslog: Some(name)` every line also goes to the
/// system logger (syslog(3), facility daemon, tagged with `name` and the pid), as gitlab-runner's
/// `--syslog` adds its system logger beside stderr (docs/commands.md).
pub fn init(level: &str, format: &str, syslog: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    type Boxed = Box<
        dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>>
            + Send
            + Sync,
    >;

    let filter = filter_for(level)?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let mut layers: Vec<Boxed> = vec![match format {
        "json" => stderr.json().flatten_event(true).boxed(),
        "text" => stderr.with_ansi(false).boxed(),
        "runner" | "" => stderr.with_target(false).boxed(),
        other => {
            return Err(format!(
                "unknown log format {other:?} (use runner, text or json)"
            ));
        }
    }];
    if let Some(name) = syslog {
        let ident = std::ffi::CString::new(name)
            .map_err(|_| format!("--service {name:?}: a name without NUL bytes"))?;
        let writer = syslog_tracing::Syslog::new(
            ident,
            syslog_tracing::Options::LOG_PID,
            syslog_tracing::Facility::Daemon,
        )
        .ok_or("the system logger is already open")?;
        // syslog stamps each message with its own time.
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .with(CountProblems)
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_runner_level_names_are_accepted() {
        for l in [
            "debug", "info", "warn", "warning", "error", "fatal", "panic",
        ] {
            assert!(filter_for(l).is_ok(), "{l}");
        }
        let err = filter_for("loud").unwrap_err();
        assert!(err.contains("loud"));
    }
}
