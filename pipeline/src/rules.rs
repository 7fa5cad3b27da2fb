//! Whether a job is in the pipeline: `rules` (`if`, `changes`, `exists`, `when`,
//! `allow_failure`, `variables`, `needs`, `start_in`) and `only`/`except` (`refs`, `variables`,
//! `changes`), as GitLab's `Seed::Build` decides.

use crate::expr::{self, Vars};
use crate::job::{self, AllowFailure, NeedSpec, Variable, When, unknown};
use crate::load::{MAX_EXISTS_FILES, Repo, glob};
use crate::yaml::{Node, Value};
use crate::{Error, Input, RefKind};

/// What the first matching rule says.
pub struct RuleMatch {
    pub when: Option<When>,
    pub allow_failure: Option<AllowFailure>,
    pub variables: Vec<Variable>,
    pub needs: Option<Vec<NeedSpec>>,
    pub start_in: Option<String>,
    /// Which rule matched, for the report (1-based index and where it is).
    pub rule: String,
}

pub enum Decision {
    Included(Option<RuleMatch>),
    Excluded(String),
}

/// Evaluation context of one job.
pub struct Ctx<'a> {
    pub vars: &'a Vars,
    pub input: &'a Input,
    pub repo: &'a Repo,
}

fn paths_of(node: &Node, what: &str) -> Result<Vec<String>, Error> {
    let list = match &node.value {
        Value::Seq(_) => node,
        Value::Map(m) => {
            unknown(m, &["paths", "compare_to", "project", "ref"], what, node)?;
            for k in ["compare_to", "project", "ref"] {
                if m.contains_key(k) {
                    return Err(Error::at(
                        m[k].pos.clone(),
                        format!("{what}:{k} is not supported by `ferry exec`"),
                    ));
                }
            }
            m.get("paths").ok_or_else(|| {
                Error::at(
                    node.pos.clone(),
                    format!("{what} config should contain paths"),
                )
            })?
        }
        _ => {
            return Err(Error::at(
                node.pos.clone(),
                format!("{what} config should be an array of strings or a hash"),
            ));
        }
    };
    let Value::Seq(items) = &list.value else {
        return Err(Error::at(
            list.pos.clone(),
            format!("{what} config should be an array of strings"),
        ));
    };
    items
        .iter()
        .map(|i| {
            i.as_str().map(str::to_string).ok_or_else(|| {
                Error::at(
                    i.pos.clone(),
                    format!("{what} config should be an array of strings"),
                )
            })
        })
        .collect()
}

fn any_glob_matches<'a>(
    patterns: &[String],
    vars: &Vars,
    files: impl Iterator<Item = &'a String> + Clone,
    what: &str,
    node: &Node,
) -> Result<bool, Error> {
    for p in patterns {
        let p = expr::expand_str(p, vars);
        let matcher = glob(&p)
            .ok_or_else(|| Error::at(node.pos.clone(), format!("{what}: invalid glob `{p}`")))?;
        if files.clone().any(|f| matcher.is_match(f.as_str())) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `exists:`: any listed glob matches a file of the repository (true past GitLab's
/// 10 000-file limit, as GitLab's is).
pub fn exists_match(node: &Node, vars: &Vars, repo: &Repo) -> Result<bool, Error> {
    let patterns = paths_of(node, "rules:exists")?;
    let files = repo.files();
    if files.len() > MAX_EXISTS_FILES {
        return Ok(true);
    }
    any_glob_matches(&patterns, vars, files.iter(), "rules:exists", node)
}

/// `changes:`: any changed path matches; always true when the caller gave no changed paths
/// (GitLab's answer for pipelines without a push diff: tags, schedules, new branches, …).
pub fn changes_match(
    node: &Node,
    vars: &Vars,
    changed: Option<&[String]>,
    what: &str,
) -> Result<bool, Error> {
    let patterns = paths_of(node, what)?;
    match changed {
        None => Ok(true),
        Some(paths) => any_glob_matches(&patterns, vars, paths.iter(), what, node),
    }
}

/// `rules:` of job `name`.
pub fn rules(node: &Node, name: &str, ctx: &Ctx<'_>) -> Result<Decision, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(Error::at(
            node.pos.clone(),
            format!("jobs:{name}:rules config should be an array of hashes"),
        ));
    };
    for (i, rule) in items.iter().enumerate() {
        let Some(m) = rule.as_map() else {
            return Err(Error::at(
                rule.pos.clone(),
                format!("jobs:{name}:rules:rule config should be a hash"),
            ));
        };
        unknown(
            m,
            &[
                "if",
                "changes",
                "exists",
                "when",
                "allow_failure",
                "variables",
                "needs",
                "start_in",
                "interruptible",
            ],
            &format!("jobs:{name}:rules:rule"),
            rule,
        )?;
        if !matches(m, name, ctx)? {
            continue;
        }
        let when = m
            .get("when")
            .map(|n| When::parse(n, &format!("jobs:{name}:rules:rule:when")))
            .transpose()?;
        let label = format!("rule {} ({})", i + 1, rule.pos);
        if when == Some(When::Never) {
            return Ok(Decision::Excluded(format!(
                "rules: {label} matched with `when: never`"
            )));
        }
        let start_in = m.get("start_in").and_then(Node::scalar_string);
        if when == Some(When::Delayed) {
            match start_in.as_deref().map(job::duration_seconds) {
                Some(Some(secs)) if secs <= 604_800 => {}
                Some(Some(_)) => {
                    return Err(Error::at(
                        rule.pos.clone(),
                        format!(
                            "jobs:{name}:rules:rule start in should be less than or equal to 1 week"
                        ),
                    ));
                }
                _ => {
                    return Err(Error::at(
                        rule.pos.clone(),
                        format!(
                            "jobs:{name}:rules:rule start in should be a duration (when: delayed needs start_in)"
                        ),
                    ));
                }
            }
        }
        let allow_failure = match m.get("allow_failure") {
            None => None,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => Some(AllowFailure {
                allowed: *b,
                exit_codes: Vec::new(),
            }),
            Some(n) => {
                return Err(Error::at(
                    n.pos.clone(),
                    format!(
                        "jobs:{name}:rules:rule:allow_failure config should be a boolean value"
                    ),
                ));
            }
        };
        return Ok(Decision::Included(Some(RuleMatch {
            when,
            allow_failure,
            variables: m
                .get("variables")
                .map(|n| job::variables(n, &format!("jobs:{name}:rules:rule:")))
                .transpose()?
                .unwrap_or_default(),
            needs: m.get("needs").map(|n| job::needs(n, name)).transpose()?,
            start_in,
            rule: label,
        })));
    }
    Ok(Decision::Excluded(if items.is_empty() {
        "rules: empty, no rule can match".into()
    } else {
        "rules: no rule matched".into()
    }))
}

fn matches(m: &crate::yaml::Map, name: &str, ctx: &Ctx<'_>) -> Result<bool, Error> {
    if let Some(cond) = m.get("if") {
        let text = cond.as_str().ok_or_else(|| {
            Error::at(
                cond.pos.clone(),
                format!("jobs:{name}:rules:rule if should be a string"),
            )
        })?;
        if !expr::evaluate(text, ctx.vars)
            .map_err(|e| Error::at(cond.pos.clone(), format!("jobs:{name}:rules:rule if {e}")))?
        {
            return Ok(false);
        }
    }
    if let Some(c) = m.get("changes")
        && !changes_match(
            c,
            ctx.vars,
            ctx.input.changed_paths.as_deref(),
            &format!("jobs:{name}:rules:rule:changes"),
        )?
    {
        return Ok(false);
    }
    if let Some(e) = m.get("exists")
        && !exists_match(e, ctx.vars, ctx.repo)?
    {
        return Ok(false);
    }
    Ok(true)
}

/// GitLab's source keyword for `only/except:refs` (`merge_request_event` → `merge_request`).
fn source_name(source: &str) -> &str {
    source.strip_suffix("_event").unwrap_or(source)
}

/// The plural forms `only:refs` accepts for sources (Rails' `pluralize` of the source name).
fn pluralize(name: &str) -> String {
    if name.ends_with("sh") || name.ends_with('s') {
        format!("{name}es")
    } else {
        format!("{name}s")
    }
}

fn ref_matches(pattern: &str, input: &Input) -> bool {
    let (pattern, path) = match pattern.split_once('@') {
        Some((p, path)) if !pattern.starts_with('/') || p.ends_with('/') => (p, Some(path)),
        _ => (pattern, None),
    };
    if let Some(path) = path
        && input.project_path.as_deref() != Some(path)
    {
        return false;
    }
    let merge_request = input.source == "merge_request_event";
    let is_tag = input.ref_kind == RefKind::Tag;
    let is_branch = !is_tag && !merge_request;
    if is_tag && pattern == "tags" || is_branch && pattern == "branches" {
        return true;
    }
    let source = source_name(&input.source);
    if source == pattern || pluralize(source) == pattern {
        return true;
    }
    if !(is_branch || is_tag) {
        return false;
    }
    if pattern.starts_with('/')
        && pattern.len() > 1
        && let Ok(re) = expr::pattern_regex(pattern)
    {
        return re.is_match(&input.ref_name);
    }
    pattern == input.ref_name
}

/// `only`/`except` of job `name`: `None` if the job is in, else why not.
pub fn only_except(
    only: Option<&Node>,
    except: Option<&Node>,
    name: &str,
    ctx: &Ctx<'_>,
) -> Result<Option<String>, Error> {
    let default_refs = ["branches".to_string(), "tags".to_string()];
    let (refs, variables, changes) = policy(only, name, "only")?;
    let refs = refs.unwrap_or_else(|| default_refs.to_vec());
    if !refs.iter().any(|r| ref_matches(r, ctx.input)) {
        return Ok(Some(format!(
            "only:refs [{}] matches neither ref `{}` ({}) nor source `{}`",
            refs.join(", "),
            ctx.input.ref_name,
            ctx.input.ref_kind.as_str(),
            ctx.input.source
        )));
    }
    if let Some(vars) = &variables
        && !any_expression(vars, name, "only", ctx)?
    {
        return Ok(Some("only:variables: no expression is true".into()));
    }
    if let Some(c) = &changes
        && !changes_match(
            c,
            ctx.vars,
            ctx.input.changed_paths.as_deref(),
            &format!("jobs:{name}:only:changes"),
        )?
    {
        return Ok(Some("only:changes: no changed path matches".into()));
    }
    let (refs, variables, changes) = policy(except, name, "except")?;
    if let Some(refs) = refs
        && let Some(r) = refs.iter().find(|r| ref_matches(r, ctx.input))
    {
        return Ok(Some(format!(
            "except:refs `{r}` matches ref `{}` ({}, source `{}`)",
            ctx.input.ref_name,
            ctx.input.ref_kind.as_str(),
            ctx.input.source
        )));
    }
    if let Some(vars) = &variables
        && any_expression(vars, name, "except", ctx)?
    {
        return Ok(Some("except:variables: an expression is true".into()));
    }
    if let Some(c) = &changes
        && changes_match(
            c,
            ctx.vars,
            ctx.input.changed_paths.as_deref(),
            &format!("jobs:{name}:except:changes"),
        )?
    {
        return Ok(Some("except:changes: a changed path matches".into()));
    }
    Ok(None)
}

type Policy = (Option<Vec<String>>, Option<Vec<String>>, Option<Node>);

fn policy(node: Option<&Node>, name: &str, key: &str) -> Result<Policy, Error> {
    let Some(node) = node else {
        return Ok((None, None, None));
    };
    let strings = |n: &Node, what: &str| -> Result<Vec<String>, Error> {
        match &n.value {
            Value::Seq(items) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        Error::at(
                            i.pos.clone(),
                            format!("jobs:{name}:{what} config should be an array of strings"),
                        )
                    })
                })
                .collect(),
            Value::Str(s) => Ok(vec![s.clone()]),
            _ => Err(Error::at(
                n.pos.clone(),
                format!("jobs:{name}:{what} config should be an array of strings"),
            )),
        }
    };
    match &node.value {
        Value::Seq(_) | Value::Str(_) => Ok((Some(strings(node, key)?), None, None)),
        Value::Map(m) => {
            unknown(
                m,
                &["refs", "variables", "changes", "kubernetes"],
                &format!("jobs:{name}:{key}"),
                node,
            )?;
            if m.contains_key("kubernetes") {
                return Err(Error::at(
                    m["kubernetes"].pos.clone(),
                    format!("jobs:{name}:{key}:kubernetes is not supported by `ferry exec`"),
                ));
            }
            Ok((
                m.get("refs")
                    .map(|n| strings(n, &format!("{key}:refs")))
                    .transpose()?,
                m.get("variables")
                    .map(|n| strings(n, &format!("{key}:variables")))
                    .transpose()?,
                m.get("changes").cloned(),
            ))
        }
        Value::Null => Ok((None, None, None)),
        _ => Err(Error::at(
            node.pos.clone(),
            format!("jobs:{name}:{key} config should be an array of strings or a hash"),
        )),
    }
}

fn any_expression(exprs: &[String], name: &str, key: &str, ctx: &Ctx<'_>) -> Result<bool, Error> {
    for e in exprs {
        if expr::evaluate(e, ctx.vars)
            .map_err(|err| Error::new(format!("jobs:{name}:{key}:variables {err}")))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}
