//! The one way `ferry exec` runs git on the user's repository and ferry's snapshot store
//! (docs/exec.md, "Sources"): a read-only plumbing call whose answer is its stdout.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// A git command that failed or could not start: the command and git's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("running git {args}: {message}")]
pub struct GitError {
    pub args: String,
    pub message: String,
}

/// Runs `git args` in `dir` with `env` added; its stdout without trailing white space.
/// No prompt, no stdin, and no optional locks: reading the user's repository writes no index
/// refresh back to it.
pub fn git<I, S>(dir: &Path, args: I, env: &[(&str, &OsStr)]) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(&args)
        .stdin(Stdio::null())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| GitError {
        args: shown(),
        message: format!("{e} (is git installed?)"),
    })?;
    if !out.status.success() {
        return Err(GitError {
            args: shown(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_on_success_and_the_command_with_gits_message_on_failure() {
        let d = tempfile::tempdir().unwrap();
        git(d.path(), ["init", "-q"], &[]).unwrap();
        let top = git(d.path(), ["rev-parse", "--show-toplevel"], &[]).unwrap();
        assert_eq!(
            std::fs::canonicalize(top).unwrap(),
            std::fs::canonicalize(d.path()).unwrap()
        );
        let e = git(d.path(), ["rev-parse", "--verify", "no-such-ref"], &[]).unwrap_err();
        assert_eq!(e.args, "rev-parse --verify no-such-ref");
        assert!(e.message.contains("Needed a single revision"), "{e}");
        let name = git(
            d.path(),
            ["var", "GIT_AUTHOR_IDENT"],
            &[
                ("GIT_AUTHOR_NAME", OsStr::new("Given Name")),
                ("GIT_AUTHOR_EMAIL", OsStr::new("g@example.com")),
            ],
        )
        .unwrap();
        assert!(name.starts_with("Given Name <g@example.com>"), "{name}");
    }
}
