//! HTTP handlers: GitLab's runner API as GitLab answers it (docs/gitlab-api.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::state::{
    JobRecord, JobStatus, RequestRecord, RunnerOrigin, RunnerRecord, State, StoredArtifact,
    random_token,
};

pub struct Shared {
    pub state: Mutex<State>,
    /// Woken when the job queue changes (long polling).
    pub queue_changed: Notify,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not poison the fake for the other requests.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type S = AxState<Arc<Shared>>;

pub fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/api/v4/runners", post(register).delete(delete_runner))
        .route("/api/v4/runners/verify", post(verify))
        .route("/api/v4/runners/managers", delete(delete_manager))
        .route(
            "/api/v4/runners/reset_authentication_token",
            post(reset_token),
        )
        .route("/api/v4/jobs/request", post(request_job))
        .route("/api/v4/jobs/{id}", put(update_job))
        .route("/api/v4/jobs/{id}/trace", patch(patch_trace))
        .route(
            "/api/v4/jobs/{id}/artifacts",
            post(upload_artifacts).get(download_artifacts),
        )
        .route("/api/v4/projects/{id}/ci/lint", post(ci_lint))
        .route("/_storage/{secret}", get(storage));
    // Also served under a relative URL root, to test URL joining.
    Router::new()
        .merge(api.clone())
        .nest("/gitlab", api)
        .layer(middleware::from_fn_with_state(shared.clone(), control))
        .with_state(shared)
}

/// Outage, slow responses, request log.
async fn control(AxState(shared): S, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let user_agent = header_string(req.headers(), "user-agent");
    let content_type = header_string(req.headers(), "content-type");
    let (delay, outage) = {
        let s = shared.lock();
        (
            s.settings.delay,
            s.settings
                .outage_until
                .is_some_and(|t| Instant::now() < t)
                .then_some(s.settings.outage_status),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let response = match outage {
        Some(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let reason = status.canonical_reason().unwrap_or("");
            (status, format!("{} {reason}", status.as_u16())).into_response()
        }
        None => next.run(req).await,
    };
    shared.lock().requests.push(RequestRecord {
        at: Instant::now(),
        method,
        path,
        status: response.status().as_u16(),
        user_agent,
        content_type,
    });
    response
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /projects/:id/ci/lint` ([`super::ci_lint`]).
async fn ci_lint(
    AxState(shared): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = header_string(&headers, "private-token");
    let (status, body) = {
        let mut s = shared.lock();
        if let Some((status, page)) = s.ci_lint.proxy_page.clone() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return (
                status,
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                page,
            )
                .into_response();
        }
        super::ci_lint::answer(&mut s.ci_lint, token.as_deref(), &id, &body)
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn message(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "message": msg }))).into_response()
}

fn parse_json(body: &Bytes) -> Result<Value, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Box::new(message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - body is not a JSON object",
        ))),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn token_missing() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "token is missing"})),
    )
        .into_response()
}

fn created_runner_body(r: &RunnerRecord) -> Value {
    json!({"id": r.id, "token": r.token, "token_expires_at": r.token_expires_at})
}

async fn register(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token") else {
        return token_missing();
    };
    let mut s = shared.lock();
    if s.settings.registration_disabled {
        return message(
            StatusCode::GONE,
            "410 Gone - runner registration disallowed",
        );
    }
    if !s.registration_tokens.contains(token) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if v.get("active").is_some() && v.get("paused").is_some() {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - active, paused are mutually exclusive",
        );
    }
    let tags: Vec<String> = match v.get("tag_list") {
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let run_untagged = v
        .get("run_untagged")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if tags.is_empty() && !run_untagged {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": {"tags_list": ["can not be empty when runner is not allowed to pick untagged jobs"]}})),
        )
            .into_response();
    }
    let access_level = str_field(&v, "access_level")
        .unwrap_or("not_protected")
        .to_owned();
    if !matches!(access_level.as_str(), "not_protected" | "ref_protected") {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - access_level does not have a valid value",
        );
    }
    let id = s.next_runner_id;
    s.next_runner_id += 1;
    let runner = RunnerRecord {
        id,
        token: random_token(""),
        origin: RunnerOrigin::Registered,
        description: str_field(&v, "description").unwrap_or("").to_owned(),
        tags,
        run_untagged,
        locked: v.get("locked").and_then(Value::as_bool).unwrap_or(true),
        access_level,
        maximum_timeout: v.get("maximum_timeout").and_then(Value::as_u64),
        paused: v.get("paused").and_then(Value::as_bool).unwrap_or(false),
        maintenance_note: str_field(&v, "maintenance_note").unwrap_or("").to_owned(),
        token_expires_at: s.settings.token_expires_at.clone(),
        managers: Default::default(),
        info: v.get("info").cloned().unwrap_or(Value::Null),
    };
    let body = created_runner_body(&runner);
    s.runners.push(runner);
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn record_contact(runner: &mut RunnerRecord, v: &Value) {
    if let Some(id) = str_field(v, "system_id") {
        runner.managers.insert(id.to_owned());
    }
    if let Some(info) = v.get("info").filter(|i| i.is_object()) {
        runner.info = info.clone();
    }
}

async fn verify(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token") else {
        return token_missing();
    };
    let mut s = shared.lock();
    let Some(runner) = s.runner_by_token_mut(token) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    record_contact(runner, &v);
    (StatusCode::OK, axum::Json(created_runner_body(runner))).into_response()
}

async fn delete_runner(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token") else {
        return token_missing();
    };
    let mut s = shared.lock();
    let before = s.runners.len();
    s.runners.retain(|r| r.token != token);
    if s.runners.len() == before {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_manager(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (Some(token), Some(system_id)) = (str_field(&v, "token"), str_field(&v, "system_id"))
    else {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - token, system_id are missing",
        );
    };
    let mut s = shared.lock();
    let Some(runner) = s.runner_by_token_mut(token) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    if !runner.managers.remove(system_id) {
        return message(StatusCode::NOT_FOUND, "404 Runner manager not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn reset_token(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token") else {
        return token_missing();
    };
    let mut s = shared.lock();
    let expires = s.settings.token_expires_at.clone();
    let Some(runner) = s.runner_by_token_mut(token) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    let prefix = if runner.origin == RunnerOrigin::Created {
        "glrt-"
    } else {
        ""
    };
    runner.token = random_token(prefix);
    runner.token_expires_at = expires;
    let body = json!({"token": runner.token, "token_expires_at": runner.token_expires_at});
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn no_job(version: Option<&str>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert("X-GitLab-Last-Update", v);
    }
    r
}

/// `/jobs/request`; an answer that hands out a job comes `job_answer_delay` after the job was
/// assigned.
async fn request_job(AxState(shared): S, body: Bytes) -> Response {
    let answer_delay = shared.lock().settings.job_answer_delay;
    let response = assign_job(AxState(shared), body).await;
    if let Some(d) = answer_delay.filter(|_| response.status() == StatusCode::CREATED) {
        tokio::time::sleep(d).await;
    }
    response
}

async fn assign_job(AxState(shared): S, body: Bytes) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token").map(str::to_owned) else {
        return token_missing();
    };
    let last_update = str_field(&v, "last_update").map(str::to_owned);
    let wait = {
        let mut s = shared.lock();
        s.job_requests.push(v.clone());
        if let Some(status) = s.injected_request_statuses.pop_front() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("");
            return message(status, &format!("{} {reason}", status.as_u16()));
        }
        let Some(runner) = s.runner_by_token_mut(&token) else {
            return message(StatusCode::FORBIDDEN, "403 Forbidden");
        };
        record_contact(runner, &v);
        if runner.paused {
            let version = s.queue_version.clone();
            return no_job(Some(&version));
        }
        // Workhorse: hold requests whose last_update is current until the queue changes.
        match (s.settings.long_poll, &last_update) {
            (Some(d), Some(lu)) if *lu == s.queue_version => Some(d),
            _ => None,
        }
    };
    if let Some(duration) = wait {
        let notified = shared.queue_changed.notified();
        tokio::pin!(notified);
        // Register before re-checking so a push in between is not missed.
        notified.as_mut().enable();
        let changed = shared.lock().queue_version != last_update.clone().unwrap_or_default();
        if !changed {
            let _ = tokio::time::timeout(duration, notified).await;
        }
        // Workhorse answers 204 itself, without X-GitLab-Last-Update.
        return no_job(None);
    }
    let mut s = shared.lock();
    // Rails shortcut: nothing changed since the runner last asked.
    if last_update.as_deref() == Some(s.queue_version.as_str()) {
        let version = s.queue_version.clone();
        return no_job(Some(&version));
    }
    let Some(runner) = s.runner_by_token(&token).cloned() else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    let Some(queued) = s.take_job_for(&runner) else {
        let version = s.queue_version.clone();
        return no_job(Some(&version));
    };
    let mut payload = queued.payload.clone();
    let dependencies: Vec<Value> = queued
        .dependencies
        .iter()
        .filter_map(|dep| s.jobs.get(dep))
        .map(|dep| {
            let archive = dep.artifacts.iter().find(|a| a.artifact_type == "archive");
            json!({
                "id": dep.id,
                "name": dep.name,
                // Current GitLab: the running job's own token authenticates the download.
                "token": queued.token,
                "artifacts_file": archive.map(|a| json!({"filename": a.filename, "size": a.data.len()})),
            })
        })
        .collect();
    if let Value::Object(m) = &mut payload
        && !queued.dependencies.is_empty()
    {
        m.insert("dependencies".into(), Value::Array(dependencies));
    }
    let final_202 = s.settings.final_update_202;
    s.jobs
        .insert(queued.id, JobRecord::new(&queued, runner.id, final_202));
    (StatusCode::CREATED, axum::Json(payload)).into_response()
}

fn with_job_status(mut r: Response, status: JobStatus) -> Response {
    r.headers_mut()
        .insert("Job-Status", HeaderValue::from_static(status.as_str()));
    r
}

fn with_interval(mut r: Response, interval: &Option<String>) -> Response {
    if let Some(v) = interval
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        r.headers_mut().insert("X-GitLab-Trace-Update-Interval", v);
    }
    r
}

fn job_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("job-token").and_then(|v| v.to_str().ok())
}

async fn update_job(
    AxState(shared): S,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(token) = str_field(&v, "token") else {
        return token_missing();
    };
    let mut s = shared.lock();
    let interval = s.settings.trace_update_interval.clone();
    let Some(job) = s.jobs.get_mut(&id) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    if job.token != token || job_token(&headers).is_some_and(|h| h != token) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    job.updates.push(v.clone());
    if !job.status.is_active() {
        let r = message(
            StatusCode::FORBIDDEN,
            "403 Forbidden - Job is not processing on runner",
        );
        return with_job_status(r, job.status);
    }
    match str_field(&v, "state") {
        Some("running") | Some("pending") => with_interval(
            with_job_status((StatusCode::OK, "200").into_response(), job.status),
            &interval,
        ),
        Some(state @ ("success" | "failed")) => {
            if job.final_202_left > 0 {
                job.final_202_left -= 1;
                return with_interval((StatusCode::ACCEPTED, "202").into_response(), &interval);
            }
            job.status = match (job.status, state) {
                (JobStatus::Canceling, _) => JobStatus::Canceled,
                (_, "success") => JobStatus::Success,
                _ => JobStatus::Failed,
            };
            if state == "failed" {
                job.failure_reason = Some(
                    str_field(&v, "failure_reason")
                        .unwrap_or("unknown_failure")
                        .to_owned(),
                );
            }
            job.exit_code = v.get("exit_code").and_then(Value::as_i64);
            job.checksum = v
                .pointer("/output/checksum")
                .or_else(|| v.get("checksum"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            job.bytesize = v.pointer("/output/bytesize").and_then(Value::as_u64);
            with_interval(
                with_job_status((StatusCode::OK, "200").into_response(), job.status),
                &interval,
            )
        }
        _ => message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - state does not have a valid value",
        ),
    }
}

async fn patch_trace(
    AxState(shared): S,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = shared.lock();
    let interval = s.settings.trace_update_interval.clone();
    let Some(job) = s.jobs.get_mut(&id) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    if job_token(&headers) != Some(job.token.as_str()) {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    // GitLab's `debug_trace=true` turns the job's log into a debug log, for good.
    if query.get("debug_trace").map(String::as_str) == Some("true") {
        job.debug_trace = true;
    }
    if job.trace_not_found {
        return message(StatusCode::NOT_FOUND, "404 Not Found");
    }
    if !job.status.is_active() {
        let r = message(
            StatusCode::FORBIDDEN,
            "403 Forbidden - Job is not processing on runner",
        );
        return with_job_status(r, job.status);
    }
    if headers.get("content-type").is_none() {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - Content-Type missing",
        );
    }
    let Some(range) = headers.get("content-range").and_then(|v| v.to_str().ok()) else {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - Content-Range missing",
        );
    };
    let parsed = range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    let Some((start, end)) = parsed else {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - invalid Content-Range",
        );
    };
    let len = job.trace.len() as u64;
    if start != len {
        let mut r = (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "416 Range Not Satisfiable",
        )
            .into_response();
        r.headers_mut().insert(
            "Range",
            HeaderValue::from_str(&format!("0-{len}")).unwrap_or(HeaderValue::from_static("0-0")),
        );
        return r;
    }
    // Stricter than GitLab (which ignores the end), as strict as gitlab-runner-mock: the end
    // is inclusive and must match the body.
    if body.is_empty() || end != start + body.len() as u64 - 1 {
        return message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - Content-Range end does not match the body",
        );
    }
    job.trace.extend_from_slice(&body);
    job.patches += 1;
    let mut r = (StatusCode::ACCEPTED, "202").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", job.trace.len())) {
        r.headers_mut().insert("Range", v);
    }
    with_interval(with_job_status(r, job.status), &interval)
}

async fn upload_artifacts(
    AxState(shared): S,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    // Workhorse reads the whole upload before Rails answers, whatever the answer: a reply sent
    // while the client is still writing the body would reach it as a broken pipe instead.
    let body = read_upload(multipart).await;

    // GitLab "behind another host": uploads must go there (official runner: 307 handling).
    let redirect = {
        let s = shared.lock();
        match &s.settings.upload_redirect_host {
            Some(host) if header_string(&headers, "host").as_deref() != Some(host.as_str()) => {
                let scheme = if s.base_url.starts_with("https") {
                    "https"
                } else {
                    "http"
                };
                Some(format!("{scheme}://{host}{uri}"))
            }
            _ => None,
        }
    };
    if let Some(location) = redirect {
        let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert("Location", v);
        }
        return r;
    }
    {
        let s = shared.lock();
        let Some(job) = s.jobs.get(&id) else {
            return message(StatusCode::FORBIDDEN, "403 Forbidden");
        };
        if job_token(&headers) != Some(job.token.as_str()) || !job.status.is_active() {
            return message(StatusCode::FORBIDDEN, "403 Forbidden");
        }
    }
    let (file, fields) = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some((filename, data)) = file else {
        return message(StatusCode::BAD_REQUEST, "400 Bad request - file is missing");
    };
    let param = |k: &str| {
        fields
            .get(k)
            .or_else(|| query.get(k))
            .filter(|s| !s.is_empty())
            .cloned()
    };
    let artifact = StoredArtifact {
        filename,
        artifact_type: param("artifact_type").unwrap_or_else(|| "archive".into()),
        artifact_format: param("artifact_format").unwrap_or_else(|| "zip".into()),
        expire_in: param("expire_in"),
        data,
    };
    if !shared.lock().settings.hold_artifact_uploads {
        return store_artifact(&shared, id, artifact);
    }
    // Held: the upload is stored once released, whether or not its client is still there
    // (the task outlives this handler).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let held = shared.clone();
    held.lock().held_artifact_uploads += 1;
    tokio::spawn(async move {
        while held.lock().settings.hold_artifact_uploads {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.lock().held_artifact_uploads -= 1;
        let _ = tx.send(store_artifact(&held, id, artifact));
    });
    rx.await
        .unwrap_or_else(|_| message(StatusCode::INTERNAL_SERVER_ERROR, "500 held upload lost"))
}

/// Stores an uploaded artifact as GitLab's `Ci::JobArtifacts::CreateService#execute` does: an
/// upload of a type the job already has succeeds without storing anything when its bytes
/// (SHA-256) are the same, and fails with 400 otherwise (the unique index on job and type).
fn store_artifact(shared: &Shared, id: u64, artifact: StoredArtifact) -> Response {
    let mut s = shared.lock();
    if s.settings
        .max_artifact_size
        .is_some_and(|max| artifact.data.len() as u64 > max)
    {
        return message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        );
    }
    let Some(job) = s.jobs.get_mut(&id) else {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    match job
        .artifacts
        .iter()
        .find(|a| a.artifact_type == artifact.artifact_type)
    {
        Some(existing) if existing.data == artifact.data => {}
        Some(_) => {
            return message(
                StatusCode::BAD_REQUEST,
                "another artifact of the same type already exists",
            );
        }
        None => job.artifacts.push(artifact),
    }
    (StatusCode::CREATED, "201").into_response()
}

type UploadedFile = Option<(String, Vec<u8>)>;

/// The multipart upload: the `file` part (name, bytes) and the other fields; a 400 reply when it
/// is not well-formed multipart.
async fn read_upload(
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(UploadedFile, HashMap<String, String>), Response> {
    let Ok(mut multipart) = multipart else {
        return Err(message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - not multipart",
        ));
    };
    let broken = || {
        message(
            StatusCode::BAD_REQUEST,
            "400 Bad request - broken multipart",
        )
    };
    let mut file = None;
    let mut fields = HashMap::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let filename = field.file_name().map(str::to_owned);
                let Ok(data) = field.bytes().await else {
                    return Err(broken());
                };
                if name == "file" {
                    file = Some((filename.unwrap_or_default(), data.to_vec()));
                } else {
                    fields.insert(name, String::from_utf8_lossy(&data).into_owned());
                }
            }
            Ok(None) => return Ok((file, fields)),
            Err(_) => return Err(broken()),
        }
    }
}

async fn download_artifacts(
    AxState(shared): S,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let mut s = shared.lock();
    let token = job_token(&headers).unwrap_or("");
    // Current GitLab: a running job's token ("via dependent job"); old GitLab: the
    // dependency's own token.
    let authorized = !token.is_empty()
        && s.jobs
            .values()
            .any(|j| j.token == token && (j.status.is_active() || j.id == id));
    if !authorized {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let Some(archive) = s
        .jobs
        .get(&id)
        .and_then(|j| j.artifacts.iter().find(|a| a.artifact_type == "archive"))
        .map(|a| a.data.clone())
    else {
        return message(StatusCode::NOT_FOUND, "404 Not Found");
    };
    if s.settings.artifact_redirect {
        let secret = random_token("sig-");
        let location = format!("{}/_storage/{secret}?X-Amz-Signature=abc", s.base_url);
        s.storage_links.insert(secret, id);
        let mut r = StatusCode::FOUND.into_response();
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert("Location", v);
        }
        return r;
    }
    (
        StatusCode::OK,
        [("Content-Type", "application/zip")],
        archive,
    )
        .into_response()
}

async fn storage(AxState(shared): S, Path(secret): Path<String>, headers: HeaderMap) -> Response {
    let mut s = shared.lock();
    if headers.contains_key("job-token") {
        s.storage_requests_with_job_token += 1;
    }
    let Some(id) = s.storage_links.get(&secret).copied() else {
        return (
            StatusCode::FORBIDDEN,
            "<Error><Code>AccessDenied</Code></Error>",
        )
            .into_response();
    };
    match s
        .jobs
        .get(&id)
        .and_then(|j| j.artifacts.iter().find(|a| a.artifact_type == "archive"))
    {
        Some(a) => (StatusCode::OK, a.data.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "<Error><Code>NoSuchKey</Code></Error>",
        )
            .into_response(),
    }
}
