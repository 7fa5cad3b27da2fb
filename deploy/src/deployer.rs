//! `KubeDeployer`: the order of operations of 4.5 (target, render, discovery, policy, apply,
//! wait, rollback, summary).

use std::time::Duration;

use ferry_config::duration::format_duration;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Applied, ApplyOptions, Outcome, obj_value};
use crate::args::{DeployArgs, DryRunMode, RollbackMode, Settings, TemplateMode, Vars};
use crate::cluster::{Cluster, Op, read_kubeconfig};
use crate::files::{Limits, Stop};
use crate::render;
use crate::rollback::{self, Undo};
use crate::summary;
use crate::target::{self, workstation_target};
use crate::wait::{self, WaitConfig, WaitResult};
use crate::{
    DeployError, DeployReport, DeployRequest, DeployTarget, Deployer, JobFacts, LogSink, Origin,
};

/// `now + d` without the overflow panic of `Instant + Duration` (`--timeout` and
/// `FERRY_TIMEOUT` are the job's to choose): capped at 100 years, "never" for a rollout.
fn deadline_after(d: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = tokio::time::Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// The real deployer (kube + server-side apply).
#[derive(Debug, Clone)]
pub struct KubeDeployer {
    /// How often new pods are inspected while waiting (default 2s).
    pub diagnose_every: Duration,
    /// Margin kept before the GitLab job timeout (default 15s).
    pub job_timeout_margin: Duration,
    /// Bounds of reading the manifests (docs/deploy.md, "Limits").
    pub limits: Limits,
}

impl Default for KubeDeployer {
    fn default() -> Self {
        KubeDeployer {
            diagnose_every: Duration::from_secs(2),
            job_timeout_margin: Duration::from_secs(15),
            limits: Limits::default(),
        }
    }
}

struct Out<'a, 'b> {
    log: &'a mut LogSink<'b>,
}

impl Out<'_, '_> {
    async fn line(&mut self, s: &str) {
        let mut text = s.to_string();
        text.push('\n');
        if let Err(e) = self.log.write_all(text.as_bytes()).await {
            tracing::warn!(error = %e, "cannot write the deploy log");
        }
    }
    async fn flush(&mut self) {
        let _ = self.log.flush().await;
    }
}

impl Deployer for KubeDeployer {
    async fn deploy(
        &self,
        req: &DeployRequest,
        log: &mut LogSink<'_>,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        let mut out = Out { log };
        let result = tokio::select! {
            r = self.run(req, &mut out, cancel) => r,
            _ = cancel.cancelled() => Err(DeployError::Cancelled),
        };
        out.flush().await;
        result
    }
}

impl KubeDeployer {
    async fn run(
        &self,
        req: &DeployRequest,
        out: &mut Out<'_, '_>,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        let started = tokio::time::Instant::now();
        // A resumed deploy's progress lines count from its first start (docs/crash-safety.md).
        let resumed = req.resumed.clone().unwrap_or_default();
        let shown_start = started.checked_sub(resumed.elapsed).unwrap_or(started);
        let vars = Vars(req.variables.clone());
        let expanded: Vec<String> = req.args.iter().map(|a| vars.expand(a)).collect();
        if expanded.iter().any(|a| a == "--help" || a == "-h") {
            for l in DeployArgs::help().lines() {
                out.line(l).await;
            }
            return Ok(DeployReport::default());
        }
        let args = DeployArgs::parse(&expanded)?;
        let settings = Settings::resolve(&args, &vars)?;

        // 1. Target. A workstation run uses the person's own kubeconfig and context. A deploy
        // job uses only the runner's targets: it may never bring a kubeconfig, context or
        // server of its own, and without targets it gets no deploy at all (docs/deploy.md).
        let (target, facts): (DeployTarget, Option<&JobFacts>) = match &req.origin {
            Origin::Workstation => match &settings.kubeconfig {
                Some(path) => (
                    workstation_target(path.clone(), settings.context.clone()),
                    None,
                ),
                None => {
                    return Err(DeployError::Input(
                        "no kubeconfig: pass --kubeconfig PATH or set KUBECONFIG".into(),
                    ));
                }
            },
            Origin::Job(facts) => {
                if req.targets.is_empty() {
                    return Err(target::no_targets());
                }
                if settings.kubeconfig.is_some() {
                    return Err(DeployError::Input(
                        "--kubeconfig is for `ferry deploy` on a workstation; in a deploy job the runner's deploy targets hold the credentials".into(),
                    ));
                }
                if settings.context.is_some() {
                    return Err(DeployError::Input(
                        "--context is for `ferry deploy` on a workstation; in a deploy job the runner's deploy target names the context".into(),
                    ));
                }
                (
                    target::select_target(&req.targets, &settings, facts)?.clone(),
                    Some(facts),
                )
            }
        };
        let workstation = facts.is_none();
        let kc = read_kubeconfig(&target)?;
        let namespace = target::default_namespace(&settings, &target, &kc.namespace);
        out.line(&format!(
            "ferry deploy → target {:?} (context {}), namespace {namespace}, manager {}",
            target.name, kc.context, settings.field_manager
        ))
        .await;

        // 2. Render and validate (no cluster contact).
        let version = vars
            .non_empty("CI_COMMIT_TAG")
            .or_else(|| vars.non_empty("CI_COMMIT_SHORT_SHA"))
            .map(str::to_string);
        let mut extra = vec![("NAMESPACE".to_string(), namespace.clone())];
        if let Some(v) = version {
            extra.push(("VERSION".to_string(), v));
        }
        // Reading the manifests is blocking file system work on files a job controls: it runs on
        // a blocking thread, bounded (files::Limits) and stopped by the job's cancellation and
        // deadline, so a hostile tree can never hold an async worker (docs/deploy.md, "Limits").
        let stop = Stop {
            cancel: cancel.clone(),
            deadline: req
                .remaining
                .and_then(|r| started.into_std().checked_add(r)),
        };
        let (dir, entries, template, vars2) = (
            req.project_dir.clone(),
            settings.manifests.clone(),
            settings.template,
            vars.clone(),
        );
        let limits = self.limits;
        let mut rendered = tokio::task::spawn_blocking(move || {
            render::render(
                &dir,
                &entries,
                !workstation,
                template,
                &vars2,
                &extra,
                &limits,
                &stop,
            )
        })
        .await
        .map_err(|e| DeployError::Input(format!("reading the manifests failed: {e}")))??;
        render::sort_for_apply(&mut rendered.manifests);
        let mode = match settings.template {
            TemplateMode::Placeholders => "placeholders",
            TemplateMode::Envsubst => "envsubst",
            TemplateMode::None => "no templating",
        };
        let used = if rendered.used.is_empty() || settings.template == TemplateMode::None {
            mode.to_string()
        } else {
            format!("{mode}: {}", rendered.used.join(", "))
        };
        out.line(&format!(
            "rendered {} object{} from {} ({used})",
            rendered.manifests.len(),
            if rendered.manifests.len() == 1 {
                ""
            } else {
                "s"
            },
            settings.manifests.join(", ")
        ))
        .await;
        for w in &rendered.warnings {
            out.line(&format!("  warning: {w}")).await;
        }
        if settings.dry_run == DryRunMode::Render {
            out.line(
                "dry run (render): nothing is sent to the cluster; Secret values are redacted",
            )
            .await;
            for l in render::print_rendered(&rendered.manifests).lines() {
                out.line(l).await;
            }
            return Ok(DeployReport {
                applied: 0,
                objects: Vec::new(),
            });
        }

        // 3. Cluster, discovery, policy — all before anything is written.
        let cluster = Cluster::connect(&target, kc).await?;
        let version = cluster
            .call(&Op::new("get", "version"), || {
                cluster.client.apiserver_version()
            })
            .await?;
        out.line(&format!(
            "cluster {} (Kubernetes {})",
            cluster.host, version.git_version
        ))
        .await;
        let planned = apply::plan(&cluster, rendered.manifests, &target, &namespace).await?;

        // 4. Server dry run.
        if settings.dry_run == DryRunMode::Server {
            return self
                .server_dry_run(&cluster, &planned, &settings, out)
                .await;
        }

        // 5. Apply in kind order.
        let opts = ApplyOptions {
            field_manager: &settings.field_manager,
            force: settings.force_conflicts,
            dry_run: false,
        };
        let mut applied: Vec<Applied> = Vec::new();
        let width = planned
            .iter()
            .map(|p| p.display().len())
            .max()
            .unwrap_or(0)
            .min(60);
        for (i, p) in planned.iter().enumerate() {
            let r = apply::apply_one(&cluster, p, &opts).await?;
            let mut outcome = apply::outcome(&r.before, &r.after);
            let mut line = format!("  {:<width$} {}", p.display(), outcome.as_str());
            if let Some(change) = apply::image_change(&r.before, &r.after) {
                line.push_str(&format!("   {change}"));
            }
            // Applied again after a restart: what the earlier ferry changed is still this
            // deploy's change, which a failed rollout rolls back.
            if outcome == Outcome::Unchanged && resumed.changed.contains(&p.key()) {
                outcome = Outcome::Configured;
                line.push_str(" (changed by this deploy before ferry was restarted)");
            }
            out.line(&line).await;
            for w in &r.warnings {
                out.line(&format!("  warning: {w}")).await;
            }
            let a = Applied {
                planned: p.clone(),
                resource: r.resource,
                outcome,
                live: r.after,
            };
            if a.planned.manifest.kind == "CustomResourceDefinition" {
                apply::wait_crd_established(&cluster, &a, Duration::from_secs(60)).await?;
                let next_is_crd = planned
                    .get(i + 1)
                    .is_some_and(|n| n.manifest.kind == "CustomResourceDefinition");
                if !next_is_crd {
                    cluster.forget_discovery().await;
                }
            }
            applied.push(a);
        }
        let objects: Vec<(String, String)> = applied
            .iter()
            .map(|a| (a.display(), a.outcome.as_str().to_string()))
            .collect();
        report(
            req,
            crate::Phase::Waiting {
                changed: applied
                    .iter()
                    .filter(|a| a.outcome != Outcome::Unchanged)
                    .map(|a| a.key())
                    .collect(),
            },
        )
        .await;

        // 6. Wait for all workloads in parallel.
        let workloads: Vec<&Applied> = applied
            .iter()
            .filter(|a| crate::health::is_workload(&a.planned.manifest.kind))
            .collect();
        let mut failures = Vec::new();
        if settings.wait && !workloads.is_empty() {
            // A resumed wait gets what is left of its timeout, less the time since its first
            // wait began, applying again included (docs/crash-safety.md).
            let left = match resumed.waited {
                Some(w) => settings
                    .timeout
                    .saturating_sub(w + started.elapsed())
                    .max(Duration::from_secs(1)),
                None => settings.timeout,
            };
            let (timeout, capped) = self.effective_timeout(left, req.remaining, started.elapsed());
            let names: Vec<String> = workloads.iter().map(|w| w.display()).collect();
            out.line(&format!(
                "waiting {}for {} (timeout {}{})",
                if resumed.waited.is_some() {
                    "again "
                } else {
                    ""
                },
                names.join(", "),
                format_duration(timeout),
                if capped {
                    ", capped by the job timeout"
                } else if resumed.waited.is_some() {
                    ", what is left of it"
                } else {
                    ""
                }
            ))
            .await;
            let cfg = self.wait_config(&settings, timeout, shown_start);
            let results = wait_all(&cluster, &workloads, &cfg, cancel, out).await;
            for (w, r) in workloads.iter().zip(results) {
                match r {
                    WaitResult::Done(_) => {}
                    WaitResult::Cancelled => return Err(DeployError::Cancelled),
                    WaitResult::Failed(f) => failures.push(((*w).clone(), f)),
                }
            }
        }

        // 7. Failures: explain, roll back, fail.
        if !failures.is_empty() {
            report(req, crate::Phase::Failed).await;
            for (_, f) in &failures {
                out.line(&format!("FAILED {}: {}", f.workload, f.summary))
                    .await;
                for d in &f.details {
                    out.line(&format!("  {d}")).await;
                }
            }
            self.roll_back(
                &cluster,
                &failures,
                &settings,
                req,
                (started, shown_start),
                cancel,
                out,
            )
            .await;
            self.print_summary(&cluster, &applied, &vars, out).await;
            let text: Vec<String> = failures
                .iter()
                .map(|(_, f)| format!("{}: {}", f.workload, f.summary))
                .collect();
            return Err(DeployError::Rollout(format!(
                "rollout failed: {}",
                text.join("; ")
            )));
        }

        // 8. Summary.
        self.print_summary(&cluster, &applied, &vars, out).await;
        Ok(DeployReport {
            applied: applied.len(),
            objects,
        })
    }

    /// How to wait for workloads (the deploy's and, after a rollback, the undone ones) for
    /// `timeout` from now; progress lines count from `started`.
    fn wait_config(
        &self,
        settings: &Settings,
        timeout: Duration,
        started: tokio::time::Instant,
    ) -> WaitConfig {
        WaitConfig {
            deadline: deadline_after(timeout),
            start: started,
            fail_fast: settings.fail_fast,
            grace_override: settings.fail_fast_grace,
            diagnose_every: self.diagnose_every,
            timeout_text: format_duration(timeout),
        }
    }

    fn effective_timeout(
        &self,
        timeout: Duration,
        remaining: Option<Duration>,
        elapsed: Duration,
    ) -> (Duration, bool) {
        match remaining {
            Some(rem) => {
                let cap = rem
                    .saturating_sub(elapsed)
                    .saturating_sub(self.job_timeout_margin)
                    .max(Duration::from_secs(1));
                if cap < timeout {
                    (cap, true)
                } else {
                    (timeout, false)
                }
            }
            None => (timeout, false),
        }
    }

    async fn server_dry_run(
        &self,
        cluster: &Cluster,
        planned: &[apply::Planned],
        settings: &Settings,
        out: &mut Out<'_, '_>,
    ) -> Result<DeployReport, DeployError> {
        out.line("dry run (server): every object is sent with dryRun=All; nothing is persisted or waited for").await;
        let opts = ApplyOptions {
            field_manager: &settings.field_manager,
            force: settings.force_conflicts,
            dry_run: true,
        };
        let mut errors = Vec::new();
        for p in planned {
            if p.resource.is_none() {
                out.line(&format!(
                    "  {}: its CRD is not installed yet; cannot dry-run",
                    p.display()
                ))
                .await;
                continue;
            }
            match apply::apply_one(cluster, p, &opts).await {
                Ok(r) => {
                    let before = r.before.as_ref().map(obj_value);
                    let lines =
                        apply::diff(&p.manifest.kind, before.as_ref(), &obj_value(&r.after));
                    let state = if r.before.is_none() {
                        "would be created"
                    } else if lines.is_empty() {
                        "unchanged"
                    } else {
                        "would be configured"
                    };
                    out.line(&format!("  {} {state}", p.display())).await;
                    if r.before.is_some() {
                        for l in lines {
                            out.line(&format!("  {l}")).await;
                        }
                    }
                    for w in r.warnings {
                        out.line(&format!("  warning: {w}")).await;
                    }
                }
                Err(e) => {
                    out.line(&format!("  {} rejected: {e}", p.display())).await;
                    errors.push(format!("{}: {e}", p.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(DeployReport {
                applied: 0,
                objects: Vec::new(),
            })
        } else {
            Err(DeployError::Input(format!(
                "server dry run rejected: {}",
                errors.join("; ")
            )))
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        &self,
        cluster: &Cluster,
        failures: &[(Applied, wait::Failure)],
        settings: &Settings,
        req: &DeployRequest,
        (started, shown_start): (tokio::time::Instant, tokio::time::Instant),
        cancel: &CancellationToken,
        out: &mut Out<'_, '_>,
    ) {
        let candidates: Vec<&Applied> = failures
            .iter()
            .map(|(w, _)| w)
            .filter(|w| {
                matches!(
                    w.planned.manifest.kind.as_str(),
                    "Deployment" | "StatefulSet" | "DaemonSet"
                )
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        if settings.rollback == RollbackMode::None {
            for w in &candidates {
                out.line(&format!(
                    "rollback: FERRY_ROLLBACK=none — to revert: {}",
                    rollback::undo_command(w)
                ))
                .await;
            }
            return;
        }
        let mut undone: Vec<Applied> = Vec::new();
        for w in candidates {
            if w.outcome == Outcome::Unchanged {
                out.line(&format!(
                    "rollback: {} was not changed by this deploy; nothing to undo",
                    w.display()
                ))
                .await;
                continue;
            }
            match rollback::undo(cluster, w).await {
                Ok(Undo::RolledBack { to_revision }) => {
                    out.line(&format!(
                        "rollback: {} → revision {to_revision} (like `{}`)",
                        w.display(),
                        rollback::undo_command(w)
                    ))
                    .await;
                    // re-read so the wait starts from the undone object
                    let api = w.api(cluster);
                    let name = &w.planned.manifest.name;
                    let mut w2 = w.clone();
                    if let Ok(o) = cluster.call(&w.get_op(), || api.get(name)).await {
                        w2.live = o;
                    }
                    undone.push(w2);
                }
                Ok(Undo::NoHistory) => {
                    out.line(&format!(
                        "rollback: {} has no previous revision (first deploy?); left as it is",
                        w.display()
                    ))
                    .await;
                }
                Ok(Undo::Skipped) => {
                    out.line(&format!(
                        "rollback: {} — the previous revision has the same pod template; skipped",
                        w.display()
                    ))
                    .await;
                }
                Err(e) => {
                    out.line(&format!("rollback of {} failed: {e}", w.display()))
                        .await
                }
            }
        }
        if undone.is_empty() {
            return;
        }
        let (timeout, _) =
            self.effective_timeout(settings.timeout, req.remaining, started.elapsed());
        out.line(&format!(
            "waiting for the rollback (timeout {})",
            format_duration(timeout)
        ))
        .await;
        // Progress lines count from the line's first start (docs/crash-safety.md).
        let cfg = self.wait_config(settings, timeout, shown_start);
        let refs: Vec<&Applied> = undone.iter().collect();
        let results = wait_all(cluster, &refs, &cfg, cancel, out).await;
        for (w, r) in undone.iter().zip(results) {
            match r {
                WaitResult::Done(_) => {
                    out.line(&format!(
                        "rollback of {} complete; the job still fails",
                        w.display()
                    ))
                    .await
                }
                WaitResult::Failed(f) => {
                    out.line(&format!(
                        "rollback of {} did not complete: {}",
                        w.display(),
                        f.summary
                    ))
                    .await
                }
                WaitResult::Cancelled => {}
            }
        }
    }

    async fn print_summary(
        &self,
        cluster: &Cluster,
        applied: &[Applied],
        vars: &Vars,
        out: &mut Out<'_, '_>,
    ) {
        let mut lines = Vec::new();
        for a in applied {
            let kind = a.planned.manifest.kind.as_str();
            if !matches!(
                kind,
                "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "Service" | "Ingress"
            ) {
                continue;
            }
            let obj: Value = match a.fetch(cluster).await {
                Ok(o) => o,
                Err(_) => obj_value(&a.live),
            };
            if let Some(l) = summary::line(&a.display(), kind, &obj) {
                lines.push(l);
            }
        }
        if !lines.is_empty() {
            out.line("summary:").await;
            for l in lines {
                out.line(&format!("  {l}")).await;
            }
        }
        if let Some(url) = vars.non_empty("CI_ENVIRONMENT_URL") {
            out.line(&format!("environment: {url}")).await;
        }
    }
}

/// Tells the runner that the deploy's phase changes and waits until it has recorded it (a
/// runner that went away or dropped the answer is no error): a rollback must not start before
/// its `failed` phase is journaled, or a restart would apply the failed manifests again
/// (docs/crash-safety.md).
async fn report(req: &DeployRequest, phase: crate::Phase) {
    if let Some(p) = &req.progress {
        let (done, recorded) = tokio::sync::oneshot::channel();
        if p.send((phase, done)).is_ok() {
            let _ = recorded.await;
        }
    }
}

/// Waits for all workloads in parallel, writing their progress lines as they come.
async fn wait_all(
    cluster: &Cluster,
    workloads: &[&Applied],
    cfg: &WaitConfig,
    cancel: &CancellationToken,
    out: &mut Out<'_, '_>,
) -> Vec<WaitResult> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let futs: Vec<_> = workloads
        .iter()
        .map(|w| wait::wait_workload(cluster, w, cfg, tx.clone(), cancel))
        .collect();
    drop(tx);
    let mut all = std::pin::pin!(futures::future::join_all(futs));
    let results = loop {
        tokio::select! {
            biased;
            Some(line) = rx.recv() => out.line(&line).await,
            r = &mut all => break r,
        }
    };
    while let Ok(line) = rx.try_recv() {
        out.line(&line).await;
    }
    results
}
