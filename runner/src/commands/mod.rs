//! The `ferry` subcommands. `run` is the composition root: the only code that sees the whole
//! config and builds every component from it.

pub mod deploy;
pub mod exec;
pub mod manage;
pub mod plan;
pub mod register;
#[rustfmt::skip]
pub mod register_flags;
pub mod register_table;
pub mod run;
pub mod service;

use std::path::{Path, PathBuf};

use crate::cli::Cli;

/// `-c/--config`, then CONFIG_FILE (both through clap), then the default path.
pub fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(ferry_config::default_config_path)
}

/// Checks that the config file a command reads exists, and when it does not, says which file was
/// looked for and what to do next (docs/commands.md, "Start-up without a config"). ferry never
/// switches to gitlab-runner's file by itself: it names it, and the user passes `-c`.
/// `command` is the subcommand, for the hint. Other read errors are left to the loader.
pub fn require_config(cli: &Cli, path: &Path, command: &str) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let gitlab = ferry_config::gitlab_runner_config_path();
            let gitlab = (cli.config.is_none() && gitlab.is_file()).then_some(gitlab);
            anyhow::bail!(
                "{}",
                missing_config_message(path, cli.config.is_some(), gitlab.as_deref(), command)
            )
        }
        _ => Ok(()),
    }
}

/// The message for a config file that does not exist: one line for what is wrong, then one line
/// per next step. `explicit`: the path came from `-c`/CONFIG_FILE; `gitlab_runner`:
/// gitlab-runner's file, when it exists and ferry's default was looked for.
pub fn missing_config_message(
    path: &Path,
    explicit: bool,
    gitlab_runner: Option<&Path>,
    command: &str,
) -> String {
    let path = path.display();
    let mut lines = Vec::new();
    if explicit {
        lines.push(format!(
            "config file {path} does not exist (named by -c/--config or CONFIG_FILE)"
        ));
        lines.push(format!(
            "Register a runner first, which creates it: ferry register -c {path}"
        ));
    } else {
        lines.push(format!(
            "config file {path} does not exist (ferry's default; -c FILE names another)"
        ));
        if let Some(g) = gitlab_runner {
            let g = g.display();
            lines.push(format!(
                "gitlab-runner's config file {g} exists; ferry reads it as it is: ferry {command} -c {g}"
            ));
            lines.push(
                "Or register a new runner, which creates ferry's file: ferry register".into(),
            );
        } else {
            lines.push("Register a runner first, which creates it: ferry register".into());
        }
    }
    lines.join("\n")
}

/// The level and format to log with: CLI flags first, then the config file, then defaults.
pub fn log_settings(cli: &Cli, config: Option<&ferry_config::Config>) -> (String, String) {
    let level = if cli.debug {
        "debug".to_string()
    } else {
        cli.log_level
            .clone()
            .or_else(|| config.map(|c| c.global.log_level.clone()))
            .unwrap_or_else(|| "info".into())
    };
    let format =
        cli.log_format
            .clone()
            .unwrap_or_else(|| match config.map(|c| c.global.log_format) {
                Some(ferry_config::LogFormat::Json) => "json".into(),
                Some(ferry_config::LogFormat::Text) => "text".into(),
                _ => "runner".into(),
            });
    (level, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_line_repeats_a_cause(msg: &str) {
        for line in msg.lines() {
            let parts: Vec<&str> = line.split(": ").collect();
            for (i, p) in parts.iter().enumerate() {
                assert!(!parts[i + 1..].contains(p), "{p:?} twice in {line:?}");
            }
        }
    }

    #[test]
    fn a_missing_default_config_names_the_file_and_ferry_register() {
        let msg = missing_config_message(Path::new("/etc/ferry/config.toml"), false, None, "run");
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert!(lines[0].contains("/etc/ferry/config.toml") && lines[0].contains("does not exist"));
        assert!(lines[1].ends_with("ferry register"), "{msg}");
        assert!(!msg.contains("os error"), "{msg}");
        no_line_repeats_a_cause(&msg);
    }

    #[test]
    fn a_missing_named_config_gets_register_with_the_same_file() {
        let msg = missing_config_message(Path::new("/tmp/x.toml"), true, None, "list");
        assert!(msg.lines().next().unwrap().contains("/tmp/x.toml"));
        assert!(msg.contains("ferry register -c /tmp/x.toml"), "{msg}");
        no_line_repeats_a_cause(&msg);
    }

    #[test]
    fn gitlab_runners_file_is_named_with_the_command_that_uses_it() {
        let msg = missing_config_message(
            Path::new("/etc/ferry/config.toml"),
            false,
            Some(Path::new("/etc/gitlab-runner/config.toml")),
            "verify",
        );
        assert!(
            msg.contains("ferry verify -c /etc/gitlab-runner/config.toml"),
            "{msg}"
        );
        assert!(msg.contains("ferry register"), "{msg}");
        assert_eq!(msg.lines().count(), 3, "{msg}");
        no_line_repeats_a_cause(&msg);
    }
}
