//! `[runners.docker]`, `[runners.cache]` and ferry's `[runners.deploy]`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::resolve::non_empty;
use crate::units::parse_memory;
use crate::walk::{Ctx, Leftover, TableReader, Val};
use crate::{
    CacheAzure, CacheGcs, CacheS3, CacheSection, ConfigError, DeploySection, DeployTarget,
    DockerSection, PullPolicy, Redacted, S3Auth, S3Encryption,
};

use Leftover::{Ignored as I, NotImplemented as N, Warn as W};

/// Docker refuses memory limits below this (gitlab-runner's docs say 4M).
pub(crate) const MIN_MEMORY: u64 = 4 * 1024 * 1024;
const DEFAULT_WAIT_FOR_SERVICES_SECS: u64 = 30;

const NO_HELPER: Leftover =
    W("ferry runs no helper image (it clones and handles artifacts itself)");

pub(crate) const DOCKER_KNOWN: &[(&str, Leftover)] = &[
    (
        "volume_keep",
        W("ferry keeps its cache volumes between jobs and removes a job's own volumes with it"),
    ),
    (
        "service_slot_cgroup_template",
        W("ferry has no slot cgroups (use_slot_cgroups)"),
    ),
    (
        "mac_address",
        W("ferry does not set a MAC address on the job's containers"),
    ),
    ("helper_image", NO_HELPER),
    ("helper_image_flavor", NO_HELPER),
    ("helper_image_autoset_arch_and_os", NO_HELPER),
    (
        "isolation",
        W("Windows containers only; ferry runs Linux containers"),
    ),
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
    d.containers = crate::container::container_options(ctx, &mut t)?;
    d.services = crate::container::runner_services(ctx, &mut t)?;
    t.finish(ctx, DOCKER_KNOWN);
    Ok(d)
}

/// gitlab-runner reads `cpus` as a rational number (Go's `big.Rat`): `"1.5"` or `"3/2"`.
pub(crate) fn parse_cpus(s: &str) -> Option<f64> {
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

pub(crate) fn memory(
    ctx: &Ctx,
    t: &mut TableReader,
    key: &str,
    min: u64,
) -> Result<Option<u64>, ConfigError> {
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

pub(crate) const CACHE_KNOWN: &[(&str, Leftover)] = &[("RedactURL", I), ("gcsv2", I)];

pub(crate) const S3_KNOWN: &[(&str, Leftover)] = &[
    ("DualStack", N),
    ("Accelerate", N),
    ("UploadRoleARN", N),
    ("AssumeRoleMaxConcurrency", I),
    ("DisableAssumeRoleCredentialsCaching", I),
];

fn text(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<String, ConfigError> {
    Ok(t.string(ctx, key)?
        .map(|v| v.v.trim().to_string())
        .unwrap_or_default())
}

/// A key of the `s3` table, or the pre-12.0 key of the same name directly in
/// `[runners.cache]` when the table does not set it (gitlab-runner's own migration).
fn s3_text(
    ctx: &Ctx,
    s3: &mut Option<TableReader>,
    legacy: &mut TableReader,
    key: &str,
) -> Result<String, ConfigError> {
    let v = match s3 {
        Some(t) => text(ctx, t, key)?,
        None => String::new(),
    };
    let old = text(ctx, legacy, key)?;
    Ok(if v.is_empty() { old } else { v })
}

fn s3_flag(
    ctx: &Ctx,
    s3: &mut Option<TableReader>,
    key: &str,
) -> Result<Option<Val<bool>>, ConfigError> {
    match s3 {
        Some(t) => t.bool(ctx, key),
        None => Ok(None),
    }
}

fn cache_s3(
    ctx: &mut Ctx,
    mut s3: Option<TableReader>,
    legacy: &mut TableReader,
) -> Result<CacheS3, ConfigError> {
    let mut c = CacheS3 {
        server_address: s3_text(ctx, &mut s3, legacy, "ServerAddress")?,
        access_key: s3_text(ctx, &mut s3, legacy, "AccessKey")?,
        secret_key: Redacted(s3_text(ctx, &mut s3, legacy, "SecretKey")?),
        bucket_name: s3_text(ctx, &mut s3, legacy, "BucketName")?,
        bucket_location: s3_text(ctx, &mut s3, legacy, "BucketLocation")?,
        insecure: s3_flag(ctx, &mut s3, "Insecure")?.is_some_and(|b| b.v)
            || flag(ctx, legacy, "Insecure")?,
        ..CacheS3::default()
    };
    let Some(mut t) = s3 else {
        return Ok(c);
    };
    if c.server_address.contains("://") {
        let line = t.item(ctx, "ServerAddress").map_or(t.line, |(_, l)| l);
        return Err(ctx.invalid(
            line,
            &t.key_path("ServerAddress"),
            "host[:port] without a scheme (use Insecure = true for plain HTTP)",
        ));
    }
    c.session_token = Redacted(text(ctx, &mut t, "SessionToken")?);
    c.path_style = t.bool(ctx, "PathStyle")?.map(|b| b.v);
    c.role_arn = text(ctx, &mut t, "RoleARN")?;
    c.server_side_encryption_key_id = text(ctx, &mut t, "ServerSideEncryptionKeyID")?;
    // As gitlab-runner resolves it: an explicit type wins, else keys and an address mean
    // access-key, anything less means the host's (IAM) credentials.
    let auto = if c.server_address.is_empty() || c.access_key.is_empty() || c.secret_key.is_empty()
    {
        S3Auth::Iam
    } else {
        S3Auth::AccessKey
    };
    c.authentication_type = match t.string(ctx, "AuthenticationType")? {
        None => auto,
        Some(v) => match v.v.trim().to_ascii_lowercase().as_str() {
            "" => auto,
            "access-key" => S3Auth::AccessKey,
            "iam" => S3Auth::Iam,
            other => {
                return Err(ctx.invalid(
                    v.line,
                    &t.key_path("AuthenticationType"),
                    format!("unknown authentication type {other:?} (known: access-key, iam)"),
                ));
            }
        },
    };
    if let Some(v) = t.string(ctx, "ServerSideEncryption")? {
        c.server_side_encryption = match v.v.trim().to_ascii_uppercase().as_str() {
            "" => None,
            "S3" | "AES256" => Some(S3Encryption::Aes256),
            "KMS" | "AWS:KMS" => Some(S3Encryption::Kms),
            "DSSE-KMS" | "AWS:KMS:DSSE" => Some(S3Encryption::DsseKms),
            other => {
                // gitlab-runner warns and uploads unencrypted (by the bucket's default).
                ctx.warn(
                    v.line,
                    &t.key_path("ServerSideEncryption"),
                    format!("unknown encryption {other:?} (known: S3, AES256, KMS, DSSE-KMS); the bucket's default is used"),
                );
                None
            }
        };
    }
    if !c.role_arn.is_empty() && ctx_env_missing(ctx, "AWS_WEB_IDENTITY_TOKEN_FILE") {
        let line = t.item(ctx, "RoleARN").map_or(t.line, |(_, l)| l);
        ctx.warn(
            line,
            &t.key_path("RoleARN"),
            "only used with a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, as on EKS); \
             ferry does not assume roles with other credentials",
        );
    }
    t.finish(ctx, S3_KNOWN);
    Ok(c)
}

fn ctx_env_missing(ctx: &Ctx, name: &str) -> bool {
    (ctx.env)(name).is_none_or(|v| v.is_empty())
}

fn cache_gcs(ctx: &mut Ctx, t: Option<TableReader>) -> Result<CacheGcs, ConfigError> {
    let Some(mut t) = t else {
        return Ok(CacheGcs::default());
    };
    let c = CacheGcs {
        credentials_file: text(ctx, &mut t, "CredentialsFile")?,
        access_id: text(ctx, &mut t, "AccessID")?,
        private_key: Redacted(
            t.string(ctx, "PrivateKey")?
                .map(|v| v.v)
                .unwrap_or_default(),
        ),
        bucket_name: text(ctx, &mut t, "BucketName")?,
    };
    t.finish(ctx, &[("UniverseDomain", N)]);
    Ok(c)
}

fn cache_azure(ctx: &mut Ctx, t: Option<TableReader>) -> Result<CacheAzure, ConfigError> {
    let Some(mut t) = t else {
        return Ok(CacheAzure::default());
    };
    let c = CacheAzure {
        account_name: text(ctx, &mut t, "AccountName")?,
        account_key: Redacted(text(ctx, &mut t, "AccountKey")?),
        container_name: text(ctx, &mut t, "ContainerName")?,
        storage_domain: text(ctx, &mut t, "StorageDomain")?,
    };
    t.finish(ctx, &[]);
    Ok(c)
}

pub(crate) fn cache(ctx: &mut Ctx, mut t: TableReader) -> Result<CacheSection, ConfigError> {
    let kind = t.string(ctx, "Type")?;
    let mut c = CacheSection {
        kind: None,
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
        ..CacheSection::default()
    };
    let s3 = t.table(ctx, "s3")?;
    c.s3 = cache_s3(ctx, s3, &mut t)?;
    let gcs = t.table(ctx, "gcs")?;
    c.gcs = cache_gcs(ctx, gcs)?;
    let azure = t.table(ctx, "azure")?;
    c.azure = cache_azure(ctx, azure)?;
    // gitlab-runner only notices an unknown adapter or a missing bucket when a job uses the
    // cache, so these are warnings (a file gitlab-runner accepts must load), and the cache
    // stays local.
    if let Some(kind) = kind.filter(|k| !k.v.trim().is_empty()) {
        let key = t.key_path("Type");
        let missing = match kind.v.trim() {
            "s3" => {
                c.s3.bucket_name
                    .is_empty()
                    .then_some("[runners.cache.s3] BucketName")
            }
            "gcs" | "gcsv2" => c
                .gcs
                .bucket_name
                .is_empty()
                .then_some("[runners.cache.gcs] BucketName"),
            "azure" => (c.azure.container_name.is_empty() || c.azure.account_name.is_empty())
                .then_some("[runners.cache.azure] AccountName and ContainerName"),
            other => {
                ctx.warn(
                    kind.line,
                    &key,
                    format!("unknown cache type {other:?} (known: s3, gcs, gcsv2, azure); only the local cache is used"),
                );
                None
            }
        };
        match missing {
            Some(what) => ctx.warn(
                kind.line,
                &key,
                format!("{what} missing; only the local cache is used"),
            ),
            None if matches!(kind.v.trim(), "s3" | "gcs" | "gcsv2" | "azure") => {
                c.kind = Some(kind.v.trim().to_string());
            }
            None => {}
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
