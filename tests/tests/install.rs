//! `ferry install`, `uninstall`, `start`, `stop`, `restart`, `status` with the real binary
//! (docs/install.md, docs/commands.md): the unit `ferry install --unit-dir` writes passes
//! `systemd-analyze verify` (Debian's systemd package; scripts/setup.sh installs it), and where
//! systemd is not running every command says so and exits non-zero. Where it runs (seemingly: a
//! private mount namespace with /run/systemd/system, and a systemctl script on PATH), the commands
//! call systemctl as gitlab-runner's do and print gitlab-runner's status lines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use ferry_tests::ferry_bin;

fn ferry(args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .env_remove("FERRY_SYSTEMD_UNIT_DIR")
        .env_remove("CONFIG_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("running ferry")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `systemd-analyze verify FILE`: its exit status and everything it printed.
fn verify(unit: &Path) -> (bool, String) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze is missing: bash scripts/setup.sh installs Debian's systemd");
    (o.status.success(), format!("{}{}", out(&o), err(&o)))
}

#[test]
fn without_systemd_every_service_command_says_so_and_fails() {
    if Path::new("/run/systemd/system").exists() {
        eprintln!("SKIP: systemd runs on this host; these commands would manage its services");
        return;
    }
    let installed = Path::new("/etc/systemd/system/ferry.service");
    let before = installed.exists();
    for args in [
        &["install", "--user", "root"][..],
        &["uninstall"],
        &["start"],
        &["stop"],
        &["restart", "--service", "gitlab-runner"],
        &["status"],
    ] {
        let o = ferry(args);
        let e = err(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert_eq!(out(&o), "", "{args:?}");
        let first = e.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(
                "ERROR: systemd is not running on this host (/run/systemd/system does not exist"
            ) && first.contains(&format!("`ferry {}`", args[0])),
            "{args:?}: {e}"
        );
        assert!(
            e.contains("Run ferry in the foreground instead (ferry run -c FILE)"),
            "{args:?}: {e}"
        );
        assert_eq!(
            e.contains("--unit-dir DIR"),
            matches!(args[0], "install" | "uninstall"),
            "{args:?}: {e}"
        );
    }
    assert_eq!(installed.exists(), before, "install wrote a unit");
}

#[test]
fn install_writes_a_unit_that_systemd_analyze_accepts_and_uninstall_removes_it() {
    let t = tempfile::tempdir().unwrap();
    let units = t.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let work = t.path().join("work");
    let config = t.path().join("etc/config.toml");
    // The account running the test: install gives it the directories it creates.
    let user = Command::new("id").arg("-un").output().unwrap();
    let user = String::from_utf8(user.stdout).unwrap().trim().to_string();
    let o = ferry(&[
        "install",
        "--user",
        &user,
        "--service",
        "ci-ferry",
        "--unit-dir",
        units.to_str().unwrap(),
        "-d",
        work.to_str().unwrap(),
        "-c",
        config.to_str().unwrap(),
        "--syslog",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let unit_path = units.join("ci-ferry.service");
    let msg = out(&o);
    assert!(
        msg.starts_with(&format!(
            "Wrote {} (--unit-dir: the file only, not enabled). Where systemd runs it, enable it \
             with systemctl daemon-reload && systemctl enable ci-ferry.service.",
            unit_path.display()
        )),
        "{msg}"
    );
    // No runner registered yet: the next step says to register one, as that user.
    let sudo = if user == "root" {
        String::new()
    } else {
        format!("sudo -u {user} ")
    };
    assert!(
        msg.contains(&format!(
            "register a runner ({sudo}ferry register -c {}), then ferry start --service ci-ferry",
            config.display()
        )),
        "{msg}"
    );

    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let exec_start = format!(
        "ExecStart={} run --working-directory {} --config {} --service ci-ferry --syslog",
        ferry_bin().canonicalize().unwrap().display(),
        work.display(),
        config.display()
    );
    assert!(unit.lines().any(|l| l == exec_start), "{unit}");
    assert!(unit.lines().any(|l| l == format!("User={user}")), "{unit}");
    assert!(
        unit.lines().any(|l| l
            == format!(
                "ReadWritePaths={} {}",
                work.display(),
                config.parent().unwrap().display()
            )),
        "{unit}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&unit_path), 0o644);
    assert_eq!(mode(config.parent().unwrap()), 0o700, "the config dir");
    assert!(work.is_dir());

    let (ok, said) = verify(&unit_path);
    assert!(ok && said.is_empty(), "systemd-analyze verify: {said}");

    // A second install leaves the unit as it is.
    std::fs::write(&unit_path, format!("{unit}# edited\n")).unwrap();
    let o = ferry(&[
        "install",
        "--user",
        &user,
        "-n",
        "ci-ferry",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o).lines().next().unwrap(),
        format!(
            "ERROR: service ci-ferry is already installed: {} exists",
            unit_path.display()
        )
    );
    assert!(
        std::fs::read_to_string(&unit_path)
            .unwrap()
            .ends_with("# edited\n")
    );

    // FERRY_SYSTEMD_UNIT_DIR stands for --unit-dir.
    let uninstall = || {
        Command::new(ferry_bin())
            .args(["uninstall", "--service", "ci-ferry"])
            .env("FERRY_SYSTEMD_UNIT_DIR", &units)
            .output()
            .unwrap()
    };
    let o = uninstall();
    assert!(o.status.success(), "{}", err(&o));
    assert!(!unit_path.exists());
    let o = uninstall();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o).trim(),
        format!(
            "ERROR: service ci-ferry is not installed: {} does not exist",
            unit_path.display()
        )
    );
}

#[test]
fn the_packaged_unit_passes_systemd_analyze_verify() {
    // packaging/debian/ferry.service names /usr/bin/ferry, which verify requires to exist: this
    // build's binary stands in for it.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/debian/ferry.service");
    let unit = std::fs::read_to_string(shipped).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ferry run "));
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("ferry.service");
    let bin = ferry_bin().canonicalize().unwrap();
    std::fs::write(&path, unit.replace("/usr/bin/ferry", bin.to_str().unwrap())).unwrap();
    let (ok, said) = verify(&path);
    assert!(ok && said.is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn install_names_bad_input_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    let config = t.path().join("c/config.toml");
    let config = config.to_str().unwrap();
    for (args, want) in [
        (
            vec!["install", "--unit-dir", dir, "-c", config],
            "ERROR: --user is missing: name the account the service runs as (e.g. --user ferry; --user root runs it as root)",
        ),
        (
            vec![
                "install",
                "--unit-dir",
                dir,
                "-c",
                config,
                "--user",
                "no-such-user-ferry",
            ],
            "ERROR: user no-such-user-ferry does not exist on this host: create it (useradd --system no-such-user-ferry) or name another with --user",
        ),
        (
            vec![
                "install",
                "--unit-dir",
                dir,
                "-c",
                config,
                "--user",
                "root",
                "-n",
                "my runner",
            ],
            "ERROR: --service \"my runner\" is not a service name: use letters, digits and : - _ . (e.g. ferry)",
        ),
        (
            vec![
                "install",
                "--unit-dir",
                dir,
                "-c",
                config,
                "--user",
                "root:x",
            ],
            "ERROR: --user \"root:x\" is not a user name: use letters, digits, _ - and . (e.g. ferry)",
        ),
    ] {
        let o = ferry(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(err(&o).trim(), want, "{args:?}");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "{args:?}");
    }
}

/// Runs `script` with `sh` in a private mount namespace where systemd seems to run: a tmpfs on
/// /run with /run/systemd/system (sd_booted(3)'s test) and a tmpfs on /etc/systemd/system, so
/// that nothing reaches the host's. `None` where unshare(1) cannot make one (not root).
fn in_fake_systemd_host(dir: &Path, script: &str) -> Option<Output> {
    let probe = Command::new("unshare")
        .args(["--mount", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    let setup = "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/system; \
                 mkdir -p /etc/systemd/system; mount -t tmpfs tmpfs /etc/systemd/system; set +e;";
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Some(
        Command::new("unshare")
            .args(["--mount", "sh", "-c", &format!("{setup} {script}")])
            .env("PATH", path)
            .env("T", dir)
            .env("FERRY", ferry_bin())
            .env_remove("FERRY_SYSTEMD_UNIT_DIR")
            .env_remove("CONFIG_FILE")
            .output()
            .unwrap(),
    )
}

#[test]
fn with_systemd_the_commands_drive_systemctl_and_report_its_states() {
    // systemctl is a script that logs its arguments, answers `show` from $T/state and fails
    // `start` while $T/fail exists; ferry's side (what it calls, what it prints, its exit codes)
    // is real.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("bin")).unwrap();
    let systemctl = d.join("bin/systemctl");
    std::fs::write(
        &systemctl,
        "#!/bin/sh\necho \"$*\" >> \"$T/calls\"\ncase \"$1\" in\nshow) cat \"$T/state\" ;;\n\
         is-active) echo inactive; exit 3 ;;\nstart) if [ -e \"$T/fail\" ]; then echo \
         'Job for ferry.service failed because the control process exited with error code.' >&2; \
         exit 1; fi ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"
step() { name=$1; shift; : > "$T/calls"; "$FERRY" "$@" > "$T/$name.out" 2> "$T/$name.err"; echo $? > "$T/$name.rc"; mv "$T/calls" "$T/$name.calls"; }
state() { printf 'LoadState=%s\nActiveState=%s\n' "$1" "$2" > "$T/state"; }
step install install --user root -d "$T/work" -c "$T/etc/config.toml"
cp /etc/systemd/system/ferry.service "$T/unit" 2>/dev/null
state loaded inactive; step stopped status
step start start
state loaded active; step running status
state loaded failed; step failed status
touch "$T/fail"; step startfail start
step uninstall uninstall
test -e /etc/systemd/system/ferry.service && echo "unit left behind" > "$T/left"
state not-found inactive; step gone status
"#;
    let Some(o) = in_fake_systemd_host(d, script) else {
        eprintln!("SKIP: no private mount namespace here (unshare --mount needs root)");
        return;
    };
    assert!(o.status.success(), "{}", err(&o));
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let step = |name: &str| {
        (
            read(&format!("{name}.rc")).trim().parse::<i32>().unwrap(),
            read(&format!("{name}.out")),
            read(&format!("{name}.err")),
            read(&format!("{name}.calls")),
        )
    };
    let config = d.join("etc/config.toml");

    let (rc, out, err, calls) = step("install");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "Installed and enabled ferry.service (/etc/systemd/system/ferry.service); it is not \
             started. Next: register a runner (ferry register -c {}), then ferry start --service \
             ferry\n",
            config.display()
        )
    );
    assert_eq!(calls, "daemon-reload\nenable ferry.service\n");
    let unit = read("unit");
    assert!(unit.contains("\nUser=root\n"), "{unit}");

    assert_eq!(
        step("stopped"),
        (
            1,
            String::new(),
            "ferry: Service has stopped\n".into(),
            "show -p LoadState,ActiveState ferry.service\n".into()
        )
    );
    assert_eq!(
        step("start"),
        (
            0,
            String::new(),
            String::new(),
            "start ferry.service\n".into()
        )
    );
    let (rc, out, err, _) = step("running");
    assert_eq!(
        (rc, &out[..], &err[..]),
        (0, "ferry: Service is running\n", "")
    );
    let (rc, _, err, _) = step("failed");
    assert_eq!(
        (rc, &err[..]),
        (
            1,
            "ferry: Service has failed; journalctl -u ferry.service shows why\n"
        )
    );
    let (rc, out, err, _) = step("startfail");
    assert_eq!((rc, &out[..]), (1, ""));
    assert_eq!(
        err,
        "ERROR: start ferry; journalctl -u ferry.service shows ferry's log: systemctl start \
         ferry.service failed (exit status: 1): Job for ferry.service failed because the control \
         process exited with error code.\n"
    );

    let (rc, out, err, calls) = step("uninstall");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out,
        "Removed ferry.service (/etc/systemd/system/ferry.service).\n"
    );
    assert_eq!(
        calls,
        "disable ferry.service\ndaemon-reload\nis-active ferry.service\n"
    );
    assert_eq!(read("left"), "");
    let (rc, _, err, _) = step("gone");
    assert_eq!(
        (rc, &err[..]),
        (
            1,
            "ferry: Service is not installed (ferry install --service ferry installs it)\n"
        )
    );
}
