//! One job's keywords, read and checked as GitLab's `Entry::Job` reads them, with `default:`
//! (and the legacy top-level keywords) applied. The fields map onto the runner's job payload
//! (`runner/src/gitlab/payload.rs`); see docs/pipeline.md.

use indexmap::IndexMap;
use serde::Serialize;

use crate::Error;
use crate::yaml::{Map, Node, Pos, Value};

/// The keywords a job may have (GitLab's `Entry::Job` and `Entry::Processable`).
pub const JOB_KEYS: &[&str] = &[
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "publish",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "type",
    "variables",
    "when",
];

/// Keywords `default:` may set (and a job inherits unless `inherit:default` says otherwise).
pub const DEFAULT_KEYS: &[&str] = &[
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

/// A job's `when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
    Manual,
    Delayed,
    Never,
}

impl When {
    pub fn parse(node: &Node, key: &str) -> Result<When, Error> {
        Ok(match node.as_str() {
            Some("on_success") => When::OnSuccess,
            Some("on_failure") => When::OnFailure,
            Some("always") => When::Always,
            Some("manual") => When::Manual,
            Some("delayed") => When::Delayed,
            Some("never") => When::Never,
            _ => {
                return Err(Error::at(
                    node.pos.clone(),
                    format!(
                        "{key} config should be one of: on_success, on_failure, always, manual, delayed, never"
                    ),
                ));
            }
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AllowFailure {
    pub allowed: bool,
    /// `allow_failure: exit_codes:` — the job may fail with these codes only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i64>,
}

/// One `needs:` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Need {
    pub job: String,
    pub artifacts: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// One YAML variable as the payload carries it (`public: true`, `raw` for `expand: false`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variable {
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DockerOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `ports:` of an image or service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Port {
    pub number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn ports(node: &Node, job: &str, key: &str) -> Result<Vec<Port>, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(err(node, job, key, "should be an array"));
    };
    items
        .iter()
        .map(|item| match &item.value {
            Value::Int(n) => Ok(Port {
                number: *n,
                ..Port::default()
            }),
            Value::Map(m) => Ok(Port {
                number: m
                    .get("number")
                    .map(|n| int(n, job, key))
                    .transpose()?
                    .ok_or_else(|| err(item, job, key, "should have a number"))?,
                protocol: m.get("protocol").map(|n| string(n, job, key)).transpose()?,
                name: m.get("name").map(|n| string(n, job, key)).transpose()?,
            }),
            _ => Err(err(item, job, key, "should be an integer or a hash")),
        })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Image {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// `cache:key`: a string, or a hash of `files:` (the key from the files' contents),
/// `files_commits:` (from their last commits) and `prefix:`, whose key GitLab computes from
/// the repository (the caller's job: it needs git). Leading `/` of the paths are dropped, as
/// GitLab's `Entry::Files` drops them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKey {
    Key(String),
    Files {
        #[serde(skip_serializing_if = "Option::is_none")]
        files: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        files_commits: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cache {
    pub key: CacheKey,
    pub paths: Vec<String>,
    pub untracked: bool,
    pub policy: String,
    pub when: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_keys: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unprotect: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Artifacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
    pub when: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expose_as: Option<String>,
    /// `reports:` by type (`junit`, `dotenv`, …), as written.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub reports: IndexMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Retry {
    pub max: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Environment {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_stop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_in: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hook {
    /// `pre_get_sources_script`
    pub name: String,
    pub script: Vec<String>,
}

/// `parallel:` of one job instance (`CI_NODE_INDEX`, `CI_NODE_TOTAL`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Parallel {
    pub index: usize,
    pub total: usize,
}

/// `parallel:` as written.
#[derive(Debug, Clone, PartialEq)]
pub enum ParallelSpec {
    Count(usize),
    /// Each instance's variables, in order.
    Matrix(Vec<Vec<(String, String)>>),
}

/// A job as read from the configuration, before rules and `parallel` expansion.
#[derive(Debug, Clone)]
pub struct JobDef {
    pub name: String,
    pub pos: Pos,
    pub stage: String,
    pub when: Option<When>,
    pub start_in: Option<String>,
    pub allow_failure: Option<AllowFailure>,
    pub needs: Option<Vec<NeedSpec>>,
    pub dependencies: Option<Vec<String>>,
    pub image: Option<Image>,
    pub services: Vec<Service>,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    pub variables: Vec<Variable>,
    pub cache: Vec<Cache>,
    pub artifacts: Option<Artifacts>,
    /// As written, and in seconds.
    pub timeout: Option<(String, u64)>,
    pub retry: Option<Retry>,
    pub environment: Option<Environment>,
    pub release: Option<serde_json::Value>,
    pub resource_group: Option<String>,
    pub hooks: Vec<Hook>,
    pub tags: Vec<String>,
    pub interruptible: Option<bool>,
    pub coverage: Option<String>,
    pub trigger: Option<serde_json::Value>,
    pub parallel: Option<ParallelSpec>,
    pub rules: Option<Node>,
    pub only: Option<Node>,
    pub except: Option<Node>,
}

/// A `needs:` entry before `parallel` names are expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct NeedSpec {
    pub job: String,
    pub artifacts: bool,
    pub optional: bool,
    /// `parallel: matrix:` of the need: only these instances.
    pub matrix: Option<Vec<Vec<(String, String)>>>,
    pub pos: Pos,
}

/// What `default:` and the legacy top-level keywords give every job.
pub struct Defaults<'a> {
    pub map: Map,
    pub global_variables: &'a [Variable],
}

fn err(node: &Node, job: &str, key: &str, what: &str) -> Error {
    Error::at(node.pos.clone(), format!("jobs:{job}:{key} config {what}"))
}

fn string(node: &Node, job: &str, key: &str) -> Result<String, Error> {
    match &node.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(_) | Value::Float(_) => Ok(node.scalar_string().unwrap_or_default()),
        _ => Err(err(node, job, key, "should be a string")),
    }
}

fn strings(node: &Node, job: &str, key: &str) -> Result<Vec<String>, Error> {
    match &node.value {
        Value::Seq(items) => items.iter().map(|i| string(i, job, key)).collect(),
        _ => Err(err(node, job, key, "should be an array of strings")),
    }
}

fn string_or_strings(node: &Node, job: &str, key: &str) -> Result<Vec<String>, Error> {
    match &node.value {
        Value::Seq(_) => strings(node, job, key),
        _ => Ok(vec![string(node, job, key)?]),
    }
}

fn boolean(node: &Node, job: &str, key: &str) -> Result<bool, Error> {
    match node.value {
        Value::Bool(b) => Ok(b),
        _ => Err(err(node, job, key, "should be a boolean value")),
    }
}

fn int(node: &Node, job: &str, key: &str) -> Result<i64, Error> {
    match node.value {
        Value::Int(i) => Ok(i),
        _ => Err(err(node, job, key, "should be an integer")),
    }
}

fn map<'a>(node: &'a Node, job: &str, key: &str) -> Result<&'a Map, Error> {
    node.as_map()
        .ok_or_else(|| err(node, job, key, "should be a hash"))
}

/// `script`-like: a string or an array of strings and arrays (up to 10 levels), flattened.
pub fn script(node: &Node, job: &str, key: &str) -> Result<Vec<String>, Error> {
    fn flatten(node: &Node, depth: usize, out: &mut Vec<String>) -> bool {
        match &node.value {
            Value::Seq(items) if depth < 10 => items.iter().all(|i| flatten(i, depth + 1, out)),
            Value::Str(s) => {
                out.push(s.clone());
                true
            }
            _ => false,
        }
    }
    let mut out = Vec::new();
    if flatten(node, 0, &mut out) {
        Ok(out)
    } else {
        Err(err(
            node,
            job,
            key,
            "should be a string or a nested array of strings up to 10 levels deep",
        ))
    }
}

/// `variables:` (global or a job's): `KEY: value` or `KEY: {value, description, expand,
/// options}`.
pub fn variables(node: &Node, context: &str) -> Result<Vec<Variable>, Error> {
    if node.is_null() {
        return Ok(Vec::new());
    }
    let bad = |n: &Node| {
        Error::at(
            n.pos.clone(),
            format!(
                "{context}variables config should be a hash of key value pairs, value can be a hash"
            ),
        )
    };
    let m = node.as_map().ok_or_else(|| bad(node))?;
    let mut out = Vec::new();
    for (key, v) in m {
        let (value, raw) = match &v.value {
            Value::Str(_) | Value::Int(_) | Value::Float(_) => {
                (v.scalar_string().unwrap_or_default(), false)
            }
            Value::Null => (String::new(), false),
            Value::Map(vm) => {
                for k in vm.keys() {
                    if !["value", "description", "expand", "options"].contains(&k.as_str()) {
                        return Err(Error::at(
                            v.pos.clone(),
                            format!("{context}variables:{key} config uses invalid data keys: {k}"),
                        ));
                    }
                }
                let value = match vm.get("value") {
                    Some(n) if n.is_null() => String::new(),
                    Some(n) => n
                        .scalar_string()
                        .filter(|_| !matches!(n.value, Value::Bool(_)))
                        .ok_or_else(|| bad(n))?,
                    None => String::new(),
                };
                let raw = match vm.get("expand") {
                    Some(Node {
                        value: Value::Bool(b),
                        ..
                    }) => !b,
                    Some(n) => return Err(bad(n)),
                    None => false,
                };
                (value, raw)
            }
            _ => return Err(bad(v)),
        };
        out.push(Variable {
            key: key.clone(),
            value,
            raw,
        });
    }
    Ok(out)
}

/// Job variables over global ones (a job's key replaces the global one at its place).
pub fn merge_variables(base: &[Variable], over: &[Variable]) -> Vec<Variable> {
    let mut out: Vec<Variable> = base.to_vec();
    for v in over {
        match out.iter_mut().find(|o| o.key == v.key) {
            Some(o) => *o = v.clone(),
            None => out.push(v.clone()),
        }
    }
    out
}

fn docker(node: &Node, job: &str, key: &str) -> Result<DockerOptions, Error> {
    let m = map(node, job, key)?;
    Ok(DockerOptions {
        platform: m.get("platform").map(|n| string(n, job, key)).transpose()?,
        user: m.get("user").map(|n| string(n, job, key)).transpose()?,
    })
}

fn image(node: &Node, job: &str) -> Result<Image, Error> {
    match &node.value {
        Value::Str(s) => Ok(Image {
            name: s.clone(),
            ..Image::default()
        }),
        Value::Map(m) => {
            unknown(
                m,
                &[
                    "name",
                    "entrypoint",
                    "pull_policy",
                    "docker",
                    "ports",
                    "kubernetes",
                ],
                &format!("jobs:{job}:image"),
                node,
            )?;
            Ok(Image {
                name: m
                    .get("name")
                    .map(|n| string(n, job, "image:name"))
                    .transpose()?
                    .ok_or_else(|| err(node, job, "image", "should have a name"))?,
                entrypoint: m
                    .get("entrypoint")
                    .map(|n| strings(n, job, "image:entrypoint"))
                    .transpose()?,
                pull_policy: m
                    .get("pull_policy")
                    .map(|n| string_or_strings(n, job, "image:pull_policy"))
                    .transpose()?,
                docker: m
                    .get("docker")
                    .map(|n| docker(n, job, "image:docker"))
                    .transpose()?,
                ports: m
                    .get("ports")
                    .map(|n| ports(n, job, "image:ports"))
                    .transpose()?
                    .unwrap_or_default(),
            })
        }
        _ => Err(err(node, job, "image", "should be a hash or a string")),
    }
}

fn services(node: &Node, job: &str) -> Result<Vec<Service>, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(err(node, job, "services", "should be a array"));
    };
    items
        .iter()
        .map(|item| match &item.value {
            Value::Str(s) => Ok(Service {
                name: s.clone(),
                ..Service::default()
            }),
            Value::Map(m) => {
                unknown(
                    m,
                    &[
                        "name",
                        "alias",
                        "entrypoint",
                        "command",
                        "variables",
                        "pull_policy",
                        "docker",
                        "ports",
                        "kubernetes",
                    ],
                    &format!("jobs:{job}:services:service"),
                    item,
                )?;
                Ok(Service {
                    name: m
                        .get("name")
                        .map(|n| string(n, job, "services:name"))
                        .transpose()?
                        .ok_or_else(|| err(item, job, "services:service", "should have a name"))?,
                    alias: m
                        .get("alias")
                        .map(|n| string(n, job, "services:alias"))
                        .transpose()?,
                    entrypoint: m
                        .get("entrypoint")
                        .map(|n| strings(n, job, "services:entrypoint"))
                        .transpose()?,
                    command: m
                        .get("command")
                        .map(|n| strings(n, job, "services:command"))
                        .transpose()?,
                    variables: m
                        .get("variables")
                        .map(|n| variables(n, &format!("jobs:{job}:services:")))
                        .transpose()?
                        .unwrap_or_default(),
                    pull_policy: m
                        .get("pull_policy")
                        .map(|n| string_or_strings(n, job, "services:pull_policy"))
                        .transpose()?,
                    docker: m
                        .get("docker")
                        .map(|n| docker(n, job, "services:docker"))
                        .transpose()?,
                    ports: m
                        .get("ports")
                        .map(|n| ports(n, job, "services:ports"))
                        .transpose()?
                        .unwrap_or_default(),
                })
            }
            _ => Err(err(
                item,
                job,
                "services:service",
                "should be a hash or a string",
            )),
        })
        .collect()
}

fn cache(node: &Node, job: &str) -> Result<Vec<Cache>, Error> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Map(_) => vec![node],
        Value::Null => Vec::new(),
        _ => {
            return Err(err(
                node,
                job,
                "cache",
                "should be a hash or an array of hashes",
            ));
        }
    };
    let mut out = Vec::new();
    for item in items {
        let m = map(item, job, "cache")?;
        unknown(
            m,
            &[
                "key",
                "paths",
                "untracked",
                "policy",
                "when",
                "fallback_keys",
                "unprotect",
            ],
            &format!("jobs:{job}:cache"),
            item,
        )?;
        let key = match m.get("key") {
            None => CacheKey::Key("default".into()),
            Some(k) => match &k.value {
                Value::Map(km) => {
                    unknown(
                        km,
                        &["files", "files_commits", "prefix"],
                        &format!("jobs:{job}:cache:key"),
                        k,
                    )?;
                    let paths = |key: &str| -> Result<Option<Vec<String>>, Error> {
                        let Some(n) = km.get(key) else {
                            return Ok(None);
                        };
                        let list = strings(n, job, &format!("cache:key:{key}"))?;
                        Ok(Some(
                            list.into_iter()
                                .map(|p| p.trim_start_matches('/').to_string())
                                .collect(),
                        ))
                    };
                    CacheKey::Files {
                        files: paths("files")?,
                        files_commits: paths("files_commits")?,
                        prefix: km
                            .get("prefix")
                            .map(|n| string(n, job, "cache:key:prefix"))
                            .transpose()?,
                    }
                }
                _ => CacheKey::Key(string(k, job, "cache:key")?),
            },
        };
        out.push(Cache {
            key,
            paths: m
                .get("paths")
                .map(|n| strings(n, job, "cache:paths"))
                .transpose()?
                .unwrap_or_default(),
            untracked: m
                .get("untracked")
                .map(|n| boolean(n, job, "cache:untracked"))
                .transpose()?
                .unwrap_or(false),
            policy: m
                .get("policy")
                .map(|n| string(n, job, "cache:policy"))
                .transpose()?
                .unwrap_or_else(|| "pull-push".into()),
            when: m
                .get("when")
                .map(|n| string(n, job, "cache:when"))
                .transpose()?
                .unwrap_or_else(|| "on_success".into()),
            fallback_keys: m
                .get("fallback_keys")
                .map(|n| strings(n, job, "cache:fallback_keys"))
                .transpose()?
                .unwrap_or_default(),
            unprotect: m
                .get("unprotect")
                .map(|n| boolean(n, job, "cache:unprotect"))
                .transpose()?
                .unwrap_or(false),
        });
    }
    Ok(out)
}

fn artifacts(node: &Node, job: &str) -> Result<Artifacts, Error> {
    let m = map(node, job, "artifacts")?;
    unknown(
        m,
        &[
            "name",
            "untracked",
            "paths",
            "reports",
            "when",
            "expire_in",
            "expose_as",
            "exclude",
            "public",
            "access",
        ],
        &format!("jobs:{job}:artifacts"),
        node,
    )?;
    let mut reports = IndexMap::new();
    if let Some(r) = m.get("reports") {
        for (k, v) in map(r, job, "artifacts:reports")? {
            reports.insert(k.clone(), to_json(v));
        }
    }
    Ok(Artifacts {
        name: m
            .get("name")
            .map(|n| string(n, job, "artifacts:name"))
            .transpose()?,
        paths: m
            .get("paths")
            .map(|n| strings(n, job, "artifacts:paths"))
            .transpose()?
            .unwrap_or_default(),
        exclude: m
            .get("exclude")
            .map(|n| strings(n, job, "artifacts:exclude"))
            .transpose()?
            .unwrap_or_default(),
        untracked: m
            .get("untracked")
            .map(|n| boolean(n, job, "artifacts:untracked"))
            .transpose()?
            .unwrap_or(false),
        when: m
            .get("when")
            .map(|n| string(n, job, "artifacts:when"))
            .transpose()?
            .unwrap_or_else(|| "on_success".into()),
        expire_in: m
            .get("expire_in")
            .map(|n| string(n, job, "artifacts:expire_in"))
            .transpose()?,
        expose_as: m
            .get("expose_as")
            .map(|n| string(n, job, "artifacts:expose_as"))
            .transpose()?,
        reports,
    })
}

fn retry(node: &Node, job: &str) -> Result<Retry, Error> {
    match &node.value {
        Value::Int(i) => Ok(Retry {
            max: *i,
            ..Retry::default()
        }),
        Value::Map(m) => Ok(Retry {
            max: m
                .get("max")
                .map(|n| int(n, job, "retry:max"))
                .transpose()?
                .unwrap_or(0),
            when: m
                .get("when")
                .map(|n| string_or_strings(n, job, "retry:when"))
                .transpose()?
                .unwrap_or_default(),
            exit_codes: match m.get("exit_codes") {
                None => Vec::new(),
                Some(n) => ints(n, job, "retry:exit_codes")?,
            },
        }),
        _ => Err(err(node, job, "retry", "should be a hash or an integer")),
    }
    .and_then(|r| {
        if (0..=2).contains(&r.max) {
            Ok(r)
        } else {
            Err(err(node, job, "retry", "max should be between 0 and 2"))
        }
    })
}

fn ints(node: &Node, job: &str, key: &str) -> Result<Vec<i64>, Error> {
    match &node.value {
        Value::Seq(items) => items.iter().map(|i| int(i, job, key)).collect(),
        _ => Ok(vec![int(node, job, key)?]),
    }
}

fn environment(node: &Node, job: &str) -> Result<Environment, Error> {
    match &node.value {
        Value::Str(s) => Ok(Environment {
            name: s.clone(),
            ..Environment::default()
        }),
        Value::Map(m) => {
            let s = |k: &str| {
                m.get(k)
                    .map(|n| string(n, job, &format!("environment:{k}")))
                    .transpose()
            };
            Ok(Environment {
                name: s("name")?
                    .ok_or_else(|| err(node, job, "environment", "name can't be blank"))?,
                url: s("url")?,
                action: s("action")?,
                on_stop: s("on_stop")?,
                deployment_tier: s("deployment_tier")?,
                auto_stop_in: s("auto_stop_in")?,
            })
        }
        _ => Err(err(
            node,
            job,
            "environment",
            "should be a hash or a string",
        )),
    }
}

fn allow_failure(node: &Node, job: &str) -> Result<AllowFailure, Error> {
    match &node.value {
        Value::Bool(b) => Ok(AllowFailure {
            allowed: *b,
            exit_codes: Vec::new(),
        }),
        Value::Map(m) => {
            let codes = m.get("exit_codes").ok_or_else(|| {
                err(
                    node,
                    job,
                    "allow_failure",
                    "should be a hash with exit_codes",
                )
            })?;
            Ok(AllowFailure {
                allowed: false,
                exit_codes: ints(codes, job, "allow_failure:exit_codes")?,
            })
        }
        _ => Err(err(
            node,
            job,
            "allow_failure",
            "should be a hash or a boolean value",
        )),
    }
}

/// `needs:` (a job's or a rule's).
pub fn needs(node: &Node, job: &str) -> Result<Vec<NeedSpec>, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(err(node, job, "needs", "should be an array"));
    };
    items
        .iter()
        .map(|item| match &item.value {
            Value::Str(s) => Ok(NeedSpec {
                job: s.clone(),
                artifacts: true,
                optional: false,
                matrix: None,
                pos: item.pos.clone(),
            }),
            Value::Map(m) => {
                for cross in ["project", "pipeline"] {
                    if m.contains_key(cross) {
                        return Err(Error::at(
                            item.pos.clone(),
                            format!(
                                "jobs:{job}:needs:{cross} is not supported: `ferry exec` runs one pipeline of one project"
                            ),
                        ));
                    }
                }
                unknown(m, &["job", "artifacts", "optional", "parallel"], "job hash", item)?;
                let name = m
                    .get("job")
                    .ok_or_else(|| err(item, job, "needs", "needs a job name"))?;
                let matrix = match m.get("parallel") {
                    None => None,
                    Some(p) => match parallel(p, job)? {
                        ParallelSpec::Matrix(rows) => Some(rows),
                        ParallelSpec::Count(_) => {
                            return Err(err(p, job, "needs:parallel", "should be a matrix"));
                        }
                    },
                };
                Ok(NeedSpec {
                    job: string(name, job, "needs:job")?,
                    artifacts: m.get("artifacts").map(|n| boolean(n, job, "needs:artifacts")).transpose()?.unwrap_or(true),
                    optional: m.get("optional").map(|n| boolean(n, job, "needs:optional")).transpose()?.unwrap_or(false),
                    matrix,
                    pos: item.pos.clone(),
                })
            }
            _ => Err(err(item, job, "needs", "should be a string or a hash")),
        })
        .collect()
}

/// `parallel: N` (2..=200) or `parallel: matrix:` (each entry's arrays multiplied out, the
/// first variable varying slowest, at most 200 instances).
pub fn parallel(node: &Node, job: &str) -> Result<ParallelSpec, Error> {
    match &node.value {
        Value::Int(n) => {
            if (1..=200).contains(n) {
                Ok(ParallelSpec::Count(*n as usize))
            } else {
                Err(err(
                    node,
                    job,
                    "parallel",
                    "must be less than or equal to 200",
                ))
            }
        }
        Value::Map(m) => {
            let matrix = m
                .get("matrix")
                .ok_or_else(|| err(node, job, "parallel", "should be an integer or a hash"))?;
            let Value::Seq(entries) = &matrix.value else {
                return Err(err(
                    matrix,
                    job,
                    "parallel:matrix",
                    "should be an array of hashes",
                ));
            };
            let mut rows = Vec::new();
            for entry in entries {
                let em = map(entry, job, "parallel:matrix")?;
                let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
                for (k, v) in em {
                    let values = match &v.value {
                        Value::Seq(_) => strings(v, job, "parallel:matrix")?,
                        _ => vec![string(v, job, "parallel:matrix")?],
                    };
                    combos = combos
                        .into_iter()
                        .flat_map(|c| {
                            values.iter().map(move |val| {
                                let mut c = c.clone();
                                c.push((k.clone(), val.clone()));
                                c
                            })
                        })
                        .collect();
                }
                rows.extend(combos);
            }
            if rows.len() > 200 {
                return Err(err(
                    matrix,
                    job,
                    "parallel:matrix",
                    "generates too many jobs (maximum is 200)",
                ));
            }
            Ok(ParallelSpec::Matrix(rows))
        }
        _ => Err(err(node, job, "parallel", "should be an integer or a hash")),
    }
}

/// A generic YAML value as JSON (for keywords kept as written: `release`, `trigger`, reports).
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Reference(p) => J::String(format!("!reference {p:?}")),
    }
}

/// "`context` config contains unknown keys: a, b" if `m` has keys outside `allowed`.
pub fn unknown(m: &Map, allowed: &[&str], context: &str, node: &Node) -> Result<(), Error> {
    let extra: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        let at = m.get(extra[0]).map_or(node.pos.clone(), |n| n.pos.clone());
        Err(Error::at(
            at,
            format!(
                "{context} config contains unknown keys: {}",
                extra.join(", ")
            ),
        ))
    }
}

/// Every `if:` of a `rules:` list must parse, whether or not it is reached (GitLab checks
/// them when it reads the configuration).
pub fn check_expressions(rules: &Node, context: &str) -> Result<(), Error> {
    if let Value::Seq(items) = &rules.value {
        for rule in items {
            if let Some(cond) = rule.as_map().and_then(|m| m.get("if")) {
                let text = cond.as_str().ok_or_else(|| {
                    Error::at(cond.pos.clone(), format!("{context} if should be a string"))
                })?;
                crate::expr::validate(text)
                    .map_err(|e| Error::at(cond.pos.clone(), format!("{context} if {e}")))?;
            }
        }
    }
    Ok(())
}

/// Which `default:` keywords and global variables a job inherits (`inherit:`).
/// `inherit:default` and `inherit:variables`: `None` = all, `Some(list)` = only these.
type Inherit = (Option<Vec<String>>, Option<Vec<String>>);

fn inherit(m: &Map, job: &str) -> Result<Inherit, Error> {
    // None = all; Some(list) = only these
    let Some(node) = m.get("inherit") else {
        return Ok((None, None));
    };
    let im = map(node, job, "inherit")?;
    unknown(
        im,
        &["default", "variables"],
        &format!("jobs:{job}:inherit"),
        node,
    )?;
    let one = |k: &str| -> Result<Option<Vec<String>>, Error> {
        match im.get(k) {
            None => Ok(None),
            Some(n) => match &n.value {
                Value::Bool(true) => Ok(None),
                Value::Bool(false) => Ok(Some(Vec::new())),
                _ => strings(n, job, &format!("inherit:{k}")).map(Some),
            },
        }
    };
    Ok((one("default")?, one("variables")?))
}

/// Seconds of a duration as GitLab's ChronicDuration reads `timeout` and `start_in`:
/// `3600`, `1h 30m`, `1h30m`, `90 minutes`, `2 days and 3 hours`, `1 week`. `None` if it is not
/// one.
pub fn duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let mut total: f64 = 0.0;
    let mut rest = text.as_str();
    let mut any = false;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if let Some(r) = rest.strip_prefix("and ") {
            rest = r;
            continue;
        }
        if rest.is_empty() {
            break;
        }
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "wk" | "wks" | "week" | "weeks" => 604_800.0,
            "mo" | "mos" | "month" | "months" => 2_592_000.0,
            "y" | "yr" | "yrs" | "year" | "years" => 31_536_000.0,
            _ => return None,
        };
        total += n * secs;
        any = true;
    }
    (any && (0.0..1e15).contains(&total)).then_some(total as u64)
}

/// Read job `name` from its hash, with defaults applied.
pub fn parse(name: &str, node: &Node, defaults: &Defaults<'_>) -> Result<JobDef, Error> {
    let own = node.as_map().ok_or_else(|| {
        Error::at(
            node.pos.clone(),
            format!("jobs:{name} config should be a hash"),
        )
    })?;
    unknown(own, JOB_KEYS, &format!("jobs:{name}"), node)?;
    if own.contains_key("rules") {
        let both: Vec<&str> = ["only", "except"]
            .into_iter()
            .filter(|k| own.contains_key(*k))
            .collect();
        if !both.is_empty() {
            return Err(Error::at(
                node.pos.clone(),
                format!(
                    "jobs:{name} config key may not be used with `rules`: {}",
                    both.join(", ")
                ),
            ));
        }
    }
    if !own.contains_key("script") && !own.contains_key("trigger") && !own.contains_key("run") {
        return Err(Error::at(
            node.pos.clone(),
            format!("jobs {name} config should implement the script:, run:, or trigger: keyword"),
        ));
    }
    if own.contains_key("run") {
        return Err(Error::at(
            own["run"].pos.clone(),
            format!("jobs:{name}:run (CI Steps) is not supported by ferry"),
        ));
    }
    if let Some(r) = own.get("rules") {
        check_expressions(r, &format!("jobs:{name}:rules:rule"))?;
    }
    for key in ["only", "except"] {
        if let Some(vars) = own
            .get(key)
            .and_then(Node::as_map)
            .and_then(|m| m.get("variables"))
            && let Value::Seq(items) = &vars.value
        {
            for item in items {
                if let Some(text) = item.as_str() {
                    crate::expr::validate(text).map_err(|e| {
                        Error::at(item.pos.clone(), format!("jobs:{name}:{key}:variables {e}"))
                    })?;
                }
            }
        }
    }
    let (inherit_default, inherit_vars) = inherit(own, name)?;
    // The job's own keyword, else the inherited default one.
    let get = |k: &str| -> Option<&Node> {
        own.get(k).or_else(|| {
            if !DEFAULT_KEYS.contains(&k) {
                return None;
            }
            match &inherit_default {
                Some(list) if !list.iter().any(|l| l == k) => None,
                _ => defaults.map.get(k),
            }
        })
    };
    let s = |k: &str| own.get(k).map(|n| string(n, name, k)).transpose();

    let stage = match own.get("stage").or_else(|| own.get("type")) {
        Some(n) => string(n, name, "stage")?,
        None => "test".into(),
    };
    let when = own
        .get("when")
        .map(|n| When::parse(n, &format!("jobs:{name}:when")))
        .transpose()?;
    if when == Some(When::Never) {
        // `never` belongs to rules (docs.gitlab.com/ci/yaml/#when)
        return Err(Error::at(
            own["when"].pos.clone(),
            format!(
                "jobs:{name} when should be one of: on_success, on_failure, always, manual, delayed"
            ),
        ));
    }
    let start_in = s("start_in")?;
    if let Some(text) = &start_in {
        // GitLab: a duration of at most one week
        match duration_seconds(text) {
            Some(secs) if secs <= 604_800 => {}
            Some(_) => {
                return Err(Error::at(
                    own["start_in"].pos.clone(),
                    format!("jobs:{name} start in should be less than or equal to 1 week"),
                ));
            }
            None => {
                return Err(Error::at(
                    own["start_in"].pos.clone(),
                    format!("jobs:{name} start in should be a duration"),
                ));
            }
        }
    }
    if when == Some(When::Delayed) && start_in.is_none() {
        return Err(Error::at(
            node.pos.clone(),
            format!("jobs:{name} start in should be a duration"),
        ));
    }
    let globals: Vec<Variable> = match &inherit_vars {
        None => defaults.global_variables.to_vec(),
        Some(list) => defaults
            .global_variables
            .iter()
            .filter(|v| list.contains(&v.key))
            .cloned()
            .collect(),
    };
    let own_vars = own
        .get("variables")
        .map(|n| variables(n, &format!("jobs:{name}:")))
        .transpose()?
        .unwrap_or_default();
    let hooks = match get("hooks") {
        None => Vec::new(),
        Some(h) => {
            let hm = map(h, name, "hooks")?;
            unknown(
                hm,
                &["pre_get_sources_script"],
                &format!("jobs:{name}:hooks"),
                h,
            )?;
            hm.iter()
                .map(|(k, v)| {
                    Ok(Hook {
                        name: k.clone(),
                        script: script(v, name, &format!("hooks:{k}"))?,
                    })
                })
                .collect::<Result<_, Error>>()?
        }
    };
    Ok(JobDef {
        name: name.to_string(),
        pos: node.pos.clone(),
        stage,
        when,
        start_in,
        allow_failure: own
            .get("allow_failure")
            .map(|n| allow_failure(n, name))
            .transpose()?,
        needs: own.get("needs").map(|n| needs(n, name)).transpose()?,
        dependencies: own
            .get("dependencies")
            .map(|n| strings(n, name, "dependencies"))
            .transpose()?,
        image: get("image")
            .filter(|n| !n.is_null())
            .map(|n| image(n, name))
            .transpose()?,
        services: get("services")
            .filter(|n| !n.is_null())
            .map(|n| services(n, name))
            .transpose()?
            .unwrap_or_default(),
        before_script: get("before_script")
            .map(|n| script(n, name, "before_script"))
            .transpose()?
            .unwrap_or_default(),
        script: own
            .get("script")
            .map(|n| script(n, name, "script"))
            .transpose()?
            .unwrap_or_default(),
        after_script: get("after_script")
            .map(|n| script(n, name, "after_script"))
            .transpose()?
            .unwrap_or_default(),
        variables: merge_variables(&globals, &own_vars),
        cache: get("cache")
            .map(|n| cache(n, name))
            .transpose()?
            .unwrap_or_default(),
        artifacts: get("artifacts")
            .filter(|n| !n.is_null())
            .map(|n| artifacts(n, name))
            .transpose()?,
        timeout: match get("timeout") {
            None => None,
            Some(n) => {
                let text = string(n, name, "timeout")?;
                let secs = duration_seconds(&text)
                    .ok_or_else(|| err(n, name, "timeout", "should be a duration"))?;
                Some((text, secs))
            }
        },
        retry: get("retry").map(|n| retry(n, name)).transpose()?,
        environment: own
            .get("environment")
            .map(|n| environment(n, name))
            .transpose()?,
        release: own.get("release").map(to_json),
        resource_group: s("resource_group")?,
        hooks,
        tags: get("tags")
            .map(|n| strings(n, name, "tags"))
            .transpose()?
            .unwrap_or_default(),
        interruptible: get("interruptible")
            .map(|n| boolean(n, name, "interruptible"))
            .transpose()?,
        coverage: s("coverage")?,
        trigger: own.get("trigger").map(to_json),
        parallel: own.get("parallel").map(|n| parallel(n, name)).transpose()?,
        rules: own.get("rules").cloned(),
        only: own.get("only").cloned(),
        except: own.get("except").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::duration_seconds;

    #[test]
    fn durations_as_chronic_duration_reads_them() {
        for (text, secs) in [
            ("3600", 3600),
            ("1h 30m", 5400),
            ("1h30m", 5400),
            ("90 minutes", 5400),
            ("2 days and 3 hours", 183_600),
            ("1 week", 604_800),
            ("30 minutes", 1800),
            ("1.5h", 5400),
            ("10 seconds", 10),
        ] {
            assert_eq!(duration_seconds(text), Some(secs), "{text}");
        }
        for bad in ["", "soon", "1 fortnight", "h", "-1h"] {
            assert_eq!(duration_seconds(bad), None, "{bad}");
        }
    }
}
