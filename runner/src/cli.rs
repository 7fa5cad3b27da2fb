//! The `ferry` command line: gitlab-runner's commands and flags, with clap.
//!
//! Booleans accept `--flag`, `--flag=true` and `--flag=false`, as gitlab-runner's do; every flag
//! that gitlab-runner reads from an environment variable reads the same variable here.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// ferry: a GitLab Runner that runs jobs in Docker and deploys to Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: /etc/ferry/config.toml as root, ~/.ferry/config.toml otherwise]
    #[arg(short = 'c', long = "config", env = "CONFIG_FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Log level: debug, info, warn, error (overrides log_level in the config file)
    #[arg(long = "log-level", env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,

    /// Log format: runner, text or json (overrides log_format in the config file)
    #[arg(long = "log-format", env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Same as --log-level=debug
    #[arg(long = "debug", global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll GitLab for jobs and run them
    Run(RunArgs),
    /// Register a new runner and add it to the config file
    Register(Box<RegisterArgs>),
    /// Unregister runners from GitLab and remove them from the config file
    Unregister(UnregisterArgs),
    /// Check that the registered runners are valid; --delete removes the invalid ones
    Verify(VerifyArgs),
    /// List the runners of the config file
    List,
    /// Deploy manifests to Kubernetes (the same command a `ferry:deploy` job runs)
    Deploy(DeployArgs),
    /// Print the plan ferry would execute for a job payload (JSON), for debugging
    Plan(PlanArgs),
    /// Run the repository's .gitlab-ci.yml pipeline on this machine, in Docker
    Exec(ExecArgs),
    /// Install ferry as a systemd service (writes and enables the unit; does not start it)
    Install(InstallArgs),
    /// Disable the systemd service and remove its unit
    Uninstall(UninstallArgs),
    /// Start the systemd service
    Start(ServiceArgs),
    /// Stop the systemd service (running jobs finish first)
    Stop(ServiceArgs),
    /// Restart the systemd service (running jobs finish first)
    Restart(ServiceArgs),
    /// Whether the systemd service is running (exit 0) or not (exit 1)
    Status(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Service name: the unit is NAME.service
    #[arg(short = 'n', long = "service", default_value = "ferry")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub service: ServiceArgs,

    /// The account the service runs as (User= of the unit); required
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,

    /// `ferry run --working-directory` of the unit [default: the user's home; /var/lib/ferry for
    /// root or a user without one]
    #[arg(short = 'd', long = "working-directory")]
    pub working_directory: Option<PathBuf>,

    /// Add --syslog to the unit's `ferry run` (under systemd the journal already has ferry's log)
    #[arg(long = "syslog", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = bool_flag(),
          action = ArgAction::Set)]
    pub syslog: bool,

    /// Write the unit into this directory instead of /etc/systemd/system; without systemd running
    /// the unit is then written but not enabled
    #[arg(long = "unit-dir", env = "FERRY_SYSTEMD_UNIT_DIR")]
    pub unit_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub service: ServiceArgs,

    /// The directory `ferry install --unit-dir` wrote the unit into
    #[arg(long = "unit-dir", env = "FERRY_SYSTEMD_UNIT_DIR")]
    pub unit_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the /metrics and /health endpoint (overrides listen_address)
    #[arg(long = "listen-address", env = "LISTEN_ADDRESS")]
    pub listen_address: Option<String>,

    /// Where ferry keeps builds, the git object cache and the local cache on this host
    /// [default: /var/lib/ferry as root, ~/.ferry otherwise]
    #[arg(
        short = 'd',
        long = "working-directory",
        env = "FERRY_WORKING_DIRECTORY"
    )]
    pub working_directory: Option<PathBuf>,

    /// Most disk the local cache and the git object caches may use (e.g. 500m, 20g); the least
    /// recently used are removed beyond it
    #[arg(long = "cache-max-size", env = "FERRY_CACHE_MAX_SIZE", default_value = "10g", value_parser = parse_size)]
    pub cache_max_size: u64,

    /// Caches unused for longer than this are removed (Go duration, e.g. 72h)
    #[arg(long = "cache-max-age", env = "FERRY_CACHE_MAX_AGE", default_value = "336h", value_parser = parse_age)]
    pub cache_max_age: std::time::Duration,

    /// Most disk the builds directories (sources kept between jobs) may use; the least recently
    /// used are removed beyond it
    #[arg(long = "builds-max-size", env = "FERRY_BUILDS_MAX_SIZE", default_value = "20g", value_parser = parse_size)]
    pub builds_max_size: u64,

    /// Builds directories unused for longer than this are removed
    #[arg(long = "builds-max-age", env = "FERRY_BUILDS_MAX_AGE", default_value = "168h", value_parser = parse_age)]
    pub builds_max_age: std::time::Duration,

    /// Docker cache volumes ("/path" in volumes) unused for longer than this are removed
    #[arg(long = "volume-max-age", env = "FERRY_VOLUME_MAX_AGE", default_value = "168h", value_parser = parse_age)]
    pub volume_max_age: std::time::Duration,

    /// Opt-in: most disk the images ferry pulled may use; the least recently used that no
    /// container uses are removed beyond it [default: no limit]
    #[arg(long = "image-max-size", env = "FERRY_IMAGE_MAX_SIZE", value_parser = parse_size)]
    pub image_max_size: Option<u64>,

    /// Opt-in: images ferry pulled and no job used for longer than this are removed
    /// [default: no limit]
    #[arg(long = "image-max-age", env = "FERRY_IMAGE_MAX_AGE", value_parser = parse_age)]
    pub image_max_age: Option<std::time::Duration>,

    /// How often the limits above and the cache limits are enforced (also once at start)
    #[arg(long = "evict-interval", env = "FERRY_EVICT_INTERVAL", default_value = "1h", value_parser = parse_interval)]
    pub evict_interval: std::time::Duration,

    /// Service name, as gitlab-runner's unit passes it: names ferry in the system log (--syslog)
    /// and in its start-up line
    #[arg(short = 'n', long = "service", default_value = "ferry")]
    pub service: String,

    /// gitlab-runner's user for shell-executor builds. Accepted so gitlab-runner's unit starts
    /// ferry; ferry runs every job in a Docker container, where it does not apply (docs/commands.md)
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,

    /// Also send the log to the system logger (syslog(3), /dev/log; journald on systemd hosts)
    #[arg(long = "syslog", env = "LOG_SYSLOG", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = bool_flag(),
          action = ArgAction::Set)]
    pub syslog: bool,
}

/// `500m`, `20g`, `1048576`: bytes with an optional k/m/g/t suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500m or 20g"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a size like 500m or 20g"));
    }
    Ok((n * mult as f64) as u64)
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    ferry_config::duration::parse_job_duration_saturating(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 72h or 30m"))
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match parse_age(s)? {
        d if d < std::time::Duration::from_secs(1) => {
            Err(format!("{s:?}: the interval must be at least 1s"))
        }
        d => Ok(d),
    }
}

/// Parse a gitlab-runner style boolean flag value.
fn bool_flag() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Run registration unattended
    #[arg(short = 'n', long = "non-interactive", env = "REGISTER_NON_INTERACTIVE",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = bool_flag(), action = ArgAction::Set)]
    pub non_interactive: bool,

    /// GitLab instance URL
    #[arg(short = 'u', long = "url", env = "CI_SERVER_URL")]
    pub url: Option<String>,

    /// Runner's registration token (deprecated by GitLab; use --token)
    #[arg(short = 'r', long = "registration-token", env = "REGISTRATION_TOKEN")]
    pub registration_token: Option<String>,

    /// Runner authentication token (glrt-...) of a runner created in GitLab
    #[arg(short = 't', long = "token", env = "CI_SERVER_TOKEN")]
    pub token: Option<String>,

    /// Runner name (description in GitLab)
    #[arg(long = "name", visible_alias = "description", env = "RUNNER_NAME")]
    pub name: Option<String>,

    /// Tag list, comma separated
    #[arg(long = "tag-list", env = "RUNNER_TAG_LIST")]
    pub tag_list: Option<String>,

    /// Register to run untagged jobs; defaults to true when the tag list is empty
    #[arg(long = "run-untagged", env = "REGISTER_RUN_UNTAGGED", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = bool_flag())]
    pub run_untagged: Option<bool>,

    /// Lock the runner to the current project; defaults to true
    #[arg(long = "locked", env = "REGISTER_LOCKED", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = bool_flag())]
    pub locked: Option<bool>,

    /// not_protected or ref_protected
    #[arg(long = "access-level", env = "REGISTER_ACCESS_LEVEL")]
    pub access_level: Option<String>,

    /// Maximum job timeout (seconds) GitLab sets for jobs on this runner
    #[arg(long = "maximum-timeout", env = "REGISTER_MAXIMUM_TIMEOUT")]
    pub maximum_timeout: Option<u64>,

    /// Register the runner paused
    #[arg(long = "paused", env = "REGISTER_PAUSED", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = bool_flag())]
    pub paused: Option<bool>,

    /// Maintenance note shown in GitLab
    #[arg(long = "maintenance-note", env = "REGISTER_MAINTENANCE_NOTE")]
    pub maintenance_note: Option<String>,

    /// Executor (ferry supports docker)
    #[arg(long = "executor", env = "RUNNER_EXECUTOR")]
    pub executor: Option<String>,

    /// Maximum number of jobs this runner handles at once (0 = unlimited)
    #[arg(long = "limit", env = "RUNNER_LIMIT")]
    pub limit: Option<u64>,

    /// Maximum concurrent job requests to GitLab for this runner
    #[arg(long = "request-concurrency", env = "RUNNER_REQUEST_CONCURRENCY")]
    pub request_concurrency: Option<u64>,

    /// Maximum job log size, in kilobytes
    #[arg(long = "output-limit", env = "RUNNER_OUTPUT_LIMIT")]
    pub output_limit: Option<u64>,

    /// Directory where builds are stored (in the job container)
    #[arg(long = "builds-dir", env = "RUNNER_BUILDS_DIR")]
    pub builds_dir: Option<String>,

    /// Directory where the cache is stored (in the job container)
    #[arg(long = "cache-dir", env = "RUNNER_CACHE_DIR")]
    pub cache_dir: Option<String>,

    /// Custom environment variable for every job, KEY=value (repeatable)
    #[arg(long = "env", env = "RUNNER_ENV", action = ArgAction::Append)]
    pub env: Vec<String>,

    /// PEM file of certificates to trust for GitLab's HTTPS
    #[arg(long = "tls-ca-file", env = "CI_SERVER_TLS_CA_FILE")]
    pub tls_ca_file: Option<String>,

    /// PEM file of the client certificate for GitLab's HTTPS (mutual TLS)
    #[arg(long = "tls-cert-file", env = "CI_SERVER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<String>,

    /// PEM file of the client certificate's key (mutual TLS)
    #[arg(long = "tls-key-file", env = "CI_SERVER_TLS_KEY_FILE")]
    pub tls_key_file: Option<String>,

    #[command(flatten)]
    pub docker: DockerRegisterArgs,
}

#[derive(Debug, Args)]
pub struct DockerRegisterArgs {
    /// Default image for jobs that set none
    #[arg(long = "docker-image", env = "DOCKER_IMAGE")]
    pub image: Option<String>,

    /// Run containers in privileged mode
    #[arg(long = "docker-privileged", env = "DOCKER_PRIVILEGED", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = bool_flag())]
    pub privileged: Option<bool>,

    /// Volume or bind mount, SRC:DST[:ro|rw] or /path (repeatable)
    #[arg(long = "docker-volumes", env = "DOCKER_VOLUMES", action = ArgAction::Append)]
    pub volumes: Vec<String>,

    /// Image pull policy: always, if-not-present, never (repeatable: a fallback chain)
    #[arg(long = "docker-pull-policy", env = "DOCKER_PULL_POLICY", action = ArgAction::Append)]
    pub pull_policy: Vec<String>,

    /// Docker daemon address
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub host: Option<String>,

    /// Network mode of the job containers
    #[arg(long = "docker-network-mode", env = "DOCKER_NETWORK_MODE")]
    pub network_mode: Option<String>,

    /// Memory limit of the job container (e.g. 512m, 2g)
    #[arg(long = "docker-memory", env = "DOCKER_MEMORY")]
    pub memory: Option<String>,

    /// CPUs of the job container (e.g. 1.5)
    #[arg(long = "docker-cpus", env = "DOCKER_CPUS")]
    pub cpus: Option<String>,

    /// DNS server for the job containers (repeatable)
    #[arg(long = "docker-dns", env = "DOCKER_DNS", action = ArgAction::Append)]
    pub dns: Vec<String>,

    /// Extra /etc/hosts entry, name:ip (repeatable)
    #[arg(long = "docker-extra-hosts", env = "DOCKER_EXTRA_HOSTS", action = ArgAction::Append)]
    pub extra_hosts: Vec<String>,

    /// Images jobs may use, globs (repeatable)
    #[arg(long = "docker-allowed-images", env = "DOCKER_ALLOWED_IMAGES", action = ArgAction::Append)]
    pub allowed_images: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "url", "all_runners"])))]
pub struct UnregisterArgs {
    /// Name of the runner to unregister
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// URL of the runner to unregister (with --token)
    #[arg(short = 'u', long = "url", requires = "token")]
    pub url: Option<String>,
    /// Token of the runner to unregister (with --url)
    #[arg(short = 't', long = "token", requires = "url")]
    pub token: Option<String>,
    /// Unregister every runner of the config file
    #[arg(long = "all-runners")]
    pub all_runners: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Remove runners GitLab no longer knows from the config file
    #[arg(long = "delete")]
    pub delete: bool,
    /// Only this runner
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The `ferry deploy` arguments (see `docs/deploy.md`), e.g. --kubeconfig, --context,
    /// --manifests, --namespace
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `ferry exec` (docs/exec.md). `-c` and `--runner` take Docker settings and deploy targets
/// from a runner of a config file; without them jobs run on this machine's Docker with
/// `alpine:latest` as the default image.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Jobs to run (default: the whole pipeline); a parallel job's name means all its instances
    pub jobs: Vec<String>,
    /// List the jobs the pipeline would have (stage, when, needs, why excluded) and exit
    #[arg(long)]
    pub list: bool,
    /// Print a JSON summary on stdout (job logs go to stderr and to files)
    #[arg(long)]
    pub json: bool,
    /// Also run the jobs the named jobs need, transitively
    #[arg(long)]
    pub needs: bool,
    /// A variable, as a project variable would be set (repeatable)
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// KEY=VALUE lines (a .env file) read as --var (repeatable)
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Branch or tag the pipeline runs for [default: the checked-out branch, or the tag at HEAD]
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// CI_PIPELINE_SOURCE: push, web, schedule, merge_request_event, api, trigger, ...
    #[arg(long = "pipeline-source", default_value = "push")]
    pub pipeline_source: String,
    /// Name of the [[runners]] entry of the -c config file to take settings from
    #[arg(long = "runner")]
    pub runner: Option<String>,
    /// Jobs run at once [default: the number of cores]
    #[arg(long)]
    pub concurrent: Option<usize>,
    /// Where the job logs and artifacts go [default: .ferry/ in the repository]
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Builds, caches and the sources' snapshots [default: ~/.cache/ferry/exec]
    #[arg(long = "working-directory", value_name = "DIR")]
    pub working_directory: Option<PathBuf>,
    /// Run ferry:deploy jobs for real (default: a server-side dry run)
    #[arg(long)]
    pub deploy: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A job payload as GitLab sends it (the body of a 201 from /api/v4/jobs/request)
    pub payload: PathBuf,
    /// Name of the [[runners]] entry whose settings apply (default: the first)
    #[arg(long = "runner")]
    pub runner: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).expect("parses")
    }

    #[test]
    fn register_line_from_a_real_setup_parses_verbatim() {
        // One argument per line; tests/tests/runner_e2e.rs runs the same line end to end.
        let line = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/register-real-setup.args"
        ));
        let cli = parse(&[&["ferry"], &line.lines().collect::<Vec<_>>()[..]].concat());
        let Command::Register(r) = cli.command else {
            panic!("not register")
        };
        assert!(r.non_interactive);
        assert_eq!(r.url.as_deref(), Some("http://git.example"));
        assert_eq!(r.registration_token.as_deref(), Some("xxx"));
        assert_eq!(r.name.as_deref(), Some("base-runner-docker"));
        assert_eq!(r.tag_list.as_deref(), Some("base-runner"));
        assert_eq!(r.run_untagged, Some(true));
        assert_eq!(r.docker.privileged, Some(true));
        assert_eq!(r.docker.pull_policy, vec!["if-not-present"]);
        assert_eq!(r.docker.volumes.len(), 2);
        assert_eq!(
            r.docker.volumes[1],
            "/etc/gitlab-runner/key/test-kube-config:/root/.kube/config"
        );
    }

    #[test]
    fn booleans_take_the_three_gitlab_runner_forms() {
        for (arg, want) in [
            ("--locked", true),
            ("--locked=true", true),
            ("--locked=false", false),
        ] {
            let cli = parse(&["ferry", "register", arg]);
            let Command::Register(r) = cli.command else {
                panic!()
            };
            assert_eq!(r.locked, Some(want), "{arg}");
        }
        let cli = parse(&["ferry", "register"]);
        let Command::Register(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.locked, None);
        assert!(!r.non_interactive);
    }

    #[test]
    fn unregister_needs_a_selector() {
        assert!(Cli::try_parse_from(["ferry", "unregister"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "unregister", "--url", "http://x"]).is_err());
        assert!(
            Cli::try_parse_from(["ferry", "unregister", "--url", "http://x", "--token", "t"])
                .is_ok()
        );
        assert!(Cli::try_parse_from(["ferry", "unregister", "--all-runners"]).is_ok());
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        let cli = parse(&["ferry", "run"]);
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.cache_max_size, 10 << 30);
        assert_eq!(r.cache_max_age, std::time::Duration::from_secs(336 * 3600));
        assert_eq!(r.builds_max_size, 20 << 30);
        assert_eq!(r.builds_max_age, std::time::Duration::from_secs(168 * 3600));
        assert_eq!(r.volume_max_age, std::time::Duration::from_secs(168 * 3600));
        assert_eq!((r.image_max_size, r.image_max_age), (None, None));
        assert_eq!(r.evict_interval, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn disk_limits_parse_and_a_zero_interval_is_refused() {
        let cli = parse(&[
            "ferry",
            "run",
            "--image-max-size",
            "5g",
            "--image-max-age",
            "72h",
            "--evict-interval",
            "30s",
        ]);
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.image_max_size, Some(5 << 30));
        assert_eq!(
            r.image_max_age,
            Some(std::time::Duration::from_secs(72 * 3600))
        );
        assert_eq!(r.evict_interval, std::time::Duration::from_secs(30));
        let err = Cli::try_parse_from(["ferry", "run", "--evict-interval", "0s"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--evict-interval") && err.contains("at least 1s"),
            "{err}"
        );
    }

    #[test]
    fn gitlab_runner_unit_line_parses() {
        // The ExecStart of the unit `gitlab-runner install` writes (docs/commands.md).
        let cli = parse(&[
            "ferry",
            "run",
            "--working-directory",
            "/home/gitlab-runner",
            "--config",
            "/etc/gitlab-runner/config.toml",
            "--service",
            "gitlab-runner",
            "--user",
            "gitlab-runner",
            "--syslog",
        ]);
        assert_eq!(
            cli.config,
            Some(PathBuf::from("/etc/gitlab-runner/config.toml"))
        );
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(
            r.working_directory,
            Some(PathBuf::from("/home/gitlab-runner"))
        );
        assert_eq!(r.service, "gitlab-runner");
        assert_eq!(r.user.as_deref(), Some("gitlab-runner"));
        assert!(r.syslog);

        let cli = parse(&[
            "ferry",
            "run",
            "-c",
            "/tmp/c.toml",
            "-n",
            "svc",
            "-u",
            "u",
            "-d",
            "/tmp/w",
        ]);
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!((r.service.as_str(), r.user.as_deref()), ("svc", Some("u")));
        assert!(!r.syslog);

        let cli = parse(&["ferry", "run", "--syslog=false"]);
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert!(!r.syslog);
        assert_eq!(r.service, "ferry");
    }

    #[test]
    fn config_flag_is_global() {
        let cli = parse(&["ferry", "list", "-c", "/tmp/x.toml"]);
        assert_eq!(cli.config, Some(PathBuf::from("/tmp/x.toml")));
    }
}
