//! The `[runners.docker]` container options ([`ContainerOptions`]) mapped onto the engine's
//! `HostConfig`, the per-job network and the containers' labels, as gitlab-runner maps them
//! (its `createHostConfig` for the build container, `createHostConfigForService` for services,
//! `prepareContainerLabels`, and the network manager). Pure functions, unit tested against what
//! gitlab-runner sets; docs/configuration.md lists the keys.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    DeviceMapping, DeviceRequest, HostConfig, HostConfigLogConfig, ResourcesUlimits,
};
use ferry_config::{ContainerOptions, parse_device, parse_gpus};
use globset::GlobBuilder;

/// The network option Docker's bridge driver reads the MTU from.
pub const NETWORK_MTU_OPTION: &str = "com.docker.network.driver.mtu";

fn map(m: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

fn list(v: &[String]) -> Option<Vec<String>> {
    if v.is_empty() { None } else { Some(v.to_vec()) }
}

/// Devices were checked at load time; one that no longer parses is skipped.
fn devices<'a>(specs: impl Iterator<Item = &'a String>) -> Option<Vec<DeviceMapping>> {
    let out: Vec<DeviceMapping> = specs
        .filter_map(|s| parse_device(s).ok())
        .map(|d| DeviceMapping {
            path_on_host: Some(d.path_on_host),
            path_in_container: Some(d.path_in_container),
            cgroup_permissions: Some(d.cgroup_permissions),
        })
        .collect();
    if out.is_empty() { None } else { Some(out) }
}

fn device_requests(gpus: Option<&str>) -> Option<Vec<DeviceRequest>> {
    let g = parse_gpus(gpus?).ok()?;
    Some(vec![DeviceRequest {
        driver: Some(g.driver),
        count: Some(g.count),
        device_ids: Some(g.device_ids),
        capabilities: Some(g.capabilities),
        options: Some(g.options.into_iter().collect()),
    }])
}

/// gitlab-runner always uses the `json-file` driver, with `log_options` (only `env` and
/// `labels`, checked at load) as its options.
pub fn log_config(o: &ContainerOptions) -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: map(&o.log_options),
    }
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| i64::try_from(x).unwrap_or(i64::MAX))
}

/// The build container's share of the options (gitlab-runner's `createHostConfig`). `h` already
/// holds what `convert::build_host_config` sets; legacy links to services stay and the
/// configured `links` are added.
pub fn apply_build(h: &mut HostConfig, o: &ContainerOptions) {
    h.cgroup_parent = o.cgroup_parent.clone();
    h.cpuset_cpus = o.cpuset_cpus.clone();
    h.cpuset_mems = o.cpuset_mems.clone();
    h.cpu_shares = o.cpu_shares;
    h.devices = devices(o.devices.iter());
    h.device_requests = device_requests(o.gpus.as_deref());
    h.device_cgroup_rules = list(&o.device_cgroup_rules);
    h.ulimits = if o.ulimit.is_empty() {
        None
    } else {
        Some(
            o.ulimit
                .iter()
                .map(|(name, (soft, hard))| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(*soft),
                    hard: Some(*hard),
                })
                .collect(),
        )
    };
    h.runtime = o.runtime.clone();
    h.userns_mode = o.userns_mode.clone();
    h.pid_mode = o.pid_mode.clone();
    h.ipc_mode = o.ipc_mode.clone();
    h.oom_score_adj = o.oom_score_adjust;
    h.volume_driver = o.volume_driver.clone();
    h.volumes_from = list(&o.volumes_from);
    h.log_config = Some(log_config(o));
    h.tmpfs = map(&o.tmpfs);
    h.sysctls = map(&o.sysctls);
    if !o.links.is_empty() {
        h.links
            .get_or_insert_with(Vec::new)
            .extend(o.links.iter().cloned());
    }
}

/// Whether a `services_devices` glob matches a service image (doublestar, as gitlab-runner).
fn image_matches(glob: &str, image: &str) -> bool {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(image))
        .unwrap_or(false)
}

/// A service container's share (gitlab-runner's `createHostConfigForService`): the `service_*`
/// limits, `services_security_opt`, `services_tmpfs`, the `services_devices` whose glob
/// matches `image`, `service_gpus`, and the runtime, user namespace and log config of every
/// container. Nothing of the build container's limits, devices or security options.
pub fn apply_service(h: &mut HostConfig, o: &ContainerOptions, image: &str) {
    h.memory = to_i64(o.service_memory);
    h.memory_swap = to_i64(o.service_memory_swap);
    h.memory_reservation = to_i64(o.service_memory_reservation);
    h.cgroup_parent = o.service_cgroup_parent.clone();
    h.cpuset_cpus = o.service_cpuset_cpus.clone();
    h.cpu_shares = o.service_cpu_shares;
    h.nano_cpus = o
        .service_cpus
        .filter(|c| c.is_finite() && *c > 0.0)
        .map(|c| (c * 1e9).round() as i64);
    h.devices = devices(
        o.services_devices
            .iter()
            .filter(|(glob, _)| image_matches(glob, image))
            .flat_map(|(_, d)| d.iter()),
    );
    h.device_requests = device_requests(o.service_gpus.as_deref());
    h.security_opt = list(&o.services_security_opt);
    h.runtime = o.runtime.clone();
    h.userns_mode = o.userns_mode.clone();
    h.tmpfs = map(&o.services_tmpfs);
    h.log_config = Some(log_config(o));
}

/// `enable_ipv6` and `network_mtu` for the per-job network: (EnableIPv6, driver options).
pub fn network_settings(o: &ContainerOptions) -> (Option<bool>, Option<HashMap<String, String>>) {
    let options = o.network_mtu.map(|mtu| {
        let mut m = HashMap::new();
        m.insert(NETWORK_MTU_OPTION.to_string(), mtu.to_string());
        m
    });
    (o.enable_ipv6.then_some(true), options)
}

/// `container_labels` (already expanded with the job's variables) on top of ferry's labels.
/// As in gitlab-runner, a configured label replaces one of the same name, including the
/// `com.gitlab.gitlab-runner.*` ones; ferry's own `ferry.*` labels are refused at load.
pub fn add_labels(labels: &mut HashMap<String, String>, extra: &BTreeMap<String, String>) {
    for (k, v) in extra {
        if !k.starts_with("ferry.") {
            labels.insert(k.clone(), v.clone());
        }
    }
}

/// A service container's labels: [`add_labels`], plus each configured label again under
/// `com.gitlab.gitlab-runner.` (gitlab-runner's `createServiceContainerConfig` does so for
/// backwards compatibility).
pub fn add_service_labels(labels: &mut HashMap<String, String>, extra: &BTreeMap<String, String>) {
    add_labels(labels, extra);
    for (k, v) in extra {
        labels.insert(format!("com.gitlab.gitlab-runner.{k}"), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ContainerOptions {
        let mut o = ContainerOptions {
            devices: vec!["/dev/null:/dev/xnull:r".into(), "/dev/zero".into()],
            device_cgroup_rules: vec!["c 1:3 mr".into()],
            gpus: Some("count=2,capabilities=utility".into()),
            service_gpus: Some("all".into()),
            services_security_opt: vec!["no-new-privileges".into()],
            runtime: Some("runc".into()),
            userns_mode: Some("host".into()),
            pid_mode: Some("host".into()),
            ipc_mode: Some("shareable".into()),
            cgroup_parent: Some("/ci".into()),
            service_cgroup_parent: Some("/ci-svc".into()),
            cpuset_cpus: Some("0-1".into()),
            cpuset_mems: Some("0".into()),
            service_cpuset_cpus: Some("1".into()),
            cpu_shares: Some(512),
            service_cpu_shares: Some(256),
            oom_score_adjust: Some(100),
            service_memory: Some(64 << 20),
            service_memory_swap: Some(128 << 20),
            service_memory_reservation: Some(32 << 20),
            service_cpus: Some(0.5),
            network_mtu: Some(1400),
            enable_ipv6: true,
            volumes_from: vec!["data:ro".into()],
            volume_driver: Some("local".into()),
            links: vec!["db:database".into()],
            ..Default::default()
        };
        o.tmpfs.insert("/scratch".into(), "rw,size=64m".into());
        o.services_tmpfs.insert("/var/lib/db".into(), "rw".into());
        o.ulimit.insert("nofile".into(), (1024, 2048));
        o.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        o.log_options.insert("env".into(), "A,B".into());
        o.services_devices
            .insert("postgres:*".into(), vec!["/dev/null:/dev/pgnull".into()]);
        o.services_devices
            .insert("redis*".into(), vec!["/dev/zero".into()]);
        o
    }

    fn dev(host: &str, ctr: &str, perm: &str) -> DeviceMapping {
        DeviceMapping {
            path_on_host: Some(host.into()),
            path_in_container: Some(ctr.into()),
            cgroup_permissions: Some(perm.into()),
        }
    }

    #[test]
    fn build_container_gets_what_create_host_config_sets() {
        let o = opts();
        let mut h = HostConfig {
            links: Some(vec!["svc:alias".into()]),
            ..Default::default()
        };
        apply_build(&mut h, &o);
        assert_eq!(h.cgroup_parent.as_deref(), Some("/ci"));
        assert_eq!(h.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(h.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(h.cpu_shares, Some(512));
        assert_eq!(
            h.devices,
            Some(vec![
                dev("/dev/null", "/dev/xnull", "r"),
                dev("/dev/zero", "/dev/zero", "rwm")
            ])
        );
        let req = &h.device_requests.as_ref().unwrap()[0];
        assert_eq!(req.count, Some(2));
        assert_eq!(
            req.capabilities,
            Some(vec![vec!["utility".to_string(), "gpu".to_string()]])
        );
        assert_eq!(h.device_cgroup_rules, Some(vec!["c 1:3 mr".to_string()]));
        assert_eq!(
            h.ulimits,
            Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(1024),
                hard: Some(2048)
            }])
        );
        assert_eq!(h.runtime.as_deref(), Some("runc"));
        assert_eq!(h.userns_mode.as_deref(), Some("host"));
        assert_eq!(h.pid_mode.as_deref(), Some("host"));
        assert_eq!(h.ipc_mode.as_deref(), Some("shareable"));
        assert_eq!(h.oom_score_adj, Some(100));
        assert_eq!(h.volume_driver.as_deref(), Some("local"));
        assert_eq!(h.volumes_from, Some(vec!["data:ro".to_string()]));
        let log = h.log_config.as_ref().unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        assert_eq!(log.config.as_ref().unwrap()["env"], "A,B");
        assert_eq!(h.tmpfs.as_ref().unwrap()["/scratch"], "rw,size=64m");
        assert!(!h.tmpfs.as_ref().unwrap().contains_key("/var/lib/db"));
        assert_eq!(h.sysctls.as_ref().unwrap()["net.ipv4.ip_forward"], "1");
        assert_eq!(
            h.links,
            Some(vec!["svc:alias".to_string(), "db:database".to_string()])
        );
        // service-only settings stay off the build container
        assert_eq!(h.memory, None);
        assert_eq!(h.security_opt, None);
    }

    #[test]
    fn service_container_gets_what_create_host_config_for_service_sets() {
        let o = opts();
        let mut h = HostConfig::default();
        apply_service(&mut h, &o, "postgres:16");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(128 << 20));
        assert_eq!(h.memory_reservation, Some(32 << 20));
        assert_eq!(h.cgroup_parent.as_deref(), Some("/ci-svc"));
        assert_eq!(h.cpuset_cpus.as_deref(), Some("1"));
        assert_eq!(h.cpu_shares, Some(256));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(
            h.devices,
            Some(vec![dev("/dev/null", "/dev/pgnull", "rwm")])
        );
        let req = &h.device_requests.as_ref().unwrap()[0];
        assert_eq!(req.count, Some(-1));
        assert_eq!(req.capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.runtime.as_deref(), Some("runc"));
        assert_eq!(h.userns_mode.as_deref(), Some("host"));
        assert_eq!(h.tmpfs.as_ref().unwrap()["/var/lib/db"], "rw");
        assert_eq!(
            h.log_config.as_ref().unwrap().typ.as_deref(),
            Some("json-file")
        );
        // the build container's options are not the services'
        assert_eq!(h.ulimits, None);
        assert_eq!(h.sysctls, None);
        assert_eq!(h.pid_mode, None);
        assert_eq!(h.ipc_mode, None);
        assert_eq!(h.cpuset_mems, None);
        assert_eq!(h.oom_score_adj, None);

        let mut other = HostConfig::default();
        apply_service(&mut other, &o, "mysql:8");
        assert_eq!(
            other.devices, None,
            "no services_devices glob matches mysql"
        );
        let mut redis = HostConfig::default();
        apply_service(&mut redis, &o, "redis:7");
        assert_eq!(
            redis.devices,
            Some(vec![dev("/dev/zero", "/dev/zero", "rwm")])
        );
    }

    #[test]
    fn unset_options_leave_the_daemon_defaults() {
        let o = ContainerOptions::default();
        let mut h = HostConfig::default();
        apply_build(&mut h, &o);
        assert_eq!(h.devices, None);
        assert_eq!(h.device_requests, None);
        assert_eq!(h.ulimits, None);
        assert_eq!(h.tmpfs, None);
        assert_eq!(h.cpu_shares, None);
        assert_eq!(h.links, None);
        // gitlab-runner sets json-file on every container even without options
        assert_eq!(
            h.log_config,
            Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: None
            })
        );
        assert_eq!(network_settings(&o), (None, None));
    }

    #[test]
    fn network_gets_mtu_and_ipv6() {
        let (ipv6, options) = network_settings(&opts());
        assert_eq!(ipv6, Some(true));
        assert_eq!(options.unwrap()[NETWORK_MTU_OPTION], "1400");
    }

    #[test]
    fn configured_labels_replace_gitlab_runner_ones_but_not_ferrys() {
        let mut labels = HashMap::new();
        labels.insert(
            "com.gitlab.gitlab-runner.type".to_string(),
            "build".to_string(),
        );
        labels.insert("ferry.managed".to_string(), "true".to_string());
        let mut extra = BTreeMap::new();
        extra.insert("com.gitlab.gitlab-runner.type".to_string(), "x".to_string());
        extra.insert("ferry.managed".to_string(), "false".to_string());
        extra.insert("team".to_string(), "ci".to_string());
        add_labels(&mut labels, &extra);
        assert_eq!(labels["com.gitlab.gitlab-runner.type"], "x");
        assert_eq!(labels["ferry.managed"], "true");
        assert_eq!(labels["team"], "ci");

        let mut svc = HashMap::new();
        add_service_labels(&mut svc, &extra);
        assert_eq!(svc["team"], "ci");
        assert_eq!(svc["com.gitlab.gitlab-runner.team"], "ci");
        assert!(!svc.contains_key("ferry.managed"));
    }
}
