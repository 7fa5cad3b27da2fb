//! Everything that speaks GitLab's runner API: the job payload types and the HTTP client.
//!
//! - [`payload`]: the job payload (lenient serde types) and [`parse_payload`].
//! - [`GitLabClient`]: registration, verify, unregister, token reset, job requests
//!   (inherent methods) and the job-scoped calls (`impl JobApi`).

mod client;
pub mod http;
mod job_api;
mod lenient;
pub mod payload;

pub use client::{
    ApiObserver, CALL_TIMEOUT, ClientError, ClientOptions, FEATURES, GitLabClient,
    JOB_REQUEST_TIMEOUT, JobRequest, RegisterRequest, Registration, TRANSFER_TIMEOUT, TokenReset,
    Verification, install_crypto_provider, normalize_base, parse_expiry, rotation_due_at,
    user_agent,
};
pub use http::RetryPolicy;
pub use payload::{JobPayload, PayloadError, parse_payload, salvage_job_ref};
