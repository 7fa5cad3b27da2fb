//! `ferry run` inside a container, with the host's Docker socket mounted: jobs run in sibling
//! containers and must see ferry's directories although ferry's paths are not the host's
//! (docs/docker-executor.md, "ferry in a container").
//!
//! The image is built locally by scripts/build-container-test-image.sh (the ferry binary of this
//! build, this host's git, on the busybox test image; see docs/install.md for how it differs
//! from the user image). ferry's container uses the host's network, so it reaches the fake GitLab
//! and the git server on 127.0.0.1. Each test runs a job with git sources, a file variable, a
//! cache it saves and an artifact it uploads, then a job that restores the cache.
//!
//! Needs Docker and the test images; without Docker each test prints `SKIP: <reason>`.

use std::io::Read;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, GitHttp, GitRepo, Harness, Setup, cmd, poll_until};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);
const IMAGE: &str = "ferry-test/ferry:e2e";

/// The ferry image, built once per test run from this build's binary.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script =
            ferry_tests::e2e::workspace_root().join("scripts/build-container-test-image.sh");
        let bin = ferry_tests::ferry_bin();
        cmd(
            "sh",
            &[script.to_str().unwrap(), bin.to_str().unwrap(), IMAGE],
        );
    });
    IMAGE
}

/// ferry's container and its named volume, removed when the test ends however it ends.
struct FerryContainer {
    name: String,
    volume: Option<String>,
}

impl Drop for FerryContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
        if let Some(v) = &self.volume {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

/// Where ferry's working directory `/var/lib/ferry` is.
enum WorkDir {
    /// A bind mount of the harness's host directory (a different path than inside).
    HostDir,
    /// A named volume.
    Volume,
    /// The container's own filesystem (`--working-directory /opt/ferry-work`).
    ContainerFs,
}

/// Start `ferry run` in a container of the test image: the Docker socket mounted, the config
/// directory bind-mounted at /etc/ferry, the host's network.
fn start_ferry(h: &mut Harness, setup: &Setup, work: WorkDir, env: &[&str]) -> FerryContainer {
    let etc = h.root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    h.config_path = etc.join("config.toml");
    h.write_config(setup);
    let name = format!("ferry-e2e-{}", h.short.replace('_', "-"));
    let mut guard = FerryContainer {
        name: name.clone(),
        volume: None,
    };
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        "RUST_LOG=info",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("{}:/etc/ferry", etc.display()));
    for e in env {
        args.push("-e".into());
        args.push(e.to_string());
    }
    let mut cmd_args: Vec<String> = Vec::new();
    match work {
        WorkDir::HostDir => {
            std::fs::create_dir_all(&h.work_dir).unwrap();
            args.push("-v".into());
            args.push(format!("{}:/var/lib/ferry", h.work_dir.display()));
        }
        WorkDir::Volume => {
            let vol = format!("{name}-data");
            args.push("-v".into());
            args.push(format!("{vol}:/var/lib/ferry"));
            guard.volume = Some(vol);
        }
        WorkDir::ContainerFs => {
            cmd_args = [
                "--config",
                "/etc/ferry/config.toml",
                "--working-directory",
                "/opt/ferry-work",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
        }
    }
    args.push(image().to_string());
    args.extend(cmd_args);
    h.spawn_with("docker", &args);
    guard
}

/// Sources, a file variable, cache and artifacts through ferry in a container; returns ferry's
/// log line that says how the working directory reaches job containers.
async fn run_jobs(h: &Harness) -> String {
    let repo = GitRepo::new();
    let sha = repo.commit("README", "from git\n");
    let root = repo.path().parent().unwrap();
    let name = repo.path().file_name().unwrap().to_str().unwrap();
    let git = GitHttp::serve(root).await;
    let url = git.repo_url(name);
    let cache = |policy: &str| {
        json!({"key": "deps", "untracked": false, "policy": policy, "paths": ["vendor/"],
               "when": "on_success", "fallback_keys": []})
    };

    let mut build = JobSpec::new("build")
        .image(Some(BUSYBOX))
        .patch(GitRepo::git_info(&url, &sha, 20))
        .file_variable("SETTINGS", "file-variable-content")
        .script([
            "test -d .git && echo git-dir-present",
            "cat README",
            "cat \"$SETTINGS\"",
            "mkdir -p vendor out",
            "echo cached-content > vendor/lib.txt",
            "cp README out/readme.txt && echo built >> out/readme.txt",
        ])
        .artifact_paths(["out/"]);
    build.cache.push(cache("pull-push"));
    let build_id = h.push(build);
    let job = h.wait_final(build_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\ngit-dir-present"), "{trace}");
    assert!(trace.contains("\nfrom git\n"), "{trace}");
    assert!(trace.contains("\nfile-variable-content"), "{trace}");
    assert!(trace.contains("Creating cache deps"), "{trace}");
    let stored = h.gitlab.artifacts(build_id);
    assert_eq!(stored.len(), 1, "{}", h.describe(build_id));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored[0].data.clone())).unwrap();
    let mut content = String::new();
    zip.by_name("out/readme.txt")
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "from git\nbuilt\n");

    let mut restore = h
        .job("restore")
        .variable("GIT_STRATEGY", "empty", false)
        .script(["cat vendor/lib.txt", "echo written-by-the-job > job.txt"]);
    restore.cache.push(cache("pull"));
    let id = h.push(restore);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("Successfully extracted cache"), "{trace}");
    assert!(trace.contains("\ncached-content"), "{trace}");

    // The job's containers and per-job volumes are gone.
    let gone = poll_until(Duration::from_secs(60), || {
        h.docker_objects(None).is_empty()
    })
    .await;
    assert!(gone, "{:?}", h.docker_objects(None));
    h.ferry_log()
        .lines()
        .find(|l| l.contains("ferry runs in container") || l.contains("remote Docker daemon"))
        .unwrap_or_else(|| panic!("no placement line in ferry's log:\n{}", h.ferry_log()))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_on_a_bind_mount_of_a_host_dir() {
    let setup = Setup::default();
    let Some(mut h) = Harness::prepare(setup.clone()).await else {
        return;
    };
    let _ferry = start_ferry(&mut h, &setup, WorkDir::HostDir, &[]);
    let line = run_jobs(&h).await;
    // /var/lib/ferry inside is the harness's directory on the host: job containers get that.
    assert!(
        line.contains(&format!(
            ": /var/lib/ferry is {} on the Docker host, bind-mounted",
            h.work_dir.display()
        )),
        "{line}"
    );
    // What the job container wrote is in the host directory.
    assert_eq!(
        std::fs::read_to_string(h.project_dir(0).join("job.txt")).unwrap(),
        "written-by-the-job\n"
    );
    assert!(h.stop().await.success(), "{}", h.ferry_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_on_a_named_volume() {
    let setup = Setup::default();
    let Some(mut h) = Harness::prepare(setup.clone()).await else {
        return;
    };
    let ferry = start_ferry(&mut h, &setup, WorkDir::Volume, &[]);
    let volume = ferry.volume.clone().unwrap();
    let line = run_jobs(&h).await;
    let api = cmd("docker", &["version", "--format", "{{.Server.APIVersion}}"]);
    let (major, minor) = api.split_once('.').unwrap();
    let api: (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
    if api >= (1, 45) {
        // A directory of the volume, mounted with VolumeOptions.Subpath.
        assert!(
            line.contains(&format!(": /var/lib/ferry is in volume {volume}; job containers mount its directories with a subpath")),
            "{line}"
        );
    } else {
        // Older engines: the local volume's directory on the Docker host.
        let mountpoint = cmd(
            "docker",
            &["volume", "inspect", "--format", "{{.Mountpoint}}", &volume],
        );
        assert!(
            line.contains(&format!(
                ": /var/lib/ferry is {mountpoint} on the Docker host"
            )),
            "{line}"
        );
    }
    assert!(h.stop().await.success(), "{}", h.ferry_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_on_the_container_filesystem_is_copied() {
    let setup = Setup::default();
    let Some(mut h) = Harness::prepare(setup.clone()).await else {
        return;
    };
    let _ferry = start_ferry(&mut h, &setup, WorkDir::ContainerFs, &[]);
    let line = run_jobs(&h).await;
    assert!(
        line.contains("/opt/ferry-work is on the container's own filesystem")
            && line.contains("copied through the archive API"),
        "{line}"
    );
    assert!(h.stop().await.success(), "{}", h.ferry_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_daemon_mode_in_a_container() {
    let setup = Setup::default();
    let Some(mut h) = Harness::prepare(setup.clone()).await else {
        return;
    };
    let _ferry = start_ferry(
        &mut h,
        &setup,
        WorkDir::HostDir,
        &["FERRY_DOCKER_REMOTE=true"],
    );
    let line = run_jobs(&h).await;
    assert!(
        line.contains(
            "remote Docker daemon: builds directories are copied through the archive API"
        ),
        "{line}"
    );
    // Copied back to the host directory after the job.
    assert_eq!(
        std::fs::read_to_string(h.project_dir(0).join("job.txt")).unwrap(),
        "written-by-the-job\n"
    );
    assert!(h.stop().await.success(), "{}", h.ferry_log());
}
