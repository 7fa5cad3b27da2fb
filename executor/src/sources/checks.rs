//! Refusing spec values that would be dangerous with git running on the host.

use super::{SourceError, SourceSpec};

/// Fetch flags a job may set through `GIT_FETCH_EXTRA_FLAGS`. git runs on the host, so
/// anything that can name a program (`--upload-pack`) or a host path must be refused.
const FETCH_FLAGS: &[&str] = &[
    "--prune",
    "-p",
    "--prune-tags",
    "-P",
    "--quiet",
    "-q",
    "--verbose",
    "-v",
    "--no-tags",
    "-n",
    "--tags",
    "-t",
    "--force",
    "-f",
    "--progress",
    "--no-progress",
    "--jobs",
    "-j",
    "--filter",
    "--no-filter",
    "--no-write-fetch-head",
    "--write-fetch-head",
    "--deepen",
    "--shallow-since",
    "--shallow-exclude",
    "--update-shallow",
    "--refetch",
    "--atomic",
    "--ipv4",
    "-4",
    "--ipv6",
    "-6",
    "--no-auto-gc",
    "--auto-gc",
    "--no-auto-maintenance",
    "--show-forced-updates",
    "--no-show-forced-updates",
    "--server-option",
    "-o",
    "--no-recurse-submodules",
    "--set-upstream",
    "--append",
    "-a",
];

const SUBMODULE_UPDATE_FLAGS: &[&str] = &[
    "--remote",
    "--recursive",
    "--jobs",
    "-j",
    "--depth",
    "--force",
    "-f",
    "--checkout",
    "--rebase",
    "--merge",
    "--no-fetch",
    "-N",
    "--single-branch",
    "--no-single-branch",
    "--recommend-shallow",
    "--no-recommend-shallow",
    "--filter",
    "--progress",
    "--quiet",
    "-q",
    "--init",
    "--dissociate",
];

const CLEAN_FLAGS: &[&str] = &[
    "-q",
    "--quiet",
    "-e",
    "--exclude",
    "--force",
    "-n",
    "--dry-run",
];

/// `git clean` short options may be bundled (`-ffdx`).
fn bundled_clean_flags(f: &str) -> bool {
    f.len() > 1
        && f.starts_with('-')
        && !f.starts_with("--")
        && f[1..].chars().all(|c| "fdxXqn".contains(c))
}

/// Checks `flags` against `allowed` (`--name=value` and the word after a flag taking a value
/// are accepted as such). Values must not look like options themselves.
fn check_flags(name: &'static str, flags: &[String], allowed: &[&str]) -> Result<(), SourceError> {
    let takes_value = [
        "--jobs",
        "-j",
        "--filter",
        "--deepen",
        "--shallow-since",
        "--shallow-exclude",
        "--server-option",
        "-o",
        "--depth",
        "-e",
        "--exclude",
    ];
    let mut expect_value = false;
    for f in flags {
        if expect_value {
            expect_value = false;
            if !f.starts_with('-') {
                continue;
            }
        }
        let flag = f.split_once('=').map_or(f.as_str(), |(k, _)| k);
        let bundled = name == "GIT_CLEAN_FLAGS" && bundled_clean_flags(flag);
        if !allowed.contains(&flag) && !bundled {
            return Err(SourceError::InvalidVariable {
                name,
                value: format!("{f} (not allowed: git runs on the runner host)"),
            });
        }
        expect_value = !f.contains('=') && takes_value.contains(&flag);
    }
    Ok(())
}

pub(super) fn validate(spec: &SourceSpec) -> Result<(), SourceError> {
    let sha_ok =
        (7..=64).contains(&spec.sha.len()) && spec.sha.chars().all(|c| c.is_ascii_hexdigit());
    if !sha_ok {
        return Err(SourceError::InvalidSpec(format!(
            "sha {:?} is not a commit id",
            spec.sha
        )));
    }
    for r in &spec.refspecs {
        if r.is_empty() || r.starts_with('-') || r.contains(char::is_whitespace) {
            return Err(SourceError::InvalidSpec(format!(
                "refspec {r:?} is not valid"
            )));
        }
    }
    if let Some(f) = &spec.object_format
        && !(f.len() <= 16 && f.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(SourceError::InvalidSpec(format!(
            "repository object format {f:?} is not valid"
        )));
    }
    if spec.repo_url.starts_with('-') || spec.repo_url.is_empty() {
        return Err(SourceError::InvalidSpec(
            "repository URL is not valid".into(),
        ));
    }
    check_flags(
        "GIT_FETCH_EXTRA_FLAGS",
        &spec.fetch_extra_flags,
        FETCH_FLAGS,
    )?;
    check_flags("GIT_CLEAN_FLAGS", &spec.clean_flags, CLEAN_FLAGS)?;
    check_flags(
        "GIT_SUBMODULE_UPDATE_FLAGS",
        &spec.submodule_update_flags,
        SUBMODULE_UPDATE_FLAGS,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::run::s;

    #[test]
    fn dangerous_flags_are_refused() {
        let ok = [
            s("--prune"),
            s("--quiet"),
            s("--jobs"),
            s("4"),
            s("--filter=blob:none"),
        ];
        assert!(check_flags("X", &ok, FETCH_FLAGS).is_ok());
        for bad in [
            "--upload-pack=/bin/sh",
            "--upload-pack",
            "-c",
            "--config=x",
            "--reference",
        ] {
            assert!(check_flags("X", &[s(bad)], FETCH_FLAGS).is_err(), "{bad}");
        }
        assert!(check_flags("X", &[s("--jobs"), s("--upload-pack=x")], FETCH_FLAGS).is_err());
        assert!(
            check_flags(
                "GIT_CLEAN_FLAGS",
                &[s("-ffdx"), s("-e"), s("keep/")],
                CLEAN_FLAGS
            )
            .is_ok()
        );
        assert!(check_flags("GIT_CLEAN_FLAGS", &[s("-fdz")], CLEAN_FLAGS).is_err());
        assert!(check_flags("X", &[s("--reference"), s("/x")], SUBMODULE_UPDATE_FLAGS).is_err());
    }
}
