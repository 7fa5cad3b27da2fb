//! `when:` of a job's steps, artifacts and caches.

use serde::Serialize;

/// When a step runs, or artifacts/a cache are uploaded: after a job that has succeeded so far,
/// after one that failed, or always. Serialized as GitLab spells it (`on_success`, `on_failure`,
/// `always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    /// GitLab's value. Empty means `on_success`; so does a value ferry does not know (ferry
    /// treats what it cannot read as the default rather than failing the job).
    pub fn parse(s: &str) -> When {
        match s {
            "on_failure" => When::OnFailure,
            "always" => When::Always,
            _ => When::OnSuccess,
        }
    }

    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
        }
    }

    /// Whether it applies after a job that succeeded (`true`) or failed (`false`).
    pub fn applies(self, job_succeeded: bool) -> bool {
        match self {
            When::Always => true,
            When::OnSuccess => job_succeeded,
            When::OnFailure => !job_succeeded,
        }
    }
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_apply() {
        assert!(When::parse("").applies(true));
        assert!(!When::parse("on_success").applies(false));
        assert!(When::parse("on_failure").applies(false));
        assert!(!When::parse("on_failure").applies(true));
        assert!(When::parse("always").applies(false));
        assert!(When::parse("always").applies(true));
        assert_eq!(When::parse("manual"), When::OnSuccess);
        for w in [When::OnSuccess, When::OnFailure, When::Always] {
            assert_eq!(When::parse(w.as_str()), w);
            assert_eq!(w.to_string(), w.as_str());
        }
    }
}
