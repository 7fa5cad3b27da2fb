//! A stateful fake Kubernetes API server on 127.0.0.1 for ferry's deploy tests.
//!
//! What it does (enough for kube-rs and kubectl to work against it):
//! * discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`), CRDs add kinds;
//! * an object store with `resourceVersion`, `uid`, `generation` (bumped on spec changes),
//!   `creationTimestamp`, defaulting (Service clusterIP, Deployment replicas, ...);
//! * GET, LIST (label and field selectors), WATCH (replay from a resourceVersion, JSON lines),
//!   POST, PUT, DELETE, PATCH: server-side apply as an upsert with field ownership and
//!   conflicts (409 listing the other managers, `force` takes over), JSON merge patch, a
//!   strategic merge patch (lists of named objects by name, `$patch: replace`), JSON patch;
//!   `dryRun=All`; subresources `status` and pod `log`;
//! * a controller simulation ([`Scenario`]) that plays the Deployment/ReplicaSet/Pod,
//!   StatefulSet, DaemonSet and Job controllers on a timeline, with Events;
//! * fault injection (transient 429/500 answers, 403 for a verb and resource, a bearer token).
//!
//! What it does not do: real SSA field removal, schema validation, admission, RBAC, GC of
//! owned objects beyond what the controller simulation deletes, pagination, bookmarks.

#![allow(clippy::result_large_err)] // handlers answer with a ready `Response` as their error

mod controller;
mod resources;
mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

pub use controller::{Outcome, Scenario};
use resources::Resource;
pub use store::now_rfc3339;
use store::{Store, WatchEv};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: String,
    pub status: u16,
}

#[derive(Default)]
struct Faults {
    /// (remaining count, status) answered to resource requests before real handling.
    transient: Option<(u32, u16)>,
    /// (verb, resource key such as `deployments.apps`) answered with 403.
    forbidden: Vec<(String, String)>,
    /// Bearer token every request must carry.
    token: Option<String>,
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    tx: broadcast::Sender<WatchEv>,
    notify: Notify,
    scenario: Scenario,
    seen: Mutex<Vec<Seen>>,
    faults: Mutex<Faults>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Pods of `Outcome::Held` become ready once set (`FakeK8s::release`).
    released: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, res: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().get(res, ns, name)
    }

    pub(crate) fn list(&self, res: &str, ns: Option<&str>) -> Vec<Value> {
        self.lock().list(res, ns)
    }

    pub(crate) fn resource(&self, group: &str, kind: &str) -> Option<Resource> {
        self.lock().by_kind(group, kind)
    }

    /// Writes a full object (controller side) and broadcasts the change.
    pub(crate) fn put(&self, group: &str, kind: &str, ns: &str, obj: Value) -> Value {
        let Some(res) = self.resource(group, kind) else {
            return obj;
        };
        let (stored, ev) = self.lock().put(&res, ns, obj, false);
        if let Some(ev) = ev {
            let _ = self.tx.send(ev);
            self.notify.notify_one();
        }
        stored
    }

    /// Applies `f` to the stored object (controller side) and writes it back.
    pub(crate) fn update(
        &self,
        group: &str,
        kind: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let res = self.resource(group, kind)?;
        let mut obj = self.get(&res.key(), ns, name)?;
        f(&mut obj);
        Some(self.put(group, kind, ns, obj))
    }

    pub(crate) fn delete(&self, group: &str, kind: &str, ns: &str, name: &str) {
        let Some(res) = self.resource(group, kind) else {
            return;
        };
        let ev = self.lock().delete(&res, ns, name);
        if let Some((_, ev)) = ev {
            let _ = self.tx.send(ev);
            self.notify.notify_one();
        }
    }

    pub(crate) fn set_log(&self, ns: &str, pod: &str, text: &str) {
        self.lock()
            .logs
            .insert((ns.to_string(), pod.to_string()), text.to_string());
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.lock().next_id()
    }

    /// Posts a core/v1 Event about `obj`.
    pub(crate) fn event(&self, obj: &Value, ty: &str, reason: &str, message: &str) {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = self.next_id();
        let now = now_rfc3339();
        let ev = json!({
            "metadata": {"name": format!("{name}.{id:x}"), "namespace": ns},
            "involvedObject": {
                "kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"), "name": name, "namespace": ns,
                "uid": obj.pointer("/metadata/uid"),
            },
            "reason": reason, "message": message, "type": ty, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "fake-k8s"}, "reportingComponent": "fake-k8s",
        });
        self.put("", "Event", &ns, ev);
    }
}

/// A running fake API server. Dropping it stops the server and the controllers.
pub struct FakeK8s {
    pub url: String,
    /// PEM of the server certificate (self-signed) when serving HTTPS.
    pub ca_pem: Option<String>,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for FakeK8s {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        self.server.abort();
        self.controller.abort();
    }
}

impl FakeK8s {
    /// Starts a fake on 127.0.0.1 (random port) with namespaces `default` and `test` (plus the
    /// scenario's), returning its URL and the handle.
    pub async fn start(scenario: Scenario) -> (String, FakeK8s) {
        Self::start_with(scenario, false).await
    }

    /// Like [`FakeK8s::start`], over HTTPS with a self-signed certificate for 127.0.0.1
    /// (`ca_pem`); [`FakeK8s::write_kubeconfig`] then names it as the certificate authority.
    pub async fn start_tls(scenario: Scenario) -> (String, FakeK8s) {
        Self::start_with(scenario, true).await
    }

    async fn start_with(scenario: Scenario, tls: bool) -> (String, FakeK8s) {
        let (tx, _) = broadcast::channel(8192);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            tx,
            notify: Notify::new(),
            scenario: scenario.clone(),
            seen: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            shutdown,
            released: std::sync::atomic::AtomicBool::new(false),
        });
        let mut nss = vec![
            "default".to_string(),
            "kube-system".to_string(),
            "test".to_string(),
        ];
        nss.extend(scenario.namespaces.iter().cloned());
        for ns in nss {
            shared.put(
                "",
                "Namespace",
                "",
                json!({"metadata": {"name": ns}, "status": {"phase": "Active"}}),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let (server, ca_pem) = if tls {
            let cert = crate::fake_gitlab::TestCert::generate();
            (
                serve_tls(listener, app, cert.acceptor.clone()),
                Some(cert.cert_pem),
            )
        } else {
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (server, None)
        };
        let controller = tokio::spawn(controller::run(shared.clone()));
        let url = format!("{}://{addr}", if tls { "https" } else { "http" });
        (
            url.clone(),
            FakeK8s {
                url,
                ca_pem,
                shared,
                server,
                controller,
            },
        )
    }

    /// Writes a kubeconfig for this server into `dir` (context `fake`, namespace `test`; over
    /// HTTPS with `certificate-authority: ca-fake.pem`, a path relative to the kubeconfig).
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        write_kubeconfig_with(
            dir,
            &self.url,
            "fake",
            Some("test"),
            None,
            self.ca_pem.as_deref(),
        )
    }

    /// The stored object, if any (`res` is the plural with its group: `deployments.apps`).
    pub fn get(&self, res: &str, ns: &str, name: &str) -> Option<Value> {
        self.shared.get(res, ns, name)
    }

    pub fn list(&self, res: &str, ns: Option<&str>) -> Vec<Value> {
        self.shared.list(res, ns)
    }

    /// Stores an object as if someone else had created it (`apiVersion`/`kind` in `obj`).
    pub fn seed(&self, obj: Value) -> Value {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("v1")
            .to_string();
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.shared.put(&group, &kind, &ns, obj)
    }

    /// Records `manager` as the owner of the given leaf paths of an object (e.g. as if
    /// `kubectl-client-side-apply` had set `.spec.replicas`).
    pub fn set_owner(&self, res: &str, ns: &str, name: &str, path: &str, manager: &str) {
        let mut st = self.shared.lock();
        st.owners
            .entry((res.to_string(), ns.to_string(), name.to_string()))
            .or_default()
            .insert(store::encode_path(path), manager.to_string());
    }

    /// The pods of `Outcome::Held` rollouts become ready (those held now and later ones).
    pub fn release(&self) {
        self.shared
            .released
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// All requests so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The next `count` resource requests are answered with `status` (429, 500, 503 ...).
    pub fn fail_next(&self, count: u32, status: u16) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.transient = Some((count, status));
        }
    }

    /// Answers `verb` on `resource` (e.g. `patch`, `deployments.apps`) with 403.
    pub fn forbid(&self, verb: &str, resource: &str) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.forbidden.push((verb.to_string(), resource.to_string()));
        }
    }

    /// Every request must carry `Authorization: Bearer <token>`, else 401.
    pub fn require_token(&self, token: &str) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.token = Some(token.to_string());
        }
    }
}

/// Writes a kubeconfig with one cluster/context/user; returns its path.
pub fn write_kubeconfig(
    dir: &Path,
    url: &str,
    context: &str,
    namespace: Option<&str>,
    token: Option<&str>,
) -> PathBuf {
    write_kubeconfig_with(dir, url, context, namespace, token, None)
}

/// Like [`write_kubeconfig`]; with `ca_pem`, also writes `ca-<context>.pem` beside it and names
/// it (relative path) as the cluster's certificate authority.
pub fn write_kubeconfig_with(
    dir: &Path,
    url: &str,
    context: &str,
    namespace: Option<&str>,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> PathBuf {
    let ns = namespace
        .map(|n| format!("\n    namespace: {n}"))
        .unwrap_or_default();
    let user = match token {
        Some(t) => format!("  user:\n    token: {t}"),
        None => "  user: {}".to_string(),
    };
    let ca = match ca_pem {
        Some(pem) => {
            let file = format!("ca-{context}.pem");
            std::fs::write(dir.join(&file), pem).expect("write CA");
            format!("\n    certificate-authority: {file}")
        }
        None => String::new(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}{ca}\ncontexts:\n- name: {context}\n  context:\n    cluster: fake\n    user: fake{ns}\ncurrent-context: {context}\nusers:\n- name: fake\n{user}\n"
    );
    let path = dir.join(format!("kubeconfig-{context}.yaml"));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Serves `app` over TLS until the task is aborted (which drops every connection).
fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let service = TowerToHyperService::new(app.clone());
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    status_with(code, reason, message, None)
}

fn status_with(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    if let Some(d) = details {
        body["details"] = d;
    }
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        sc,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_ok(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn json_code(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The parsed resource path.
struct Target {
    res: Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = route(&sh, &method, &uri, &headers, &q, &content_type, &body).await;
    if let Ok(mut s) = sh.seen.lock() {
        s.push(Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            content_type,
            status: resp.status().as_u16(),
        });
    }
    resp
}

fn verb_of(method: &Method, name: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch => "watch",
        Method::GET if name => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn route(
    sh: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    if let Ok(f) = sh.faults.lock()
        && let Some(t) = &f.token
    {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got != format!("Bearer {t}") {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Discovery.
    match segs.as_slice() {
        ["version"] => {
            return json_ok(
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64",
                "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc"}),
            );
        }
        ["api"] => {
            return json_ok(&json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}));
        }
        ["apis"] => {
            let groups = resources::groups(&sh.lock().resources);
            return json_ok(&json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
        }
        ["apis", g] => {
            let groups = resources::groups(&sh.lock().resources);
            return match groups
                .into_iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(g))
            {
                Some(mut gr) => {
                    gr["kind"] = json!("APIGroup");
                    gr["apiVersion"] = json!("v1");
                    json_ok(&gr)
                }
                None => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            };
        }
        ["api", v] => {
            let l = resources::resource_list(&sh.lock().resources, "", v);
            return l.map(|l| json_ok(&l)).unwrap_or_else(|| {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            });
        }
        ["apis", g, v] => {
            let l = resources::resource_list(&sh.lock().resources, g, v);
            return l.map(|l| json_ok(&l)).unwrap_or_else(|| {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            });
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => {
            (Some(ns.to_string()), [&[*plural][..], more].concat())
        }
        other => (None, other.to_vec()),
    };
    let Some(plural) = rest.first() else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let Some(res) = sh.lock().find_resource(group, version, plural) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let target = Target {
        res,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    };
    let watch = matches!(q.get("watch").map(String::as_str), Some("true") | Some("1"));
    let verb = verb_of(method, target.name.is_some(), watch);
    if let Ok(mut f) = sh.faults.lock() {
        if let Some((n, code)) = f.transient
            && n > 0
        {
            f.transient = if n > 1 { Some((n - 1, code)) } else { None };
            return status(
                code,
                if code == 429 {
                    "TooManyRequests"
                } else {
                    "InternalError"
                },
                "injected transient failure",
            );
        }
        if f.forbidden
            .iter()
            .any(|(v, r)| v == verb && *r == target.res.key())
        {
            let msg = format!(
                "{} {:?} is forbidden: User \"system:serviceaccount:ci:deployer\" cannot {verb} resource \"{}\" in API group \"{}\"{}",
                target.res.key(),
                target.name.clone().unwrap_or_default(),
                target.res.plural,
                target.res.group,
                target
                    .ns
                    .as_ref()
                    .map(|n| format!(" in the namespace \"{n}\""))
                    .unwrap_or_default()
            );
            return status(403, "Forbidden", &msg);
        }
    }
    if target.res.namespaced && target.ns.is_none() && target.name.is_some() {
        return status(404, "NotFound", "namespaced resource without a namespace");
    }
    if let Some(ns) = &target.ns
        && *method != Method::GET
        && sh.get("namespaces", "", ns).is_none()
    {
        return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
    }
    match (method.clone(), &target.name) {
        (Method::GET, None) if watch => watch_resp(sh, &target, q),
        (Method::GET, None) => list_resp(sh, &target, q),
        (Method::GET, Some(name)) => get_resp(sh, &target, name, q),
        (Method::POST, None) => create(sh, &target, body, q),
        (Method::PUT, Some(name)) => replace(sh, &target, name, body, q),
        (Method::PATCH, Some(name)) => patch(sh, &target, name, content_type, body, q),
        (Method::DELETE, Some(name)) => {
            let ns = target.ns.clone().unwrap_or_default();
            let gone = sh.lock().delete(&target.res, &ns, name);
            match gone {
                Some((obj, ev)) => {
                    let _ = sh.tx.send(ev);
                    sh.notify.notify_one();
                    json_ok(&obj)
                }
                None => not_found(&target, name),
            }
        }
        _ => status(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn not_found(t: &Target, name: &str) -> Response {
    let details = json!({"name": name, "group": t.res.group, "kind": t.res.plural});
    status_with(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", t.res.key()),
        Some(details),
    )
}

fn get_resp(sh: &Arc<Shared>, t: &Target, name: &str, q: &HashMap<String, String>) -> Response {
    let ns = t.ns.clone().unwrap_or_default();
    let Some(obj) = sh.get(&t.res.key(), &ns, name) else {
        return not_found(t, name);
    };
    if t.sub.as_deref() == Some("log") {
        let text = sh
            .lock()
            .logs
            .get(&(ns.clone(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        let tail = q.get("tailLines").and_then(|s| s.parse::<usize>().ok());
        let lines: Vec<&str> = text.lines().collect();
        let start = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
        let mut out = lines[start..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], out).into_response();
    }
    json_ok(&obj)
}

fn matches(obj: &Value, q: &HashMap<String, String>) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| store::label_selector_matches(obj, s))
        && q.get("fieldSelector")
            .is_none_or(|s| store::field_selector_matches(obj, s))
}

fn list_resp(sh: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response {
    let (items, rv) = {
        let st = sh.lock();
        (st.list(&t.res.key(), t.ns.as_deref()), st.rv)
    };
    let items: Vec<Value> = items.into_iter().filter(|o| matches(o, q)).collect();
    json_ok(
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn watch_resp(sh: &Arc<Shared>, t: &Target, q: &HashMap<String, String>) -> Response {
    let mut rx = sh.tx.subscribe();
    let mut shutdown = sh.shutdown.subscribe();
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let res_key = t.res.key();
    let ns = t.ns.clone();
    let q = q.clone();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let initial: Vec<(u64, &'static str, Value)> = {
        let st = sh.lock();
        if from == 0 {
            st.list(&res_key, ns.as_deref())
                .into_iter()
                .map(|o| (st.rv, "ADDED", o))
                .collect()
        } else {
            st.history
                .iter()
                .filter(|e| {
                    e.rv > from && e.res == res_key && ns.as_ref().is_none_or(|n| *n == e.ns)
                })
                .map(|e| (e.rv, e.ty, e.obj.clone()))
                .collect()
        }
    };
    let start_rv = {
        let st = sh.lock();
        if from == 0 {
            st.rv
        } else {
            initial.iter().map(|e| e.0).max().unwrap_or(from).max(from)
        }
    };
    // Streaming lists (kubectl >= 1.32 / client-go WatchList): initial events end with a bookmark.
    let initial_end = q.get("sendInitialEvents").is_some_and(|v| v == "true").then(|| {
        json!({"type": "BOOKMARK", "object": {"kind": t.res.kind, "apiVersion": t.res.api_version(),
            "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}})
    });
    let stream = async_stream::stream! {
        let mut last = start_rv;
        for (_, ty, obj) in initial {
            if matches(&obj, &q) {
                yield Ok::<Bytes, Infallible>(Bytes::from(format!("{}\n", json!({"type": ty, "object": obj}))));
            }
        }
        if let Some(b) = initial_end {
            yield Ok(Bytes::from(format!("{b}\n")));
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.changed() => break,
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last || ev.res != res_key || ns.as_ref().is_some_and(|n| *n != ev.ns) {
                            continue;
                        }
                        last = ev.rv;
                        if matches(&ev.obj, &q) {
                            yield Ok(Bytes::from(format!("{}\n", json!({"type": ev.ty, "object": ev.obj}))));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(500, "InternalError", "watch"))
}

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body)
        .or_else(|_| serde_saphyr::from_slice::<Value>(body))
        .map_err(|e| {
            status(
                400,
                "BadRequest",
                &format!("cannot parse the request body: {e}"),
            )
        })
}

fn validate(res: &Resource, obj: &Value) -> Result<(), Response> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(json!({"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"}));
    }
    if matches!(
        res.kind.as_str(),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
    ) {
        let sel = obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object);
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object);
        match sel {
            None => causes.push(json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.selector"})),
            Some(sel) => {
                let ok = sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
                if !ok {
                    causes.push(json!({"reason": "FieldValueInvalid", "message": "Invalid value: `selector` does not match template `labels`", "field": "spec.template.metadata.labels"}));
                }
            }
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "{} {name:?} is invalid: {}",
        res.kind,
        causes
            .iter()
            .map(|c| format!(
                "{}: {}",
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Err(status_with(
        422,
        "Invalid",
        &msg,
        Some(json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes})),
    ))
}

fn store_write(
    sh: &Arc<Shared>,
    t: &Target,
    ns: &str,
    obj: Value,
    dry_run: bool,
    created: bool,
) -> Response {
    if let Err(r) = validate(&t.res, &obj) {
        return r;
    }
    let (stored, ev) = sh.lock().put(&t.res, ns, obj, dry_run);
    if let Some(ev) = ev {
        let _ = sh.tx.send(ev);
        sh.notify.notify_one();
    }
    json_code(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &stored,
    )
}

fn create(sh: &Arc<Shared>, t: &Target, body: &Bytes, q: &HashMap<String, String>) -> Response {
    let obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ns = t.ns.clone().unwrap_or_default();
    if sh.get(&t.res.key(), &ns, &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", t.res.key()),
        );
    }
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    record_update(sh, t, &ns, &name, None, &obj, &manager);
    store_write(sh, t, &ns, obj, q.get("dryRun").is_some(), true)
}

fn replace(
    sh: &Arc<Shared>,
    t: &Target,
    name: &str,
    body: &Bytes,
    q: &HashMap<String, String>,
) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ns = t.ns.clone().unwrap_or_default();
    let Some(existing) = sh.get(&t.res.key(), &ns, name) else {
        return not_found(t, name);
    };
    if t.sub.as_deref() == Some("status") {
        let mut merged = existing.clone();
        merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
        obj = merged;
    } else if let Some(s) = existing.get("status") {
        obj["status"] = s.clone();
    }
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    record_update(sh, t, &ns, name, Some(&existing), &obj, &manager);
    store_write(sh, t, &ns, obj, q.get("dryRun").is_some(), false)
}

/// Ownership for Update operations: changed leaves go to `manager`.
fn record_update(
    sh: &Arc<Shared>,
    t: &Target,
    ns: &str,
    name: &str,
    old: Option<&Value>,
    new: &Value,
    manager: &str,
) {
    let before = old.map(store::owned_leaves).unwrap_or_default();
    let after = store::owned_leaves(new);
    let mut st = sh.lock();
    let owners = st
        .owners
        .entry((t.res.key(), ns.to_string(), name.to_string()))
        .or_default();
    for (p, v) in after {
        if before.get(&p) != Some(&v) {
            owners.insert(p, manager.to_string());
        }
    }
}

fn patch(
    sh: &Arc<Shared>,
    t: &Target,
    name: &str,
    content_type: &str,
    body: &Bytes,
    q: &HashMap<String, String>,
) -> Response {
    let ns = t.ns.clone().unwrap_or_default();
    let existing = sh.get(&t.res.key(), &ns, name);
    let dry_run = q.get("dryRun").is_some();
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let patch_body = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let status_only = t.sub.as_deref() == Some("status");
    let mut new = match ct {
        "application/apply-patch+yaml" => {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return status(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                );
            };
            let body_name = patch_body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if body_name != name {
                return status(
                    400,
                    "BadRequest",
                    &format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({name})"
                    ),
                );
            }
            let force = q.get("force").is_some_and(|f| f == "true");
            let applied = store::owned_leaves(&patch_body);
            let current = existing
                .as_ref()
                .map(store::owned_leaves)
                .unwrap_or_default();
            let key = (t.res.key(), ns.clone(), name.to_string());
            let mut conflicts = Vec::new();
            {
                let st = sh.lock();
                if let Some(owners) = st.owners.get(&key) {
                    for (p, v) in &applied {
                        if let Some(owner) = owners.get(p)
                            && owner != manager
                            && current.get(p).is_some_and(|cur| cur != v)
                        {
                            conflicts.push((p.clone(), owner.clone()));
                        }
                    }
                }
            }
            if !conflicts.is_empty() && !force {
                let api_version = t.res.api_version();
                let causes: Vec<Value> = conflicts
                    .iter()
                    .map(|(p, o)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{o}\" using {api_version}"), "field": store::display_path(p)}))
                    .collect();
                let msg = format!(
                    "Apply failed with {} conflict{}: {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    conflicts
                        .iter()
                        .map(|(p, o)| format!(
                            "conflict with \"{o}\" using {api_version}: {}",
                            store::display_path(p)
                        ))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return status_with(409, "Conflict", &msg, Some(json!({"causes": causes})));
            }
            // Fields this manager applied before and omits now, owned by nobody else, go away.
            let dropped: Vec<String> = {
                let st = sh.lock();
                st.owners
                    .get(&key)
                    .map(|owners| {
                        owners
                            .iter()
                            .filter(|(p, o)| *o == manager && !applied.contains_key(*p))
                            .map(|(p, _)| p.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if !dry_run {
                let mut st = sh.lock();
                let owners = st.owners.entry(key).or_default();
                for p in &dropped {
                    owners.remove(p);
                }
                for p in applied.keys() {
                    owners.insert(p.clone(), manager.clone());
                }
            }
            match &existing {
                None => patch_body,
                Some(e) => {
                    let mut merged = e.clone();
                    let mut body = patch_body.clone();
                    if let Some(o) = body.as_object_mut() {
                        o.remove("status");
                    }
                    store::apply_merge(&mut merged, &body);
                    for p in store::removal_targets(&dropped, &applied) {
                        store::remove_path(&mut merged, &p);
                    }
                    merged
                }
            }
        }
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => {
            let Some(e) = &existing else {
                return not_found(t, name);
            };
            let mut merged = e.clone();
            match ct {
                "application/merge-patch+json" => store::merge_patch(&mut merged, &patch_body),
                "application/strategic-merge-patch+json" => {
                    store::strategic_patch(&mut merged, &patch_body)
                }
                _ => {
                    let p: json_patch::Patch = match serde_json::from_value(patch_body.clone()) {
                        Ok(p) => p,
                        Err(e) => {
                            return status(400, "BadRequest", &format!("invalid JSON patch: {e}"));
                        }
                    };
                    if let Err(e) = json_patch::patch(&mut merged, &p) {
                        return status(
                            422,
                            "Invalid",
                            &format!("the JSON patch cannot be applied: {e}"),
                        );
                    }
                }
            }
            let manager = q
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            if !dry_run {
                record_update(sh, t, &ns, name, Some(e), &merged, &manager);
            }
            merged
        }
        other => {
            return status(
                415,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format: {other}"),
            );
        }
    };
    if let Some(e) = &existing {
        if status_only {
            let mut o = e.clone();
            o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = o;
        } else if let Some(s) = e.get("status") {
            new["status"] = s.clone();
        }
    }
    let created = existing.is_none();
    store_write(sh, t, &ns, new, dry_run, created)
}
