//! Template substitution, parsing multi-document YAML with file:line in every error, validation
//! and kind ordering. Files are found and read by [`crate::files`] (bounded, beneath the project
//! directory in jobs); no cluster.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::DeployError;
use crate::args::{TemplateMode, Vars, is_var_name};
use crate::files::{self, Limits, Stop};

/// One object from the manifests, with where it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `k8s/app.yaml:12` — the first line of its YAML document.
    pub source: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub object: Value,
}

impl Manifest {
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(_, v)| v)
            .unwrap_or(&self.api_version)
    }
}

/// What rendering produced.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub manifests: Vec<Manifest>,
    pub files: Vec<String>,
    /// Template variables that were used, in first-use order.
    pub used: Vec<String>,
    pub warnings: Vec<String>,
}

/// Template values that are not pasted into the text (see [`is_plain_safe`]): each stands in
/// the text as a token, and the token is replaced by the value in the parsed objects, where it
/// can only be (part of) a string.
#[derive(Debug, Clone, Default)]
pub struct Deferred {
    /// `ferry<nonce>v`: every token starts with it.
    prefix: String,
    values: Vec<String>,
}

impl Deferred {
    /// A token prefix that does not occur in `text`.
    fn for_text(text: &str) -> Deferred {
        use std::hash::{BuildHasher, Hasher};
        loop {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(text.len());
            let prefix = format!("ferry{:016x}v", h.finish());
            if !text.contains(&prefix) {
                return Deferred {
                    prefix,
                    values: Vec::new(),
                };
            }
        }
    }

    fn token(&mut self, value: &str) -> String {
        self.values.push(value.to_string());
        format!("{}{}x", self.prefix, self.values.len() - 1)
    }

    /// `s` with every token replaced by its value, in one pass (values are not scanned again).
    fn replace_in(&self, s: &str) -> String {
        if self.values.is_empty() || !s.contains(&self.prefix) {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.find(&self.prefix) {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + self.prefix.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let value = (digits > 0 && after.as_bytes().get(digits) == Some(&b'x'))
                .then(|| after[..digits].parse::<usize>().ok())
                .flatten()
                .and_then(|i| self.values.get(i));
            match value {
                Some(v) => {
                    out.push_str(v);
                    rest = &after[digits + 1..];
                }
                None => {
                    out.push_str(&self.prefix);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Replaces the tokens in every string (and mapping key) of a parsed document.
    fn apply(&self, v: &mut Value) {
        if self.values.is_empty() {
            return;
        }
        match v {
            Value::String(s) => *s = self.replace_in(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.apply(i)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut val) in old {
                    self.apply(&mut val);
                    map.insert(self.replace_in(&k), val);
                }
            }
            _ => {}
        }
    }
}

/// A value that is pasted into the YAML text as it is, so `replicas: __REPLICAS__` stays a
/// number and `enabled: __FLAG__` a boolean: letters, digits and `-_.+/=~` only, which can neither
/// end a scalar, start a comment, a flow collection, an alias or a tag, nor break a line; and not
/// only dashes and dots (`---`, `...` on a line of their own are document markers). Any other
/// value is substituted as a string (docs/deploy.md, "Templates").
pub fn is_plain_safe(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+/=~".contains(&b))
        && !(v.len() >= 3 && v.bytes().all(|b| b == b'-' || b == b'.'))
}

/// A template file after substitution.
#[derive(Debug, Clone)]
pub struct Substituted {
    /// The text to parse: plain-safe values pasted in, others as tokens of `deferred`.
    pub text: String,
    pub deferred: Deferred,
    /// Bytes of the text with every value in place.
    pub rendered_len: u64,
}

impl Substituted {
    /// The text with every value in place (what a textual substitution would give).
    pub fn expanded(&self) -> String {
        self.deferred.replace_in(&self.text)
    }
}

/// Substitutes template placeholders line by line, so line numbers stay those of the file.
/// Every placeholder left (an unknown variable) is an error naming file:line. Values that could
/// change the YAML structure (newlines, quotes, `: `, `#`, brackets, ...) are never pasted into
/// the text: they become strings in the parsed objects, see [`is_plain_safe`].
pub fn substitute(
    display: &str,
    text: &str,
    mode: TemplateMode,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<String>,
) -> Result<Substituted, DeployError> {
    let mut deferred = Deferred::for_text(text);
    if mode == TemplateMode::None {
        return Ok(Substituted {
            text: text.to_string(),
            deferred,
            rendered_len: text.len() as u64,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut rendered_len: u64 = 0;
    let mut errors = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            rendered_len += line.len() as u64;
            continue;
        }
        let mut rest = line;
        while !rest.is_empty() {
            let found = match mode {
                TemplateMode::Placeholders => find_placeholder(rest),
                TemplateMode::Envsubst => find_envsubst(rest),
                TemplateMode::None => None,
            };
            let Some((start, end, name)) = found else {
                out.push_str(rest);
                rendered_len += rest.len() as u64;
                break;
            };
            out.push_str(&rest[..start]);
            rendered_len += start as u64;
            match lookup(name) {
                Some(v) => {
                    if !used.iter().any(|u| u == name) {
                        used.push(name.to_string());
                    }
                    rendered_len += v.len() as u64;
                    if is_plain_safe(&v) {
                        out.push_str(&v);
                    } else {
                        out.push_str(&deferred.token(&v));
                    }
                }
                None => {
                    errors.push(format!(
                        "{display}:{}: template placeholder {} has no value (no job variable {name})",
                        idx + 1,
                        &rest[start..end]
                    ));
                    out.push_str(&rest[start..end]);
                }
            }
            rest = &rest[end..];
        }
    }
    if errors.is_empty() {
        Ok(Substituted {
            text: out,
            deferred,
            rendered_len,
        })
    } else {
        Err(DeployError::Input(errors.join("\n")))
    }
}

/// `__NAME__` with NAME = [A-Z0-9][A-Z0-9_]* not ending in `_`; returns (start, end, NAME).
fn find_placeholder(s: &str) -> Option<(usize, usize, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'_' && b[i + 1] == b'_' {
            let ns = i + 2;
            let mut j = ns;
            while j < b.len()
                && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit() || b[j] == b'_')
            {
                if b[j] == b'_' && j + 1 < b.len() && b[j + 1] == b'_' {
                    break;
                }
                j += 1;
            }
            if j > ns
                && b[ns] != b'_'
                && b[j - 1] != b'_'
                && j + 1 < b.len()
                && b[j] == b'_'
                && b[j + 1] == b'_'
            {
                return Some((i, j + 2, &s[ns..j]));
            }
        }
        i += 1;
    }
    None
}

/// `${NAME}`; returns (start, end, NAME).
fn find_envsubst(s: &str) -> Option<(usize, usize, &str)> {
    let mut from = 0;
    while let Some(pos) = s[from..].find("${") {
        let start = from + pos;
        if let Some(close) = s[start + 2..].find('}') {
            let name = &s[start + 2..start + 2 + close];
            if is_var_name(name) {
                return Some((start, start + 3 + close, name));
            }
        }
        from = start + 2;
    }
    None
}

/// Splits YAML text into documents at `---` lines; returns (first line number, text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let t = line.trim_end();
        let is_sep = t == "---" || t.starts_with("--- ") || t.starts_with("---\t") || t == "...";
        if is_sep {
            docs.push((start, std::mem::take(&mut cur)));
            start = idx + 2;
            // keep content after `--- ` on the same line (rare, e.g. `--- # comment`)
            if let Some(after) = t.strip_prefix("---")
                && !after.trim().is_empty()
                && !after.trim_start().starts_with('#')
            {
                cur.push_str(after);
                cur.push('\n');
                start = idx + 1;
            }
        } else {
            cur.push_str(line);
        }
    }
    docs.push((start, cur));
    docs
}

/// Parses one file's text (no template values) into manifests.
pub fn parse_documents(display: &str, text: &str) -> Result<Vec<Manifest>, DeployError> {
    parse_substituted(display, text, &Deferred::default())
}

/// Parses one file's substituted text into manifests, putting the deferred values in place.
pub fn parse_substituted(
    display: &str,
    text: &str,
    deferred: &Deferred,
) -> Result<Vec<Manifest>, DeployError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let is_json = display.ends_with(".json");
    let docs = if is_json {
        vec![(1, text.to_string())]
    } else {
        split_documents(text)
    };
    for (first_line, doc) in docs {
        if doc.trim().is_empty() {
            continue;
        }
        let value: Value = match crate::yaml::from_str::<Value>(&doc) {
            Ok(mut v) => {
                deferred.apply(&mut v);
                v
            }
            Err(e) => {
                let line = first_line + e.line - 1;
                errors.push(format!("{display}:{line}: YAML error: {}", e.message));
                continue;
            }
        };
        let source = format!("{display}:{first_line}");
        match value {
            Value::Null => continue,
            Value::Object(_) => {}
            _ => {
                errors.push(format!(
                    "{source}: a manifest document must be a mapping (apiVersion, kind, metadata)"
                ));
                continue;
            }
        }
        let items = if value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
            && value.get("items").is_some_and(Value::is_array)
        {
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            match manifest_from(&source, item) {
                Ok(m) => out.push(m),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DeployError::Input(errors.join("\n")))
    }
}

fn manifest_from(source: &str, mut object: Value) -> Result<Manifest, String> {
    let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    let api_version = field(&object, "apiVersion").filter(|s| !s.is_empty());
    let kind = field(&object, "kind").filter(|s| !s.is_empty());
    let meta = object.get("metadata").cloned().unwrap_or(Value::Null);
    let name = field(&meta, "name").filter(|s| !s.is_empty());
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(format!("{source}: object without apiVersion or kind"));
    };
    let Some(name) = name else {
        if meta.get("generateName").is_some() {
            return Err(format!(
                "{source}: {kind} uses metadata.generateName; apply needs a fixed metadata.name"
            ));
        }
        return Err(format!("{source}: {kind} without metadata.name"));
    };
    let namespace = field(&meta, "namespace").filter(|s| !s.is_empty());
    // Server-owned fields must not be sent with an apply.
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            m.remove(k);
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    Ok(Manifest {
        source: source.to_string(),
        api_version,
        kind,
        name,
        namespace,
        object,
    })
}

/// Reads, substitutes and parses every file; validates the set (duplicates) and collects
/// warnings (`:latest` images, HPA + replicas, Secrets in plain manifests). Blocking: run it off
/// the async workers; `stop` ends it early.
#[allow(clippy::too_many_arguments)]
pub fn render(
    project_dir: &Path,
    entries: &[String],
    confine: bool,
    mode: TemplateMode,
    vars: &Vars,
    extra: &[(String, String)],
    limits: &Limits,
    stop: &Stop,
) -> Result<Rendered, DeployError> {
    let files = files::read_manifests(project_dir, entries, confine, limits, stop)?;
    let lookup = |name: &str| -> Option<String> {
        vars.get(name).map(str::to_string).or_else(|| {
            extra
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let mut rendered = Rendered::default();
    let mut errors = Vec::new();
    let mut rendered_total: u64 = 0;
    for f in &files {
        stop.check()?;
        let display = &f.display;
        let sub = match substitute(display, &f.text, mode, &lookup, &mut rendered.used) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        rendered_total += sub.rendered_len;
        if rendered_total > limits.rendered_bytes {
            return Err(DeployError::Input(format!(
                "{display}: the rendered manifests add up to more than {}, the limit of one deploy (docs/deploy.md, \"Limits\")",
                files::human_bytes(limits.rendered_bytes)
            )));
        }
        match parse_substituted(display, &sub.text, &sub.deferred) {
            Ok(ms) => rendered.manifests.extend(ms),
            Err(e) => errors.push(e.to_string()),
        }
        rendered.files.push(display.clone());
    }
    if !errors.is_empty() {
        return Err(DeployError::Input(errors.join("\n")));
    }
    if rendered.manifests.is_empty() {
        return Err(DeployError::Input(format!(
            "no Kubernetes objects found in {}",
            entries.join(", ")
        )));
    }
    let mut seen: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for m in &rendered.manifests {
        let key = (
            m.group().to_string(),
            m.kind.clone(),
            m.namespace.clone().unwrap_or_default(),
            m.name.clone(),
        );
        if !seen.insert(key) {
            errors.push(format!(
                "{}: {}/{} is defined twice",
                m.source,
                m.kind.to_lowercase(),
                m.name
            ));
        }
    }
    if !errors.is_empty() {
        return Err(DeployError::Input(errors.join("\n")));
    }
    rendered.warnings = warnings(&rendered.manifests);
    Ok(rendered)
}

fn warnings(ms: &[Manifest]) -> Vec<String> {
    let mut out = Vec::new();
    let hpa_targets: Vec<(String, String)> = ms
        .iter()
        .filter(|m| m.kind == "HorizontalPodAutoscaler")
        .filter_map(|m| {
            let r = m.object.pointer("/spec/scaleTargetRef")?;
            Some((
                r.get("kind")?.as_str()?.to_string(),
                r.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect();
    for m in ms {
        if m.kind == "Secret" {
            out.push(format!(
                "{}: secret/{} is stored in plain text in the repository",
                m.source, m.name
            ));
        }
        if hpa_targets
            .iter()
            .any(|(k, n)| *k == m.kind && *n == m.name)
            && m.object.pointer("/spec/replicas").is_some()
        {
            out.push(format!(
                "{}: {}/{} sets spec.replicas and is scaled by a HorizontalPodAutoscaler: every deploy resets the replica count (omit replicas)",
                m.source,
                m.kind.to_lowercase(),
                m.name
            ));
        }
        for image in images_of(&m.object) {
            let last = image.rsplit('/').next().unwrap_or(&image);
            if !image.contains('@') && (!last.contains(':') || last.ends_with(":latest")) {
                out.push(format!(
                    "{}: image {image} has no fixed tag; rollouts and rollbacks cannot tell versions apart",
                    m.source
                ));
            }
        }
    }
    out
}

/// The pod template of a workload object (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet;
/// CronJob's job template).
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    obj.pointer("/spec/template/spec")
        .or_else(|| obj.pointer("/spec/jobTemplate/spec/template/spec"))
        .or_else(|| {
            (obj.get("kind").and_then(Value::as_str) == Some("Pod"))
                .then(|| obj.get("spec"))
                .flatten()
        })
}

/// Container images (init containers included) of a workload or pod.
pub fn images_of(obj: &Value) -> Vec<String> {
    let Some(spec) = pod_spec(obj) else {
        return Vec::new();
    };
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Apply order of 4.5: Namespace, CRD, ServiceAccount/RBAC, ConfigMap/Secret, PVC, Service,
/// workloads, HPA/PDB, Ingress, everything else. Stable within a rank.
pub fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => 2,
        "ConfigMap" | "Secret" => 3,
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => 4,
        "Service" => 5,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" | "ReplicaSet" | "Pod" => 6,
        "HorizontalPodAutoscaler" | "PodDisruptionBudget" => 7,
        "Ingress" => 8,
        _ => 9,
    }
}

pub fn sort_for_apply(ms: &mut [Manifest]) {
    ms.sort_by_key(|m| kind_rank(&m.kind));
}

/// The rendered manifests as YAML for `FERRY_DRY_RUN=render`, with Secret values redacted.
pub fn print_rendered(ms: &[Manifest]) -> String {
    let mut out = String::new();
    for m in ms {
        let mut obj = m.object.clone();
        if m.kind == "Secret" {
            redact_secret(&mut obj);
        }
        out.push_str(&format!("---\n# {}\n", m.source));
        match crate::yaml::to_string(&obj) {
            Ok(y) => out.push_str(&y),
            Err(e) => out.push_str(&format!("# (cannot print: {e})\n")),
        }
    }
    out
}

pub fn redact_secret(obj: &mut Value) {
    for key in ["data", "stringData"] {
        if let Some(map) = obj.get_mut(key).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                let len = v.as_str().map(str::len).unwrap_or(0);
                *v = Value::String(format!("<redacted, {len} bytes>"));
            }
        }
    }
    if let Some(ann) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        ann.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "APP_NAME" => Some("web".into()),
            "REPLICAS" => Some("3".into()),
            "VERSION" => Some("1a2b".into()),
            _ => None,
        }
    }

    #[test]
    fn placeholders_are_replaced_before_parsing() {
        let text = "name: __APP_NAME__\nreplicas: __REPLICAS__\nimage: reg/__APP_NAME__:__VERSION__\n# __NOT_USED__\nx: a__b__c\n";
        let mut used = Vec::new();
        let out = substitute(
            "d.yaml",
            text,
            TemplateMode::Placeholders,
            &lookup,
            &mut used,
        )
        .unwrap()
        .text;
        assert_eq!(
            out,
            "name: web\nreplicas: 3\nimage: reg/web:1a2b\n# __NOT_USED__\nx: a__b__c\n"
        );
        assert_eq!(used, vec!["APP_NAME", "REPLICAS", "VERSION"]);
        let v: Value = crate::yaml::from_str(&out).unwrap();
        assert_eq!(v["replicas"], 3);
    }

    #[test]
    fn leftover_placeholder_names_file_and_line() {
        let text = "a: 1\nimage: reg/app:__TAG__\n";
        let e = substitute(
            "k8s/d.yaml",
            text,
            TemplateMode::Placeholders,
            &lookup,
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "k8s/d.yaml:2: template placeholder __TAG__ has no value (no job variable TAG)"
        );
    }

    #[test]
    fn envsubst_mode() {
        let text = "name: ${APP_NAME}\nimage: $HOME/__APP_NAME__\nbad: ${NOPE}\n";
        let e = substitute(
            "f.yaml",
            text,
            TemplateMode::Envsubst,
            &lookup,
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.yaml:3:"), "{e}");
        let ok = substitute(
            "f.yaml",
            "name: ${APP_NAME}\nx: $HOME/__X__\n",
            TemplateMode::Envsubst,
            &lookup,
            &mut Vec::new(),
        )
        .unwrap()
        .text;
        assert_eq!(ok, "name: web\nx: $HOME/__X__\n");
    }

    #[test]
    fn multi_document_and_errors_with_lines() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: x\nstatus: {}\n";
        let ms = parse_documents("k.yaml", text).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].source, "k.yaml:8");
        assert_eq!(ms[1].namespace.as_deref(), Some("x"));
        assert!(ms[1].object.get("status").is_none());

        let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [b\n";
        let e = parse_documents("k.yaml", bad).unwrap_err().to_string();
        assert!(
            e.starts_with("k.yaml:9: YAML error") || e.starts_with("k.yaml:10: YAML error"),
            "{e}"
        );

        let noname = "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n";
        let e = parse_documents("k.yaml", noname).unwrap_err().to_string();
        assert_eq!(e, "k.yaml:1: ConfigMap without metadata.name");
    }

    #[test]
    fn merge_keys_expand_and_tags_are_refused_with_file_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: &common {app: web, tier: backend}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  labels:\n    <<: *common\n    tier: frontend\n";
        // Anchors do not cross documents (YAML): the second one has its own.
        let e = parse_documents("k.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("k.yaml:12: YAML error: "), "{e}");
        let text = text.replace(
            "  labels:\n    <<: *common",
            "  labels:\n    <<: &c2 {app: web}",
        );
        let ms = parse_documents("k.yaml", &text).unwrap();
        assert_eq!(ms[1].source, "k.yaml:7");
        assert_eq!(
            ms[1].object["metadata"]["labels"],
            serde_json::json!({"app": "web", "tier": "frontend"})
        );

        let tagged = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata:\n  x: !reference [a, b]\n";
        let e = parse_documents("t.yaml", tagged).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:9: YAML error: "), "{e}");
        assert!(e.contains("!reference") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn list_kind_is_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n";
        assert_eq!(parse_documents("l.yaml", text).unwrap().len(), 2);
    }

    #[test]
    fn order_follows_kinds() {
        let mk = |kind: &str| Manifest {
            source: String::new(),
            api_version: "v1".into(),
            kind: kind.into(),
            name: "x".into(),
            namespace: None,
            object: Value::Null,
        };
        let mut ms = vec![
            mk("Ingress"),
            mk("Deployment"),
            mk("Service"),
            mk("ConfigMap"),
            mk("Namespace"),
            mk("Widget"),
            mk("HorizontalPodAutoscaler"),
        ];
        sort_for_apply(&mut ms);
        let kinds: Vec<&str> = ms.iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "Namespace",
                "ConfigMap",
                "Service",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Ingress",
                "Widget"
            ]
        );
    }

    fn render_one(text: &str, value: &str) -> Result<Vec<Manifest>, DeployError> {
        let lookup = |name: &str| (name == "X").then(|| value.to_string());
        let sub = substitute(
            "k.yaml",
            text,
            TemplateMode::Placeholders,
            &lookup,
            &mut Vec::new(),
        )?;
        parse_substituted("k.yaml", &sub.text, &sub.deferred)
    }

    #[test]
    fn values_cannot_add_keys_items_or_documents() {
        let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  labels: {team: __X__}\ndata:\n  note: __X__\n  quoted: \"v=__X__\"\n  single: 'v=__X__'\n  list: [__X__]\n  block: |\n    line=__X__\n";
        let attacks = [
            "x\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: pwned\n",
            "x\n  injected: yes",
            "x\ninjected: yes",
            "a, injected: yes",
            "a\", injected: \"yes",
            "a', injected: 'yes",
            "a]\n  injected: [yes",
            "*anchor",
            "!!binary aGk=",
            "x # comment",
            "---",
        ];
        for attack in attacks {
            let ms =
                render_one(template, attack).unwrap_or_else(|e| panic!("value {attack:?}: {e}"));
            assert_eq!(ms.len(), 1, "value {attack:?} added an object: {ms:?}");
            let o = &ms[0].object;
            let data = o["data"].as_object().unwrap();
            let keys: Vec<&String> = data.keys().collect();
            assert_eq!(
                keys,
                vec!["block", "list", "note", "quoted", "single"],
                "{attack:?}"
            );
            assert_eq!(data["note"], attack, "{attack:?}");
            assert_eq!(data["quoted"], format!("v={attack}"), "{attack:?}");
            assert_eq!(data["single"], format!("v={attack}"), "{attack:?}");
            assert_eq!(data["list"], serde_json::json!([attack]), "{attack:?}");
            assert_eq!(data["block"], format!("line={attack}\n"), "{attack:?}");
            assert_eq!(o["metadata"]["labels"], serde_json::json!({"team": attack}));
        }
    }

    #[test]
    fn plain_values_keep_their_yaml_type() {
        let template = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: __X__\n";
        let ms = render_one(template, "3").unwrap();
        assert_eq!(ms[0].object["spec"]["replicas"], 3);
        let ms = render_one(template, "true").unwrap();
        assert_eq!(ms[0].object["spec"]["replicas"], true);
        let ms = render_one(template, "registry.example/web:1.2").unwrap();
        assert_eq!(ms[0].object["spec"]["replicas"], "registry.example/web:1.2");
        assert!(is_plain_safe("1a2b3c4d") && is_plain_safe("review-42") && is_plain_safe(""));
        assert!(!is_plain_safe("a: b") && !is_plain_safe("---") && !is_plain_safe("a\nb"));
    }

    #[test]
    fn warnings_for_hpa_replicas_and_untagged_images() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n      - {name: a, image: \"reg:5000/web\"}\n      - {name: b, image: \"web:latest\"}\n      - {name: c, image: \"reg:5000/web:1.2\"}\n      - {name: d, image: \"web@sha256:abc\"}\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n";
        let ms = parse_documents("k.yaml", text).unwrap();
        let w = warnings(&ms);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("sets spec.replicas and is scaled by a HorizontalPodAutoscaler"),
            "{w:?}"
        );
        assert!(
            w[1].contains("image reg:5000/web has no fixed tag"),
            "{w:?}"
        );
        assert!(w[2].contains("image web:latest has no fixed tag"), "{w:?}");
    }

    #[test]
    fn secrets_are_redacted() {
        let ms = parse_documents("s.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: aHVudGVyMg==}\nstringData: {token: abc}\n").unwrap();
        let out = print_rendered(&ms);
        assert!(
            !out.contains("aHVudGVyMg==") && !out.contains("abc"),
            "{out}"
        );
        assert!(out.contains("<redacted, 12 bytes>"), "{out}");
    }
}
