//! `GitLabClient`: the runner API over HTTP(S) (docs/gitlab-api.md).
//!
//! One client per GitLab URL (one per `[[runners]]` entry is fine: it is cheap to clone and
//! shares its connection pool). Runner tokens are passed per call; job tokens come in
//! [`JobRef`](crate::api::JobRef)s. Tokens only travel in request bodies and headers, never in
//! URLs, log lines or error messages (where one must be named, its first 8 characters are used).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ferry_config::platform::go_arch;
use ferry_config::token::display_prefix;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::http::{self, RetryPolicy, error_message, send_with_retry};
use super::payload::{JobPayload, PayloadError, parse_payload, salvage_job_ref};
use crate::api::{ApiError, JobRef};

/// The `info.features` ferry advertises on `/jobs/request`: exactly what it implements
/// (docs/gitlab-api.md). GitLab fails a job that needs a feature not listed here as
/// `runner_unsupported` when it hands it to ferry (it does not hold it back), and
/// `cancel_gracefully` obliges ferry to handle the `canceling` status.
pub const FEATURES: &[&str] = &[
    "variables",
    "image",
    "services",
    "artifacts",
    "cache",
    "refspecs",
    "masking",
    "raw_variables",
    "upload_multiple_artifacts",
    "upload_raw_artifacts",
    "artifacts_exclude",
    "trace_checksum",
    "trace_size",
    "cancelable",
    "cancel_gracefully",
    "return_exit_code",
    "service_variables",
    "multi_build_steps",
    "fallback_cache_keys",
];

/// Timeout for `/jobs/request`: well above Workhorse's long-polling hold (typically 50 s).
pub const JOB_REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Timeout for the small JSON calls (register, verify, PUT, PATCH, …).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// Timeout for a whole artifacts upload or download.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// How to reach GitLab.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientOptions {
    /// The `url` of the `[[runners]]` entry (`https://gitlab.example.com`, optionally with a
    /// relative root and a trailing `/` or `/ci`).
    pub url: String,
    /// PEM bundle trusted in addition to the system roots (`tls-ca-file`).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (`tls-cert-file`, `tls-key-file`).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// `info.executor` sent to GitLab (shown in the UI). Default `docker`.
    pub executor: Option<String>,
    /// `info.shell`. Default `bash`.
    pub shell: Option<String>,
    /// Retries of the HTTP layer (see [`RetryPolicy`] for which calls use it).
    pub retry: RetryPolicy,
}

impl ClientOptions {
    /// Options for one `[[runners]]` entry.
    pub fn from_runner(runner: &ferry_config::RunnerSection) -> Self {
        ClientOptions {
            url: runner.url.clone(),
            tls_ca_file: runner.tls_ca_file.clone(),
            tls_cert_file: runner.tls_cert_file.clone(),
            tls_key_file: runner.tls_key_file.clone(),
            executor: Some(runner.executor.clone()).filter(|e| !e.is_empty()),
            shell: runner.shell.clone(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid GitLab URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Build(String),
}

/// Sees the answer (or its absence) of each call gitlab-runner counts in its API metrics
/// (`update_job`, `patch_trace`, `reset_token`; `request_job` is counted by the poller, which
/// also tracks health): docs/monitoring.md.
pub trait ApiObserver: Send + Sync {
    /// `endpoint` and `method` as gitlab-runner names them (`update_job`, `put`); `status` is
    /// `None` when GitLab did not answer.
    fn answered(
        &self,
        endpoint: &'static str,
        method: &'static str,
        status: Option<u16>,
        took: Duration,
    );
}

/// The runner's HTTP client for one GitLab instance.
#[derive(Clone)]
pub struct GitLabClient {
    observer: Option<std::sync::Arc<dyn ApiObserver>>,
    http: HttpPool,
    /// Normalised instance URL without trailing `/` (and without `/ci`).
    base: String,
    info: RunnerInfoBody,
    retry: RetryPolicy,
}

impl std::fmt::Debug for GitLabClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitLabClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `User-Agent`: `ferry <version> (<os>/<arch>)`, with Go's os/arch names as GitLab expects.
pub fn user_agent() -> String {
    format!(
        "ferry {} ({}/{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        go_arch()
    )
}

/// The runner `info` object sent on verify, job requests and registration.
#[derive(Debug, Clone, Serialize)]
struct RunnerInfoBody {
    name: &'static str,
    version: &'static str,
    revision: &'static str,
    platform: &'static str,
    architecture: &'static str,
    executor: String,
    shell: String,
    features: BTreeMap<&'static str, bool>,
    config: InfoConfig,
}

#[derive(Debug, Clone, Serialize)]
struct InfoConfig {
    gpus: &'static str,
}

/// A GitLab URL as requests are built on it: http(s), a host, no credentials, no trailing `/`
/// (nor `/ci`).
pub fn normalize_base(url: &str) -> Result<String, ClientError> {
    let err = |reason: &str| ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| err(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http and https are supported"));
    }
    if parsed.host_str().is_none() {
        return Err(err("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err("credentials in the URL are not supported"));
    }
    let mut base = url.trim().trim_end_matches('/').to_owned();
    if let Some(stripped) = base.strip_suffix("/ci") {
        base = stripped.trim_end_matches('/').to_owned();
    }
    Ok(base)
}

/// Makes ring rustls's process-wide crypto provider unless one is set already. reqwest (built
/// without a provider of its own) uses it for the GitLab connection; kube and bollard use ring
/// too. Idempotent; call it before building a `reqwest::Client`.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Tls {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

type MakeHttp = dyn Fn() -> Result<reqwest::Client, ClientError> + Send + Sync;

/// The HTTP client and its connection pool, made again after `max_age`.
#[derive(Clone)]
struct HttpPool {
    make: std::sync::Arc<MakeHttp>,
    current: std::sync::Arc<std::sync::Mutex<(reqwest::Client, std::time::Instant)>>,
    max_age: Option<Duration>,
}

impl HttpPool {
    fn new(make: std::sync::Arc<MakeHttp>) -> Result<Self, ClientError> {
        let client = make()?;
        Ok(HttpPool {
            make,
            current: std::sync::Arc::new(std::sync::Mutex::new((
                client,
                std::time::Instant::now(),
            ))),
            max_age: None,
        })
    }

    fn client(&self) -> reqwest::Client {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(age) = self.max_age
            && current.1.elapsed() > age
        {
            // the same settings built the first client; should it fail now, keep that one
            if let Ok(fresh) = (self.make)() {
                tracing::debug!(
                    max_age_s = age.as_secs_f64(),
                    "new HTTP client: connections reached connection_max_age"
                );
                *current = (fresh, std::time::Instant::now());
            }
        }
        current.0.clone()
    }
}

impl GitLabClient {
    pub fn new(options: &ClientOptions) -> Result<Self, ClientError> {
        let base = normalize_base(&options.url)?;
        install_crypto_provider();
        let mut extra_certs = Vec::new();
        let mut identity = None;
        if let Some(path) = &options.tls_ca_file {
            let pem = read_file(path)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::Tls {
                    path: path.display().to_string(),
                    reason: format!("not a PEM certificate bundle: {e}"),
                })?;
            if certs.is_empty() {
                return Err(ClientError::Tls {
                    path: path.display().to_string(),
                    reason: "no certificate in the file".into(),
                });
            }
            extra_certs = certs;
        }
        match (&options.tls_cert_file, &options.tls_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file(cert)?;
                pem.push(b'\n');
                pem.extend(read_file(key)?);
                identity =
                    Some(
                        reqwest::Identity::from_pem(&pem).map_err(|e| ClientError::Tls {
                            path: format!("{} + {}", cert.display(), key.display()),
                            reason: format!("invalid client certificate or key: {e}"),
                        })?,
                    );
            }
            (Some(path), None) | (None, Some(path)) => {
                return Err(ClientError::Tls {
                    path: path.display().to_string(),
                    reason: "tls-cert-file and tls-key-file must be given together".into(),
                });
            }
            (None, None) => {}
        }
        // Kept to build the client again when its connections reach connection_max_age.
        let make = move || {
            let mut builder = reqwest::Client::builder()
                .user_agent(user_agent())
                .tls_backend_rustls()
                .tls_version_min(reqwest::tls::Version::TLS_1_2)
                .connect_timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_keepalive(Duration::from_secs(30))
                // Redirects are followed by hand (artifact download only) so job tokens are
                // never forwarded to another host such as an object store.
                .redirect(reqwest::redirect::Policy::none());
            if !extra_certs.is_empty() {
                // In addition to the system's roots, as gitlab-runner does.
                builder = builder.tls_certs_merge(extra_certs.clone());
            }
            if let Some(identity) = &identity {
                builder = builder.identity(identity.clone());
            }
            builder
                .build()
                .map_err(|e| ClientError::Build(e.to_string()))
        };
        let http = HttpPool::new(std::sync::Arc::new(make))?;
        let info = RunnerInfoBody {
            name: "ferry",
            version: env!("CARGO_PKG_VERSION"),
            revision: option_env!("FERRY_REVISION").unwrap_or("unknown"),
            platform: std::env::consts::OS,
            architecture: go_arch(),
            executor: options.executor.clone().unwrap_or_else(|| "docker".into()),
            shell: options.shell.clone().unwrap_or_else(|| "bash".into()),
            features: FEATURES.iter().map(|f| (*f, true)).collect(),
            config: InfoConfig { gpus: "" },
        };
        Ok(GitLabClient {
            observer: None,
            http,
            base,
            info,
            retry: options.retry,
        })
    }

    /// Reports each counted call to `observer`.
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn ApiObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Times `call` and tells the observer how it ended.
    pub(super) async fn observed(
        &self,
        endpoint: &'static str,
        method: &'static str,
        call: impl std::future::Future<Output = Result<reqwest::Response, ApiError>>,
    ) -> Result<reqwest::Response, ApiError> {
        let started = tokio::time::Instant::now();
        let result = call.await;
        if let Some(o) = &self.observer {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            o.answered(endpoint, method, status, started.elapsed());
        }
        result
    }

    /// The normalised instance URL requests are built on.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/api/v4/{}", self.base, path)
    }

    pub(super) fn http(&self) -> reqwest::Client {
        self.http.client()
    }

    /// `connection_max_age` (docs/configuration.md): once the client's connections are older,
    /// the next request starts on a new client, so the old connections close when their last
    /// request ends (gitlab-runner closes its idle connections at that age). `None` = never.
    pub fn with_connection_max_age(mut self, max_age: Option<Duration>) -> Self {
        self.http.max_age = max_age;
        self
    }

    pub(super) fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// `method path` with `body` as JSON, retried on transient failures ([`send_with_retry`]).
    async fn send_json<B: Serialize>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        timeout: Duration,
        body: &B,
    ) -> Result<reqwest::Response, ApiError> {
        send_with_retry(endpoint, self.retry, || {
            Ok(self.json_request(method.clone(), path, timeout).json(body))
        })
        .await
    }

    fn json_request(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        self.http()
            .request(method, self.url(path))
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// `POST /api/v4/runners`: register with a (legacy) registration token.
    ///
    /// Not retried: a retry after a lost answer would create a second runner.
    pub async fn register(
        &self,
        registration_token: &str,
        request: &RegisterRequest,
    ) -> Result<Registration, ApiError> {
        const EP: &str = "POST /api/v4/runners";
        let body = RegisterBody {
            token: registration_token,
            description: &request.description,
            tag_list: request.tags.join(","),
            run_untagged: request.run_untagged || request.tags.is_empty(),
            locked: request.locked,
            access_level: request.access_level.as_deref().filter(|s| !s.is_empty()),
            maximum_timeout: request.maximum_timeout.filter(|t| *t > 0),
            paused: request.paused,
            maintenance_note: request
                .maintenance_note
                .as_deref()
                .filter(|s| !s.is_empty()),
            info: &self.info,
        };
        let response = self
            .json_request(Method::POST, "runners", CALL_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport(EP, &e))?;
        let status = response.status();
        if status != StatusCode::CREATED {
            let message = error_message(response, &[registration_token]).await;
            let message = match status.as_u16() {
                403 => format!("registration token rejected ({message}); check the token"),
                410 => format!(
                    "registration with registration tokens is disabled on this GitLab ({message}); \
                     create the runner in GitLab and use its glrt- token"
                ),
                _ => message,
            };
            return Err(ApiError::Status {
                endpoint: EP,
                status: status.as_u16(),
                message,
            });
        }
        let registration = decode_token_reply(EP, response).await?;
        tracing::info!(
            runner_id = registration.id,
            token = display_prefix(&registration.token),
            "runner registered"
        );
        Ok(registration)
    }

    /// `POST /api/v4/runners/verify`: check an authentication token (and register this host as
    /// a runner manager). Used by `register` with a `glrt-` token and by `verify`.
    pub async fn verify(&self, token: &str, system_id: &str) -> Result<Verification, ApiError> {
        const EP: &str = "POST /api/v4/runners/verify";
        let body = TokenBody {
            token,
            system_id: non_empty(system_id),
            info: Some(&self.info),
        };
        let response = self
            .send_json(EP, Method::POST, "runners/verify", CALL_TIMEOUT, &body)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let message = error_message(response, &[token]).await;
            let message = if status == StatusCode::FORBIDDEN {
                format!(
                    "runner token {}… rejected ({message})",
                    display_prefix(token)
                )
            } else {
                message
            };
            return Err(ApiError::Status {
                endpoint: EP,
                status: status.as_u16(),
                message,
            });
        }
        // Old GitLab answers a plain-text `200`; that still means "valid".
        let bytes = response
            .bytes()
            .await
            .map_err(|e| http::transport(EP, &e))?;
        let reply: RegistrationReply = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(Verification {
            id: (reply.id > 0).then_some(reply.id),
            token_expires_at: reply.token_expires_at.filter(|s| !s.is_empty()),
        })
    }

    /// Unregister. For `glrt-` tokens with a `system_id`, only this runner manager is removed
    /// (`DELETE /api/v4/runners/managers`), so the runner created in GitLab's UI survives; for
    /// other tokens the whole runner is deleted (`DELETE /api/v4/runners`), as gitlab-runner does.
    pub async fn unregister(&self, token: &str, system_id: Option<&str>) -> Result<(), ApiError> {
        let system_id = system_id.filter(|s| !s.is_empty());
        let (ep, path, body) = match system_id {
            Some(id) if token.starts_with("glrt-") => (
                "DELETE /api/v4/runners/managers",
                "runners/managers",
                TokenBody {
                    token,
                    system_id: Some(id),
                    info: None,
                },
            ),
            _ => (
                "DELETE /api/v4/runners",
                "runners",
                TokenBody {
                    token,
                    system_id: None,
                    info: None,
                },
            ),
        };
        let response = self
            .send_json(ep, Method::DELETE, path, CALL_TIMEOUT, &body)
            .await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT || status == StatusCode::OK {
            return Ok(());
        }
        let message = error_message(response, &[token]).await;
        Err(ApiError::Status {
            endpoint: ep,
            status: status.as_u16(),
            message,
        })
    }

    /// `POST /api/v4/runners/reset_authentication_token`: rotate the runner token. The old
    /// token is invalid as soon as GitLab answers; persist the new one at once.
    ///
    /// Not retried on 5xx (a lost answer would leave ferry with an already-invalid token; the
    /// caller's schedule retries with the token it still has).
    pub async fn reset_token(&self, token: &str) -> Result<TokenReset, ApiError> {
        const EP: &str = "POST /api/v4/runners/reset_authentication_token";
        let body = TokenBody {
            token,
            system_id: None,
            info: None,
        };
        let send = async {
            self.json_request(
                Method::POST,
                "runners/reset_authentication_token",
                CALL_TIMEOUT,
            )
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport(EP, &e))
        };
        let response = self.observed("reset_token", "post", send).await?;
        let status = response.status();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            let message = error_message(response, &[token]).await;
            return Err(ApiError::Status {
                endpoint: EP,
                status: status.as_u16(),
                message,
            });
        }
        let Registration {
            token,
            token_expires_at,
            ..
        } = decode_token_reply(EP, response).await?;
        Ok(TokenReset {
            token,
            token_expires_at,
        })
    }

    /// `POST /api/v4/jobs/request`: ask for a job.
    ///
    /// `last_update` is the last `X-GitLab-Last-Update` value seen for this runner (from
    /// [`JobRequest::NoJob`]); keep the previous one when a reply carries none.
    /// Not retried here (see the body). Not cancel-safe once sent: do not
    /// drop this future on a timer, or a job GitLab already handed out is lost.
    pub async fn request_job(
        &self,
        token: &str,
        system_id: &str,
        last_update: Option<&str>,
    ) -> Result<JobRequest, ApiError> {
        const EP: &str = "POST /api/v4/jobs/request";
        let body = JobRequestBody {
            token,
            system_id: non_empty(system_id),
            last_update: last_update.filter(|s| !s.is_empty()),
            info: &self.info,
        };
        // Sent once: the poll loop is the retry, at its own pace, so a GitLab in trouble sees
        // one request per entry per `check_interval` (docs/gitlab-api.md, "Outages").
        let response = self
            .json_request(Method::POST, "jobs/request", JOB_REQUEST_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport(EP, &e))?;
        let status = response.status();
        let last_update = http::header_str(&response, "x-gitlab-last-update")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        match status.as_u16() {
            201 => {
                let raw = response
                    .bytes()
                    .await
                    .map_err(|e| http::transport(EP, &e))?;
                Ok(match parse_payload(&raw) {
                    Ok(payload) => JobRequest::Job {
                        payload: Box::new(payload),
                        raw,
                    },
                    Err(error) => {
                        let job = salvage_job_ref(&raw);
                        tracing::error!(job_id = job.as_ref().map(|j| j.id), %error, "unusable job payload");
                        JobRequest::Unusable { job, error, raw }
                    }
                })
            }
            204 => Ok(JobRequest::NoJob { last_update }),
            409 => Ok(JobRequest::Conflict),
            403 => Ok(JobRequest::Forbidden {
                message: error_message(response, &[token]).await,
            }),
            code => {
                let message = error_message(response, &[token]).await;
                Err(ApiError::Status {
                    endpoint: EP,
                    status: code,
                    message,
                })
            }
        }
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

async fn decode<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    response: reqwest::Response,
) -> Result<T, ApiError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| http::transport(endpoint, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
        endpoint,
        message: e.to_string(),
    })
}

/// What to register a runner with (legacy registration tokens only: with a `glrt-` token these
/// settings live in GitLab and cannot be sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterRequest {
    pub description: String,
    pub tags: Vec<String>,
    /// Forced to true when `tags` is empty, as GitLab requires.
    pub run_untagged: bool,
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: Option<String>,
    /// Seconds; `None`/0 = no limit.
    pub maximum_timeout: Option<u64>,
    pub paused: bool,
    pub maintenance_note: Option<String>,
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    token: &'a str,
    description: &'a str,
    tag_list: String,
    run_untagged: bool,
    locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_level: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maximum_timeout: Option<u64>,
    paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    maintenance_note: Option<&'a str>,
    info: &'a RunnerInfoBody,
}

#[derive(Serialize)]
struct TokenBody<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RunnerInfoBody>,
}

#[derive(Serialize)]
struct JobRequestBody<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update: Option<&'a str>,
    info: &'a RunnerInfoBody,
}

/// The answer to `register` and `reset_authentication_token`: the new token (an answer without
/// one is an error), its expiry (empty = none) and, from `register`, the runner's id.
async fn decode_token_reply(
    endpoint: &'static str,
    response: reqwest::Response,
) -> Result<Registration, ApiError> {
    let reply: RegistrationReply = decode(endpoint, response).await?;
    let token = reply
        .token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Decode {
            endpoint,
            message: "no token in the answer".into(),
        })?;
    Ok(Registration {
        id: reply.id,
        token,
        token_expires_at: reply.token_expires_at.filter(|s| !s.is_empty()),
    })
}

#[derive(Default, Deserialize)]
struct RegistrationReply {
    #[serde(default, deserialize_with = "super::lenient::u64")]
    id: u64,
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    token: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::opt_string")]
    token_expires_at: Option<String>,
}

/// A new runner: store all three in config.toml (with `token_obtained_at` = now).
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    pub id: u64,
    /// The runner authentication token. Secret.
    pub token: String,
    /// ISO 8601 as GitLab sent it; `None` when the token does not expire.
    pub token_expires_at: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("token", &format_args!("{}…", display_prefix(&self.token)))
            .field("token_expires_at", &self.token_expires_at)
            .finish()
    }
}

/// Answer of `/runners/verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// `None` with old GitLab versions that answer a bare `200`.
    pub id: Option<u64>,
    pub token_expires_at: Option<String>,
}

/// Answer of a token reset.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenReset {
    pub token: String,
    pub token_expires_at: Option<String>,
}

impl std::fmt::Debug for TokenReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReset")
            .field("token", &format_args!("{}…", display_prefix(&self.token)))
            .field("token_expires_at", &self.token_expires_at)
            .finish()
    }
}

/// `token_expires_at` (ISO 8601 / RFC 3339) → Unix seconds.
pub fn parse_expiry(value: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .ok()
        .map(|t| t.timestamp())
}

/// When to rotate a token obtained at `obtained_at` that expires at `expires_at` (Unix
/// seconds): three quarters into its lifetime, as gitlab-runner does.
pub fn rotation_due_at(obtained_at: i64, expires_at: i64) -> i64 {
    let lifetime = expires_at.saturating_sub(obtained_at).max(0);
    obtained_at.saturating_add(lifetime / 4 * 3 + lifetime % 4 * 3 / 4)
}

/// Outcome of a job request that reached GitLab.
///
/// `Debug` shows the payload redacted and only the length of `raw`.
pub enum JobRequest {
    /// 201 with a usable payload. `raw` is the body as received (for `ferry plan` and bug
    /// reports; it contains secrets).
    Job {
        payload: Box<JobPayload>,
        raw: Bytes,
    },
    /// 201 whose body could not be used. GitLab considers the job running on this runner:
    /// when `job` is known, report it failed (`runner_system_failure`).
    Unusable {
        job: Option<JobRef>,
        error: PayloadError,
        raw: Bytes,
    },
    /// HTTP 204: no job. `last_update` is the new `X-GitLab-Last-Update`, `None` when the reply had none
    /// (Workhorse long-poll answers): keep the previous value then.
    NoJob { last_update: Option<String> },
    /// 409: another runner got the job first. Ask again on the next tick.
    Conflict,
    /// 403: the runner token is invalid (runner deleted, token reset or expired). Counts as an
    /// unhealthy request.
    Forbidden { message: String },
}

impl std::fmt::Debug for JobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRequest::Job { payload, raw } => f
                .debug_struct("Job")
                .field("payload", payload)
                .field("raw_len", &raw.len())
                .finish(),
            JobRequest::Unusable { job, error, raw } => f
                .debug_struct("Unusable")
                .field("job", job)
                .field("error", error)
                .field("raw_len", &raw.len())
                .finish(),
            JobRequest::NoJob { last_update } => f
                .debug_struct("NoJob")
                .field("last_update", last_update)
                .finish(),
            JobRequest::Conflict => f.write_str("Conflict"),
            JobRequest::Forbidden { message } => f
                .debug_struct("Forbidden")
                .field("message", message)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 server that answers every request `200 {}` on a kept-alive connection and
    /// counts the connections it accepted.
    async fn keep_alive_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    async fn connections_for_two_requests(max_age: Option<Duration>) -> usize {
        let (url, accepted) = keep_alive_server().await;
        let client = GitLabClient::new(&ClientOptions {
            url,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            executor: None,
            shell: None,
            retry: RetryPolicy::default(),
        })
        .unwrap()
        .with_connection_max_age(max_age);
        for _ in 0..2 {
            let r = client
                .json_request(Method::GET, "version", Duration::from_secs(5))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn connections_older_than_connection_max_age_are_not_reused() {
        // kept alive: the second request reuses the first one's connection
        assert_eq!(connections_for_two_requests(None).await, 1);
        assert_eq!(
            connections_for_two_requests(Some(Duration::from_secs(3600))).await,
            1
        );
        // older than connection_max_age: the second request opens a new connection
        assert_eq!(
            connections_for_two_requests(Some(Duration::from_millis(100))).await,
            2
        );
    }

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(
            normalize_base("https://gitlab.example.com/").unwrap(),
            "https://gitlab.example.com"
        );
        assert_eq!(
            normalize_base("https://example.com/gitlab/ci").unwrap(),
            "https://example.com/gitlab"
        );
        assert_eq!(
            normalize_base("https://example.com/gitlab/ci/").unwrap(),
            "https://example.com/gitlab"
        );
        assert!(normalize_base("ftp://example.com").is_err());
        assert!(normalize_base("https://user:pw@example.com").is_err());
        assert!(normalize_base("example.com").is_err());
    }

    #[test]
    fn user_agent_names_ferry_and_platform() {
        let ua = user_agent();
        assert!(
            ua.starts_with(&format!("ferry {} (", env!("CARGO_PKG_VERSION"))),
            "{ua}"
        );
        assert!(
            ua.ends_with(&format!("{}/{})", std::env::consts::OS, go_arch())),
            "{ua}"
        );
    }

    #[test]
    fn expiry_and_rotation() {
        assert_eq!(parse_expiry("2026-01-01T00:00:00.000Z"), Some(1767225600));
        assert_eq!(parse_expiry("2026-01-01T01:00:00+01:00"), Some(1767225600));
        assert_eq!(parse_expiry("soon"), None);
        assert_eq!(rotation_due_at(1000, 2000), 1750);
        assert_eq!(rotation_due_at(0, 3), 2);
        assert_eq!(rotation_due_at(2000, 1000), 2000);
    }

    #[test]
    fn features_are_unique_and_exclude_unimplemented_ones() {
        let set: std::collections::BTreeSet<_> = FEATURES.iter().collect();
        assert_eq!(set.len(), FEATURES.len());
        for missing in [
            "vault_secrets",
            "two_phase_job_commit",
            "session",
            "terminal",
            "shared",
        ] {
            assert!(!FEATURES.contains(&missing), "{missing}");
        }
    }
}
