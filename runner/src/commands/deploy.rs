//! `ferry deploy [ARGS]` on a workstation: the same step a `ferry:deploy` job runs, with the
//! user's own kubeconfig (`--kubeconfig`, else the first existing file of $KUBECONFIG, else
//! ~/.kube/config) and context,
//! the process environment as variables (FERRY_*, template values), output to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_deploy::{DeployRequest, Deployer, KubeDeployer, Origin};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub async fn deploy(_config_path: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    let mut args = args.to_vec();
    if !args
        .iter()
        .any(|a| a == "--kubeconfig" || a.starts_with("--kubeconfig="))
    {
        // $KUBECONFIG may list several files (kubectl merges them); ferry takes the first that
        // exists.
        let from_env = std::env::var_os("KUBECONFIG").and_then(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .find(|p| p.exists())
        });
        let kubeconfig = from_env
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")));
        if let Some(k) = kubeconfig {
            args.push("--kubeconfig".into());
            args.push(k.display().to_string());
        }
    }
    let req = DeployRequest {
        args,
        project_dir: std::env::current_dir()?,
        variables: std::env::vars().collect(),
        targets: Vec::new(),
        remaining: None,
        origin: Origin::Workstation,
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    let mut out = tokio::io::stdout();
    let result = KubeDeployer::default()
        .deploy(&req, &mut out, &cancel)
        .await;
    let _ = out.flush().await;
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("ERROR: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
