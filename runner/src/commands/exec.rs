//! `ferry exec`: run a repository's `.gitlab-ci.yml` pipeline on this machine (docs/exec.md).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use ferry_config::RunnerSection;
use ferry_deploy::{DeployTarget, KubeDeployer};
use ferry_executor::docker::DockerEngine;
use ferry_pipeline::{Input, Pipeline, RefKind};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, ExecArgs};
use crate::driver::{Driver, HostFs};
use crate::exec::api::LocalApi;
use crate::exec::convert::{FilesKey, PipelineContext, local_jobs};
use crate::exec::deploy::LocalDeployer;
use crate::exec::git::git;
use crate::exec::schedule::Status;
use crate::exec::terminal::Terminal;
use crate::exec::{self, JobResult, LocalJob, Options, predefined, snapshot};
use crate::metrics::Metrics;
use crate::trace::TraceTiming;

/// Exit status of bad input (YAML, arguments): the pipeline never started.
const BAD_INPUT: u8 = 2;

/// The runner entry jobs run with when no config is named: Docker on this machine, the image
/// gitlab-runner's docs suggest as a default, and images pulled only when missing (a laptop's
/// images are used as they are, and a machine without a registry still runs).
const DEFAULT_RUNNER: &str = r#"
[[runners]]
name = "ferry-exec"
url = "https://gitlab.invalid"
token = "glrt-ferry-exec-local"
executor = "docker"
[runners.docker]
image = "alpine:latest"
pull_policy = ["if-not-present"]
"#;

pub async fn exec(cli: &Cli, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    match prepare(cli, args).await {
        Ok(Prepared::Listed) => Ok(ExitCode::SUCCESS),
        Ok(Prepared::Run(run)) => run_prepared(*run, args).await,
        Err(e) => {
            eprintln!("ERROR: {e:#}");
            Ok(ExitCode::from(BAD_INPUT))
        }
    }
}

enum Prepared {
    Listed,
    Run(Box<Ready>),
}

struct Ready {
    runner: Arc<RunnerSection>,
    pipeline: Pipeline,
    jobs: Vec<LocalJob>,
    run_dir: PathBuf,
    working_dir: PathBuf,
    /// `--artifacts-to-source`.
    to_source: Option<exec::to_source::ToSource>,
    /// The deploy jobs (`image: ferry:deploy`).
    deploy_jobs: Vec<String>,
    /// Without `-c`/`--runner`: the deploy target of the user's kubeconfig, or where ferry
    /// looked for one and found none.
    local_target: Option<DeployTarget>,
    missing_kubeconfig: Option<String>,
}

/// `KEY=VALUE` lines of a `--var-file` (blank lines and `#` comments skipped).
fn read_var_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --var-file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        out.push(split_var(line).with_context(|| format!("{}:{}", path.display(), n + 1))?);
    }
    Ok(out)
}

fn split_var(text: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .with_context(|| format!("{text:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("{k:?} is not a variable name (letters, digits and _)");
    }
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v);
    Ok((k.to_string(), v.to_string()))
}

/// The user's cache directory for ferry's local pipelines.
fn default_working_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ferry").join("exec")
}

fn runner_section(cli: &Cli, args: &ExecArgs) -> anyhow::Result<RunnerSection> {
    let config = match (&cli.config, &args.runner) {
        (None, None) => ferry_config::from_toml_str(DEFAULT_RUNNER, "ferry exec's default runner")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        _ => {
            let path = crate::commands::config_path(cli);
            ferry_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    let mut runners = config.runners.into_iter();
    match &args.runner {
        Some(name) => runners
            .find(|r| &r.name == name)
            .with_context(|| format!("no [[runners]] entry named {name:?} in the config file")),
        None => runners
            .next()
            .context("the config file has no [[runners]] entry"),
    }
}

async fn prepare(cli: &Cli, args: &ExecArgs) -> anyhow::Result<Prepared> {
    let default_runner = cli.config.is_none() && args.runner.is_none();
    if !default_runner && (args.kubeconfig.is_some() || args.context.is_some()) {
        anyhow::bail!(
            "--kubeconfig and --context are for ferry exec's default runner; with -c or --runner, deploy jobs use that runner's deploy targets"
        );
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let top = snapshot::toplevel(&cwd)?;
    let facts = predefined::read(&top, args.git_ref.as_deref());
    let mut user: Vec<(String, String)> = Vec::new();
    for f in &args.var_files {
        user.extend(read_var_file(f)?);
    }
    for v in &args.vars {
        user.push(split_var(v).with_context(|| format!("--var {v}"))?);
    }
    let working_dir = args
        .working_directory
        .clone()
        .unwrap_or_else(default_working_dir);
    let state_dir = working_dir.join("pipelines");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let pipeline_id = next_pipeline_id(&state_dir)?;
    let predefined = predefined::pipeline_variables(&facts, pipeline_id, &args.pipeline_source);

    let mut input = Input::new(
        &facts.ref_name,
        if facts.is_tag {
            RefKind::Tag
        } else {
            RefKind::Branch
        },
        &args.pipeline_source,
    );
    input.project_path = Some(facts.project_path.clone());
    input.predefined = predefined.iter().cloned().collect();
    input.variables = user.iter().cloned().collect();
    input.changed_paths = changed_paths(&top, &facts);
    // Includes only GitLab can read: resolved by it with --gitlab (docs/exec.md).
    let lint = exec::include::Lint::from_args(args, &facts)?;
    let mut pipeline = exec::include::plan(&top, &input, lint.as_ref()).await?;
    if let Some(why) = &pipeline.not_created {
        anyhow::bail!("GitLab would create no pipeline: {why}");
    }
    select_jobs(&mut pipeline, &args.jobs, args.needs)?;
    if args.list {
        print_list(&pipeline, args.json);
        return Ok(Prepared::Listed);
    }

    let mut runner = runner_section(cli, args)?;
    // docs/exec.md, "Deploy jobs": without -c/--runner, the user's kubeconfig is the one target.
    let (mut local_target, mut missing_kubeconfig) = (None, None);
    if default_runner {
        match exec::deploy::local_target(args.kubeconfig.clone(), args.context.clone()) {
            Ok(target) => {
                runner.deploy.targets.push(target.clone());
                local_target = Some(target);
            }
            Err(why) => missing_kubeconfig = Some(why),
        }
    }
    let out_base = args.output.clone().unwrap_or_else(|| top.join(".ferry"));
    if args.output.is_none() {
        // The default output dir is in the repository, which may not be the user's own work:
        // never write through a link or into files the repository brings (docs/exec.md).
        if std::fs::symlink_metadata(&out_base).is_ok_and(|m| m.file_type().is_symlink()) {
            anyhow::bail!(
                "{} is a symbolic link; ferry exec writes its logs there only as a directory (or name one with --output)",
                out_base.display()
            );
        }
        let tracked = git(&top, ["ls-files", "--", ".ferry"], &[]).is_ok_and(|o| !o.is_empty());
        if tracked {
            anyhow::bail!(
                "the repository tracks files under .ferry/, where ferry exec keeps its logs; name another dir with --output"
            );
        }
    }
    std::fs::create_dir_all(&out_base)
        .with_context(|| format!("creating {}", out_base.display()))?;
    // A new dir per run: nothing in it is older than this run.
    let run_dir = out_base.join(pipeline_id.to_string());
    std::fs::create_dir(&run_dir).with_context(|| {
        format!(
            "creating {} (a new directory for pipeline {pipeline_id})",
            run_dir.display()
        )
    })?;
    if args.output.is_none() {
        // The default output dir is inside the repository: git status stays clean.
        let ignore = top.join(".ferry").join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "*\n")
                .with_context(|| format!("writing {}", ignore.display()))?;
        }
    }
    let store = working_dir
        .join("snapshots")
        .join(format!("{}.git", exec::file_name(&facts.project_path)));
    let exclude = args.output.clone().unwrap_or_else(|| top.join(".ferry"));
    let snap = snapshot::take(
        &top,
        &store,
        &facts.ref_name,
        facts.is_tag,
        &[exclude.as_path()],
    )?;
    let server_url = facts
        .server_url
        .clone()
        .unwrap_or_else(|| "https://gitlab.invalid".into());
    // Jobs share their cache definitions (`default:`): each key is computed once (git runs).
    type KeyArgs = (
        Option<Vec<String>>,
        Option<Vec<String>>,
        Option<String>,
        usize,
    );
    let keys: std::cell::RefCell<std::collections::HashMap<KeyArgs, String>> = Default::default();
    let files_key = |k: FilesKey<'_>| {
        let args: KeyArgs = (
            k.files.map(<[String]>::to_vec),
            k.files_commits.map(<[String]>::to_vec),
            k.prefix.map(str::to_string),
            k.index,
        );
        if let Some(key) = keys.borrow().get(&args) {
            return key.clone();
        }
        let key = snapshot::files_key(
            &store,
            &snap.sha,
            k.files,
            k.files_commits,
            k.prefix,
            k.index,
        );
        keys.borrow_mut().insert(args, key.clone());
        key
    };
    let ctx = PipelineContext {
        pipeline_id,
        snapshot: &snap,
        ref_is_tag: facts.is_tag,
        predefined: &predefined,
        user: &user,
        project_path: &facts.project_path,
        server_url: &server_url,
        files_key: &files_key,
    };
    let mut jobs = local_jobs(&pipeline, &ctx, pipeline_id * 1000 + 1);
    if !args.deploy {
        // docs/exec.md, "Deploy jobs": a server-side dry run unless --deploy. Set on every job
        // (the deploy image may be named through a variable) and last, so it wins over the
        // job's own variables.
        for j in &mut jobs {
            j.payload.variables.push(crate::gitlab::payload::Variable {
                key: "FERRY_DRY_RUN".into(),
                value: "server".into(),
                public: true,
                ..Default::default()
            });
        }
    }
    // docs/exec.md, "Deploy jobs": ferry says which jobs run as a dry run, and why, and which
    // kubeconfig the deploy jobs use.
    let deploy_jobs: Vec<String> = {
        let ctx = crate::plan::JobContext {
            working_dir: working_dir.clone(),
            concurrent_id: 0,
            concurrent_project_id: 0,
            tls_ca_pem: None,
            // As `ferry exec` runs them (runner/src/exec/mod.rs); only the kind of job is read here.
            object_cache: false,
            keep_step_output: false,
        };
        jobs.iter()
            .filter(|j| {
                crate::plan::compile(&j.payload, &runner, &ctx)
                    .is_ok_and(|p| matches!(p.execution, crate::plan::Execution::Deploy { .. }))
            })
            .map(|j| j.node.name.clone())
            .collect()
    };
    let to_source = args
        .artifacts_to_source
        .then(|| exec::to_source::ToSource::new(&top, &[&out_base, &working_dir]));
    Ok(Prepared::Run(Box::new(Ready {
        runner: Arc::new(runner),
        pipeline,
        jobs,
        run_dir,
        working_dir,
        to_source,
        deploy_jobs,
        local_target,
        missing_kubeconfig,
    })))
}

/// Local pipeline ids count up per working directory.
fn next_pipeline_id(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("last-id");
    let last: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let next = last + 1;
    std::fs::write(&path, format!("{next}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(next)
}

/// What `changes:` compares against: the files that differ from the default branch (committed
/// or not), as GitLab compares a branch pipeline's push. `None` (every `changes` true, as on
/// GitLab for pipelines without a diff) when the default branch is unknown here or this is it.
fn changed_paths(top: &Path, facts: &predefined::RepoFacts) -> Option<Vec<String>> {
    if facts.ref_name == facts.default_branch {
        return None;
    }
    let base = [
        format!("origin/{}", facts.default_branch),
        facts.default_branch.clone(),
    ]
    .into_iter()
    .find(|b| git(top, ["rev-parse", "--verify", "--quiet", b], &[]).is_ok())?;
    let run = |args: &[&str]| -> Option<Vec<String>> {
        let out = git(top, args, &[]).ok()?;
        Some(out.lines().map(str::to_string).collect())
    };
    let mut paths = run(&["diff", "--name-only", &format!("{base}...HEAD")])?;
    paths.extend(run(&["diff", "--name-only", "HEAD"]).unwrap_or_default());
    paths.extend(run(&["ls-files", "--others", "--exclude-standard"]).unwrap_or_default());
    paths.sort();
    paths.dedup();
    Some(paths)
}

/// Keeps the jobs named on the command line (and, with `--needs`, what they need); an unknown
/// name is an error that lists the pipeline's jobs.
fn select_jobs(pipeline: &mut Pipeline, names: &[String], needs: bool) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    // A parallel job's instances (`test 1/2`, `test: [a]`) answer to its name; others only to
    // their own.
    let parallel: Vec<String> = pipeline
        .jobs
        .iter()
        .filter(|j| j.parallel.is_some())
        .map(|j| j.name.clone())
        .collect();
    let matches = |job: &str, name: &str| {
        job == name
            || (parallel.iter().any(|p| p == job)
                && (job.starts_with(&format!("{name} ")) || job.starts_with(&format!("{name}: "))))
    };
    for name in names {
        if !pipeline.jobs.iter().any(|j| matches(&j.name, name)) {
            let all: Vec<&str> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
            anyhow::bail!(
                "the pipeline has no job {name:?}; its jobs: {}",
                all.join(", ")
            );
        }
    }
    let mut keep: Vec<String> = names.to_vec();
    if needs {
        let mut i = 0;
        while i < keep.len() {
            let wanted = keep[i].clone();
            for job in pipeline.jobs.iter().filter(|j| matches(&j.name, &wanted)) {
                for n in job.needs.iter().flatten() {
                    if !keep.contains(&n.job) {
                        keep.push(n.job.clone());
                    }
                }
            }
            i += 1;
        }
    }
    pipeline
        .jobs
        .retain(|j| keep.iter().any(|name| matches(&j.name, name)));
    // Named jobs run even when manual; `needs` on jobs left out are dropped (as with
    // `optional: true`), and `dependencies` likewise.
    let present: Vec<String> = pipeline.jobs.iter().map(|j| j.name.clone()).collect();
    let here = |n: &str| present.iter().any(|p| matches(p, n));
    for job in &mut pipeline.jobs {
        if names.iter().any(|n| matches(&job.name, n)) && job.when == ferry_pipeline::When::Manual {
            job.when = ferry_pipeline::When::OnSuccess;
        }
        if let Some(needs) = &mut job.needs {
            needs.retain(|n| here(&n.job));
        }
        if let Some(deps) = &mut job.dependencies {
            deps.retain(|d| here(d));
        }
    }
    Ok(())
}

fn print_list(pipeline: &Pipeline, json: bool) {
    if json {
        let jobs: Vec<serde_json::Value> = pipeline
            .jobs
            .iter()
            .map(|j| {
                serde_json::json!({
                    "name": j.name,
                    "stage": j.stage,
                    "status": if j.when == ferry_pipeline::When::Manual { "manual" } else { "created" },
                    "when": j.when,
                    "needs": j.needs.as_ref().map(|n| n.iter().map(|n| n.job.clone()).collect::<Vec<_>>()),
                    "allow_failure": j.allow_failure.allowed,
                    "defined_at": j.defined_at,
                })
            })
            .chain(pipeline.excluded.iter().map(|e| {
                serde_json::json!({"name": e.name, "status": "skipped", "reason": e.reason})
            }))
            .collect();
        println!(
            "{}",
            serde_json::json!({"status": "created", "stages": pipeline.stages, "jobs": jobs})
        );
        return;
    }
    let mut rows = vec![[
        "JOB".to_string(),
        "STAGE".to_string(),
        "WHEN".to_string(),
        "NEEDS".to_string(),
        "WHY".to_string(),
    ]];
    for j in &pipeline.jobs {
        let when = serde_json::to_value(j.when)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        rows.push([
            j.name.clone(),
            j.stage.clone(),
            when,
            j.needs
                .as_ref()
                .map(|n| {
                    let names: Vec<&str> = n.iter().map(|n| n.job.as_str()).collect();
                    format!("[{}]", names.join(", "))
                })
                .unwrap_or_else(|| "-".into()),
            j.rule.clone().unwrap_or_default(),
        ]);
    }
    for e in &pipeline.excluded {
        rows.push([
            e.name.clone(),
            "-".into(),
            "excluded".into(),
            "-".into(),
            e.reason.clone(),
        ]);
    }
    let mut width = [0usize; 5];
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

async fn run_prepared(ready: Ready, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let colour = std::io::stdout().is_terminal();
    let concurrent = args.concurrent.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // With --json, stdout carries the summary only: the logs go to stderr.
    let out: Box<dyn std::io::Write + Send> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let terminal = Terminal::new(
        out,
        colour && !args.json,
        concurrent > 1 && ready.jobs.len() > 1,
    );
    let api = Arc::new(
        LocalApi::new(&ready.run_dir, terminal)
            .with_context(|| format!("creating {}", ready.run_dir.display()))?,
    );
    let engine = DockerEngine::new(&ready.runner.docker, ready.runner.token.ci_short_token())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let driver = Arc::new(Driver {
        engine: Arc::new(engine),
        deployer: Arc::new(LocalDeployer {
            inner: KubeDeployer::default(),
            missing: ready.missing_kubeconfig.clone(),
        }),
        api: api.clone(),
        host: Arc::new(HostFs),
        metrics: Metrics::new(),
        system_id: "ferry-exec".into(),
        trace_timing: TraceTiming {
            update_interval: exec::LOCAL_UPDATE_INTERVAL,
            ..TraceTiming::default()
        },
        cleanups: tokio_util::task::TaskTracker::new(),
        workspaces: Default::default(),
        journal: None,
    });
    if let (false, Some(t)) = (ready.deploy_jobs.is_empty(), &ready.local_target) {
        // Which kubeconfig: its path and context only, never its contents (docs/deploy.md).
        let context = t.context.as_deref().map_or_else(
            || "its current context".to_string(),
            |c| format!("context {c}"),
        );
        api.terminal().say(&format!(
            "ferry: deploy jobs use the kubeconfig {} ({context})",
            t.kubeconfig.display()
        ));
    }
    if !args.deploy {
        for name in &ready.deploy_jobs {
            api.terminal().say(&format!(
                "ferry: {name}: without --deploy: a server-side dry run (FERRY_DRY_RUN=server): nothing is persisted on the cluster"
            ));
        }
    }
    let cancel = CancellationToken::new();
    let shutdown = CancellationToken::new();
    {
        let (cancel, shutdown, api) = (cancel.clone(), shutdown.clone(), api.clone());
        tokio::spawn(async move {
            // The signal acts first; the line after (a blocked terminal cannot hold it up).
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
                api.terminal().say(
                    "ferry: canceling the pipeline (after_script runs); Ctrl-C again to stop at once",
                );
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                shutdown.cancel();
                api.terminal().say("ferry: stopping now");
            }
        });
    }
    let stages = ready.pipeline.stages.clone();
    let (status, mut results) = exec::run_pipeline(
        driver.clone(),
        ready.runner.clone(),
        ready.jobs,
        Options {
            stages,
            concurrent,
            working_dir: ready.working_dir.clone(),
            cancel,
            shutdown,
            to_source: ready.to_source.clone(),
        },
    )
    .await;
    // Containers of the jobs are removed before ferry exits: nothing is left behind.
    driver.cleanups.close();
    driver.cleanups.wait().await;
    // Trigger jobs start downstream pipelines: GitLab runs them, no runner does.
    for j in ready.pipeline.jobs.iter().filter(|j| j.trigger.is_some()) {
        results.push(JobResult {
            name: j.name.clone(),
            stage: j.stage.clone(),
            status: Status::Skipped,
            failure_reason: None,
            allow_failure: j.allow_failure.allowed,
            duration_s: None,
            log: None,
            reason: Some(
                "a trigger job: GitLab starts its downstream pipeline, ferry exec does not".into(),
            ),
        });
    }
    for e in &ready.pipeline.excluded {
        results.push(JobResult {
            name: e.name.clone(),
            stage: String::new(),
            status: Status::Skipped,
            failure_reason: None,
            allow_failure: false,
            duration_s: None,
            log: None,
            reason: Some(e.reason.clone()),
        });
    }
    let status_word = serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"status": status_word, "jobs": results})
        );
    } else {
        let mut t = api.terminal();
        t.say("");
        t.say(&exec::summary(&results));
        t.say(&format!(
            "Pipeline {status_word}; logs in {}",
            ready.run_dir.display()
        ));
    }
    Ok(if status == Status::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_files_read_as_dotenv() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            "# comment\n\nA=1\nexport B=\"two words\"\nC='x=y'\n",
        )
        .unwrap();
        assert_eq!(
            read_var_file(f.path()).unwrap(),
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        std::fs::write(f.path(), "A=1\nnot a var\n").unwrap();
        let e = format!("{:#}", read_var_file(f.path()).unwrap_err());
        assert!(e.contains(":2"), "{e}");
    }
}
