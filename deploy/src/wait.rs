//! Waiting for workloads: one future per workload (watch + periodic diagnostics), all joined;
//! progress lines go through a channel to the single log writer.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, LogParams};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::apply::{Applied, list_objects, obj_value};
use crate::cluster::{Cluster, Op, apps_v1, core_v1};
use crate::health::{self, PodProblem, ProblemKind, Rollout};
use crate::object::{self, annotation, label, owned_by, selector_of};

/// How a workload's wait ended.
#[derive(Debug, Clone)]
pub enum WaitResult {
    Done(String),
    Failed(Failure),
    Cancelled,
}

/// A failed or timed-out rollout, explained.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `deployment.apps/web`
    pub workload: String,
    /// One line: what went wrong.
    pub summary: String,
    /// Hints, events, log excerpt, cluster state.
    pub details: Vec<String>,
}

pub struct WaitConfig {
    pub deadline: Instant,
    pub start: Instant,
    pub fail_fast: bool,
    pub grace_override: Option<Duration>,
    pub diagnose_every: Duration,
    pub timeout_text: String,
}

/// A progress line at least this often, even when nothing changes.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Pods that are merely not ready are mentioned only after this long.
const NOT_READY_NOTICE: Duration = Duration::from_secs(30);

fn stamp(start: Instant) -> String {
    let s = start.elapsed().as_secs();
    format!("[{:02}:{:02}]", s / 60, s % 60)
}

/// Waits for one workload until it is rolled out, fails, or the deadline passes.
pub async fn wait_workload(
    cluster: &Cluster,
    w: &Applied,
    cfg: &WaitConfig,
    lines: UnboundedSender<String>,
    cancel: &tokio_util::sync::CancellationToken,
) -> WaitResult {
    let api = w.api(cluster);
    let name = w.planned.manifest.name.clone();
    let kind = w.planned.manifest.kind.clone();
    let label = w.display();
    let mut watch = watcher::watch_object(api.clone(), &name)
        .default_backoff()
        .boxed();
    let mut tick =
        tokio::time::interval_at(Instant::now() + cfg.diagnose_every, cfg.diagnose_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_msg = String::new();
    let mut last_line = Instant::now();
    let mut latest: Option<Value> = Some(obj_value(&w.live));
    let mut seen: HashMap<(String, String), (Instant, PodProblem, bool)> = HashMap::new();
    let deadline = tokio::time::sleep_until(cfg.deadline);
    tokio::pin!(deadline);

    loop {
        // Evaluate the latest state.
        if let Some(obj) = &latest {
            match health::evaluate(&kind, obj) {
                Rollout::Done(msg) => {
                    let _ = lines.send(format!(
                        "  {} {label}: rolled out ({msg})",
                        stamp(cfg.start)
                    ));
                    return WaitResult::Done(msg);
                }
                Rollout::Failed(msg) => {
                    let problems = diagnose(cluster, w, obj).await.unwrap_or_default();
                    let failure =
                        explain(cluster, w, obj, &msg, problems.first().cloned(), &problems).await;
                    return WaitResult::Failed(failure);
                }
                Rollout::InProgress(msg) => {
                    if msg != last_msg {
                        let _ = lines.send(format!("  {} {label}: {msg}", stamp(cfg.start)));
                        last_msg = msg;
                        last_line = Instant::now();
                    } else if last_line.elapsed() >= HEARTBEAT {
                        let _ = lines.send(format!(
                            "  {} {label}: still waiting: {msg}",
                            stamp(cfg.start)
                        ));
                        last_line = Instant::now();
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return WaitResult::Cancelled,
            _ = &mut deadline => {
                let obj = latest.clone().unwrap_or(Value::Null);
                let problems = diagnose(cluster, w, &obj).await.unwrap_or_default();
                let summary = format!("not rolled out after {}: {last_msg}", cfg.timeout_text);
                return WaitResult::Failed(explain(cluster, w, &obj, &summary, problems.first().cloned(), &problems).await);
            }
            ev = watch.next() => {
                match ev {
                    Some(Ok(Some(o))) => latest = Some(obj_value(&o)),
                    Some(Ok(None)) => {
                        return WaitResult::Failed(Failure {
                            workload: label.clone(),
                            summary: "was deleted while ferry waited for it".into(),
                            details: Vec::new(),
                        });
                    }
                    Some(Err(e)) => tracing::debug!(workload = %label, error = %e, "watch error; the watcher retries"),
                    None => {}
                }
            }
            _ = tick.tick() => {
                // Re-read the object (in case the watch is slow) and look at the new pods.
                if let Ok(o) = w.fetch(cluster).await {
                    latest = Some(o);
                }
                let Some(obj) = latest.clone() else { continue };
                if !matches!(health::evaluate(&kind, &obj), Rollout::InProgress(_)) {
                    continue;
                }
                let problems = match diagnose(cluster, w, &obj).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(workload = %label, error = %e, "diagnostics failed");
                        continue;
                    }
                };
                let now = Instant::now();
                let mut give_up: Option<PodProblem> = None;
                for p in &problems {
                    // keyed by kind: ErrImagePull → ImagePullBackOff keeps its first-seen time
                    let key = (p.pod.clone(), format!("{:?}", p.kind));
                    let entry = seen.entry(key).or_insert_with(|| (now, p.clone(), false));
                    // keep the first detailed message (pull errors degrade to "Back-off pulling image")
                    if entry.1.message.is_empty() {
                        entry.1.message = p.message.clone();
                    }
                    // not-ready pods are normal for a while during any rollout
                    let worth_saying = p.kind != ProblemKind::NotReady || now.duration_since(entry.0) >= NOT_READY_NOTICE;
                    if !entry.2 && worth_saying {
                        entry.2 = true;
                        let container = p.container.as_ref().map(|c| format!(" (container {c})")).unwrap_or_default();
                        let _ = lines.send(format!(
                            "  {} {label}: {}{container}: {} — {}",
                            stamp(cfg.start), p.subject(), p.reason, entry.1.message
                        ));
                    }
                    if cfg.fail_fast {
                        let grace = match (cfg.grace_override, health::grace(p.kind)) {
                            (_, None) => None,
                            (Some(g), Some(_)) => Some(g),
                            (None, Some(g)) => Some(g),
                        };
                        if let Some(g) = grace
                            && now.duration_since(entry.0) >= g
                            && give_up.is_none()
                        {
                            give_up = Some(PodProblem { reason: p.reason.clone(), ..entry.1.clone() });
                        }
                    }
                }
                if let Some(p) = give_up {
                    let summary = format!("{}: {} — {}", p.subject(), p.reason, p.message);
                    return WaitResult::Failed(explain(cluster, w, &obj, &summary, Some(p.clone()), &problems).await);
                }
            }
        }
    }
}

/// The objects of one resource type in namespace `ns` matching `lp`.
async fn list(
    cluster: &Cluster,
    ar: &ApiResource,
    ns: &str,
    lp: &ListParams,
) -> Result<Vec<Value>, crate::DeployError> {
    list_objects(cluster, ar, Some(ns), lp).await
}

/// The new ReplicaSet of a Deployment (owned by it, same revision annotation).
pub async fn new_replicaset(
    cluster: &Cluster,
    ns: &str,
    dep: &Value,
) -> Result<Option<Value>, crate::DeployError> {
    let uid = object::uid(dep);
    let rev = annotation(dep, "deployment.kubernetes.io/revision");
    let lp = ListParams::default().labels(&selector_of(dep).unwrap_or_default());
    let rss = list(cluster, &apps_v1("ReplicaSet", "replicasets"), ns, &lp).await?;
    Ok(rss
        .into_iter()
        .filter(|rs| owned_by(rs, uid))
        .find(|rs| rev.is_some() && annotation(rs, "deployment.kubernetes.io/revision") == rev))
}

/// Pods of the new revision of a workload and their problems (new pods only).
async fn new_pods(
    cluster: &Cluster,
    w: &Applied,
    obj: &Value,
) -> Result<(Vec<Value>, Vec<PodProblem>), crate::DeployError> {
    let Some(ns) = w.planned.namespace.as_deref() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let Some(sel) = selector_of(obj) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let uid = object::uid(obj).to_string();
    let mut problems = Vec::new();
    let (selector, owner) = match w.planned.manifest.kind.as_str() {
        "Deployment" => {
            let Some(rs) = new_replicaset(cluster, ns, obj).await? else {
                return Ok((Vec::new(), problems));
            };
            if let Some(c) = health::condition(&rs, "ReplicaFailure")
                && c.get("status").and_then(Value::as_str) == Some("True")
            {
                problems.push(PodProblem {
                    pod: rs
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    container: None,
                    kind: ProblemKind::FailedCreate,
                    reason: c
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("FailedCreate")
                        .to_string(),
                    message: c
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            let hash = label(&rs, "pod-template-hash").unwrap_or("");
            let rs_uid = object::uid(&rs).to_string();
            (format!("{sel},pod-template-hash={hash}"), rs_uid)
        }
        "StatefulSet" => {
            let rev = obj
                .pointer("/status/updateRevision")
                .and_then(Value::as_str)
                .unwrap_or("");
            if rev.is_empty() {
                (sel, uid)
            } else {
                (format!("{sel},controller-revision-hash={rev}"), uid)
            }
        }
        _ => (sel, uid),
    };
    let pods = list(
        cluster,
        &core_v1("Pod", "pods"),
        ns,
        &ListParams::default().labels(&selector),
    )
    .await?;
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .map(|g| g.to_string());
    let pods: Vec<Value> = pods
        .into_iter()
        .filter(|p| owned_by(p, &owner))
        .filter(|p| {
            // DaemonSet: only pods of the current template generation
            w.planned.manifest.kind != "DaemonSet"
                || label(p, "pod-template-generation").is_none()
                || label(p, "pod-template-generation") == generation.as_deref()
        })
        .collect();
    problems.extend(pods.iter().filter_map(health::classify_pod));
    Ok((pods, problems))
}

async fn diagnose(
    cluster: &Cluster,
    w: &Applied,
    obj: &Value,
) -> Result<Vec<PodProblem>, crate::DeployError> {
    Ok(new_pods(cluster, w, obj).await?.1)
}

/// Builds the failure report: the reason, a hint, recent Warning events of the new pods, the
/// crashing container's last log lines and what old pods still serve.
async fn explain(
    cluster: &Cluster,
    w: &Applied,
    obj: &Value,
    summary: &str,
    main: Option<PodProblem>,
    problems: &[PodProblem],
) -> Failure {
    let mut details = Vec::new();
    if let Some(p) = &main
        && let Some(h) = health::hint(p)
    {
        details.push(format!("hint: {h}"));
    }
    let mut same_elsewhere = 0;
    for p in problems {
        match &main {
            Some(m) if m.pod == p.pod && m.kind == p.kind => {}
            Some(m) if m.kind == p.kind => same_elsewhere += 1,
            _ => details.push(format!(
                "also: {}: {} — {}",
                p.subject(),
                p.reason,
                p.message
            )),
        }
    }
    if let Some(m) = &main
        && same_elsewhere > 0
    {
        details.push(format!(
            "also: {same_elsewhere} other new pod{} with {}",
            if same_elsewhere == 1 { "" } else { "s" },
            m.reason
        ));
    }
    let ns = w.planned.namespace.clone().unwrap_or_default();
    if let Ok((pods, _)) = new_pods(cluster, w, obj).await {
        // (reason, message) → (first pod, how many pods); the same event on every new pod is
        // said once.
        let mut seen_events: Vec<(String, String, String, usize)> = Vec::new();
        for pod in pods.iter().take(5) {
            let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) else {
                continue;
            };
            let pname = pod
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let lp =
                ListParams::default().fields(&format!("involvedObject.uid={uid},type=Warning"));
            if let Ok(evs) = list(cluster, &core_v1("Event", "events"), &ns, &lp).await {
                for e in evs {
                    let reason = e
                        .get("reason")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let msg = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    match seen_events.iter_mut().find(|x| x.0 == reason && x.1 == msg) {
                        Some(x) if x.2 != pname => x.3 += 1,
                        Some(_) => {}
                        None => seen_events.push((reason, msg, pname.to_string(), 1)),
                    }
                }
            }
        }
        let mut events: Vec<String> = seen_events
            .into_iter()
            .map(|(reason, msg, pod, n)| {
                let others = match n {
                    1 => String::new(),
                    2 => " (and 1 other pod)".to_string(),
                    n => format!(" (and {} other pods)", n - 1),
                };
                format!("  {pod}: {reason}: {msg}{others}")
            })
            .collect();
        if let Some(p) = &main
            && p.kind == ProblemKind::FailedCreate
        {
            let lp = ListParams::default().fields(&format!(
                "involvedObject.kind=ReplicaSet,involvedObject.name={},type=Warning",
                p.pod
            ));
            if let Ok(evs) = list(cluster, &core_v1("Event", "events"), &ns, &lp).await {
                for e in evs {
                    let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
                    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                    let line = format!("  {}: {reason}: {msg}", p.pod);
                    if !events.contains(&line) {
                        events.push(line);
                    }
                }
            }
        }
        if !events.is_empty() {
            details.push("recent warning events (new pods only):".into());
            details.extend(
                events
                    .into_iter()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev(),
            );
        }
        if let Some(p) = &main
            && p.kind == ProblemKind::CrashLoop
        {
            let api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(cluster.client.clone(), &ns);
            let lp = LogParams {
                container: p.container.clone(),
                previous: true,
                tail_lines: Some(20),
                ..Default::default()
            };
            let op = Op::new("get", "pods/log").name(&p.pod).ns(Some(&ns));
            if let Ok(text) = cluster.call(&op, || api.logs(&p.pod, &lp)).await
                && !text.trim().is_empty()
            {
                details.push(format!(
                    "last log lines of the previous container of pod {}:",
                    p.pod
                ));
                details.extend(text.lines().map(|l| format!("  | {l}")));
            }
        }
    }
    if w.planned.manifest.kind == "Deployment"
        && let Some(state) = old_pods_state(cluster, &ns, obj).await
    {
        details.push(state);
    }
    // Pull errors degrade to a generic "Back-off pulling image"; the pod's events keep the
    // registry's answer.
    let mut summary = summary.to_string();
    if let Some(m) = &main
        && m.kind == ProblemKind::ImagePull
        && m.message.starts_with("Back-off pulling image")
        && let Some(better) = details
            .iter()
            .find_map(|d| d.split_once(": Failed: ").map(|(_, msg)| msg))
            .filter(|msg| msg.starts_with("Failed to pull image"))
    {
        let better = better.split(" (and ").next().unwrap_or(better);
        summary = summary.replace(&m.message, better);
    }
    Failure {
        workload: w.display(),
        summary,
        details,
    }
}

/// "cluster state: old ReplicaSet web-5b8d still serves 3 ready pods".
async fn old_pods_state(cluster: &Cluster, ns: &str, dep: &Value) -> Option<String> {
    let uid = dep.pointer("/metadata/uid").and_then(Value::as_str)?;
    let rev = annotation(dep, "deployment.kubernetes.io/revision");
    let lp = ListParams::default().labels(&selector_of(dep)?);
    let rss = list(cluster, &apps_v1("ReplicaSet", "replicasets"), ns, &lp)
        .await
        .ok()?;
    let old: Vec<String> = rss
        .iter()
        .filter(|rs| {
            owned_by(rs, uid) && annotation(rs, "deployment.kubernetes.io/revision") != rev
        })
        .filter_map(|rs| {
            let ready = rs
                .pointer("/status/readyReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            (ready > 0).then(|| {
                format!(
                    "{} ({ready} ready)",
                    rs.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                )
            })
        })
        .collect();
    if old.is_empty() {
        Some("cluster state: no pod of an older revision is serving".into())
    } else {
        Some(format!(
            "cluster state: old ReplicaSet {} still serving (rollout stuck, nothing lost)",
            old.join(", ")
        ))
    }
}
