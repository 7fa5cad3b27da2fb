//! Fakes and fixtures shared by ferry's end-to-end tests.
pub mod fake_gitlab;
pub mod fake_k8s;
