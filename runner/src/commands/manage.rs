//! `ferry unregister`, `ferry verify`, `ferry list`.

use std::path::Path;

use anyhow::{Context, bail};
use ferry_config::{RunnerSection, load_or_create_system_id, remove_runners};

use crate::api::ApiError;
use crate::cli::{UnregisterArgs, VerifyArgs};
use crate::gitlab::{ClientOptions, GitLabClient};

fn client_for(r: &RunnerSection) -> anyhow::Result<GitLabClient> {
    GitLabClient::new(&ClientOptions::from_runner(r))
        .with_context(|| format!("runner {:?}", r.name))
}

/// Whether GitLab says the token is unknown (the runner was deleted or the token reset).
fn is_gone(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Status {
            status: 403 | 404 | 410,
            ..
        }
    )
}

pub async fn unregister(path: &Path, args: &UnregisterArgs) -> anyhow::Result<()> {
    let config = ferry_config::load(path)?;
    let system_id = load_or_create_system_id(path).ok();
    let url_matches = |r: &str, u: &str| r.trim_end_matches('/') == u.trim_end_matches('/');
    let selected: Vec<&RunnerSection> = config
        .runners
        .iter()
        .filter(|r| {
            if args.all_runners {
                true
            } else if let Some(name) = &args.name {
                &r.name == name
            } else {
                args.url.as_deref().is_some_and(|u| url_matches(&r.url, u))
                    && args.token.as_deref() == Some(r.token.expose())
            }
        })
        .collect();
    if selected.is_empty() {
        if let (Some(url), Some(token)) = (&args.url, &args.token) {
            // Not in the file: still unregister it from GitLab, as gitlab-runner does.
            let client = GitLabClient::new(&ClientOptions {
                url: url.clone(),
                ..ClientOptions::default()
            })?;
            client.unregister(token, system_id.as_deref()).await?;
            println!(
                "Unregistering runner from GitLab succeeded (it was not in {})",
                path.display()
            );
            return Ok(());
        }
        bail!("no runner in {} matches the given selector", path.display());
    }
    let mut removed = Vec::new();
    let mut failures = 0;
    for r in selected {
        let client = client_for(r)?;
        match client
            .unregister(r.token.expose(), system_id.as_deref())
            .await
        {
            Ok(()) => {
                println!(
                    "Unregistering runner from GitLab succeeded  runner={} name={}",
                    r.token.short(),
                    r.name
                );
                removed.push(r.token.expose().to_string());
            }
            Err(e) if is_gone(&e) => {
                println!(
                    "Runner is already unknown to GitLab  runner={} name={}",
                    r.token.short(),
                    r.name
                );
                removed.push(r.token.expose().to_string());
            }
            Err(e) => {
                eprintln!(
                    "ERROR: unregistering runner {} ({}): {e}",
                    r.name,
                    r.token.short()
                );
                failures += 1;
            }
        }
    }
    if !removed.is_empty() {
        let n = remove_runners(path, |id| removed.iter().any(|t| t == id.token.expose()))?;
        println!("Removed {n} runner(s) from {}", path.display());
    }
    if failures > 0 {
        bail!(
            "{failures} runner(s) could not be unregistered and were kept in {}",
            path.display()
        );
    }
    Ok(())
}

pub async fn verify(path: &Path, args: &VerifyArgs) -> anyhow::Result<()> {
    let config = ferry_config::load(path)?;
    let system_id = load_or_create_system_id(path)?;
    let mut gone = Vec::new();
    let mut errors = 0;
    for r in config
        .runners
        .iter()
        .filter(|r| args.name.as_ref().is_none_or(|n| &r.name == n))
    {
        let client = client_for(r)?;
        match client.verify(r.token.expose(), &system_id).await {
            Ok(_) => println!(
                "Verifying runner... is valid  runner={} name={}",
                r.token.short(),
                r.name
            ),
            Err(e) if is_gone(&e) => {
                println!(
                    "Verifying runner... is removed  runner={} name={}",
                    r.token.short(),
                    r.name
                );
                gone.push(r.token.expose().to_string());
            }
            Err(e) => {
                eprintln!(
                    "ERROR: Verifying runner... failed  runner={} name={}: {e}",
                    r.token.short(),
                    r.name
                );
                errors += 1;
            }
        }
    }
    if args.delete && !gone.is_empty() {
        let n = remove_runners(path, |id| gone.iter().any(|t| t == id.token.expose()))?;
        println!("Removed {n} invalid runner(s) from {}", path.display());
    }
    if errors > 0 {
        bail!("{errors} runner(s) could not be verified");
    }
    Ok(())
}

pub fn list(path: &Path) -> anyhow::Result<()> {
    let config = ferry_config::load(path)?;
    println!("Listing configured runners  ConfigFile={}", path.display());
    for r in &config.runners {
        println!(
            "{:<30} Executor={} Token={} URL={}",
            r.name,
            r.executor,
            r.token.short(),
            r.url
        );
    }
    for w in &config.warnings {
        eprintln!("WARNING: {}: {w}", path.display());
    }
    Ok(())
}
