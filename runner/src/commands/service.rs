//! `ferry install`, `uninstall`, `start`, `stop`, `restart` and `status`: ferry as a systemd
//! service, as gitlab-runner's service commands (docs/install.md, docs/commands.md).
//!
//! The unit is written by one pure function, [`unit_file`], which the Debian package's unit
//! (packaging/debian/ferry.service) is checked against. Everything that talks to systemd goes
//! through [`Systemd`]: where systemd is not running (no `/run/systemd/system`, the sd_booted(3)
//! rule), every command says so and what to do instead, and exits non-zero.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

use crate::cli::{InstallArgs, ServiceArgs, UninstallArgs};

/// Where `ferry install` writes units unless `--unit-dir`/`FERRY_SYSTEMD_UNIT_DIR` names another
/// directory: the administrator's unit directory, as gitlab-runner's `install` uses.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// systemd creates this directory at boot when it is PID 1 (sd_booted(3)).
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// How long systemd waits for ferry to stop after `KillSignal` (SIGQUIT: running jobs finish)
/// before it kills it: two hours, as gitlab-runner's documentation recommends for its unit.
pub const STOP_TIMEOUT_SECS: u64 = 7200;

/// What a unit runs: the values `ferry install` takes from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Service name; the unit is `<service>.service`.
    pub service: String,
    /// The ferry binary (absolute).
    pub exec: PathBuf,
    /// `ferry run --working-directory` (absolute).
    pub working_directory: PathBuf,
    /// `ferry run --config` (absolute).
    pub config: PathBuf,
    /// `User=`: the account ferry runs as.
    pub user: String,
    /// Add `--syslog` to `ferry run`.
    pub syslog: bool,
}

impl UnitSpec {
    /// The unit the Debian package installs (packaging/debian/ferry.service).
    pub fn debian_package() -> Self {
        UnitSpec {
            service: "ferry".into(),
            exec: "/usr/bin/ferry".into(),
            working_directory: "/var/lib/ferry".into(),
            config: "/etc/ferry/config.toml".into(),
            user: "ferry".into(),
            syslog: false,
        }
    }

    /// The unit's file name, `<service>.service`.
    pub fn unit_name(&self) -> String {
        format!("{}.service", self.service)
    }

    /// The directory of the config file: ferry writes `.runner_system_id` and rotated tokens
    /// there, so the unit makes it writable.
    fn config_dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("/"))
    }
}

/// Checks a service name: systemd's unit-name characters, no `@` (ferry's units are not
/// templates), at most 255 bytes with `.service`.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() + ".service".len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--service {name:?} is not a service name: use letters, digits and : - _ . (e.g. ferry)"
        ))
    }
}

/// Checks a user name for `User=`: the characters useradd(8) and systemd accept.
fn check_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--user {user:?} is not a user name: use letters, digits, _ - and . (e.g. ferry)"
        ))
    }
}

/// A path for the unit: absolute, valid UTF-8, no control characters (a newline would end the
/// unit line).
fn check_path(flag: &str, p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{flag} {}: not valid UTF-8", p.display()))?;
    if !p.is_absolute() {
        return Err(format!("{flag} {s}: not an absolute path"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{flag} {s:?}: contains a control character"));
    }
    Ok(s.to_string())
}

/// One word of a unit line, quoted for systemd (systemd.syntax(7), systemd.service(5) "Command
/// lines"): in double quotes when it holds a space, quote or backslash, with `\` and `"` escaped;
/// `%` doubled (specifiers) and `$` doubled (variable expansion) in command lines.
fn unit_word(s: &str, command_line: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            '%' => out.push_str("%%"),
            '$' if command_line => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    if s.is_empty()
        || s.chars()
            .any(|c| matches!(c, ' ' | '\t' | '"' | '\'' | '\\'))
    {
        format!("\"{out}\"")
    } else {
        out
    }
}

/// The systemd unit for `spec` (docs/install.md, "The unit"). Pure: the same spec gives the same
/// text, which the Debian package's unit file is tested against.
pub fn unit_file(spec: &UnitSpec) -> Result<String, String> {
    check_service_name(&spec.service)?;
    check_user(&spec.user)?;
    let exec = check_path("ferry binary", &spec.exec)?;
    let wd = check_path("--working-directory", &spec.working_directory)?;
    let config = check_path("--config", &spec.config)?;
    let config_dir = check_path("--config", spec.config_dir())?;

    let mut args = vec![
        exec.clone(),
        "run".into(),
        "--working-directory".into(),
        wd.clone(),
        "--config".into(),
        config,
        "--service".into(),
        spec.service.clone(),
    ];
    if spec.syslog {
        args.push("--syslog".into());
    }
    let exec_start: Vec<String> = args.iter().map(|a| unit_word(a, true)).collect();
    let mut rw = vec![wd];
    if !rw.contains(&config_dir) {
        rw.push(config_dir);
    }
    let rw: Vec<String> = rw.iter().map(|p| unit_word(p, false)).collect();

    Ok(format!(
        "\
# Written by `ferry install` (docs/install.md). Remove it with `ferry uninstall --service {name}`;
# change settings in a drop-in (systemctl edit {unit}) so that a reinstall keeps them.
[Unit]
Description=ferry GitLab Runner ({name})
Wants=network-online.target
After=network-online.target docker.service
ConditionFileIsExecutable={exec_cond}

[Service]
ExecStart={exec_start}
User={user}
# SIGHUP re-reads the config file.
ExecReload=/bin/kill -HUP $MAINPID
# SIGQUIT stops polling and lets running jobs finish; systemd kills ferry (SIGKILL) if they have
# not finished within TimeoutStopSec. Only ferry gets SIGQUIT (KillMode=mixed): the git processes
# of running jobs are ferry's to end. Upgrades stop and start the service this same way.
KillSignal=SIGQUIT
KillMode=mixed
TimeoutStopSec={timeout}
Restart=always
RestartSec=5

# Hardening: ferry writes only to its working directory and to its config file's directory
# (tokens, .runner_system_id); it reaches Docker through its socket, which needs no write access.
# Mount namespaces stay allowed: run as root, ferry confines each git process in one.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={rw}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=mnt
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
",
        name = spec.service,
        unit = spec.unit_name(),
        // A condition's value is the rest of the line, unquoted; only specifiers apply.
        exec_cond = exec.replace('%', "%%"),
        exec_start = exec_start.join(" "),
        user = spec.user,
        timeout = STOP_TIMEOUT_SECS,
        rw = rw.join(" "),
    ))
}

/// The one place ferry talks to systemd: the unit directory, whether systemd runs, and
/// `systemctl`.
pub struct Systemd {
    unit_dir: PathBuf,
    /// `--unit-dir`/`FERRY_SYSTEMD_UNIT_DIR` was given: `install`/`uninstall` then only write or
    /// remove the unit file, with or without systemd running (for an image or a chroot), and do
    /// not call systemctl.
    unit_dir_given: bool,
    running: bool,
}

impl Systemd {
    /// systemd of this host; `unit_dir` from `--unit-dir`/`FERRY_SYSTEMD_UNIT_DIR`.
    pub fn new(unit_dir: Option<PathBuf>) -> Self {
        Systemd {
            unit_dir_given: unit_dir.is_some(),
            unit_dir: unit_dir.unwrap_or_else(|| DEFAULT_UNIT_DIR.into()),
            running: Path::new(SYSTEMD_RUNTIME_DIR).is_dir(),
        }
    }

    /// Whether `install`/`uninstall` enable/disable the unit with systemctl.
    fn manages_units(&self) -> bool {
        self.running && !self.unit_dir_given
    }

    fn unit_path(&self, service: &str) -> PathBuf {
        self.unit_dir.join(format!("{service}.service"))
    }

    /// Fails, saying what is missing and what to do, where systemd is not running.
    fn require_running(&self, command: &str, also: &str) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        let pid1 = std::fs::read_to_string("/proc/1/comm")
            .map(|s| format!("; PID 1 is {}", s.trim()))
            .unwrap_or_default();
        bail!(
            "systemd is not running on this host ({SYSTEMD_RUNTIME_DIR} does not exist{pid1}): \
             `ferry {command}` manages ferry's systemd service and needs systemd\n\
             Run ferry in the foreground instead (ferry run -c FILE), or in a container \
             (docs/install.md){also}"
        )
    }

    /// Runs `systemctl ARGS`; its output, or an error with systemctl's own message.
    fn systemctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .with_context(|| format!("running systemctl {}", args.join(" ")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "systemctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                err.trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `ferry install`: writes the unit, creates the working directory and the config file's
/// directory for the user, and enables the unit. Like gitlab-runner's `install`, it refuses to
/// overwrite an existing unit and does not start the service.
pub fn install(config: &Path, args: &InstallArgs) -> anyhow::Result<()> {
    let systemd = Systemd::new(args.unit_dir.clone());
    if !systemd.unit_dir_given {
        systemd.require_running(
            "install",
            "\nTo only write the unit file (e.g. into an image), name its directory: --unit-dir DIR",
        )?;
    }
    check_service_name(&args.service.service).map_err(anyhow::Error::msg)?;
    let Some(user) = args.user.clone() else {
        bail!(
            "--user is missing: name the account the service runs as (e.g. --user ferry; \
             --user root runs it as root)"
        );
    };
    check_user(&user).map_err(anyhow::Error::msg)?;
    let account = nix::unistd::User::from_name(&user)
        .with_context(|| format!("looking up user {user}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "user {user} does not exist on this host: create it (useradd --system {user}) \
                 or name another with --user"
            )
        })?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let exec = std::env::current_exe().context("finding the ferry binary")?;
    let working_directory = args
        .working_directory
        .clone()
        .unwrap_or_else(|| default_working_directory(&account));
    let spec = UnitSpec {
        service: args.service.service.clone(),
        exec,
        working_directory: cwd.join(working_directory),
        config: cwd.join(config),
        user,
        syslog: args.syslog,
    };
    let unit = unit_file(&spec).map_err(anyhow::Error::msg)?;
    let path = systemd.unit_path(&spec.service);
    if path.exists() {
        bail!(
            "service {} is already installed: {} exists\n\
             Remove it first (ferry uninstall --service {}), or change it with a drop-in \
             (systemctl edit {})",
            spec.service,
            path.display(),
            spec.service,
            spec.unit_name()
        );
    }

    for (dir, mode) in [
        (spec.working_directory.as_path(), 0o755),
        (spec.config_dir(), 0o700),
    ] {
        create_owned_dir(dir, mode, &account)?;
    }

    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("writing the unit {}", path.display()))?;
    f.write_all(unit.as_bytes())
        .with_context(|| format!("writing the unit {}", path.display()))?;

    let registered = has_runners(&spec.config);
    let next = if registered {
        format!("ferry start --service {}", spec.service)
    } else {
        let sudo = if spec.user == "root" {
            String::new()
        } else {
            format!("sudo -u {} ", spec.user)
        };
        format!(
            "register a runner ({sudo}ferry register -c {}), then ferry start --service {}",
            spec.config.display(),
            spec.service
        )
    };
    if systemd.manages_units() {
        systemd.systemctl(&["daemon-reload"])?;
        systemd.systemctl(&["enable", &spec.unit_name()])?;
        println!(
            "Installed and enabled {} ({}); it is not started. Next: {next}",
            spec.unit_name(),
            path.display()
        );
    } else {
        println!(
            "Wrote {} (--unit-dir: the file only, not enabled). Where systemd runs it, enable it \
             with systemctl daemon-reload && systemctl enable {}. Next: {next}",
            path.display(),
            spec.unit_name()
        );
    }
    Ok(())
}

/// `--working-directory` when not given: the user's home, as gitlab-runner's unit uses; for root
/// or an account without a home, ferry's `/var/lib/ferry`.
fn default_working_directory(account: &nix::unistd::User) -> PathBuf {
    let home = &account.dir;
    if account.uid.is_root() || home.as_os_str().is_empty() || home == Path::new("/") {
        PathBuf::from("/var/lib/ferry")
    } else {
        home.clone()
    }
}

/// Creates `dir` (and its parents) when missing, with `mode`, owned by `account`. An existing
/// directory is left as it is.
fn create_owned_dir(dir: &Path, mode: u32, account: &nix::unistd::User) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(account.uid.as_raw()), Some(account.gid.as_raw()))
        .with_context(|| format!("giving {} to {}", dir.display(), account.name))
}

/// Whether the config file has a `[[runners]]` entry (a registered runner).
fn has_runners(config: &Path) -> bool {
    ferry_config::load(config).is_ok_and(|c| !c.runners.is_empty())
}

/// `ferry uninstall`: disables the unit and removes its file, as gitlab-runner's `uninstall`. A
/// running service keeps running until stopped.
pub fn uninstall(uninstall: &UninstallArgs) -> anyhow::Result<()> {
    let systemd = Systemd::new(uninstall.unit_dir.clone());
    let args = &uninstall.service;
    if !systemd.unit_dir_given {
        systemd.require_running(
            "uninstall",
            "\nTo only remove a unit file written with --unit-dir, name its directory: --unit-dir DIR",
        )?;
    }
    check_service_name(&args.service).map_err(anyhow::Error::msg)?;
    let path = systemd.unit_path(&args.service);
    if !path.exists() {
        bail!(
            "service {} is not installed: {} does not exist",
            args.service,
            path.display()
        );
    }
    let unit = format!("{}.service", args.service);
    if systemd.manages_units() {
        systemd.systemctl(&["disable", &unit])?;
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if systemd.manages_units() {
        systemd.systemctl(&["daemon-reload"])?;
        let active = systemd
            .systemctl(&["is-active", &unit])
            .is_ok_and(|s| s.trim() == "active");
        let still = if active {
            format!(
                " It is still running: ferry stop --service {}",
                args.service
            )
        } else {
            String::new()
        };
        println!("Removed {} ({}).{still}", unit, path.display());
    } else {
        println!(
            "Removed {} (--unit-dir: the file only; a unit that was enabled stays linked until \
             systemctl disable {unit})",
            path.display()
        );
    }
    Ok(())
}

/// `ferry start`, `stop`, `restart`: `systemctl ACTION <service>.service`. `stop` returns once
/// running jobs have finished (the unit stops ferry with SIGQUIT).
pub fn control(action: &str, args: &ServiceArgs) -> anyhow::Result<()> {
    let systemd = Systemd::new(None);
    systemd.require_running(action, "")?;
    check_service_name(&args.service).map_err(anyhow::Error::msg)?;
    let unit = format!("{}.service", args.service);
    systemd.systemctl(&[action, &unit]).with_context(|| {
        format!(
            "{action} {}; journalctl -u {unit} shows ferry's log",
            args.service
        )
    })?;
    Ok(())
}

/// What `ferry status` reports, from systemd's `LoadState` and `ActiveState`.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Stopped,
    Failed,
    NotInstalled,
    Unknown(String),
}

/// Maps `systemctl show -p LoadState,ActiveState` output (`Key=value` lines) to a [`Status`].
pub fn parse_status(show: &str) -> Status {
    let get = |key: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (load, active) = (get("LoadState"), get("ActiveState"));
    match (load.as_str(), active.as_str()) {
        (_, "active" | "activating" | "reloading") => Status::Running,
        ("not-found", _) => Status::NotInstalled,
        (_, "inactive" | "deactivating") => Status::Stopped,
        (_, "failed") => Status::Failed,
        _ => Status::Unknown(format!("LoadState={load} ActiveState={active}")),
    }
}

/// `ferry status`: gitlab-runner's lines: `NAME: Service is running` on stdout and exit 0, or
/// why not on stderr and exit 1.
pub fn status(args: &ServiceArgs) -> anyhow::Result<ExitCode> {
    let systemd = Systemd::new(None);
    systemd.require_running("status", "")?;
    check_service_name(&args.service).map_err(anyhow::Error::msg)?;
    let name = &args.service;
    let unit = format!("{name}.service");
    let show = systemd.systemctl(&["show", "-p", "LoadState,ActiveState", &unit])?;
    let line = match parse_status(&show) {
        Status::Running => {
            println!("{name}: Service is running");
            return Ok(ExitCode::SUCCESS);
        }
        Status::Stopped => format!("{name}: Service has stopped"),
        Status::Failed => format!("{name}: Service has failed; journalctl -u {unit} shows why"),
        Status::NotInstalled => {
            format!("{name}: Service is not installed (ferry install --service {name} installs it)")
        }
        Status::Unknown(s) => format!("{name}: Service status unknown ({s})"),
    };
    eprintln!("{line}");
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_package_ships_the_unit_ferry_install_writes() {
        // The package's unit is a committed file (cargo-deb packages files); FERRY_BLESS=1
        // rewrites it from unit_file().
        let unit = unit_file(&UnitSpec::debian_package()).unwrap();
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/debian/ferry.service");
        if std::env::var_os("FERRY_BLESS").is_some() {
            std::fs::write(&shipped, &unit).unwrap();
        }
        let on_disk = std::fs::read_to_string(&shipped).unwrap_or_default();
        assert_eq!(
            unit, on_disk,
            "packaging/debian/ferry.service differs from unit_file(UnitSpec::debian_package()) \
             (FERRY_BLESS=1 rewrites it)"
        );
    }

    #[test]
    fn the_unit_runs_ferry_with_gitlab_runners_arguments() {
        let unit = unit_file(&UnitSpec {
            service: "gitlab-runner".into(),
            exec: "/usr/local/bin/ferry".into(),
            working_directory: "/home/gitlab-runner".into(),
            config: "/etc/gitlab-runner/config.toml".into(),
            user: "gitlab-runner".into(),
            syslog: true,
        })
        .unwrap();
        let lines: Vec<&str> = unit.lines().collect();
        assert!(lines.contains(
            &"ExecStart=/usr/local/bin/ferry run --working-directory /home/gitlab-runner \
               --config /etc/gitlab-runner/config.toml --service gitlab-runner --syslog"
        ));
        assert!(lines.contains(&"User=gitlab-runner"));
        assert!(lines.contains(&"ReadWritePaths=/home/gitlab-runner /etc/gitlab-runner"));
        assert!(lines.contains(&"KillSignal=SIGQUIT"));
        assert!(lines.contains(&"TimeoutStopSec=7200"));
        assert!(lines.contains(&"ExecReload=/bin/kill -HUP $MAINPID"));
        assert!(lines.contains(&"Restart=always"));
        // The config in the working directory: one writable path.
        let unit = unit_file(&UnitSpec {
            config: "/var/lib/ferry/config.toml".into(),
            ..UnitSpec::debian_package()
        })
        .unwrap();
        assert!(unit.lines().any(|l| l == "ReadWritePaths=/var/lib/ferry"));
    }

    #[test]
    fn docs_install_md_shows_the_packages_unit() {
        let doc = include_str!("../../../docs/install.md");
        let block = doc
            .split("```ini\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("an ini block in docs/install.md");
        let settings = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        let unit = unit_file(&UnitSpec::debian_package()).unwrap();
        assert_eq!(
            settings(block),
            settings(&unit),
            "docs/install.md, The unit"
        );
    }

    #[test]
    fn the_units_exec_start_is_a_ferry_run_line() {
        use clap::Parser;
        let unit = unit_file(&UnitSpec::debian_package()).unwrap();
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let cli = crate::cli::Cli::try_parse_from(line.split(' ')).unwrap();
        assert_eq!(
            cli.config.as_deref(),
            Some(Path::new("/etc/ferry/config.toml"))
        );
        let crate::cli::Command::Run(run) = cli.command else {
            panic!("not ferry run: {line}")
        };
        assert_eq!(
            run.working_directory.as_deref(),
            Some(Path::new("/var/lib/ferry"))
        );
        assert_eq!(run.service, "ferry");
        assert!(!run.syslog);
    }

    #[test]
    fn odd_paths_are_quoted_for_systemd() {
        let unit = unit_file(&UnitSpec {
            exec: "/opt/my apps/ferry".into(),
            working_directory: "/srv/my runner/100%".into(),
            config: "/etc/a\"b/$x.toml".into(),
            ..UnitSpec::debian_package()
        })
        .unwrap();
        assert!(
            unit.contains(
                r#"--working-directory "/srv/my runner/100%%" --config "/etc/a\"b/$$x.toml""#
            ),
            "{unit}"
        );
        assert!(
            unit.contains(r#"ReadWritePaths="/srv/my runner/100%%" "/etc/a\"b""#),
            "{unit}"
        );
        assert!(
            unit.contains("\nConditionFileIsExecutable=/opt/my apps/ferry\n"),
            "{unit}"
        );
        assert!(
            unit.contains("\nExecStart=\"/opt/my apps/ferry\" run "),
            "{unit}"
        );
    }

    #[test]
    fn bad_input_is_named() {
        let bad = |spec: UnitSpec| unit_file(&spec).unwrap_err();
        let base = UnitSpec::debian_package;
        assert!(
            bad(UnitSpec {
                service: "my service".into(),
                ..base()
            })
            .contains("--service")
        );
        assert!(
            bad(UnitSpec {
                service: "".into(),
                ..base()
            })
            .contains("--service")
        );
        assert!(
            bad(UnitSpec {
                user: "a\nb".into(),
                ..base()
            })
            .contains("--user")
        );
        let e = bad(UnitSpec {
            working_directory: "rel/dir".into(),
            ..base()
        });
        assert!(
            e.contains("--working-directory rel/dir: not an absolute path"),
            "{e}"
        );
        let e = bad(UnitSpec {
            config: "/etc/x\n/c.toml".into(),
            ..base()
        });
        assert!(
            e.contains("--config") && e.contains("control character"),
            "{e}"
        );
    }

    #[test]
    fn status_follows_systemds_states() {
        let s = |t: &str| parse_status(t);
        assert_eq!(s("LoadState=loaded\nActiveState=active\n"), Status::Running);
        assert_eq!(
            s("ActiveState=reloading\nLoadState=loaded\n"),
            Status::Running
        );
        assert_eq!(
            s("LoadState=loaded\nActiveState=inactive\n"),
            Status::Stopped
        );
        assert_eq!(
            s("LoadState=not-found\nActiveState=inactive\n"),
            Status::NotInstalled
        );
        assert_eq!(s("LoadState=loaded\nActiveState=failed\n"), Status::Failed);
        assert!(matches!(s(""), Status::Unknown(_)));
    }
}
