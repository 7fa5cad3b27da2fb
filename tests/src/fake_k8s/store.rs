//! The fake's object store: resourceVersion, uid, generation, creationTimestamp, watch events,
//! selectors, a simplified field ownership for server-side apply conflicts, and defaulting.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::resources::{Resource, builtin, from_crd};

/// (resource key, namespace or "", name)
pub type Key = (String, String, String);

#[derive(Debug, Clone)]
pub struct WatchEv {
    pub rv: u64,
    pub res: String,
    pub ns: String,
    pub ty: &'static str,
    pub obj: Value,
}

pub struct Store {
    pub rv: u64,
    counter: u64,
    pub objects: BTreeMap<Key, Value>,
    /// Field ownership per object: leaf path → manager.
    pub owners: HashMap<Key, BTreeMap<String, String>>,
    pub history: Vec<WatchEv>,
    pub resources: Vec<Resource>,
    /// Previous-container logs of pods: (ns, pod) → text.
    pub logs: HashMap<(String, String), String>,
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl Store {
    pub fn new() -> Store {
        Store {
            rv: 100,
            counter: 0,
            objects: BTreeMap::new(),
            owners: HashMap::new(),
            history: Vec::new(),
            resources: builtin(),
            logs: HashMap::new(),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    pub fn find_resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }

    pub fn get(&self, res: &str, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(res.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, res: &str, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores `obj` (a full object), stamping server fields. Returns the stored object and
    /// the watch event to broadcast (None for a no-op write).
    pub fn put(
        &mut self,
        res: &Resource,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> (Value, Option<WatchEv>) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let key = (res.key(), ns.to_string(), name.clone());
        let existing = self.objects.get(&key).cloned();
        default_object(res, &mut obj, existing.as_ref(), self.counter + 1);
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), json!(res.api_version()));
            o.insert("kind".into(), json!(res.kind));
        }
        let meta = obj
            .as_object_mut()
            .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut);
        let Some(meta) = meta else { return (obj, None) };
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns));
        }
        match &existing {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
                        meta.insert(k.into(), v.clone());
                    }
                }
                let old_gen = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let new_gen = if spec_of(old) != spec_of(&obj) {
                    old_gen + 1
                } else {
                    old_gen
                };
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("generation".into(), json!(new_gen));
                    meta.insert(
                        "resourceVersion".into(),
                        old.pointer("/metadata/resourceVersion")
                            .cloned()
                            .unwrap_or(json!("0")),
                    );
                }
                if same_ignoring_managed(old, &obj) {
                    return (old.clone(), None);
                }
            }
            None => {
                self.counter += 1;
                meta.insert(
                    "uid".into(),
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.counter)),
                );
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                meta.insert("generation".into(), json!(1));
            }
        }
        // managedFields: one entry per manager that owns something (field sets not spelled out)
        if let Some(owners) = self.owners.get(&key) {
            let mut managers: Vec<&String> = owners.values().collect();
            managers.sort();
            managers.dedup();
            let entries: Vec<Value> = managers
                .iter()
                .map(|m| json!({"manager": m, "operation": if m.as_str() == "ferry" || m.as_str() == "kubectl" { "Apply" } else { "Update" },
                    "apiVersion": res.api_version(), "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {}}))
                .collect();
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("managedFields".into(), json!(entries));
            }
        }
        if dry_run {
            return (obj, None);
        }
        self.rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        if res.kind == "CustomResourceDefinition" {
            for r in from_crd(&obj) {
                if !self.resources.contains(&r) {
                    self.resources.push(r);
                }
            }
            // the fake establishes CRDs at once
            if let Some(o) = obj.as_object_mut() {
                o.insert(
                    "status".into(),
                    json!({"conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}]}),
                );
            }
        }
        self.objects.insert(key, obj.clone());
        let ev = WatchEv {
            rv: self.rv,
            res: res.key(),
            ns: ns.to_string(),
            ty: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            obj: obj.clone(),
        };
        self.history.push(ev.clone());
        (obj, Some(ev))
    }

    pub fn delete(&mut self, res: &Resource, ns: &str, name: &str) -> Option<(Value, WatchEv)> {
        let key = (res.key(), ns.to_string(), name.to_string());
        let obj = self.objects.remove(&key)?;
        self.owners.remove(&key);
        self.rv += 1;
        let mut obj = obj;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        let ev = WatchEv {
            rv: self.rv,
            res: res.key(),
            ns: ns.to_string(),
            ty: "DELETED",
            obj: obj.clone(),
        };
        self.history.push(ev.clone());
        Some((obj, ev))
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Everything but metadata and status (what bumps `generation`).
fn spec_of(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn same_ignoring_managed(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// Server-side defaulting for the kinds the tests use.
fn default_object(res: &Resource, obj: &mut Value, existing: Option<&Value>, next: u64) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    match res.kind.as_str() {
        "Deployment" => {
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("strategy").or_insert(json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}));
        }
        "StatefulSet" => {
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("updateStrategy")
                .or_insert(json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
        }
        "DaemonSet" => {
            spec.entry("updateStrategy")
                .or_insert(json!({"type": "RollingUpdate"}));
        }
        "Service" => {
            spec.entry("type").or_insert(json!("ClusterIP"));
            let ip = existing
                .and_then(|e| e.pointer("/spec/clusterIP").cloned())
                .unwrap_or_else(|| {
                    json!(format!("10.96.{}.{}", (next / 250) % 250, next % 250 + 1))
                });
            spec.entry("clusterIP").or_insert(ip);
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        p.entry("protocol").or_insert(json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            p.entry("targetPort").or_insert(port);
                        }
                    }
                }
            }
        }
        "Job" => {
            let uid = existing
                .and_then(|e| {
                    e.pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("00000000-0000-4000-8000-{next:012x}"));
            spec.entry("selector")
                .or_insert(json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
            let name = o
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(labels) = o
                .get_mut("spec")
                .and_then(|s| s.get_mut("template"))
                .and_then(|t| t.as_object_mut())
                .map(|t| t.entry("metadata").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
                .map(|m| m.entry("labels").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut)
            {
                labels
                    .entry("batch.kubernetes.io/controller-uid")
                    .or_insert(json!(uid));
                labels.entry("job-name").or_insert(json!(name));
            }
        }
        _ => {
            if spec.is_empty() {
                o.remove("spec");
            }
        }
    }
}

/// Separator of the segments of a field path (keys may contain dots).
const SEP: char = '\u{1}';

fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}{SEP}{seg}")
    }
}

/// Leaf paths of an object for field ownership: objects recurse, lists of objects with a
/// `name` recurse by name (`[name=web]`), other lists are atomic.
pub fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaves(x, &join(prefix, k), out);
            }
        }
        Value::Array(items)
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.get("name").and_then(Value::as_str).is_some()) =>
        {
            for i in items {
                let n = i.get("name").and_then(Value::as_str).unwrap_or("");
                leaves(i, &join(prefix, &format!("[name={n}]")), out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// `.spec.template.spec.containers[name=web].image`, as the API server writes field paths.
pub fn display_path(path: &str) -> String {
    path.split(SEP)
        .map(|seg| {
            if seg.starts_with("[name=") {
                seg.to_string()
            } else {
                format!(".{seg}")
            }
        })
        .collect()
}

/// The inverse of [`display_path`] for simple paths (`.spec.replicas`).
pub fn encode_path(display: &str) -> String {
    display
        .split('.')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(&SEP.to_string())
}

/// What to remove for dropped leaves: a whole list item when nothing under it is applied any
/// more, else the leaf itself.
pub fn removal_targets(dropped: &[String], applied: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in dropped {
        let segs: Vec<&str> = p.split(SEP).collect();
        let mut target = p.clone();
        for i in 0..segs.len() {
            if !segs[i].starts_with("[name=") {
                continue;
            }
            let prefix = segs[..=i].join(&SEP.to_string());
            let still = applied
                .keys()
                .any(|a| a == &prefix || a.starts_with(&format!("{prefix}{SEP}")));
            if !still {
                target = prefix;
                break;
            }
        }
        if !out.contains(&target) {
            out.push(target);
        }
    }
    out
}

/// Removes the field at an encoded path (server-side apply dropping a field its only manager no
/// longer applies).
pub fn remove_path(obj: &mut Value, path: &str) {
    let segs: Vec<&str> = path.split(SEP).collect();
    let Some((last, parents)) = segs.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = match seg.strip_prefix("[name=").and_then(|s| s.strip_suffix(']')) {
            Some(n) => cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(n))
            }),
            None => cur.get_mut(*seg),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last
        .strip_prefix("[name=")
        .and_then(|s| s.strip_suffix(']'))
    {
        Some(n) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| i.get("name").and_then(Value::as_str) != Some(n));
            }
        }
        None => {
            if let Some(o) = cur.as_object_mut() {
                o.remove(*last);
            }
        }
    }
}

/// The leaves a manager claims: everything but identity fields and status.
pub fn owned_leaves(v: &Value) -> BTreeMap<String, Value> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        o.remove("status");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("name");
            m.remove("namespace");
            m.remove("managedFields");
            m.remove("resourceVersion");
            m.remove("uid");
            m.remove("generation");
            m.remove("creationTimestamp");
        }
    }
    let mut out = BTreeMap::new();
    leaves(&v, "", &mut out);
    out.remove("");
    out
}

/// Server-side apply merge: maps merge recursively, lists of named objects merge by name,
/// other lists are replaced.
pub fn apply_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => apply_merge(bv, v),
                    Some(bv) if named_list(bv) && named_list(v) => merge_named(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn named_list(v: &Value) -> bool {
    v.as_array().is_some_and(|a| {
        !a.is_empty()
            && a.iter()
                .all(|i| i.get("name").and_then(Value::as_str).is_some())
    })
}

fn merge_named(base: &mut Value, patch: &Value) {
    let (Some(b), Some(p)) = (base.as_array_mut(), patch.as_array()) else {
        return;
    };
    let mut out = Vec::new();
    for pi in p {
        let n = pi.get("name");
        match b.iter().find(|bi| bi.get("name") == n) {
            Some(bi) => {
                let mut merged = bi.clone();
                apply_merge(&mut merged, pi);
                out.push(merged);
            }
            None => out.push(pi.clone()),
        }
    }
    *b = out;
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !base.is_object() {
                *base = Value::Object(Map::new());
            }
            if let Some(b) = base.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        b.remove(k);
                    } else {
                        merge_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *base = patch.clone(),
    }
}

/// A small strategic merge patch: like a merge patch, lists of named objects merge by name,
/// and `$patch: replace` replaces the map.
pub fn strategic_patch(base: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut p = p.clone();
                p.remove("$patch");
                *base = Value::Object(p);
                return;
            }
            if !base.is_object() {
                *base = Value::Object(Map::new());
            }
            if let Some(b) = base.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        b.remove(k);
                    } else if named_list(v) && b.get(k).is_some_and(named_list) {
                        if let Some(bv) = b.get_mut(k) {
                            merge_named(bv, v);
                        }
                    } else {
                        strategic_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *base = patch.clone(),
    }
}

/// The value at a dotted path (`involvedObject.uid`, `metadata.name`, `status.phase`).
pub fn field(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// Field selector: comma-separated `path=value`, `path==value`, `path!=value`.
pub fn field_selector_matches(obj: &Value, sel: &str) -> bool {
    sel.split(',').filter(|s| !s.trim().is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            field(obj, k.trim()).as_deref() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            field(obj, k.trim()).as_deref().unwrap_or("") == v.trim()
        } else {
            false
        }
    })
}

/// Label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
pub fn label_selector_matches(obj: &Value, sel: &str) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    split_top(sel).iter().all(|term| {
        let t = term.trim();
        if t.is_empty() {
            return true;
        }
        if let Some((k, rest)) = t.split_once(" notin ") {
            let set = parse_set(rest);
            return get(k.trim()).is_none_or(|v| !set.iter().any(|s| s == v));
        }
        if let Some((k, rest)) = t.split_once(" in ") {
            let set = parse_set(rest);
            return get(k.trim()).is_some_and(|v| set.iter().any(|s| s == v));
        }
        if let Some((k, v)) = t.split_once("!=") {
            return get(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            return get(k.trim()) == Some(v.trim());
        }
        if let Some(k) = t.strip_prefix('!') {
            return get(k.trim()).is_none();
        }
        get(t).is_some()
    })
}

fn split_top(sel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in sel.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn parse_set(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|x| x.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}, "involvedObject": {"uid": "u1"}, "type": "Warning"});
        assert!(label_selector_matches(&o, "app=web,tier in (fe, be)"));
        assert!(!label_selector_matches(&o, "app=web,tier notin (fe)"));
        assert!(label_selector_matches(&o, "!missing,app"));
        assert!(field_selector_matches(
            &o,
            "involvedObject.uid=u1,type=Warning"
        ));
        assert!(!field_selector_matches(&o, "metadata.name!=a"));
    }

    #[test]
    fn field_paths() {
        let v = json!({"metadata": {"labels": {"a.b/c": "x"}}, "spec": {"containers": [{"name": "web", "image": "i", "env": [{"name": "E", "value": "1"}]}]}});
        let l = owned_leaves(&v);
        let shown: Vec<String> = l.keys().map(|k| display_path(k)).collect();
        assert_eq!(
            shown,
            vec![
                ".metadata.labels.a.b/c",
                ".spec.containers[name=web].env[name=E].name",
                ".spec.containers[name=web].env[name=E].value",
                ".spec.containers[name=web].image",
                ".spec.containers[name=web].name"
            ]
        );
        let mut v2 = v.clone();
        let env_value = l
            .keys()
            .find(|k| display_path(k).ends_with("[name=E].value"))
            .unwrap()
            .clone();
        let env_item = env_value.rsplit_once('\u{1}').unwrap().0.to_string();
        remove_path(&mut v2, &env_item);
        assert_eq!(v2["spec"]["containers"][0]["env"], json!([]));
        let label = l.keys().find(|k| k.contains("a.b/c")).unwrap().clone();
        remove_path(&mut v2, &label);
        assert_eq!(v2["metadata"]["labels"], json!({}));
        assert_eq!(
            encode_path(".spec.replicas"),
            format!("spec{}replicas", '\u{1}')
        );
    }

    #[test]
    fn merges() {
        let mut b = json!({"spec": {"containers": [{"name": "a", "image": "x", "ports": [1]}], "replicas": 1}});
        apply_merge(
            &mut b,
            &json!({"spec": {"containers": [{"name": "a", "image": "y"}]}}),
        );
        assert_eq!(
            b,
            json!({"spec": {"containers": [{"name": "a", "image": "y", "ports": [1]}], "replicas": 1}})
        );
        let mut b = json!({"a": 1, "b": {"c": 2}});
        merge_patch(&mut b, &json!({"a": null, "b": {"d": 3}}));
        assert_eq!(b, json!({"b": {"c": 2, "d": 3}}));
        let mut b = json!({"spec": {"template": {"x": 1, "y": 2}}});
        strategic_patch(
            &mut b,
            &json!({"spec": {"template": {"$patch": "replace", "z": 3}}}),
        );
        assert_eq!(b, json!({"spec": {"template": {"z": 3}}}));
    }
}
