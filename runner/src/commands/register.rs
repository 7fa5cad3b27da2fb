//! `ferry register`: gitlab-runner's non-interactive flags (and env vars), prompting on a
//! terminal for what is missing unless --non-interactive.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use ferry_config::{
    NewRunner, add_runner_table, load_or_create_system_id, runner_table, set_runner_credentials,
};
use toml_edit::Table;

use super::register_table::{
    DROPPED_FOR_DOCKER, add_cache_volume, find, get_str, merge_template, order_keys, resolve,
    set_str, write_values,
};

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

/// What registration needs, from the flags, the template and the terminal.
struct Answers {
    token: Option<String>,
    registration_token: Option<String>,
    tag_list: Option<String>,
    maintenance_note: Option<String>,
}

/// Fill missing answers from the terminal, as `gitlab-runner register` does.
fn prompt(entry: &mut Table, a: &mut Answers) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let url = ask(
        "Enter the GitLab instance URL (for example, https://gitlab.com/):",
        nonempty(get_str(entry, "url")),
        &mut input,
    )?;
    set_str(entry, "url", url.as_deref().unwrap_or(""));
    let token = a.token.take().or_else(|| a.registration_token.take());
    let token = ask("Enter the registration token:", token, &mut input)?;
    if token.as_deref().is_some_and(|t| t.starts_with("glrt-")) {
        a.token = token;
    } else {
        a.registration_token = token;
    }
    let name = ask(
        "Enter a name for the runner:",
        nonempty(get_str(entry, "name")),
        &mut input,
    )?;
    set_str(entry, "name", name.as_deref().unwrap_or(""));
    if a.registration_token.is_some() {
        a.tag_list = ask(
            "Enter tags for the runner (comma-separated):",
            a.tag_list.take(),
            &mut input,
        )?;
        a.maintenance_note = ask(
            "Enter optional maintenance note for the runner:",
            a.maintenance_note.take(),
            &mut input,
        )?;
    }
    let executor = nonempty(get_str(entry, "executor")).or(Some("docker".into()));
    let executor = ask("Enter an executor: docker", executor, &mut input)?;
    set_str(entry, "executor", executor.as_deref().unwrap_or("docker"));
    let image = ask(
        "Enter the default Docker image (for example, ruby:2.7):",
        nonempty(get_str(entry, "docker.image")),
        &mut input,
    )?;
    set_str(entry, "docker.image", image.as_deref().unwrap_or(""));
    Ok(())
}

/// The `[[runners]]` entry of `--template-config` (gitlab-runner's `configTemplate`: the file
/// must hold exactly one).
fn load_template(file: &str) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!("couldn't load configuration template file {file:?} (--template-config)")
    })?;
    let doc = text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| anyhow::anyhow!("couldn't load configuration template file {file:?}: {e}"))?;
    let runners = match doc.get("runners") {
        None => None,
        Some(item) => Some(item.as_array_of_tables().ok_or_else(|| {
            anyhow::anyhow!(
                "configuration template {file:?}: `runners` must be written as [[runners]]"
            )
        })?),
    };
    match runners {
        Some(r) if r.len() == 1 => Ok(r.get(0).cloned().unwrap_or_default()),
        _ => bail!(
            "configuration template {file:?} must contain exactly one [[runners]] entry (--template-config)"
        ),
    }
}

pub async fn register(path: &Path, args: RegisterArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let interactive = std::io::stdin().is_terminal();
    register_with(path, &args, &env, interactive).await
}

/// `ferry register` with the environment and the terminal given (tests pass their own).
pub async fn register_with(
    path: &Path,
    args: &RegisterArgs,
    env: &dyn Fn(&str) -> Option<String>,
    terminal: bool,
) -> anyhow::Result<()> {
    for a in &args.ignored {
        eprintln!(
            "WARNING: argument {a:?} is not a flag or a flag's value; ignored, as gitlab-runner ignores it"
        );
    }
    let r = resolve(&args.given, env).map_err(|e| anyhow::anyhow!("register: {e}"))?;
    if let Some(level) = r.str("access-level").filter(|l| !l.is_empty())
        && level != "not_protected"
        && level != "ref_protected"
    {
        bail!("register: --access-level {level:?} is not valid: not_protected or ref_protected");
    }

    // What gitlab-runner starts from: its defaults (docs/commands.md), the flags over them,
    // then the template filling what they left empty.
    let mut base = NewRunner::docker(&hostname().unwrap_or_else(|| "ferry".into()), "", "", "");
    base.executor = String::new();
    base.docker.volumes.clear();
    let mut entry = runner_table(&base);
    write_values(&mut entry, &r, &[]);
    if let Some(file) = r.str("template-config").filter(|f| !f.is_empty()) {
        let template = load_template(&file)?;
        merge_template(&mut entry, &template);
    }
    if get_str(&entry, "executor").is_none_or(|e| e.is_empty()) {
        set_str(&mut entry, "executor", "docker");
    }

    let mut answers = Answers {
        token: r.str("token").filter(|t| !t.is_empty()),
        registration_token: r.str("registration-token").filter(|t| !t.is_empty()),
        tag_list: r.str("tag-list"),
        maintenance_note: r.str("maintenance-note"),
    };
    let non_interactive = r.bool("non-interactive").unwrap_or(false);
    if !non_interactive && terminal {
        prompt(&mut entry, &mut answers)?;
    }

    let executor = get_str(&entry, "executor").unwrap_or_default();
    if executor != "docker" {
        bail!(
            "register: executor {executor:?} is not supported; ferry runs jobs with the docker executor"
        );
    }
    // gitlab-runner keeps only the executor's sections (askExecutorOptions).
    for section in DROPPED_FOR_DOCKER {
        let given: Vec<String> = r
            .values
            .keys()
            .filter(|name| {
                find(name).is_some_and(|f| {
                    f.toml
                        .is_some_and(|p| p.split('.').next() == Some(*section))
                })
            })
            .map(|n| format!("--{n}"))
            .collect();
        if entry.remove(section).is_some() || !given.is_empty() {
            eprintln!(
                "WARNING: [runners.{section}] is not written for the docker executor, as gitlab-runner \
                 does not write it{}",
                if given.is_empty() {
                    String::new()
                } else {
                    format!(" ({} accepted and ignored)", given.join(", "))
                }
            );
        }
    }

    let Some(url) = get_str(&entry, "url").filter(|u| !u.is_empty()) else {
        bail!("register: --url (or CI_SERVER_URL) is required");
    };
    if get_str(&entry, "docker.image").is_none_or(|i| i.is_empty()) {
        bail!(
            "register: --docker-image (or DOCKER_IMAGE) is required: the image for jobs that set none"
        );
    }
    let auth_token = match (&answers.token, &answers.registration_token) {
        (Some(t), _) => Some(t.clone()),
        (_, Some(t)) if t.starts_with("glrt-") => Some(t.clone()),
        _ => None,
    };
    let system_id = load_or_create_system_id(path)?;
    // As in `load`: files from the certificate directories unless given (docs/configuration.md).
    let tls = |k: &str| get_str(&entry, k).filter(|v| !v.is_empty());
    let (tls_ca, tls_cert, tls_key) = (
        tls("tls-ca-file"),
        tls("tls-cert-file"),
        tls("tls-key-file"),
    );
    let pair_given = tls_cert.is_some() || tls_key.is_some();
    let [found_ca, found_cert, found_key] =
        ferry_config::certs::find_for_url(&url, &ferry_config::certs::certificate_dirs(path));
    let client = GitLabClient::new(&ClientOptions {
        url: url.clone(),
        tls_ca_file: tls_ca.map(Into::into).or(found_ca),
        // The client pair: both given, or both found, never one of each.
        tls_cert_file: if pair_given {
            tls_cert.map(Into::into)
        } else {
            found_cert
        },
        tls_key_file: if pair_given {
            tls_key.map(Into::into)
        } else {
            found_key
        },
        ..ClientOptions::default()
    })?;
    let name = get_str(&entry, "name").unwrap_or_default();
    let now = unix_now();
    let locked = r.bool("locked").unwrap_or(true);
    let run_untagged = r.bool("run-untagged");
    let paused = r.bool("paused").unwrap_or(false);
    let maximum_timeout = r.int("maximum-timeout").unwrap_or(0);
    let access_level = r.str("access-level").filter(|a| !a.is_empty());

    let (id, token, expires) = if let Some(token) = auth_token {
        // gitlab-runner's ensureServerConfigArgsEmpty: these are set in GitLab for such tokens.
        let server_side = !locked
            || access_level.is_some()
            || run_untagged == Some(true)
            || maximum_timeout != 0
            || paused
            || answers.tag_list.as_deref().is_some_and(|t| !t.is_empty())
            || answers
                .maintenance_note
                .as_deref()
                .is_some_and(|t| !t.is_empty());
        if server_side {
            if answers.registration_token.as_deref() == Some(token.as_str()) {
                eprintln!(
                    "WARNING: an authentication token was given in --registration-token: --locked, \
                     --access-level, --run-untagged, --maximum-timeout, --paused, --tag-list and \
                     --maintenance-note are ignored (they are set in GitLab for such tokens)"
                );
            } else {
                bail!("{GLRT_RESERVED}");
            }
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
        let Some(reg) = answers.registration_token.clone() else {
            bail!("register: a token is required: --token (glrt-...) or --registration-token");
        };
        let tags: Vec<String> = answers
            .tag_list
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let request = RegisterRequest {
            description: name.clone(),
            run_untagged: run_untagged.unwrap_or(false) || tags.is_empty(),
            tags,
            locked,
            access_level,
            maximum_timeout: u64::try_from(maximum_timeout).ok().filter(|t| *t > 0),
            paused,
            maintenance_note: answers.maintenance_note.clone(),
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

    set_runner_credentials(&mut entry, id, &token, now, expires);
    add_cache_volume(&mut entry);
    order_keys(&mut entry);
    if let Err(e) = add_runner_table(path, entry) {
        // gitlab-runner removes the runner it just registered unless --leave-runner.
        if !r.bool("leave-runner").unwrap_or(false) {
            let manager = token.starts_with("glrt-").then_some(system_id.as_str());
            if let Err(u) = client.unregister(&token, manager).await {
                eprintln!("WARNING: removing the runner from GitLab after the failure: {u:#}");
            }
        }
        return Err(e.into());
    }
    // gitlab-runner's warnings when this runner's limits exceed the global `concurrent`
    if let Ok(c) = ferry_config::load(path) {
        let concurrent = i64::try_from(c.global.concurrent).unwrap_or(i64::MAX);
        if let Some(limit) = r.int("limit").filter(|l| *l > concurrent) {
            eprintln!(
                "WARNING: The specified runner job concurrency limit ({limit}) is larger than current global concurrency limit ({concurrent}). The global concurrent limit will not be increased and takes precedence."
            );
        }
        if let Some(rc) = r.int("request-concurrency").filter(|l| *l > concurrent) {
            eprintln!(
                "WARNING: The specified runner request concurrency ({rc}) is larger than the current global concurrent limit ({concurrent}). The global concurrent limit will not be increased and takes precedence."
            );
        }
    }
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
