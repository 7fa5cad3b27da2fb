//! Resolution of the global section and of each `[[runners]]` entry: defaults, units, checks.

use std::path::PathBuf;
use std::time::Duration;

use crate::duration::{nanos_to_duration, parse_go_duration};
use crate::units::{datetime_to_unix, expand_env, is_go_zero_time, with_default_port};
use crate::walk::{Ctx, Leftover, TableReader, Val};
use crate::{
    Config, ConfigError, DEFAULT_METRICS_PORT, DEFAULT_OUTPUT_LIMIT_KB,
    DEFAULT_SHUTDOWN_TIMEOUT_SECS, GlobalSection, LogFormat, RunnerSection, Secret,
};

use Leftover::{Ignored as I, NotImplemented as N, NotImplementedDefaultTrue as NTrue};

const GLOBAL_KNOWN: &[(&str, Leftover)] = &[
    ("sentry_dsn", I),
    ("user", I),
    ("labels", I),
    ("machine", I),
    ("experimental", I),
];

const SESSION_SERVER_KNOWN: &[(&str, Leftover)] = &[
    ("listen_address", N),
    ("advertise_address", N),
    // register always writes `session_timeout = 1800`; it only matters with a listen address
    ("session_timeout", I),
];

pub(crate) const RUNNER_KNOWN: &[(&str, Leftover)] = &[
    ("pre_get_sources_script", N),
    ("post_get_sources_script", N),
    ("pre_clone_script", N),
    ("post_clone_script", N),
    ("clean_git_config", NTrue),
    ("strict_check_interval", N),
    ("prepare_timeout", N),
    ("get_sources_timeout", N),
    ("artifact", N),
    ("safe_directory_checkout", I),
    ("labels", I),
    ("proxy_exec", I),
    ("step_runner_image", I),
    ("use_slot_cgroups", I),
    ("slot_cgroup_template", I),
    ("referees", I),
    ("experimental", I),
    ("monitoring", N),
    ("ssh", I),
    ("kubernetes", I),
    ("machine", I),
    ("autoscaler", I),
    ("custom", I),
    ("parallels", I),
    ("virtualbox", I),
    ("instance", I),
    ("max_builds", I),
];

pub(crate) fn resolve(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut ctx = Ctx::new(text, file, env);
    let doc =
        toml_edit::Document::parse(text).map_err(|e| crate::walk::syntax_error(file, text, &e))?;
    let mut top = TableReader::new(doc.as_table(), String::new(), 1);
    let global = global(&mut ctx, &mut top)?;

    let mut runners = Vec::new();
    for r in top.tables(&ctx, "runners")? {
        if let Some(runner) = runner(&mut ctx, r)? {
            runners.push(runner);
        }
    }
    if let Some(session) = top.table(&ctx, "session_server")? {
        session.finish(&mut ctx, SESSION_SERVER_KNOWN);
    }
    top.finish(&mut ctx, GLOBAL_KNOWN);
    ctx.warnings.sort_by_key(|w| w.line);
    Ok(Config {
        global,
        runners,
        warnings: ctx.warnings,
    })
}

fn global(ctx: &mut Ctx, t: &mut TableReader) -> Result<GlobalSection, ConfigError> {
    let mut g = GlobalSection::default();
    if let Some(c) = t.int(ctx, "concurrent")? {
        if c.v < 1 {
            return Err(ctx.invalid(c.line, "concurrent", "must be at least 1"));
        }
        g.concurrent = to_usize(ctx, &c, "concurrent")?;
    }
    if let Some(c) = t.int(ctx, "check_interval")?
        && c.v > 0
    {
        g.check_interval = Duration::from_secs(c.v as u64);
    }
    if let Some(l) = t.string(ctx, "log_level")? {
        g.log_level = match l.v.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_string(),
            v @ ("trace" | "debug" | "info" | "warn" | "error" | "fatal" | "panic") => {
                v.to_string()
            }
            _ => {
                return Err(ctx.invalid(
                    l.line,
                    "log_level",
                    "expected one of debug, info, warn, error, fatal, panic",
                ));
            }
        };
    }
    if let Some(f) = t.string(ctx, "log_format")? {
        g.log_format = match f.v.as_str() {
            "runner" => LogFormat::Runner,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(ctx.invalid(
                    f.line,
                    "log_format",
                    "expected one of runner, text, json",
                ));
            }
        };
    }
    if let Some(a) = t.string(ctx, "listen_address")? {
        let a = a.v.trim();
        if !a.is_empty() {
            g.listen_address = Some(with_default_port(a, DEFAULT_METRICS_PORT));
        }
    }
    if let Some(s) = t.int(ctx, "shutdown_timeout")? {
        g.shutdown_timeout = Duration::from_secs(if s.v > 0 {
            s.v as u64
        } else {
            DEFAULT_SHUTDOWN_TIMEOUT_SECS
        });
    }
    if let Some(d) = go_duration(ctx, t, "connection_max_age")? {
        // <= 0 means "never recycle"
        g.connection_max_age = if d.v > 0 {
            nanos_to_duration(d.v)
        } else {
            None
        };
    }
    Ok(g)
}

/// One `[[runners]]` entry. `Ok(None)`: the entry is refused (not the docker executor) and a
/// warning says so; the other entries are still served.
fn runner(ctx: &mut Ctx, mut t: TableReader) -> Result<Option<RunnerSection>, ConfigError> {
    let mut r = RunnerSection::default();
    if let Some(n) = t.string(ctx, "name")? {
        r.name = n.v;
    }
    let shown = if r.name.is_empty() {
        t.path.clone()
    } else {
        format!("{:?}", r.name)
    };
    match t.string(ctx, "executor")? {
        Some(e) if e.v == "docker" => r.executor = e.v,
        Some(e) => {
            let message = format!(
                "runner {shown} uses executor {:?}; ferry only runs the \"docker\" executor, so \
                 this runner is skipped",
                e.v
            );
            ctx.warn(e.line, &t.key_path("executor"), message);
            return Ok(None);
        }
        None => {
            let message = format!(
                "runner {shown} has no executor; ferry needs executor = \"docker\", so this \
                 runner is skipped"
            );
            ctx.warn(t.line, &t.key_path("executor"), message);
            return Ok(None);
        }
    }

    let url = t
        .string(ctx, "url")?
        .ok_or_else(|| ctx.invalid(t.line, &t.key_path("url"), "missing (the GitLab URL)"))?;
    r.url = resolve_url(ctx, &t.key_path("url"), url)?;

    if let Some(id) = t.int(ctx, "id")? {
        r.id = Some(
            u64::try_from(id.v)
                .map_err(|_| ctx.invalid(id.line, &t.key_path("id"), "must not be negative"))?,
        );
    }
    let token = t.string(ctx, "token")?.ok_or_else(|| {
        ctx.invalid(
            t.line,
            &t.key_path("token"),
            "missing (the runner authentication token)",
        )
    })?;
    let (expanded, unset) = expand_env(&token.v, ctx.env);
    if expanded.is_empty() {
        let why = if unset.is_empty() {
            "is empty".to_string()
        } else {
            format!(
                "is empty: environment variable {} is not set",
                unset.join(", ")
            )
        };
        return Err(ctx.invalid(token.line, &t.key_path("token"), why));
    }
    r.token = Secret(expanded);
    r.token_obtained_at = token_time(ctx, &mut t, "token_obtained_at")?;
    r.token_expires_at = token_time(ctx, &mut t, "token_expires_at")?;

    if let Some(l) = t.int(ctx, "limit")? {
        // gitlab-runner only applies a limit > 0
        r.limit = if l.v > 0 {
            to_usize(ctx, &l, &t.key_path("limit"))?
        } else {
            0
        };
    }
    if let Some(c) = t.int(ctx, "request_concurrency")? {
        r.request_concurrency = if c.v > 1 {
            to_usize(ctx, &c, &t.key_path("request_concurrency"))?
        } else {
            1
        };
    }
    if let Some(o) = t.int(ctx, "output_limit")? {
        let kb = match o.v {
            0 => DEFAULT_OUTPUT_LIMIT_KB,
            v if v < 0 => {
                return Err(ctx.invalid(
                    o.line,
                    &t.key_path("output_limit"),
                    "must not be negative",
                ));
            }
            v => v as u64,
        };
        r.output_limit = kb
            .checked_mul(1024)
            .ok_or_else(|| ctx.invalid(o.line, &t.key_path("output_limit"), "is too large"))?;
    }
    if let Some(b) = non_empty(t.string(ctx, "builds_dir")?) {
        r.builds_dir = b;
    }
    if let Some(c) = non_empty(t.string(ctx, "cache_dir")?) {
        r.cache_dir = c;
    }
    if let Some(env) = t.strings(ctx, "environment")? {
        for (i, e) in env.into_iter().enumerate() {
            match e.v.split_once('=') {
                Some((k, v)) if !k.is_empty() => r.environment.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(ctx.invalid(
                        e.line,
                        &format!("{}[{i}]", t.key_path("environment")),
                        format!("expected \"KEY=value\", found {:?}", e.v),
                    ));
                }
            }
        }
    }
    r.clone_url = non_empty(t.string(ctx, "clone_url")?);
    r.pre_build_script = non_empty(t.string(ctx, "pre_build_script")?);
    r.post_build_script = non_empty(t.string(ctx, "post_build_script")?);
    r.tls_ca_file = non_empty(t.string(ctx, "tls-ca-file")?).map(PathBuf::from);
    r.tls_cert_file = non_empty(t.string(ctx, "tls-cert-file")?).map(PathBuf::from);
    r.tls_key_file = non_empty(t.string(ctx, "tls-key-file")?).map(PathBuf::from);
    if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
        return Err(ctx.invalid(
            t.line,
            &t.key_path("tls-cert-file"),
            "tls-cert-file and tls-key-file must be set together",
        ));
    }
    r.shell = non_empty(t.string(ctx, "shell")?);
    if let Some(b) = t.bool(ctx, "debug_trace_disabled")? {
        r.debug_trace_disabled = b.v;
    }
    if let Some(u) = t.int(ctx, "unhealthy_requests_limit")?
        && u.v > 0
    {
        r.unhealthy_requests_limit = u32::try_from(u.v).unwrap_or(u32::MAX);
    }
    if let Some(d) = go_duration(ctx, &mut t, "unhealthy_interval")? {
        match nanos_to_duration(d.v) {
            Some(v) => r.unhealthy_interval = v,
            None => {
                return Err(ctx.invalid(
                    d.line,
                    &t.key_path("unhealthy_interval"),
                    "must not be negative",
                ));
            }
        }
    }
    if let Some(u) = t.int(ctx, "job_status_final_update_retry_limit")?
        && u.v > 0
    {
        r.job_status_final_update_retry_limit = u32::try_from(u.v).unwrap_or(u32::MAX);
    }

    if let Some(mut ff) = t.table(ctx, "feature_flags")? {
        for (name, item, line) in ff.rest(ctx) {
            match item.as_bool() {
                Some(b) => {
                    r.feature_flags.insert(name, b);
                }
                None => {
                    return Err(ctx.invalid(
                        line,
                        &crate::walk::join(&ff.path, &name),
                        format!("expected true or false, found {}", item.type_name()),
                    ));
                }
            }
        }
    }
    if let Some(mut cbd) = t.table(ctx, "custom_build_dir")? {
        if let Some(e) = cbd.bool(ctx, "enabled")? {
            r.custom_build_dir_enabled = e.v;
        }
        cbd.finish(ctx, &[]);
    }
    if let Some(d) = t.table(ctx, "docker")? {
        r.docker = crate::docker::docker(ctx, d)?;
    }
    if let Some(c) = t.table(ctx, "cache")? {
        r.cache = crate::docker::cache(ctx, c)?;
    }
    if let Some(d) = t.table(ctx, "deploy")? {
        r.deploy = crate::docker::deploy(ctx, d)?;
    }
    t.finish(ctx, RUNNER_KNOWN);
    Ok(Some(r))
}

/// `$VAR` expansion, then the legacy `/ci` suffix is dropped (with a warning).
fn resolve_url(ctx: &mut Ctx, key: &str, url: Val<String>) -> Result<String, ConfigError> {
    let (expanded, unset) = expand_env(&url.v, ctx.env);
    let mut u = expanded.trim().to_string();
    if u.is_empty() {
        let why = if unset.is_empty() {
            "is empty".to_string()
        } else {
            format!(
                "is empty: environment variable {} is not set",
                unset.join(", ")
            )
        };
        return Err(ctx.invalid(url.line, key, why));
    }
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err(ctx.invalid(
            url.line,
            key,
            format!(
                "expected an http:// or https:// URL, found {:?}",
                redact_userinfo(&u)
            ),
        ));
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        || rest.is_empty()
        || rest.starts_with('/')
    {
        return Err(ctx.invalid(
            url.line,
            key,
            format!(
                "expected an http:// or https:// URL, found {:?}",
                redact_userinfo(&u)
            ),
        ));
    }
    while u.ends_with('/') {
        u.pop();
    }
    if let Some(stripped) = u.strip_suffix("/ci") {
        u = stripped.to_string();
        ctx.warn(
            url.line,
            key,
            format!(
                "the legacy /ci suffix is not part of the GitLab URL; using {}",
                redact_userinfo(&u)
            ),
        );
    }
    Ok(u)
}

/// `https://user:secret@host/` → `https://***@host/`, for messages.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

fn token_time(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Option<i64>, ConfigError> {
    let Some(d) = t.datetime(ctx, key)? else {
        return Ok(None);
    };
    if is_go_zero_time(&d.v) {
        return Ok(None);
    }
    datetime_to_unix(&d.v)
        .map(Some)
        .map_err(|m| ctx.invalid(d.line, &t.key_path(key), m))
}

/// A Go duration string (empty = absent), in nanoseconds.
pub(crate) fn go_duration(
    ctx: &Ctx,
    t: &mut TableReader,
    key: &str,
) -> Result<Option<Val<i128>>, ConfigError> {
    match t.string(ctx, key)? {
        Some(s) if !s.v.trim().is_empty() => parse_go_duration(s.v.trim())
            .map(|v| Some(Val { v, line: s.line }))
            .map_err(|m| ctx.invalid(s.line, &t.key_path(key), m)),
        _ => Ok(None),
    }
}

pub(crate) fn non_empty(v: Option<Val<String>>) -> Option<String> {
    v.map(|v| v.v).filter(|s| !s.trim().is_empty())
}

pub(crate) fn to_usize(ctx: &Ctx, v: &Val<i64>, key: &str) -> Result<usize, ConfigError> {
    usize::try_from(v.v).map_err(|_| ctx.invalid(v.line, key, "must not be negative"))
}
