//! `ferry deploy` as a stand-alone program for workstations and benchmarks, until the runner's
//! CLI wires the subcommand: `ferry-deploy --kubeconfig ~/.kube/config [ARGS]`.
//! Job-style variables (FERRY_*, APP_NAME, CI_ENVIRONMENT_URL, template values) come from the
//! environment; the manifests are read from the current directory.

use std::process::ExitCode;

use ferry_deploy::{DeployRequest, Deployer, KubeDeployer, Origin};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let project_dir = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ferry deploy: cannot read the current directory: {e}");
            return ExitCode::from(2);
        }
    };
    let req = DeployRequest {
        args,
        project_dir,
        variables: std::env::vars().collect(),
        targets: Vec::new(),
        remaining: None,
        origin: Origin::Workstation,
        resumed: None,
        progress: None,
    };
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c2.cancel();
        }
    });
    let mut out = tokio::io::stdout();
    match KubeDeployer::default()
        .deploy(&req, &mut out, &cancel)
        .await
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}
