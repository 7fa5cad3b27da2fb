//! Transport helpers shared by every call: retries, header parsing, error bodies, token hiding.

use std::time::Duration;

use ferry_config::token::display_prefix;
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::api::{ApiError, RemoteStatus};

/// The longest trace update interval GitLab may ask for (the official runner's cap).
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// How the HTTP layer retries answers that say "try again" (408, 429, 500, 502, 503, 504).
///
/// Used for calls that are safe to repeat and have no loop of their own: `/runners/verify`,
/// artifact upload and download, unregister. Never used for the calls a loop repeats at its own
/// pace, so that a GitLab in trouble is not sent bursts (docs/gitlab-api.md, "Outages"):
/// `/jobs/request` (the poll loop), the trace PATCH and `PUT /jobs/:id` (the trace uploader,
/// which also owns the offsets). Nor for registration and token reset, whose repetition could
/// create a second runner or lock us out. Connection errors are not retried here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retry).
    pub max_attempts: u32,
    /// First back-off; doubled after each attempt.
    pub base_delay: Duration,
    /// Upper bound for one wait, also for a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.base_delay.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// Statuses worth repeating a request for.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504) || status.as_u16() >= 512
}

/// Send a request built by `build` (called once per attempt, so streamed bodies are re-created),
/// retrying retryable statuses per `policy`. Returns the last response, whatever its status.
pub async fn send_with_retry<F>(
    endpoint: &'static str,
    policy: RetryPolicy,
    mut build: F,
) -> Result<Response, ApiError>
where
    F: FnMut() -> Result<RequestBuilder, ApiError>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let response = build()?.send().await.map_err(|e| transport(endpoint, &e))?;
        let status = response.status();
        if !is_retryable(status) || attempt >= policy.max_attempts.max(1) {
            return Ok(response);
        }
        let wait = policy.delay(attempt, retry_after(&response));
        tracing::debug!(
            endpoint,
            status = status.as_u16(),
            attempt,
            ?wait,
            "retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

/// A transport error, without the URL (which may carry pre-signed query strings).
pub fn transport(endpoint: &'static str, e: &reqwest::Error) -> ApiError {
    let mut message = e.to_string();
    if let Some(url) = e.url() {
        message = message.replace(url.as_str(), "<url>");
    }
    // reqwest's Display is terse ("error sending request"); the source says why.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport { endpoint, message }
}

/// `Retry-After` in seconds (HTTP dates are not used by GitLab for this header).
pub fn retry_after(response: &Response) -> Option<Duration> {
    header_str(response, "retry-after")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

pub fn header_str<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name)?.to_str().ok()
}

/// `Job-Status` header → what the job should do.
pub fn job_status(response: &Response) -> Option<RemoteStatus> {
    let value = header_str(response, "job-status")?.trim();
    Some(parse_remote_status(value))
}

/// A GitLab job status name → [`RemoteStatus`].
pub fn parse_remote_status(value: &str) -> RemoteStatus {
    match value {
        "running" => RemoteStatus::Running,
        "canceling" => RemoteStatus::Canceling,
        "canceled" | "cancelled" | "failed" | "success" | "skipped" | "manual" => {
            RemoteStatus::Gone
        }
        other => RemoteStatus::Other(other.to_owned()),
    }
}

/// `X-GitLab-Trace-Update-Interval`: whole seconds, capped at 15 min; zero/garbage ignored.
pub fn update_interval(response: &Response) -> Option<Duration> {
    parse_interval(header_str(response, "x-gitlab-trace-update-interval")?)
}

pub fn parse_interval(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs).min(MAX_UPDATE_INTERVAL))
}

/// `Range: 0-<length>` → length.
pub fn range_len(response: &Response) -> Option<u64> {
    parse_range_len(header_str(response, "range")?)
}

pub fn parse_range_len(value: &str) -> Option<u64> {
    let value = value.trim();
    let value = value.strip_prefix("bytes=").unwrap_or(value);
    let (start, end) = value.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    end.trim().parse().ok()
}

/// How much of an error answer is read: a Grape error is far smaller; a proxy's page or a
/// misdirected download is not read to its end.
pub const MAX_ERROR_BODY: usize = 4096;

/// The `message` (or `error`) of a Grape error body (its first [`MAX_ERROR_BODY`] bytes), on
/// one line, shortened for a log line. A body that is not a JSON object (a proxy's HTML page,
/// plain text) gives the status's reason alone. `secrets` are cut out in case the server
/// echoes them.
pub async fn error_message(mut response: Response, secrets: &[&str]) -> String {
    let status = response.status();
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    error_text(status, &body, secrets)
}

fn error_text(status: StatusCode, body: &[u8], secrets: &[&str]) -> String {
    let message = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => match map.get("message").or_else(|| map.get("error"))
        {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => serde_json::Value::Object(map).to_string(),
        },
        _ => String::new(),
    };
    let mut message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no message").to_owned();
    }
    if message.chars().count() > 300 {
        message = message.chars().take(300).collect::<String>() + "…";
    }
    scrub(&message, secrets)
}

/// Replace each secret in `text` by its first 8 characters and `…`
/// ([`ferry_config::token::display_prefix`]).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, &format!("{}…", display_prefix(s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_capped_and_garbage_ignored() {
        assert_eq!(parse_interval("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_interval(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("100000"), Some(MAX_UPDATE_INTERVAL));
        assert_eq!(parse_interval("0"), None);
        assert_eq!(parse_interval(""), None);
        assert_eq!(parse_interval("-5"), None);
        assert_eq!(parse_interval("3s"), None);
    }

    #[test]
    fn range_lengths() {
        assert_eq!(parse_range_len("0-120"), Some(120));
        assert_eq!(parse_range_len("0-0"), Some(0));
        assert_eq!(parse_range_len("5-10"), None);
        assert_eq!(parse_range_len("garbage"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_remote_status("running"), RemoteStatus::Running);
        assert_eq!(parse_remote_status("canceling"), RemoteStatus::Canceling);
        assert_eq!(parse_remote_status("canceled"), RemoteStatus::Gone);
        assert_eq!(parse_remote_status("failed"), RemoteStatus::Gone);
        assert_eq!(
            parse_remote_status("pending"),
            RemoteStatus::Other("pending".into())
        );
    }

    #[test]
    fn error_bodies_give_one_short_line() {
        let s = StatusCode::BAD_GATEWAY;
        let html =
            b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>";
        assert_eq!(error_text(s, html, &[]), "Bad Gateway");
        assert_eq!(
            error_text(s, b"upstream\nconnect error", &[]),
            "Bad Gateway"
        );
        let s = StatusCode::FORBIDDEN;
        assert_eq!(
            error_text(s, b"{\"message\": \"403\\n  Forbidden\\t here\"}", &[]),
            "403 Forbidden here"
        );
        assert_eq!(
            error_text(s, b"{\"error\": [\"a\", \"b\"]}", &[]),
            r#"["a","b"]"#
        );
        assert_eq!(
            error_text(
                s,
                b"{\"message\": \"glrt-abcdefghijkl is bad\"}",
                &["glrt-abcdefghijkl"]
            ),
            "glrt-abc… is bad"
        );
        // cut short: not JSON any more
        let mut long = b"{\"message\": \"".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_ERROR_BODY));
        long.truncate(MAX_ERROR_BODY);
        assert_eq!(error_text(s, &long, &[]), "Forbidden");
    }

    #[test]
    fn scrubbing_keeps_a_short_prefix() {
        assert_eq!(
            scrub("bad token glrt-abcdefghijkl!", &["glrt-abcdefghijkl"]),
            "bad token glrt-abc…!"
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, None), Duration::from_millis(400));
        assert_eq!(p.delay(40, None), Duration::from_secs(60));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7000))),
            Duration::from_secs(60)
        );
    }
}
