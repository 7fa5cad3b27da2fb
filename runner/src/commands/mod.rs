//! The `ferry` subcommands. `run` is the composition root: the only code that sees the whole
//! config and builds every component from it.

pub mod deploy;
pub mod manage;
pub mod plan;
pub mod register;
pub mod run;

use std::path::PathBuf;

use crate::cli::Cli;

/// `-c/--config`, then CONFIG_FILE (both through clap), then the default path.
pub fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(ferry_config::default_config_path)
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
