//! `ferry deploy` command lines: splitting a job's script line without a shell, the options, and
//! how options and FERRY_* variables combine into [`Settings`] (flags win over variables).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ferry_config::duration::{DurationError, parse_job_duration};

use crate::DeployError;

/// Splits one script line of an `image: ferry:deploy` job into words (no shell involved) and
/// checks that it is a `ferry deploy ...` command. Returns the arguments after `ferry deploy`.
pub fn parse_script_line(line: &str) -> Result<Vec<String>, DeployError> {
    let trimmed = line.trim();
    let words = shlex::split(trimmed).ok_or_else(|| {
        DeployError::Input(format!(
            "script line `{trimmed}`: unbalanced quotes (deploy jobs run `ferry deploy [ARGS]` lines, without a shell)"
        ))
    })?;
    if words.len() < 2 || words[0] != "ferry" || words[1] != "deploy" {
        return Err(DeployError::Input(format!(
            "script line `{trimmed}` is not a `ferry deploy [ARGS]` command: jobs with the deploy image \
             run no container and no shell, each script line must be `ferry deploy [ARGS]`"
        )));
    }
    for w in &words[2..] {
        let shell_op = matches!(
            w.as_str(),
            "&&" | "||" | "|" | ";" | "&" | ">" | ">>" | "<" | "2>" | "2>&1"
        );
        if shell_op || w.contains("$(") || w.contains('`') {
            return Err(DeployError::Input(format!(
                "script line `{trimmed}` uses shell syntax (`{w}`): deploy job script lines are not run by a shell"
            )));
        }
    }
    Ok(words[2..].to_vec())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateMode {
    /// `__NAME__` takes the job variable NAME.
    Placeholders,
    /// `${NAME}` takes the job variable NAME.
    Envsubst,
    /// Files are applied as they are.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RollbackMode {
    /// Undo the workloads whose rollout failed in this run (the job still fails).
    Undo,
    /// Leave the cluster as it is and print the command that would undo it.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRunMode {
    None,
    /// Render and print the manifests (Secret values redacted); no cluster contact.
    Render,
    /// Server-side dry run of every object and a diff against the live objects.
    Server,
}

/// The options of `ferry deploy`. Each has a FERRY_* job variable counterpart; a flag given on
/// the command line wins over the variable. The runner's CLI can `#[command(flatten)]` this.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeployArgs {
    /// Files, directories or globs to apply (repeatable) [variable FERRY_MANIFESTS, default k8s/]
    #[arg(long = "manifests", short = 'f', value_name = "PATH")]
    pub manifests: Vec<String>,
    /// Namespace for namespaced objects without one [FERRY_NAMESPACE, then KUBE_NAMESPACE, then the target's default]
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Template syntax [FERRY_TEMPLATE, default placeholders]
    #[arg(long, value_enum)]
    pub template: Option<TemplateMode>,
    /// Overall wait, e.g. 90s, 10m, 1h30m [FERRY_TIMEOUT, default 10m]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// What to do when a rollout fails [FERRY_ROLLBACK, default undo]
    #[arg(long, value_enum)]
    pub rollback: Option<RollbackMode>,
    /// Dry run [FERRY_DRY_RUN, default none]
    #[arg(long = "dry-run", value_enum)]
    pub dry_run: Option<DryRunMode>,
    /// Pick one of several matching targets [FERRY_DEPLOY_TARGET]
    #[arg(long)]
    pub target: Option<String>,
    /// Kubeconfig file (workstation use; in CI the runner's targets hold the credentials)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (workstation use)
    #[arg(long)]
    pub context: Option<String>,
    /// Server-side apply field manager [FERRY_FIELD_MANAGER, default ferry]
    #[arg(long = "field-manager")]
    pub field_manager: Option<String>,
    /// Take over fields owned by other managers [FERRY_FORCE_CONFLICTS, default true]
    #[arg(long = "force-conflicts", value_name = "BOOL")]
    pub force_conflicts: Option<bool>,
    /// Wait for the workloads to roll out [FERRY_WAIT, default true]
    #[arg(long, value_name = "BOOL")]
    pub wait: Option<bool>,
    /// Fail as soon as a rollout cannot succeed [FERRY_FAIL_FAST, default true]
    #[arg(long = "fail-fast", value_name = "BOOL")]
    pub fail_fast: Option<bool>,
    /// Replace every fail-fast grace period (image pull 90s, config error 30s, ...) [FERRY_FAIL_FAST_GRACE]
    #[arg(long = "fail-fast-grace", value_name = "DURATION")]
    pub fail_fast_grace: Option<String>,
}

#[derive(Parser, Debug)]
#[command(
    name = "ferry deploy",
    about = "Apply Kubernetes manifests and wait for the rollout"
)]
struct DeployCli {
    #[command(flatten)]
    args: DeployArgs,
}

impl DeployArgs {
    /// `ferry deploy --help`.
    pub fn help() -> String {
        use clap::CommandFactory;
        DeployCli::command().render_help().to_string()
    }

    /// Parses the arguments that follow `ferry deploy`.
    pub fn parse(args: &[String]) -> Result<DeployArgs, DeployError> {
        let argv = std::iter::once("ferry deploy".to_string()).chain(args.iter().cloned());
        DeployCli::try_parse_from(argv)
            .map(|c| c.args)
            .map_err(|e| {
                DeployError::Input(format!("ferry deploy: {}", e.render().to_string().trim()))
            })
    }
}

/// Job variables, looked up last-wins as GitLab does for repeated keys.
#[derive(Debug, Clone, Default)]
pub struct Vars(pub Vec<(String, String)>);

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A variable that is set and not empty.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Expands `$NAME` and `${NAME}` in a `ferry deploy` argument from the job variables (the
    /// expansion a shell would have done); unknown names expand to nothing, like a shell.
    pub fn expand(&self, word: &str) -> String {
        let mut out = String::with_capacity(word.len());
        let mut chars = word.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            let rest = &word[i + 1..];
            if let Some(body) = rest.strip_prefix('{') {
                if let Some(end) = body.find('}') {
                    let name = &body[..end];
                    if is_var_name(name) {
                        out.push_str(self.get(name).unwrap_or(""));
                        for _ in 0..end + 2 {
                            chars.next();
                        }
                        continue;
                    }
                }
                out.push(c);
                continue;
            }
            let len = rest
                .chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .count();
            let name = &rest[..len];
            if len > 0 && is_var_name(name) {
                out.push_str(self.get(name).unwrap_or(""));
                for _ in 0..len {
                    chars.next();
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

pub(crate) fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Everything the deploy step needs to know, from flags and variables.
#[derive(Debug, Clone)]
pub struct Settings {
    pub manifests: Vec<String>,
    pub namespace: Option<String>,
    pub template: TemplateMode,
    pub timeout: Duration,
    pub rollback: RollbackMode,
    pub dry_run: DryRunMode,
    pub target: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub field_manager: String,
    pub force_conflicts: bool,
    pub wait: bool,
    pub fail_fast: bool,
    pub fail_fast_grace: Option<Duration>,
}

impl Settings {
    pub fn resolve(args: &DeployArgs, vars: &Vars) -> Result<Settings, DeployError> {
        let manifests = if !args.manifests.is_empty() {
            args.manifests.clone()
        } else if let Some(v) = vars.non_empty("FERRY_MANIFESTS") {
            v.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            vec!["k8s/".to_string()]
        };
        let namespace = args
            .namespace
            .clone()
            .or_else(|| vars.non_empty("FERRY_NAMESPACE").map(str::to_string))
            .or_else(|| vars.non_empty("KUBE_NAMESPACE").map(str::to_string));
        let template = match args.template {
            Some(t) => t,
            None => enum_var(vars, "FERRY_TEMPLATE", TemplateMode::Placeholders)?,
        };
        let timeout = match (&args.timeout, vars.non_empty("FERRY_TIMEOUT")) {
            (Some(t), _) => {
                parse_duration(t).map_err(|e| DeployError::Input(format!("--timeout: {e}")))?
            }
            (None, Some(t)) => {
                parse_duration(t).map_err(|e| DeployError::Input(format!("FERRY_TIMEOUT: {e}")))?
            }
            (None, None) => Duration::from_secs(600),
        };
        let rollback = match args.rollback {
            Some(r) => r,
            None => enum_var(vars, "FERRY_ROLLBACK", RollbackMode::Undo)?,
        };
        let dry_run = match args.dry_run {
            Some(d) => d,
            None => enum_var(vars, "FERRY_DRY_RUN", DryRunMode::None)?,
        };
        let field_manager = args
            .field_manager
            .clone()
            .or_else(|| vars.non_empty("FERRY_FIELD_MANAGER").map(str::to_string))
            .unwrap_or_else(|| "ferry".to_string());
        if field_manager.len() > 128 {
            return Err(DeployError::Input(
                "FERRY_FIELD_MANAGER: a field manager name has at most 128 characters".into(),
            ));
        }
        let fail_fast_grace = match (
            &args.fail_fast_grace,
            vars.non_empty("FERRY_FAIL_FAST_GRACE"),
        ) {
            (Some(t), _) => Some(
                parse_duration(t)
                    .map_err(|e| DeployError::Input(format!("--fail-fast-grace: {e}")))?,
            ),
            (None, Some(t)) => Some(
                parse_duration(t)
                    .map_err(|e| DeployError::Input(format!("FERRY_FAIL_FAST_GRACE: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(Settings {
            manifests,
            namespace,
            template,
            timeout,
            rollback,
            dry_run,
            target: args
                .target
                .clone()
                .or_else(|| vars.non_empty("FERRY_DEPLOY_TARGET").map(str::to_string)),
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
            field_manager,
            force_conflicts: bool_opt(args.force_conflicts, vars, "FERRY_FORCE_CONFLICTS", true)?,
            wait: bool_opt(args.wait, vars, "FERRY_WAIT", true)?,
            fail_fast: bool_opt(args.fail_fast, vars, "FERRY_FAIL_FAST", true)?,
            fail_fast_grace,
        })
    }
}

fn enum_var<T: ValueEnum>(vars: &Vars, name: &str, default: T) -> Result<T, DeployError> {
    match vars.non_empty(name) {
        None => Ok(default),
        Some(v) => T::from_str(v, true).map_err(|_| {
            let allowed: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|x| x.to_possible_value().map(|p| p.get_name().to_string()))
                .collect();
            DeployError::Input(format!(
                "{name}={v:?} is not valid; use one of: {}",
                allowed.join(", ")
            ))
        }),
    }
}

fn bool_opt(
    flag: Option<bool>,
    vars: &Vars,
    name: &str,
    default: bool,
) -> Result<bool, DeployError> {
    if let Some(b) = flag {
        return Ok(b);
    }
    match vars.non_empty(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(v) => Err(DeployError::Input(format!(
            "{name}={v:?} is not valid; use true or false"
        ))),
    }
}

/// A deploy duration (docs/deploy.md): ferry's one duration grammar, Go duration strings or a
/// bare number of seconds (`90`, `90s`, `10m`, `1h30m`, `500ms`), see
/// [`ferry_config::duration::parse_job_duration`]. A job variable sets it, so a value too large
/// is an error here, never an overflow.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_job_duration(text).map_err(|e| match e {
        DurationError::Empty => "empty duration".to_string(),
        DurationError::Invalid {
            unknown_unit: Some(unit),
        } => format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)"),
        DurationError::Invalid { unknown_unit: None } | DurationError::Negative => {
            format!("{text:?} is not a duration (examples: 90s, 10m, 1h30m)")
        }
        DurationError::TooLarge => format!("{text:?}: number too large"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn script_lines() {
        assert_eq!(
            parse_script_line("ferry deploy").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_script_line("  ferry deploy --namespace 'my ns' -f k8s/a.yaml ").unwrap(),
            vec!["--namespace", "my ns", "-f", "k8s/a.yaml"]
        );
        let e = parse_script_line("kubectl apply -f k8s/")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kubectl apply -f k8s/`"), "{e}");
        let e = parse_script_line("ferry deploy && echo done")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shell syntax (`&&`)"), "{e}");
        assert!(parse_script_line("ferry deploy --namespace 'x").is_err());
        assert!(parse_script_line("ferry").is_err());
    }

    #[test]
    fn flags_override_variables() {
        let a = DeployArgs::parse(&["--timeout".into(), "90s".into(), "-n".into(), "flag".into()])
            .unwrap();
        let v = vars(&[
            ("FERRY_TIMEOUT", "5m"),
            ("FERRY_NAMESPACE", "var"),
            ("FERRY_ROLLBACK", "none"),
            ("FERRY_MANIFESTS", "k8s/a.yaml, k8s/b.yaml"),
            ("FERRY_WAIT", "false"),
        ]);
        let s = Settings::resolve(&a, &v).unwrap();
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert_eq!(s.namespace.as_deref(), Some("flag"));
        assert_eq!(s.rollback, RollbackMode::None);
        assert_eq!(s.manifests, vec!["k8s/a.yaml", "k8s/b.yaml"]);
        assert!(!s.wait);
        let d = Settings::resolve(&DeployArgs::default(), &Vars::default()).unwrap();
        assert_eq!(d.manifests, vec!["k8s/"]);
        assert_eq!(d.timeout, Duration::from_secs(600));
        assert_eq!(d.rollback, RollbackMode::Undo);
        assert_eq!(d.template, TemplateMode::Placeholders);
        assert_eq!(d.field_manager, "ferry");
        assert!(d.force_conflicts);
    }

    #[test]
    fn bad_values_are_named() {
        let e = Settings::resolve(
            &DeployArgs::default(),
            &vars(&[("FERRY_ROLLBACK", "maybe")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("FERRY_ROLLBACK=\"maybe\"") && e.contains("undo, none"),
            "{e}"
        );
        let e = DeployArgs::parse(&["--bogus".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = Settings::resolve(&DeployArgs::default(), &vars(&[("FERRY_TIMEOUT", "ten")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("FERRY_TIMEOUT"), "{e}");
    }

    #[test]
    fn help_lists_every_option() {
        let h = DeployArgs::help();
        for o in [
            "--manifests",
            "--namespace",
            "--template",
            "--timeout",
            "--rollback",
            "--dry-run",
            "--target",
            "--kubeconfig",
            "--context",
            "--field-manager",
            "--force-conflicts",
            "--wait",
            "--fail-fast",
            "--fail-fast-grace",
        ] {
            assert!(h.contains(o), "{o} missing from:\n{h}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("1.5m").unwrap(),
            Duration::from_secs(90),
            "Go syntax"
        );
        assert_eq!(parse_duration(" ").unwrap_err(), "empty duration");
        assert_eq!(
            parse_duration("10x").unwrap_err(),
            "\"10x\": unknown unit \"x\" (use ms, s, m or h)"
        );
        assert_eq!(
            parse_duration("-1s").unwrap_err(),
            "\"-1s\" is not a duration (examples: 90s, 10m, 1h30m)"
        );
        for huge in [
            "18446744073709551615h",
            "9999999999999999999m",
            "18446744073709551615s1s",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("too large"), "{huge}: {e}");
        }
        assert_eq!(
            parse_duration("18446744073709551615").unwrap(),
            Duration::from_secs(u64::MAX)
        );
    }

    #[test]
    fn expands_arguments() {
        let v = vars(&[("NS", "review-1"), ("X", "y")]);
        assert_eq!(v.expand("$NS"), "review-1");
        assert_eq!(v.expand("ns-${X}-z"), "ns-y-z");
        assert_eq!(v.expand("$UNKNOWN/a"), "/a");
        assert_eq!(v.expand("cost$"), "cost$");
    }
}
