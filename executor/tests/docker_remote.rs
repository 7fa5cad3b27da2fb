//! DockerEngine in remote mode (forced with `with_remote(true)`) against the real local Docker
//! engine: the builds directory is a per-job volume, copied in and out through the archive API,
//! exactly as with a daemon on another machine. When Docker is unreachable every test prints
//! `SKIP: <reason>` and returns.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::query_parameters::{InspectContainerOptions, ListVolumesOptionsBuilder};
use ferry_config::DockerSection;
use ferry_executor::docker::remote::{builds_volume_name, tmp_volume_name};
use ferry_executor::{DockerEngine, Engine, EnvVar, ImageSpec, JobEnv, PullPolicy, StepSpec};
use tokio_util::sync::CancellationToken;

const BUSYBOX: &str = "ferry-test/busybox:latest";

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

fn images_ready() -> Result<(), String> {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-images.sh");
            let out = std::process::Command::new("sh")
                .arg(&script)
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
}

fn runner_token(test: &str) -> String {
    format!("r{}{}", std::process::id() % 100000, test)
}

async fn remote_engine(test: &str) -> Option<DockerEngine> {
    let engine = match DockerEngine::new(&DockerSection::default(), &runner_token(test)).await {
        Ok(e) => e,
        Err(e) => {
            skip_notice(&format!("SKIP: {test}: Docker is unreachable: {e}"));
            return None;
        }
    };
    if let Err(e) = engine.ping().await {
        skip_notice(&format!("SKIP: {test}: Docker is unreachable: {e}"));
        return None;
    }
    images_ready().expect("building the test images");
    // The local daemon is not remote by its address; force the copy path.
    assert!(!engine.is_remote());
    Some(engine.with_remote(true))
}

fn job_env(test: &str, host_builds: PathBuf) -> JobEnv {
    JobEnv {
        job_id: 5000 + NEXT_JOB.fetch_add(1, Ordering::SeqCst),
        project_id: 78,
        runner_short_token: runner_token(test),
        image: ImageSpec {
            name: BUSYBOX.into(),
            entrypoint: vec![],
            pull_policy: vec![PullPolicy::IfNotPresent],
            user: None,
            platform: None,
            runner_default: false,
        },
        services: vec![],
        variables: vec![EnvVar {
            name: "JOB_VAR".into(),
            value: "v".into(),
        }],
        service_variables: vec![],
        builds_dir: "/builds".into(),
        project_dir: "/builds/group/project".into(),
        host_project_dir: host_builds.join("group/project"),
        tmp_dir: "/builds/group/project.tmp".into(),
        host_steps_dir: None,
        host_tmp_dir: {
            std::fs::create_dir_all(host_builds.join("tmp")).unwrap();
            host_builds.join("tmp")
        },
        registry_auth: vec![],
        container_labels: Default::default(),
        runner_services: 0,
    }
}

fn step(cmds: &[&str]) -> StepSpec {
    StepSpec {
        name: "script".into(),
        commands: cmds.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        timeout: None,
        xtrace: false,
        script_sections: vec![],
        log_full: Default::default(),
    }
}

async fn job_volumes(engine: &DockerEngine, env: &JobEnv) -> Vec<String> {
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("ferry.job_id={}", env.job_id)],
    );
    engine
        .client()
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

#[tokio::test]
async fn remote_mode_copies_the_builds_directory_in_and_out() {
    let Some(engine) = remote_engine("copy").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("builds");
    let project = host.join("group/project");
    std::fs::create_dir_all(project.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(project.join(".git")).unwrap();
    std::fs::write(project.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(project.join("input.txt"), "hello from the host\n").unwrap();
    std::fs::write(project.join("sub/deeper/data.txt"), "nested\n").unwrap();
    std::fs::write(project.join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(
        project.join("tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/deeper/data.txt", project.join("link.txt")).unwrap();
    std::fs::write(project.join("doomed.txt"), "the script removes me\n").unwrap();
    let env = job_env("copy", host.clone());

    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine.prepare(&env, &mut log, &cancel).await.unwrap();

    // The build container mounts the per-job volume, not the host directory.
    let info = engine
        .client()
        .inspect_container(
            &format!(
                "runner-{}-project-78-job-{}-build",
                env.runner_short_token, env.job_id
            ),
            None::<InspectContainerOptions>,
        )
        .await
        .unwrap();
    let mounts = info.mounts.unwrap_or_default();
    let builds = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/builds/group/project"))
        .expect("a mount at /builds/group/project");
    assert_eq!(
        builds.name.as_deref(),
        Some(builds_volume_name(&env).as_str())
    );
    let mut want = vec![builds_volume_name(&env), tmp_volume_name(&env)];
    want.sort();
    let mut have = job_volumes(&engine, &env).await;
    have.sort();
    assert_eq!(have, want);

    engine.sync_in(&env).await.unwrap();
    // Written after the copy: a bind mount would show it, a copy does not.
    std::fs::write(project.join("late.txt"), "too late\n").unwrap();

    let out = engine
        .run_step(
            &env,
            &step(&[
                "cat input.txt sub/deeper/data.txt link.txt .git/HEAD",
                "test -L link.txt",
                "./tool.sh",
                "test ! -e late.txt && echo no late file",
                "mkdir -p out && echo built > out/result.txt",
                "ln -s result.txt out/latest",
                "rm doomed.txt",
            ]),
            &mut log,
            &cancel,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&log).to_string();
    assert_eq!(out.exit_code, 0, "{text}");
    assert!(
        text.contains("hello from the host\nnested\nnested\nref: refs/heads/main\n"),
        "{text}"
    );
    assert!(text.contains("tool ran\n"), "{text}");
    assert!(text.contains("no late file\n"), "{text}");

    engine.sync_out(&env).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(project.join("out/result.txt")).unwrap(),
        "built\n"
    );
    assert_eq!(
        std::fs::read_link(project.join("out/latest")).unwrap(),
        PathBuf::from("result.txt")
    );
    assert!(!project.join("doomed.txt").exists(), "removed in the job");
    assert!(
        !project.join("late.txt").exists(),
        "the host now mirrors the container"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("input.txt")).unwrap(),
        "hello from the host\n"
    );
    let mode = std::fs::metadata(project.join("tool.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(!host.join("group/project.ferry-sync").exists());

    engine.destroy(&env).await.unwrap();
    assert!(
        job_volumes(&engine, &env).await.is_empty(),
        "destroy removes the volume"
    );
}

#[tokio::test]
async fn remote_mode_cleanup_leftovers_removes_the_builds_volume() {
    let Some(engine) = remote_engine("leftover").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("builds");
    std::fs::create_dir_all(host.join("group/project")).unwrap();
    let env = job_env("leftover", host);
    let mut log: Vec<u8> = Vec::new();
    engine
        .prepare(&env, &mut log, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(job_volumes(&engine, &env).await.len(), 2);
    // A crashed ferry never called destroy.
    let removed = engine.cleanup_leftovers().await.unwrap();
    assert!(removed >= 3, "container and volumes: {removed}");
    assert!(job_volumes(&engine, &env).await.is_empty());
}

/// Shows `SKIP: <reason>` in the test run's output even though the test passes: libtest captures
/// `println!` of passing tests, a direct write to stderr is not captured.
fn skip_notice(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
