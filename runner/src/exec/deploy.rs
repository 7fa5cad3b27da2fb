//! Deploy jobs of `ferry exec` without `-c`/`--runner` (docs/exec.md, "Deploy jobs"): ferry's
//! default runner gets one deploy target from the user's kubeconfig, read by ferry only (no
//! container ever sees it), so a deploy job goes where the user's kubectl would. With no
//! kubeconfig, a deploy job fails naming where ferry looked.

use std::path::PathBuf;

use ferry_deploy::target::workstation_target;
use ferry_deploy::{DeployError, DeployReport, DeployRequest, DeployTarget, Deployer, LogSink};
use tokio_util::sync::CancellationToken;

/// The default runner's target: the user's own credentials with `ferry deploy`'s workstation
/// policy (every environment, every namespace, cluster-scoped objects; docs/deploy.md).
/// `kubeconfig`: `--kubeconfig`, else [`crate::commands::deploy::user_kubeconfig`]; its `Err`
/// says where ferry looked.
pub fn local_target(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<DeployTarget, String> {
    let path = match kubeconfig {
        Some(p) => p,
        None => crate::commands::deploy::user_kubeconfig()?,
    };
    Ok(workstation_target(path, context))
}

/// A deployer whose deploy jobs fail with `missing` (a configuration error) when the runner has
/// no target, instead of the runner's "no deploy targets configured".
pub struct LocalDeployer<D> {
    pub inner: D,
    /// Where ferry looked for a kubeconfig and found none.
    pub missing: Option<String>,
}

impl<D: Deployer> Deployer for LocalDeployer<D> {
    async fn deploy(
        &self,
        req: &DeployRequest,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        if let (true, Some(why)) = (req.targets.is_empty(), &self.missing) {
            return Err(DeployError::Configuration(format!(
                "{why}; a deploy job of `ferry exec` uses your kubeconfig (name one with --kubeconfig PATH) \
                 or, with -c, the deploy targets of the config file's runner"
            )));
        }
        self.inner.deploy(req, log, cancel).await
    }
}
