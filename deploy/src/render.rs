//! Finding manifest files, template substitution (before YAML parsing), parsing multi-document
//! YAML with file:line in every error, validation and kind ordering. No I/O besides reading the
//! files; no cluster.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use globset::Glob;
use serde_json::Value;

use crate::DeployError;
use crate::args::{TemplateMode, Vars, is_var_name};

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

/// Expands FERRY_MANIFESTS entries (files, directories, globs) into a sorted, de-duplicated
/// file list. With `confine`, every file must resolve inside `project_dir` (CI: a job may not
/// read the runner host's files through a manifest path).
pub fn find_files(
    project_dir: &Path,
    entries: &[String],
    confine: bool,
) -> Result<Vec<PathBuf>, DeployError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = HashSet::new();
    let root = project_dir.canonicalize().map_err(|e| {
        DeployError::Input(format!("project directory {}: {e}", project_dir.display()))
    })?;
    for entry in entries {
        let mut found = Vec::new();
        if entry.contains(['*', '?', '[', '{']) {
            let matcher = Glob::new(entry.trim_start_matches("./"))
                .map_err(|e| {
                    DeployError::Input(format!("FERRY_MANIFESTS: invalid glob {entry:?}: {e}"))
                })?
                .compile_matcher();
            let mut all = Vec::new();
            walk(&root, &mut all);
            for f in all {
                if let Ok(rel) = f.strip_prefix(&root)
                    && matcher.is_match(rel)
                {
                    found.push(f);
                }
            }
        } else {
            let p = project_dir.join(entry);
            if p.is_dir() {
                let mut all = Vec::new();
                walk(&p, &mut all);
                found.extend(all.into_iter().filter(|f| is_manifest_file(f)));
                if found.is_empty() {
                    return Err(DeployError::Input(format!(
                        "FERRY_MANIFESTS: directory {entry:?} holds no .yaml, .yml or .json file"
                    )));
                }
            } else if p.is_file() {
                found.push(p);
            } else {
                return Err(DeployError::Input(format!(
                    "FERRY_MANIFESTS: {entry:?} does not exist in the project directory"
                )));
            }
        }
        if found.is_empty() {
            return Err(DeployError::Input(format!(
                "FERRY_MANIFESTS: {entry:?} matches no file"
            )));
        }
        found.sort();
        for f in found {
            let canon = f
                .canonicalize()
                .map_err(|e| DeployError::Input(format!("{}: {e}", f.display())))?;
            if confine && !canon.starts_with(&root) {
                return Err(DeployError::Input(format!(
                    "FERRY_MANIFESTS: {entry:?} leads outside the project directory; deploy jobs may only apply files of the project"
                )));
            }
            if seen.insert(canon.clone()) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Substitutes template placeholders line by line, so line numbers stay those of the file.
/// Every placeholder left (an unknown variable) is an error naming file:line.
pub fn substitute(
    display: &str,
    text: &str,
    mode: TemplateMode,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<String>,
) -> Result<String, DeployError> {
    if mode == TemplateMode::None {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
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
                break;
            };
            out.push_str(&rest[..start]);
            match lookup(name) {
                Some(v) => {
                    if !used.iter().any(|u| u == name) {
                        used.push(name.to_string());
                    }
                    out.push_str(&v);
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
        Ok(out)
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

/// Parses one file's (already substituted) text into manifests.
pub fn parse_documents(display: &str, text: &str) -> Result<Vec<Manifest>, DeployError> {
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
        let value: Value = match serde_yaml::from_str::<Value>(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| first_line + l.line() - 1)
                    .unwrap_or(first_line);
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                errors.push(format!("{display}:{line}: YAML error: {msg}"));
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
/// warnings (`:latest` images, HPA + replicas, Secrets in plain manifests).
pub fn render(
    project_dir: &Path,
    entries: &[String],
    confine: bool,
    mode: TemplateMode,
    vars: &Vars,
    extra: &[(String, String)],
) -> Result<Rendered, DeployError> {
    let files = find_files(project_dir, entries, confine)?;
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
    for f in &files {
        let display = f
            .strip_prefix(project_dir)
            .unwrap_or(f)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{display}: cannot read: {e}"));
                continue;
            }
        };
        let text = match substitute(&display, &text, mode, &lookup, &mut rendered.used) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match parse_documents(&display, &text) {
            Ok(ms) => rendered.manifests.extend(ms),
            Err(e) => errors.push(e.to_string()),
        }
        rendered.files.push(display);
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
        match serde_yaml::to_string(&obj) {
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
        .unwrap();
        assert_eq!(
            out,
            "name: web\nreplicas: 3\nimage: reg/web:1a2b\n# __NOT_USED__\nx: a__b__c\n"
        );
        assert_eq!(used, vec!["APP_NAME", "REPLICAS", "VERSION"]);
        let v: Value = serde_yaml::from_str(&out).unwrap();
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
        .unwrap();
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

    #[test]
    fn files_dirs_globs_and_confinement() {
        let dir = tempfile::tempdir().unwrap();
        let k8s = dir.path().join("k8s");
        std::fs::create_dir_all(k8s.join("sub")).unwrap();
        std::fs::write(k8s.join("b.yaml"), "").unwrap();
        std::fs::write(k8s.join("a.yml"), "").unwrap();
        std::fs::write(k8s.join("sub/c.json"), "").unwrap();
        std::fs::write(k8s.join("README.md"), "").unwrap();
        let files = find_files(dir.path(), &["k8s/".into()], true).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into())
            .collect();
        assert_eq!(names, vec!["a.yml", "b.yaml", "c.json"]);
        let files = find_files(dir.path(), &["k8s/*.yaml".into()], true).unwrap();
        assert_eq!(files.len(), 1);
        let e = find_files(dir.path(), &["nothing/".into()], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nothing/\""), "{e}");
        let outside = tempfile::NamedTempFile::new().unwrap();
        let e = find_files(dir.path(), &[outside.path().display().to_string()], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the project directory"), "{e}");
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
