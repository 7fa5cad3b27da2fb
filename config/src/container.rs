//! The `[runners.docker]` keys that become container, network and label settings
//! ([`ContainerOptions`]) and `[[runners.docker.services]]` ([`RunnerService`]).
//!
//! Everything is checked here, at load time, so a value the engine would refuse (or that
//! gitlab-runner would fail every job with) is an error naming the key and its line.

use std::collections::BTreeMap;

use toml_edit::{Item, Value};

use crate::docker::{MIN_MEMORY, memory, parse_cpus};
use crate::resolve::non_empty;
use crate::walk::{Ctx, TableReader, Val};
use crate::{ConfigError, ContainerOptions, RunnerService};

/// The label namespace ferry's cleanup relies on (`ferry.managed`, `ferry.job_id`, ...).
const OWN_LABEL_PREFIX: &str = "ferry.";
/// The only `log_options` gitlab-runner allows (`GetLogConfig` in its common/config.go).
pub const LOG_OPTIONS_ALLOWED: &[&str] = &["env", "labels"];

/// A host device for a container: `PathOnHost[:PathInContainer[:CgroupPermissions]]`, as
/// gitlab-runner's `parseDeviceString` reads it (container path defaults to the host path,
/// permissions to `rwm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 3 {
        return Err(format!(
            "failed to parse device string {s:?}: too many colons"
        ));
    }
    if parts[0].is_empty() {
        return Err(format!("device string {s:?} names no host path"));
    }
    Ok(Device {
        path_on_host: parts[0].to_string(),
        path_in_container: parts.get(1).unwrap_or(&parts[0]).to_string(),
        cgroup_permissions: parts.get(2).unwrap_or(&"rwm").to_string(),
    })
}

/// A GPU request in `docker run --gpus` syntax (Docker's `GpuOpts`): `all`, a count, or
/// comma-separated `count=`, `device=`, `driver=`, `capabilities=`, `options=` fields (a field
/// holding commas is double-quoted: `"device=0,1"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuRequest {
    pub driver: String,
    /// -1 = all.
    pub count: i64,
    pub device_ids: Vec<String>,
    pub capabilities: Vec<Vec<String>>,
    pub options: BTreeMap<String, String>,
}

fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out)
}

fn gpu_count(s: &str) -> Result<i64, String> {
    if s == "all" {
        return Ok(-1);
    }
    s.parse::<i64>()
        .map_err(|_| format!("invalid count {s:?} (a number or all)"))
}

pub fn parse_gpus(s: &str) -> Result<GpuRequest, String> {
    let mut req = GpuRequest::default();
    let mut seen: Vec<String> = Vec::new();
    let mut devices = None;
    for field in csv_fields(s.trim())? {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (field.clone(), None),
        };
        if seen.contains(&key) {
            return Err(format!(
                "gpu request key {key:?} can be specified only once"
            ));
        }
        seen.push(key.clone());
        let Some(val) = val else {
            seen.push("count".into());
            req.count = gpu_count(&key)?;
            continue;
        };
        match key.as_str() {
            "driver" => req.driver = val,
            "count" => req.count = gpu_count(&val)?,
            "device" => devices = Some(val.split(',').map(str::to_string).collect()),
            "capabilities" => {
                let mut caps: Vec<String> = val.split(',').map(str::to_string).collect();
                caps.push("gpu".into());
                req.capabilities = vec![caps];
            }
            "options" => {
                for kv in csv_fields(&val)? {
                    let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                    req.options.insert(k.to_string(), v.to_string());
                }
            }
            other => return Err(format!("unexpected key {other:?} in {field:?}")),
        }
    }
    if !seen.iter().any(|k| k == "count") && devices.is_none() {
        req.count = 1;
    }
    req.device_ids = devices.unwrap_or_default();
    if req.capabilities.is_empty() {
        req.capabilities = vec![vec!["gpu".into()]];
    }
    Ok(req)
}

/// gitlab-runner's `GetUlimits`: `"soft"` or `"soft:hard"`, both integers.
pub fn parse_ulimit(s: &str) -> Result<(i64, i64), String> {
    let (soft, hard) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let num = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("expected \"soft\" or \"soft:hard\" (integers), found {s:?}"))
    };
    let soft = num(soft)?;
    let hard = match hard {
        Some(h) => num(h)?,
        None => soft,
    };
    Ok((soft, hard))
}

/// A TOML table of strings (`tmpfs`, `sysctls`, ...), each value with its line.
fn string_map(
    ctx: &mut Ctx,
    t: &mut TableReader,
    key: &str,
) -> Result<Vec<(String, Val<String>)>, ConfigError> {
    let Some(mut sub) = t.table(ctx, key)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (k, item, line) in sub.rest(ctx) {
        match item {
            Item::Value(Value::String(s)) => out.push((
                k,
                Val {
                    v: s.value().clone(),
                    line,
                },
            )),
            other => {
                return Err(ctx.invalid(
                    line,
                    &sub.key_path(&k),
                    format!("expected a string, found {}", other.type_name()),
                ));
            }
        }
    }
    Ok(out)
}

fn strings(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Vec<String>, ConfigError> {
    Ok(t.strings(ctx, key)?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.v)
        .filter(|v| !v.is_empty())
        .collect())
}

fn text(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(non_empty(t.string(ctx, key)?).map(|s| s.trim().to_string()))
}

/// An integer where 0 means "not set".
fn nonzero(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Option<Val<i64>>, ConfigError> {
    Ok(t.int(ctx, key)?.filter(|v| v.v != 0))
}

fn devices(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for (i, d) in t
        .strings(ctx, key)?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        parse_device(&d.v)
            .map_err(|e| ctx.invalid(d.line, &format!("{}[{i}]", t.key_path(key)), e))?;
        out.push(d.v);
    }
    Ok(out)
}

fn gpus(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(g) = t.string(ctx, key)? else {
        return Ok(None);
    };
    if g.v.trim().is_empty() {
        return Ok(None);
    }
    parse_gpus(&g.v).map_err(|e| ctx.invalid(g.line, &t.key_path(key), e))?;
    Ok(Some(g.v.trim().to_string()))
}

fn cpus(ctx: &Ctx, t: &mut TableReader, key: &str) -> Result<Option<f64>, ConfigError> {
    let Some(c) = t.string(ctx, key)? else {
        return Ok(None);
    };
    if c.v.trim().is_empty() {
        return Ok(None);
    }
    match parse_cpus(c.v.trim()) {
        Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(ctx.invalid(
            c.line,
            &t.key_path(key),
            format!(
                "expected a positive number of CPUs like \"1.5\", found {:?}",
                c.v
            ),
        )),
    }
}

pub(crate) fn container_options(
    ctx: &mut Ctx,
    t: &mut TableReader,
) -> Result<ContainerOptions, ConfigError> {
    let mut o = ContainerOptions::default();
    for (k, v) in string_map(ctx, t, "tmpfs")? {
        o.tmpfs.insert(k, v.v);
    }
    for (k, v) in string_map(ctx, t, "services_tmpfs")? {
        o.services_tmpfs.insert(k, v.v);
    }
    o.devices = devices(ctx, t, "devices")?;
    if let Some(mut sd) = t.table(ctx, "services_devices")? {
        for (glob, _, line) in sd.rest(ctx) {
            let path = sd.key_path(&glob);
            globset::Glob::new(&glob).map_err(|e| {
                ctx.invalid(line, &path, format!("invalid glob {glob:?}: {}", e.kind()))
            })?;
            let list = devices(ctx, &mut sd, &glob)?;
            o.services_devices.insert(glob, list);
        }
    }
    o.device_cgroup_rules = strings(ctx, t, "device_cgroup_rules")?;
    o.gpus = gpus(ctx, t, "gpus")?;
    o.service_gpus = gpus(ctx, t, "service_gpus")?;
    o.services_security_opt = strings(ctx, t, "services_security_opt")?;
    o.runtime = text(ctx, t, "runtime")?;
    o.userns_mode = text(ctx, t, "userns_mode")?;
    o.pid_mode = text(ctx, t, "pid_mode")?;
    o.ipc_mode = text(ctx, t, "ipcmode")?;
    o.cgroup_parent = text(ctx, t, "cgroup_parent")?;
    o.service_cgroup_parent = text(ctx, t, "service_cgroup_parent")?;
    o.cpuset_cpus = text(ctx, t, "cpuset_cpus")?;
    o.cpuset_mems = text(ctx, t, "cpuset_mems")?;
    o.service_cpuset_cpus = text(ctx, t, "service_cpuset_cpus")?;
    for (key, slot) in [
        ("cpu_shares", &mut o.cpu_shares),
        ("service_cpu_shares", &mut o.service_cpu_shares),
    ] {
        if let Some(v) = nonzero(ctx, t, key)? {
            if v.v < 0 {
                return Err(ctx.invalid(v.line, &t.key_path(key), "must not be negative"));
            }
            *slot = Some(v.v);
        }
    }
    if let Some(v) = nonzero(ctx, t, "oom_score_adjust")? {
        if !(-1000..=1000).contains(&v.v) {
            return Err(ctx.invalid(
                v.line,
                &t.key_path("oom_score_adjust"),
                format!("expected -1000 to 1000, found {}", v.v),
            ));
        }
        o.oom_score_adjust = Some(v.v);
    }
    for (k, v) in string_map(ctx, t, "ulimit")? {
        let limits = parse_ulimit(&v.v)
            .map_err(|e| ctx.invalid(v.line, &format!("{}.{k}", t.key_path("ulimit")), e))?;
        o.ulimit.insert(k, limits);
    }
    for (k, v) in string_map(ctx, t, "sysctls")? {
        o.sysctls.insert(k, v.v);
    }
    o.service_memory = memory(ctx, t, "service_memory", MIN_MEMORY)?;
    o.service_memory_swap = memory(ctx, t, "service_memory_swap", 0)?;
    o.service_memory_reservation = memory(ctx, t, "service_memory_reservation", 0)?;
    o.service_cpus = cpus(ctx, t, "service_cpus")?;
    if let Some(v) = nonzero(ctx, t, "network_mtu")? {
        o.network_mtu = Some(u32::try_from(v.v).map_err(|_| {
            ctx.invalid(
                v.line,
                &t.key_path("network_mtu"),
                format!("expected a positive MTU, found {}", v.v),
            )
        })?);
    }
    o.enable_ipv6 = t.bool(ctx, "enable_ipv6")?.is_some_and(|b| b.v);
    o.volumes_from = strings(ctx, t, "volumes_from")?;
    o.volume_driver = text(ctx, t, "volume_driver")?;
    for (k, v) in string_map(ctx, t, "volume_driver_ops")? {
        o.volume_driver_ops.insert(k, v.v);
    }
    o.links = strings(ctx, t, "links")?;
    for (k, v) in string_map(ctx, t, "container_labels")? {
        if k.starts_with(OWN_LABEL_PREFIX) {
            return Err(ctx.invalid(
                v.line,
                &format!("{}.{k}", t.key_path("container_labels")),
                "labels starting with \"ferry.\" are ferry's own (its cleanup relies on them)",
            ));
        }
        o.container_labels.insert(k, v.v);
    }
    let log = string_map(ctx, t, "log_options")?;
    let invalid: Vec<&str> = log
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !LOG_OPTIONS_ALLOWED.contains(k))
        .collect();
    if let Some((_, first)) = log
        .iter()
        .find(|(k, _)| !LOG_OPTIONS_ALLOWED.contains(&k.as_str()))
    {
        return Err(ctx.invalid(
            first.line,
            &t.key_path("log_options"),
            format!(
                "invalid log options: only {LOG_OPTIONS_ALLOWED:?} are allowed (json-file driver), but found: {invalid:?}"
            ),
        ));
    }
    o.log_options = log.into_iter().map(|(k, v)| (k, v.v)).collect();
    Ok(o)
}

pub(crate) fn runner_services(
    ctx: &mut Ctx,
    t: &mut TableReader,
) -> Result<Vec<RunnerService>, ConfigError> {
    let mut out = Vec::new();
    for mut s in t.tables(ctx, "services")? {
        let name = s.string(ctx, "name")?;
        let name = match name {
            Some(n) if !n.v.trim().is_empty() => n.v.trim().to_string(),
            Some(n) => return Err(ctx.invalid(n.line, &s.key_path("name"), "must not be empty")),
            None => {
                return Err(ctx.invalid(
                    s.line,
                    &s.key_path("name"),
                    "missing (the service's image)",
                ));
            }
        };
        let mut svc = RunnerService {
            name,
            alias: s.string(ctx, "alias")?.map(|a| a.v).unwrap_or_default(),
            command: s
                .strings(ctx, "command")?
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.v)
                .collect(),
            entrypoint: s
                .strings(ctx, "entrypoint")?
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.v)
                .collect(),
            environment: Vec::new(),
        };
        for (i, e) in s
            .strings(ctx, "environment")?
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match e.v.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    svc.environment.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(ctx.invalid(
                        e.line,
                        &format!("{}[{i}]", s.key_path("environment")),
                        format!("expected \"NAME=value\", found {:?}", e.v),
                    ));
                }
            }
        }
        s.finish(ctx)?;
        out.push(svc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_follow_docker_run_syntax() {
        let all = parse_gpus("all").unwrap();
        assert_eq!(all.count, -1);
        assert_eq!(all.capabilities, vec![vec!["gpu".to_string()]]);
        assert_eq!(parse_gpus("2").unwrap().count, 2);
        let d = parse_gpus("\"device=0,1\",driver=nvidia,options=\"a=1,b=2\"").unwrap();
        assert_eq!(d.device_ids, vec!["0", "1"]);
        assert_eq!(d.count, 0, "devices given: no default count");
        assert_eq!(d.driver, "nvidia");
        assert_eq!(d.options["b"], "2");
        assert_eq!(parse_gpus("capabilities=utility").unwrap().count, 1);
        assert!(parse_gpus("count=1,count=2").is_err());
        assert!(parse_gpus("colour=red").is_err());
        assert!(parse_gpus("\"device=0").is_err());
    }

    #[test]
    fn devices_and_ulimits_as_gitlab_runner_parses_them() {
        let d = parse_device("/dev/kvm").unwrap();
        assert_eq!(
            (d.path_in_container.as_str(), d.cgroup_permissions.as_str()),
            ("/dev/kvm", "rwm")
        );
        assert!(parse_device("/a:/b:r:x").is_err());
        assert!(parse_device(":/b").is_err());
        assert_eq!(parse_ulimit("10:20"), Ok((10, 20)));
        assert_eq!(parse_ulimit("-1"), Ok((-1, -1)));
        assert!(parse_ulimit("10:").is_err());
    }
}
