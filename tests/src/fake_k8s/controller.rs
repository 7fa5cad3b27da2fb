//! Controller simulation: plays the Deployment, ReplicaSet, StatefulSet, DaemonSet and Job
//! controllers and the kubelet on a timeline, with the pod states and Events of each outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Shared;

/// What happens to the pods of a new revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pods start and become ready.
    Ready,
    /// ErrImagePull, then ImagePullBackOff.
    ImagePullBackOff,
    /// The container exits with code 1 and is restarted: CrashLoopBackOff.
    CrashLoopBackOff,
    /// No node fits: PodScheduled=False/Unschedulable.
    Unschedulable,
    /// Pods run but never become ready; the Deployment reports ProgressDeadlineExceeded.
    ProgressDeadlineExceeded,
    /// A ConfigMap the pod needs is missing: CreateContainerConfigError.
    CreateContainerConfigError,
    /// The ReplicaSet cannot create pods (quota): ReplicaFailure/FailedCreate, no pods.
    FailedCreate,
    /// Pods run but are not ready (a readiness probe that has not passed yet, no event)
    /// until [`FakeK8s::release`](super::FakeK8s::release); then they become ready.
    Held,
}

/// The controller behaviour of a fake cluster.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Outcome of a revision whose images match no rule.
    pub default: Outcome,
    /// (substring of an image, outcome): the first rule matching any image of the pod
    /// template decides.
    pub rules: Vec<(String, Outcome)>,
    /// Delay between two controller steps.
    pub step: Duration,
    /// For ProgressDeadlineExceeded: time from the pods' creation to the condition.
    pub deadline_after: Duration,
    /// Namespaces created at start besides `default`, `kube-system` and `test`.
    pub namespaces: Vec<String>,
}

impl Scenario {
    pub fn new(default: Outcome) -> Scenario {
        Scenario {
            default,
            rules: Vec::new(),
            step: Duration::from_millis(100),
            deadline_after: Duration::from_millis(400),
            namespaces: Vec::new(),
        }
    }
    pub fn success() -> Scenario {
        Scenario::new(Outcome::Ready)
    }
    /// Images containing `:broken` fail to pull; everything else rolls out.
    pub fn rollback() -> Scenario {
        Scenario::new(Outcome::Ready).rule(":broken", Outcome::ImagePullBackOff)
    }
    pub fn rule(mut self, image_part: &str, outcome: Outcome) -> Scenario {
        self.rules.push((image_part.to_string(), outcome));
        self
    }
    pub fn step(mut self, step: Duration) -> Scenario {
        self.step = step;
        self
    }
    fn outcome_for(&self, images: &[String]) -> Outcome {
        self.rules
            .iter()
            .find(|(part, _)| images.iter().any(|i| i.contains(part.as_str())))
            .map(|(_, o)| *o)
            .unwrap_or(self.default)
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn images(template: &Value) -> Vec<String> {
    template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn clean_template(t: &Value) -> Value {
    let mut t = t.clone();
    for l in [
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
    ] {
        if let Some(labels) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(l);
        }
    }
    t
}

fn hash(v: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in v.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHA[(h % ALPHA.len() as u64) as usize] as char);
        h /= ALPHA.len() as u64;
    }
    out
}

fn suffix(n: u64) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = n.wrapping_mul(0x9E3779B97F4A7C15);
    (0..5)
        .map(|_| {
            let c = ALPHA[(h % ALPHA.len() as u64) as usize] as char;
            h /= ALPHA.len() as u64;
            c
        })
        .collect()
}

fn owner_ref(obj: &Value) -> Value {
    json!([{"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": obj.pointer("/metadata/name"),
        "uid": obj.pointer("/metadata/uid"), "controller": true, "blockOwnerDeletion": true}])
}

fn owned_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn generation(o: &Value) -> i64 {
    o.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Watches for spec changes and starts one rollout task per workload generation.
pub(super) async fn run(sh: Arc<Shared>) {
    let mut tasks: HashMap<String, (i64, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        for (res, kind) in [
            ("deployments.apps", "Deployment"),
            ("statefulsets.apps", "StatefulSet"),
            ("daemonsets.apps", "DaemonSet"),
            ("jobs.batch", "Job"),
        ] {
            for obj in sh.list(res, None) {
                let uid = s(&obj, "/metadata/uid").to_string();
                let generation_no = generation(&obj);
                if tasks.get(&uid).is_some_and(|(g, _)| *g == generation_no) {
                    continue;
                }
                if let Some((_, old)) = tasks.remove(&uid) {
                    old.abort();
                }
                let ns = s(&obj, "/metadata/namespace").to_string();
                let name = s(&obj, "/metadata/name").to_string();
                let sh2 = sh.clone();
                let task = match kind {
                    "Deployment" => tokio::spawn(deployment(sh2, ns, name, generation_no)),
                    "StatefulSet" => tokio::spawn(statefulset(sh2, ns, name, generation_no)),
                    "DaemonSet" => tokio::spawn(daemonset(sh2, ns, name, generation_no)),
                    _ => tokio::spawn(job(sh2, ns, name, generation_no)),
                };
                tasks.insert(uid, (generation_no, task));
            }
        }
        sh.notify.notified().await;
    }
}

fn current(sh: &Shared, res: &str, ns: &str, name: &str, generation_no: i64) -> Option<Value> {
    sh.get(res, ns, name)
        .filter(|o| generation(o) == generation_no)
}

fn container_names(template: &Value) -> Vec<String> {
    template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn pod_object(
    name: &str,
    ns: &str,
    template: &Value,
    extra_labels: &[(&str, String)],
    owner: &Value,
) -> Value {
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    for (k, v) in extra_labels {
        labels[*k] = json!(v);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": owner_ref(owner)},
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": container_names(template).iter().map(|c| json!({
                "name": c, "ready": false, "restartCount": 0, "image": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}})).collect::<Vec<_>>()},
    })
}

fn set_containers(pod: &mut Value, f: impl Fn(&str, &str) -> Value) {
    let image_of = |c: &str| -> String {
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|x| x.get("name").and_then(Value::as_str) == Some(c))
            })
            .and_then(|x| x.get("image").and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let statuses: Vec<Value> = names.iter().map(|n| f(n, &image_of(n))).collect();
    pod["status"]["containerStatuses"] = json!(statuses);
}

/// Plays the kubelet for the given pods. Returns true when they are ready (or succeeded).
async fn play_pods(
    sh: &Shared,
    ns: &str,
    pods: &[String],
    outcome: Outcome,
    step: Duration,
    succeed: bool,
    alive: &(dyn Fn() -> bool + Sync),
) -> bool {
    let now = super::now_rfc3339();
    match outcome {
        Outcome::Held => {
            for p in pods {
                sh.update("", "Pod", ns, p, |pod| {
                    pod["status"]["phase"] = json!("Running");
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                        {"type": "Initialized", "status": "True"},
                        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [web]"}]);
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0, "started": true,
                        "state": {"running": {"startedAt": now}}}));
                });
            }
            while !sh.released() {
                tokio::time::sleep(step).await;
                if !alive() {
                    return false;
                }
            }
            for p in pods {
                sh.update("", "Pod", ns, p, |pod| {
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                        {"type": "Initialized", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                        {"type": "Ready", "status": "True"}]);
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": true, "restartCount": 0, "started": true,
                        "state": {"running": {"startedAt": now}}}));
                });
            }
            true
        }
        Outcome::Ready => {
            for p in pods {
                sh.update("", "Pod", ns, p, |pod| {
                    if succeed {
                        pod["status"]["phase"] = json!("Succeeded");
                        set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}));
                    } else {
                        pod["status"]["phase"] = json!("Running");
                        pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                            {"type": "Initialized", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                            {"type": "Ready", "status": "True"}]);
                        set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": true, "restartCount": 0, "started": true,
                            "state": {"running": {"startedAt": now}}}));
                    }
                });
            }
            true
        }
        Outcome::ImagePullBackOff => {
            for p in pods {
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ErrImagePull",
                        "message": format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{img}\": not found")}}}));
                }) {
                    for img in images(&json!({"spec": pod.get("spec")})) {
                        sh.event(&pod, "Normal", "Pulling", &format!("Pulling image \"{img}\""));
                        sh.event(&pod, "Warning", "Failed", &format!("Failed to pull image \"{img}\": rpc error: code = NotFound desc = failed to pull and unpack image \"{img}\": not found"));
                        sh.event(&pod, "Warning", "Failed", "Error: ErrImagePull");
                    }
                }
            }
            tokio::time::sleep(step).await;
            if !alive() {
                return false;
            }
            for p in pods {
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{img}\"")}}}));
                }) {
                    sh.event(&pod, "Normal", "BackOff", "Back-off pulling image");
                    sh.event(&pod, "Warning", "Failed", "Error: ImagePullBackOff");
                }
            }
            false
        }
        Outcome::CrashLoopBackOff => {
            for p in pods {
                sh.update("", "Pod", ns, p, |pod| {
                    pod["status"]["phase"] = json!("Running");
                    set_containers(pod, |n, img| {
                        json!({"name": n, "image": img, "ready": false, "restartCount": 0,
                        "state": {"running": {"startedAt": now}}})
                    });
                });
            }
            tokio::time::sleep(step).await;
            if !alive() {
                return false;
            }
            for p in pods {
                sh.set_log(ns, p, "starting web server\nconnecting to database at db:5432\nError: connection refused (db:5432)\n");
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 40s restarting failed container={n} pod={p}")}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}));
                }) {
                    for c in container_names(&json!({"spec": pod.get("spec")})) {
                        sh.event(&pod, "Warning", "BackOff", &format!("Back-off restarting failed container {c} in pod {p}"));
                    }
                }
            }
            false
        }
        Outcome::Unschedulable => {
            for p in pods {
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."}]);
                    pod["status"].as_object_mut().map(|st| st.remove("containerStatuses"));
                }) {
                    sh.event(&pod, "Warning", "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.");
                }
            }
            false
        }
        Outcome::ProgressDeadlineExceeded => {
            for p in pods {
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    pod["status"]["phase"] = json!("Running");
                    pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "containers with unready status: [web]"}]);
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0, "started": true,
                        "state": {"running": {"startedAt": now}}}));
                }) {
                    sh.event(&pod, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503");
                }
            }
            false
        }
        Outcome::FailedCreate => false,
        Outcome::CreateContainerConfigError => {
            for p in pods {
                if let Some(pod) = sh.update("", "Pod", ns, p, |pod| {
                    set_containers(pod, |n, img| json!({"name": n, "image": img, "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "configmap \"web-config\" not found"}}}));
                }) {
                    sh.event(&pod, "Warning", "Failed", "Error: configmap \"web-config\" not found");
                }
            }
            false
        }
    }
}

fn revision(o: &Value) -> i64 {
    o.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn deployment(sh: Arc<Shared>, ns: String, name: String, generation_no: i64) {
    let step = sh.scenario.step;
    let alive = || current(&sh, "deployments.apps", &ns, &name, generation_no).is_some();
    tokio::time::sleep(step).await;
    let Some(dep) = current(&sh, "deployments.apps", &ns, &name, generation_no) else {
        return;
    };
    let template = clean_template(dep.pointer("/spec/template").unwrap_or(&Value::Null));
    let replicas = dep
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let uid = s(&dep, "/metadata/uid").to_string();
    let h = hash(&template);
    let rs_name = format!("{name}-{h}");
    let rss: Vec<Value> = sh
        .list("replicasets.apps", Some(&ns))
        .into_iter()
        .filter(|r| owned_by(r, &uid))
        .collect();
    let max_rev = rss.iter().map(revision).max().unwrap_or(0);
    let existing = rss
        .iter()
        .find(|r| s(r, "/metadata/name") == rs_name)
        .cloned();
    let dep_rev = revision(&dep);
    let new_rev = match &existing {
        Some(r) if revision(r) == dep_rev && dep_rev == max_rev => dep_rev,
        _ => max_rev + 1,
    };
    let old_rs: Vec<Value> = rss
        .iter()
        .filter(|r| s(r, "/metadata/name") != rs_name)
        .cloned()
        .collect();
    let old_ready: i64 = old_rs
        .iter()
        .map(|r| {
            r.pointer("/status/readyReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
        })
        .sum();
    let mut rs_template = template.clone();
    rs_template["metadata"]["labels"]["pod-template-hash"] = json!(h);
    let mut selector = dep
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or(json!({"matchLabels": {}}));
    selector["matchLabels"]["pod-template-hash"] = json!(h);
    let mut rs_labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    rs_labels["pod-template-hash"] = json!(h);
    let existing_status = existing
        .as_ref()
        .and_then(|e| e.get("status").cloned())
        .unwrap_or(json!({"replicas": 0}));
    let rs = sh.put("apps", "ReplicaSet", &ns, json!({
        "metadata": {"name": rs_name, "namespace": ns, "labels": rs_labels, "ownerReferences": owner_ref(&dep),
            "annotations": {"deployment.kubernetes.io/revision": new_rev.to_string(), "deployment.kubernetes.io/desired-replicas": replicas.to_string()}},
        "spec": {"replicas": replicas, "selector": selector, "template": rs_template},
        "status": existing_status,
    }));
    sh.event(
        &dep,
        "Normal",
        "ScalingReplicaSet",
        &format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
    );
    sh.update("apps", "Deployment", &ns, &name, |d| {
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(new_rev.to_string());
        d["status"] = json!({"observedGeneration": generation_no, "replicas": old_ready, "updatedReplicas": 0,
            "readyReplicas": old_ready, "availableReplicas": old_ready, "unavailableReplicas": 0,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "message": format!("ReplicaSet \"{rs_name}\" is progressing.")}]});
    });
    tokio::time::sleep(step).await;
    if !alive() {
        return;
    }
    let outcome = sh.scenario.outcome_for(&images(&template));
    if outcome == Outcome::FailedCreate {
        let msg = format!(
            "pods \"{rs_name}-\" is forbidden: exceeded quota: compute-resources, requested: limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8"
        );
        if let Some(rs) = sh.update("apps", "ReplicaSet", &ns, &rs_name, |r| {
            r["status"] = json!({"replicas": 0, "observedGeneration": 1, "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": msg}]});
        }) {
            sh.event(&rs, "Warning", "FailedCreate", &format!("Error creating: {msg}"));
        }
        sh.update("apps", "Deployment", &ns, &name, |d| {
            if let Some(conds) = d["status"]["conditions"].as_array_mut() {
                conds.push(json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": msg}));
            }
        });
        return;
    }
    // Pods of the new ReplicaSet.
    let rs_uid = s(&rs, "/metadata/uid").to_string();
    let mut pods: Vec<String> = sh
        .list("pods", Some(&ns))
        .into_iter()
        .filter(|p| owned_by(p, &rs_uid))
        .map(|p| s(&p, "/metadata/name").to_string())
        .collect();
    let mut fresh = Vec::new();
    while (pods.len() as i64) < replicas {
        let pn = format!("{rs_name}-{}", suffix(sh.next_id()));
        let pod = sh.put("", "Pod", &ns, pod_object(&pn, &ns, &rs_template, &[], &rs));
        sh.event(
            &pod,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {ns}/{pn} to node-1"),
        );
        pods.push(pn.clone());
        fresh.push(pn);
    }
    let n = pods.len() as i64;
    sh.update("apps", "ReplicaSet", &ns, &rs_name, |r| {
        r["status"] = json!({"replicas": n, "observedGeneration": 1});
    });
    sh.update("apps", "Deployment", &ns, &name, |d| {
        d["status"]["replicas"] = json!(old_ready + n);
        d["status"]["updatedReplicas"] = json!(n);
        d["status"]["unavailableReplicas"] = json!(n);
    });
    tokio::time::sleep(step).await;
    if !alive() {
        return;
    }
    let ready = play_pods(&sh, &ns, &fresh, outcome, step, false, &alive).await;
    if !alive() {
        return;
    }
    if ready {
        sh.update("apps", "ReplicaSet", &ns, &rs_name, |r| {
            r["status"] = json!({"replicas": n, "readyReplicas": n, "availableReplicas": n, "fullyLabeledReplicas": n, "observedGeneration": 1});
        });
        for old in &old_rs {
            let old_name = s(old, "/metadata/name").to_string();
            let old_uid = s(old, "/metadata/uid").to_string();
            for p in sh
                .list("pods", Some(&ns))
                .into_iter()
                .filter(|p| owned_by(p, &old_uid))
            {
                sh.delete("", "Pod", &ns, s(&p, "/metadata/name"));
            }
            sh.update("apps", "ReplicaSet", &ns, &old_name, |r| {
                r["spec"]["replicas"] = json!(0);
                r["status"] = json!({"replicas": 0, "observedGeneration": 1});
            });
        }
        sh.update("apps", "Deployment", &ns, &name, |d| {
            d["status"] = json!({"observedGeneration": generation_no, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                "availableReplicas": n, "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{rs_name}\" has successfully progressed.")}]});
        });
    } else if outcome == Outcome::ProgressDeadlineExceeded {
        tokio::time::sleep(sh.scenario.deadline_after).await;
        if !alive() {
            return;
        }
        sh.update("apps", "Deployment", &ns, &name, |d| {
            d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{rs_name}\" has timed out progressing.")}]);
        });
    }
}

/// ControllerRevision for StatefulSets and DaemonSets; returns (name, revision hash).
fn controller_revision(sh: &Shared, owner: &Value, ns: &str, template: &Value) -> String {
    let name = s(owner, "/metadata/name");
    let uid = s(owner, "/metadata/uid").to_string();
    let h = hash(template);
    let cr_name = format!("{name}-{h}");
    let existing: Vec<Value> = sh
        .list("controllerrevisions.apps", Some(ns))
        .into_iter()
        .filter(|c| owned_by(c, &uid))
        .collect();
    let max = existing
        .iter()
        .map(|c| c.get("revision").and_then(Value::as_i64).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let current_is_latest = existing.iter().any(|c| {
        s(c, "/metadata/name") == cr_name && c.get("revision").and_then(Value::as_i64) == Some(max)
    });
    if !current_is_latest {
        let mut t = template.clone();
        t["$patch"] = json!("replace");
        sh.put(
            "apps",
            "ControllerRevision",
            ns,
            json!({
            "metadata": {"name": cr_name, "namespace": ns, "ownerReferences": owner_ref(owner),
                "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
            "data": {"spec": {"template": t}}, "revision": max + 1}),
        );
    }
    cr_name
}

async fn statefulset(sh: Arc<Shared>, ns: String, name: String, generation_no: i64) {
    let step = sh.scenario.step;
    let alive = || current(&sh, "statefulsets.apps", &ns, &name, generation_no).is_some();
    tokio::time::sleep(step).await;
    let Some(sts) = current(&sh, "statefulsets.apps", &ns, &name, generation_no) else {
        return;
    };
    let template = clean_template(sts.pointer("/spec/template").unwrap_or(&Value::Null));
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let rev = controller_revision(&sh, &sts, &ns, &template);
    let cur_rev = sts
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .unwrap_or(&rev)
        .to_string();
    sh.update("apps", "StatefulSet", &ns, &name, |o| {
        o["status"] = json!({"observedGeneration": generation_no, "replicas": replicas, "readyReplicas": 0, "updatedReplicas": 0,
            "currentRevision": cur_rev, "updateRevision": rev});
    });
    tokio::time::sleep(step).await;
    if !alive() {
        return;
    }
    let mut pods = Vec::new();
    for i in 0..replicas {
        let pn = format!("{name}-{i}");
        sh.delete("", "Pod", &ns, &pn);
        sh.put(
            "",
            "Pod",
            &ns,
            pod_object(
                &pn,
                &ns,
                &template,
                &[
                    ("controller-revision-hash", rev.clone()),
                    ("statefulset.kubernetes.io/pod-name", pn.clone()),
                ],
                &sts,
            ),
        );
        pods.push(pn);
    }
    tokio::time::sleep(step).await;
    let outcome = sh.scenario.outcome_for(&images(&template));
    if play_pods(&sh, &ns, &pods, outcome, step, false, &alive).await && alive() {
        sh.update("apps", "StatefulSet", &ns, &name, |o| {
            o["status"] = json!({"observedGeneration": generation_no, "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                "updatedReplicas": replicas, "currentReplicas": replicas, "currentRevision": rev, "updateRevision": rev});
        });
    }
}

async fn daemonset(sh: Arc<Shared>, ns: String, name: String, generation_no: i64) {
    let step = sh.scenario.step;
    let alive = || current(&sh, "daemonsets.apps", &ns, &name, generation_no).is_some();
    tokio::time::sleep(step).await;
    let Some(ds) = current(&sh, "daemonsets.apps", &ns, &name, generation_no) else {
        return;
    };
    let template = clean_template(ds.pointer("/spec/template").unwrap_or(&Value::Null));
    let rev = controller_revision(&sh, &ds, &ns, &template);
    let uid = s(&ds, "/metadata/uid").to_string();
    sh.update("apps", "DaemonSet", &ns, &name, |o| {
        o["status"] = json!({"observedGeneration": generation_no, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "updatedNumberScheduled": 0, "numberAvailable": 0, "numberReady": 0});
    });
    tokio::time::sleep(step).await;
    if !alive() {
        return;
    }
    for p in sh
        .list("pods", Some(&ns))
        .into_iter()
        .filter(|p| owned_by(p, &uid))
    {
        sh.delete("", "Pod", &ns, s(&p, "/metadata/name"));
    }
    let pn = format!("{name}-{}", suffix(sh.next_id()));
    sh.put(
        "",
        "Pod",
        &ns,
        pod_object(
            &pn,
            &ns,
            &template,
            &[
                ("controller-revision-hash", rev.clone()),
                ("pod-template-generation", generation_no.to_string()),
            ],
            &ds,
        ),
    );
    sh.update("apps", "DaemonSet", &ns, &name, |o| {
        o["status"]["updatedNumberScheduled"] = json!(1);
    });
    tokio::time::sleep(step).await;
    let outcome = sh.scenario.outcome_for(&images(&template));
    if play_pods(
        &sh,
        &ns,
        std::slice::from_ref(&pn),
        outcome,
        step,
        false,
        &alive,
    )
    .await
        && alive()
    {
        sh.update("apps", "DaemonSet", &ns, &name, |o| {
            o["status"]["numberAvailable"] = json!(1);
            o["status"]["numberReady"] = json!(1);
        });
    }
}

async fn job(sh: Arc<Shared>, ns: String, name: String, generation_no: i64) {
    if generation_no > 1 {
        return; // a Job's template is immutable; nothing to do on other changes
    }
    let step = sh.scenario.step;
    let alive = || current(&sh, "jobs.batch", &ns, &name, generation_no).is_some();
    tokio::time::sleep(step).await;
    let Some(j) = current(&sh, "jobs.batch", &ns, &name, generation_no) else {
        return;
    };
    let template = j.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    let pn = format!("{name}-{}", suffix(sh.next_id()));
    sh.put("", "Pod", &ns, pod_object(&pn, &ns, &template, &[], &j));
    sh.update("batch", "Job", &ns, &name, |o| {
        o["status"] = json!({"active": 1, "startTime": super::now_rfc3339()});
    });
    tokio::time::sleep(step).await;
    let outcome = sh.scenario.outcome_for(&images(&template));
    let ok = play_pods(
        &sh,
        &ns,
        std::slice::from_ref(&pn),
        outcome,
        step,
        true,
        &alive,
    )
    .await;
    if !alive() {
        return;
    }
    if ok {
        sh.update("batch", "Job", &ns, &name, |o| {
            o["status"] = json!({"succeeded": 1, "completionTime": super::now_rfc3339(), "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]});
        });
    } else if outcome == Outcome::CrashLoopBackOff {
        tokio::time::sleep(step).await;
        sh.update("batch", "Job", &ns, &name, |o| {
            o["status"] = json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]});
        });
    }
}
