//! `ferry register`: gitlab-runner's non-interactive flags (and env vars), prompting on a
//! terminal for what is missing unless --non-interactive.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use ferry_config::{NewDocker, NewRunner, add_runner, load_or_create_system_id};

use crate::cli::RegisterArgs;
use crate::gitlab::{ClientOptions, GitLabClient, RegisterRequest, parse_expiry};

/// What gitlab-runner says when server-side settings are passed with an authentication token.
pub const GLRT_RESERVED: &str = "Runner configuration other than name and executor configuration is reserved \
(specifically --locked, --access-level, --run-untagged, --maximum-timeout, --paused, --tag-list, and \
--maintenance-note) and can not be specified when registering with a runner authentication token. This \
configuration is specified on the GitLab server. Please try again without specifying any of those arguments.";

fn ask(
    prompt: &str,
    current: Option<String>,
    input: &mut dyn BufRead,
) -> anyhow::Result<Option<String>> {
    println!("{prompt}");
    if let Some(c) = &current {
        print!("[{c}]: ");
    }
    std::io::stdout().flush().ok();
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading from the terminal")?;
    let line = line.trim();
    Ok(if line.is_empty() {
        current
    } else {
        Some(line.to_string())
    })
}

/// Fill missing answers from the terminal, as `gitlab-runner register` does.
fn prompt(args: &mut RegisterArgs) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    args.url = ask(
        "Enter the GitLab instance URL (for example, https://gitlab.com/):",
        args.url.take(),
        &mut input,
    )?;
    let token = args.token.take().or_else(|| args.registration_token.take());
    let token = ask("Enter the registration token:", token, &mut input)?;
    if token.as_deref().is_some_and(|t| t.starts_with("glrt-")) {
        args.token = token;
    } else {
        args.registration_token = token;
    }
    args.name = ask("Enter a name for the runner:", args.name.take(), &mut input)?;
    if args.registration_token.is_some() {
        args.tag_list = ask(
            "Enter tags for the runner (comma-separated):",
            args.tag_list.take(),
            &mut input,
        )?;
        args.maintenance_note = ask(
            "Enter optional maintenance note for the runner:",
            args.maintenance_note.take(),
            &mut input,
        )?;
    }
    let executor = args.executor.take().or(Some("docker".into()));
    args.executor = ask("Enter an executor: docker", executor, &mut input)?;
    args.docker.image = ask(
        "Enter the default Docker image (for example, ruby:2.7):",
        args.docker.image.take(),
        &mut input,
    )?;
    Ok(())
}

pub async fn register(path: &Path, mut args: RegisterArgs) -> anyhow::Result<()> {
    if !args.non_interactive && std::io::stdin().is_terminal() {
        prompt(&mut args)?;
    }
    let Some(url) = args.url.clone().filter(|u| !u.is_empty()) else {
        bail!("register: --url (or CI_SERVER_URL) is required");
    };
    let executor = args.executor.clone().unwrap_or_else(|| "docker".into());
    if executor != "docker" {
        bail!(
            "register: executor {executor:?} is not supported; ferry runs jobs with the docker executor"
        );
    }
    let Some(image) = args.docker.image.clone().filter(|i| !i.is_empty()) else {
        bail!(
            "register: --docker-image (or DOCKER_IMAGE) is required: the image for jobs that set none"
        );
    };
    let auth_token = match (&args.token, &args.registration_token) {
        (Some(t), _) if !t.is_empty() => Some(t.clone()),
        (_, Some(t)) if t.starts_with("glrt-") => Some(t.clone()),
        _ => None,
    };
    let system_id = load_or_create_system_id(path)?;
    // As in `load`: files from the certificate directories unless given (docs/configuration.md).
    let pair_given = args.tls_cert_file.is_some() || args.tls_key_file.is_some();
    let [found_ca, found_cert, found_key] =
        ferry_config::certs::find_for_url(&url, &ferry_config::certs::certificate_dirs(path));
    let client = GitLabClient::new(&ClientOptions {
        url: url.clone(),
        tls_ca_file: args.tls_ca_file.clone().map(Into::into).or(found_ca),
        // The client pair: both given, or both found, never one of each.
        tls_cert_file: if pair_given {
            args.tls_cert_file.clone().map(Into::into)
        } else {
            found_cert
        },
        tls_key_file: if pair_given {
            args.tls_key_file.clone().map(Into::into)
        } else {
            found_key
        },
        ..ClientOptions::default()
    })?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| hostname().unwrap_or_else(|| "ferry".into()));
    let now = unix_now();

    let (id, token, expires) = if let Some(token) = auth_token {
        let server_side = args.tag_list.is_some()
            || args.locked.is_some()
            || args.access_level.is_some()
            || args.run_untagged.is_some()
            || args.maximum_timeout.is_some()
            || args.paused.is_some()
            || args.maintenance_note.is_some();
        if server_side {
            bail!("{GLRT_RESERVED}");
        }
        let v = client
            .verify(&token, &system_id)
            .await
            .context("verifying the runner authentication token")?;
        (
            v.id,
            token,
            v.token_expires_at.as_deref().and_then(parse_expiry),
        )
    } else {
        let Some(reg) = args.registration_token.clone().filter(|t| !t.is_empty()) else {
            bail!("register: a token is required: --token (glrt-...) or --registration-token");
        };
        let tags: Vec<String> = args
            .tag_list
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let request = RegisterRequest {
            description: name.clone(),
            run_untagged: args.run_untagged.unwrap_or(tags.is_empty()),
            tags,
            locked: args.locked.unwrap_or(true),
            access_level: args.access_level.clone(),
            maximum_timeout: args.maximum_timeout,
            paused: args.paused.unwrap_or(false),
            maintenance_note: args.maintenance_note.clone(),
        };
        let r = client
            .register(&reg, &request)
            .await
            .context("registering the runner")?;
        (
            Some(r.id),
            r.token,
            r.token_expires_at.as_deref().and_then(parse_expiry),
        )
    };

    let mut runner = NewRunner::docker(&name, &url, &token, &image);
    runner.id = id;
    runner.token_obtained_at = Some(now);
    runner.token_expires_at = expires;
    runner.limit = args.limit;
    runner.request_concurrency = args.request_concurrency;
    runner.output_limit_kb = args.output_limit;
    runner.builds_dir = args.builds_dir.clone();
    runner.cache_dir = args.cache_dir.clone();
    runner.environment = args.env.clone();
    runner.tls_ca_file = args.tls_ca_file.clone();
    runner.tls_cert_file = args.tls_cert_file.clone();
    runner.tls_key_file = args.tls_key_file.clone();
    let d = &args.docker;
    runner.docker = NewDocker {
        host: d.host.clone(),
        privileged: Some(d.privileged.unwrap_or(false)),
        volumes: if d.volumes.is_empty() {
            vec!["/cache".into()]
        } else {
            d.volumes.clone()
        },
        pull_policy: d.pull_policy.clone(),
        network_mode: d.network_mode.clone(),
        memory: d.memory.clone(),
        cpus: d.cpus.clone(),
        dns: d.dns.clone(),
        extra_hosts: d.extra_hosts.clone(),
        allowed_images: d.allowed_images.clone(),
        ..runner.docker
    };
    add_runner(path, &runner)?;
    println!(
        "Runner registered successfully. Feel free to start it, but if it's running already the config should be automatically reloaded!\n\nConfiguration (with the authentication token) was saved in {:?}",
        path.display().to_string()
    );
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
