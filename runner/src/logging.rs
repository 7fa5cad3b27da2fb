//! Operator logs (tracing-subscriber), with gitlab-runner's log_level and log_format.
//!
//! Job output never goes here; it goes to the job's trace. No token is ever logged: where a runner
//! must be named, its short token (first 8 characters) is used.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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

/// Install the global subscriber. `format` is `runner`, `text` or `json`.
pub fn init(level: &str, format: &str) -> Result<(), String> {
    let filter = filter_for(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match format {
        "json" => builder.json().flatten_event(true).try_init(),
        "text" => builder.with_ansi(false).try_init(),
        "runner" | "" => builder.with_target(false).try_init(),
        other => {
            return Err(format!(
                "unknown log format {other:?} (use runner, text or json)"
            ));
        }
    };
    result.map_err(|e| e.to_string())
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
