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
pub fn load(
    repo: &Repo,
    main: &str,
    vars: &Vars,
    changed: Option<&[String]>,
) -> Result<Map, Error> {
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
    };
    let root = yaml::parse(&text, main)?;
    let mut config = state.expand(root, main)?;
    resolve_extends(&mut config)?;
    let snapshot = config.clone();
    let mut budget = yaml::MAX_NODES;
    for (_, node) in config.iter_mut() {
        resolve_references(node, &snapshot, 0, &mut budget)?;
    }
    Ok(config)
}

struct Includes<'a> {
    repo: &'a Repo,
    vars: &'a Vars,
    changed: Option<&'a [String]>,
    seen: Vec<String>,
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
            for path in self.local_paths(&entry)? {
                if self.seen.contains(&path) {
                    continue;
                }
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

    /// The repository files one `include:` entry names (none if its `rules` exclude it).
    fn local_paths(&self, entry: &Node) -> Result<Vec<String>, Error> {
        let pos = entry.pos.clone();
        let local = match &entry.value {
            Value::Str(s) if s.starts_with("http://") || s.starts_with("https://") => {
                return Err(unsupported_include(pos, "remote", s));
            }
            Value::Str(s) => s.clone(),
            Value::Map(m) => {
                if let Some(rules) = m.get("rules")
                    && !include_rules_match(rules, self.vars, self.repo, self.changed)?
                {
                    return Ok(Vec::new());
                }
                if let Some(l) = m.get("local") {
                    l.as_str()
                        .ok_or_else(|| {
                            Error::at(l.pos.clone(), "include:local must be a string".into())
                        })?
                        .to_string()
                } else {
                    for kind in ["remote", "template", "project", "component", "artifact"] {
                        if let Some(v) = m.get(kind) {
                            let what = v.scalar_string().unwrap_or_default();
                            return Err(unsupported_include(pos, kind, &what));
                        }
                    }
                    return Err(Error::at(
                        pos,
                        "Include config must specify one of the keys: local, remote, template, project, component".into(),
                    ));
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
            return Ok(found);
        }
        if !(local.ends_with(".yml") || local.ends_with(".yaml")) {
            return Err(Error::at(
                pos,
                format!("Included file `{local}` does not have YAML extension!"),
            ));
        }
        Ok(vec![local.trim_start_matches('/').to_string()])
    }
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

fn unsupported_include(pos: Pos, kind: &str, what: &str) -> Error {
    Error::at(
        pos,
        format!(
            "include:{kind} `{what}` is not supported: only files of this repository \
             (include:local and plain paths) can be included"
        ),
    )
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
