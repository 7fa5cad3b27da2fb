//! The Debian package (docs/install.md, "Debian package"): built with cargo-deb from this build's
//! binary, inspected with `dpkg-deb --info/--contents`, then installed, reinstalled, removed and
//! purged with dpkg in a throwaway root (`dpkg --root=DIR --force-script-chrootless`: the
//! maintainer scripts run on this host with DPKG_ROOT=DIR, as they are written to).
//!
//! cargo-deb (scripts/setup.sh installs it) packages `target/release/ferry`; to spare CI a
//! release build, this build's binary is copied to `release/` of a temporary target directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_runner::commands::service::{UnitSpec, unit_file};
use ferry_tests::ferry_bin;

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (bash scripts/setup.sh installs what is needed)"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds the package into `dir` and returns its path.
fn build_deb(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(ferry_bin(), target.join("release/ferry")).unwrap();
    let out = dir.join("out");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", &target)
            .args(["deb", "-p", "ferry-runner", "--no-build", "--fast", "-o"])
            .arg(&out),
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.into_iter().next().unwrap()
}

/// A root with just what dpkg and useradd need: the dpkg database and the account files, with a
/// `docker` group as on a host with Docker.
fn throwaway_root(root: &Path) {
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (file, text, mode) in [
        ("var/lib/dpkg/status", "", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\ndocker:x:990:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("etc/gshadow", "root:*::\ndocker:!::\n", 0o640),
    ] {
        let p = root.join(file);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // The throwaway root has none of the package's dependencies (libc6, passwd, ...).
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

/// The `name:` line of an account file of the root.
fn entry(root: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    std::fs::read_to_string(root.join(file))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(|l| l.split(':').map(String::from).collect())
}

#[test]
fn the_package_holds_the_binary_unit_and_scripts_and_installs_into_a_throwaway_root() {
    let t = tempfile::tempdir().unwrap();
    let deb = build_deb(t.path());

    let info = stdout(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    for want in [
        " Package: ferry\n",
        " Architecture: amd64\n",
        " Section: devel\n",
    ] {
        assert!(info.contains(want), "{want:?} in\n{info}");
    }
    let depends = info
        .lines()
        .find_map(|l| l.strip_prefix(" Depends: "))
        .unwrap_or_else(|| panic!("no Depends in\n{info}"));
    for dep in ["libc6", "passwd", "init-system-helpers"] {
        assert!(depends.contains(dep), "{dep} in {depends}");
    }
    // dpkg-deb marks executable control files with `*`.
    for script in ["postinst", "prerm", "postrm"] {
        assert!(
            info.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.windows(3).any(|w| w == ["*", script, "#!/bin/sh"])
            }),
            "executable {script} in\n{info}"
        );
    }

    let contents = stdout(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let file = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("{path} not in\n{contents}"))
    };
    // dpkg-deb lists owners as uid/gid: 0/0 is root.
    assert_eq!(file("/usr/bin/ferry"), "-rwxr-xr-x 0/0");
    assert_eq!(file("/lib/systemd/system/ferry.service"), "-rw-r--r-- 0/0");
    assert_eq!(file("/usr/share/doc/ferry/install.md"), "-rw-r--r-- 0/0");

    let euid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if euid != 0 {
        eprintln!("SKIP (install into a throwaway root): dpkg and chown need root");
        return;
    }
    let root = t.path().join("root");
    throwaway_root(&root);
    let o = dpkg(&root, &["--install", deb.to_str().unwrap()]);
    let said = stdout(&o);
    assert!(
        said.contains("ferry: creating the system user ferry (home /var/lib/ferry)"),
        "{said}"
    );
    // No runner is registered: the service is not started, and postinst says what to do.
    let not_started = "ferry: no runner registered in /etc/ferry/config.toml, so the service \
                       is not started.\nferry: register one: sudo -u ferry ferry register -c \
                       /etc/ferry/config.toml ..., then: sudo systemctl start ferry\n";
    assert!(said.ends_with(not_started), "{said}");

    // The user, in the docker group.
    let user = entry(&root, "etc/passwd", "ferry").expect("user ferry");
    assert_eq!(
        (&user[4][..], &user[5][..], &user[6][..]),
        ("ferry GitLab Runner", "/var/lib/ferry", "/usr/sbin/nologin")
    );
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!(uid < 1000, "a system user: uid {uid}");
    assert_eq!(entry(&root, "etc/group", "ferry").unwrap()[2], user[3]);
    assert_eq!(entry(&root, "etc/group", "docker").unwrap()[3], "ferry");

    // The files, the directories for ferry alone, the unit enabled, nothing else running here.
    let installed = root.join("usr/bin/ferry");
    let version = stdout(&run(Command::new(&installed).arg("--version")));
    assert!(version.starts_with("ferry "), "{version}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ferry.service")).unwrap();
    assert_eq!(unit, unit_file(&UnitSpec::debian_package()).unwrap());
    for dir in ["etc/ferry", "var/lib/ferry"] {
        let m = std::fs::metadata(root.join(dir)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o700, uid, gid),
            "{dir}"
        );
    }
    let wants = root.join("etc/systemd/system/multi-user.target.wants/ferry.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/lib/systemd/system/ferry.service")
    );

    // An upgrade (the same package again) keeps the user and the registered config.
    let config = root.join("etc/ferry/config.toml");
    std::fs::write(&config, "concurrent = 1\n[[runners]]\nname = \"x\"\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = dpkg(&root, &["--install", deb.to_str().unwrap()]);
    let said = stdout(&o);
    assert!(!said.contains("creating the system user"), "{said}");
    assert!(!said.contains("no runner registered"), "{said}");
    assert_eq!(entry(&root, "etc/passwd", "ferry").unwrap(), user);
    assert_eq!(
        std::fs::metadata(&config).unwrap().mode() & 0o7777,
        0o600,
        "config.toml"
    );

    // Removal keeps the config; purge deletes /etc/ferry and /var/lib/ferry, not the user.
    dpkg(&root, &["--remove", "ferry"]);
    assert!(!installed.exists());
    assert!(!root.join("lib/systemd/system/ferry.service").exists());
    assert!(config.exists());
    dpkg(&root, &["--purge", "ferry"]);
    assert!(!root.join("etc/ferry").exists());
    assert!(!root.join("var/lib/ferry").exists());
    assert!(!wants.exists());
    assert!(entry(&root, "etc/passwd", "ferry").is_some());
}
