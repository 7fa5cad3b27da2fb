//! The `ferry` command line: gitlab-runner's commands and flags, with clap.
//!
//! Booleans accept `--flag`, `--flag=true` and `--flag=false`, as gitlab-runner's do; every flag
//! that gitlab-runner reads from an environment variable reads the same variable here.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::commands::register_table::{self, FLAGS, FlagSpec};

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

    /// Run the jobs this ferry takes without the job journal: no journal entry, step output
    /// streamed to ferry only. Such jobs are not resumed after a crash or a handover
    /// (SIGUSR2); jobs an earlier ferry journaled are still resumed (docs/crash-safety.md)
    #[arg(long = "no-journal", env = "FERRY_NO_JOURNAL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_parser = bool_flag(),
          action = ArgAction::Set)]
    pub no_journal: bool,
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

/// `ferry register`: every flag of `gitlab-runner register`, from the generated table
/// (`commands/register_table.rs`; docs/commands.md lists them). clap parses them; their values
/// are read with gitlab-runner's rules by `register_table::resolve`.
#[derive(Debug, Clone, Default)]
pub struct RegisterArgs {
    /// Every flag occurrence on the command line, in order (`--flag` alone as "true").
    pub given: Vec<(&'static FlagSpec, String)>,
    /// Arguments that are not flags (gitlab-runner ignores them).
    pub ignored: Vec<String>,
}

impl RegisterArgs {
    /// The last value of `name` given on the command line.
    pub fn last(&self, name: &str) -> Option<&str> {
        self.given
            .iter()
            .rev()
            .find(|(f, _)| f.name == name)
            .map(|(_, v)| v.as_str())
    }
}

impl clap::FromArgMatches for RegisterArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut s = RegisterArgs::default();
        s.update_from_arg_matches(m)?;
        Ok(s)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        let utf8 = |name: &str, v: &std::ffi::OsStr| {
            v.to_str().map(str::to_string).ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidUtf8,
                    format!("--{name}: the value is not UTF-8\n"),
                )
            })
        };
        for f in FLAGS.iter().filter(|f| f.name != "config") {
            if let Some(values) = m.get_raw(f.name) {
                for v in values {
                    self.given.push((f, utf8(f.name, v)?));
                }
            }
        }
        if let Some(values) = m.get_raw("ignored-arguments") {
            for v in values {
                self.ignored.push(v.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
}

impl clap::Args for RegisterArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(register_table::clap_args())
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The command line before clap sees it: the arguments after `register` are scanned as
/// gitlab-runner's parser reads them (`register_table::scan_args`: `-flag` with one dash,
/// a boolean flag followed by a separate value, stray arguments). Returns the arguments and
/// the warnings to print; an error for a line ferry refuses.
pub fn preprocess(
    args: Vec<std::ffi::OsString>,
) -> Result<(Vec<std::ffi::OsString>, Vec<String>), String> {
    let Some(strings) = args
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        return Ok((args, Vec::new()));
    };
    // The first `register` that is not the value of a global option.
    let mut i = 1;
    let mut at = None;
    while i < strings.len() {
        match strings[i].as_str() {
            "-c" | "--config" | "--log-level" | "--log-format" => i += 2,
            "register" => {
                at = Some(i);
                break;
            }
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let Some(at) = at else {
        return Ok((args, Vec::new()));
    };
    let (rest, warnings) = register_table::scan_args(&strings[at + 1..])?;
    let mut out: Vec<std::ffi::OsString> = strings[..=at].iter().map(Into::into).collect();
    out.extend(rest.into_iter().map(Into::into));
    Ok((out, warnings))
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
    /// Kubeconfig deploy jobs use without -c/--runner [default: the first existing file of
    /// $KUBECONFIG, else ~/.kube/config]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of that kubeconfig deploy jobs use [default: its current context]
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Unpack each successful job's artifacts into the working tree (overwriting files)
    #[arg(long = "artifacts-to-source")]
    pub artifacts_to_source: bool,
    /// GitLab to resolve includes only it can read (project, remote, template, component)
    /// through its CI lint API, e.g. https://gitlab.example.com
    #[arg(long, value_name = "URL")]
    pub gitlab: Option<String>,
    /// Access token for --gitlab (api scope; the Developer role in the project); prefer the
    /// environment variable: a command line is visible to other users
    #[arg(
        long = "gitlab-token",
        value_name = "TOKEN",
        env = "FERRY_GITLAB_TOKEN",
        hide_env_values = true
    )]
    pub gitlab_token: Option<crate::exec::include::Token>,
    /// PEM certificates trusted for --gitlab besides the system's
    #[arg(long = "gitlab-ca-file", value_name = "FILE")]
    pub gitlab_ca_file: Option<PathBuf>,
    /// The project on --gitlab, GROUP/PROJECT or its id [default: the origin remote's path]
    #[arg(long, value_name = "PATH")]
    pub project: Option<String>,
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

    fn register(args: &[&str]) -> RegisterArgs {
        let cli = parse(&[&["ferry", "register"], args].concat());
        let Command::Register(r) = cli.command else {
            panic!("not register")
        };
        *r
    }

    #[test]
    fn register_line_from_a_real_setup_parses_verbatim() {
        // One argument per line; tests/tests/runner_e2e.rs runs the same line end to end.
        let line = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/register-real-setup.args"
        ));
        let args: Vec<&str> = line.lines().skip(1).collect();
        let r = register(&args);
        assert_eq!(r.last("non-interactive"), Some("true"));
        assert_eq!(r.last("url"), Some("http://git.example"));
        assert_eq!(r.last("registration-token"), Some("xxx"));
        assert_eq!(r.last("description"), Some("base-runner-docker"));
        assert_eq!(r.last("tag-list"), Some("base-runner"));
        assert_eq!(r.last("run-untagged"), Some("true"));
        assert_eq!(r.last("docker-privileged"), Some("true"));
        assert_eq!(r.last("docker-pull-policy"), Some("if-not-present"));
        let volumes: Vec<&str> = r
            .given
            .iter()
            .filter(|(f, _)| f.name == "docker-volumes")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            volumes,
            [
                "/etc/docker/daemon.json:/etc/docker/daemon.json",
                "/etc/gitlab-runner/key/test-kube-config:/root/.kube/config"
            ]
        );
        assert!(r.ignored.is_empty());
    }

    #[test]
    fn booleans_take_every_gitlab_runner_form() {
        for (arg, want) in [
            ("--locked", "true"),
            ("--locked=true", "true"),
            ("--locked=false", "false"),
            ("--locked=0", "0"),
            ("--locked=F", "F"),
        ] {
            assert_eq!(register(&[arg]).last("locked"), Some(want), "{arg}");
        }
        assert_eq!(register(&[]).last("locked"), None);
        assert_eq!(register(&["-n"]).last("non-interactive"), Some("true"));
        // --name is gitlab-runner's other name of --description; -u, -t, -r its shorts
        let r = register(&["--name", "x", "-u", "http://u", "-t", "glrt-1", "-r", "reg"]);
        assert_eq!(r.last("description"), Some("x"));
        assert_eq!(r.last("url"), Some("http://u"));
        assert_eq!(r.last("token"), Some("glrt-1"));
        assert_eq!(r.last("registration-token"), Some("reg"));
        // -c after register is the global --config
        let cli = parse(&["ferry", "register", "-c", "/tmp/c.toml"]);
        assert_eq!(cli.config, Some(PathBuf::from("/tmp/c.toml")));
    }

    #[test]
    fn every_register_flag_is_in_the_help() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("register")
            .unwrap()
            .render_long_help()
            .to_string();
        for f in FLAGS.iter().filter(|f| f.name != "config") {
            assert!(help.contains(&format!("--{}", f.name)), "--{}", f.name);
        }
        assert!(help.contains("[env: DOCKER_IMAGE]"));
    }

    #[test]
    fn preprocess_finds_register_after_global_options() {
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let (args, w) = preprocess(os(&[
            "ferry",
            "-c",
            "register",
            "register",
            "-url",
            "u",
            "--log-level",
            "debug",
        ]))
        .unwrap();
        assert_eq!(
            args,
            os(&[
                "ferry",
                "-c",
                "register",
                "register",
                "--url",
                "u",
                "--log-level",
                "debug"
            ])
        );
        assert!(w.is_empty(), "{w:?}");
        let e = preprocess(os(&["ferry", "register", "--paused", "false"])).unwrap_err();
        assert!(e.contains("--paused=false"), "{e}");
        // other commands are left alone
        let (args, _) = preprocess(os(&["ferry", "run", "-flag"])).unwrap();
        assert_eq!(args, os(&["ferry", "run", "-flag"]));
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
