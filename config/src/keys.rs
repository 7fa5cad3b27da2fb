//! ferry's key table: what ferry does with every key of gitlab-runner's `config.toml`.
//!
//! Each key is exactly one of: honoured (read and applied), warned once with its line when it
//! is set (ignoring it is harmless), or refused at load with its line (ignoring it would weaken
//! isolation). A table entry such as `runners.kubernetes` covers every key under it. Keys a
//! table reader does not read are looked up here by [`crate::walk::TableReader::finish`];
//! `config/tests/gitlab_runner_keys.rs` checks the table against every key of gitlab-runner
//! (`config/testdata/gitlab-runner-keys.txt`) and against what loading does.
//! docs/configuration.md documents each key with the same status.

/// What ferry does with one key (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Read and applied (docs/configuration.md says how).
    Honoured,
    /// A table whose keys are classified one by one.
    Table,
    /// Ignored: one warning `ignored: <reason>` with the line, unless the value is the "off"
    /// one `register` writes (false, 0, "", [], empty table).
    Warned(&'static str),
    /// A gitlab-runner feature ferry does not implement yet: one warning `accepted but not
    /// implemented yet` with the line, unless the value is the "off" one.
    NotImplemented,
    /// Like `NotImplemented`, but the "off" value is `true` (`clean_git_config`).
    NotImplementedDefaultTrue,
    /// Ignoring it would weaken isolation: any value but the "off" one is an error naming the
    /// file, the line and the key.
    Refused(&'static str),
}

use KeyStatus::{
    Honoured as H, NotImplemented as N, NotImplementedDefaultTrue as NTrue, Refused as R,
    Table as T, Warned as W,
};

const OTHER_EXECUTOR: KeyStatus =
    W("settings of another gitlab-runner executor; ferry runs only the docker executor");
const NO_HELPER: KeyStatus =
    W("ferry runs no helper image (it clones and handles artifacts itself)");
const SLOT_CGROUPS: KeyStatus = W(
    "slot cgroups only exist with gitlab-runner's docker-autoscaler executor (gitlab-runner's docker executor does not apply them either); use cgroup_parent",
);
const ASSUME_ROLE: KeyStatus = W(
    "ferry calls no STS AssumeRole with static credentials (RoleARN works only with a web identity token)",
);

/// Every key, by its path without array indexes (`runners.docker.services.name`).
pub const KEYS: &[(&str, KeyStatus)] = &[
    // global
    ("listen_address", H),
    ("concurrent", H),
    ("check_interval", H),
    ("log_level", H),
    ("log_format", H),
    ("shutdown_timeout", H),
    ("connection_max_age", H),
    ("runners", T),
    ("labels", W("runner labels are not implemented")),
    (
        "user",
        W("the user of gitlab-runner's shell executor; ferry runs jobs in containers"),
    ),
    ("sentry_dsn", W("ferry reports no errors to Sentry")),
    ("machine", OTHER_EXECUTOR),
    (
        "experimental",
        W("gitlab-runner's usage logger is not implemented"),
    ),
    ("session_server", T),
    ("session_server.listen_address", N),
    ("session_server.advertise_address", N),
    // `register` writes 1800 (silent, see REGISTER_DEFAULTS); it only matters with a listen address
    (
        "session_server.session_timeout",
        W("the interactive web terminal is not implemented"),
    ),
    // [[runners]]
    ("runners.name", H),
    ("runners.url", H),
    ("runners.id", H),
    ("runners.token", H),
    ("runners.token_obtained_at", H),
    ("runners.token_expires_at", H),
    ("runners.tls-ca-file", H),
    ("runners.tls-cert-file", H),
    ("runners.tls-key-file", H),
    ("runners.executor", H),
    ("runners.limit", H),
    ("runners.output_limit", H),
    ("runners.request_concurrency", H),
    ("runners.unhealthy_requests_limit", H),
    ("runners.unhealthy_interval", H),
    ("runners.job_status_final_update_retry_limit", H),
    ("runners.builds_dir", H),
    ("runners.cache_dir", H),
    ("runners.clone_url", H),
    ("runners.environment", H),
    ("runners.pre_build_script", H),
    ("runners.post_build_script", H),
    ("runners.shell", H),
    ("runners.debug_trace_disabled", H),
    ("runners.feature_flags", H),
    ("runners.pre_get_sources_script", H),
    ("runners.post_get_sources_script", H),
    // Removed in gitlab-runner 17.0, which no longer reads them.
    (
        "runners.pre_clone_script",
        W("removed in gitlab-runner 17.0 and not run; use pre_get_sources_script"),
    ),
    (
        "runners.post_clone_script",
        W("removed in gitlab-runner 17.0 and not run; use post_get_sources_script"),
    ),
    ("runners.clean_git_config", NTrue),
    ("runners.strict_check_interval", N),
    ("runners.prepare_timeout", N),
    ("runners.get_sources_timeout", N),
    ("runners.artifact", N),
    ("runners.monitoring", N),
    ("runners.custom_build_dir", T),
    ("runners.custom_build_dir.enabled", H),
    (
        "runners.safe_directory_checkout",
        W("ferry fetches sources on the host and adds no git safe.directory entry"),
    ),
    ("runners.labels", W("runner labels are not implemented")),
    ("runners.proxy_exec", NO_HELPER),
    ("runners.step_runner_image", W("ferry runs no step-runner")),
    ("runners.use_slot_cgroups", SLOT_CGROUPS),
    ("runners.slot_cgroup_template", SLOT_CGROUPS),
    (
        "runners.referees",
        W("gitlab-runner's metrics referees are not implemented"),
    ),
    (
        "runners.experimental",
        W("gitlab-runner's experimental boot_verify canary is not implemented"),
    ),
    ("runners.ssh", OTHER_EXECUTOR),
    ("runners.kubernetes", OTHER_EXECUTOR),
    ("runners.machine", OTHER_EXECUTOR),
    ("runners.autoscaler", OTHER_EXECUTOR),
    ("runners.custom", OTHER_EXECUTOR),
    ("runners.parallels", OTHER_EXECUTOR),
    ("runners.virtualbox", OTHER_EXECUTOR),
    ("runners.instance", OTHER_EXECUTOR),
    // older gitlab-runner (docker+machine)
    ("runners.max_builds", OTHER_EXECUTOR),
    // [runners.docker]
    ("runners.docker", T),
    ("runners.docker.host", H),
    ("runners.docker.tls_cert_path", H),
    ("runners.docker.tls_verify", H),
    ("runners.docker.hostname", H),
    ("runners.docker.image", H),
    ("runners.docker.runtime", H),
    ("runners.docker.memory", H),
    ("runners.docker.memory_swap", H),
    ("runners.docker.memory_reservation", H),
    ("runners.docker.cgroup_parent", H),
    ("runners.docker.cpuset_cpus", H),
    ("runners.docker.cpuset_mems", H),
    ("runners.docker.cpus", H),
    ("runners.docker.cpu_shares", H),
    ("runners.docker.dns", H),
    ("runners.docker.dns_search", H),
    ("runners.docker.privileged", H),
    ("runners.docker.services_privileged", H),
    ("runners.docker.disable_entrypoint_overwrite", H),
    ("runners.docker.user", H),
    ("runners.docker.allowed_users", H),
    ("runners.docker.group_add", H),
    ("runners.docker.userns_mode", H),
    ("runners.docker.cap_add", H),
    ("runners.docker.cap_drop", H),
    ("runners.docker.oom_kill_disable", H),
    ("runners.docker.oom_score_adjust", H),
    ("runners.docker.security_opt", H),
    ("runners.docker.services_security_opt", H),
    ("runners.docker.devices", H),
    ("runners.docker.device_cgroup_rules", H),
    ("runners.docker.gpus", H),
    ("runners.docker.services_devices", H),
    ("runners.docker.disable_cache", H),
    ("runners.docker.volumes", H),
    ("runners.docker.volume_driver", H),
    ("runners.docker.volume_driver_ops", H),
    ("runners.docker.cache_dir", H),
    ("runners.docker.extra_hosts", H),
    ("runners.docker.volumes_from", H),
    ("runners.docker.network_mode", H),
    ("runners.docker.pid_mode", H),
    ("runners.docker.ipcmode", H),
    ("runners.docker.links", H),
    ("runners.docker.services_limit", H),
    ("runners.docker.service_memory", H),
    ("runners.docker.service_memory_swap", H),
    ("runners.docker.service_memory_reservation", H),
    ("runners.docker.service_cgroup_parent", H),
    ("runners.docker.service_cpuset_cpus", H),
    ("runners.docker.service_cpus", H),
    ("runners.docker.service_cpu_shares", H),
    ("runners.docker.service_gpus", H),
    ("runners.docker.wait_for_services_timeout", H),
    ("runners.docker.allowed_images", H),
    ("runners.docker.allowed_privileged_images", H),
    ("runners.docker.allowed_privileged_services", H),
    ("runners.docker.allowed_pull_policies", H),
    ("runners.docker.allowed_services", H),
    ("runners.docker.pull_policy", H),
    ("runners.docker.shm_size", H),
    ("runners.docker.tmpfs", H),
    ("runners.docker.services_tmpfs", H),
    ("runners.docker.sysctls", H),
    ("runners.docker.container_labels", H),
    ("runners.docker.enable_ipv6", H),
    ("runners.docker.ulimit", H),
    ("runners.docker.network_mtu", H),
    ("runners.docker.log_options", H),
    // ferry's own
    ("runners.docker.pids_limit", H),
    (
        "runners.docker.volume_keep",
        W("ferry keeps its cache volumes between jobs and removes a job's own volumes with it"),
    ),
    (
        "runners.docker.mac_address",
        W("ferry does not set a MAC address on the job's containers"),
    ),
    ("runners.docker.service_slot_cgroup_template", SLOT_CGROUPS),
    ("runners.docker.helper_image", NO_HELPER),
    ("runners.docker.helper_image_flavor", NO_HELPER),
    // older gitlab-runner
    ("runners.docker.helper_image_autoset_arch_and_os", NO_HELPER),
    (
        "runners.docker.isolation",
        R(
            "Windows container isolation (process, hyperv); ferry runs Linux containers, where only \"default\" exists",
        ),
    ),
    ("runners.docker.services", T),
    ("runners.docker.services.name", H),
    ("runners.docker.services.alias", H),
    ("runners.docker.services.command", H),
    ("runners.docker.services.entrypoint", H),
    ("runners.docker.services.environment", H),
    (
        "runners.docker.services.suspend_data_path",
        W("only used by gitlab-runner's Kubernetes executor"),
    ),
    // [runners.cache]
    ("runners.cache", T),
    ("runners.cache.Type", H),
    ("runners.cache.Path", H),
    ("runners.cache.Shared", H),
    ("runners.cache.MaxUploadedArchiveSize", H),
    // the pre-12.0 layout of the s3 keys
    ("runners.cache.ServerAddress", H),
    ("runners.cache.AccessKey", H),
    ("runners.cache.SecretKey", H),
    ("runners.cache.BucketName", H),
    ("runners.cache.BucketLocation", H),
    ("runners.cache.Insecure", H),
    // older gitlab-runner
    (
        "runners.cache.RedactURL",
        W("ferry never logs pre-signed URLs (it signs its own requests)"),
    ),
    (
        "runners.cache.gcsv2",
        W("ferry reads [runners.cache.gcs] for Type = \"gcsv2\""),
    ),
    ("runners.cache.s3", T),
    ("runners.cache.s3.ServerAddress", H),
    ("runners.cache.s3.AccessKey", H),
    ("runners.cache.s3.SecretKey", H),
    ("runners.cache.s3.SessionToken", H),
    ("runners.cache.s3.BucketName", H),
    ("runners.cache.s3.BucketLocation", H),
    ("runners.cache.s3.Insecure", H),
    ("runners.cache.s3.AuthenticationType", H),
    ("runners.cache.s3.ServerSideEncryption", H),
    ("runners.cache.s3.ServerSideEncryptionKeyID", H),
    ("runners.cache.s3.PathStyle", H),
    ("runners.cache.s3.RoleARN", H),
    ("runners.cache.s3.DualStack", N),
    ("runners.cache.s3.Accelerate", N),
    ("runners.cache.s3.UploadRoleARN", N),
    ("runners.cache.s3.AssumeRoleMaxConcurrency", ASSUME_ROLE),
    (
        "runners.cache.s3.DisableAssumeRoleCredentialsCaching",
        ASSUME_ROLE,
    ),
    ("runners.cache.gcs", T),
    ("runners.cache.gcs.AccessID", H),
    ("runners.cache.gcs.PrivateKey", H),
    ("runners.cache.gcs.CredentialsFile", H),
    ("runners.cache.gcs.BucketName", H),
    ("runners.cache.gcs.UniverseDomain", N),
    ("runners.cache.azure", T),
    ("runners.cache.azure.AccountName", H),
    ("runners.cache.azure.AccountKey", H),
    ("runners.cache.azure.ContainerName", H),
    ("runners.cache.azure.StorageDomain", H),
    // [runners.deploy]: ferry's own
    ("runners.deploy", T),
    ("runners.deploy.image", H),
    ("runners.deploy.targets", T),
    ("runners.deploy.targets.name", H),
    ("runners.deploy.targets.kubeconfig", H),
    ("runners.deploy.targets.context", H),
    ("runners.deploy.targets.environments", H),
    ("runners.deploy.targets.namespaces", H),
    ("runners.deploy.targets.default_namespace", H),
    ("runners.deploy.targets.cluster_scoped", H),
    ("runners.deploy.targets.protected_refs_only", H),
];

/// gitlab-runner's feature flags and their defaults (`name<TAB>default` lines, made by
/// `scripts/gitlab-runner-keys.py --feature-flags` from its helpers/featureflags/flags.go).
const FEATURE_FLAGS: &str = include_str!("gitlab-runner-feature-flags.txt");

/// What ferry does with one `[runners.feature_flags]` entry set to `value`. Every flag is also
/// passed to the job as a variable (docs/variables.md).
pub fn feature_flag(name: &str, value: bool) -> KeyStatus {
    match (name, value) {
        // a network per job, also without services (executor/src/docker/mod.rs)
        ("FF_NETWORK_PER_BUILD", _) => H,
        // either value is acted on (runner/src/trace/stamp.rs, the script sections of
        // runner/src/plan); ferry's default for both is off (docs/job-log.md)
        ("FF_TIMESTAMPS", _) | ("FF_SCRIPT_SECTIONS", _) => H,
        // gitlab-runner then keeps the checkout to the job's user instead of umask 0000;
        // ferry writes it world-writable, so honouring the file is impossible: fail closed
        ("FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", true) => R(
            "ferry writes the job's files world-writable (umask 0000, gitlab-runner's default) and cannot keep them to the job's user",
        ),
        _ => match feature_flag_default(name) {
            // the value asks for gitlab-runner's default behaviour: nothing to say
            Some(default) if default == value => H,
            Some(_) => W("ferry does not read this feature flag (jobs still see it as a variable)"),
            None => W("not a feature flag of gitlab-runner (jobs still see it as a variable)"),
        },
    }
}

/// gitlab-runner's default of a feature flag; `None` if it has no such flag.
pub fn feature_flag_default(name: &str) -> Option<bool> {
    FEATURE_FLAGS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d == "true")
}

/// Integer values `register` writes for keys ferry ignores: as silent as "off" values.
pub(crate) const REGISTER_DEFAULTS: &[(&str, i64)] = &[("session_server.session_timeout", 1800)];

/// `runners[0].docker.services[1]` → `runners.docker.services`.
pub fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// The entry of exactly this key (path without indexes).
pub fn status(path: &str) -> Option<KeyStatus> {
    KEYS.iter().find(|(k, _)| *k == path).map(|(_, s)| *s)
}

/// The entry that decides a key: its own, or that of the nearest enclosing table that is not
/// classified key by key (`runners.kubernetes.image` → `runners.kubernetes`).
pub fn classify(path: &str) -> Option<(&'static str, KeyStatus)> {
    let path = normalize(path);
    let mut p = path.as_str();
    loop {
        if let Some((k, s)) = KEYS.iter().find(|(k, _)| *k == p) {
            if *k == path || *s != KeyStatus::Table {
                return Some((k, *s));
            }
            return None;
        }
        p = &p[..p.rfind('.')?];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_their_indexes_and_tables_cover_their_keys() {
        assert_eq!(
            normalize("runners[0].docker.services[12].name"),
            "runners.docker.services.name"
        );
        assert_eq!(
            classify("runners[3].docker.image"),
            Some(("runners.docker.image", KeyStatus::Honoured))
        );
        assert_eq!(
            classify("runners[0].kubernetes.pod_labels").map(|c| c.0),
            Some("runners.kubernetes")
        );
        assert_eq!(classify("runners.docker.no_such_key"), None);
        assert_eq!(
            classify("runners.docker").map(|c| c.1),
            Some(KeyStatus::Table)
        );
    }

    #[test]
    fn feature_flags() {
        assert_eq!(feature_flag_default("FF_NETWORK_PER_BUILD"), Some(false));
        assert_eq!(feature_flag_default("FF_TIMESTAMPS"), Some(true));
        assert_eq!(
            feature_flag_default("FF_USE_LEGACY_S3_CACHE_ADAPTER"),
            Some(false)
        );
        assert_eq!(feature_flag_default("FF_NOPE"), None);
        assert_eq!(
            feature_flag("FF_NETWORK_PER_BUILD", true),
            KeyStatus::Honoured
        );
        assert_eq!(feature_flag("FF_TIMESTAMPS", true), KeyStatus::Honoured);
        assert_eq!(feature_flag("FF_TIMESTAMPS", false), KeyStatus::Honoured);
        assert_eq!(
            feature_flag("FF_SCRIPT_SECTIONS", true),
            KeyStatus::Honoured
        );
        assert!(matches!(
            feature_flag("FF_USE_FASTZIP", false),
            KeyStatus::Warned(_)
        ));
        assert!(matches!(
            feature_flag("FF_NOPE", false),
            KeyStatus::Warned(_)
        ));
        assert!(matches!(
            feature_flag("FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", true),
            KeyStatus::Refused(_)
        ));
        assert_eq!(
            feature_flag("FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR", false),
            KeyStatus::Honoured
        );
    }

    #[test]
    fn every_key_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (k, _) in KEYS {
            assert!(seen.insert(*k), "{k} is listed twice");
        }
    }
}
