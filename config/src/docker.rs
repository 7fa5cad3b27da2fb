//! `[runners.docker]`, `[runners.cache]` and ferry's `[runners.deploy]`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::resolve::non_empty;
use crate::units::parse_memory;
use crate::walk::{Ctx, Leftover, TableReader, Val};
use crate::{CacheSection, ConfigError, DeploySection, DeployTarget, DockerSection, PullPolicy};

use Leftover::{Ignored as I, NotImplemented as N};

/// Docker refuses memory limits below this (gitlab-runner's docs say 4M).
const MIN_MEMORY: u64 = 4 * 1024 * 1024;
const DEFAULT_WAIT_FOR_SERVICES_SECS: u64 = 30;

const DOCKER_KNOWN: &[(&str, Leftover)] = &[
    ("devices", N),
    ("device_cgroup_rules", N),
    ("gpus", N),
    ("userns_mode", N),
    ("pid_mode", N),
    ("ipcmode", N),
    ("runtime", N),
    ("cgroup_parent", N),
    ("volumes_from", N),
    ("volume_driver", N),
    ("volume_driver_ops", N),
    ("volume_keep", N),
    ("tmpfs", N),
    ("services_tmpfs", N),
    ("network_mtu", N),
    ("enable_ipv6", N),
    ("cpuset_cpus", N),
    ("cpuset_mems", N),
    ("cpu_shares", N),
    ("oom_score_adjust", N),
    ("ulimit", N),
    ("sysctls", N),
    ("service_memory", N),
    ("service_memory_swap", N),
    ("service_memory_reservation", N),
    ("service_cpus", N),
    ("service_cpuset_cpus", N),
    ("service_cpu_shares", N),
    ("service_gpus", N),
    ("services", N),
    ("container_labels", N),
    ("log_options", N),
    ("helper_image", I),
    ("helper_image_flavor", I),
    ("helper_image_autoset_arch_and_os", I),
    ("links", I),
    ("mac_address", I),
    ("isolation", I),
    ("services_devices", I),
    ("services_security_opt", I),
];

pub(crate) fn docker(ctx: &mut Ctx, mut t: TableReader) -> Result<DockerSection, ConfigError> {
    let mut d = DockerSection {
        host: non_empty(t.string(ctx, "host")?),
        image: non_empty(t.string(ctx, "image")?),
        user: non_empty(t.string(ctx, "user")?),
        tls_cert_path: non_empty(t.string(ctx, "tls_cert_path")?).map(PathBuf::from),
        cache_dir: non_empty(t.string(ctx, "cache_dir")?).map(PathBuf::from),
        network_mode: non_empty(t.string(ctx, "network_mode")?),
        hostname: non_empty(t.string(ctx, "hostname")?),
        ..DockerSection::default()
    };
    d.tls_verify = flag(ctx, &mut t, "tls_verify")?;
    d.privileged = flag(ctx, &mut t, "privileged")?;
    d.services_privileged = t.bool(ctx, "services_privileged")?.map(|b| b.v);
    d.disable_cache = flag(ctx, &mut t, "disable_cache")?;
    d.disable_entrypoint_overwrite = flag(ctx, &mut t, "disable_entrypoint_overwrite")?;
    d.oom_kill_disable = flag(ctx, &mut t, "oom_kill_disable")?;

    d.pull_policy = pull_policies(ctx, &mut t, "pull_policy")?;
    if d.pull_policy.is_empty() {
        d.pull_policy = vec![PullPolicy::Always];
    }
    d.allowed_pull_policies = pull_policies(ctx, &mut t, "allowed_pull_policies")?;
    if d.allowed_pull_policies.is_empty() {
        // gitlab-runner: without an explicit list, jobs may use the configured policies
        d.allowed_pull_policies = d.pull_policy.clone();
    }
    d.allowed_images = globs(ctx, &mut t, "allowed_images")?;
    d.allowed_services = globs(ctx, &mut t, "allowed_services")?;
    d.allowed_privileged_images = privileged_globs(ctx, &mut t, "allowed_privileged_images")?;
    d.allowed_privileged_services = privileged_globs(ctx, &mut t, "allowed_privileged_services")?;
    d.allowed_users = list(ctx, &mut t, "allowed_users")?;
    d.pids_limit = match t.int(ctx, "pids_limit")? {
        None => None,
        Some(p) if p.v == 0 => None,
        Some(p) if p.v > 0 || p.v == -1 => Some(p.v),
        Some(p) => {
            return Err(ctx.invalid(
                p.line,
                &t.key_path("pids_limit"),
                format!(
                    "expected a positive number of processes, or -1 for unlimited, found {}",
                    p.v
                ),
            ));
        }
    };

    d.volumes = list(ctx, &mut t, "volumes")?;
    d.group_add = list(ctx, &mut t, "group_add")?;
    d.cap_add = list(ctx, &mut t, "cap_add")?;
    d.cap_drop = list(ctx, &mut t, "cap_drop")?;
    d.security_opt = list(ctx, &mut t, "security_opt")?;
    d.dns_search = list(ctx, &mut t, "dns_search")?;
    d.extra_hosts = list(ctx, &mut t, "extra_hosts")?;
    if let Some(dns) = t.strings(ctx, "dns")? {
        for (i, s) in dns.into_iter().enumerate() {
            if s.v.parse::<std::net::IpAddr>().is_err() {
                return Err(ctx.invalid(
                    s.line,
                    &format!("{}[{i}]", t.key_path("dns")),
                    format!("expected an IP address, found {:?}", s.v),
                ));
            }
            d.dns.push(s.v);
        }
    }

    d.memory = memory(ctx, &mut t, "memory", MIN_MEMORY)?;
    d.memory_swap = memory(ctx, &mut t, "memory_swap", 0)?;
    d.memory_reservation = memory(ctx, &mut t, "memory_reservation", 0)?;
    if let Some(c) = t.string(ctx, "cpus")?
        && !c.v.trim().is_empty()
    {
        match parse_cpus(c.v.trim()) {
            Some(v) if v.is_finite() && v > 0.0 => d.cpus = Some(v),
            _ => {
                return Err(ctx.invalid(
                    c.line,
                    &t.key_path("cpus"),
                    format!(
                        "expected a positive number of CPUs like \"1.5\", found {:?}",
                        c.v
                    ),
                ));
            }
        }
    }
    if let Some(s) = t.int(ctx, "shm_size")? {
        d.shm_size = u64::try_from(s.v).map_err(|_| {
            ctx.invalid(
                s.line,
                &t.key_path("shm_size"),
                "must not be negative (bytes)",
            )
        })?;
    }
    d.wait_for_services_timeout = match t.int(ctx, "wait_for_services_timeout")? {
        None => Some(Duration::from_secs(DEFAULT_WAIT_FOR_SERVICES_SECS)),
        Some(w) if w.v == 0 => Some(Duration::from_secs(DEFAULT_WAIT_FOR_SERVICES_SECS)),
        Some(w) if w.v < 0 => None,
        Some(w) => Some(Duration::from_secs(w.v as u64)),
    };
    d.services_limit = match t.int(ctx, "services_limit")? {
        Some(l) if l.v >= 0 => Some(l.v as usize),
        _ => None,
    };
    t.finish(ctx, DOCKER_KNOWN);
    Ok(d)
}

/// gitlab-runner reads `cpus` as a rational number (Go's `big.Rat`): `"1.5"` or `"3/2"`.
fn parse_cpus(s: &str) -> Option<f64> {
    match s.split_once('/') {
        Some((n, d)) => {
            let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
            (d != 0.0).then(|| n / d)
        }
        None => s.parse().ok(),
    }
}

fn flag(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<bool, ConfigError> {
    Ok(t.bool(ctx, key)?.is_some_and(|b| b.v))
}

fn list(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Vec<String>, ConfigError> {
    Ok(t.strings(ctx, key)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.v)
        .collect())
}

fn pull_policies(
    ctx: &Ctx,
    t: &mut TableReader,
    key: &str,
) -> Result<Vec<PullPolicy>, ConfigError> {
    let mut out = Vec::new();
    for v in t.string_or_strings(ctx, key)?.unwrap_or_default() {
        // an empty string is taken as "not set" (gitlab-runner would fail the job instead)
        if v.v.is_empty() {
            continue;
        }
        let p = PullPolicy::parse(&v.v).ok_or_else(|| {
            ctx.invalid(
                v.line,
                &t.key_path(key),
                "expected one of always, if-not-present, never",
            )
        })?;
        out.push(p);
    }
    Ok(out)
}

/// Doublestar globs with an optional leading `!`; checked here so a typo fails at load time.
fn globs(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, v) in t
        .strings(ctx, key)?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        check_glob(ctx, &format!("{}[{i}]", t.key_path(key)), &v)?;
        out.push(v.v);
    }
    Ok(out)
}

/// `allowed_privileged_images` / `allowed_privileged_services`: doublestar globs without
/// negation. gitlab-runner matches a leading `!` literally (so such a pattern matches no image,
/// which fails closed): ferry does the same and warns, since it is surely not what was meant.
fn privileged_globs(
    ctx: &mut Ctx,
    t: &mut TableReader,
    key: &str,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, v) in t
        .strings(ctx, key)?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let path = format!("{}[{i}]", t.key_path(key));
        globset::Glob::new(&v.v).map_err(|e| {
            ctx.invalid(
                v.line,
                &path,
                format!("invalid glob {:?}: {}", v.v, e.kind()),
            )
        })?;
        if v.v.starts_with('!') {
            ctx.warn(
                v.line,
                &path,
                format!(
                    "{:?}: `!` does not negate here (as in gitlab-runner, it is matched literally, so this pattern matches no image)",
                    v.v
                ),
            );
        }
        out.push(v.v);
    }
    Ok(out)
}

fn check_glob(ctx: &Ctx, key: &str, v: &Val<String>) -> Result<(), ConfigError> {
    let pattern = v.v.strip_prefix('!').unwrap_or(&v.v);
    globset::Glob::new(pattern)
        .map(|_| ())
        .map_err(|e| ctx.invalid(v.line, key, format!("invalid glob {:?}: {}", v.v, e.kind())))
}

fn memory(ctx: &Ctx, t: &mut TableReader, key: &str, min: u64) -> Result<Option<u64>, ConfigError> {
    let Some(m) = t.string(ctx, key)? else {
        return Ok(None);
    };
    let s = m.v.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bytes = parse_memory(s).map_err(|e| ctx.invalid(m.line, &t.key_path(key), e))?;
    if bytes < min {
        return Err(ctx.invalid(
            m.line,
            &t.key_path(key),
            format!("{s:?} is below the minimum of 4m"),
        ));
    }
    Ok(Some(bytes))
}

const CACHE_KNOWN: &[(&str, Leftover)] = &[
    // pre-12.0 files keep the S3 settings directly in [runners.cache]
    ("ServerAddress", N),
    ("AccessKey", N),
    ("SecretKey", N),
    ("BucketName", N),
    ("BucketLocation", N),
    ("Insecure", N),
    ("RedactURL", N),
    ("s3", N),
    ("gcs", I),
    ("gcsv2", I),
    ("azure", I),
];

pub(crate) fn cache(ctx: &mut Ctx, mut t: TableReader) -> Result<CacheSection, ConfigError> {
    let mut c = CacheSection {
        kind: non_empty(t.string(ctx, "Type")?),
        path: non_empty(t.string(ctx, "Path")?),
        shared: flag(ctx, &mut t, "Shared")?,
        max_uploaded_archive_size: match t.int(ctx, "MaxUploadedArchiveSize")? {
            None => 0,
            Some(m) => u64::try_from(m.v).map_err(|_| {
                ctx.invalid(
                    m.line,
                    &t.key_path("MaxUploadedArchiveSize"),
                    "must not be negative (bytes)",
                )
            })?,
        },
    };
    // gitlab-runner only notices an unknown adapter when a job uses the cache, so this is a
    // warning (a file gitlab-runner accepts must load), and the cache stays local.
    if let Some(kind) = c.kind.take() {
        if matches!(kind.as_str(), "s3" | "gcs" | "gcsv2" | "azure") {
            c.kind = Some(kind);
        } else {
            let line = t.item(ctx, "Type").map(|(_, l)| l).unwrap_or(t.line);
            let key = t.key_path("Type");
            ctx.warn(
                line,
                &key,
                format!("unknown cache type {kind:?} (known: s3, gcs, gcsv2, azure); only the local cache is used"),
            );
        }
    }
    t.finish(ctx, CACHE_KNOWN);
    Ok(c)
}

pub(crate) fn deploy(ctx: &mut Ctx, mut t: TableReader) -> Result<DeploySection, ConfigError> {
    let mut d = DeploySection::default();
    if let Some(image) = t.string(ctx, "image")? {
        if image.v.trim().is_empty() {
            return Err(ctx.invalid(image.line, &t.key_path("image"), "must not be empty"));
        }
        d.image = image.v.trim().to_string();
    }
    let mut names = BTreeSet::new();
    for target in t.tables(ctx, "targets")? {
        let (line, path) = (target.line, target.path.clone());
        let tg = deploy_target(ctx, target)?;
        if !names.insert(tg.name.clone()) {
            return Err(ctx.invalid(
                line,
                &format!("{path}.name"),
                format!("duplicate target name {:?}", tg.name),
            ));
        }
        d.targets.push(tg);
    }
    t.finish(ctx, &[]);
    Ok(d)
}

fn deploy_target(ctx: &mut Ctx, mut t: TableReader) -> Result<DeployTarget, ConfigError> {
    let required =
        |ctx: &Ctx, t: &TableReader, v: Option<Val<String>>, key: &str, what: &str| match v {
            Some(v) if !v.v.trim().is_empty() => Ok(v.v),
            Some(v) => Err(ctx.invalid(v.line, &t.key_path(key), "must not be empty")),
            None => Err(ctx.invalid(t.line, &t.key_path(key), format!("missing ({what})"))),
        };
    let name = t.string(ctx, "name")?;
    let name = required(ctx, &t, name, "name", "the target's name")?;
    let kubeconfig = t.string(ctx, "kubeconfig")?;
    let kubeconfig = required(
        ctx,
        &t,
        kubeconfig,
        "kubeconfig",
        "path of the kubeconfig file",
    )?;
    let environments = nonempty_globs(
        ctx,
        &mut t,
        "environments",
        "environment names (globs on CI_ENVIRONMENT_NAME)",
    )?;
    let namespaces = nonempty_globs(
        ctx,
        &mut t,
        "namespaces",
        "the namespaces jobs may deploy to (globs)",
    )?;
    let default_namespace = t.string(ctx, "default_namespace")?;
    if let Some(ns) = &default_namespace {
        let allowed = namespaces.iter().any(|p| {
            globset::Glob::new(p)
                .map(|g| g.compile_matcher().is_match(&ns.v))
                .unwrap_or(false)
        });
        if !allowed {
            return Err(ctx.invalid(
                ns.line,
                &t.key_path("default_namespace"),
                format!("{:?} is not allowed by namespaces = {:?}", ns.v, namespaces),
            ));
        }
    }
    let target = DeployTarget {
        name,
        environments,
        kubeconfig: PathBuf::from(kubeconfig),
        context: non_empty(t.string(ctx, "context")?),
        namespaces,
        default_namespace: non_empty(default_namespace),
        cluster_scoped: flag(ctx, &mut t, "cluster_scoped")?,
        protected_refs_only: flag(ctx, &mut t, "protected_refs_only")?,
    };
    t.finish(ctx, &[]);
    Ok(target)
}

fn nonempty_globs(
    ctx: &Ctx,
    t: &mut TableReader,
    key: &str,
    what: &str,
) -> Result<Vec<String>, ConfigError> {
    let line = t.item(ctx, key).map(|(_, l)| l);
    let v = globs(ctx, t, key)?;
    if v.is_empty() {
        return Err(ctx.invalid(
            line.unwrap_or(t.line),
            &t.key_path(key),
            format!("missing or empty ({what})"),
        ));
    }
    Ok(v)
}
