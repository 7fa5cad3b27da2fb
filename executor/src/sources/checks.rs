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

/// What the value of a flag that takes one may look like. git runs on the host with these
/// words as arguments (never through a shell); the values are still held to what the flags
/// mean, so nothing a job writes reaches git as anything else.
fn value_ok(flag: &str, v: &str) -> bool {
    let chars = |extra: &str| {
        !v.is_empty()
            && !v.starts_with('-')
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    match flag {
        "--jobs" | "-j" | "--depth" | "--deepen" => v.parse::<u32>().is_ok(),
        // blob:none, blob:limit=1m, tree:0, sparse:oid=..., combine:a+b
        "--filter" => chars(":=+._-"),
        // a date (`2024-01-01`, `1.week.ago`, `@1700000000`)
        "--shallow-since" => chars(".-:@+ "),
        // a ref name
        "--shallow-exclude" => chars("./_-"),
        "--server-option" | "-o" => chars("=._:/+-"),
        // a pathspec pattern of `git clean -e`
        "-e" | "--exclude" => chars("._/*?[]!@%+=:,~ -"),
        _ => false,
    }
}

const TAKES_VALUE: &[&str] = &[
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

/// Checks `flags` against `allowed`, and the value of each flag that takes one (as
/// `--name=value` or as the next word) against [`value_ok`].
fn check_flags(name: &'static str, flags: &[String], allowed: &[&str]) -> Result<(), SourceError> {
    let refuse = |f: &str, why: &str| SourceError::InvalidVariable {
        name,
        value: format!("{f} ({why})"),
    };
    let mut pending: Option<&str> = None;
    for f in flags {
        if let Some(flag) = pending.take() {
            if !value_ok(flag, f) {
                return Err(refuse(f, &format!("not a valid value for {flag}")));
            }
            continue;
        }
        let (flag, value) = match f.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v)),
            _ => (f.as_str(), None),
        };
        let bundled = name == "GIT_CLEAN_FLAGS" && bundled_clean_flags(flag);
        if !allowed.contains(&flag) && !bundled {
            return Err(refuse(f, "not allowed: git runs on the runner host"));
        }
        let takes = TAKES_VALUE.contains(&flag);
        match value {
            Some(v) if !takes || !value_ok(flag, v) => {
                return Err(refuse(f, &format!("not a valid value for {flag}")));
            }
            Some(_) => {}
            None if takes => pending = Some(flag),
            None => {}
        }
    }
    if let Some(flag) = pending {
        return Err(refuse(flag, "a value is missing"));
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
        // A value that is not what the flag means is refused, whatever the flag.
        for bad in [
            vec![s("-ffdx"), s("-e"), s("x;id>/tmp/pwned;#")],
            vec![s("-ffdx"), s("--exclude=$(id)")],
            vec![s("-ffdx"), s("-e")],
            vec![s("-e"), s("-x")],
        ] {
            assert!(
                check_flags("GIT_CLEAN_FLAGS", &bad, CLEAN_FLAGS).is_err(),
                "{bad:?}"
            );
        }
        assert!(check_flags("X", &[s("--jobs"), s("4;id")], FETCH_FLAGS).is_err());
        assert!(check_flags("X", &[s("--filter=blob:limit=1m")], FETCH_FLAGS).is_ok());
        assert!(check_flags("X", &[s("--prune=now")], FETCH_FLAGS).is_err());
        assert!(check_flags("X", &[s("--reference"), s("/x")], SUBMODULE_UPDATE_FLAGS).is_err());
    }
}
