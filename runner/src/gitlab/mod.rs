//! Everything that speaks GitLab's runner API: the job payload types and the HTTP client.

mod lenient;
pub mod payload;

pub use payload::{JobPayload, PayloadError, parse_payload, salvage_job_ref};
