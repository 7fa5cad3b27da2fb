//! `pull_policy`, as config.toml (`[runners.docker] pull_policy`, `allowed_pull_policies`) and a
//! job's `image:pull_policy` spell it (docs/configuration.md, docs/docker-executor.md).

use serde::Serialize;

/// When the Docker executor pulls an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The spelling used in config.toml and in `image:pull_policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }

    /// Parses `always`, `if-not-present` or `never`.
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for p in [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ] {
            assert_eq!(PullPolicy::parse(p.as_str()), Some(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(PullPolicy::parse("IfNotPresent"), None);
        assert_eq!(PullPolicy::parse(""), None);
    }
}
