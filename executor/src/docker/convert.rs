//! Pure conversion from ferry's types to Docker's: names, labels, volume specs, allow-lists, host
//! configs and the step script. No I/O here, so all of it is unit tested.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions, RestartPolicy,
    RestartPolicyNameEnum,
};
use ferry_config::DockerSection;
use ferry_config::joblog::{BOLD_GREEN, CLEAR, RESET};
use globset::{GlobBuilder, GlobMatcher};

use super::hostpaths::HostSide;
use crate::engine::{EngineError, ImageSpec, JobEnv, StepSpec};

/// Label on everything ferry creates; `cleanup_leftovers` looks for it.
pub const LABEL_MANAGED: &str = "ferry.managed";
pub const LABEL_RUNNER: &str = "ferry.runner";
pub const LABEL_JOB: &str = "ferry.job_id";
pub const LABEL_PROJECT: &str = "ferry.project_id";
pub const LABEL_TYPE: &str = "ferry.type";
/// Set on persistent cache volumes (the `"/path"` entries of `volumes`), which outlive jobs.
pub const LABEL_CACHE: &str = "ferry.cache";

/// gitlab-runner's shell detection (shells/bash.go): the first bash found, else the first sh.
/// Used as the build container's command (it then waits on its open, empty stdin, which keeps the
/// container alive) and as the command of every step's exec (which reads the script on stdin).
pub const DETECT_SHELL: &str = "if [ -x /usr/local/bin/bash ]; then\n\texec /usr/local/bin/bash\nelif [ -x /usr/bin/bash ]; then\n\texec /usr/bin/bash\nelif [ -x /bin/bash ]; then\n\texec /bin/bash\nelif [ -x /usr/local/bin/sh ]; then\n\texec /usr/local/bin/sh\nelif [ -x /usr/bin/sh ]; then\n\texec /usr/bin/sh\nelif [ -x /bin/sh ]; then\n\texec /bin/sh\nelif [ -x /busybox/sh ]; then\n\texec /busybox/sh\nelse\n\techo shell not found\n\texit 1\nfi\n";

/// Runs a step of the build container so that its output and exit code survive ferry
/// (docs/crash-safety.md). `$1` is the steps dir in the container, `$2` the step's file name.
/// The detected shell reads the script from stdin as in the streaming mode; its output (stdout
/// and stderr, in order) goes through a FIFO to a background `cat` appending to `$2.log`, so the
/// output ends only when every process holding it has ended (as the exec stream did). The
/// wrapper (this script, the job shell's parent) waits for the shell itself and writes its exit
/// code to `$2.code` as soon as it exits, whatever killed it; once `cat` ended, `$2.code` is
/// renamed to `$2.exit`: that rename is the step's end. `$2.pids` lists the wrapper and `cat`
/// (spared by the first signal of a stop). Without `cat` or `mkfifo` in the image, the output
/// is appended directly. The wrapper works in the steps dir itself (relative names): a job
/// that renames a directory above it (`/builds/<namespace>`, the container's own) does not
/// lose its exit code.
pub fn kept_step_script() -> String {
    let shell = format!("(\n{DETECT_SHELL})");
    format!(
        r#"d=$1; n=$2; p=$PWD; cd "$d" || exit 1; trap : TERM; echo $$ > "$n.pids"
if command -v cat >/dev/null 2>&1 && rm -f "$n.fifo" && mkfifo "$n.fifo" 2>/dev/null; then
cat "$n.fifo" >> "$n.log" & c=$!; echo $c >> "$n.pids"
(cd "$p" && {shell}) > "$n.fifo" 2>&1; echo $? > "$n.code"
while kill -0 $c 2>/dev/null; do wait $c; done
rm -f "$n.fifo"
else
(cd "$p" && {shell}) >> "$n.log" 2>&1; echo $? > "$n.code"
fi
s=1; read -r s < "$n.code"
mv -f "$n.code" "$n.exit"
exit "$s"
"#
    )
}

/// Where the build container sees `JobEnv::host_steps_dir`: `<project_dir>.steps`.
pub fn steps_dir(env: &JobEnv) -> String {
    format!("{}.steps", env.project_dir)
}

/// The file name a step's kept output and exit code go by: its name, reduced to
/// `[A-Za-z0-9_-]` (step names are GitLab's: `script`, `after_script`, `release`, ...).
pub fn step_file_name(step: &str) -> String {
    let s: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "step".into() } else { s }
}

/// Sends SIGTERM (or the signal given as `$1`) to every process of the container except PID 1
/// (the shell that keeps the container alive), itself, and the processes listed in the file
/// `$2` if given (a kept step's `.pids`: the wrapper and the `cat` that keep its output flowing
/// through the grace period, see [`kept_step_script`]). Run with `docker exec` to stop a step.
pub const SIGNAL_ALL_SCRIPT: &str = "s=' '; if [ -n \"$2\" ] && [ -f \"$2\" ]; then while read -r x; do s=\"$s$x \"; done < \"$2\"; fi; for P in $(cd /proc && echo [0-9]*); do case \"$s\" in *\" $P \"*) continue;; esac; if [ \"$P\" != 1 ] && [ \"$P\" != $$ ]; then kill -$1 $P 2>/dev/null; fi; done; exit 0";

/// Keep names within what Docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn sanitize_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 'x');
    }
    out
}

/// `runner-<short>-project-<id>-job-<id>`: the prefix of every container and network of a job,
/// shaped like gitlab-runner's `runner-<short>-project-<id>-concurrent-<n>` names.
pub fn job_prefix(env: &JobEnv) -> String {
    sanitize_name(&format!(
        "runner-{}-project-{}-job-{}",
        env.runner_short_token, env.project_id, env.job_id
    ))
}

pub fn build_container_name(env: &JobEnv) -> String {
    format!("{}-build", job_prefix(env))
}

/// The short-lived container of a get_sources hook (`Engine::run_hook`).
pub fn hook_container_name(env: &JobEnv) -> String {
    format!("{}-hook", job_prefix(env))
}

pub fn network_name(env: &JobEnv) -> String {
    format!("{}-network", job_prefix(env))
}

/// `runner-...-job-<id>-<service slug>-<index>` (gitlab-runner: `<unique>-<slug>-<index>`).
pub fn service_container_name(env: &JobEnv, image: &str, index: usize) -> String {
    let (_, path, _) = split_image(image);
    let slug = path.rsplit('/').next().unwrap_or(path.as_str()).to_string();
    format!("{}-{}-{}", job_prefix(env), sanitize_name(&slug), index)
}

/// Labels for a container or network of the job.
pub fn job_labels(env: &JobEnv, kind: &str) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(LABEL_MANAGED.into(), "true".into());
    l.insert(LABEL_RUNNER.into(), env.runner_short_token.clone());
    l.insert(LABEL_JOB.into(), env.job_id.to_string());
    l.insert(LABEL_PROJECT.into(), env.project_id.to_string());
    l.insert(LABEL_TYPE.into(), kind.into());
    // The names gitlab-runner uses, so existing tooling (dashboards, janitors) sees ferry's too.
    l.insert(
        "com.gitlab.gitlab-runner.job.id".into(),
        env.job_id.to_string(),
    );
    l.insert(
        "com.gitlab.gitlab-runner.project.id".into(),
        env.project_id.to_string(),
    );
    l.insert("com.gitlab.gitlab-runner.type".into(), kind.into());
    l
}

/// Split an image reference into (registry host, repository path, tag or digest).
/// `postgres:15` → ("docker.io", "postgres", "15"); `registry.example.com:5000/group/pg@sha256:..`
/// → ("registry.example.com:5000", "group/pg", "sha256:..").
pub fn split_image(name: &str) -> (String, String, String) {
    let (rest, reference) = if let Some((r, d)) = name.split_once('@') {
        (r, d.to_string())
    } else {
        match name.rfind(':') {
            Some(i) if !name[i + 1..].contains('/') => (&name[..i], name[i + 1..].to_string()),
            _ => (name, "latest".to_string()),
        }
    };
    // Drop a tag that precedes a digest (`repo:tag@sha256:...`).
    let rest = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => &rest[..i],
        _ => rest,
    };
    match rest.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), path.to_string(), reference)
        }
        _ => ("docker.io".to_string(), rest.to_string(), reference),
    }
}

/// The hostnames gitlab-runner derives from a service's image name: the image path without tag
/// and without the registry's port, with `/` replaced by `__`, and (when different) by `-`.
/// `registry.example.com:5000/group/postgres:15` → `registry.example.com__group__postgres`,
/// `registry.example.com-group-postgres`.
pub fn service_aliases_from_image(name: &str) -> Vec<String> {
    let without_ref = match name.split_once('@') {
        Some((r, _)) => r,
        None => name,
    };
    let without_tag = match without_ref.rfind(':') {
        Some(i) if !without_ref[i + 1..].contains('/') => &without_ref[..i],
        _ => without_ref,
    };
    // Remove the registry port: `host:5000/path` → `host/path`.
    let service = match without_tag.split_once('/') {
        Some((host, path)) if host.contains(':') => {
            let h = host.split(':').next().unwrap_or(host);
            format!("{h}/{path}")
        }
        _ => without_tag.to_string(),
    };
    if service.is_empty() {
        return Vec::new();
    }
    let a = service.replace('/', "__");
    let b = service.replace('/', "-");
    if a == b { vec![a] } else { vec![a, b] }
}

/// `allowed_images` / `allowed_services`: doublestar globs (`*` stays within a path segment,
/// `**` crosses `/`), `!pattern` excludes. Empty = everything allowed.
pub struct AllowList {
    patterns: Vec<String>,
    allow: Vec<GlobMatcher>,
    deny: Vec<GlobMatcher>,
}

impl AllowList {
    pub fn new(patterns: &[String], key: &str) -> Result<Self, EngineError> {
        let mut allow = Vec::new();
        let mut deny = Vec::new();
        for p in patterns {
            let (neg, pat) = match p.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, p.as_str()),
            };
            let glob = GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    EngineError::Configuration(format!(
                        "[runners.docker] {key}: invalid pattern {p:?}: {e}"
                    ))
                })?
                .compile_matcher();
            if neg {
                deny.push(glob);
            } else {
                allow.push(glob);
            }
        }
        Ok(Self {
            patterns: patterns.to_vec(),
            allow,
            deny,
        })
    }

    pub fn allows(&self, image: &str) -> bool {
        if self.deny.iter().any(|g| g.is_match(image)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|g| g.is_match(image))
    }

    /// `what` is `image` or `service`, `key` the config key.
    pub fn check(&self, image: &str, what: &str, key: &str) -> Result<(), EngineError> {
        if self.patterns.is_empty() || self.allows(image) {
            return Ok(());
        }
        Err(EngineError::Configuration(format!(
            "the {what} {image:?} is not allowed by [runners.docker] {key} = [{}]",
            self.patterns
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// `allowed_privileged_images` / `allowed_privileged_services`, with gitlab-runner's semantics
/// (`isInAllowedPrivilegedImages` in its executors/docker/docker.go): an empty list allows every
/// image; otherwise the image name must match one of the doublestar patterns. There is no
/// negation: a leading `!` is matched literally. A pattern that does not compile matches nothing
/// (gitlab-runner ignores the match error), so a bad pattern never grants privileges.
pub struct PrivilegedList {
    empty: bool,
    patterns: Vec<GlobMatcher>,
}

impl PrivilegedList {
    pub fn new(patterns: &[String]) -> Self {
        PrivilegedList {
            empty: patterns.is_empty(),
            patterns: patterns
                .iter()
                .filter_map(|p| {
                    GlobBuilder::new(p)
                        .literal_separator(true)
                        .build()
                        .ok()
                        .map(|g| g.compile_matcher())
                })
                .collect(),
        }
    }

    /// Whether `image` may run privileged (when the runner runs containers privileged at all).
    pub fn allows(&self, image: &str) -> bool {
        self.empty || self.patterns.iter().any(|g| g.is_match(image))
    }
}

/// Whether the build container runs privileged: `privileged = true` and the job's image in
/// `allowed_privileged_images`. As in gitlab-runner, the name matched is the job's own `image:`
/// (expanded); a job that names no image runs the runner's default image and is matched as `""`,
/// so with a non-empty list it runs unprivileged unless a pattern matches the empty name.
pub fn build_privileged(section: &DockerSection, list: &PrivilegedList, image: &ImageSpec) -> bool {
    let name = if image.runner_default {
        ""
    } else {
        image.name.as_str()
    };
    section.privileged && list.allows(name)
}

/// Whether a service container runs privileged: `services_privileged` (default: `privileged`)
/// and the service's image in `allowed_privileged_services` (gitlab-runner's
/// `createHostConfigForService`).
pub fn service_privileged(section: &DockerSection, list: &PrivilegedList, image: &str) -> bool {
    section.services_privileged.unwrap_or(section.privileged) && list.allows(image)
}

/// The user of the build container, as gitlab-runner's `getBuildContainerUser` decides it: the
/// runner's `user` takes precedence over the job's `image:docker:user`; the result must pass
/// `allowed_users` (`IsUserAllowed` in its common/config.go): the image's default user (none
/// set) is always allowed; with neither `user` nor `allowed_users` configured, any user is;
/// otherwise the user must be in `allowed_users`, which defaults to just the runner's `user`.
pub fn build_container_user(
    section: &DockerSection,
    image: &ImageSpec,
) -> Result<Option<String>, EngineError> {
    let runner_user = section.user.as_deref().unwrap_or("");
    let user = if runner_user.is_empty() {
        image.user.as_deref().unwrap_or("")
    } else {
        runner_user
    };
    if user.is_empty() {
        return Ok(None);
    }
    if section.allowed_users.is_empty() && runner_user.is_empty() {
        return Ok(Some(user.to_string()));
    }
    let allowed: Vec<&str> = if section.allowed_users.is_empty() {
        vec![runner_user]
    } else {
        section.allowed_users.iter().map(String::as_str).collect()
    };
    if allowed.contains(&user) {
        return Ok(Some(user.to_string()));
    }
    // gitlab-runner's message: `user %q is not an allowed user: %v` (Go prints a list as [a b]).
    Err(EngineError::Configuration(format!(
        "user {user:?} is not an allowed user: [{}]",
        allowed.join(" ")
    )))
}

/// One entry of `[runners.docker] volumes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpec {
    /// `SRC:DST[:MODE]`: a host path (or a named Docker volume when SRC is a name), as given.
    Bind {
        source: String,
        destination: String,
        mode: Option<String>,
    },
    /// `/path`: a runner-managed volume per runner and project, kept between jobs.
    Cache { destination: String },
}

impl VolumeSpec {
    pub fn destination(&self) -> &str {
        match self {
            VolumeSpec::Bind { destination, .. } | VolumeSpec::Cache { destination } => destination,
        }
    }
}

fn valid_mode(mode: &str) -> bool {
    !mode.is_empty()
        && mode.split(',').all(|m| {
            matches!(
                m,
                "ro" | "rw"
                    | "z"
                    | "Z"
                    | "shared"
                    | "rshared"
                    | "slave"
                    | "rslave"
                    | "private"
                    | "rprivate"
                    | "nocopy"
                    | "consistent"
                    | "cached"
                    | "delegated"
            )
        })
}

fn valid_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parse a `volumes` entry (Docker's `-v` syntax, Linux paths).
pub fn parse_volume(spec: &str) -> Result<VolumeSpec, EngineError> {
    let bad = |why: &str| {
        EngineError::Configuration(format!(
            "[runners.docker] volumes: invalid volume specification {spec:?}: {why}"
        ))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [dst] => {
            if !dst.starts_with('/') {
                return Err(bad("the container path must be absolute"));
            }
            Ok(VolumeSpec::Cache {
                destination: clean_path(dst),
            })
        }
        [src, dst] | [src, dst, _] => {
            let mode = parts.get(2).map(|m| m.to_string());
            if src.is_empty() {
                return Err(bad("empty source"));
            }
            if !dst.starts_with('/') {
                return Err(bad("the container path must be absolute"));
            }
            if !src.starts_with('/') && !valid_volume_name(src) {
                return Err(bad(
                    "the source must be an absolute host path or a volume name",
                ));
            }
            if let Some(m) = &mode
                && !valid_mode(m)
            {
                return Err(bad(&format!("unknown mode {m:?} (expected ro or rw)")));
            }
            Ok(VolumeSpec::Bind {
                source: src.to_string(),
                destination: clean_path(dst),
                mode,
            })
        }
        _ => Err(bad("too many colons")),
    }
}

fn clean_path(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// FNV-1a: a stable short hash for volume names (gitlab-runner uses md5 of the path).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `runner-<short>-project-<id>[-concurrent-<n>]`: whose cache a `"/path"` volume is. The slot
/// (`CI_CONCURRENT_PROJECT_ID`, when the job has it) keeps concurrent jobs of one project apart,
/// as gitlab-runner does.
fn cache_scope(env: &JobEnv) -> String {
    let slot = env
        .variables
        .iter()
        .rev()
        .find(|v| v.name == "CI_CONCURRENT_PROJECT_ID")
        .map(|v| v.value.as_str())
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()));
    let base = format!(
        "runner-{}-project-{}",
        env.runner_short_token, env.project_id
    );
    sanitize_name(&match slot {
        Some(n) => format!("{base}-concurrent-{n}"),
        None => base,
    })
}

/// `runner-<short>-project-<id>[-concurrent-<n>]-cache-<hash of the path>`: the named volume
/// behind a `"/path"` volume.
pub fn cache_volume_name(env: &JobEnv, destination: &str) -> String {
    format!("{}-cache-{:016x}", cache_scope(env), fnv1a(destination))
}

/// Where a `"/path"` volume lives on the host when `cache_dir` is set:
/// `<cache_dir>/runner-<short>-project-<id>[-concurrent-<n>]/<hash of the path>`.
pub fn cache_host_dir(
    cache_dir: &std::path::Path,
    env: &JobEnv,
    destination: &str,
) -> std::path::PathBuf {
    cache_dir
        .join(cache_scope(env))
        .join(format!("{:016x}", fnv1a(destination)))
}

/// The mounts shared by the build container and the services: `binds` (Docker's `-v` syntax)
/// and, for a directory inside a named volume, `mounts` with `VolumeOptions.Subpath`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMounts {
    pub binds: Vec<String>,
    pub mounts: Vec<Mount>,
}

impl JobMounts {
    /// Mount `side` at `target` in the job's containers.
    pub fn add(&mut self, side: HostSide, target: &str, read_only: bool) {
        let ro = if read_only { ":ro" } else { "" };
        match side {
            HostSide::Path(p) => self.binds.push(format!("{}:{target}{ro}", p.display())),
            HostSide::Volume {
                name,
                subpath: None,
            } => self.binds.push(format!("{name}:{target}{ro}")),
            HostSide::Volume {
                name,
                subpath: Some(sub),
            } => self.mounts.push(Mount {
                target: Some(target.to_string()),
                source: Some(name),
                typ: Some(MountType::VOLUME),
                read_only: Some(read_only),
                volume_options: Some(MountVolumeOptions {
                    subpath: Some(sub),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// Set them on a container's host config.
    pub fn apply(&self, host_config: &mut HostConfig) {
        host_config.binds = Some(self.binds.clone());
        host_config.mounts = if self.mounts.is_empty() {
            None
        } else {
            Some(self.mounts.clone())
        };
    }
}

/// Where the job's project dir and file variables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildsMounts {
    pub project: HostSide,
    pub tmp: HostSide,
    /// The file variables are mounted read-only (not for the archive API, which cannot write
    /// into a read-only mount).
    pub tmp_read_only: bool,
}

/// The mounts of a job: its project dir at `CI_PROJECT_DIR` (`project`), its file variables
/// at `CI_PROJECT_DIR.tmp` (`tmp`), then the configured volumes: `SRC:DST` as given,
/// `"/path"` volumes as named volumes, or directories under `cache_dir` when it is set (placed
/// for the daemon by `place`, see [`super::hostpaths`]), left out with `disable_cache`.
pub fn job_mounts(
    env: &JobEnv,
    volumes: &[VolumeSpec],
    disable_cache: bool,
    cache_dir: Option<&std::path::Path>,
    builds: BuildsMounts,
    place: &dyn Fn(&std::path::Path) -> HostSide,
) -> JobMounts {
    let mut out = JobMounts::default();
    out.add(builds.project, &env.project_dir, false);
    out.add(builds.tmp, &env.tmp_dir, builds.tmp_read_only);
    for v in volumes {
        match v {
            VolumeSpec::Bind {
                source,
                destination,
                mode,
            } => match mode {
                Some(m) => out.binds.push(format!("{source}:{destination}:{m}")),
                None => out.binds.push(format!("{source}:{destination}")),
            },
            VolumeSpec::Cache { .. } if disable_cache => {}
            VolumeSpec::Cache { destination } => match cache_dir {
                Some(dir) => out.add(
                    place(&cache_host_dir(dir, env, destination)),
                    destination,
                    false,
                ),
                None => out.binds.push(format!(
                    "{}:{destination}",
                    cache_volume_name(env, destination)
                )),
            },
        }
    }
    out
}

/// Parse all volumes and reject two mounts on the same container path.
pub fn parse_volumes(env: &JobEnv, specs: &[String]) -> Result<Vec<VolumeSpec>, EngineError> {
    let mut out: Vec<VolumeSpec> = Vec::new();
    for s in specs {
        let v = parse_volume(s)?;
        let dst = v.destination();
        if dst == clean_path(&env.builds_dir)
            || dst == clean_path(&env.project_dir)
            || dst == clean_path(&env.tmp_dir)
            || dst == clean_path(&steps_dir(env))
        {
            return Err(EngineError::Configuration(format!(
                "[runners.docker] volumes: {s:?} would hide the builds directory {}",
                env.builds_dir
            )));
        }
        if out.iter().any(|o| o.destination() == dst) {
            return Err(EngineError::Configuration(format!(
                "[runners.docker] volumes: {s:?}: {dst} is mounted twice"
            )));
        }
        out.push(v);
    }
    Ok(out)
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| i64::try_from(x).unwrap_or(i64::MAX))
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    if v.is_empty() { None } else { Some(v.to_vec()) }
}

/// The part of the host config that build and service containers share.
fn common_host_config(section: &DockerSection, mounts: &JobMounts) -> HostConfig {
    let mut hc = HostConfig {
        dns: non_empty(&section.dns),
        dns_search: non_empty(&section.dns_search),
        extra_hosts: non_empty(&section.extra_hosts),
        shm_size: if section.shm_size == 0 {
            None
        } else {
            to_i64(Some(section.shm_size))
        },
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        // ferry's own `pids_limit` (gitlab-runner has no such key): per container.
        pids_limit: section.pids_limit,
        ..Default::default()
    };
    mounts.apply(&mut hc);
    hc
}

/// Host config of the build container: `[runners.docker]` options plus the job's mounts.
/// `privileged` comes from [`build_privileged`].
pub fn build_host_config(
    section: &DockerSection,
    mounts: &JobMounts,
    network_mode: Option<String>,
    links: Vec<String>,
    privileged: bool,
) -> HostConfig {
    HostConfig {
        privileged: Some(privileged),
        memory: to_i64(section.memory),
        memory_swap: to_i64(section.memory_swap),
        memory_reservation: to_i64(section.memory_reservation),
        nano_cpus: section
            .cpus
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(|c| (c * 1e9).round() as i64),
        oom_kill_disable: if section.oom_kill_disable {
            Some(true)
        } else {
            None
        },
        group_add: non_empty(&section.group_add),
        cap_add: non_empty(&section.cap_add),
        cap_drop: non_empty(&section.cap_drop),
        security_opt: non_empty(&section.security_opt),
        network_mode,
        links: if links.is_empty() { None } else { Some(links) },
        ..common_host_config(section, mounts)
    }
}

/// Host config of a service container (no resource limits but `pids_limit`: the others are
/// `service_*` keys). `privileged` comes from [`service_privileged`].
pub fn service_host_config(
    section: &DockerSection,
    mounts: &JobMounts,
    network_mode: Option<String>,
    privileged: bool,
) -> HostConfig {
    HostConfig {
        privileged: Some(privileged),
        network_mode,
        ..common_host_config(section, mounts)
    }
}

/// The build container: the job image with its entrypoint (or the job's), running the shell
/// detection with an open stdin that nobody writes to, so it stays up until `destroy`.
/// `user` comes from [`build_container_user`].
pub fn build_container_body(
    section: &DockerSection,
    env: &JobEnv,
    image_id: &str,
    host_config: HostConfig,
    user: Option<String>,
) -> ContainerCreateBody {
    let entrypoint = if env.image.entrypoint.is_empty() || section.disable_entrypoint_overwrite {
        None
    } else {
        Some(env.image.entrypoint.clone())
    };
    ContainerCreateBody {
        image: Some(image_id.to_string()),
        cmd: Some(vec!["sh".into(), "-c".into(), DETECT_SHELL.into()]),
        entrypoint,
        env: Some(
            env.variables
                .iter()
                .map(|v| format!("{}={}", v.name, v.value))
                .collect(),
        ),
        working_dir: Some(env.project_dir.clone()),
        user,
        hostname: section.hostname.clone(),
        labels: Some(job_labels(env, "build")),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// POSIX single-quoting: `it's` → `'it'\''s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The script a step's shell reads on stdin, shaped like gitlab-runner's bash/sh script:
/// errexit everywhere, pipefail where the shell has it (bash, busybox ash; not dash), and the
/// body in one `eval` line whose stdin is empty, so commands that read stdin cannot swallow the
/// rest of the script. Each command is echoed as `$ cmd` in bold green before it runs; a
/// multi-line command by its first line, or with `FF_SCRIPT_SECTIONS` ([`StepSpec::script_sections`])
/// in full as the header of a collapsed section of its own, closed before the command runs
/// (gitlab-runner's `writeMultilineCommand`; docs/job-log.md).
pub fn step_script(step: &StepSpec) -> String {
    let mut body = String::new();
    for v in &step.env {
        if valid_env_name(&v.name) {
            body.push_str(&format!("export {}={}\n", v.name, shell_quote(&v.value)));
        }
    }
    if step.xtrace {
        body.push_str("set -o xtrace\n");
    }
    for (i, cmd) in step.commands.iter().enumerate() {
        let cmd = cmd.trim();
        if cmd.is_empty() {
            body.push_str("echo\n");
            continue;
        }
        let shown = match (cmd.split_once('\n'), step.script_sections.get(i)) {
            (Some(_), Some(id)) => {
                body.push_str(&script_section(id, cmd));
                body.push_str(cmd);
                body.push('\n');
                continue;
            }
            (Some((first, _)), None) => format!("$ {first} # collapsed multi-line command"),
            (None, _) => format!("$ {cmd}"),
        };
        body.push_str(&format!(
            "printf '%s\\n' {}\n",
            shell_quote(&format!("{BOLD_GREEN}{shown}{RESET}"))
        ));
        body.push_str(cmd);
        body.push('\n');
    }
    let mut s = String::new();
    s.push_str("trap exit 1 TERM\n");
    s.push_str("if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi; set -o errexit\n");
    s.push_str("set +o noclobber\n");
    s.push_str(&format!(": | eval {}\n", shell_quote(&body)));
    s.push_str("exit 0\n");
    s
}

/// The two lines that print a multi-line command as a collapsed section, as gitlab-runner's
/// bash writer does (`SectionStart`/`SectionEnd` with `hide_duration=true,collapsed=true`):
/// `section_start:<ts>:section_<id>[hide_duration=true,collapsed=true]\r\e[0K` and the command
/// in bold green as the header (its first line; GitLab shows the others inside the section),
/// then at once `section_end:<ts>:section_<id>\r\e[0K`. The time is the container's
/// `date +%s`. The command is printed as is (gitlab-runner's `printf '%b'` would also turn
/// backslash sequences in it into characters).
fn script_section(id: &str, cmd: &str) -> String {
    let id = ferry_config::joblog::section_name(id);
    let start = format!(
        ":section_{id}[hide_duration=true,collapsed=true]\r{CLEAR}{BOLD_GREEN}$ {cmd}{RESET}"
    );
    let end = format!(":section_{id}\r{CLEAR}");
    format!(
        "printf '%s%s%s\\n' section_start: \"$(date +%s)\" {}\n\
         printf '%s%s%s\\n' section_end: \"$(date +%s)\" {}\n",
        shell_quote(&start),
        shell_quote(&end)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EnvVar, ImageSpec, PullPolicy};
    use std::path::PathBuf;

    fn env() -> JobEnv {
        JobEnv {
            job_id: 42,
            project_id: 7,
            runner_short_token: "glrt-abc".into(),
            image: ImageSpec {
                name: "ruby:3".into(),
                entrypoint: vec![],
                pull_policy: vec![PullPolicy::IfNotPresent],
                user: None,
                platform: None,
                runner_default: false,
            },
            services: vec![],
            variables: vec![EnvVar {
                name: "A".into(),
                value: "1".into(),
            }],
            service_variables: vec![],
            builds_dir: "/builds".into(),
            project_dir: "/builds/g/p".into(),
            host_project_dir: PathBuf::from("/var/lib/ferry/builds/42/src"),
            tmp_dir: "/builds/g/p.tmp".into(),
            host_tmp_dir: PathBuf::from("/var/lib/ferry/builds/42/tmp"),
            host_steps_dir: None,
            registry_auth: vec![],
            container_labels: Default::default(),
            runner_services: 0,
        }
    }

    #[test]
    fn aliases_follow_gitlab_runner() {
        assert_eq!(
            service_aliases_from_image("registry.example.com/group/postgres:15"),
            vec![
                "registry.example.com__group__postgres",
                "registry.example.com-group-postgres"
            ]
        );
        assert_eq!(
            service_aliases_from_image("registry.example.com:5000/group/postgres:15"),
            vec![
                "registry.example.com__group__postgres",
                "registry.example.com-group-postgres"
            ]
        );
        assert_eq!(service_aliases_from_image("postgres:15"), vec!["postgres"]);
        assert_eq!(service_aliases_from_image("postgres"), vec!["postgres"]);
        assert_eq!(
            service_aliases_from_image("tutum/wordpress@sha256:abcd"),
            vec!["tutum__wordpress", "tutum-wordpress"]
        );
    }

    #[test]
    fn split_image_finds_registry_and_tag() {
        assert_eq!(
            split_image("postgres:15"),
            ("docker.io".into(), "postgres".into(), "15".into())
        );
        assert_eq!(
            split_image("localhost:5000/a/b"),
            ("localhost:5000".into(), "a/b".into(), "latest".into())
        );
        assert_eq!(
            split_image("reg.io/a/b:1@sha256:ff"),
            ("reg.io".into(), "a/b".into(), "sha256:ff".into())
        );
    }

    #[test]
    fn allow_list_uses_doublestar_semantics() {
        let l = AllowList::new(
            &["ruby:*".into(), "registry.io/**".into()],
            "allowed_images",
        )
        .unwrap();
        assert!(l.allows("ruby:3.3"));
        assert!(!l.allows("ruby/evil:3"));
        assert!(l.allows("registry.io/a/b/c:1"));
        assert!(!l.allows("python:3"));
        let one = AllowList::new(&["library/*".into()], "allowed_images").unwrap();
        assert!(one.allows("library/ruby"));
        assert!(!one.allows("library/a/b"));
        let neg = AllowList::new(&["**".into(), "!*:latest".into()], "k").unwrap();
        assert!(neg.allows("ruby:3"));
        assert!(!neg.allows("ruby:latest"));
        let err = l
            .check("python:3", "image", "allowed_images")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("python:3") && err.contains("\"ruby:*\""),
            "{err}"
        );
        assert!(
            AllowList::new(&[], "k")
                .unwrap()
                .check("x", "image", "k")
                .is_ok()
        );
    }

    #[test]
    fn volume_specs() {
        assert_eq!(
            parse_volume("/cache").unwrap(),
            VolumeSpec::Cache {
                destination: "/cache".into()
            }
        );
        assert_eq!(
            parse_volume("/var/run/docker.sock:/var/run/docker.sock").unwrap(),
            VolumeSpec::Bind {
                source: "/var/run/docker.sock".into(),
                destination: "/var/run/docker.sock".into(),
                mode: None
            }
        );
        assert_eq!(
            parse_volume("/srv/a:/a:ro").unwrap(),
            VolumeSpec::Bind {
                source: "/srv/a".into(),
                destination: "/a".into(),
                mode: Some("ro".into())
            }
        );
        assert!(matches!(
            parse_volume("myvol:/data"),
            Ok(VolumeSpec::Bind { .. })
        ));
        for bad in [
            "cache",
            "/a:b",
            "/a:/b:bogus",
            "/a:/b:ro:x",
            ":/b",
            "../x:/y",
            "",
        ] {
            let e = parse_volume(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let e = parse_volumes(&env(), &["/x".into(), "/h:/x".into()]).unwrap_err();
        assert!(e.to_string().contains("mounted twice"));
        assert!(parse_volumes(&env(), &["/builds".into()]).is_err());
    }

    #[test]
    fn binds_include_builds_dir_and_cache_volumes() {
        let e = env();
        let vols = vec![
            VolumeSpec::Cache {
                destination: "/cache".into(),
            },
            VolumeSpec::Bind {
                source: "/h".into(),
                destination: "/c".into(),
                mode: Some("ro".into()),
            },
        ];
        let host = |e: &JobEnv| BuildsMounts {
            project: HostSide::Path(e.host_project_dir.clone()),
            tmp: HostSide::Path(e.host_tmp_dir.clone()),
            tmp_read_only: true,
        };
        let same = |p: &std::path::Path| HostSide::Path(p.to_path_buf());
        let binds = |e: &JobEnv, vols: &[VolumeSpec], disable: bool, dir: Option<&str>| {
            let m = job_mounts(
                e,
                vols,
                disable,
                dir.map(std::path::Path::new),
                host(e),
                &same,
            );
            assert!(m.mounts.is_empty());
            m.binds
        };
        let b = binds(&e, &vols, false, None);
        // Only the project dir and its file variables (read-only), never the builds dir.
        assert_eq!(b[0], "/var/lib/ferry/builds/42/src:/builds/g/p");
        assert_eq!(b[1], "/var/lib/ferry/builds/42/tmp:/builds/g/p.tmp:ro");
        assert!(b[2].starts_with("runner-glrt-abc-project-7-cache-") && b[2].ends_with(":/cache"));
        assert_eq!(b[3], "/h:/c:ro");
        assert_eq!(binds(&e, &vols, true, None).len(), 3);
        let with_dir = binds(&e, &vols, false, Some("/srv/cache"));
        assert!(
            with_dir[2].starts_with("/srv/cache/runner-glrt-abc-project-7/")
                && with_dir[2].ends_with(":/cache"),
            "{with_dir:?}"
        );
        // ferry in a container: its directories are placed for the daemon; the user's own
        // volumes stay as given.
        let in_volume = |p: &std::path::Path| HostSide::Volume {
            name: "data".into(),
            subpath: Some(p.strip_prefix("/").unwrap().display().to_string()),
        };
        let placed = job_mounts(
            &e,
            &vols,
            false,
            Some(std::path::Path::new("/srv/cache")),
            BuildsMounts {
                project: HostSide::Path("/host/src".into()),
                tmp: in_volume(&e.host_tmp_dir),
                tmp_read_only: true,
            },
            &in_volume,
        );
        assert_eq!(placed.binds[0], "/host/src:/builds/g/p");
        assert_eq!(placed.binds[1], "/h:/c:ro");
        assert_eq!(placed.binds.len(), 2);
        assert_eq!(placed.mounts.len(), 2);
        assert_eq!(placed.mounts[0].target.as_deref(), Some("/builds/g/p.tmp"));
        assert_eq!(placed.mounts[0].read_only, Some(true));
        assert_eq!(placed.mounts[1].target.as_deref(), Some("/cache"));
        assert!(
            placed.mounts[1]
                .volume_options
                .as_ref()
                .and_then(|o| o.subpath.as_deref())
                .is_some_and(|s| s.starts_with("srv/cache/runner-glrt-abc-project-7/")),
            "{placed:?}"
        );
        // Stable across jobs of the same project and slot; apart otherwise.
        let mut other = env();
        other.job_id = 43;
        assert_eq!(
            cache_volume_name(&e, "/cache"),
            cache_volume_name(&other, "/cache")
        );
        other.project_id = 8;
        assert_ne!(
            cache_volume_name(&e, "/cache"),
            cache_volume_name(&other, "/cache")
        );
        let mut slot1 = env();
        slot1.variables.push(EnvVar {
            name: "CI_CONCURRENT_PROJECT_ID".into(),
            value: "1".into(),
        });
        assert!(
            cache_volume_name(&slot1, "/cache")
                .starts_with("runner-glrt-abc-project-7-concurrent-1-cache-")
        );
        assert_ne!(
            cache_volume_name(&e, "/cache"),
            cache_volume_name(&slot1, "/cache")
        );
    }

    #[test]
    fn host_config_maps_resources_and_options() {
        let s = DockerSection {
            privileged: true,
            memory: Some(6 * 1024 * 1024),
            memory_swap: Some(6 * 1024 * 1024),
            cpus: Some(1.5),
            shm_size: 0,
            dns: vec!["1.1.1.1".into()],
            cap_drop: vec!["NET_RAW".into()],
            ..Default::default()
        };
        let mut m = JobMounts::default();
        m.add(HostSide::Path("/a".into()), "/b", false);
        m.add(
            HostSide::Volume {
                name: "v".into(),
                subpath: Some("x/y".into()),
            },
            "/c",
            true,
        );
        let h = build_host_config(&s, &m, Some("net".into()), vec![], true);
        assert_eq!(h.binds, Some(vec!["/a:/b".to_string()]));
        let mounts = h.mounts.clone().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].source.as_deref(), Some("v"));
        assert_eq!(mounts[0].target.as_deref(), Some("/c"));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(
            mounts[0]
                .volume_options
                .as_ref()
                .and_then(|o| o.subpath.as_deref()),
            Some("x/y")
        );
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(h.memory, Some(6291456));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.shm_size, None);
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.dns, Some(vec!["1.1.1.1".to_string()]));
        assert_eq!(h.cap_drop, Some(vec!["NET_RAW".to_string()]));
        assert_eq!(h.network_mode.as_deref(), Some("net"));
        assert_eq!(h.pids_limit, None, "no pids limit unless configured");
        let svc = service_host_config(&s, &JobMounts::default(), None, false);
        assert_eq!(svc.privileged, Some(false));
        let limited = DockerSection {
            pids_limit: Some(256),
            ..Default::default()
        };
        let h = build_host_config(&limited, &JobMounts::default(), None, vec![], false);
        assert_eq!(h.pids_limit, Some(256));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(
            service_host_config(&limited, &JobMounts::default(), None, false).pids_limit,
            Some(256)
        );
    }

    fn img(name: &str) -> ImageSpec {
        ImageSpec {
            name: name.into(),
            entrypoint: vec![],
            pull_policy: vec![],
            user: None,
            platform: None,
            runner_default: false,
        }
    }

    #[test]
    fn privileged_lists_follow_gitlab_runner() {
        let section = |privileged, services_privileged| DockerSection {
            privileged,
            services_privileged,
            ..Default::default()
        };
        let dind = PrivilegedList::new(&["docker:*".into()]);
        let all = PrivilegedList::new(&[]);
        // The finding: a privileged runner restricted to docker:* ran busybox and httpd privileged.
        assert!(!build_privileged(
            &section(true, None),
            &dind,
            &img("busybox:latest")
        ));
        assert!(!service_privileged(&section(true, None), &dind, "httpd:2"));
        assert!(build_privileged(
            &section(true, None),
            &dind,
            &img("docker:27-dind")
        ));
        assert!(service_privileged(
            &section(true, None),
            &dind,
            "docker:dind"
        ));
        // `*` stays within a path segment, `**` crosses `/`.
        assert!(!dind.allows("docker:x/evil"));
        assert!(!dind.allows("evil/docker:1"));
        let reg = PrivilegedList::new(&["registry.io/**".into()]);
        assert!(reg.allows("registry.io/a/b:1") && !reg.allows("registry.io.evil/a"));
        // Empty list = every image (gitlab-runner: "equivalent to [\"**\"]").
        assert!(build_privileged(
            &section(true, None),
            &all,
            &img("busybox")
        ));
        assert!(service_privileged(&section(true, None), &all, "httpd"));
        // Never privileged without the switch, whatever the lists say.
        assert!(!build_privileged(
            &section(false, None),
            &all,
            &img("docker:1")
        ));
        assert!(!service_privileged(&section(false, None), &all, "docker:1"));
        // services_privileged overrides privileged for services only.
        assert!(service_privileged(
            &section(false, Some(true)),
            &dind,
            "docker:1"
        ));
        assert!(!service_privileged(
            &section(true, Some(false)),
            &all,
            "docker:1"
        ));
        assert!(!build_privileged(
            &section(false, Some(true)),
            &all,
            &img("docker:1")
        ));
        // The runner's default image is matched as "" (the job named no image).
        let mut default = img("docker:27");
        default.runner_default = true;
        assert!(!build_privileged(&section(true, None), &dind, &default));
        assert!(build_privileged(&section(true, None), &all, &default));
        // No negation: `!x` is a literal pattern; a broken pattern matches nothing.
        let neg = PrivilegedList::new(&["!busybox".into(), "[".into()]);
        assert!(!neg.allows("docker:1") && !neg.allows("busybox") && !neg.allows("["));
    }

    #[test]
    fn build_user_follows_gitlab_runner() {
        let sec = |user: Option<&str>, allowed: &[&str]| DockerSection {
            user: user.map(str::to_string),
            allowed_users: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let with_user = |u: Option<&str>| ImageSpec {
            user: u.map(str::to_string),
            ..img("busybox")
        };
        // Nothing configured: whatever the job asks.
        assert_eq!(
            build_container_user(&sec(None, &[]), &with_user(Some("root"))).unwrap(),
            Some("root".into())
        );
        assert_eq!(
            build_container_user(&sec(None, &[]), &with_user(None)).unwrap(),
            None
        );
        // allowed_users set: the job's user must be listed.
        let allowed = sec(None, &["1000", "nobody"]);
        assert_eq!(
            build_container_user(&allowed, &with_user(Some("nobody"))).unwrap(),
            Some("nobody".into())
        );
        let err = build_container_user(&allowed, &with_user(Some("root"))).unwrap_err();
        assert!(matches!(err, EngineError::Configuration(_)));
        assert_eq!(
            err.to_string(),
            "user \"root\" is not an allowed user: [1000 nobody]"
        );
        // The image's own default user is always allowed.
        assert_eq!(
            build_container_user(&allowed, &with_user(None)).unwrap(),
            None
        );
        // The runner's user takes precedence over the job's...
        assert_eq!(
            build_container_user(&sec(Some("1000"), &[]), &with_user(Some("root"))).unwrap(),
            Some("1000".into())
        );
        // ...and must itself be allowed when allowed_users is set.
        assert_eq!(
            build_container_user(&sec(Some("root"), &["1000"]), &with_user(None))
                .unwrap_err()
                .to_string(),
            "user \"root\" is not an allowed user: [1000]"
        );
    }

    #[test]
    fn build_body_keeps_image_entrypoint_unless_overridden() {
        let s = DockerSection {
            user: Some("nobody".into()),
            ..Default::default()
        };
        let mut e = env();
        let user = build_container_user(&s, &e.image).unwrap();
        let b = build_container_body(&s, &e, "sha256:1", HostConfig::default(), user);
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.user.as_deref(), Some("nobody"));
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/builds/g/p"));
        assert_eq!(b.labels.as_ref().unwrap()[LABEL_JOB], "42");
        e.image.entrypoint = vec!["".into()];
        e.image.user = Some("1000".into());
        let user = build_container_user(&DockerSection::default(), &e.image).unwrap();
        let b = build_container_body(&s, &e, "sha256:1", HostConfig::default(), user);
        assert_eq!(b.entrypoint, Some(vec!["".to_string()]));
        assert_eq!(b.user.as_deref(), Some("1000"));
    }

    #[test]
    fn names_are_gitlab_runner_like() {
        let e = env();
        assert_eq!(
            build_container_name(&e),
            "runner-glrt-abc-project-7-job-42-build"
        );
        assert_eq!(
            service_container_name(&e, "registry.io/g/postgres:15", 0),
            "runner-glrt-abc-project-7-job-42-postgres-0"
        );
        assert_eq!(sanitize_name("a b/c"), "a-b-c");
    }

    #[test]
    fn script_quotes_and_echoes() {
        let step = StepSpec {
            name: "script".into(),
            commands: vec!["echo 'it''s'".into(), "a\nb".into()],
            env: vec![EnvVar {
                name: "CI_JOB_STATUS".into(),
                value: "it's ok".into(),
            }],
            timeout: None,
            xtrace: false,
            script_sections: vec![],
            log_full: Default::default(),
        };
        let s = step_script(&step);
        assert!(!s.contains("xtrace"));
        let traced = step_script(&StepSpec {
            xtrace: true,
            ..step.clone()
        });
        // Traced after the step's own exports, before the first command.
        let body = traced.split(": | eval ").nth(1).unwrap();
        let (x, e) = (
            body.find("set -o xtrace").unwrap(),
            body.find("export").unwrap(),
        );
        assert!(e < x && x < body.find("printf").unwrap(), "{traced}");
        assert!(s.starts_with("trap exit 1 TERM\n"));
        assert!(s.contains("set -o errexit"));
        assert!(s.contains(": | eval '"));
        assert!(s.contains("CI_JOB_STATUS="));
        assert!(s.contains("# collapsed multi-line command"));
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    /// What `sh` prints running the step's script, with the section times replaced by `TS`.
    fn run_sh(step: &StepSpec) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let script = step_script(step);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{script}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut result = String::new();
        for line in text.split_inclusive('\n') {
            match line
                .split_once(':')
                .filter(|(k, _)| k.starts_with("section_"))
            {
                Some((kind, rest)) => {
                    let (ts, rest) = rest.split_once(':').unwrap();
                    assert!(ts.parse::<u64>().is_ok(), "{line:?}");
                    result.push_str(&format!("{kind}:TS:{rest}"));
                }
                None => result.push_str(line),
            }
        }
        result
    }

    #[test]
    fn ff_script_sections_put_a_multi_line_command_in_a_collapsed_section() {
        let step = StepSpec {
            name: "script".into(),
            commands: vec!["echo one".into(), "echo two \\\n  three".into()],
            env: vec![],
            timeout: None,
            xtrace: false,
            script_sections: vec!["script_step_0".into(), "script_step_1".into()],
            log_full: Default::default(),
        };
        assert_eq!(
            run_sh(&step),
            "\x1b[32;1m$ echo one\x1b[0;m\none\n\
             section_start:TS:section_script_step_1[hide_duration=true,collapsed=true]\r\x1b[0K\
             \x1b[32;1m$ echo two \\\n  three\x1b[0;m\n\
             section_end:TS:section_script_step_1\r\x1b[0K\n\
             two three\n"
        );
        // Without the flag: the first line and a note, as before.
        let plain = StepSpec {
            script_sections: vec![],
            log_full: Default::default(),
            ..step
        };
        assert_eq!(
            run_sh(&plain),
            "\x1b[32;1m$ echo one\x1b[0;m\none\n\
             \x1b[32;1m$ echo two \\ # collapsed multi-line command\x1b[0;m\ntwo three\n"
        );
    }
}
