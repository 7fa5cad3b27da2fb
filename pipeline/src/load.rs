//! From files to one configuration hash, in GitLab's order (`Gitlab::Ci::Config#build_config`):
//! the YAML of `.gitlab-ci.yml`, its includes deep-merged under it, `extends` resolved, then
//! `!reference` tags replaced.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use globset::GlobBuilder;

use crate::Error;
use crate::expr::{self, Vars};
use crate::yaml::{self, Map, Node, Pos, Value};

/// GitLab's limit of included files per pipeline.
const MAX_INCLUDES: usize = 150;
/// `extends`: more ancestors than this is "nesting too deep" (`Extendable::Entry`).
const MAX_EXTENDS_ANCESTORS: usize = 10;
/// `!reference` to `!reference` … deeper than this is refused.
const MAX_REFERENCE_DEPTH: usize = 10;

/// The repository's files: read by relative path, never outside the root, never through a
/// symbolic link that leaves it.
pub struct Repo {
    root: PathBuf,
    files: OnceLock<Vec<String>>,
}

/// Largest configuration file read (GitLab's `MAX_YAML_SIZE`, 1 MiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Files `rules:exists` looks at, at most (GitLab's limit: past it, `exists` is true).
pub const MAX_EXISTS_FILES: usize = 10_000;

impl Repo {
    pub fn new(root: impl Into<PathBuf>) -> Repo {
        Repo {
            root: root.into(),
            files: OnceLock::new(),
        }
    }

    /// `path` (relative, `/` separated, leading `/` allowed) resolved inside the root.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.as_os_str().is_empty()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return None;
        }
        let root = self.root.canonicalize().ok()?;
        let full = root.join(rel).canonicalize().ok()?;
        full.starts_with(&root).then_some(full)
    }

    /// The text of a file, or `None` if it does not exist (or is not a file of the repository,
    /// or not UTF-8). Files over [`MAX_FILE_BYTES`] are refused, as GitLab refuses them.
    pub fn read(&self, path: &str) -> Option<Result<String, Error>> {
        let full = self.resolve(path)?;
        let meta = std::fs::metadata(&full).ok()?;
        if !meta.is_file() {
            return None;
        }
        if meta.len() > MAX_FILE_BYTES {
            return Some(Err(Error::new(format!(
                "{path}: The parsed YAML is too big (over {MAX_FILE_BYTES} bytes)"
            ))));
        }
        std::fs::read_to_string(full).ok().map(Ok)
    }

    /// Every file of the repository (relative paths, `.git` left out), sorted; links are
    /// listed, not followed.
    pub fn files(&self) -> &[String] {
        self.files.get_or_init(|| {
            let mut out = Vec::new();
            let mut dirs = vec![(self.root.clone(), String::new())];
            while let Some((dir, prefix)) = dirs.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if prefix.is_empty() && name == ".git" {
                        continue;
                    }
                    let rel = format!("{prefix}{name}");
                    match entry.file_type() {
                        Ok(t) if t.is_dir() => dirs.push((entry.path(), format!("{rel}/"))),
                        Ok(_) => out.push(rel),
                        Err(_) => {}
                    }
                }
                if out.len() > MAX_EXISTS_FILES {
                    break;
                }
            }
            out.sort();
            out
        })
    }
}

/// A glob as GitLab matches paths (`File.fnmatch` with `FNM_PATHNAME | FNM_DOTMATCH |
/// FNM_EXTGLOB`): `*` stays within a directory, `**/` crosses them, `{a,b}` alternates.
pub fn glob(pattern: &str) -> Option<globset::GlobMatcher> {
    GlobBuilder::new(pattern.trim_start_matches('/'))
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

/// `.gitlab-ci.yml` (or `main`) and its includes, merged; then `extends` and `!reference`.
/// `changed`: the pipeline's changed paths, for `include: rules: changes` (`None`: unknown).
/// An include only GitLab can read (`project`, `remote`, `template`, `component`) is an error
/// here: [`gitlab_request`] and [`load_merged`] are the way with a GitLab.
pub fn load(
    repo: &Repo,
    main: &str,
    vars: &Vars,
    changed: Option<&[String]>,
) -> Result<Map, Error> {
    let (config, _) = expand_local(repo, main, vars, changed, false)?;
    resolve(config)
}

/// The main file with its local includes merged beneath it, and (with `collect`) the includes
/// only GitLab can read, every occurrence in the order met, `rules` evaluated and dropped.
fn expand_local(
    repo: &Repo,
    main: &str,
    vars: &Vars,
    changed: Option<&[String]>,
    collect: bool,
) -> Result<(Map, Vec<Node>), Error> {
    let Some(text) = repo.read(main) else {
        return Err(Error::new(format!(
            "{main}: no such file in the repository"
        )));
    };
    let text = text?;
    if text.trim().is_empty() {
        return Err(Error::new(
            "Please provide content of .gitlab-ci.yml".into(),
        ));
    }
    let mut state = Includes {
        repo,
        vars,
        changed,
        seen: vec![main.to_string()],
        remote: collect.then(Vec::new),
    };
    let root = yaml::parse(&text, main)?;
    let config = state.expand(root, main)?;
    Ok((config, state.remote.unwrap_or_default()))
}

/// `extends`, then `!reference` tags.
fn resolve(mut config: Map) -> Result<Map, Error> {
    resolve_extends(&mut config)?;
    let snapshot = config.clone();
    let mut budget = yaml::MAX_NODES;
    for (_, node) in config.iter_mut() {
        resolve_references(node, &snapshot, 0, &mut budget)?;
    }
    Ok(config)
}

/// What to ask GitLab's CI lint API (`POST /projects/:id/ci/lint`, `content`) so that it
/// resolves the includes only it can read: the configuration with every local include
/// already merged in from the working tree, and the other includes left for GitLab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitLabRequest {
    /// The configuration to send.
    pub content: String,
    /// The includes GitLab is to resolve, as written (after `$VAR`s ferry knows), one a line.
    pub includes: Vec<String>,
}

/// `None` when the configuration has no include that needs GitLab.
pub fn gitlab_request(
    repo: &Repo,
    main: &str,
    vars: &Vars,
    changed: Option<&[String]>,
) -> Result<Option<GitLabRequest>, Error> {
    let (mut config, remote) = expand_local(repo, main, vars, changed, true)?;
    if remote.is_empty() {
        return Ok(None);
    }
    let includes = remote.iter().map(yaml::to_flow).collect();
    let pos = remote[0].pos.clone();
    // `include` first, as one would write it; the rest in the file's order.
    config.shift_insert(0, "include".into(), Node::new(Value::Seq(remote), pos));
    Ok(Some(GitLabRequest {
        content: yaml::map_to_yaml(&config),
        includes,
    }))
}

/// The name under which GitLab's merged YAML appears in positions (`file:line`) of what came
/// from a file GitLab read; what came from the working tree keeps its own file and line.
pub const MERGED_FILE: &str = "(merged by GitLab)";

/// The configuration from GitLab's `merged_yaml` (the answer to [`gitlab_request`]'s content):
/// its hash, the positions of the working tree's files put back where the hash still holds
/// their values, then `extends` and `!reference` resolved (a no-op for what GitLab resolved).
pub fn load_merged(
    repo: &Repo,
    main: &str,
    vars: &Vars,
    changed: Option<&[String]>,
    merged_yaml: &str,
) -> Result<Map, Error> {
    let (local, _) = expand_local(repo, main, vars, changed, true)?;
    // Psych writes a Symbol key plain (`:stages:`), a string that looks like one quoted: a
    // top-level line starting with `:` is a GitLab that answered its symbolized hash.
    if let Some((i, line)) = merged_yaml
        .lines()
        .enumerate()
        .find(|(_, l)| l.len() > 1 && l.starts_with(':') && !l.starts_with(": "))
    {
        let key = line
            .split(": ")
            .next()
            .unwrap_or(line)
            .trim_end_matches(':');
        return Err(Error::at(
            Pos {
                file: MERGED_FILE.into(),
                line: i + 1,
            },
            format!(
                "GitLab's merged YAML has Ruby symbol keys (`{key}`): this GitLab is too old \
                 for ferry exec --gitlab (its CI lint API must answer string keys)"
            ),
        ));
    }
    let root = yaml::parse(merged_yaml, MERGED_FILE)?;
    let kind = root.kind();
    let Value::Map(mut config) = root.value else {
        return Err(Error::at(
            root.pos,
            format!("GitLab's merged YAML is a {kind}, not a hash"),
        ));
    };
    for (key, node) in config.iter_mut() {
        if let Some(l) = local.get(key) {
            adopt_positions(node, l);
        }
    }
    resolve(config)
}

/// Where `merged` holds what `local` held, `local`'s file and line.
fn adopt_positions(merged: &mut Node, local: &Node) {
    merged.pos = local.pos.clone();
    match (&mut merged.value, &local.value) {
        (Value::Map(m), Value::Map(l)) => {
            for (k, v) in m.iter_mut() {
                if let Some(lv) = l.get(k) {
                    adopt_positions(v, lv);
                }
            }
        }
        (Value::Seq(m), Value::Seq(l)) if m.len() == l.len() => {
            for (v, lv) in m.iter_mut().zip(l) {
                adopt_positions(v, lv);
            }
        }
        _ => {}
    }
}

struct Includes<'a> {
    repo: &'a Repo,
    vars: &'a Vars,
    changed: Option<&'a [String]>,
    seen: Vec<String>,
    /// `Some`: includes only GitLab can read are gathered here instead of refused.
    remote: Option<Vec<Node>>,
}

/// One `include:` entry, read.
enum Entry {
    /// Files of this repository.
    Local(Vec<String>),
    /// For GitLab to read: the entry as it is to be sent.
    Remote(Node),
    /// Left out by its `rules`.
    Skipped,
}

impl Includes<'_> {
    /// One file's hash with its includes merged beneath it (`External::Processor`: each included
    /// file deep-merged in order, then the file's own content over them).
    fn expand(&mut self, root: Node, file: &str) -> Result<Map, Error> {
        let pos = root.pos.clone();
        let mut map = match root.value {
            Value::Map(m) => m,
            Value::Null => Map::new(),
            _ => {
                return Err(Error::at(
                    pos,
                    format!(
                        "{file}: the configuration must be a hash, not {}",
                        root.kind()
                    ),
                ));
            }
        };
        let Some(include) = map.shift_remove("include") else {
            return Ok(map);
        };
        let entries = match include.value {
            Value::Seq(items) => items,
            _ => vec![include],
        };
        let mut merged = Map::new();
        for entry in entries {
            let paths = match self.entry(&entry)? {
                Entry::Local(paths) => paths,
                Entry::Skipped => continue,
                Entry::Remote(node) => {
                    let Some(remote) = &mut self.remote else {
                        return Err(needs_gitlab(&node));
                    };
                    // Every occurrence, in order: GitLab merges a file again each time it is
                    // included (`External::Context#expandset` is a list), so in `[a, b, a]`
                    // `a` wins over `b`.
                    remote.push(node);
                    continue;
                }
            };
            for path in paths {
                // Merged again at each occurrence, as GitLab does; a cycle ends at the limit.
                self.seen.push(path.clone());
                if self.seen.len() > MAX_INCLUDES + 1 {
                    return Err(Error::at(
                        entry.pos.clone(),
                        format!("Maximum of {MAX_INCLUDES} nested includes are allowed!"),
                    ));
                }
                let text = self.repo.read(&path).ok_or_else(|| {
                    Error::at(
                        entry.pos.clone(),
                        format!("Local file `{path}` does not exist!"),
                    )
                })??;
                if text.trim().is_empty() {
                    return Err(Error::at(
                        entry.pos.clone(),
                        format!("Local file `{path}` is empty!"),
                    ));
                }
                let node = yaml::parse(&text, &path)?;
                let sub = self.expand(node, &path)?;
                deep_merge(&mut merged, sub);
            }
        }
        deep_merge(&mut merged, map);
        Ok(merged)
    }

    /// What one `include:` entry names: repository files, an include for GitLab, or nothing
    /// (its `rules` exclude it).
    fn entry(&self, entry: &Node) -> Result<Entry, Error> {
        let pos = entry.pos.clone();
        let local = match &entry.value {
            Value::Str(s) if s.starts_with("http://") || s.starts_with("https://") => {
                // A plain URL is include:remote.
                let url = expr::expand_known(s, self.vars);
                let mut m = Map::new();
                m.insert("remote".into(), Node::new(Value::Str(url), pos.clone()));
                return Ok(Entry::Remote(Node::new(Value::Map(m), pos)));
            }
            Value::Str(s) => s.clone(),
            Value::Map(m) => {
                if let Some(rules) = m.get("rules")
                    && !include_rules_match(rules, self.vars, self.repo, self.changed)?
                {
                    return Ok(Entry::Skipped);
                }
                if let Some(l) = m.get("local") {
                    l.as_str()
                        .ok_or_else(|| {
                            Error::at(l.pos.clone(), "include:local must be a string".into())
                        })?
                        .to_string()
                } else {
                    if let Some(v) = m.get("artifact") {
                        let what = v.scalar_string().unwrap_or_default();
                        return Err(Error::at(
                            pos,
                            format!(
                                "include:artifact `{what}` is not supported: it includes a job's \
                                 artifact in a child pipeline, and ferry runs no child pipeline"
                            ),
                        ));
                    }
                    if !GITLAB_KINDS.iter().any(|k| m.contains_key(*k)) {
                        return Err(Error::at(
                            pos,
                            "Include config must specify one of the keys: local, remote, template, project, component".into(),
                        ));
                    }
                    return Ok(Entry::Remote(self.for_gitlab(m, pos)));
                }
            }
            _ => {
                return Err(Error::at(
                    pos,
                    format!(
                        "include entries must be strings or hashes, not {}",
                        entry.kind()
                    ),
                ));
            }
        };
        let local = expr::expand_str(&local, self.vars);
        if local.contains('*') {
            // include:local: `dir/**.yml` means every .yml below dir (docs.gitlab.com/ci/yaml/#includelocal)
            let pattern = include_glob(&local);
            let matcher = glob(&pattern)
                .ok_or_else(|| Error::at(pos.clone(), format!("invalid include glob `{local}`")))?;
            let found: Vec<String> = self
                .repo
                .files()
                .iter()
                .filter(|f| {
                    matcher.is_match(f.as_str()) && (f.ends_with(".yml") || f.ends_with(".yaml"))
                })
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(Error::at(
                    pos,
                    format!("Local file `{local}` does not exist!"),
                ));
            }
            return Ok(Entry::Local(found));
        }
        if !(local.ends_with(".yml") || local.ends_with(".yaml")) {
            return Err(Error::at(
                pos,
                format!("Included file `{local}` does not have YAML extension!"),
            ));
        }
        Ok(Entry::Local(vec![
            local.trim_start_matches('/').to_string(),
        ]))
    }

    /// An include for GitLab as ferry sends it: its `rules` (already evaluated here, with the
    /// pipeline's variables) dropped, and the `$VAR`s ferry knows expanded in its location; the
    /// others are left for GitLab, which knows the project's CI/CD variables.
    fn for_gitlab(&self, m: &Map, pos: Pos) -> Node {
        let mut out = Map::new();
        for (k, v) in m {
            if k == "rules" {
                continue;
            }
            let v = if LOCATION_KEYS.contains(&k.as_str()) {
                expand_node(v, self.vars)
            } else {
                v.clone()
            };
            out.insert(k.clone(), v);
        }
        Node::new(Value::Map(out), pos)
    }
}

/// The kinds of include only GitLab can read.
const GITLAB_KINDS: &[&str] = &["remote", "template", "project", "component"];

/// Keys of an include that name what to read (GitLab expands variables in them).
const LOCATION_KEYS: &[&str] = &["remote", "template", "project", "file", "ref", "component"];

fn expand_node(node: &Node, vars: &Vars) -> Node {
    match &node.value {
        Value::Str(s) => {
            let expanded = expr::expand_known(s, vars);
            if expanded == *s {
                node.clone()
            } else {
                Node::new(Value::Str(expanded), node.pos.clone())
            }
        }
        Value::Seq(items) => Node::new(
            Value::Seq(items.iter().map(|i| expand_node(i, vars)).collect()),
            node.pos.clone(),
        ),
        _ => node.clone(),
    }
}

/// The refusal of an include GitLab would read, when no GitLab is at hand: names the include
/// and the way (docs/exec.md, "Includes from GitLab").
fn needs_gitlab(node: &Node) -> Error {
    let what = match node.as_map() {
        Some(m) => {
            let kind = GITLAB_KINDS
                .iter()
                .find(|k| m.contains_key(**k))
                .copied()
                .unwrap_or("remote");
            let name = m
                .get(kind)
                .map(|v| v.scalar_string().unwrap_or_else(|| yaml::to_flow(v)))
                .unwrap_or_default();
            match m.get("file") {
                Some(f) if kind == "project" => format!(
                    "include:project `{name}` (file {})",
                    f.scalar_string().unwrap_or_else(|| yaml::to_flow(f))
                ),
                _ => format!("include:{kind} `{name}`"),
            }
        }
        None => format!("include `{}`", yaml::to_flow(node)),
    };
    Error::at(
        node.pos.clone(),
        format!(
            "{what} needs GitLab: run `ferry exec --gitlab URL` with a token in \
             FERRY_GITLAB_TOKEN (without them only this repository's files can be included)"
        ),
    )
}

/// `**` that is not a whole path component (`configs/**.yml`) crosses directories in
/// include:local globs: rewritten as `**/*` for the matcher.
fn include_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut rest = pattern;
    while let Some(i) = rest.find("**") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        out.push_str("**");
        if !after.is_empty() && !after.starts_with('/') {
            out.push_str("/*");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `include: rules:` (`if`, `exists`, `changes`, `when: never`): whether the include applies.
fn include_rules_match(
    rules: &Node,
    vars: &Vars,
    repo: &Repo,
    changed: Option<&[String]>,
) -> Result<bool, Error> {
    let Value::Seq(items) = &rules.value else {
        return Err(Error::at(
            rules.pos.clone(),
            "include:rules must be an array".into(),
        ));
    };
    for rule in items {
        let Some(m) = rule.as_map() else {
            return Err(Error::at(
                rule.pos.clone(),
                "include:rules entries must be hashes".into(),
            ));
        };
        let mut ok = true;
        if let Some(cond) = m.get("if") {
            let text = cond
                .as_str()
                .ok_or_else(|| Error::at(cond.pos.clone(), "rules:if must be a string".into()))?;
            ok &= expr::evaluate(text, vars).map_err(|e| Error::at(cond.pos.clone(), e))?;
        }
        if let Some(exists) = m.get("exists") {
            ok &= crate::rules::exists_match(exists, vars, repo)?;
        }
        if let Some(changes) = m.get("changes") {
            ok &= crate::rules::changes_match(changes, vars, changed, "include:rules:changes")?;
        }
        if ok {
            let never = m.get("when").and_then(Node::as_str) == Some("never");
            return Ok(!never);
        }
    }
    Ok(false)
}

/// Ruby's `Hash#deep_merge!`: hashes merge key by key, anything else is replaced; a replaced
/// key keeps its place, a new one goes last.
pub fn deep_merge(base: &mut Map, over: Map) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (
                Some(Node {
                    value: Value::Map(b),
                    ..
                }),
                Node {
                    value: Value::Map(o),
                    ..
                },
            ) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `extends`, as `Config::Extendable` resolves it.
fn resolve_extends(config: &mut Map) -> Result<(), Error> {
    let keys: Vec<String> = config.keys().cloned().collect();
    for key in keys {
        extend(config, &key, &mut Vec::new())?;
    }
    Ok(())
}

fn extend(config: &mut Map, key: &str, ancestors: &mut Vec<String>) -> Result<(), Error> {
    // No memo: like GitLab, an entry is extended again under each job that reaches it, so the
    // depth and cycle checks see every chain (re-extending gives the same hash).
    let Some(node) = config.get(key) else {
        return Ok(());
    };
    let Some(extends) = node.as_map().and_then(|m| m.get("extends")) else {
        return Ok(());
    };
    let pos = extends.pos.clone();
    let bases: Vec<String> = match &extends.value {
        Value::Str(s) => vec![s.clone()],
        Value::Seq(items) if items.iter().all(|i| i.as_str().is_some()) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => {
            return Err(Error::at(
                pos,
                format!("jobs:{key}:extends config should be an array of strings or a string"),
            ));
        }
    };
    let unknown: Vec<&str> = bases
        .iter()
        .filter(|b| !config.contains_key(b.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::at(
            pos,
            format!("{key}: unknown keys in `extends` ({})", unknown.join(", ")),
        ));
    }
    let invalid: Vec<&str> = bases
        .iter()
        .filter(|b| config.get(b.as_str()).and_then(Node::as_map).is_none())
        .map(String::as_str)
        .collect();
    if !invalid.is_empty() {
        return Err(Error::at(
            pos,
            format!(
                "{key}: invalid base hashes in `extends` ({})",
                invalid.join(", ")
            ),
        ));
    }
    if ancestors.len() > MAX_EXTENDS_ANCESTORS {
        return Err(Error::at(
            pos,
            format!("{key}: nesting too deep in `extends`"),
        ));
    }
    if ancestors.iter().any(|a| a == key) {
        return Err(Error::at(
            pos,
            format!("{key}: circular dependency detected in `extends`"),
        ));
    }
    ancestors.push(key.to_string());
    let mut merged = Map::new();
    for base in &bases {
        extend(config, base, ancestors)?;
        if let Some(m) = config.get(base.as_str()).and_then(Node::as_map) {
            deep_merge(&mut merged, m.clone());
        }
    }
    ancestors.pop();
    let node = config.get_mut(key).expect("checked above");
    if let Value::Map(own) = &mut node.value {
        let own_map = std::mem::take(own);
        deep_merge(&mut merged, own_map);
        *own = merged;
    }
    Ok(())
}

/// Replace every `!reference [a, b, …]` under `node` by the value at that path of `root`.
/// `budget`: nodes the whole resolution may still visit (references of references multiply).
fn resolve_references(
    node: &mut Node,
    root: &Map,
    depth: usize,
    budget: &mut usize,
) -> Result<(), Error> {
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| Error::at(node.pos.clone(), "The parsed YAML is too big".into()))?;
    match &mut node.value {
        Value::Reference(path) => {
            let shown = format!(
                "!reference [{}]",
                path.iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if depth >= MAX_REFERENCE_DEPTH {
                return Err(Error::at(
                    node.pos.clone(),
                    format!(
                        "{shown}: too many nested references (at most {MAX_REFERENCE_DEPTH}), or a circular chain"
                    ),
                ));
            }
            let mut found: Option<&Node> = root.get(&path[0]);
            for part in &path[1..] {
                found = found.and_then(Node::as_map).and_then(|m| m.get(part));
            }
            let Some(found) = found else {
                return Err(Error::at(
                    node.pos.clone(),
                    format!("{shown} could not be found"),
                ));
            };
            let mut value = found.clone();
            resolve_references(&mut value, root, depth + 1, budget)?;
            node.value = value.value;
            node.raw = value.raw;
        }
        Value::Seq(items) => {
            for item in items {
                resolve_references(item, root, depth, budget)?;
            }
        }
        Value::Map(m) => {
            for (_, v) in m.iter_mut() {
                resolve_references(v, root, depth, budget)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_never_left() {
        let base = std::env::temp_dir().join(format!("ferry-pipeline-repo-{}", std::process::id()));
        let repo_dir = base.join("repo");
        std::fs::create_dir_all(repo_dir.join("ci")).unwrap();
        std::fs::write(base.join("secret.yml"), "x: 1\n").unwrap();
        std::fs::write(repo_dir.join("ci/ok.yml"), "y: 1\n").unwrap();
        std::os::unix::fs::symlink(base.join("secret.yml"), repo_dir.join("ci/link.yml")).unwrap();
        std::os::unix::fs::symlink(&base, repo_dir.join("up")).unwrap();
        let repo = Repo::new(&repo_dir);
        assert!(repo.read("ci/ok.yml").is_some());
        assert!(repo.read("/ci/ok.yml").is_some());
        assert!(repo.read("../secret.yml").is_none());
        assert!(repo.read("ci/../../secret.yml").is_none());
        assert!(
            repo.read("ci/link.yml").is_none(),
            "a link out of the repository"
        );
        assert!(
            repo.read("up/secret.yml").is_none(),
            "a directory link out of it"
        );
        // links are listed, not followed
        let files = repo.files();
        assert!(files.contains(&"ci/ok.yml".to_string()));
        assert!(!files.iter().any(|f| f.contains("secret")), "{files:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn globs_match_as_gitlab_fnmatch() {
        let m = glob("docs/**/*.md").unwrap();
        assert!(m.is_match("docs/a.md"));
        assert!(m.is_match("docs/x/y/a.md"));
        assert!(!m.is_match("src/a.md"));
        let star = glob("*.md").unwrap();
        assert!(star.is_match("README.md"));
        assert!(star.is_match(".hidden.md"));
        assert!(!star.is_match("docs/a.md"), "* stays in one directory");
        assert!(
            glob("{README,CHANGELOG}.md")
                .unwrap()
                .is_match("CHANGELOG.md")
        );
    }
}
