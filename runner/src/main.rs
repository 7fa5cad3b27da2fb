//! The `ferry` binary.

use std::process::ExitCode;

use clap::Parser;
use ferry_runner::cli::{Cli, Command};
use ferry_runner::commands;

fn main() -> ExitCode {
    // `register`'s arguments as gitlab-runner reads them (docs/commands.md)
    let args = match ferry_runner::cli::preprocess(std::env::args_os().collect()) {
        Ok((args, warnings)) => {
            for w in warnings {
                eprintln!("WARNING: {w}");
            }
            args
        }
        Err(e) => {
            eprintln!("ERROR: register: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // A blocking task still running when the command is done (a cache's prepared copy being
    // made in the background, docs/sources-cache-artifacts.md) does not hold up the exit for
    // more than this; what it leaves half made is never used.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = commands::config_path(&cli);
    if !matches!(cli.command, Command::Run(_)) {
        init_cli_logging(&cli);
    }
    let reads_config = match cli.command {
        Command::Run(_) => Some("run"),
        Command::Unregister(_) => Some("unregister"),
        Command::Verify(_) => Some("verify"),
        Command::List => Some("list"),
        Command::Plan(_) => Some("plan"),
        // register creates the file; deploy does not read it.
        Command::Register(_) | Command::Deploy(_) => None,
        // exec reads a config only when -c or --runner names one.
        Command::Exec(_) => None,
        // The service commands only name the file in the unit.
        Command::Install(_)
        | Command::Uninstall(_)
        | Command::Start(_)
        | Command::Stop(_)
        | Command::Restart(_)
        | Command::Status(_) => None,
    };
    if let Some(command) = reads_config {
        commands::require_config(&cli, &path, command)?;
    }
    match cli.command {
        Command::Run(ref args) => {
            // A config that does not load is fatal at start (later reloads keep the old one).
            let config = ferry_config::load(&path);
            let (level, format) = commands::log_settings(&cli, config.as_ref().ok());
            let syslog = args.syslog.then_some(args.service.as_str());
            ferry_runner::logging::init(&level, &format, syslog).map_err(anyhow::Error::msg)?;
            commands::run::run(&path, config?, args).await?;
        }
        Command::Register(args) => commands::register::register(&path, *args).await?,
        Command::Unregister(ref args) => commands::manage::unregister(&path, args).await?,
        Command::Verify(ref args) => commands::manage::verify(&path, args).await?,
        Command::List => commands::manage::list(&path)?,
        Command::Plan(ref args) => commands::plan::plan(&path, args)?,
        Command::Exec(ref args) => return commands::exec::exec(&cli, args).await,
        Command::Deploy(ref args) => return commands::deploy::deploy(&path, &args.args).await,
        Command::Install(ref args) => commands::service::install(&path, args)?,
        Command::Uninstall(ref args) => commands::service::uninstall(args)?,
        Command::Start(ref args) => commands::service::control("start", args)?,
        Command::Stop(ref args) => commands::service::control("stop", args)?,
        Command::Restart(ref args) => commands::service::control("restart", args)?,
        Command::Status(ref args) => return commands::service::status(args),
    }
    Ok(ExitCode::SUCCESS)
}

/// CLI commands log warnings and errors only, unless asked for more.
fn init_cli_logging(cli: &Cli) {
    let (level, format) = commands::log_settings(cli, None);
    let level = if cli.log_level.is_none() && !cli.debug {
        "warn".to_string()
    } else {
        level
    };
    let _ = ferry_runner::logging::init(&level, &format, None);
}
