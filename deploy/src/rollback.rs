//! `kubectl rollout undo` for the workloads whose rollout failed in this run (1.4).

use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::DeployError;
use crate::apply::{Applied, list_objects};
use crate::cluster::{Cluster, Op, apps_v1, resource_name};
use crate::object::{self, owned_by, selector_of};

/// What an undo did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Patched back to the given revision.
    RolledBack { to_revision: String },
    /// Nothing to go back to (first deploy).
    NoHistory,
    /// The previous revision's template is the current one.
    Skipped,
}

/// The kubectl command that would undo the workload.
pub fn undo_command(w: &Applied) -> String {
    let kind = w.planned.manifest.kind.to_lowercase();
    match &w.planned.namespace {
        Some(ns) => format!(
            "kubectl -n {ns} rollout undo {kind}/{}",
            w.planned.manifest.name
        ),
        None => format!("kubectl rollout undo {kind}/{}", w.planned.manifest.name),
    }
}

fn revision_of(o: &Value) -> i64 {
    o.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Template without the `pod-template-hash` label, for comparisons and the patch.
fn clean_template(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("pod-template-hash");
    }
    t
}

const SKIP_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

pub async fn undo(cluster: &Cluster, w: &Applied) -> Result<Undo, DeployError> {
    match w.planned.manifest.kind.as_str() {
        "Deployment" => undo_deployment(cluster, w).await,
        "StatefulSet" | "DaemonSet" => undo_controller_revision(cluster, w).await,
        _ => Ok(Undo::NoHistory),
    }
}

async fn undo_deployment(cluster: &Cluster, w: &Applied) -> Result<Undo, DeployError> {
    let api = w.api(cluster);
    let name = w.planned.manifest.name.clone();
    let ns = w.planned.namespace.clone();
    let dep = w.fetch(cluster).await?;
    if dep.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return Err(DeployError::Rollout(format!(
            "{}: cannot undo a paused deployment",
            w.display()
        )));
    }
    let uid = object::uid(&dep).to_string();
    let lp = ListParams::default().labels(&selector_of(&dep).unwrap_or_default());
    let rs_ar = apps_v1("ReplicaSet", "replicasets");
    let mut rss = list_objects(cluster, &rs_ar, ns.as_deref(), &lp).await?;
    rss.retain(|rs| owned_by(rs, &uid));
    rss.sort_by_key(|rs| std::cmp::Reverse(revision_of(rs)));
    let current = revision_of(&dep);
    // kubectl --to-revision=0: the highest revision below the current one
    let Some(prev) = rss
        .iter()
        .find(|rs| revision_of(rs) != current && revision_of(rs) > 0)
    else {
        return Ok(Undo::NoHistory);
    };
    let prev_template = clean_template(prev.pointer("/spec/template").unwrap_or(&Value::Null));
    let cur_template = clean_template(dep.pointer("/spec/template").unwrap_or(&Value::Null));
    if prev_template == cur_template {
        return Ok(Undo::Skipped);
    }
    let mut annotations = serde_json::Map::new();
    if let Some(a) = dep
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in a {
            if SKIP_ANNOTATIONS.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(a) = prev
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in a {
            if !SKIP_ANNOTATIONS.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
    }
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/template", "value": prev_template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]))
    .map_err(|e| {
        DeployError::Rollout(format!("{}: cannot build the undo patch: {e}", w.display()))
    })?;
    let op = Op::new("patch", resource_name(&w.resource))
        .name(&name)
        .ns(ns.as_deref());
    let pp = PatchParams::default();
    let patch = Patch::<()>::Json(patch);
    cluster.call(&op, || api.patch(&name, &pp, &patch)).await?;
    Ok(Undo::RolledBack {
        to_revision: revision_of(prev).to_string(),
    })
}

async fn undo_controller_revision(cluster: &Cluster, w: &Applied) -> Result<Undo, DeployError> {
    let api = w.api(cluster);
    let name = w.planned.manifest.name.clone();
    let ns = w.planned.namespace.clone();
    let uid = object::uid(&w.fetch(cluster).await?).to_string();
    let cr_ar = apps_v1("ControllerRevision", "controllerrevisions");
    let mut revs = list_objects(cluster, &cr_ar, ns.as_deref(), &ListParams::default()).await?;
    revs.retain(|r| owned_by(r, &uid));
    revs.sort_by_key(|r| std::cmp::Reverse(r.get("revision").and_then(Value::as_i64).unwrap_or(0)));
    let Some(prev) = revs.get(1) else {
        return Ok(Undo::NoHistory);
    };
    let Some(data) = prev.get("data").cloned() else {
        return Ok(Undo::NoHistory);
    };
    let op = Op::new("patch", resource_name(&w.resource))
        .name(&name)
        .ns(ns.as_deref());
    let pp = PatchParams::default();
    let patch = Patch::Strategic(&data);
    cluster.call(&op, || api.patch(&name, &pp, &patch)).await?;
    let rev = prev.get("revision").and_then(Value::as_i64).unwrap_or(0);
    Ok(Undo::RolledBack {
        to_revision: rev.to_string(),
    })
}
