//! How a job ended, in GitLab's words: the `failure_reason` of the final update and the
//! `CI_JOB_STATUS` after_script sees.

use std::fmt;

/// The reasons ferry reports. GitLab only accepts the ones it lists in the job's
/// `features.failure_reasons` (older servers list none); [`FailureReason::supported`] maps the
/// others down gitlab-runner's compatibility chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    ScriptFailure,
    RunnerSystemFailure,
    JobExecutionTimeout,
    ImagePullFailure,
    RunnerConfigurationError,
    RunnerExternalDependencyFailure,
    RunnerInterrupted,
    UnknownFailure,
}

impl FailureReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::RunnerConfigurationError => "runner_configuration_error",
            FailureReason::RunnerExternalDependencyFailure => "runner_external_dependency_failure",
            FailureReason::RunnerInterrupted => "runner_interrupted",
            FailureReason::UnknownFailure => "unknown_failure",
        }
    }

    /// The reason named `s` (as [`Self::as_str`] writes it), if it is one.
    pub fn parse(s: &str) -> Option<FailureReason> {
        use FailureReason::*;
        [
            ScriptFailure,
            RunnerSystemFailure,
            JobExecutionTimeout,
            ImagePullFailure,
            RunnerConfigurationError,
            RunnerExternalDependencyFailure,
            RunnerInterrupted,
            UnknownFailure,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// This reason, or the one gitlab-runner falls back to when this GitLab does not list it:
    /// `script_failure`, `runner_system_failure` and `job_execution_timeout` are always
    /// accepted; an image pull or external dependency failure becomes `runner_system_failure`,
    /// a configuration error `script_failure`, anything else `unknown_failure`.
    pub fn supported(self, listed: &[String]) -> FailureReason {
        use FailureReason::*;
        let mut r = self;
        loop {
            if matches!(r, ScriptFailure | RunnerSystemFailure | JobExecutionTimeout)
                || listed.iter().any(|s| s == r.as_str())
            {
                return r;
            }
            r = match r {
                ImagePullFailure | RunnerExternalDependencyFailure => RunnerSystemFailure,
                RunnerConfigurationError => ScriptFailure,
                _ => return UnknownFailure,
            };
        }
    }
}

/// Compares with GitLab's name of the reason.
impl PartialEq<&str> for FailureReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CI_JOB_STATUS` as after_script sees it (gitlab-runner's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Success,
    Failed,
    Canceled,
    TimedOut,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::TimedOut => "timedout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureReason::*;

    #[test]
    fn failure_reasons_fall_back_like_gitlab_runner() {
        let old: Vec<String> = vec![];
        assert_eq!(ScriptFailure.supported(&old), ScriptFailure);
        assert_eq!(ImagePullFailure.supported(&old), RunnerSystemFailure);
        assert_eq!(RunnerConfigurationError.supported(&old), ScriptFailure);
        assert_eq!(RunnerInterrupted.supported(&old), UnknownFailure);
        let new = vec![
            "runner_configuration_error".to_string(),
            "runner_interrupted".to_string(),
        ];
        assert_eq!(
            RunnerConfigurationError.supported(&new),
            RunnerConfigurationError
        );
        assert_eq!(RunnerInterrupted.supported(&new), RunnerInterrupted);
    }
}
