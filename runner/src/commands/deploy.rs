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
        // None found: ~/.kube/config all the same, whose read error names it.
        let kubeconfig = user_kubeconfig().ok().or_else(home_kubeconfig);
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
        resumed: None,
        progress: None,
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

/// `~/.kube/config`, from `$HOME`.
fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".kube").join("config"))
}

/// The user's kubeconfig as `ferry deploy` and `ferry exec` find it (docs/deploy.md, "On a
/// workstation"; docs/exec.md, "Deploy jobs"): the first existing file of `$KUBECONFIG` (which
/// may list several; kubectl merges them, ferry takes one), else `~/.kube/config` if it exists.
/// None found: where ferry looked, as a sentence.
pub fn user_kubeconfig() -> Result<PathBuf, String> {
    let listed: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = listed.iter().find(|p| p.exists()) {
        return Ok(p.clone());
    }
    let home = home_kubeconfig();
    if let Some(p) = home.as_ref().filter(|p| p.exists()) {
        return Ok(p.clone());
    }
    let env = if listed.is_empty() {
        "KUBECONFIG is not set".to_string()
    } else {
        let names: Vec<String> = listed.iter().map(|p| p.display().to_string()).collect();
        format!("no file of KUBECONFIG exists ({})", names.join(", "))
    };
    let home = match home {
        Some(p) => format!("{} does not exist", p.display()),
        None => "HOME is not set (no ~/.kube/config)".to_string(),
    };
    Err(format!("no kubeconfig found: {env} and {home}"))
}
