//! Planning (discovery + target policy, before anything is applied) and server-side apply.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;

use crate::cluster::{Cluster, Op, resource_name};
use crate::render::{Manifest, images_of};
use crate::{DeployError, DeployTarget};

/// One object, resolved against the cluster's API.
#[derive(Debug, Clone)]
pub struct Planned {
    pub manifest: Manifest,
    /// `None` while its CRD is applied in this same deploy.
    pub resource: Option<ApiResource>,
    pub namespace: Option<String>,
}

impl Planned {
    /// `deployment.apps/web`, `service/web` (kubectl's way).
    pub fn display(&self) -> String {
        display_name(
            &self.manifest.kind,
            self.manifest.group(),
            &self.manifest.name,
        )
    }

    /// The object as the journal names it (docs/crash-safety.md): `prod/deployment.apps/web`
    /// for a namespaced object (the same name may be in several namespaces),
    /// `clusterrole.rbac.authorization.k8s.io/ci` for a cluster-scoped one. Unambiguous:
    /// namespaces and names hold no `/`, so a namespaced key has one `/` more.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.display()),
            None => self.display(),
        }
    }
}

pub fn display_name(kind: &str, group: &str, name: &str) -> String {
    if group.is_empty() {
        format!("{}/{name}", kind.to_lowercase())
    } else {
        format!("{}.{group}/{name}", kind.to_lowercase())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// One applied object and what the server returned.
#[derive(Debug, Clone)]
pub struct Applied {
    pub planned: Planned,
    pub resource: ApiResource,
    pub outcome: Outcome,
    pub live: DynamicObject,
}

impl Applied {
    pub fn display(&self) -> String {
        self.planned.display()
    }
    /// See [`Planned::key`].
    pub fn key(&self) -> String {
        self.planned.key()
    }
    pub fn api(&self, cluster: &Cluster) -> Api<DynamicObject> {
        api_for(cluster, &self.resource, self.planned.namespace.as_deref())
    }
    /// The `get` of this object, as logged and retried by [`Cluster::call`].
    pub fn get_op(&self) -> Op {
        Op::new("get", resource_name(&self.resource))
            .name(&self.planned.manifest.name)
            .ns(self.planned.namespace.as_deref())
    }
    /// The object as it is in the cluster now (metadata + data).
    pub async fn fetch(&self, cluster: &Cluster) -> Result<Value, DeployError> {
        let api = self.api(cluster);
        let name = &self.planned.manifest.name;
        let o = cluster.call(&self.get_op(), || api.get(name)).await?;
        Ok(obj_value(&o))
    }
}

pub fn api_for(cluster: &Cluster, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(cluster.client.clone(), ns, ar),
        None => Api::all_with(cluster.client.clone(), ar),
    }
}

/// Resolves every object's kind, assigns namespaces and enforces the target's policy. Nothing
/// is written to the cluster. All violations are reported together.
pub async fn plan(
    cluster: &Cluster,
    manifests: Vec<Manifest>,
    target: &DeployTarget,
    default_ns: &str,
) -> Result<Vec<Planned>, DeployError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    // Kinds defined by CRDs in this deploy: (group, kind) -> namespaced?
    let crds: Vec<(String, String, bool, Vec<String>)> = manifests
        .iter()
        .filter(|m| m.kind == "CustomResourceDefinition")
        .filter_map(|m| {
            let spec = m.object.get("spec")?;
            let group = spec.get("group")?.as_str()?.to_string();
            let kind = spec.pointer("/names/kind")?.as_str()?.to_string();
            let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
            let versions = spec
                .get("versions")
                .and_then(Value::as_array)
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Some((group, kind, namespaced, versions))
        })
        .collect();
    for m in manifests {
        let (resource, namespaced) = match cluster.resolve(&m.api_version, &m.kind).await? {
            Some((ar, caps)) => (Some(ar), caps.scope == Scope::Namespaced),
            None => {
                match crds.iter().find(|(g, k, _, vs)| {
                    g == m.group() && *k == m.kind && vs.iter().any(|v| v == m.version())
                }) {
                    Some((_, _, namespaced, _)) => (None, *namespaced),
                    None => {
                        errors.push(format!(
                            "{}: kind {} in apiVersion {} is not served by this cluster (CRD missing?)",
                            m.source, m.kind, m.api_version
                        ));
                        continue;
                    }
                }
            }
        };
        let namespace = if namespaced {
            let ns = m
                .namespace
                .clone()
                .unwrap_or_else(|| default_ns.to_string());
            if !crate::target::namespace_allowed(target, default_ns, &ns)? {
                errors.push(format!(
                    "{}: {} is in namespace {ns:?}, which deploy target {:?} does not allow (allowed: {})",
                    m.source,
                    display_name(&m.kind, m.group(), &m.name),
                    target.name,
                    if target.namespaces.is_empty() {
                        default_ns.to_string()
                    } else {
                        target.namespaces.join(", ")
                    }
                ));
                continue;
            }
            Some(ns)
        } else {
            if !target.cluster_scoped {
                errors.push(format!(
                    "{}: {} is cluster-scoped, and deploy target {:?} does not allow cluster-scoped objects (cluster_scoped = false)",
                    m.source,
                    display_name(&m.kind, m.group(), &m.name),
                    target.name
                ));
                continue;
            }
            None
        };
        let mut m = m;
        if let (Some(ns), Some(meta)) = (
            &namespace,
            m.object.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        out.push(Planned {
            manifest: m,
            resource,
            namespace,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DeployError::Input(format!(
            "refused before anything was applied:\n{}",
            errors.join("\n")
        )))
    }
}

/// Apply settings.
pub struct ApplyOptions<'a> {
    pub field_manager: &'a str,
    pub force: bool,
    pub dry_run: bool,
}

/// Result of one apply: the object and warnings (conflicts taken over).
pub struct ApplyResult {
    pub before: Option<DynamicObject>,
    pub after: DynamicObject,
    pub resource: ApiResource,
    pub warnings: Vec<String>,
}

/// Server-side apply of one object. Tries without force first so that conflicts with other
/// field managers can be reported; with `force`, takes them over and returns them as warnings.
pub async fn apply_one(
    cluster: &Cluster,
    p: &Planned,
    opts: &ApplyOptions<'_>,
) -> Result<ApplyResult, DeployError> {
    let ar = match &p.resource {
        Some(ar) => ar.clone(),
        None => match cluster
            .resolve(&p.manifest.api_version, &p.manifest.kind)
            .await?
        {
            Some((ar, _)) => ar,
            None => {
                return Err(DeployError::Input(format!(
                    "{}: kind {} in apiVersion {} is still not served after its CRD was applied",
                    p.manifest.source, p.manifest.kind, p.manifest.api_version
                )));
            }
        },
    };
    let api = api_for(cluster, &ar, p.namespace.as_deref());
    let res = resource_name(&ar);
    let name = p.manifest.name.as_str();
    let ns = p.namespace.as_deref();
    let before = cluster
        .call(&Op::new("get", &res).name(name).ns(ns), || {
            api.get_opt(name)
        })
        .await?;
    let mut pp = PatchParams::apply(opts.field_manager).validation_strict();
    if opts.dry_run {
        pp = pp.dry_run();
    }
    let body = &p.manifest.object;
    let op = Op::new("patch", &res).name(name).ns(ns);
    let first = cluster
        .call(&op, || async {
            match api.patch(name, &pp, &Patch::Apply(body)).await {
                Ok(o) => Ok(Ok(o)),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict" => Ok(Err(s)),
                Err(e) => Err(e),
            }
        })
        .await?;
    let mut warnings = Vec::new();
    let after = match first {
        Ok(o) => o,
        Err(status) => {
            let conflicts = conflict_list(&status);
            if !opts.force {
                return Err(DeployError::Input(format!(
                    "{}: conflicts with other field managers (FERRY_FORCE_CONFLICTS=false): {}",
                    p.display(),
                    conflicts.join("; ")
                )));
            }
            for c in conflicts {
                warnings.push(format!(
                    "{}: took over from another manager: {c}",
                    p.display()
                ));
            }
            let forced = pp.clone().force();
            let patch = Patch::Apply(body);
            cluster
                .call(&op, || api.patch(name, &forced, &patch))
                .await?
        }
    };
    Ok(ApplyResult {
        before,
        after,
        resource: ar,
        warnings,
    })
}

fn conflict_list(s: &kube::core::Status) -> Vec<String> {
    let causes: Vec<String> = s
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| {
                    if c.field.is_empty() {
                        c.message.clone()
                    } else {
                        format!("{} ({})", c.field, c.message)
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if causes.is_empty() {
        vec![s.message.clone()]
    } else {
        causes
    }
}

pub fn outcome(before: &Option<DynamicObject>, after: &DynamicObject) -> Outcome {
    match before {
        None => Outcome::Created,
        Some(b) if b.metadata.resource_version == after.metadata.resource_version => {
            Outcome::Unchanged
        }
        Some(_) => Outcome::Configured,
    }
}

/// `image r/web:1 → r/web:2` for workloads whose images changed.
pub fn image_change(before: &Option<DynamicObject>, after: &DynamicObject) -> Option<String> {
    let b = before
        .as_ref()
        .map(obj_value)
        .map(|v| images_of(&v))
        .unwrap_or_default();
    let a = images_of(&obj_value(after));
    if b.is_empty() || a == b {
        return None;
    }
    let changes: Vec<String> = a
        .iter()
        .zip(b.iter().chain(std::iter::repeat(&String::new())))
        .filter(|(n, o)| n != o)
        .map(|(n, o)| format!("{o} → {n}"))
        .collect();
    (!changes.is_empty()).then(|| format!("image {}", changes.join(", ")))
}

/// The objects of one resource type (in namespace `ns`, or in all namespaces) matching `lp`, as
/// JSON.
pub async fn list_objects(
    cluster: &Cluster,
    ar: &ApiResource,
    ns: Option<&str>,
    lp: &ListParams,
) -> Result<Vec<Value>, DeployError> {
    let api = api_for(cluster, ar, ns);
    let op = Op::new("list", resource_name(ar)).ns(ns);
    let l = cluster.call(&op, || api.list(lp)).await?;
    Ok(l.items.iter().map(obj_value).collect())
}

/// The whole object as JSON (metadata + data).
pub fn obj_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// Waits until a CRD reports `Established=True`.
pub async fn wait_crd_established(
    cluster: &Cluster,
    a: &Applied,
    limit: Duration,
) -> Result<(), DeployError> {
    let api = a.api(cluster);
    let name = a.planned.manifest.name.clone();
    let start = Instant::now();
    loop {
        let op = Op::new("get", resource_name(&a.resource)).name(&name);
        let crd = cluster.call(&op, || api.get(&name)).await?;
        let established = crate::health::condition(&obj_value(&crd), "Established")
            .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"));
        if established {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(DeployError::Rollout(format!(
                "{}: not Established after {}s",
                a.display(),
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A field-level diff of live vs would-be, without noise fields; Secret values redacted.
pub fn diff(kind: &str, live: Option<&Value>, new: &Value) -> Vec<String> {
    let clean = |v: &Value| {
        let mut v = v.clone();
        strip_noise(&mut v);
        v
    };
    let mut new = clean(new);
    let Some(live) = live else {
        return vec!["  + (new object)".to_string()];
    };
    let mut live = clean(live);
    if kind == "Secret" {
        redact_pair(&mut live, &mut new);
    }
    let mut out = Vec::new();
    diff_values("", &live, &new, &mut out);
    out
}

/// Replaces Secret values on both sides by markers that only say whether they changed.
fn redact_pair(live: &mut Value, new: &mut Value) {
    for key in ["data", "stringData"] {
        let old_map = live
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(map) = new.get_mut(key).and_then(Value::as_object_mut) {
            for (k, v) in map.iter_mut() {
                let changed = old_map.get(k) != Some(v);
                *v = Value::String(if changed {
                    "<redacted, changed>".into()
                } else {
                    "<redacted>".into()
                });
            }
        }
        if let Some(map) = live.get_mut(key).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                *v = Value::String("<redacted>".into());
            }
        }
    }
    for v in [live, new] {
        if let Some(a) = v
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
}

fn strip_noise(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
            "selfLink",
        ] {
            m.remove(k);
        }
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("deployment.kubernetes.io/revision");
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(117).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match y.get(k) {
                    Some(vb) => diff_values(&p, va, vb, out),
                    None => out.push(format!("  - {p}: {}", short(va))),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(format!("  + {p}: {}", short(vb)));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                let key = vb
                    .get("name")
                    .and_then(Value::as_str)
                    .map(|n| format!("[{n}]"))
                    .unwrap_or(format!("[{i}]"));
                diff_values(&format!("{path}{key}"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("  ~ {path}: {} → {}", short(a), short(b))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_ignores_noise_and_redacts() {
        let live = json!({"metadata": {"name": "web", "resourceVersion": "5", "managedFields": [1]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "r/web:1"}]}}},
            "status": {"replicas": 2}});
        let new = json!({"metadata": {"name": "web", "resourceVersion": "6"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "r/web:2"}]}}}});
        let d = diff("Deployment", Some(&live), &new);
        assert_eq!(
            d,
            vec![
                "  ~ spec.replicas: 2 → 3".to_string(),
                "  ~ spec.template.spec.containers[web].image: \"r/web:1\" → \"r/web:2\""
                    .to_string(),
            ]
        );
        let s1 = json!({"metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}});
        let s2 = json!({"metadata": {"name": "s"}, "data": {"k": "b3RoZXI="}});
        let d = diff("Secret", Some(&s1), &s2);
        assert_eq!(
            d,
            vec!["  ~ data.k: \"<redacted>\" → \"<redacted, changed>\"".to_string()]
        );
    }

    #[test]
    fn key_tells_namespaces_apart() {
        let planned = |ns: Option<&str>| Planned {
            manifest: Manifest {
                source: "k8s/app.yaml:1".into(),
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                namespace: ns.map(String::from),
                object: json!({}),
            },
            resource: None,
            namespace: ns.map(String::from),
        };
        assert_eq!(planned(Some("prod")).key(), "prod/deployment.apps/web");
        assert_ne!(planned(Some("prod")).key(), planned(Some("staging")).key());
        assert_eq!(planned(None).key(), "deployment.apps/web");
    }
}
