//! The API resources the fake serves (a subset of a v1.33 cluster) plus kinds added by CRDs.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    pub subresources: Vec<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Storage key of the resource type (`deployments.apps`).
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn r(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    subs: &[&str],
) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
        subresources: subs.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn builtin() -> Vec<Resource> {
    vec![
        r("", "v1", "Namespace", "namespaces", false, &["status"]),
        r("", "v1", "ConfigMap", "configmaps", true, &[]),
        r("", "v1", "Secret", "secrets", true, &[]),
        r("", "v1", "Service", "services", true, &["status"]),
        r("", "v1", "ServiceAccount", "serviceaccounts", true, &[]),
        r("", "v1", "Pod", "pods", true, &["status", "log"]),
        r("", "v1", "Event", "events", true, &[]),
        r(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            &["status"],
        ),
        r(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            false,
            &["status"],
        ),
        r("", "v1", "Node", "nodes", false, &["status"]),
        r(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["status", "scale"],
        ),
        r(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            true,
            &["status", "scale"],
        ),
        r(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            &["status", "scale"],
        ),
        r("apps", "v1", "DaemonSet", "daemonsets", true, &["status"]),
        r(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            true,
            &[],
        ),
        r("batch", "v1", "Job", "jobs", true, &["status"]),
        r("batch", "v1", "CronJob", "cronjobs", true, &["status"]),
        r(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            true,
            &["status"],
        ),
        r(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &[],
        ),
        r(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["status"],
        ),
        r(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["status"],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
        ),
        r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["status"],
        ),
        r("events.k8s.io", "v1", "Event", "events", true, &[]),
    ]
}

/// Resources declared by a stored CRD object.
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let Some(spec) = crd.get("spec") else {
        return Vec::new();
    };
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let kind = spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    spec.get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .map(|v| {
                    let subs: &[&str] = if spec.pointer("/versions/0/subresources/status").is_some()
                    {
                        &["status"]
                    } else {
                        &[]
                    };
                    r(group, v, kind, plural, namespaced, subs)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn verbs() -> Value {
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

/// `APIResourceList` for one group-version.
pub fn resource_list(all: &[Resource], group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = all
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &rs {
        resources.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs(),
        }));
        for s in &r.subresources {
            let (kind, verbs) = match s.as_str() {
                "scale" => ("Scale", json!(["get", "patch", "update"])),
                "log" => ("Pod", json!(["get"])),
                _ => (r.kind.as_str(), json!(["get", "patch", "update"])),
            };
            resources.push(json!({
                "name": format!("{}/{s}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": kind, "verbs": verbs,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `APIGroup` entries for `/apis`.
pub fn groups(all: &[Resource]) -> Vec<Value> {
    let mut names: Vec<&str> = Vec::new();
    for r in all {
        if !r.group.is_empty() && !names.contains(&r.group.as_str()) {
            names.push(&r.group);
        }
    }
    names
        .into_iter()
        .map(|g| {
            let mut versions: Vec<&str> = Vec::new();
            for r in all.iter().filter(|r| r.group == g) {
                if !versions.contains(&r.version.as_str()) {
                    versions.push(&r.version);
                }
            }
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": vs.clone(), "preferredVersion": vs[0]})
        })
        .collect()
}
