//! `FakeDeployer` (feature `fake`): records requests and answers with a scripted result, for the
//! runner's tests. It parses the arguments like the real one, so bad arguments fail the same way.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::args::{DeployArgs, Settings, Vars};
use crate::{DeployError, DeployReport, DeployRequest, Deployer, LogSink};

#[derive(Debug, Clone, Default)]
pub struct FakeDeployer {
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<DeployRequest>>>,
    /// `Some(message)`: fail with `DeployError::Rollout(message)`.
    pub fail_with: Option<String>,
}

impl Deployer for FakeDeployer {
    async fn deploy(
        &self,
        req: &DeployRequest,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        if let Ok(mut r) = self.requests.lock() {
            r.push(req.clone());
        }
        let vars = Vars(req.variables.clone());
        let args = DeployArgs::parse(&req.args.iter().map(|a| vars.expand(a)).collect::<Vec<_>>())?;
        let settings = Settings::resolve(&args, &vars)?;
        if cancel.is_cancelled() {
            return Err(DeployError::Cancelled);
        }
        let line = format!(
            "fake deploy of {} ({} targets)\n",
            settings.manifests.join(", "),
            req.targets.len()
        );
        let _ = log.write_all(line.as_bytes()).await;
        match &self.fail_with {
            Some(m) => Err(DeployError::Rollout(m.clone())),
            None => Ok(DeployReport {
                applied: 0,
                objects: Vec::new(),
            }),
        }
    }
}
