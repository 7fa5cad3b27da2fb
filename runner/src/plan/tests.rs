//! Golden tests: every payload in `runner/testdata/payloads/` compiles to the plan in
//! `runner/testdata/plans/` (`FERRY_BLESS=1` rewrites them), plus focused rule tests.

use std::path::{Path, PathBuf};

use super::*;
use crate::failure::FailureReason;
use crate::gitlab::payload::parse_payload;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn runner() -> RunnerSection {
    let text = std::fs::read_to_string(testdata().join("runner-config.toml")).unwrap();
    let cfg = ferry_config::from_toml_str(&text, "runner-config.toml").unwrap();
    cfg.runners.into_iter().next().unwrap()
}

fn ctx() -> JobContext {
    JobContext {
        working_dir: PathBuf::from("/var/lib/ferry"),
        concurrent_id: 0,
        concurrent_project_id: 0,
        tls_ca_pem: None,
        object_cache: true,
        keep_step_output: true,
    }
}

fn payload(name: &str) -> JobPayload {
    parse_payload(&std::fs::read(testdata().join("payloads").join(name)).unwrap()).unwrap()
}

/// The plan as JSON, with what depends on the build (version, revision, arch) neutralised.
fn render(plan: &Plan) -> String {
    let text = serde_json::to_string_pretty(plan).unwrap() + "\n";
    text.replace(env!("CARGO_PKG_VERSION"), "VERSION").replace(
        &format!(
            "{}/{}",
            std::env::consts::OS,
            ferry_config::platform::go_arch()
        ),
        "OS/ARCH",
    )
}

/// `got` against the golden file (rewritten instead with `FERRY_BLESS=1`).
fn compare_golden(golden: &Path, got: &str) {
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(golden, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(golden)
        .unwrap_or_else(|_| panic!("no golden file {golden:?}; run with FERRY_BLESS=1"));
    assert_eq!(
        got, want,
        "the plan differs from {golden:?} (FERRY_BLESS=1 rewrites)"
    );
}

#[test]
fn golden_plans() {
    let mut checked = 0;
    for entry in std::fs::read_dir(testdata().join("payloads")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let got = match compile(&payload(&name), &runner(), &ctx()) {
            Ok(plan) => render(&plan),
            Err(e) => format!("error: {e}\n"),
        };
        compare_golden(&testdata().join("plans").join(&name), &got);
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn deploy_image_runs_no_container_and_parses_lines() {
    let plan = compile(&payload("deploy.json"), &runner(), &ctx()).unwrap();
    let Execution::Deploy { commands, facts } = &plan.execution else {
        panic!("not a deploy plan")
    };
    assert_eq!(commands.len(), 2);
    assert_eq!(
        commands[1].args,
        vec!["--manifests", "k8s/extra", "--namespace", "test"]
    );
    assert_eq!(
        facts.environment,
        ferry_deploy::JobEnvironment::Named("test".into())
    );
    assert_eq!(facts.ref_name, "main");
}

fn facts_of(p: &JobPayload) -> ferry_deploy::JobFacts {
    match compile(p, &runner(), &ctx()).unwrap().execution {
        Execution::Deploy { facts, .. } => facts,
        _ => panic!("not a deploy plan"),
    }
}

fn var(key: &str, value: &str) -> crate::gitlab::payload::Variable {
    crate::gitlab::payload::Variable {
        key: key.into(),
        value: value.into(),
        public: true,
        ..Default::default()
    }
}

/// Issue 7, finding 11: the job's own `variables:` (which GitLab sends after its predefined
/// variables) cannot claim a protected ref or another environment.
#[test]
fn deploy_facts_come_from_gitlab_not_from_job_variables() {
    use ferry_deploy::JobEnvironment;
    // GitLab 18.3+: git_info.protected decides, whatever the variables say
    let mut p = payload("deploy.json");
    p.git_info.protected = Some(false);
    p.variables.push(var("CI_COMMIT_REF_PROTECTED", "true"));
    assert_eq!(facts_of(&p).ref_protected, Some(false));
    p.git_info.protected = Some(true);
    assert_eq!(facts_of(&p).ref_protected, Some(true));
    // older GitLab: its own CI_COMMIT_REF_PROTECTED, which a job can contradict but not replace
    p.git_info.protected = None;
    p.variables
        .insert(0, var("CI_COMMIT_REF_PROTECTED", "false"));
    assert_eq!(facts_of(&p).ref_protected, Some(false));
    p.variables.remove(0);
    assert_eq!(facts_of(&p).ref_protected, Some(true));
    // the environment: GitLab's definition; a different later one is a conflict, not a winner
    p.variables.push(var("CI_ENVIRONMENT_NAME", "production"));
    assert_eq!(
        facts_of(&p).environment,
        JobEnvironment::Conflicting(vec!["test".into(), "production".into()])
    );
    p.variables.pop();
    p.variables.push(var("CI_ENVIRONMENT_NAME", "test"));
    assert_eq!(
        facts_of(&p).environment,
        JobEnvironment::Named("test".into())
    );
    p.variables.retain(|v| v.key != "CI_ENVIRONMENT_NAME");
    assert_eq!(facts_of(&p).environment, JobEnvironment::None);
}

#[test]
fn deploy_job_with_a_shell_line_fails_naming_it() {
    let mut p = payload("deploy.json");
    p.steps[0].script.push("kubectl apply -f k8s/".into());
    let err = compile(&p, &runner(), &ctx()).unwrap_err();
    assert!(err.to_string().contains("kubectl apply -f k8s/"), "{err}");
    assert_eq!(err.failure_reason(), FailureReason::ScriptFailure);
}

#[test]
fn masked_values_and_tokens_are_collected() {
    let plan = compile(&payload("deploy.json"), &runner(), &ctx()).unwrap();
    assert!(
        plan.masks
            .values
            .contains(&"glcbt-deployjobtoken".to_string())
    );
    assert!(
        plan.masks
            .values
            .contains(&"glrt-goldenrunnertoken0123".to_string())
    );
    assert!(plan.masks.prefixes.contains(&"glpat-".to_string()));
}

#[test]
fn disallowed_pull_policy_is_a_configuration_error() {
    let mut p = payload("full.json");
    p.image.as_mut().unwrap().pull_policy = Some(vec!["never".into()]);
    let err = compile(&p, &runner(), &ctx()).unwrap_err();
    assert_eq!(err.failure_reason(), "runner_configuration_error");
    assert!(
        err.to_string()
            .contains("allowed_pull_policies are [always, if-not-present]"),
        "{err}"
    );
}

#[test]
fn job_without_image_uses_the_runner_default() {
    let mut p = payload("full.json");
    p.image = None;
    let plan = compile(&p, &runner(), &ctx()).unwrap();
    let Execution::Docker { env, .. } = &plan.execution else {
        panic!()
    };
    assert_eq!(env.image.name, "ferry-test/busybox:latest");
    assert_eq!(
        env.image.pull_policy,
        vec![ferry_executor::PullPolicy::IfNotPresent]
    );
    // allowed_privileged_images is matched against the job's image, which it has none of.
    assert!(env.image.runner_default);
}

#[test]
fn job_image_user_is_the_jobs_own_expanded() {
    let mut p = payload("full.json");
    p.variables.push(crate::gitlab::payload::Variable {
        key: "WHO".into(),
        value: "1000".into(),
        public: true,
        ..Default::default()
    });
    let image = p.image.as_mut().unwrap();
    image.executor_opts.docker = Some(crate::gitlab::payload::DockerOpts {
        user: Some("$WHO".into()),
        ..Default::default()
    });
    let mut runner = runner();
    runner.docker.user = Some("nobody".into());
    let plan = compile(&p, &runner, &ctx()).unwrap();
    let Execution::Docker { env, .. } = &plan.execution else {
        panic!()
    };
    // The runner's `user` is applied (and wins) in the engine, with allowed_users.
    assert_eq!(env.image.user.as_deref(), Some("1000"));
    assert!(!env.image.runner_default);
    assert_eq!(
        env.services[0].image.user, None,
        "services never get the runner's user"
    );
}

#[test]
fn absurd_timeouts_refuse_the_job_with_the_reason() {
    for (timeout, step_timeout) in [
        (u64::MAX, 3600),
        (MAX_PAYLOAD_TIMEOUT_SECS + 1, 0),
        (3600, u64::MAX),
    ] {
        let mut p = payload("full.json");
        p.runner_info.timeout = timeout;
        p.steps[0].timeout = step_timeout;
        let err = compile(&p, &runner(), &ctx()).unwrap_err();
        assert_eq!(err.failure_reason(), FailureReason::RunnerSystemFailure);
        let text = err.to_string();
        assert!(
            text.contains("GitLab never sends such a value") && text.contains("seconds"),
            "{text}"
        );
    }
    let mut p = payload("full.json");
    p.runner_info.timeout = MAX_PAYLOAD_TIMEOUT_SECS;
    let plan = compile(&p, &runner(), &ctx()).unwrap();
    assert_eq!(plan.timeout, Duration::from_secs(MAX_PAYLOAD_TIMEOUT_SECS));
    p.runner_info.timeout = 0;
    assert_eq!(
        compile(&p, &runner(), &ctx()).unwrap().timeout,
        DEFAULT_JOB_TIMEOUT
    );
}

#[test]
fn a_huge_after_script_timeout_variable_saturates() {
    let mut p = payload("full.json");
    p.variables.push(crate::gitlab::payload::Variable {
        key: "RUNNER_AFTER_SCRIPT_TIMEOUT".into(),
        value: "99999999999999999999999999h".into(),
        public: true,
        ..Default::default()
    });
    let plan = compile(&p, &runner(), &ctx()).unwrap();
    let Execution::Docker { steps, .. } = &plan.execution else {
        panic!()
    };
    let after = steps
        .iter()
        .find(|s| s.spec.name == "after_script")
        .unwrap();
    assert_eq!(after.spec.timeout, Some(Duration::MAX));
}

#[test]
fn runner_variables_follow_gitlab_runner_order() {
    let plan = compile(&payload("full.json"), &runner(), &ctx()).unwrap();
    let v = &plan.variables;
    assert_eq!(v.value("CI_RUNNER_SHORT_TOKEN"), Some("goldenrun"));
    assert_eq!(v.value("RUNNER_ENV_VAR"), Some("from-config"));
    assert_eq!(v.value("CI_DISPOSABLE_ENVIRONMENT"), Some("true"));
    assert_eq!(v.value("FF_NETWORK_PER_BUILD"), Some("true"));
    assert_eq!(v.value("CI_BUILDS_DIR"), Some("/builds"));
    assert!(v.value("CI_PROJECT_DIR").unwrap().starts_with("/builds/"));
}

/// Keeps, of a list of variables (`{"key"|"name": …}`), those the payload itself defines: the
/// predefined ones are pinned by the full golden plans, the rule cases show only their own.
fn own_variables(list: &mut serde_json::Value, keys: &[String]) {
    if let Some(items) = list.as_array_mut() {
        items.retain(|v| {
            let key = v
                .get("key")
                .or_else(|| v.get("name"))
                .and_then(|k| k.as_str());
            key.is_some_and(|k| keys.iter().any(|own| own == k))
        });
    }
}

/// One small case per rule (`runner/testdata/rules/<rule>.json`, its `_rule` says which): the
/// plan it compiles to, with only the payload's own variables, in `rules/plans/`.
#[test]
fn golden_rules() {
    let dir = testdata().join("rules");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let p = parse_payload(&std::fs::read(&path).unwrap()).unwrap();
        let keys: Vec<String> = p.variables.iter().map(|v| v.key.clone()).collect();
        let got = match compile(&p, &runner(), &ctx()) {
            Ok(plan) => {
                let mut v: serde_json::Value = serde_json::from_str(&render(&plan)).unwrap();
                own_variables(&mut v["variables"]["list"], &keys);
                let env = &mut v["execution"]["env"];
                if env.is_object() {
                    own_variables(&mut env["variables"], &keys);
                    own_variables(&mut env["service_variables"], &keys);
                    for service in env["services"].as_array_mut().into_iter().flatten() {
                        own_variables(&mut service["variables"], &keys);
                    }
                }
                serde_json::to_string_pretty(&v).unwrap() + "\n"
            }
            Err(e) => format!("error: {e}\n"),
        };
        compare_golden(&dir.join("plans").join(&name), &got);
        checked += 1;
    }
    assert!(checked >= 8, "{checked} rule cases");
}

/// `[runners.cache] Type = "s3"`: the plan carries gitlab-runner's object prefix and the job's
/// CACHE_REQUEST_TIMEOUT / RESTORE_CACHE_ATTEMPTS; the plan never shows credentials.
#[test]
fn distributed_cache_uses_gitlab_runners_object_names() {
    let mut r = runner();
    r.cache.kind = Some("s3".into());
    r.cache.s3.bucket_name = "ci-cache".into();
    r.cache.s3.secret_key = ferry_config::Redacted("plan-secret-value".into());
    let mut p = payload("full.json");
    p.variables.push(var("CACHE_REQUEST_TIMEOUT", "3"));
    p.variables.push(var("RESTORE_CACHE_ATTEMPTS", "4"));
    let plan = compile(&p, &r, &ctx()).unwrap();
    let remote = plan.cache_store.remote.clone().unwrap();
    let short = r.token.ci_short_token();
    assert_eq!(
        remote.prefix,
        format!("runner/{short}/project/{}", p.job_info.project_id)
    );
    assert_eq!(remote.request_timeout, std::time::Duration::from_secs(180));
    assert_eq!(remote.restore_attempts, 4);
    let shown = render(&plan);
    assert!(shown.contains("\"bucket\": \"ci-cache\""), "{shown}");
    assert!(!shown.contains("plan-secret-value"));

    r.cache.shared = true;
    r.cache.path = Some("fleet".into());
    let plan = compile(&p, &r, &ctx()).unwrap();
    assert_eq!(
        plan.cache_store.remote.unwrap().prefix,
        format!("fleet/project/{}", p.job_info.project_id)
    );
}

#[test]
fn runner_wide_services_come_first_expanded_and_count_towards_the_limit() {
    let mut p = payload("full.json");
    p.variables.push(crate::gitlab::payload::Variable {
        key: "PG".into(),
        value: "16".into(),
        public: true,
        ..Default::default()
    });
    let job_services = p.services.len();
    let mut runner = runner();
    runner.docker.services.push(ferry_config::RunnerService {
        name: "registry.example.com/postgres:$PG".into(),
        alias: "db,pg-$PG".into(),
        command: vec!["postgres".into(), "-c".into(), "fsync=off".into()],
        entrypoint: vec!["/entry".into()],
        environment: vec![("POSTGRES_PASSWORD".into(), "$PG".into())],
    });
    runner
        .docker
        .containers
        .container_labels
        .insert("team".into(), "t-$PG".into());
    let plan = compile(&p, &runner, &ctx()).unwrap();
    let Execution::Docker { env, .. } = &plan.execution else {
        panic!()
    };
    assert_eq!(env.runner_services, 1);
    assert_eq!(env.services.len(), job_services + 1);
    let s = &env.services[0];
    assert_eq!(s.image.name, "registry.example.com/postgres:16");
    assert_eq!(
        s.aliases,
        vec![
            "db",
            "pg-16",
            "registry.example.com__postgres",
            "registry.example.com-postgres"
        ]
    );
    assert_eq!(s.command, vec!["postgres", "-c", "fsync=off"]);
    assert_eq!(s.image.entrypoint, vec!["/entry"]);
    assert_eq!(s.variables[0].name, "POSTGRES_PASSWORD");
    assert_eq!(s.variables[0].value, "16");
    assert_eq!(s.image.pull_policy, runner.docker.pull_policy);
    assert_eq!(env.container_labels["team"], "t-16");

    runner.docker.services_limit = Some(job_services);
    match compile(&p, &runner, &ctx()) {
        Err(e) => assert!(e.to_string().contains("services_limit"), "{e}"),
        Ok(_) => panic!("the runner-wide service must count towards services_limit"),
    }
}

/// `pre_build_script` and `post_build_script` wrap every step but after_script, in the same
/// shell, as gitlab-runner's `writeUserScript` does.
#[test]
fn pre_and_post_build_scripts_wrap_the_script_steps() {
    let mut r = runner();
    r.pre_build_script = Some("echo pre-build".into());
    r.post_build_script = Some("echo post-build\necho second".into());
    let mut p = payload("full.json");
    p.steps
        .retain(|s| matches!(s.kind(), StepKind::Script | StepKind::AfterScript));
    let plan = compile(&p, &r, &ctx()).unwrap();
    let Execution::Docker { steps, .. } = &plan.execution else {
        panic!("a docker plan");
    };
    for step in steps {
        let c = &step.spec.commands;
        if step.kind == StepKind::AfterScript {
            assert!(!c.iter().any(|l| l.contains("-build")), "{c:?}");
        } else {
            assert_eq!(
                c.first().map(String::as_str),
                Some("echo pre-build"),
                "{c:?}"
            );
            assert_eq!(
                c.last().map(String::as_str),
                Some("echo post-build\necho second"),
                "{c:?}"
            );
        }
    }
    assert!(steps.iter().any(|s| s.kind == StepKind::AfterScript));
}

/// `FF_TIMESTAMPS`, `FF_SCRIPT_SECTIONS` and `CI_DEBUG_SERVICES` as gitlab-runner reads them:
/// Go booleans, `[runners.feature_flags]` winning over the job's variables, script sections
/// numbered per part of a step and only when GitLab shows sections, `CI_DEBUG_SERVICES`
/// refused by `debug_trace_disabled`.
#[test]
fn log_flags_follow_gitlab_runner() {
    let with = |vars: &[(&str, &str)], r: &RunnerSection| {
        let mut p = payload("full.json");
        p.variables.extend(vars.iter().map(|(k, v)| var(k, v)));
        compile(&p, r, &ctx()).unwrap()
    };
    let sections = |plan: &Plan| -> Vec<Vec<String>> {
        let Execution::Docker { steps, .. } = &plan.execution else {
            panic!("a docker plan");
        };
        steps
            .iter()
            .map(|s| s.spec.script_sections.clone())
            .collect()
    };
    let mut r = runner();
    let off = with(&[], &r);
    assert!(!off.timestamps && !off.debug_services);
    assert!(sections(&off).iter().all(Vec::is_empty));

    let on = with(
        &[
            ("FF_TIMESTAMPS", "1"),
            ("FF_SCRIPT_SECTIONS", "TRUE"),
            ("CI_DEBUG_SERVICES", "t"),
        ],
        &r,
    );
    assert!(on.timestamps && on.debug_services);
    assert_eq!(
        sections(&on),
        vec![
            vec!["script_step_0".to_string()],
            vec!["after_script_step_0".to_string()]
        ]
    );
    assert!(
        !with(&[("FF_TIMESTAMPS", "yes")], &r).timestamps,
        "not a Go boolean"
    );

    r.pre_build_script = Some("echo pre".into());
    r.post_build_script = Some("echo post".into());
    assert_eq!(
        sections(&with(&[("FF_SCRIPT_SECTIONS", "true")], &r))[0],
        ["pre_build_script_0", "script_step_0", "post_build_script_0"]
    );
    // Without GitLab's trace_sections feature there are no script sections.
    let mut p = payload("full.json");
    p.features.trace_sections = false;
    p.variables.push(var("FF_SCRIPT_SECTIONS", "true"));
    assert!(
        sections(&compile(&p, &r, &ctx()).unwrap())
            .iter()
            .all(Vec::is_empty)
    );

    // The runner's feature flag wins over the job's variable, both ways.
    r.feature_flags.insert("FF_TIMESTAMPS".into(), false);
    assert!(!with(&[("FF_TIMESTAMPS", "true")], &r).timestamps);
    let mut p = payload("full.json");
    p.variables.push(var("FF_TIMESTAMPS", "true"));
    assert!(!timestamps_unplanned(&p, &r));
    r.feature_flags.insert("FF_TIMESTAMPS".into(), true);
    assert!(with(&[("FF_TIMESTAMPS", "false")], &r).timestamps);
    assert!(timestamps_unplanned(&payload("full.json"), &r));

    r.debug_trace_disabled = true;
    let refused = with(&[("CI_DEBUG_SERVICES", "true")], &r);
    assert!(!refused.debug_services);
    assert!(
        refused
            .warnings
            .contains(&"CI_DEBUG_SERVICES: usage is disabled on this Runner".to_string())
    );
}

#[test]
fn git_clone_path_moves_the_project_dir_within_builds_dir_only() {
    let with = |value: &str, enabled: bool| {
        let mut p = payload("full.json");
        p.variables.push(var("GIT_CLONE_PATH", value));
        let mut r = runner();
        r.custom_build_dir_enabled = enabled;
        compile(&p, &r, &ctx())
    };
    let plan = with("$CI_BUILDS_DIR/custom/./x/../here", true).unwrap();
    let Execution::Docker { env, .. } = &plan.execution else {
        panic!()
    };
    assert_eq!(env.project_dir, "/builds/custom/here");
    assert_eq!(env.tmp_dir, "/builds/custom/here.tmp");
    assert_eq!(
        plan.variables.value("CI_PROJECT_DIR"),
        Some("/builds/custom/here")
    );
    assert_eq!(
        plan.sources.display_dir.as_deref(),
        Some("/builds/custom/here")
    );
    // The host dir is the project's own, whatever the path in the container.
    let default = compile(&payload("full.json"), &runner(), &ctx()).unwrap();
    assert_eq!(plan.host_project_dir, default.host_project_dir);

    let refused = |value: &str, enabled: bool| {
        let e = with(value, enabled).unwrap_err();
        assert_eq!(
            e.failure_reason(),
            FailureReason::RunnerConfigurationError,
            "{e}"
        );
        e.to_string()
    };
    assert_eq!(
        refused("/builds/x", false),
        "setting GIT_CLONE_PATH is not allowed, enable `custom_build_dir` feature"
    );
    assert_eq!(
        refused("/builds/../etc", true),
        "the GIT_CLONE_PATH=\"/builds/../etc\" has to be within \"/builds\""
    );
    assert!(refused("/buildsx/y", true).contains("has to be within"));
    assert!(refused("relative/dir", true).contains("has to be within"));
    assert!(refused("/builds/a:/etc", true).contains("mount path"));
}

#[test]
fn get_sources_hooks_run_runner_pre_first_and_runner_post_last() {
    let mut p = payload("full.json");
    p.hooks = vec![
        crate::gitlab::payload::Hook {
            name: "pre_get_sources_script".into(),
            script: vec!["echo job-pre".into()],
        },
        crate::gitlab::payload::Hook {
            name: "post_get_sources_script".into(),
            script: vec!["echo job-post".into()],
        },
    ];
    let mut r = runner();
    r.pre_get_sources_script = Some("echo runner-pre".into());
    r.post_get_sources_script = Some("echo runner-post".into());
    let plan = compile(&p, &r, &ctx()).unwrap();
    assert_eq!(
        plan.hooks.pre.as_ref().unwrap().commands,
        ["echo runner-pre", "echo job-pre"]
    );
    assert_eq!(
        plan.hooks.post.as_ref().unwrap().commands,
        ["echo job-post", "echo runner-post"]
    );
    // GIT_STRATEGY none: no git, no hooks (gitlab-runner's guardGetSourcesScriptHooks).
    p.variables.push(var("GIT_STRATEGY", "none"));
    assert!(compile(&p, &r, &ctx()).unwrap().hooks.is_empty());
}

#[test]
fn a_deploy_job_with_get_sources_hooks_is_refused() {
    let mut p = payload("deploy.json");
    p.hooks = vec![crate::gitlab::payload::Hook {
        name: "pre_get_sources_script".into(),
        script: vec!["echo x".into()],
    }];
    let e = compile(&p, &runner(), &ctx()).unwrap_err();
    assert_eq!(e.failure_reason(), FailureReason::RunnerConfigurationError);
    assert!(e.to_string().contains("cannot run in a deploy job"), "{e}");
}

#[test]
fn git_submodule_force_https_rewrites_to_the_runners_url_and_ssh_host() {
    let mut p = payload("full.json");
    p.variables.push(var("GIT_SUBMODULE_FORCE_HTTPS", "true"));
    p.variables
        .push(var("CI_SERVER_HOST", "gitlab.example.com"));
    p.variables.push(var("CI_SERVER_SHELL_SSH_PORT", "2222"));
    let mut r = runner();
    r.url = "https://gitlab.example.com/".into();
    r.clone_url = None;
    let plan = compile(&p, &r, &ctx()).unwrap();
    let f = plan.sources.force_https.as_ref().unwrap();
    assert_eq!(f.base, "https://gitlab.example.com");
    assert_eq!(
        f.insteadofs(),
        [(
            "url.https://gitlab.example.com.insteadOf".to_string(),
            "ssh://git@gitlab.example.com:2222".to_string()
        )]
    );
    p.variables.push(var("CI_SERVER_SHELL_SSH_PORT", "22"));
    p.variables
        .push(var("CI_SERVER_SHELL_SSH_HOST", "ssh.example.com"));
    let plan = compile(&p, &r, &ctx()).unwrap();
    assert_eq!(
        plan.sources.force_https.unwrap().insteadofs(),
        [
            (
                "url.https://gitlab.example.com/.insteadOf".to_string(),
                "git@ssh.example.com:".to_string()
            ),
            (
                "url.https://gitlab.example.com.insteadOf".to_string(),
                "ssh://git@ssh.example.com".to_string()
            )
        ]
    );
    // Unset: nothing rewritten.
    let plan = compile(&payload("full.json"), &r, &ctx()).unwrap();
    assert!(plan.sources.force_https.is_none());
}

/// `full.json` with `vars` added (the job timeout of full.json is its `runner_info.timeout`).
fn with_vars(vars: &[(&str, &str)]) -> Plan {
    let mut p = payload("full.json");
    p.runner_info.timeout = 3600;
    p.variables.extend(vars.iter().map(|(k, v)| var(k, v)));
    compile(&p, &runner(), &ctx()).unwrap()
}

#[test]
fn runner_script_timeout_is_read_as_gitlab_runner_reads_it() {
    let cases: [(&str, Option<Duration>, Option<&str>); 8] = [
        ("10m", Some(Duration::from_secs(600)), None),
        (
            "1h30m",
            None,
            Some(
                "RUNNER_SCRIPT_TIMEOUT timeout: 1h30m is longer than job timeout. Setting to job timeout",
            ),
        ),
        ("90", Some(Duration::from_secs(90)), None),
        ("0", None, None),
        ("", None, None),
        (
            "soon",
            None,
            Some("Ignoring malformed RUNNER_SCRIPT_TIMEOUT timeout: soon"),
        ),
        (
            "-5m",
            None,
            Some("Ignoring relative RUNNER_SCRIPT_TIMEOUT timeout: -5m"),
        ),
        (
            "99999999999999999999999h",
            None,
            Some(
                "RUNNER_SCRIPT_TIMEOUT timeout: 99999999999999999999999h is longer than job timeout. Setting to job timeout",
            ),
        ),
    ];
    for (value, timeout, warning) in cases {
        let plan = with_vars(&[("RUNNER_SCRIPT_TIMEOUT", value)]);
        assert_eq!(plan.script_timeout, timeout, "{value:?}");
        let warned: Vec<&String> = plan
            .warnings
            .iter()
            .filter(|w| w.contains("RUNNER_SCRIPT_TIMEOUT"))
            .collect();
        match warning {
            Some(w) => assert_eq!(warned, [w], "{value:?}"),
            None => assert!(warned.is_empty(), "{value:?}: {warned:?}"),
        }
    }
    assert_eq!(with_vars(&[]).script_timeout, None);
}

#[test]
fn a_malformed_after_script_timeout_warns_and_keeps_the_default() {
    let plan = with_vars(&[("RUNNER_AFTER_SCRIPT_TIMEOUT", "later")]);
    assert!(
        plan.warnings
            .contains(&"Ignoring malformed RUNNER_AFTER_SCRIPT_TIMEOUT timeout: later".to_string()),
        "{:?}",
        plan.warnings
    );
    let Execution::Docker { steps, .. } = &plan.execution else {
        panic!()
    };
    let after = steps
        .iter()
        .find(|s| s.spec.name == "after_script")
        .unwrap();
    assert!(after.spec.timeout.is_some());
}

#[test]
fn compression_levels_reach_artifacts_and_caches() {
    use ferry_executor::compression::CompressionLevel;
    let plan = with_vars(&[
        ("ARTIFACT_COMPRESSION_LEVEL", "fastest"),
        ("CACHE_COMPRESSION_LEVEL", "slowest"),
    ]);
    assert!(!plan.artifacts.is_empty());
    assert!(
        plan.artifacts
            .iter()
            .all(|a| a.compression == CompressionLevel::Fastest)
    );
    assert_eq!(plan.cache_store.compression, CompressionLevel::Slowest);

    let plan = with_vars(&[("ARTIFACT_COMPRESSION_LEVEL", "max")]);
    assert!(
        plan.artifacts
            .iter()
            .all(|a| a.compression == CompressionLevel::Default)
    );
    assert!(
        plan.warnings.contains(
            &"ARTIFACT_COMPRESSION_LEVEL: compression level \"max\" is invalid, falling back to default"
                .to_string()
        ),
        "{:?}",
        plan.warnings
    );
}
