//! Includes only GitLab can read (`project`, `remote`, `template`, `component`), resolved by
//! GitLab's CI lint API when `ferry exec` is given `--gitlab URL` and a token (docs/exec.md,
//! "Includes from GitLab"). ferry merges the repository's own includes from the working tree
//! (`ferry_pipeline::gitlab_request`), sends that content, and plans the pipeline from the
//! `merged_yaml` GitLab answers (`ferry_pipeline::plan_merged`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_pipeline::{Input, Pipeline};
use serde::Deserialize;

use crate::cli::ExecArgs;
use crate::exec::predefined::RepoFacts;

/// An access token: never shown (`Debug` masks it; errors cut it out of GitLab's words).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.trim().to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[MASKED]")
    }
}

/// The call to GitLab: where, for which project, with which token.
pub struct Lint {
    /// Normalised instance URL (no trailing `/`).
    pub base: String,
    /// `group/project` or a numeric id.
    pub project: String,
    token: Token,
    ca_file: Option<PathBuf>,
}

/// GitLab's answer (`API::Entities::Ci::Lint::Result`).
#[derive(Debug, Deserialize)]
struct LintResult {
    valid: bool,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
    merged_yaml: Option<String>,
    #[serde(default)]
    includes: Option<Vec<IncludeInfo>>,
}

/// One entry of the answer's `includes` (each file GitLab read, nested ones too).
#[derive(Debug, Deserialize)]
struct IncludeInfo {
    #[serde(rename = "type")]
    kind: String,
    location: String,
    context_project: Option<String>,
}

/// What ferry makes of a valid answer.
#[derive(Debug)]
pub struct Merged {
    pub merged_yaml: String,
    /// Lines for the user: GitLab's warnings, and files of this project that GitLab read from
    /// its own copy (not the working tree).
    pub notes: Vec<String>,
}

/// How long the lint call may take: GitLab gives up resolving a configuration after 30 s.
const LINT_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest answer read: far above any merged configuration (GitLab refuses a file over
/// 1 MiB and more than 150 of them), so that a wrong server cannot fill the memory.
const MAX_ANSWER_BYTES: usize = 256 << 20;

impl Lint {
    /// From `--gitlab`, `--gitlab-token`/`FERRY_GITLAB_TOKEN`, `--gitlab-ca-file` and
    /// `--project` (default: the origin remote's project).
    pub fn from_args(args: &ExecArgs, facts: &RepoFacts) -> anyhow::Result<Option<Lint>> {
        let Some(url) = &args.gitlab else {
            return Ok(None);
        };
        let base =
            crate::gitlab::normalize_base(url).map_err(|e| anyhow::anyhow!("--gitlab: {e}"))?;
        let token = args
            .gitlab_token
            .clone()
            .filter(|t| !t.0.is_empty())
            .context(
                "--gitlab needs an access token: set FERRY_GITLAB_TOKEN (or --gitlab-token) to a \
                 personal, project or group access token with the api scope",
            )?;
        let project = match &args.project {
            Some(p) => p.trim_matches('/').to_string(),
            None if facts.server_url.is_some() => facts.project_path.clone(),
            None => anyhow::bail!(
                "--gitlab needs the project: the repository has no origin remote naming one; \
                 give --project GROUP/PROJECT"
            ),
        };
        if project.is_empty() {
            anyhow::bail!("--project is empty");
        }
        Ok(Some(Lint {
            base,
            project,
            token,
            ca_file: args.gitlab_ca_file.clone(),
        }))
    }

    /// `…/api/v4/projects/<id or url-encoded path>/ci/lint`.
    pub fn endpoint(&self) -> anyhow::Result<reqwest::Url> {
        let mut url =
            reqwest::Url::parse(&self.base).with_context(|| format!("--gitlab {}", self.base))?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("--gitlab {} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(["api", "v4", "projects"])
            .push(&self.project)
            .extend(["ci", "lint"]);
        Ok(url)
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        crate::gitlab::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::gitlab::user_agent())
            .tls_backend_rustls()
            .tls_version_min(reqwest::tls::Version::TLS_1_2)
            .connect_timeout(Duration::from_secs(30))
            .timeout(LINT_TIMEOUT)
            // The token goes to this URL only, never to where a redirect points.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --gitlab-ca-file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "--gitlab-ca-file {}: not PEM certificates: {e}",
                    path.display()
                )
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        builder
            .build()
            .context("building the HTTP client for --gitlab")
    }

    /// `POST /projects/:id/ci/lint` with `content` (a static check: `dry_run` false, as
    /// GitLab's pipeline editor does; ferry evaluates the rules itself). GitLab's `errors`
    /// become one error with its messages; an HTTP failure one line with the URL and status.
    pub async fn merge(&self, content: &str) -> anyhow::Result<Merged> {
        let url = self.endpoint()?;
        let shown = format!("POST {url}");
        let mut token = reqwest::header::HeaderValue::from_str(&self.token.0).map_err(|_| {
            anyhow::anyhow!("the GitLab token has characters a header cannot carry")
        })?;
        token.set_sensitive(true);
        let body = serde_json::json!({
            "content": content,
            "dry_run": false,
            "include_jobs": false,
        });
        let response = self
            .client()?
            .post(url.clone())
            .header("PRIVATE-TOKEN", token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let message = match crate::gitlab::http::transport("ci_lint", &e) {
                    // The URL is at the start of the line already.
                    crate::api::ApiError::Transport { message, .. } => {
                        message.replace(" for url (<url>)", "")
                    }
                    other => other.to_string(),
                };
                anyhow::anyhow!("{shown}: {}", self.scrub(&message))
            })?;
        let status = response.status();
        if !status.is_success() {
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let message = crate::gitlab::http::error_message(response, &[]).await;
            anyhow::bail!(
                "{}",
                self.scrub(&http_failure(
                    &shown,
                    status,
                    &message,
                    location.as_deref(),
                    &self.project
                ))
            );
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("{shown}: reading the answer"))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                anyhow::bail!(
                    "{shown}: the answer is over {} MiB; ferry reads no more",
                    MAX_ANSWER_BYTES >> 20
                );
            }
            body.extend_from_slice(&chunk);
        }
        let result: LintResult = serde_json::from_slice(&body).map_err(|e| {
            anyhow::anyhow!("{shown}: the answer is not GitLab's CI lint result: {e}")
        })?;
        self.read_result(result)
    }

    fn read_result(&self, result: LintResult) -> anyhow::Result<Merged> {
        if !result.valid || !result.errors.is_empty() {
            let errors = if result.errors.is_empty() {
                "invalid, without a message".to_string()
            } else {
                result.errors.join("; ")
            };
            anyhow::bail!(
                "{}",
                self.scrub(&format!(
                    "GitLab ({}, project {}) refuses the configuration: {errors}",
                    self.base, self.project
                ))
            );
        }
        let merged_yaml = result.merged_yaml.with_context(|| {
            format!(
                "GitLab ({}) answered the CI lint without merged_yaml (GitLab 13.6 or later gives it)",
                self.base
            )
        })?;
        let mut notes: Vec<String> = result
            .warnings
            .iter()
            .map(|w| format!("GitLab warns: {}", self.scrub(w)))
            .collect();
        // Every local include of the working tree was merged in before sending: a local file
        // GitLab read itself is one a file from GitLab includes, read from GitLab's copy.
        for inc in result.includes.iter().flatten() {
            if inc.kind == "local"
                && inc
                    .context_project
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(&self.project))
            {
                notes.push(format!(
                    "`{}` was read by GitLab from the project's default branch, not from the \
                     working tree (a file GitLab read includes it)",
                    inc.location
                ));
            }
        }
        Ok(Merged { merged_yaml, notes })
    }

    /// `text` without the token (GitLab may echo what it was sent).
    fn scrub(&self, text: &str) -> String {
        if self.token.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.token.0, "[MASKED]")
    }
}

/// One line for an HTTP answer other than 200, with what to do about it.
fn http_failure(
    shown: &str,
    status: reqwest::StatusCode,
    message: &str,
    location: Option<&str>,
    project: &str,
) -> String {
    let hint = match status.as_u16() {
        401 => "the token is not valid (expired, revoked or mistyped)".to_string(),
        403 => format!(
            "the token may not use the CI lint API of {project}: it needs the api scope and \
             the Developer role in the project"
        ),
        404 => format!(
            "no project {project} there, or the token cannot see it (give --project GROUP/PROJECT)"
        ),
        429 => "GitLab limits how often the CI lint API is called; try again later".to_string(),
        300..=399 => format!(
            "GitLab redirects to {}: give that address as --gitlab",
            location.unwrap_or("another address")
        ),
        _ => String::new(),
    };
    let reason = status.canonical_reason().unwrap_or("");
    let mut line = format!("{shown}: {} {reason}", status.as_u16());
    if !message.is_empty()
        && message != reason
        && !message.starts_with(&status.as_u16().to_string())
    {
        line.push_str(&format!(" ({message})"));
    }
    if !hint.is_empty() {
        line.push_str(": ");
        line.push_str(&hint);
    }
    line
}

/// A warning when `--gitlab` is `http://` to another machine: the token would cross the
/// network unencrypted (a loopback address stays on this machine).
fn cleartext_warning(base: &str) -> Option<String> {
    let url = reqwest::Url::parse(base).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback)
        .then(|| format!("--gitlab {base} is http://: the token is sent unencrypted; use https://"))
}

/// The pipeline for `input`: from the repository's files alone, or, when `lint` is given and
/// the configuration has includes only GitLab can read, from GitLab's merged YAML. Tells the
/// user (stderr) what GitLab resolved and GitLab's warnings.
pub async fn plan(top: &Path, input: &Input, lint: Option<&Lint>) -> anyhow::Result<Pipeline> {
    let err = |e: ferry_pipeline::Error| anyhow::anyhow!("{e}");
    let Some(lint) = lint else {
        return ferry_pipeline::plan(top, input).map_err(err);
    };
    let Some(request) = ferry_pipeline::gitlab_request(top, input).map_err(err)? else {
        return ferry_pipeline::plan(top, input).map_err(err);
    };
    if let Some(warning) = cleartext_warning(&lint.base) {
        eprintln!("ferry: WARNING: {warning}");
    }
    let merged = lint.merge(&request.content).await?;
    eprintln!(
        "ferry: GitLab ({}, project {}) resolved: {}",
        lint.base,
        lint.project,
        request.includes.join(", ")
    );
    for note in &merged.notes {
        eprintln!("ferry: {note}");
    }
    ferry_pipeline::plan_merged(top, input, &merged.merged_yaml).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(project: &str) -> Lint {
        Lint {
            base: "https://gitlab.example.com/root".into(),
            project: project.into(),
            token: Token("glpat-secret-value".into()),
            ca_file: None,
        }
    }

    #[test]
    fn the_endpoint_encodes_the_project_path() {
        assert_eq!(
            lint("acme/sub/app").endpoint().unwrap().as_str(),
            "https://gitlab.example.com/root/api/v4/projects/acme%2Fsub%2Fapp/ci/lint"
        );
        assert_eq!(
            lint("42").endpoint().unwrap().as_str(),
            "https://gitlab.example.com/root/api/v4/projects/42/ci/lint"
        );
    }

    #[test]
    fn plain_http_to_another_machine_is_warned_about() {
        let w = cleartext_warning("http://gitlab.example.com").unwrap();
        assert_eq!(
            w,
            "--gitlab http://gitlab.example.com is http://: the token is sent unencrypted; use https://"
        );
        assert!(cleartext_warning("http://10.0.0.5:8080/gitlab").is_some());
        assert_eq!(cleartext_warning("https://gitlab.example.com"), None);
        assert_eq!(cleartext_warning("http://127.0.0.1:3000"), None);
        assert_eq!(cleartext_warning("http://localhost"), None);
        assert_eq!(cleartext_warning("http://[::1]:80"), None);
    }

    #[test]
    fn the_token_is_never_shown() {
        let t: Token = " glpat-secret-value\n".parse().unwrap();
        assert_eq!(format!("{t:?}"), "[MASKED]");
        let l = lint("acme/app");
        let r = LintResult {
            valid: false,
            errors: vec!["bad token glpat-secret-value echoed".into()],
            warnings: vec![],
            merged_yaml: None,
            includes: None,
        };
        let e = l.read_result(r).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("[MASKED]"), "{e}");
    }

    #[test]
    fn gitlab_errors_and_http_failures_are_one_line_each() {
        let l = lint("acme/app");
        let r = LintResult {
            valid: false,
            errors: vec![
                "Project `acme/ci` file `x.yml` does not exist!".into(),
                "jobs:a config contains unknown keys: scrip".into(),
            ],
            warnings: vec![],
            merged_yaml: None,
            includes: None,
        };
        let e = l.read_result(r).unwrap_err().to_string();
        assert_eq!(
            e,
            "GitLab (https://gitlab.example.com/root, project acme/app) refuses the configuration: \
             Project `acme/ci` file `x.yml` does not exist!; jobs:a config contains unknown keys: scrip"
        );
        let shown = "POST https://g/api/v4/projects/acme%2Fapp/ci/lint";
        let line = http_failure(
            shown,
            reqwest::StatusCode::UNAUTHORIZED,
            "401 Unauthorized",
            None,
            "acme/app",
        );
        assert_eq!(
            line,
            format!(
                "{shown}: 401 Unauthorized: the token is not valid (expired, revoked or mistyped)"
            )
        );
        let line = http_failure(
            shown,
            reqwest::StatusCode::NOT_FOUND,
            "404 Project Not Found",
            None,
            "acme/app",
        );
        assert!(
            line.contains("404 Not Found: no project acme/app"),
            "{line}"
        );
        let line = http_failure(
            shown,
            reqwest::StatusCode::FORBIDDEN,
            "403 Forbidden",
            None,
            "acme/app",
        );
        assert!(line.contains("api scope and the Developer role"), "{line}");
        let line = http_failure(
            shown,
            reqwest::StatusCode::MOVED_PERMANENTLY,
            "",
            Some("https://gitlab.example.com/api/v4/projects/acme%2Fapp/ci/lint"),
            "acme/app",
        );
        assert!(
            line.contains("301 Moved Permanently: GitLab redirects to https://"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn warnings_and_local_files_gitlab_read_are_told() {
        let l = lint("Acme/App");
        let r: LintResult = serde_json::from_value(serde_json::json!({
            "valid": true,
            "errors": [],
            "warnings": ["jobs:x may allow multiple pipelines to run"],
            "merged_yaml": "x:\n  script: [a]\n",
            "includes": [
                {"type": "template", "location": "Jobs/X.gitlab-ci.yml", "context_project": "acme/app",
                 "context_sha": "abc", "blob": null, "raw": "https://…", "extra": {}},
                {"type": "local", "location": "ci/nested.yml", "context_project": "acme/app",
                 "context_sha": "abc", "blob": "…", "raw": "…", "extra": {}},
                {"type": "local", "location": "base.yml", "context_project": "acme/ci",
                 "context_sha": "def", "blob": "…", "raw": "…", "extra": {}}
            ]
        }))
        .unwrap();
        let m = l.read_result(r).unwrap();
        assert_eq!(m.merged_yaml, "x:\n  script: [a]\n");
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        assert!(m.notes[0].starts_with("GitLab warns: jobs:x may allow"));
        assert!(
            m.notes[1].starts_with("`ci/nested.yml` was read by GitLab"),
            "{:?}",
            m.notes
        );
    }
}
