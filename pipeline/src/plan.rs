//! The pipeline: root keywords, workflow rules, jobs expanded by `parallel`, GitLab's logical
//! validations (`YamlProcessor`), then each job in or out (`Seed::Build`).

use std::collections::{HashMap, HashSet};

use crate::expr::Vars;
use crate::job::{self, Defaults, JobDef, Need, NeedSpec, Parallel, ParallelSpec, Variable, When};
use crate::load::{self, Repo};
use crate::rules::{self, Ctx, Decision};
use crate::yaml::{Map, Node, Value};
use crate::{AllowFailure, Error, Excluded, Input, Job, Pipeline, RefKind};

/// Top-level keywords that are not jobs.
const ROOT_KEYS: &[&str] = &[
    "image",
    "services",
    "stages",
    "types",
    "before_script",
    "after_script",
    "variables",
    "cache",
    "include",
    "default",
    "workflow",
];

/// Legacy top-level keywords that act as `default:` ones.
const LEGACY_DEFAULTS: &[&str] = &[
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
];

/// One job after `parallel` expansion.
struct Instance<'a> {
    def: &'a JobDef,
    name: String,
    parallel: Option<Parallel>,
    matrix: Vec<(String, String)>,
    /// The job's `needs:`, with a matrix instance's `$[[ matrix.NAME ]]` replaced.
    needs: Option<Vec<NeedSpec>>,
}

fn pipeline_vars(input: &Input) -> Vars {
    let mut v = input.predefined.clone();
    let mut add = |k: &str, val: &str| {
        if !v.contains_key(k) {
            v.insert(k.to_string(), val.to_string());
        }
    };
    add("CI_COMMIT_REF_NAME", &input.ref_name);
    match input.ref_kind {
        RefKind::Tag => add("CI_COMMIT_TAG", &input.ref_name),
        RefKind::Branch if input.source != "merge_request_event" => {
            add("CI_COMMIT_BRANCH", &input.ref_name)
        }
        RefKind::Branch => {}
    }
    add("CI_PIPELINE_SOURCE", &input.source);
    if let Some(p) = &input.project_path {
        add("CI_PROJECT_PATH", p);
    }
    v
}

/// predefined < YAML < the caller's variables.
fn layered(predefined: &Vars, yaml: &[Variable], user: &Vars) -> Vars {
    let mut v = predefined.clone();
    for var in yaml {
        v.insert(var.key.clone(), var.value.clone());
    }
    for (k, val) in user {
        v.insert(k.clone(), val.clone());
    }
    v
}

fn stages(config: &Map) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = match config.get("stages").or_else(|| config.get("types")) {
        None => vec!["build".into(), "test".into(), "deploy".into()],
        Some(node) => {
            let Value::Seq(items) = &node.value else {
                return Err(Error::at(
                    node.pos.clone(),
                    "stages config should be an array of strings".into(),
                ));
            };
            let mut out = Vec::new();
            for item in items {
                let s = item.as_str().ok_or_else(|| {
                    Error::at(
                        item.pos.clone(),
                        "stages config should be an array of strings".into(),
                    )
                })?;
                out.push(s.to_string());
            }
            out
        }
    };
    // EdgeStagesInjector: `.pre` always first, `.post` always last
    out.retain(|s| s != ".pre" && s != ".post");
    out.insert(0, ".pre".into());
    out.push(".post".into());
    Ok(out)
}

/// The variables `include` paths are expanded with.
fn include_vars(input: &Input) -> Vars {
    layered(&pipeline_vars(input), &[], &input.variables)
}

fn main_file(input: &Input) -> &str {
    input.config_path.as_deref().unwrap_or(".gitlab-ci.yml")
}

/// What to send GitLab for the includes only it can read (`None`: there are none).
pub fn gitlab_request(repo: &Repo, input: &Input) -> Result<Option<load::GitLabRequest>, Error> {
    let vars = include_vars(input);
    load::gitlab_request(
        repo,
        main_file(input),
        &vars,
        input.changed_paths.as_deref(),
    )
}

/// `merged_yaml`: GitLab's answer to [`gitlab_request`]'s content; `None`: the repository's
/// files alone.
pub fn plan(repo: &Repo, input: &Input, merged_yaml: Option<&str>) -> Result<Pipeline, Error> {
    let predefined = pipeline_vars(input);
    let include_vars = include_vars(input);
    let main = main_file(input);
    let changed = input.changed_paths.as_deref();
    let config = match merged_yaml {
        None => load::load(repo, main, &include_vars, changed)?,
        Some(text) => load::load_merged(repo, main, &include_vars, changed, text)?,
    };

    if config.contains_key("spec") {
        return Err(Error::at(
            config["spec"].pos.clone(),
            "spec: (a header of inputs) is not supported by `ferry exec`".into(),
        ));
    }
    let stages = stages(&config)?;
    let mut global_vars = config
        .get("variables")
        .map(|n| job::variables(n, ""))
        .transpose()?
        .unwrap_or_default();

    // default: and the legacy top-level keywords
    let mut default_map = Map::new();
    if let Some(d) = config.get("default") {
        let m = d
            .as_map()
            .ok_or_else(|| Error::at(d.pos.clone(), "default config should be a hash".into()))?;
        job::unknown(m, job::DEFAULT_KEYS, "default", d)?;
        default_map = m.clone();
    }
    for key in LEGACY_DEFAULTS {
        if let Some(v) = config.get(*key)
            && !default_map.contains_key(*key)
        {
            default_map.insert(key.to_string(), v.clone());
        }
    }

    // workflow:rules
    if let Some(w) = config.get("workflow") {
        let m = w
            .as_map()
            .ok_or_else(|| Error::at(w.pos.clone(), "workflow config should be a hash".into()))?;
        job::unknown(m, &["rules", "name", "auto_cancel"], "workflow", w)?;
        if let Some(r) = m.get("rules") {
            job::check_expressions(r, "workflow:rules:rule")?;
            let vars = layered(&predefined, &global_vars, &input.variables);
            let ctx = Ctx {
                vars: &vars,
                input,
                repo,
            };
            match workflow_rules(r, &ctx)? {
                None => {
                    return Ok(Pipeline {
                        not_created: Some("Pipeline filtered out by workflow rules.".into()),
                        stages,
                        jobs: Vec::new(),
                        excluded: Vec::new(),
                    });
                }
                Some(vars) => global_vars = job::merge_variables(&global_vars, &vars),
            }
        }
    }

    // jobs, as GitLab's config entries read them
    let defaults = Defaults {
        map: default_map,
        global_variables: &global_vars,
    };
    let mut defs = Vec::new();
    for (name, node) in &config {
        if ROOT_KEYS.contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        if node.as_map().is_none() {
            return Err(Error::at(
                node.pos.clone(),
                format!("root config contains unknown keys: {name}"),
            ));
        }
        defs.push(job::parse(name, node, &defaults)?);
    }
    if defs.is_empty() {
        return Err(Error::new(
            "jobs config should contain at least one visible job".into(),
        ));
    }

    // parallel expansion (Config::Normalizer)
    let mut instances = Vec::new();
    let mut expanded: HashMap<&str, Vec<String>> = HashMap::new();
    for def in &defs {
        match &def.parallel {
            None => instances.push(Instance {
                def,
                name: def.name.clone(),
                parallel: None,
                matrix: Vec::new(),
                needs: def.needs.clone(),
            }),
            Some(ParallelSpec::Count(n)) => {
                for i in 1..=*n {
                    let name = format!("{} {i}/{n}", def.name);
                    expanded.entry(&def.name).or_default().push(name.clone());
                    instances.push(Instance {
                        def,
                        name,
                        parallel: Some(Parallel {
                            index: i,
                            total: *n,
                        }),
                        matrix: Vec::new(),
                        needs: def.needs.clone(),
                    });
                }
            }
            Some(ParallelSpec::Matrix(rows)) => {
                for (i, row) in rows.iter().enumerate() {
                    let name = matrix_name(&def.name, row);
                    expanded.entry(&def.name).or_default().push(name.clone());
                    let needs = match &def.needs {
                        Some(needs) => Some(matrix_needs(needs, row).map_err(|var| {
                            Error::at(
                                def.pos.clone(),
                                format!(
                                    "{} job: '{var}' does not exist in matrix configuration",
                                    def.name
                                ),
                            )
                        })?),
                        None => None,
                    };
                    instances.push(Instance {
                        def,
                        name,
                        parallel: Some(Parallel {
                            index: i + 1,
                            total: rows.len(),
                        }),
                        matrix: row.clone(),
                        needs,
                    });
                }
            }
        }
    }
    let by_name: HashMap<&str, &Instance<'_>> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    let expand_needs = |needs: &[NeedSpec]| expand_needs(needs, &expanded);
    let stage_idx = |name: &str| -> Option<usize> {
        by_name
            .get(name)
            .and_then(|i| stages.iter().position(|s| *s == i.def.stage))
    };

    // logical validations (YamlProcessor#validate_job!)
    let mut dag: Vec<(String, Vec<String>)> = Vec::new();
    for inst in &instances {
        let name = &inst.name;
        let Some(own_idx) = stages.iter().position(|s| *s == inst.def.stage) else {
            return Err(Error::at(
                inst.def.pos.clone(),
                format!(
                    "{name} job: chosen stage {} does not exist; available stages are {}",
                    inst.def.stage,
                    stages.join(", ")
                ),
            ));
        };
        let check = |dep: &str, kind: &str, optional: bool, pos| -> Result<(), Error> {
            if !by_name.contains_key(dep) {
                if optional {
                    return Ok(());
                }
                return Err(Error::at(
                    pos,
                    format!("{name} job: undefined {kind}: {dep}"),
                ));
            }
            match stage_idx(dep) {
                Some(i) if i <= own_idx => Ok(()),
                _ => Err(Error::at(
                    pos,
                    format!("{name} job: {kind} {dep} is not defined in current or prior stages"),
                )),
            }
        };
        for dep in inst.def.dependencies.iter().flatten() {
            for d in expanded
                .get(dep.as_str())
                .cloned()
                .unwrap_or_else(|| vec![dep.clone()])
            {
                check(&d, "dependency", false, inst.def.pos.clone())?;
            }
        }
        let mut need_lists: Vec<&Vec<NeedSpec>> = inst.needs.iter().collect();
        let rule_needs: Vec<Vec<NeedSpec>> = rule_needs(inst.def)?;
        need_lists.extend(rule_needs.iter());
        for list in need_lists {
            let needs = expand_needs(list);
            let mut seen = HashSet::new();
            let mut dups = Vec::new();
            for (need, spec) in &needs {
                check(&need.job, "need", need.optional, spec.pos.clone())?;
                if !seen.insert(need.job.clone()) && !dups.contains(&need.job) {
                    dups.push(need.job.clone());
                }
            }
            if !dups.is_empty() {
                return Err(Error::at(
                    inst.def.pos.clone(),
                    format!(
                        "{name} has the following needs duplicated: {}.",
                        dups.join(", ")
                    ),
                ));
            }
        }
        if let Some(env) = &inst.def.environment
            && let Some(on_stop) = &env.on_stop
        {
            // YamlProcessor#validate_on_stop_job!
            let problem = match by_name.get(on_stop.as_str()).map(|i| &i.def.environment) {
                None => Some("is not defined"),
                Some(None) => Some("does not have environment defined"),
                Some(Some(other)) if other.name != env.name => {
                    Some("have different environment name")
                }
                Some(Some(other)) if other.action.as_deref() != Some("stop") => {
                    Some("needs to have action stop defined")
                }
                Some(Some(_)) => None,
            };
            if let Some(problem) = problem {
                return Err(Error::at(
                    inst.def.pos.clone(),
                    format!("{name} job: on_stop job {on_stop} {problem}"),
                ));
            }
        }
        if let Some(needs) = &inst.needs {
            dag.push((
                name.clone(),
                expand_needs(needs)
                    .into_iter()
                    .map(|(n, _)| n.job)
                    .collect(),
            ));
        }
    }
    if let Err(first) = check_cycles(&dag) {
        let message = "The pipeline has circular dependencies".to_string();
        return Err(match by_name.get(first.as_str()) {
            Some(i) => Error::at(i.def.pos.clone(), message),
            None => Error::new(message),
        });
    }

    // seeding: each job in or out
    let mut jobs = Vec::new();
    let mut excluded = Vec::new();
    for inst in &instances {
        let def = inst.def;
        let mut yaml_vars = def.variables.clone();
        let matrix_vars: Vec<Variable> = inst
            .matrix
            .iter()
            .map(|(k, v)| Variable {
                key: k.clone(),
                value: v.clone(),
                raw: false,
            })
            .collect();
        yaml_vars = job::merge_variables(&yaml_vars, &matrix_vars);
        // the job's own predefined variables rules may read
        let mut job_predefined = predefined.clone();
        job_predefined.insert("CI_JOB_NAME".into(), inst.name.clone());
        job_predefined.insert("CI_JOB_STAGE".into(), def.stage.clone());
        if let Some(p) = inst.parallel {
            job_predefined.insert("CI_NODE_INDEX".into(), p.index.to_string());
            job_predefined.insert("CI_NODE_TOTAL".into(), p.total.to_string());
        }
        let vars = layered(&job_predefined, &yaml_vars, &input.variables);
        let ctx = Ctx {
            vars: &vars,
            input,
            repo,
        };
        let decision = match &def.rules {
            Some(r) => rules::rules(r, &inst.name, &ctx)?,
            None => {
                match rules::only_except(def.only.as_ref(), def.except.as_ref(), &inst.name, &ctx)?
                {
                    Some(reason) => Decision::Excluded(reason),
                    None => Decision::Included(None),
                }
            }
        };
        let matched = match decision {
            Decision::Excluded(reason) => {
                excluded.push(Excluded {
                    name: inst.name.clone(),
                    reason,
                });
                continue;
            }
            Decision::Included(m) => m,
        };
        let when = matched
            .as_ref()
            .and_then(|m| m.when)
            .or(def.when)
            .unwrap_or(When::OnSuccess);
        if when == When::Never {
            excluded.push(Excluded {
                name: inst.name.clone(),
                reason: "when: never".into(),
            });
            continue;
        }
        // A rule's allow_failure, else the job's; else a job whose own `when` is manual may
        // fail (GitLab's `Job#ignored?`), one made manual by a rule may not.
        let allow_failure = matched
            .as_ref()
            .and_then(|m| m.allow_failure.clone())
            .or_else(|| def.allow_failure.clone())
            .unwrap_or(AllowFailure {
                allowed: def.when == Some(When::Manual),
                exit_codes: Vec::new(),
            });
        let start_in = matched
            .as_ref()
            .and_then(|m| m.start_in.clone())
            .or_else(|| def.start_in.clone());
        if let Some(m) = &matched {
            yaml_vars = job::merge_variables(&yaml_vars, &m.variables);
        }
        let needs_spec = matched
            .as_ref()
            .and_then(|m| m.needs.clone())
            .or_else(|| inst.needs.clone());
        let needs = needs_spec.map(|n| {
            expand_needs(&n)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        });
        let dependencies = def.dependencies.as_ref().map(|deps| {
            deps.iter()
                .flat_map(|d| {
                    expanded
                        .get(d.as_str())
                        .cloned()
                        .unwrap_or_else(|| vec![d.clone()])
                })
                .collect::<Vec<_>>()
        });
        jobs.push(Job {
            name: inst.name.clone(),
            stage: def.stage.clone(),
            stage_idx: stages.iter().position(|s| *s == def.stage).unwrap_or(0),
            when,
            start_in: if when == When::Delayed {
                start_in
            } else {
                None
            },
            allow_failure,
            needs,
            dependencies,
            image: def.image.clone(),
            services: def.services.clone(),
            before_script: def.before_script.clone(),
            script: def.script.clone(),
            after_script: def.after_script.clone(),
            variables: yaml_vars,
            cache: def.cache.clone(),
            artifacts: def.artifacts.clone(),
            timeout: def.timeout.as_ref().map(|(text, _)| text.clone()),
            timeout_seconds: def.timeout.as_ref().map(|(_, secs)| *secs),
            retry: def.retry.clone(),
            environment: def.environment.clone(),
            release: def.release.clone(),
            resource_group: def.resource_group.clone(),
            hooks: def.hooks.clone(),
            parallel: inst.parallel,
            tags: def.tags.clone(),
            interruptible: def.interruptible,
            coverage: def.coverage.clone(),
            trigger: def.trigger.clone(),
            rule: matched.map(|m| m.rule),
            defined_at: def.pos.to_string(),
        });
    }

    // needs on jobs that are not in the pipeline (Seed::Build#needs_errors)
    let present: HashSet<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let pos_of = |name: &str| by_name.get(name).map(|i| i.def.pos.clone());
    for job in &mut jobs {
        if let Some(needs) = &mut job.needs {
            for need in needs.iter() {
                if !need.optional && !present.contains(&need.job) {
                    let message = format!(
                        "'{}' job needs '{}' job, but '{}' does not exist in the pipeline. \
                         This might be because of the only, except, or rules keywords. \
                         To need a job that sometimes does not exist in the pipeline, use needs:optional.",
                        job.name, need.job, need.job
                    );
                    return Err(match pos_of(&job.name) {
                        Some(pos) => Error::at(pos, message),
                        None => Error::new(message),
                    });
                }
            }
            needs.retain(|n| present.contains(&n.job));
        }
        if let Some(deps) = &mut job.dependencies {
            deps.retain(|d| present.contains(d));
        }
    }

    jobs.sort_by_key(|j| j.stage_idx);
    if jobs.iter().all(|j| j.stage == ".pre" || j.stage == ".post") {
        return Ok(Pipeline {
            not_created: Some(
                "Pipeline will not run for the selected trigger. The rules configuration \
                 prevented any jobs from being added to the pipeline."
                    .into(),
            ),
            stages,
            jobs: Vec::new(),
            excluded,
        });
    }
    Ok(Pipeline {
        not_created: None,
        stages,
        jobs,
        excluded,
    })
}

/// `needs:` with names of `parallel` jobs replaced by their instances' (`Config::Normalizer`):
/// all of them, or with `parallel: matrix:` the ones its rows name (`job: [v1, v2]`, the
/// values in the need's order: another order names no job). As GitLab's normalizer, a need's
/// matrix on a job that is not `parallel` is ignored: the need is that job.
fn expand_needs(
    needs: &[NeedSpec],
    expanded: &HashMap<&str, Vec<String>>,
) -> Vec<(Need, NeedSpec)> {
    let mut out = Vec::new();
    for n in needs {
        let names = match (expanded.get(n.job.as_str()), &n.matrix) {
            (Some(_), Some(rows)) => rows.iter().map(|r| matrix_name(&n.job, r)).collect(),
            (Some(all), None) => all.clone(),
            (None, _) => vec![n.job.clone()],
        };
        for name in names {
            out.push((
                Need {
                    job: name,
                    artifacts: n.artifacts,
                    optional: n.optional,
                },
                n.clone(),
            ));
        }
    }
    out
}

/// Matrix expressions in a matrix instance's `needs:` (GitLab's `MatrixInterpolator`): each
/// `$[[ matrix.NAME ]]` in a need's job name or matrix values becomes the instance's value of
/// `NAME`; `Err(NAME)` for a name the instance has not.
fn matrix_needs(needs: &[NeedSpec], row: &[(String, String)]) -> Result<Vec<NeedSpec>, String> {
    static EXPR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\$\[\[\s*matrix\.([a-zA-Z0-9_-]+)\s*\]\]")
            .expect("a valid regular expression")
    });
    let expr = &*EXPR;
    let fill = |text: &str| -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in expr.captures_iter(text) {
            let (whole, name) = (m.get(0).expect("match"), &m[1]);
            let value = row
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| name.to_string())?;
            out.push_str(&text[last..whole.start()]);
            out.push_str(value);
            last = whole.end();
        }
        out.push_str(&text[last..]);
        Ok(out)
    };
    needs
        .iter()
        .map(|n| {
            let matrix = match &n.matrix {
                Some(rows) => Some(
                    rows.iter()
                        .map(|r| {
                            r.iter()
                                .map(|(k, v)| Ok((k.clone(), fill(v)?)))
                                .collect::<Result<Vec<_>, String>>()
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                ),
                None => None,
            };
            Ok(NeedSpec {
                job: fill(&n.job)?,
                matrix,
                ..n.clone()
            })
        })
        .collect()
}

/// `job: [a, b]`, GitLab's name of a `parallel:matrix` instance.
fn matrix_name(base: &str, row: &[(String, String)]) -> String {
    let values: Vec<&str> = row.iter().map(|(_, v)| v.as_str()).collect();
    format!("{base}: [{}]", values.join(", "))
}

/// The `needs:` of each rule of a job (validated like the job's own).
fn rule_needs(def: &JobDef) -> Result<Vec<Vec<NeedSpec>>, Error> {
    let Some(Node {
        value: Value::Seq(items),
        ..
    }) = &def.rules
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for rule in items {
        if let Some(n) = rule.as_map().and_then(|m| m.get("needs")) {
            out.push(job::needs(n, &def.name)?);
        }
    }
    Ok(out)
}

/// `workflow:rules`: `None` if the pipeline is not created, else the matched rule's variables.
fn workflow_rules(node: &Node, ctx: &Ctx<'_>) -> Result<Option<Vec<Variable>>, Error> {
    let Value::Seq(items) = &node.value else {
        return Err(Error::at(
            node.pos.clone(),
            "workflow:rules config should be an array of hashes".into(),
        ));
    };
    for rule in items {
        let Some(m) = rule.as_map() else {
            return Err(Error::at(
                rule.pos.clone(),
                "workflow:rules:rule config should be a hash".into(),
            ));
        };
        job::unknown(
            m,
            &[
                "if",
                "changes",
                "exists",
                "when",
                "variables",
                "auto_cancel",
            ],
            "workflow:rules:rule",
            rule,
        )?;
        // evaluate like a job rule without its job keys
        let mut probe = m.clone();
        probe.shift_remove("auto_cancel");
        probe.shift_remove("variables");
        let when = probe.shift_remove("when");
        let single = Node::new(
            Value::Seq(vec![Node::new(Value::Map(probe), rule.pos.clone())]),
            rule.pos.clone(),
        );
        if let Decision::Included(_) = rules::rules(&single, "workflow", ctx)? {
            if let Some(w) = &when {
                match w.as_str() {
                    Some("never") => return Ok(None),
                    Some("always") => {}
                    _ => {
                        return Err(Error::at(
                            w.pos.clone(),
                            "workflow:rules:rule when should be one of: always, never".into(),
                        ));
                    }
                }
            }
            let vars = m
                .get("variables")
                .map(|n| job::variables(n, "workflow:rules:rule:"))
                .transpose()?
                .unwrap_or_default();
            return Ok(Some(vars));
        }
    }
    Ok(None)
}

/// `needs` forming a cycle (GitLab's `Dag.check_circular_dependencies!`): `Err(a job on it)`.
fn check_cycles(dag: &[(String, Vec<String>)]) -> Result<(), String> {
    let edges: HashMap<&str, &Vec<String>> = dag.iter().map(|(k, v)| (k.as_str(), v)).collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a str,
        edges: &HashMap<&'a str, &'a Vec<String>>,
        state: &mut HashMap<&'a str, u8>,
    ) -> bool {
        match state.get(n) {
            Some(1) => return false,
            Some(2) => return true,
            _ => {}
        }
        state.insert(n, 1);
        if let Some(next) = edges.get(n) {
            for m in next.iter() {
                if !visit(m.as_str(), edges, state) {
                    return false;
                }
            }
        }
        state.insert(n, 2);
        true
    }
    for (k, _) in dag {
        if !visit(k.as_str(), &edges, &mut state) {
            return Err(k.clone());
        }
    }
    Ok(())
}
