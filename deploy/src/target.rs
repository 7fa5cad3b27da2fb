//! Choosing the runner's deploy target for a job and the policy it imposes (namespaces,
//! cluster-scoped objects, protected refs). Pure functions.

use globset::{Glob, GlobMatcher};

use crate::args::Settings;
use crate::{DeployError, DeployTarget, JobEnvironment, JobFacts};

fn glob(pattern: &str) -> Result<GlobMatcher, DeployError> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|e| DeployError::Configuration(format!("invalid glob {pattern:?}: {e}")))
}

fn matches_any(patterns: &[String], value: &str) -> Result<bool, DeployError> {
    for p in patterns {
        if glob(p)?.is_match(value) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn describe(targets: &[DeployTarget]) -> String {
    if targets.is_empty() {
        return "(none)".to_string();
    }
    targets
        .iter()
        .map(|t| {
            let envs = if t.environments.is_empty() {
                "any environment".to_string()
            } else {
                format!("environments {}", t.environments.join(", "))
            };
            format!("{:?} ({envs})", t.name)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Picks the target for a job: the ones whose `environments` globs match the job's environment
/// as GitLab set it (an empty list matches every job), narrowed by `--target`/
/// FERRY_DEPLOY_TARGET; then checks `protected_refs_only` against what GitLab says about the ref.
/// Neither decision reads a job variable (docs/deploy.md, "Who decides what").
pub fn select_target<'a>(
    targets: &'a [DeployTarget],
    settings: &Settings,
    facts: &JobFacts,
) -> Result<&'a DeployTarget, DeployError> {
    if targets.is_empty() {
        return Err(no_targets());
    }
    let env = match &facts.environment {
        JobEnvironment::None => "",
        JobEnvironment::Named(e) => e.as_str(),
        JobEnvironment::Conflicting(values) => {
            let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            return Err(DeployError::Input(format!(
                "CI_ENVIRONMENT_NAME is defined more than once in this job, with different values ({}):                  a deploy job's target follows the environment GitLab set from `environment:`, and the                  job's `variables:` may not redefine it; nothing was applied",
                quoted.join(", ")
            )));
        }
    };
    let mut matching = Vec::new();
    for t in targets {
        let ok =
            t.environments.is_empty() || (!env.is_empty() && matches_any(&t.environments, env)?);
        if ok {
            matching.push(t);
        }
    }
    let env_desc = if env.is_empty() {
        "the job has no environment (set `environment:` on the job)".to_string()
    } else {
        format!("environment {env:?}")
    };
    let chosen = match (&settings.target, matching.len()) {
        (Some(name), _) => match matching.iter().find(|t| &t.name == name) {
            Some(t) => *t,
            None if targets.iter().any(|t| &t.name == name) => {
                return Err(DeployError::Input(format!(
                    "deploy target {name:?} does not accept {env_desc}; this runner's targets: {}",
                    describe(targets)
                )));
            }
            None => {
                return Err(DeployError::Input(format!(
                    "no deploy target named {name:?} on this runner; its targets: {}",
                    describe(targets)
                )));
            }
        },
        (None, 0) => {
            return Err(DeployError::Input(format!(
                "no deploy target of this runner matches {env_desc}; this runner's targets: {}",
                describe(targets)
            )));
        }
        (None, 1) => matching[0],
        (None, _) => {
            let names: Vec<&str> = matching.iter().map(|t| t.name.as_str()).collect();
            return Err(DeployError::Input(format!(
                "several deploy targets match {env_desc}: {}; pick one with FERRY_DEPLOY_TARGET or --target",
                names.join(", ")
            )));
        }
    };
    if chosen.protected_refs_only && facts.ref_protected != Some(true) {
        let r = if facts.ref_name.is_empty() {
            "this ref"
        } else {
            facts.ref_name.as_str()
        };
        let why = match facts.ref_protected {
            Some(_) => format!("GitLab says {r:?} is not protected"),
            None => format!("GitLab did not say that {r:?} is protected"),
        };
        return Err(DeployError::Input(format!(
            "deploy target {:?} only accepts protected refs, and {why}; nothing was applied",
            chosen.name
        )));
    }
    Ok(chosen)
}

/// The error of a deploy job on a runner without `[[runners.deploy.targets]]`.
pub fn no_targets() -> DeployError {
    DeployError::Configuration(
        "this runner has no deploy targets configured ([[runners.deploy.targets]] in its config.toml), \
         so it cannot run deploy jobs: a deploy job never brings its own kubeconfig, context or server"
            .into(),
    )
}

/// The namespace for namespaced objects that name none: FERRY_NAMESPACE/--namespace, then
/// KUBE_NAMESPACE (both in `settings.namespace`), then the target's default, then the
/// kubeconfig context's namespace.
pub fn default_namespace(settings: &Settings, target: &DeployTarget, context_ns: &str) -> String {
    settings
        .namespace
        .clone()
        .or_else(|| target.default_namespace.clone())
        .unwrap_or_else(|| context_ns.to_string())
}

/// Namespace allowlist of a target. An empty list allows only the default namespace.
pub fn namespace_allowed(
    target: &DeployTarget,
    default_ns: &str,
    ns: &str,
) -> Result<bool, DeployError> {
    if target.namespaces.is_empty() {
        let fallback = target.default_namespace.as_deref().unwrap_or(default_ns);
        return Ok(ns == fallback);
    }
    matches_any(&target.namespaces, ns)
}

/// A target for `ferry deploy --kubeconfig ...` on a workstation: the user's own credentials,
/// no restrictions.
pub fn workstation_target(kubeconfig: std::path::PathBuf, context: Option<String>) -> DeployTarget {
    DeployTarget {
        name: "workstation".into(),
        environments: Vec::new(),
        kubeconfig,
        context,
        namespaces: vec!["*".into()],
        default_namespace: None,
        cluster_scoped: true,
        protected_refs_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{DeployArgs, Vars};

    fn target(name: &str, envs: &[&str]) -> DeployTarget {
        DeployTarget {
            name: name.into(),
            environments: envs.iter().map(|s| s.to_string()).collect(),
            kubeconfig: "/etc/ferry/kube.yaml".into(),
            context: None,
            namespaces: vec!["test".into(), "review-*".into()],
            default_namespace: Some("test".into()),
            cluster_scoped: false,
            protected_refs_only: false,
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn settings(v: &Vars) -> Settings {
        Settings::resolve(&DeployArgs::default(), v).unwrap()
    }

    fn facts(env: Option<&str>, protected: Option<bool>) -> JobFacts {
        JobFacts {
            ref_protected: protected,
            ref_name: "feat".into(),
            environment: match env {
                Some(e) => JobEnvironment::Named(e.into()),
                None => JobEnvironment::None,
            },
        }
    }

    #[test]
    fn picks_by_environment() {
        let ts = vec![
            target("test", &["test", "review/*"]),
            target("prod", &["production"]),
        ];
        let s = settings(&vars(&[]));
        let f = facts(Some("review/feature-x"), None);
        assert_eq!(select_target(&ts, &s, &f).unwrap().name, "test");
        let e = select_target(&ts, &s, &facts(Some("staging"), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"staging\"") && e.contains("\"test\"") && e.contains("\"prod\""),
            "{e}"
        );
        let e = select_target(&ts, &s, &facts(None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the job has no environment"), "{e}");
        let e = select_target(&[], &s, &facts(None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no deploy targets"), "{e}");
    }

    #[test]
    fn conflicting_environment_is_refused() {
        let ts = vec![target("test", &["test"]), target("prod", &["production"])];
        let s = settings(&vars(&[]));
        let f = JobFacts {
            environment: JobEnvironment::Conflicting(vec!["test".into(), "production".into()]),
            ..JobFacts::default()
        };
        let e = select_target(&ts, &s, &f).unwrap_err().to_string();
        assert!(
            e.contains("CI_ENVIRONMENT_NAME is defined more than once")
                && e.contains("\"test\", \"production\""),
            "{e}"
        );
    }

    #[test]
    fn several_matches_need_a_choice() {
        let ts = vec![target("a", &["prod*"]), target("b", &["production"])];
        let f = facts(Some("production"), None);
        let e = select_target(&ts, &settings(&vars(&[])), &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a, b") && e.contains("FERRY_DEPLOY_TARGET"),
            "{e}"
        );
        let v = vars(&[("FERRY_DEPLOY_TARGET", "b")]);
        assert_eq!(select_target(&ts, &settings(&v), &f).unwrap().name, "b");
    }

    #[test]
    fn protected_only() {
        let mut t = target("prod", &["production"]);
        t.protected_refs_only = true;
        let ts = vec![t];
        // job variables claiming a protected ref change nothing: only the facts count
        let v = vars(&[("CI_COMMIT_REF_PROTECTED", "true")]);
        for p in [Some(false), None] {
            let e = select_target(&ts, &settings(&v), &facts(Some("production"), p))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("only accepts protected refs") && e.contains("\"feat\""),
                "{e}"
            );
        }
        assert!(select_target(&ts, &settings(&v), &facts(Some("production"), Some(true))).is_ok());
    }

    #[test]
    fn namespaces() {
        let t = target("test", &[]);
        assert!(namespace_allowed(&t, "test", "review-12").unwrap());
        assert!(!namespace_allowed(&t, "test", "kube-system").unwrap());
        let mut t2 = t.clone();
        t2.namespaces.clear();
        assert!(namespace_allowed(&t2, "x", "test").unwrap());
        assert!(!namespace_allowed(&t2, "x", "other").unwrap());
    }
}
