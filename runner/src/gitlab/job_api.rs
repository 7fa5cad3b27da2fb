//! `impl JobApi for GitLabClient`: the job-scoped calls (docs/gitlab-api.md).

use std::path::Path;

use bytes::Bytes;
use futures::TryStreamExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::client::{CALL_TIMEOUT, GitLabClient, TRANSFER_TIMEOUT};
use super::http::{self, RetryPolicy, error_message, send_with_retry};
use crate::api::{
    ApiError, ArtifactMeta, JobApi, JobRef, JobState, JobUpdate, TraceReply, UpdateReply,
};

/// How many redirects an artifacts download follows.
const MAX_REDIRECTS: usize = 5;

#[derive(Serialize)]
struct UpdateBody<'a> {
    token: &'a str,
    state: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    /// Deprecated duplicate of `output.checksum`; still sent, as the official runner does.
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Output<'a>>,
}

#[derive(Serialize)]
struct Output<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytesize: Option<u64>,
}

impl GitLabClient {
    fn job_request(&self, method: Method, path: &str, job: &JobRef) -> reqwest::RequestBuilder {
        self.http()
            .request(method, self.url(path))
            .header("JOB-TOKEN", &job.token)
    }

    async fn upload_once(
        &self,
        job: &JobRef,
        meta: &ArtifactMeta,
        path: &Path,
        base: &str,
    ) -> Result<reqwest::Response, ApiError> {
        const EP: &str = "POST /api/v4/jobs/:id/artifacts";
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| ApiError::Io(format!("artifacts archive {}: {e}", path.display())))?
            .len();
        let url = format!("{base}/api/v4/jobs/{}/artifacts", job.id);
        let mut query: Vec<(&str, &str)> = vec![
            ("artifact_format", meta.artifact_format.as_str()),
            ("artifact_type", meta.artifact_type.as_str()),
        ];
        if let Some(expire_in) = meta.expire_in.as_deref().filter(|s| !s.is_empty()) {
            query.push(("expire_in", expire_in));
        }
        let policy = self.retry();
        // The file is reopened for every attempt so a retry streams it again from the start.
        send_with_retry(EP, policy, || {
            let file = std::fs::File::open(path)
                .map_err(|e| ApiError::Io(format!("artifacts archive {}: {e}", path.display())))?;
            let progress = meta.progress.clone();
            let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file))
                .inspect_ok(move |chunk| progress.add(chunk.len() as u64));
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                len,
            )
            .file_name(meta.name.clone())
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::Io(e.to_string()))?;
            // Type and format go both in the query (as gitlab-runner sends them) and as form
            // fields (which is what gitlab-runner-mock reads); GitLab accepts either.
            let form = reqwest::multipart::Form::new()
                .text("artifact_format", meta.artifact_format.clone())
                .text("artifact_type", meta.artifact_type.clone())
                .part("file", part);
            Ok(self
                .http()
                .post(&url)
                .query(&query)
                .header("JOB-TOKEN", &job.token)
                .timeout(TRANSFER_TIMEOUT)
                .multipart(form))
        })
        .await
    }

    async fn download_once(
        &self,
        job_id: u64,
        token: &str,
        dest: &Path,
        policy: RetryPolicy,
    ) -> Result<(), ApiError> {
        const EP: &str = "GET /api/v4/jobs/:id/artifacts";
        let first = self.url(&format!("jobs/{job_id}/artifacts?direct_download=true"));
        let mut response = send_with_retry(EP, policy, || {
            Ok(self
                .http()
                .get(&first)
                .header("JOB-TOKEN", token)
                .timeout(TRANSFER_TIMEOUT))
        })
        .await?;
        let mut redirects = 0;
        while response.status().is_redirection() {
            let location = http::header_str(&response, "location")
                .map(str::to_owned)
                .ok_or(ApiError::Decode {
                    endpoint: EP,
                    message: "redirect without Location".into(),
                })?;
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(ApiError::Status {
                    endpoint: EP,
                    status: response.status().as_u16(),
                    message: format!("more than {MAX_REDIRECTS} redirects"),
                });
            }
            let next = response
                .url()
                .join(&location)
                .map_err(|e| ApiError::Decode {
                    endpoint: EP,
                    message: format!("invalid redirect location: {e}"),
                })?;
            // Object storage URLs are pre-signed: no GitLab credentials are forwarded.
            response = send_with_retry(EP, policy, || {
                Ok(self.http().get(next.clone()).timeout(TRANSFER_TIMEOUT))
            })
            .await?;
        }
        let status = response.status();
        if status != StatusCode::OK {
            let detail = error_message(response, &[token]).await;
            let message = match status.as_u16() {
                404 => format!(
                    "artifacts of job {job_id} not found (expired, erased or never uploaded): {detail}"
                ),
                401 | 403 => format!("access to the artifacts of job {job_id} denied: {detail}"),
                _ => format!("downloading the artifacts of job {job_id}: {detail}"),
            };
            return Err(ApiError::Status {
                endpoint: EP,
                status: status.as_u16(),
                message,
            });
        }
        let io = |e: std::io::Error| ApiError::Io(format!("writing {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| http::transport(EP, &e))?
        {
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        Ok(())
    }
}

impl JobApi for GitLabClient {
    /// `PUT /api/v4/jobs/:id`. Sent once: the trace uploader repeats it at its own pace (the
    /// keep-alive at the next tick, the final update with its back-off).
    async fn update_job(&self, job: &JobRef, update: &JobUpdate) -> Result<UpdateReply, ApiError> {
        const EP: &str = "PUT /api/v4/jobs/:id";
        let output = (update.checksum.is_some() || update.bytesize.is_some()).then_some(Output {
            checksum: update.checksum.as_deref(),
            bytesize: update.bytesize,
        });
        let body = UpdateBody {
            token: &job.token,
            state: update.state,
            failure_reason: update
                .failure_reason
                .as_deref()
                .filter(|_| update.state == JobState::Failed),
            exit_code: update.exit_code,
            checksum: update.checksum.as_deref(),
            output,
        };
        let path = format!("jobs/{}", job.id);
        let send = send_with_retry(EP, RetryPolicy::none(), || {
            Ok(self
                .job_request(Method::PUT, &path, job)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(CALL_TIMEOUT)
                .json(&body))
        });
        let response = self.observed("update_job", "put", send).await?;
        let status = response.status();
        let interval = http::update_interval(&response);
        match status.as_u16() {
            200 => Ok(UpdateReply::Accepted {
                status: http::job_status(&response),
                interval,
            }),
            202 => Ok(UpdateReply::Pending { interval }),
            403 | 404 => {
                let remote = http::job_status(&response);
                let message = error_message(response, &[&job.token]).await;
                tracing::info!(job_id = job.id, status = status.as_u16(), ?remote, %message, "job gone");
                Ok(UpdateReply::Gone)
            }
            code => {
                let message = error_message(response, &[&job.token]).await;
                Err(ApiError::Status {
                    endpoint: EP,
                    status: code,
                    message,
                })
            }
        }
    }

    /// `PATCH /api/v4/jobs/:id/trace`. Never retried here: the trace uploader owns offsets and
    /// retries, and a blind resend could duplicate or misplace bytes.
    async fn patch_trace(
        &self,
        job: &JobRef,
        offset: u64,
        chunk: Bytes,
    ) -> Result<TraceReply, ApiError> {
        const EP: &str = "PATCH /api/v4/jobs/:id/trace";
        if chunk.is_empty() {
            // GitLab's contract: never send an empty body. Nothing to append is "accepted".
            return Ok(TraceReply::Accepted {
                len: None,
                status: None,
                interval: None,
            });
        }
        let end = offset + chunk.len() as u64 - 1;
        let send = async {
            self.job_request(Method::PATCH, &format!("jobs/{}/trace", job.id), job)
                .query(&[(
                    "debug_trace",
                    if job.debug_trace { "true" } else { "false" },
                )])
                .header(reqwest::header::CONTENT_RANGE, format!("{offset}-{end}"))
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .timeout(CALL_TIMEOUT)
                .body(chunk)
                .send()
                .await
                .map_err(|e| http::transport(EP, &e))
        };
        let response = self.observed("patch_trace", "patch", send).await?;
        let status = response.status();
        match status.as_u16() {
            202 => Ok(TraceReply::Accepted {
                len: http::range_len(&response),
                status: http::job_status(&response),
                interval: http::update_interval(&response),
            }),
            416 => match http::range_len(&response) {
                Some(len) => Ok(TraceReply::RangeMismatch { len }),
                None => Err(ApiError::Decode {
                    endpoint: EP,
                    message: format!(
                        "416 for job {} without a readable `Range: 0-<length>` header",
                        job.id
                    ),
                }),
            },
            403 => Ok(TraceReply::Gone {
                status: http::job_status(&response),
            }),
            404 => Ok(TraceReply::NotFound),
            code => {
                let message = error_message(response, &[&job.token]).await;
                Err(ApiError::Status {
                    endpoint: EP,
                    status: code,
                    message,
                })
            }
        }
    }

    /// `POST /api/v4/jobs/:id/artifacts`, streamed from `path`. 429/5xx retried (the file is
    /// re-read); one `307` to another host is followed; 403 and 413 are final.
    async fn upload_artifacts(
        &self,
        job: &JobRef,
        meta: &ArtifactMeta,
        path: &Path,
    ) -> Result<(), ApiError> {
        const EP: &str = "POST /api/v4/jobs/:id/artifacts";
        let mut response = self.upload_once(job, meta, path, self.base_url()).await?;
        if response.status() == StatusCode::TEMPORARY_REDIRECT {
            // GitLab behind another host: take scheme and host of Location, keep our path.
            let location =
                http::header_str(&response, "location").and_then(|l| reqwest::Url::parse(l).ok());
            if let Some(loc) = location {
                let mut base = format!("{}://{}", loc.scheme(), loc.host_str().unwrap_or_default());
                if let Some(port) = loc.port() {
                    base.push_str(&format!(":{port}"));
                }
                let ours = reqwest::Url::parse(self.base_url()).ok();
                base.push_str(
                    ours.as_ref()
                        .map(|u| u.path().trim_end_matches('/'))
                        .unwrap_or(""),
                );
                response = self.upload_once(job, meta, path, &base).await?;
            }
        }
        let status = response.status();
        match status.as_u16() {
            200 | 201 => Ok(()),
            code => {
                let detail = error_message(response, &[&job.token]).await;
                let message = match code {
                    413 => format!(
                        "artifacts {:?} of job {} are too large for GitLab (maximum artifacts size exceeded): {detail}",
                        meta.name, job.id
                    ),
                    403 => format!(
                        "uploading artifacts {:?}: job {} is no longer running or its token is invalid: {detail}",
                        meta.name, job.id
                    ),
                    _ => format!(
                        "uploading artifacts {:?} of job {}: {detail}",
                        meta.name, job.id
                    ),
                };
                Err(ApiError::Status {
                    endpoint: EP,
                    status: code,
                    message,
                })
            }
        }
    }

    /// `GET /api/v4/jobs/:id/artifacts?direct_download=true` into `dest`; redirects are followed
    /// without the job token; 429/5xx retried.
    async fn download_artifacts(
        &self,
        job_id: u64,
        token: &str,
        dest: &Path,
    ) -> Result<(), ApiError> {
        let result = self.download_once(job_id, token, dest, self.retry()).await;
        if result.is_err() {
            // Never leave a truncated archive behind for the extractor.
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}
