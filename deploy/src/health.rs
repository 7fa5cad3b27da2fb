//! Pure health evaluation on JSON objects: the `kubectl rollout status` logic per workload kind
//! (generation first), Job completion, and the classification of new pods' problems (1.6).

use std::time::Duration;

use serde_json::Value;

/// Verdict of one look at a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    InProgress(String),
    Done(String),
    Failed(String),
}

fn i64_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The condition of type `ty` in `status.conditions`.
pub fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// Which kinds ferry waits for.
pub fn is_workload(kind: &str) -> bool {
    matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job")
}

pub fn evaluate(kind: &str, obj: &Value) -> Rollout {
    match kind {
        "Deployment" => deployment(obj),
        "StatefulSet" => statefulset(obj),
        "DaemonSet" => daemonset(obj),
        "Job" => job(obj),
        _ => Rollout::Done("nothing to wait for".into()),
    }
}

fn generation_pending(obj: &Value) -> bool {
    let generation = i64_at(obj, "/metadata/generation").unwrap_or(0);
    let observed = i64_at(obj, "/status/observedGeneration").unwrap_or(0);
    generation > observed
}

/// kubectl `DeploymentStatusViewer`.
pub fn deployment(obj: &Value) -> Rollout {
    if generation_pending(obj) {
        return Rollout::InProgress("waiting for the deployment spec update to be observed".into());
    }
    if let Some(c) = condition(obj, "Progressing")
        && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
        return Rollout::Failed(format!("exceeded its progress deadline: {msg}"));
    }
    let replicas = i64_at(obj, "/spec/replicas");
    let updated = i64_at(obj, "/status/updatedReplicas").unwrap_or(0);
    let current = i64_at(obj, "/status/replicas").unwrap_or(0);
    let available = i64_at(obj, "/status/availableReplicas").unwrap_or(0);
    if let Some(r) = replicas
        && updated < r
    {
        return Rollout::InProgress(format!("{updated} of {r} new replicas have been updated"));
    }
    if current > updated {
        return Rollout::InProgress(format!(
            "{} old replicas are pending termination",
            current - updated
        ));
    }
    if available < updated {
        return Rollout::InProgress(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Rollout::Done(format!(
        "{available} of {} replicas available",
        replicas.unwrap_or(updated)
    ))
}

/// kubectl `StatefulSetStatusViewer`.
pub fn statefulset(obj: &Value) -> Rollout {
    let strategy = str_at(obj, "/spec/updateStrategy/type").unwrap_or("RollingUpdate");
    if strategy != "RollingUpdate" {
        return Rollout::Done(format!(
            "update strategy {strategy}: rollout status is only available for RollingUpdate"
        ));
    }
    let observed = i64_at(obj, "/status/observedGeneration").unwrap_or(0);
    if observed == 0 || generation_pending(obj) {
        return Rollout::InProgress(
            "waiting for the statefulset spec update to be observed".into(),
        );
    }
    let replicas = i64_at(obj, "/spec/replicas");
    let ready = i64_at(obj, "/status/readyReplicas").unwrap_or(0);
    if let Some(r) = replicas
        && ready < r
    {
        return Rollout::InProgress(format!("{ready} of {r} pods are ready"));
    }
    if obj.pointer("/spec/updateStrategy/rollingUpdate").is_some() {
        let partition = i64_at(obj, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
        let r = replicas.unwrap_or(0);
        let updated = i64_at(obj, "/status/updatedReplicas").unwrap_or(0);
        if updated < r - partition {
            return Rollout::InProgress(format!(
                "{updated} of {} new pods have been updated (partition {partition})",
                r - partition
            ));
        }
        return Rollout::Done(format!(
            "partitioned roll out complete: {updated} new pods updated"
        ));
    }
    let update_rev = str_at(obj, "/status/updateRevision").unwrap_or("");
    let current_rev = str_at(obj, "/status/currentRevision").unwrap_or("");
    if update_rev != current_rev {
        return Rollout::InProgress(format!(
            "waiting for the rolling update to finish (revision {update_rev})"
        ));
    }
    Rollout::Done(format!("{ready} pods ready at revision {current_rev}"))
}

/// kubectl `DaemonSetStatusViewer`.
pub fn daemonset(obj: &Value) -> Rollout {
    let strategy = str_at(obj, "/spec/updateStrategy/type").unwrap_or("RollingUpdate");
    if strategy != "RollingUpdate" {
        return Rollout::Done(format!(
            "update strategy {strategy}: rollout status is only available for RollingUpdate"
        ));
    }
    if generation_pending(obj) {
        return Rollout::InProgress("waiting for the daemon set spec update to be observed".into());
    }
    let desired = i64_at(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = i64_at(obj, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = i64_at(obj, "/status/numberAvailable").unwrap_or(0);
    if updated < desired {
        return Rollout::InProgress(format!("{updated} of {desired} updated pods are scheduled"));
    }
    if available < desired {
        return Rollout::InProgress(format!(
            "{available} of {desired} updated pods are available"
        ));
    }
    Rollout::Done(format!("{available} of {desired} pods available"))
}

/// Job: `Complete=True` done, `Failed=True` failed.
pub fn job(obj: &Value) -> Rollout {
    let is_true = |ty: &str| {
        condition(obj, ty).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
    };
    if is_true("Failed") {
        let c = condition(obj, "Failed").cloned().unwrap_or(Value::Null);
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("Failed");
        let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
        return Rollout::Failed(format!("job failed: {reason}: {msg}"));
    }
    if is_true("Complete") {
        let n = i64_at(obj, "/status/succeeded").unwrap_or(0);
        return Rollout::Done(format!("completed ({n} succeeded)"));
    }
    let active = i64_at(obj, "/status/active").unwrap_or(0);
    let succeeded = i64_at(obj, "/status/succeeded").unwrap_or(0);
    let completions = i64_at(obj, "/spec/completions").unwrap_or(1);
    Rollout::InProgress(format!(
        "{succeeded} of {completions} completions, {active} active"
    ))
}

/// What is wrong with a new pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    pub pod: String,
    pub container: Option<String>,
    pub kind: ProblemKind,
    /// The Kubernetes reason (ImagePullBackOff, CrashLoopBackOff, Unschedulable, ...).
    pub reason: String,
    pub message: String,
}

impl PodProblem {
    /// `pod web-7c9f-abcde`, or `replicaset web-7c9f` when pods cannot even be created.
    pub fn subject(&self) -> String {
        match self.kind {
            ProblemKind::FailedCreate => format!("replicaset {}", self.pod),
            _ => format!("pod {}", self.pod),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    ImagePull,
    InvalidImage,
    CrashLoop,
    ConfigError,
    /// The ReplicaSet cannot create pods (quota, PodSecurity, admission webhook, missing ServiceAccount).
    FailedCreate,
    CreateError,
    Unschedulable,
    NotReady,
    PodFailed,
}

/// Grace period of each problem before ferry gives up (7.4 / 1.6 defaults).
pub fn grace(kind: ProblemKind) -> Option<Duration> {
    match kind {
        ProblemKind::ImagePull => Some(Duration::from_secs(90)),
        ProblemKind::InvalidImage
        | ProblemKind::CrashLoop
        | ProblemKind::CreateError
        | ProblemKind::PodFailed => Some(Duration::ZERO),
        ProblemKind::ConfigError | ProblemKind::FailedCreate => Some(Duration::from_secs(30)),
        ProblemKind::Unschedulable => Some(Duration::from_secs(300)),
        // readiness failures are reported at the deadline, never failed fast
        ProblemKind::NotReady => None,
    }
}

/// Classifies one pod (Argo CD's heuristic plus the table of 1.6). `None` if nothing is wrong
/// (yet).
pub fn classify_pod(pod: &Value) -> Option<PodProblem> {
    let name = str_at(pod, "/metadata/name").unwrap_or("?").to_string();
    let mk = |container: Option<&str>, kind, reason: &str, message: &str| PodProblem {
        pod: name.clone(),
        container: container.map(str::to_string),
        kind,
        reason: reason.to_string(),
        message: message.to_string(),
    };
    let phase = str_at(pod, "/status/phase").unwrap_or("");
    if phase == "Failed" {
        let reason = str_at(pod, "/status/reason").unwrap_or("Failed");
        let message = str_at(pod, "/status/message").unwrap_or("");
        let restart = str_at(pod, "/spec/restartPolicy").unwrap_or("Always");
        if restart == "Always" {
            return Some(mk(None, ProblemKind::PodFailed, reason, message));
        }
    }
    for list in ["initContainerStatuses", "containerStatuses"] {
        let Some(statuses) = pod
            .pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for cs in statuses {
            let cname = cs.get("name").and_then(Value::as_str);
            let restarts = cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            if let Some(w) = cs.pointer("/state/waiting") {
                let reason = w.get("reason").and_then(Value::as_str).unwrap_or("");
                let msg = w.get("message").and_then(Value::as_str).unwrap_or("");
                let kind = match reason {
                    "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => {
                        Some(ProblemKind::ImagePull)
                    }
                    "InvalidImageName" => Some(ProblemKind::InvalidImage),
                    "CrashLoopBackOff" => Some(ProblemKind::CrashLoop),
                    "CreateContainerConfigError" => Some(ProblemKind::ConfigError),
                    "CreateContainerError" | "RunContainerError" => Some(ProblemKind::CreateError),
                    r if r.starts_with("Err") || r.ends_with("Error") || r.ends_with("BackOff") => {
                        Some(ProblemKind::CreateError)
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    let mut message = msg.to_string();
                    if kind == ProblemKind::CrashLoop {
                        message = crash_detail(cs, restarts, msg);
                    }
                    return Some(mk(cname, kind, reason, &message));
                }
            }
            if restarts >= 3 {
                return Some(mk(
                    cname,
                    ProblemKind::CrashLoop,
                    "CrashLoopBackOff",
                    &crash_detail(cs, restarts, ""),
                ));
            }
        }
    }
    if let Some(c) = condition(pod, "PodScheduled")
        && c.get("status").and_then(Value::as_str) == Some("False")
        && c.get("reason").and_then(Value::as_str) == Some("Unschedulable")
    {
        let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
        return Some(mk(None, ProblemKind::Unschedulable, "Unschedulable", msg));
    }
    if phase == "Running"
        && let Some(c) = condition(pod, "Ready")
        && c.get("status").and_then(Value::as_str) == Some("False")
    {
        let msg = c
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("containers not ready");
        return Some(mk(None, ProblemKind::NotReady, "NotReady", msg));
    }
    None
}

fn crash_detail(cs: &Value, restarts: i64, msg: &str) -> String {
    let mut parts = vec![format!("restarted {restarts} times")];
    if let Some(t) = cs.pointer("/lastState/terminated") {
        let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        let reason = t.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason == "OOMKilled" {
            parts.push("last run was OOMKilled (memory limit too low?)".into());
        } else {
            parts.push(format!(
                "last exit code {code}{}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                }
            ));
        }
        if let Some(m) = t
            .get("message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
        {
            parts.push(m.to_string());
        }
    }
    if !msg.is_empty() {
        parts.push(msg.to_string());
    }
    parts.join(", ")
}

/// A hint for the user, per problem.
pub fn hint(p: &PodProblem) -> Option<&'static str> {
    match p.kind {
        ProblemKind::ImagePull | ProblemKind::InvalidImage => Some(
            "was the image pushed by the build job? is the tag right? does the namespace have imagePullSecrets for the registry?",
        ),
        ProblemKind::CrashLoop => {
            Some("the container starts and exits; see its last log lines below")
        }
        ProblemKind::ConfigError => Some("a ConfigMap, Secret or key the pod refers to is missing"),
        ProblemKind::FailedCreate => Some(
            "the cluster refuses to create the pods: check ResourceQuota, PodSecurity admission, webhooks and the ServiceAccount",
        ),
        ProblemKind::Unschedulable => Some(
            "no node can take the pod: check resource requests, taints, node selectors and affinity",
        ),
        ProblemKind::NotReady => Some(
            "the readiness probe keeps failing; check its path/port and the application's startup",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(generation: i64, observed: i64, status: Value) -> Value {
        let mut s = status;
        s["observedGeneration"] = json!(observed);
        json!({"metadata": {"generation": generation}, "spec": {"replicas": 3}, "status": s})
    }

    #[test]
    fn deployment_generation_gate_first() {
        // the old, complete status must not count right after an apply
        let d = dep(
            2,
            1,
            json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}),
        );
        assert!(matches!(deployment(&d), Rollout::InProgress(m) if m.contains("observed")));
    }

    #[test]
    fn deployment_steps() {
        let d = dep(
            2,
            2,
            json!({"replicas": 4, "updatedReplicas": 1, "availableReplicas": 3}),
        );
        assert_eq!(
            deployment(&d),
            Rollout::InProgress("1 of 3 new replicas have been updated".into())
        );
        let d = dep(
            2,
            2,
            json!({"replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            deployment(&d),
            Rollout::InProgress("1 old replicas are pending termination".into())
        );
        let d = dep(
            2,
            2,
            json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
        );
        assert_eq!(
            deployment(&d),
            Rollout::InProgress("2 of 3 updated replicas are available".into())
        );
        let d = dep(
            2,
            2,
            json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert!(matches!(deployment(&d), Rollout::Done(_)));
        let d = dep(
            2,
            2,
            json!({"replicas": 4, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]}),
        );
        assert!(
            matches!(deployment(&d), Rollout::Failed(m) if m.contains("timed out progressing"))
        );
    }

    #[test]
    fn statefulset_and_daemonset() {
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "updateRevision": "a", "currentRevision": "b"}});
        assert!(matches!(statefulset(&s), Rollout::InProgress(_)));
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "updateRevision": "a", "currentRevision": "a"}});
        assert!(matches!(statefulset(&s), Rollout::Done(_)));
        let s = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": {}});
        assert!(matches!(statefulset(&s), Rollout::InProgress(_)));
        let d = json!({"metadata": {"generation": 3}, "status": {"observedGeneration": 3,
            "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(
            daemonset(&d),
            Rollout::InProgress("1 of 2 updated pods are available".into())
        );
        let d = json!({"spec": {"updateStrategy": {"type": "OnDelete"}}});
        assert!(matches!(daemonset(&d), Rollout::Done(_)));
    }

    #[test]
    fn jobs() {
        let j = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert!(matches!(job(&j), Rollout::Failed(m) if m.contains("BackoffLimitExceeded")));
        let j = json!({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(matches!(job(&j), Rollout::Done(_)));
        assert!(matches!(job(&json!({})), Rollout::InProgress(_)));
    }

    #[test]
    fn pods() {
        let p = json!({"metadata": {"name": "web-1"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "web", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"r/web:bad\""}}}]}});
        let pr = classify_pod(&p).unwrap();
        assert_eq!(
            (pr.kind, pr.reason.as_str(), pr.container.as_deref()),
            (ProblemKind::ImagePull, "ImagePullBackOff", Some("web"))
        );
        let p = json!({"metadata": {"name": "web-1"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "web", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}});
        let pr = classify_pod(&p).unwrap();
        assert_eq!(pr.kind, ProblemKind::CrashLoop);
        assert!(pr.message.contains("OOMKilled"), "{}", pr.message);
        let p = json!({"metadata": {"name": "web-1"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}});
        assert_eq!(classify_pod(&p).unwrap().kind, ProblemKind::Unschedulable);
        let p = json!({"metadata": {"name": "web-1"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "web", "restartCount": 0, "ready": true, "state": {"running": {}}}]}});
        assert_eq!(classify_pod(&p), None);
    }
}
