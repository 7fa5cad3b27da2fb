//! Choosing the runner's deploy target for a job and the policy it imposes (namespaces,
//! cluster-scoped objects, protected refs). Pure functions.

use globset::{Glob, GlobMatcher};

use crate::args::{Settings, Vars};
use crate::{DeployError, DeployTarget};

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

/// Picks the target for a job: the ones whose `environments` globs match CI_ENVIRONMENT_NAME
/// (an empty list matches every job), narrowed by `--target`/FERRY_DEPLOY_TARGET; then checks
/// `protected_refs_only`.
pub fn select_target<'a>(
    targets: &'a [DeployTarget],
    settings: &Settings,
    vars: &Vars,
) -> Result<&'a DeployTarget, DeployError> {
    if targets.is_empty() {
        return Err(DeployError::Configuration(
            "this runner has no deploy targets ([[runners.deploy.targets]] in its config.toml); \
             it cannot run deploy jobs"
                .into(),
        ));
    }
    let env = vars.get("CI_ENVIRONMENT_NAME").unwrap_or("");
    let mut matching = Vec::new();
    for t in targets {
        let ok =
            t.environments.is_empty() || (!env.is_empty() && matches_any(&t.environments, env)?);
        if ok {
            matching.push(t);
        }
    }
    let env_desc = if env.is_empty() {
        "the job has no environment (CI_ENVIRONMENT_NAME is empty; set `environment:` on the job)"
            .to_string()
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
    if chosen.protected_refs_only && vars.get("CI_COMMIT_REF_PROTECTED") != Some("true") {
        let r = vars.get("CI_COMMIT_REF_NAME").unwrap_or("this ref");
        return Err(DeployError::Input(format!(
            "deploy target {:?} only accepts protected refs, and {r:?} is not protected \
             (CI_COMMIT_REF_PROTECTED is not \"true\"); nothing was applied",
            chosen.name
        )));
    }
    Ok(chosen)
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
    use crate::args::DeployArgs;

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

    #[test]
    fn picks_by_environment() {
        let ts = vec![
            target("test", &["test", "review/*"]),
            target("prod", &["production"]),
        ];
        let v = vars(&[("CI_ENVIRONMENT_NAME", "review/feature-x")]);
        assert_eq!(select_target(&ts, &settings(&v), &v).unwrap().name, "test");
        let v = vars(&[("CI_ENVIRONMENT_NAME", "staging")]);
        let e = select_target(&ts, &settings(&v), &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"staging\"") && e.contains("\"test\"") && e.contains("\"prod\""),
            "{e}"
        );
        let v = vars(&[]);
        let e = select_target(&ts, &settings(&v), &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CI_ENVIRONMENT_NAME is empty"), "{e}");
        let e = select_target(&[], &settings(&v), &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no deploy targets"), "{e}");
    }

    #[test]
    fn several_matches_need_a_choice() {
        let ts = vec![target("a", &["prod*"]), target("b", &["production"])];
        let v = vars(&[("CI_ENVIRONMENT_NAME", "production")]);
        let e = select_target(&ts, &settings(&v), &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a, b") && e.contains("FERRY_DEPLOY_TARGET"),
            "{e}"
        );
        let v = vars(&[
            ("CI_ENVIRONMENT_NAME", "production"),
            ("FERRY_DEPLOY_TARGET", "b"),
        ]);
        assert_eq!(select_target(&ts, &settings(&v), &v).unwrap().name, "b");
    }

    #[test]
    fn protected_only() {
        let mut t = target("prod", &["production"]);
        t.protected_refs_only = true;
        let ts = vec![t];
        let v = vars(&[
            ("CI_ENVIRONMENT_NAME", "production"),
            ("CI_COMMIT_REF_PROTECTED", "false"),
            ("CI_COMMIT_REF_NAME", "feat"),
        ]);
        let e = select_target(&ts, &settings(&v), &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only accepts protected refs") && e.contains("\"feat\""),
            "{e}"
        );
        let v = vars(&[
            ("CI_ENVIRONMENT_NAME", "production"),
            ("CI_COMMIT_REF_PROTECTED", "true"),
        ]);
        assert!(select_target(&ts, &settings(&v), &v).is_ok());
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
