//! `POST /api/v4/projects/:id/ci/lint` as GitLab answers it (`lib/api/lint.rb`, a static check):
//! a `PRIVATE-TOKEN`, 401 for an unknown token, 404 for an unknown project, 403 for a project
//! the token's user is not a developer of; then the content's includes merged as GitLab's
//! `External::Processor` merges them (each included file deep-merged in order, nested includes
//! first, the including file over them; `project` files read in that project, `local` ones in
//! the project whose file includes them), `.pre`/`.post` added to `stages`, and the answer
//! `{valid, errors, warnings, merged_yaml, includes}` with GitLab's messages for files that do
//! not exist.
//!
//! Simpler than GitLab, and refused rather than faked: `extends` is left as written (GitLab
//! resolves it; a client that resolves it again sees the same jobs), content with `!reference`
//! or `include:rules` is answered invalid (`the fake GitLab does not …`), and
//! `include:component` names no component.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Value, json};

/// The lint API's model: tokens, projects with their files, remote files and templates.
#[derive(Debug, Default, Clone)]
pub struct CiLint {
    /// Personal access tokens → the projects (full paths) whose developer their user is.
    pub tokens: BTreeMap<String, BTreeSet<String>>,
    /// Projects (full path, lower case) → their files at the default branch (path → text).
    pub projects: BTreeMap<String, BTreeMap<String, String>>,
    /// `include:remote` URLs → text.
    pub remote_files: BTreeMap<String, String>,
    /// `include:template` names → text.
    pub templates: BTreeMap<String, String>,
    /// Each request's JSON body (the token is a header, not in it).
    pub requests: Vec<Value>,
    /// Test mode: every error message (a 401/403/404 body, a `valid: false` error) carries
    /// the request's `PRIVATE-TOKEN`, as a careless server or proxy might echo it.
    pub echo_token: bool,
    /// Test mode: every request is answered with this status and HTML page (a proxy's).
    pub proxy_page: Option<(u16, String)>,
}

/// The HTTP answer: status and JSON body (with [`CiLint::echo_token`], an error body's message
/// is `request with PRIVATE-TOKEN <token> refused` and each `valid: false` error ends with
/// `(PRIVATE-TOKEN: <token>)`).
pub fn answer(lint: &mut CiLint, token: Option<&str>, id: &str, body: &[u8]) -> (u16, Value) {
    let (status, mut body) = answer_plain(lint, token, id, body);
    if lint.echo_token {
        let token = token.unwrap_or_default();
        let echo = format!(" (PRIVATE-TOKEN: {token})");
        if let Some(Value::String(m)) = body.get_mut("message") {
            *m = format!("request with PRIVATE-TOKEN {token} refused");
        }
        if let Some(Value::Array(errors)) = body.get_mut("errors") {
            for e in errors.iter_mut() {
                if let Value::String(m) = e {
                    m.push_str(&echo);
                }
            }
        }
    }
    (status, body)
}

fn answer_plain(lint: &mut CiLint, token: Option<&str>, id: &str, body: &[u8]) -> (u16, Value) {
    let Some(allowed) = token.and_then(|t| lint.tokens.get(t)) else {
        return (401, json!({"message": "401 Unauthorized"}));
    };
    let project = id.to_lowercase();
    if !lint.projects.contains_key(&project) {
        return (404, json!({"message": "404 Project Not Found"}));
    }
    if !allowed.iter().any(|p| p.to_lowercase() == project) {
        return (403, json!({"message": "403 Forbidden"}));
    }
    let body: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return (400, json!({"error": "content is missing"})),
    };
    lint.requests.push(body.clone());
    let Some(content) = body.get("content").and_then(Value::as_str) else {
        return (400, json!({"error": "content is missing"}));
    };
    let mut includes = Vec::new();
    match merge(lint, content, &project, &mut includes) {
        Ok(yaml) => (
            200,
            json!({
                "valid": true,
                "errors": [],
                "warnings": [],
                "merged_yaml": yaml,
                "includes": includes,
            }),
        ),
        Err(e) => (
            200,
            json!({
                "valid": false,
                "errors": [e],
                "warnings": [],
                "merged_yaml": null,
                "includes": null,
            }),
        ),
    }
}

fn merge(
    lint: &CiLint,
    content: &str,
    project: &str,
    includes: &mut Vec<Value>,
) -> Result<String, String> {
    let mut config = expand(lint, content, project, includes, 0)?;
    if let Some(Yaml::Seq(stages)) = config.get_mut("stages") {
        // EdgeStagesInjector
        stages.retain(|s| !matches!(s, Yaml::Str(n) if n == ".pre" || n == ".post"));
        stages.insert(0, Yaml::Str(".pre".into()));
        stages.push(Yaml::Str(".post".into()));
    }
    serde_saphyr::to_string(&Yaml::Map(config.0)).map_err(|e| e.to_string())
}

/// One file's hash, its includes merged beneath it.
fn expand(
    lint: &CiLint,
    text: &str,
    project: &str,
    includes: &mut Vec<Value>,
    depth: usize,
) -> Result<Hash, String> {
    if depth > 100 {
        return Err("Nested includes are too deep".into());
    }
    if text.contains("!reference") {
        return Err("the fake GitLab does not resolve !reference".into());
    }
    let parsed: Yaml = serde_saphyr::from_str(text).map_err(|e| format!("(<unknown>): {e}"))?;
    let Yaml::Map(pairs) = parsed else {
        return Err("Invalid configuration format".into());
    };
    let mut own = Hash(pairs);
    let entries = match own.remove("include") {
        None => Vec::new(),
        Some(Yaml::Seq(items)) => items,
        Some(one) => vec![one],
    };
    let mut merged = Hash::default();
    for entry in entries {
        let entry = match entry {
            Yaml::Str(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Hash(vec![("remote".into(), Yaml::Str(s))])
            }
            Yaml::Str(s) => Hash(vec![("local".into(), Yaml::Str(s))]),
            Yaml::Map(m) => Hash(m),
            _ => return Err("Include config must be a string or a hash".into()),
        };
        if entry.get("rules").is_some() {
            return Err("the fake GitLab does not evaluate include:rules".into());
        }
        let str_of = |k: &str| match entry.get(k) {
            Some(Yaml::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let mut files: Vec<(String, String, &str, String)> = Vec::new(); // text, location, type, context
        if let Some(path) = str_of("local") {
            let path = path.trim_start_matches('/').to_string();
            let text = lint
                .projects
                .get(project)
                .and_then(|f| f.get(&path))
                .ok_or_else(|| format!("Local file `{path}` does not exist!"))?;
            files.push((text.clone(), path, "local", project.to_string()));
        } else if let Some(p) = str_of("project") {
            let p_lc = p.to_lowercase();
            let repo = lint.projects.get(&p_lc).ok_or_else(|| {
                format!(
                    "Project `{p}` not found or access denied! Make sure any includes in the \
                     pipeline configuration are correctly defined."
                )
            })?;
            let names: Vec<String> = match entry.get("file") {
                Some(Yaml::Str(f)) => vec![f.clone()],
                Some(Yaml::Seq(fs)) => fs
                    .iter()
                    .filter_map(|f| match f {
                        Yaml::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => return Err(format!("Project `{p}` include needs a file")),
            };
            for name in names {
                let path = name.trim_start_matches('/').to_string();
                let text = repo
                    .get(&path)
                    .ok_or_else(|| format!("Project `{p}` file `{path}` does not exist!"))?;
                files.push((text.clone(), path, "file", p_lc.clone()));
            }
        } else if let Some(url) = str_of("remote") {
            let text = lint.remote_files.get(&url).ok_or_else(|| {
                format!(
                    "Remote file `{url}` could not be fetched because of HTTP code `404` error!"
                )
            })?;
            files.push((text.clone(), url, "remote", project.to_string()));
        } else if let Some(name) = str_of("template") {
            let text = lint
                .templates
                .get(&name)
                .ok_or_else(|| format!("Included file `{name}` is empty or does not exist!"))?;
            files.push((text.clone(), name, "template", project.to_string()));
        } else if let Some(c) = str_of("component") {
            return Err(format!(
                "Component '{c}' - project does not exist or you don't have sufficient permissions"
            ));
        } else {
            return Err("Include config must specify one of the keys: local, remote, template, project, component".into());
        }
        for (text, location, kind, context) in files {
            includes.push(json!({
                "type": kind,
                "location": location,
                "blob": null,
                "raw": null,
                "extra": {},
                "context_project": project,
                "context_sha": "0000000000000000000000000000000000000000",
            }));
            let sub = expand(lint, &text, &context, includes, depth + 1)?;
            merged.deep_merge(sub);
        }
    }
    merged.deep_merge(own);
    Ok(merged)
}

/// A YAML value whose hashes keep their order (Ruby's do: job order follows it).
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

#[derive(Debug, Default)]
struct Hash(Vec<(String, Yaml)>);

impl Hash {
    fn get(&self, k: &str) -> Option<&Yaml> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }
    fn get_mut(&mut self, k: &str) -> Option<&mut Yaml> {
        self.0.iter_mut().find(|(key, _)| key == k).map(|(_, v)| v)
    }
    fn remove(&mut self, k: &str) -> Option<Yaml> {
        let i = self.0.iter().position(|(key, _)| key == k)?;
        Some(self.0.remove(i).1)
    }
    /// Ruby's `deep_merge!`: hashes key by key, the rest replaced in place; new keys last.
    fn deep_merge(&mut self, over: Hash) {
        for (k, v) in over.0 {
            match (self.get_mut(&k), v) {
                (Some(Yaml::Map(base)), Yaml::Map(o)) => {
                    let mut h = Hash(std::mem::take(base));
                    h.deep_merge(Hash(o));
                    *base = h.0;
                }
                (Some(slot), v) => *slot = v,
                (None, v) => self.0.push((k, v)),
            }
        }
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Yaml;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("YAML")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Yaml, E> {
                Ok(Yaml::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Yaml, E> {
                Ok(Yaml::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
                Yaml::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Yaml, E> {
                Ok(Yaml::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Yaml, E> {
                Ok(Yaml::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Yaml, E> {
                Ok(i64::try_from(v).map_or(Yaml::Float(v as f64), Yaml::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Yaml, E> {
                Ok(Yaml::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Yaml, E> {
                Ok(Yaml::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Yaml, E> {
                Ok(Yaml::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(Yaml::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
                let mut out: Vec<(String, Yaml)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<Yaml, Yaml>()? {
                    let key = match k {
                        Yaml::Str(s) => s,
                        Yaml::Int(i) => i.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        Yaml::Null => String::new(),
                        _ => return Err(de::Error::custom("a mapping key must be a scalar")),
                    };
                    match out.iter_mut().find(|(existing, _)| *existing == key) {
                        Some(slot) => slot.1 = v,
                        None => out.push((key, v)),
                    }
                }
                Ok(Yaml::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Yaml {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => s.serialize_unit(),
            Yaml::Bool(b) => s.serialize_bool(*b),
            Yaml::Int(i) => s.serialize_i64(*i),
            Yaml::Float(f) => s.serialize_f64(*f),
            Yaml::Str(v) => s.serialize_str(v),
            Yaml::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Yaml::Map(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint() -> CiLint {
        let mut l = CiLint::default();
        l.tokens
            .insert("glpat-good".into(), ["acme/app".to_string()].into());
        l.projects.insert("acme/app".into(), BTreeMap::new());
        l.projects.insert(
            "acme/ci".into(),
            [
                (
                    "build.yml".to_string(),
                    "include: base.yml\nbuild:\n  stage: build\n  script: [make]\n".to_string(),
                ),
                (
                    "base.yml".to_string(),
                    "variables:\n  A: from-base\n  B: from-base\n".to_string(),
                ),
            ]
            .into(),
        );
        l
    }

    #[test]
    fn auth_and_projects_as_gitlab() {
        let mut l = lint();
        let body = br#"{"content": "a: {script: [x]}"}"#;
        assert_eq!(answer(&mut l, None, "acme/app", body).0, 401);
        assert_eq!(answer(&mut l, Some("nope"), "acme/app", body).0, 401);
        assert_eq!(answer(&mut l, Some("glpat-good"), "acme/none", body).0, 404);
        assert_eq!(answer(&mut l, Some("glpat-good"), "acme/ci", body).0, 403);
        assert_eq!(answer(&mut l, Some("glpat-good"), "Acme/App", body).0, 200);
    }

    #[test]
    fn includes_merge_in_order_under_the_file() {
        let mut l = lint();
        let content = r#"{"include": [{"project": "acme/ci", "file": "/build.yml"}], "stages": ["build", "test"], "variables": {"B": "mine"}, "test": {"script": ["t"]}}"#;
        let (status, body) = answer(
            &mut l,
            Some("glpat-good"),
            "acme/app",
            serde_json::to_vec(&json!({ "content": content }))
                .unwrap()
                .as_slice(),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["valid"], true, "{body}");
        let merged: Yaml = serde_saphyr::from_str(body["merged_yaml"].as_str().unwrap()).unwrap();
        let Yaml::Map(m) = merged else { panic!() };
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["variables", "build", "stages", "test"]);
        let vars = &m[0].1;
        assert_eq!(
            vars,
            &Yaml::Map(vec![
                ("A".into(), Yaml::Str("from-base".into())),
                ("B".into(), Yaml::Str("mine".into()))
            ])
        );
        assert_eq!(
            m[2].1,
            Yaml::Seq(
                [".pre", "build", "test", ".post"]
                    .map(|s| Yaml::Str(s.into()))
                    .to_vec()
            )
        );
        // both files, the nested one read in the included project
        assert_eq!(body["includes"].as_array().unwrap().len(), 2);
        assert_eq!(body["includes"][1]["location"], "base.yml");
        assert_eq!(body["includes"][1]["context_project"], "acme/ci");

        let content = r#"{"include": [{"project": "acme/ci", "file": "nope.yml"}]}"#;
        let (_, body) = answer(
            &mut l,
            Some("glpat-good"),
            "acme/app",
            serde_json::to_vec(&json!({ "content": content }))
                .unwrap()
                .as_slice(),
        );
        assert_eq!(body["valid"], false);
        assert_eq!(
            body["errors"][0],
            "Project `acme/ci` file `nope.yml` does not exist!"
        );
        assert_eq!(body["merged_yaml"], Value::Null);
    }
}
