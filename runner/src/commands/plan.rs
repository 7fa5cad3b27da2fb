//! `ferry plan PAYLOAD.json`: print the plan ferry would execute, secrets redacted.

use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::PlanArgs;
use crate::gitlab::parse_payload;
use crate::plan::{JobContext, compile};

pub fn plan(path: &Path, args: &PlanArgs) -> anyhow::Result<()> {
    let config = ferry_config::load(path)?;
    let runner = match &args.runner {
        Some(name) => config.runners.iter().find(|r| &r.name == name),
        None => config.runners.first(),
    };
    let Some(runner) = runner else {
        bail!("{}: no [[runners]] entry to plan with", path.display());
    };
    let bytes = std::fs::read(&args.payload)
        .with_context(|| format!("reading {}", args.payload.display()))?;
    let payload = parse_payload(&bytes).with_context(|| args.payload.display().to_string())?;
    let ctx = JobContext {
        working_dir: super::run::default_working_dir(),
        concurrent_id: 0,
        concurrent_project_id: 0,
        tls_ca_pem: None,
        object_cache: true,
        keep_step_output: true,
    };
    let plan =
        compile(&payload, runner, &ctx).map_err(|e| anyhow::anyhow!("job {}: {e}", payload.id))?;
    let mut text = serde_json::to_string_pretty(&plan)?;
    for secret in &plan.masks.values {
        text = text.replace(secret.as_str(), "[MASKED]");
    }
    println!("{text}");
    Ok(())
}
