//! `ferry deploy [ARGS]` on a workstation: the same step a `ferry:deploy` job runs, with
//! `--kubeconfig`/`--context`, output to stdout.

use std::path::Path;
use std::process::ExitCode;

pub async fn deploy(_config_path: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    let mut out = tokio::io::stdout();
    let code = ferry_deploy::cli::run_workstation(args, &mut out).await;
    Ok(ExitCode::from(code))
}
