//! `ARTIFACT_COMPRESSION_LEVEL` and `CACHE_COMPRESSION_LEVEL`: how hard ferry compresses the
//! archives it writes, with gitlab-runner's names and mapping (its `GetCompressionLevel` and the
//! level tables of its fastzip and tar + zstd archivers; docs/variables.md).

use serde::Serialize;

/// A compression level by gitlab-runner's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionLevel {
    /// Zip entries are stored uncompressed; zstd at its fastest.
    Fastest,
    Fast,
    #[default]
    Default,
    Slow,
    Slowest,
}

impl CompressionLevel {
    /// The value of `variable` (`ARTIFACT_COMPRESSION_LEVEL` or `CACHE_COMPRESSION_LEVEL`):
    /// `fastest`, `fast`, `default`, `slow`, `slowest`, matched exactly as gitlab-runner does.
    /// Unset or empty is `default`; anything else is `default` with gitlab-runner's warning,
    /// prefixed with the variable's name.
    pub fn parse(variable: &str, value: Option<&str>) -> (CompressionLevel, Option<String>) {
        let level = match value.unwrap_or("") {
            "fastest" => CompressionLevel::Fastest,
            "fast" => CompressionLevel::Fast,
            "default" | "" => CompressionLevel::Default,
            "slow" => CompressionLevel::Slow,
            "slowest" => CompressionLevel::Slowest,
            other => {
                return (
                    CompressionLevel::Default,
                    Some(format!(
                        "{variable}: compression level {other:?} is invalid, falling back to default"
                    )),
                );
            }
        };
        (level, None)
    }

    /// The deflate level of zip entries (gitlab-runner's `flateLevels`: 0, 1, 5, 7, 9);
    /// `None` for `fastest`, whose entries are stored, as gitlab-runner's fastzip archiver
    /// does (`zip.Store`).
    pub fn deflate(self) -> Option<i64> {
        match self {
            CompressionLevel::Fastest => None,
            CompressionLevel::Fast => Some(1),
            CompressionLevel::Default => Some(5),
            CompressionLevel::Slow => Some(7),
            CompressionLevel::Slowest => Some(9),
        }
    }

    /// The zstd level of tar + zstd caches. gitlab-runner's klauspost encoder levels are
    /// `SpeedFastest` (fastest and fast), `SpeedDefault`, `SpeedBetterCompression` and
    /// `SpeedBestCompression`, which its documentation equates with zstd levels 1, 3, 7 and 11.
    pub fn zstd(self) -> i32 {
        match self {
            CompressionLevel::Fastest | CompressionLevel::Fast => 1,
            CompressionLevel::Default => 3,
            CompressionLevel::Slow => 7,
            CompressionLevel::Slowest => 11,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == CompressionLevel::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gitlab_runner_levels() {
        let table = [
            ("fastest", None, 1),
            ("fast", Some(1), 1),
            ("default", Some(5), 3),
            ("slow", Some(7), 7),
            ("slowest", Some(9), 11),
        ];
        for (name, deflate, zstd) in table {
            let (level, warning) = CompressionLevel::parse("X", Some(name));
            assert_eq!(warning, None, "{name}");
            assert_eq!(level.deflate(), deflate, "{name}");
            assert_eq!(level.zstd(), zstd, "{name}");
        }
    }

    #[test]
    fn unset_is_default_and_invalid_warns() {
        assert_eq!(
            CompressionLevel::parse("X", None),
            (CompressionLevel::Default, None)
        );
        assert_eq!(
            CompressionLevel::parse("X", Some("")),
            (CompressionLevel::Default, None)
        );
        // gitlab-runner matches the names exactly: `FAST` and ` fast` are invalid.
        for bad in ["FAST", " fast", "9", "best"] {
            let (level, warning) = CompressionLevel::parse("CACHE_COMPRESSION_LEVEL", Some(bad));
            assert_eq!(level, CompressionLevel::Default);
            assert_eq!(
                warning.as_deref(),
                Some(
                    format!(
                        "CACHE_COMPRESSION_LEVEL: compression level {bad:?} is invalid, falling back to default"
                    )
                    .as_str()
                )
            );
        }
    }
}
