//! The connection to one cluster: kubeconfig loading (contents never printed), API calls with
//! retries (429, 5xx, dropped connections) and clear errors (401/403 name the verb and resource),
//! and discovery cached per group-version.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::core::GroupVersion;
use kube::discovery::{ApiCapabilities, ApiResource};
use tokio::sync::Mutex;

use crate::{DeployError, DeployTarget};

/// Which request failed, for messages: `patch deployments.apps "web" in namespace "test"`.
#[derive(Debug, Clone)]
pub struct Op {
    pub verb: &'static str,
    pub resource: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Op {
    pub fn new(verb: &'static str, resource: impl Into<String>) -> Op {
        Op {
            verb,
            resource: resource.into(),
            name: None,
            namespace: None,
        }
    }
    pub fn name(mut self, name: &str) -> Op {
        self.name = Some(name.to_string());
        self
    }
    pub fn ns(mut self, ns: Option<&str>) -> Op {
        self.namespace = ns.map(str::to_string);
        self
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(n) = &self.name {
            write!(f, " {n:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns:?}")?;
        }
        Ok(())
    }
}

/// The plural resource name with its group, as kubectl writes it (`deployments.apps`).
pub fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// A core (`v1`) resource type: `core_v1("Pod", "pods")`.
pub fn core_v1(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// An `apps/v1` resource type: `apps_v1("ReplicaSet", "replicasets")`.
pub fn apps_v1(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Retry policy for transient API errors.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Bound on one request (watches are not bounded by this).
    pub request_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A resource served by the cluster and what it supports.
type Served = (ApiResource, ApiCapabilities);

pub struct Cluster {
    pub client: Client,
    pub target: String,
    /// The API server URL (printed; never credentials).
    pub host: String,
    pub context: String,
    pub context_namespace: String,
    pub retry: Retry,
    groups: Mutex<HashMap<String, Option<Vec<Served>>>>,
}

/// What the kubeconfig says without contacting anything: context name and namespace.
pub struct KubeconfigInfo {
    pub kubeconfig: Kubeconfig,
    pub context: String,
    pub namespace: String,
}

/// Reads the target's kubeconfig. Error messages name the file, never its contents.
pub fn read_kubeconfig(target: &DeployTarget) -> Result<KubeconfigInfo, DeployError> {
    let path = target.kubeconfig.display();
    // read_from also makes relative certificate/key/token file paths absolute (relative to the
    // kubeconfig's directory), as kubectl does.
    let kubeconfig = Kubeconfig::read_from(&target.kubeconfig).map_err(|e| {
        // The parser's message can quote the file; say only where it is.
        let detail = match e {
            KubeconfigError::ReadConfig(io, _) => {
                return DeployError::Configuration(format!(
                    "deploy target {:?}: cannot read kubeconfig {path}: {io}",
                    target.name
                ));
            }
            KubeconfigError::Parse(_) => "not a valid kubeconfig (YAML)".to_string(),
            other => other.to_string(),
        };
        DeployError::Configuration(format!(
            "deploy target {:?}: kubeconfig {path}: {detail}",
            target.name
        ))
    })?;
    let context = match target
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
    {
        Some(c) if !c.is_empty() => c,
        _ => {
            return Err(DeployError::Configuration(format!(
                "deploy target {:?}: kubeconfig {path} has no current-context and the target names no context",
                target.name
            )));
        }
    };
    let Some(ctx) = kubeconfig.contexts.iter().find(|c| c.name == context) else {
        let known: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(DeployError::Configuration(format!(
            "deploy target {:?}: context {context:?} is not in kubeconfig {path} (its contexts: {})",
            target.name,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let namespace = ctx
        .context
        .as_ref()
        .and_then(|c| c.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Ok(KubeconfigInfo {
        kubeconfig,
        context,
        namespace,
    })
}

impl Cluster {
    pub async fn connect(
        target: &DeployTarget,
        info: KubeconfigInfo,
    ) -> Result<Cluster, DeployError> {
        let opts = KubeConfigOptions {
            context: Some(info.context.clone()),
            ..Default::default()
        };
        let mut cfg = kube::Config::from_custom_kubeconfig(info.kubeconfig, &opts)
            .await
            .map_err(|e| {
                let detail = match e {
                    KubeconfigError::Parse(_) => "not a valid kubeconfig (YAML)".to_string(),
                    other => other.to_string(),
                };
                DeployError::Configuration(format!(
                    "deploy target {:?}: kubeconfig {}: {detail}",
                    target.name,
                    target.kubeconfig.display()
                ))
            })?;
        cfg.connect_timeout = Some(Duration::from_secs(10));
        // ferry retries on its own, with messages.
        cfg.default_retry = false;
        let host = cfg
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = Client::try_from(cfg).map_err(|e| {
            DeployError::Configuration(format!(
                "deploy target {:?}: cannot build a client for {host}: {}",
                target.name,
                error_chain(&e)
            ))
        })?;
        Ok(Cluster {
            client,
            target: target.name.clone(),
            host,
            context: info.context,
            context_namespace: info.namespace,
            retry: Retry::default(),
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// Runs one API call with retries on transient errors; maps the final error.
    pub async fn call<T, F, Fut>(&self, op: &Op, mut f: F) -> Result<T, DeployError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(self.retry.request_timeout, f()).await;
            let err = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => {
                    if attempt >= self.retry.attempts {
                        return Err(DeployError::Cluster(format!(
                            "{op}: no answer from the Kubernetes API at {} within {}s (tried {attempt} times)",
                            self.host,
                            self.retry.request_timeout.as_secs()
                        )));
                    }
                    tracing::debug!(%op, attempt, "request timed out; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                    attempt += 1;
                    continue;
                }
            };
            if is_transient(&err) && attempt < self.retry.attempts {
                tracing::debug!(%op, attempt, error = %err, "transient API error; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
                attempt += 1;
                continue;
            }
            return Err(self.map_error(op, err, attempt));
        }
    }

    pub fn map_error(&self, op: &Op, err: kube::Error, attempts: u32) -> DeployError {
        match &err {
            kube::Error::Api(s) => {
                let msg = if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                };
                match s.code {
                    401 => DeployError::Cluster(format!(
                        "the cluster at {} rejected the credentials of deploy target {:?} (401 Unauthorized) on {op}",
                        self.host, self.target
                    )),
                    403 => DeployError::Cluster(format!(
                        "the credentials of deploy target {:?} are not allowed to {op} (403 Forbidden): {msg}",
                        self.target
                    )),
                    429 | 500..=599 => DeployError::Cluster(format!(
                        "{op}: the Kubernetes API kept failing ({} {}) after {attempts} attempts: {msg}",
                        s.code, s.reason
                    )),
                    400 | 409 | 422 => DeployError::Input(format!("{op}: {msg}{}", causes(s))),
                    code => DeployError::Cluster(format!("{op}: {code} {}: {msg}", s.reason)),
                }
            }
            e if is_tls_failure(e) => {
                let chain = error_chain(e);
                let detail = chain
                    .find("invalid peer certificate")
                    .or_else(|| chain.find("certificate verify failed"))
                    .map(|i| chain[i..].to_string())
                    .unwrap_or_else(|| chain.clone());
                DeployError::Cluster(format!(
                    "the TLS certificate of the Kubernetes API at {} is not trusted ({detail}); check the certificate authority in the kubeconfig of deploy target {:?}",
                    self.host, self.target
                ))
            }
            e if is_transient(e) => DeployError::Cluster(format!(
                "cannot reach the Kubernetes API of deploy target {:?} at {}: {} (tried {attempts} times)",
                self.target,
                self.host,
                error_chain(e)
            )),
            e => DeployError::Cluster(format!("{op}: {}", error_chain(e))),
        }
    }

    /// The API resource for apiVersion + kind, or `None` when the cluster does not serve it.
    pub async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, DeployError> {
        let mut groups = self.groups.lock().await;
        if !groups.contains_key(api_version) {
            let gv: GroupVersion = api_version.parse().map_err(|_| {
                DeployError::Input(format!(
                    "apiVersion {api_version:?} is not of the form group/version"
                ))
            })?;
            let op = Op::new("get", format!("discovery for {api_version}"));
            let found = self
                .call(&op, || async {
                    match kube::discovery::pinned_group(&self.client, &gv).await {
                        Ok(g) => Ok(Some(g.versioned_resources(&gv.version))),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                        Err(kube::Error::Discovery(_)) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await?;
            groups.insert(api_version.to_string(), found);
        }
        Ok(groups
            .get(api_version)
            .and_then(|g| g.as_ref())
            .and_then(|rs| rs.iter().find(|(ar, _)| ar.kind == kind).cloned()))
    }

    /// Forget discovery results (after CRDs were applied).
    pub async fn forget_discovery(&self) {
        self.groups.lock().await.clear();
    }
}

fn causes(s: &kube::core::Status) -> String {
    let Some(d) = &s.details else {
        return String::new();
    };
    if d.causes.is_empty() {
        return String::new();
    }
    let list: Vec<String> = d
        .causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    format!(" ({})", list.join("; "))
}

/// 429, 5xx, connection problems.
pub fn is_transient(err: &kube::Error) -> bool {
    if is_tls_failure(err) {
        return false;
    }
    match err {
        kube::Error::Api(s) => s.code == 429 || (500..=599).contains(&s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The server's certificate was refused (retrying cannot help).
pub fn is_tls_failure(err: &kube::Error) -> bool {
    let chain = error_chain(err);
    chain.contains("invalid peer certificate") || chain.contains("certificate verify failed")
}

/// An error and its sources on one line (`client error (Connect): tcp connect error: Connection refused`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}
