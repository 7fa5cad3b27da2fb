//! DockerEngine against the real Docker engine, with the images of scripts/build-test-images.sh.
//! When Docker is unreachable every test prints `SKIP: <reason>` and returns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use ferry_config::DockerSection;
use ferry_executor::docker::convert;
use ferry_executor::{
    DockerEngine, Engine, EngineError, EnvVar, ImageSpec, JobEnv, LogFull, PullPolicy, ServiceSpec,
    StepSpec,
};
use tokio_util::sync::CancellationToken;

const BUSYBOX: &str = "ferry-test/busybox:latest";
const BASH: &str = "ferry-test/bash:latest";
const SERVICE: &str = "ferry-test/service:latest";

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

/// A runner token unique to this test, so cleanup checks never see another test's objects.
fn runner_token(test: &str) -> String {
    format!("t{}{}", std::process::id() % 100000, test)
}

async fn engine_with(test: &str, section: DockerSection) -> Option<DockerEngine> {
    let engine = match DockerEngine::new(&section, &runner_token(test)).await {
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
    Some(engine.with_stop_grace(Duration::from_secs(2)))
}

fn image(name: &str) -> ImageSpec {
    ImageSpec {
        name: name.into(),
        entrypoint: vec![],
        pull_policy: vec![PullPolicy::IfNotPresent],
        user: None,
        platform: None,
        runner_default: false,
    }
}

struct Job {
    env: JobEnv,
    _dir: tempfile::TempDir,
}

fn job(test: &str, img: &str) -> Job {
    let dir = tempfile::tempdir().unwrap();
    let host_builds = dir.path().join("builds");
    std::fs::create_dir_all(host_builds.join("group/project")).unwrap();
    let env = JobEnv {
        job_id: 1000 + NEXT_JOB.fetch_add(1, Ordering::SeqCst),
        project_id: 77,
        runner_short_token: runner_token(test),
        image: image(img),
        services: vec![],
        variables: vec![EnvVar {
            name: "JOB_VAR".into(),
            value: "it's a job var".into(),
        }],
        service_variables: vec![EnvVar {
            name: "JOB_VAR".into(),
            value: "it's a job var".into(),
        }],
        builds_dir: "/builds".into(),
        project_dir: "/builds/group/project".into(),
        host_project_dir: host_builds.join("group/project"),
        tmp_dir: "/builds/group/project.tmp".into(),
        host_steps_dir: Some(dir.path().join("steps")),
        host_tmp_dir: {
            std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
            dir.path().join("tmp")
        },
        registry_auth: vec![],
        container_labels: Default::default(),
        runner_services: 0,
    };
    Job { env, _dir: dir }
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

/// prepare, run one step, destroy; returns (outcome, log).
async fn run_one(
    engine: &DockerEngine,
    env: &JobEnv,
    s: &StepSpec,
) -> (Result<ferry_executor::StepOutcome, EngineError>, String) {
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine
        .prepare(env, &mut log, &cancel)
        .await
        .expect("prepare");
    let r = engine.run_step(env, s, &mut log, &cancel).await;
    engine.destroy(env).await.expect("destroy");
    (r, String::from_utf8_lossy(&log).into_owned())
}

async fn labelled(engine: &DockerEngine, label: &str) -> (usize, usize) {
    labelled_all(engine, &[label]).await
}

/// Containers and networks carrying every one of `labels`.
async fn labelled_all(engine: &DockerEngine, labels: &[&str]) -> (usize, usize) {
    let mut f = HashMap::new();
    f.insert(
        "label".to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
    );
    let c = engine
        .client()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&f)
                .build(),
        ))
        .await
        .unwrap();
    let n = engine
        .client()
        .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&f).build()))
        .await
        .unwrap();
    (c.len(), n.len())
}

fn section() -> DockerSection {
    DockerSection {
        pull_policy: vec![ferry_config::PullPolicy::IfNotPresent],
        wait_for_services_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

#[tokio::test]
async fn echo_and_exit_code() {
    let Some(engine) = engine_with("echo", section()).await else {
        return;
    };
    let j = job("echo", BUSYBOX);
    let (r, log) = run_one(&engine, &j.env, &step(&["echo hello world", "exit 3"])).await;
    let out = r.unwrap();
    assert_eq!(out.exit_code, 3);
    assert!(!out.oom_killed);
    assert!(
        log.contains("\x1b[32;1m$ echo hello world\x1b[0;m\nhello world\n"),
        "{log}"
    );
    assert!(
        log.contains("Using Docker executor with image ferry-test/busybox:latest"),
        "{log}"
    );
}

#[tokio::test]
async fn failing_command_stops_the_script() {
    let Some(engine) = engine_with("fail", section()).await else {
        return;
    };
    let j = job("fail", BUSYBOX);
    let (r, log) = run_one(&engine, &j.env, &step(&["echo one", "false", "echo two"])).await;
    assert_eq!(r.unwrap().exit_code, 1);
    assert!(log.contains("one\n"), "{log}");
    assert!(!log.contains("echo two"), "{log}");
    assert!(!log.contains("two\n"), "{log}");
}

#[tokio::test]
async fn commands_reading_stdin_do_not_eat_the_script() {
    let Some(engine) = engine_with("stdin", section()).await else {
        return;
    };
    let j = job("stdin", BUSYBOX);
    let (r, log) = run_one(&engine, &j.env, &step(&["cat", "echo after-cat"])).await;
    assert_eq!(r.unwrap().exit_code, 0);
    assert!(log.contains("after-cat\n"), "{log}");
}

#[tokio::test]
async fn bash_when_the_image_has_it_else_sh() {
    let Some(engine) = engine_with("shell", section()).await else {
        return;
    };
    let j = job("shell", BASH);
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&[
            "echo \"bash=$BASH_VERSION\"",
            "echo pipe; false | true",
            "echo not-reached",
        ]),
    )
    .await;
    // pipefail: `false | true` fails the script under bash.
    assert_eq!(r.unwrap().exit_code, 1);
    assert!(log.contains("bash=5."), "{log}");
    assert!(!log.contains("not-reached\n"), "{log}");

    let j = job("shell", BUSYBOX);
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&[
            "echo \"bash=${BASH_VERSION:-none}\"",
            "readlink /proc/$$/exe",
        ]),
    )
    .await;
    assert_eq!(r.unwrap().exit_code, 0);
    assert!(log.contains("bash=none\n"), "{log}");
    assert!(log.contains("/bin/busybox\n"), "{log}");
}

#[tokio::test]
async fn job_and_step_variables() {
    let Some(engine) = engine_with("env", section()).await else {
        return;
    };
    let j = job("env", BUSYBOX);
    let mut s = step(&["echo \"[$JOB_VAR] [$CI_JOB_STATUS]\"", "pwd"]);
    s.env.push(EnvVar {
        name: "CI_JOB_STATUS".into(),
        value: "fail'ed \"x\"".into(),
    });
    let (r, log) = run_one(&engine, &j.env, &s).await;
    assert_eq!(r.unwrap().exit_code, 0);
    assert!(log.contains("[it's a job var] [fail'ed \"x\"]\n"), "{log}");
    assert!(log.contains("/builds/group/project\n"), "{log}");
}

#[tokio::test]
async fn bind_and_named_volumes() {
    let host = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("given.txt"), "from-host").unwrap();
    let mut sec = section();
    sec.volumes = vec![
        format!("{}:/hostdir", host.path().display()),
        format!("{}:/rodir:ro", ro.path().display()),
        "/cache".into(),
    ];
    let Some(engine) = engine_with("vols", sec).await else {
        return;
    };
    let j = job("vols", BUSYBOX);
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&[
            "echo bound > /hostdir/out.txt",
            "cat /rodir/given.txt",
            "if touch /rodir/x 2>/dev/null; then echo rw; else echo read-only; fi",
            "echo sources > built.txt",
            "echo cached > /cache/c.txt",
        ]),
    )
    .await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "bound\n"
    );
    assert!(
        log.contains("from-host") && log.contains("read-only\n"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(j.env.host_project_dir.join("built.txt")).unwrap(),
        "sources\n"
    );
    // The /cache volume outlives the job: the next job of the project sees the file.
    let j2 = job("vols", BUSYBOX);
    let (r, log) = run_one(&engine, &j2.env, &step(&["cat /cache/c.txt"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert!(log.contains("cached\n"), "{log}");
    // ...and cleanup_leftovers keeps it.
    engine.cleanup_leftovers().await.unwrap();
    let name = ferry_executor::docker::convert::cache_volume_name(&j.env, "/cache");
    engine
        .client()
        .inspect_volume(&name)
        .await
        .expect("cache volume kept");
    engine
        .client()
        .remove_volume(
            &name,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_volume_spec_is_a_configuration_error() {
    let mut sec = section();
    sec.volumes = vec!["/srv/a:relative/b".into()];
    let Some(engine) = engine_with("badvol", sec).await else {
        return;
    };
    let j = job("badvol", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        EngineError::Configuration(m) => assert!(m.contains("/srv/a:relative/b"), "{m}"),
        other => panic!("expected Configuration, got {other:?}"),
    }
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn disallowed_image_and_service() {
    let mut sec = section();
    sec.allowed_images = vec!["ferry-test/bash:*".into()];
    sec.allowed_services = vec!["postgres:*".into()];
    let Some(engine) = engine_with("allow", sec).await else {
        return;
    };
    let j = job("allow", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        EngineError::Configuration(m) => {
            assert!(
                m.contains("ferry-test/busybox:latest") && m.contains("ferry-test/bash:*"),
                "{m}"
            )
        }
        other => panic!("expected Configuration, got {other:?}"),
    }
    let mut j = job("allow", BASH);
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases: vec!["web".into()],
        command: vec![],
        variables: vec![],
    });
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Configuration(m) if m.contains(SERVICE) && m.contains("postgres:*")),
        "{err}"
    );
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn missing_image_is_an_image_pull_error() {
    let Some(engine) = engine_with("missing", section()).await else {
        return;
    };
    let mut j = job("missing", BUSYBOX);
    j.env.image = ImageSpec {
        pull_policy: vec![PullPolicy::Never],
        ..image("ferry-test/missing:1")
    };
    let mut log: Vec<u8> = Vec::new();
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        EngineError::ImagePull { image, message } => {
            assert_eq!(image, "ferry-test/missing:1");
            assert!(message.contains("never"), "{message}");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    // `always` then `if-not-present`: the pull fails (no registry here) with Docker's message.
    j.env.image.pull_policy = vec![PullPolicy::Always, PullPolicy::IfNotPresent];
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(&err, EngineError::ImagePull { .. }), "{err}");
    let log = String::from_utf8_lossy(&log);
    println!("{log}");
    assert!(
        log.contains("Pulling docker image ferry-test/missing:1"),
        "{log}"
    );
    assert!(
        log.contains("WARNING: Failed to pull image with policy \"always\""),
        "{log}"
    );
    // A half-done prepare is cleaned up by destroy.
    engine.destroy(&j.env).await.unwrap();
    engine.destroy(&j.env).await.unwrap();
    assert_eq!(
        labelled(
            &engine,
            &format!("ferry.runner={}", j.env.runner_short_token)
        )
        .await,
        (0, 0)
    );
}

#[tokio::test]
async fn service_reachable_by_alias_after_port_wait() {
    let Some(engine) = engine_with("svc", section()).await else {
        return;
    };
    let mut j = job("svc", BUSYBOX);
    let mut aliases = vec!["web".to_string()];
    aliases.extend(ferry_executor::docker::service_aliases_from_image(SERVICE));
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases,
        command: vec![],
        variables: vec![],
    });
    // The same image with entrypoint and command overridden; its port opens only after 2 s, so
    // the job can reach it only if prepare waited. It shows its environment: the job's
    // variables plus its own, which win.
    j.env.services.push(ServiceSpec {
        image: ImageSpec {
            entrypoint: vec!["sh".into(), "-c".into()],
            ..image(SERVICE)
        },
        aliases: vec!["envsvc".into()],
        command: vec![
            "echo \"$SVC_ONLY/$JOB_VAR/$SHARED\" > /www/index.html; sleep 2; exec httpd -f -p 8080 -h /www"
                .into(),
        ],
        variables: vec![
            EnvVar { name: "SVC_ONLY".into(), value: "yes".into() },
            EnvVar { name: "SHARED".into(), value: "service-wins".into() },
        ],
    });
    j.env.variables.push(EnvVar {
        name: "SHARED".into(),
        value: "job".into(),
    });
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&[
            "wget -q -O - http://web:8080/",
            "wget -q -O - http://ferry-test__service:8080/",
            "wget -q -O - http://ferry-test-service:8080/",
            "wget -q -O - http://envsvc:8080/",
        ]),
    )
    .await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert_eq!(log.matches("ferry-service-ok\n").count(), 3, "{log}");
    assert!(log.contains("yes/it's a job var/service-wins\n"), "{log}");
    assert!(
        log.contains("Starting service ferry-test/service:latest ..."),
        "{log}"
    );
    assert!(
        log.contains("Waiting for services to be up and running (timeout 10 seconds)..."),
        "{log}"
    );
    assert!(!log.contains("probably didn't start properly"), "{log}");
}

#[tokio::test]
async fn service_wait_works_without_reaching_the_service_from_the_host() {
    let Some(engine) = engine_with("svcproc", section()).await else {
        return;
    };
    let engine = engine.with_host_probe(false);
    let mut j = job("svcproc", BUSYBOX);
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases: vec!["slow".into()],
        command: vec![
            "sh".into(),
            "-c".into(),
            "sleep 2; exec httpd -f -p 8080 -h /www".into(),
        ],
        variables: vec![],
    });
    let (r, log) = run_one(&engine, &j.env, &step(&["wget -q -O - http://slow:8080/"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert!(log.contains("ferry-service-ok\n"), "{log}");
    assert!(!log.contains("probably didn't start properly"), "{log}");
}

#[tokio::test]
async fn service_that_never_opens_its_port_warns_and_the_job_continues() {
    let mut sec = section();
    sec.wait_for_services_timeout = Some(Duration::from_secs(2));
    let Some(engine) = engine_with("svcdead", sec).await else {
        return;
    };
    let mut j = job("svcdead", BUSYBOX);
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases: vec!["web".into()],
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo service-says-hi; sleep 3600".into(),
        ],
        variables: vec![],
    });
    let started = Instant::now();
    let (r, log) = run_one(&engine, &j.env, &step(&["echo job-ran"])).await;
    println!("{log}");
    assert_eq!(r.unwrap().exit_code, 0);
    assert!(log.contains("probably didn't start properly"), "{log}");
    assert!(log.contains("8080"), "{log}");
    assert!(log.contains("service-says-hi"), "{log}");
    assert!(log.contains("job-ran\n"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn oom_kill_is_reported() {
    let mut sec = section();
    sec.memory = Some(6 * 1024 * 1024);
    sec.memory_swap = Some(6 * 1024 * 1024);
    let Some(engine) = engine_with("oom", sec).await else {
        return;
    };
    let j = job("oom", BUSYBOX);
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&["head -c 50m /dev/zero | tail", "echo survived"]),
    )
    .await;
    let out = r.unwrap();
    assert!(out.oom_killed, "{out:?} {log}");
    assert_eq!(out.exit_code, 137);
    assert!(!log.contains("survived\n"), "{log}");
    // A SIGKILL that is not an OOM kill is a plain 137.
    let j = job("oom", BUSYBOX);
    let (r, log) = run_one(&engine, &j.env, &step(&["sh -c 'kill -9 $$'"])).await;
    let out = r.unwrap();
    assert_eq!((out.exit_code, out.oom_killed), (137, false), "{log}");
}

#[tokio::test]
async fn cancel_stops_the_step_within_seconds() {
    let Some(engine) = engine_with("cancel", section()).await else {
        return;
    };
    let j = job("cancel", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine.prepare(&j.env, &mut log, &cancel).await.unwrap();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c2.cancel();
    });
    let started = Instant::now();
    // The second command ignores SIGTERM, so SIGKILL after the grace period (2 s) must stop it.
    let r = engine
        .run_step(
            &j.env,
            &step(&["echo started", "trap '' TERM; sleep 60"]),
            &mut log,
            &cancel,
        )
        .await;
    assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // after_script still runs in the same container.
    let mut after = step(&["echo after $CI_JOB_STATUS"]);
    after.name = "after_script".into();
    after.env.push(EnvVar {
        name: "CI_JOB_STATUS".into(),
        value: "canceled".into(),
    });
    let out = engine
        .run_step(&j.env, &after, &mut log, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("started\n") && log.contains("after canceled\n"),
        "{log}"
    );
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn step_timeout_stops_the_step() {
    let Some(engine) = engine_with("timeout", section()).await else {
        return;
    };
    let j = job("timeout", BUSYBOX);
    let mut s = step(&["sleep 30"]);
    s.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (r, log) = run_one(&engine, &j.env, &s).await;
    assert_eq!(r.unwrap().exit_code, 124);
    assert!(log.contains("timed out"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn background_process_does_not_hold_the_step() {
    let Some(engine) = engine_with("bg", section()).await else {
        return;
    };
    let j = job("bg", BUSYBOX);
    let started = Instant::now();
    let (r, log) = run_one(&engine, &j.env, &step(&["sleep 60 &", "echo done"])).await;
    assert_eq!(r.unwrap().exit_code, 0);
    assert!(log.contains("done\n"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn destroy_leaves_nothing_labelled() {
    let Some(engine) = engine_with("destroy", section()).await else {
        return;
    };
    let mut j = job("destroy", BUSYBOX);
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases: vec!["web".into()],
        command: vec![],
        variables: vec![],
    });
    let label = format!("ferry.job_id={}", j.env.job_id);
    let mut log: Vec<u8> = Vec::new();
    engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(labelled(&engine, &label).await, (2, 1));
    engine.destroy(&j.env).await.unwrap();
    assert_eq!(labelled(&engine, &label).await, (0, 0));
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn cleanup_leftovers_removes_only_this_runners_objects() {
    let Some(engine) = engine_with("leftover", section()).await else {
        return;
    };
    let Some(other) = engine_with("leftover-other", section()).await else {
        return;
    };
    let mine = job("leftover", BUSYBOX);
    let theirs = job("leftover-other", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    engine
        .prepare(&mine.env, &mut log, &CancellationToken::new())
        .await
        .unwrap();
    other
        .prepare(&theirs.env, &mut log, &CancellationToken::new())
        .await
        .unwrap();
    // An unrelated container with no ferry labels.
    let unrelated = format!("ferry-unrelated-{}", std::process::id());
    engine
        .client()
        .create_container(
            Some(
                bollard::query_parameters::CreateContainerOptionsBuilder::new()
                    .name(&unrelated)
                    .build(),
            ),
            bollard::models::ContainerCreateBody {
                image: Some(BUSYBOX.into()),
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A fresh engine (as after a crash) removes what the first one left.
    let restarted = engine_with("leftover", section()).await.unwrap();
    let removed = restarted.cleanup_leftovers().await.unwrap();
    // A job without services runs on Docker's default bridge: no network of its own.
    assert_eq!(removed, 1, "the build container");
    assert_eq!(
        labelled(
            &engine,
            &format!("ferry.runner={}", mine.env.runner_short_token)
        )
        .await,
        (0, 0)
    );
    assert_eq!(
        labelled(
            &engine,
            &format!("ferry.runner={}", theirs.env.runner_short_token)
        )
        .await,
        (1, 0)
    );
    engine
        .client()
        .inspect_container(
            &unrelated,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("unrelated container untouched");
    engine
        .client()
        .remove_container(
            &unrelated,
            None::<bollard::query_parameters::RemoveContainerOptions>,
        )
        .await
        .unwrap();
    other.destroy(&theirs.env).await.unwrap();
}

#[tokio::test]
async fn privileged_containers_get_all_capabilities() {
    let Some(plain) = engine_with("priv", section()).await else {
        return;
    };
    let mut sec = section();
    sec.privileged = true;
    let Some(privileged) = engine_with("priv", sec).await else {
        return;
    };
    let cmd = ["grep CapEff /proc/self/status"];
    let j = job("priv", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    if let Err(e) = privileged
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
    {
        skip_notice(&format!(
            "SKIP: privileged_containers_get_all_capabilities: the engine refuses privileged containers: {e}"
        ));
        privileged.destroy(&j.env).await.unwrap();
        return;
    }
    let out = privileged
        .run_step(&j.env, &step(&cmd), &mut log, &CancellationToken::new())
        .await
        .unwrap();
    privileged.destroy(&j.env).await.unwrap();
    assert_eq!(out.exit_code, 0);
    let j2 = job("priv", BUSYBOX);
    let (r, plain_log) = run_one(&plain, &j2.env, &step(&cmd)).await;
    assert_eq!(r.unwrap().exit_code, 0);
    let caps = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("CapEff"))
            .map(str::to_string)
    };
    let p = caps(&String::from_utf8_lossy(&log)).unwrap();
    let n = caps(&plain_log).unwrap();
    assert_ne!(p, n, "privileged {p} vs plain {n}");
}

#[tokio::test]
async fn unreachable_docker_is_a_clear_error() {
    let sec = DockerSection {
        host: Some("unix:///nonexistent/docker.sock".into()),
        ..Default::default()
    };
    let err = DockerEngine::new(&sec, "x").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Docker(_)));
    assert!(
        msg.contains("/nonexistent/docker.sock") && !msg.contains('\n'),
        "{msg}"
    );
    let sec = DockerSection {
        host: Some("tcp://127.0.0.1:1".into()),
        ..Default::default()
    };
    let err = DockerEngine::new(&sec, "x").await.unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let sec = DockerSection {
        host: Some("tcp://127.0.0.1:1".into()),
        tls_verify: true,
        tls_cert_path: Some("/nonexistent/certs".into()),
        ..Default::default()
    };
    let err = DockerEngine::new(&sec, "x").await.unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/certs/ca.pem"),
        "{err}"
    );
    let sec = DockerSection {
        host: Some("ftp://x".into()),
        ..Default::default()
    };
    let err = DockerEngine::new(&sec, "x").await.unwrap_err();
    assert!(err.to_string().contains("ftp://x"), "{err}");
}

#[tokio::test]
async fn ping_reports_the_version() {
    let Some(engine) = engine_with("ping", section()).await else {
        return;
    };
    let v = engine.ping().await.unwrap();
    assert!(v.starts_with("Docker ") && v.contains("(API 1."), "{v}");
}

#[tokio::test]
async fn entrypoint_that_exits_is_a_clear_error() {
    let Some(engine) = engine_with("entry", section()).await else {
        return;
    };
    let mut j = job("entry", BUSYBOX);
    j.env.image.entrypoint = vec!["sh".into(), "-c".into(), "echo entrypoint-ran".into()];
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    // prepare notices when the container is already gone; otherwise the first step does.
    let err = match engine.prepare(&j.env, &mut log, &cancel).await {
        Err(e) => e,
        Ok(()) => {
            let name = ferry_executor::docker::convert::build_container_name(&j.env);
            for _ in 0..50 {
                let state = engine
                    .client()
                    .inspect_container(
                        &name,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .unwrap()
                    .state
                    .unwrap();
                if state.running != Some(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            engine
                .run_step(&j.env, &step(&["echo hi"]), &mut log, &cancel)
                .await
                .unwrap_err()
        }
    };
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Docker(_)), "{msg}");
    assert!(
        msg.contains("is not running (exit code 0)") && msg.contains("entrypoint-ran"),
        "{msg}"
    );
    engine.destroy(&j.env).await.unwrap();
    // An entrypoint that runs its command works (`entrypoint: [""]` clears the image's).
    j.env.image.entrypoint = vec!["".into()];
    let (r, log) = run_one(&engine, &j.env, &step(&["echo ok"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
}

#[tokio::test]
async fn docker_options_reach_the_build_container() {
    let mut sec = section();
    sec.extra_hosts = vec!["ferry-extra:10.1.2.3".into()];
    sec.hostname = Some("ferry-host".into());
    sec.user = Some("nobody".into());
    sec.dns_search = vec!["example.test".into()];
    sec.shm_size = 16 * 1024 * 1024;
    sec.memory = Some(64 * 1024 * 1024);
    let Some(engine) = engine_with("opts", sec).await else {
        return;
    };
    let j = job("opts", BUSYBOX);
    let (r, log) = run_one(
        &engine,
        &j.env,
        &step(&[
            "grep ferry-extra /etc/hosts",
            "hostname",
            "id -u",
            "grep search /etc/resolv.conf",
            "df -k /dev/shm | tail -n 1",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ]),
    )
    .await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert!(log.contains("10.1.2.3"), "{log}");
    assert!(log.contains("ferry-host\n"), "{log}");
    assert!(log.contains("65534\n"), "{log}");
    assert!(log.contains("example.test"), "{log}");
    assert!(log.contains(" 16384 "), "{log}");
    assert!(log.contains("67108864\n"), "{log}");
}

/// Records when each write arrived.
struct TimedSink {
    start: Instant,
    writes: Vec<(Duration, Vec<u8>)>,
}

impl tokio::io::AsyncWrite for TimedSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let at = self.start.elapsed();
        self.writes.push((at, buf.to_vec()));
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn output_is_streamed_as_it_comes() {
    let Some(engine) = engine_with("stream", section()).await else {
        return;
    };
    let j = job("stream", BUSYBOX);
    let cancel = CancellationToken::new();
    let mut prep: Vec<u8> = Vec::new();
    engine.prepare(&j.env, &mut prep, &cancel).await.unwrap();
    let mut sink = TimedSink {
        start: Instant::now(),
        writes: Vec::new(),
    };
    let out = engine
        .run_step(
            &j.env,
            &step(&["echo first >&2", "sleep 2", "echo second"]),
            &mut sink,
            &cancel,
        )
        .await
        .unwrap();
    engine.destroy(&j.env).await.unwrap();
    assert_eq!(out.exit_code, 0);
    let when = |needle: &str| {
        sink.writes
            .iter()
            .find(|(_, b)| String::from_utf8_lossy(b).contains(needle))
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{needle} not written"))
    };
    let (first, second) = (when("first\n"), when("second\n"));
    assert!(
        second >= first + Duration::from_millis(1500),
        "first {first:?}, second {second:?}"
    );
}

#[tokio::test]
async fn registry_credentials_are_used_and_not_logged() {
    let Some(engine) = engine_with("auth", section()).await else {
        return;
    };
    let mut j = job("auth", BUSYBOX);
    // Nothing listens on this registry: the pull fails, after choosing credentials.
    j.env.image = ImageSpec {
        pull_policy: vec![PullPolicy::Always],
        ..image("127.0.0.1:5999/group/app:1")
    };
    j.env.variables.push(EnvVar {
        name: "DOCKER_AUTH_CONFIG".into(),
        value: r#"{"auths":{"127.0.0.1:5999":{"username":"ci","password":"top-secret-pw"}}}"#
            .into(),
    });
    let mut log: Vec<u8> = Vec::new();
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    engine.destroy(&j.env).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(
        matches!(&err, EngineError::ImagePull { message, .. } if message.contains("127.0.0.1:5999")),
        "{err}"
    );
    assert!(
        log.contains("Authenticating with credentials from $DOCKER_AUTH_CONFIG"),
        "{log}"
    );
    assert!(!log.contains("top-secret-pw") && !err.to_string().contains("top-secret-pw"));
    // Payload credentials when nothing else matches.
    j.env.variables.pop();
    j.env.registry_auth.push(ferry_executor::RegistryAuth {
        registry: "127.0.0.1:5999".into(),
        username: "gitlab-ci-token".into(),
        password: "job-token-secret".into(),
    });
    let mut log: Vec<u8> = Vec::new();
    engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    engine.destroy(&j.env).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("Authenticating with credentials from job payload (GitLab Registry)"),
        "{log}"
    );
    assert!(!log.contains("job-token-secret"));
}

#[tokio::test]
async fn network_mode_bridge_links_services_by_alias() {
    let mut sec = section();
    sec.network_mode = Some("bridge".into());
    let Some(engine) = engine_with("bridge", sec).await else {
        return;
    };
    let mut j = job("bridge", BUSYBOX);
    j.env.services.push(ServiceSpec {
        image: image(SERVICE),
        aliases: vec!["web".into()],
        command: vec![],
        variables: vec![],
    });
    let label = format!("ferry.job_id={}", j.env.job_id);
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine.prepare(&j.env, &mut log, &cancel).await.unwrap();
    // No per-job network with network_mode set.
    assert_eq!(labelled(&engine, &label).await, (2, 0));
    let out = engine
        .run_step(
            &j.env,
            &step(&["wget -q -O - http://web:8080/"]),
            &mut log,
            &cancel,
        )
        .await
        .unwrap();
    engine.destroy(&j.env).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert_eq!(out.exit_code, 0, "{log}");
    assert!(log.contains("ferry-service-ok\n"), "{log}");
    assert_eq!(labelled(&engine, &label).await, (0, 0));
}

#[tokio::test]
async fn ff_network_per_build_gives_a_job_without_services_its_own_network() {
    let Some(engine) = engine_with("ffnet", section()).await else {
        return;
    };
    let mut j = job("ffnet", BUSYBOX);
    // [runners.feature_flags] reach the job as variables (docs/configuration.md)
    j.env.variables.push(EnvVar {
        name: "FF_NETWORK_PER_BUILD".into(),
        value: "true".into(),
    });
    let label = format!("ferry.job_id={}", j.env.job_id);
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine.prepare(&j.env, &mut log, &cancel).await.unwrap();
    // no services, yet a network of its own, and the build container is on it (not on the
    // default bridge that other jobs share)
    assert_eq!(labelled(&engine, &label).await, (1, 1));
    let info = engine
        .client()
        .inspect_container(
            &convert::build_container_name(&j.env),
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let networks: Vec<String> = info
        .network_settings
        .and_then(|n| n.networks)
        .map(|n| n.into_keys().collect())
        .unwrap_or_default();
    assert_eq!(networks, [convert::network_name(&j.env)]);
    engine.destroy(&j.env).await.unwrap();
    assert_eq!(labelled(&engine, &label).await, (0, 0));
}

#[tokio::test]
async fn cache_dir_backs_path_volumes_with_host_directories() {
    let cache = tempfile::tempdir().unwrap();
    let mut sec = section();
    sec.volumes = vec!["/cache".into()];
    sec.cache_dir = Some(cache.path().to_path_buf());
    let Some(engine) = engine_with("cachedir", sec).await else {
        return;
    };
    let j = job("cachedir", BUSYBOX);
    let (r, log) = run_one(&engine, &j.env, &step(&["echo kept > /cache/f.txt"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    let dir = ferry_executor::docker::convert::cache_host_dir(cache.path(), &j.env, "/cache");
    assert_eq!(
        std::fs::read_to_string(dir.join("f.txt")).unwrap(),
        "kept\n"
    );
}

/// Shows `SKIP: <reason>` in the test run's output even though the test passes: libtest captures
/// `println!` of passing tests, a direct write to stderr is not captured.
fn skip_notice(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// HostConfig of a job's container, by name (it may have failed to start).
async fn host_config(engine: &DockerEngine, name: &str) -> bollard::models::HostConfig {
    engine
        .client()
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("inspecting {name}: {e}"))
        .host_config
        .expect("host config")
}

fn service(img: &str, alias: &str) -> ServiceSpec {
    ServiceSpec {
        image: image(img),
        aliases: vec![alias.into()],
        command: vec![],
        variables: vec![],
    }
}

/// Finding 6: a privileged runner whose lists allow only `docker:*` created a busybox build
/// container and an httpd service privileged. Now neither is.
#[tokio::test]
async fn privileged_lists_keep_other_images_unprivileged() {
    let mut sec = section();
    sec.privileged = true;
    sec.allowed_privileged_images = vec!["docker:*".into()];
    sec.allowed_privileged_services = vec!["docker:*".into()];
    let Some(engine) = engine_with("privlist", sec).await else {
        return;
    };
    let mut j = job("privlist", BUSYBOX);
    j.env.services.push(service(SERVICE, "web"));
    let mut log: Vec<u8> = Vec::new();
    let r = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await;
    let build = host_config(&engine, &convert::build_container_name(&j.env)).await;
    let svc = host_config(
        &engine,
        &convert::service_container_name(&j.env, SERVICE, 0),
    )
    .await;
    let out = if r.is_ok() {
        Some(
            engine
                .run_step(
                    &j.env,
                    &step(&["grep CapEff /proc/self/status"]),
                    &mut log,
                    &CancellationToken::new(),
                )
                .await,
        )
    } else {
        None
    };
    engine.destroy(&j.env).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(r.is_ok(), "prepare: {r:?}\n{log}");
    assert_eq!(build.privileged, Some(false), "build container privileged");
    assert_eq!(svc.privileged, Some(false), "service container privileged");
    assert_eq!(out.unwrap().unwrap().exit_code, 0, "{log}");
    // Not the full capability set a privileged container gets.
    assert!(!log.contains("CapEff:\t000001ffffffffff"), "{log}");
    assert!(!log.contains("CapEff:\t0000003fffffffff"), "{log}");
}

/// The images and services the lists allow are still created privileged (checked on the created
/// container: an engine that refuses privileged containers fails to start them, which is fine).
#[tokio::test]
async fn privileged_lists_let_matching_images_run_privileged() {
    let mut sec = section();
    sec.privileged = true;
    sec.allowed_privileged_images = vec!["ferry-test/busybox:*".into()];
    sec.allowed_privileged_services = vec!["ferry-test/nothing-else".into()];
    let Some(engine) = engine_with("privok", sec.clone()).await else {
        return;
    };
    let j = job("privok", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    let r = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await;
    let build = host_config(&engine, &convert::build_container_name(&j.env)).await;
    engine.destroy(&j.env).await.unwrap();
    if let Err(e) = &r {
        skip_notice(&format!(
            "SKIP (start only): privileged_lists_let_matching_images_run_privileged: the engine refuses privileged containers: {e}"
        ));
    }
    assert_eq!(build.privileged, Some(true), "allowed build image");

    // A service: services_privileged on, the runner's privileged off; the list allows it.
    sec.privileged = false;
    sec.services_privileged = Some(true);
    sec.allowed_privileged_services = vec!["ferry-test/service:*".into()];
    let Some(engine) = engine_with("privok", sec).await else {
        return;
    };
    let mut j = job("privok", BUSYBOX);
    j.env.services.push(service(SERVICE, "web"));
    let r = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await;
    let svc = host_config(
        &engine,
        &convert::service_container_name(&j.env, SERVICE, 0),
    )
    .await;
    let build = match &r {
        Ok(()) => Some(host_config(&engine, &convert::build_container_name(&j.env)).await),
        Err(e) => {
            skip_notice(&format!(
                "SKIP (start only): privileged_lists_let_matching_images_run_privileged: the engine refuses privileged containers: {e}"
            ));
            None
        }
    };
    engine.destroy(&j.env).await.unwrap();
    assert_eq!(svc.privileged, Some(true), "allowed service");
    if let Some(b) = build {
        assert_eq!(b.privileged, Some(false), "privileged = false for the job");
    }
}

/// allowed_users: a job's `image:docker:user` outside the list is refused before anything is
/// created, with gitlab-runner's message; a listed user runs.
#[tokio::test]
async fn allowed_users_are_enforced() {
    let mut sec = section();
    sec.allowed_users = vec!["nobody".into(), "1000".into()];
    let Some(engine) = engine_with("users", sec).await else {
        return;
    };
    let mut j = job("users", BUSYBOX);
    j.env.image.user = Some("root".into());
    let mut log: Vec<u8> = Vec::new();
    let err = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_err();
    // This runner's objects of this job only (job ids repeat across test binaries).
    let (containers, _) = labelled_all(
        &engine,
        &[
            &format!("ferry.job_id={}", j.env.job_id),
            &format!("ferry.runner={}", runner_token("users")),
        ],
    )
    .await;
    engine.destroy(&j.env).await.unwrap();
    assert!(matches!(err, EngineError::Configuration(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "user \"root\" is not an allowed user: [nobody 1000]"
    );
    assert_eq!(containers, 0, "nothing created for a refused user");

    let mut j = job("users", BUSYBOX);
    j.env.image.user = Some("nobody".into());
    let (r, log) = run_one(&engine, &j.env, &step(&["id -u"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert!(log.contains("65534\n"), "{log}");
}

/// The runner's `user` wins over the job's and, without `allowed_users`, is the only user
/// allowed: a job asking for root runs as the runner's user.
#[tokio::test]
async fn runner_user_takes_precedence_over_the_job_user() {
    let mut sec = section();
    sec.user = Some("nobody".into());
    let Some(engine) = engine_with("runuser", sec).await else {
        return;
    };
    let mut j = job("runuser", BUSYBOX);
    j.env.image.user = Some("root".into());
    let (r, log) = run_one(&engine, &j.env, &step(&["id -u"])).await;
    assert_eq!(r.unwrap().exit_code, 0, "{log}");
    assert!(log.contains("65534\n"), "runs as nobody: {log}");
}

/// Finding 15 (pids): `pids_limit` reaches build and service containers, and a job cannot
/// start more processes than that.
#[tokio::test]
async fn pids_limit_caps_build_and_service_containers() {
    let mut sec = section();
    sec.pids_limit = Some(32);
    let Some(engine) = engine_with("pids", sec).await else {
        return;
    };
    let mut j = job("pids", BUSYBOX);
    j.env.services.push(service(SERVICE, "web"));
    let mut log: Vec<u8> = Vec::new();
    engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&log)));
    let build = host_config(&engine, &convert::build_container_name(&j.env)).await;
    let svc = host_config(
        &engine,
        &convert::service_container_name(&j.env, SERVICE, 0),
    )
    .await;
    let out = engine
        .run_step(
            &j.env,
            &step(&[
                // A fork that fails ends the subshell; the count so far is in the file (written
                // and read with builtins, which need no fork).
                "( n=0; for i in $(seq 100); do sleep 30 & n=$((n+1)); echo $n > /tmp/started; done ) 2>/dev/null || true",
                "read n < /tmp/started; echo started=$n",
            ]),
            &mut log,
            &CancellationToken::new(),
        )
        .await;
    engine.destroy(&j.env).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert_eq!(build.pids_limit, Some(32));
    assert_eq!(svc.pids_limit, Some(32));
    out.unwrap();
    let started: u32 = log
        .lines()
        .find_map(|l| l.strip_prefix("started="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {log}"));
    assert!(
        started < 32,
        "{started} processes started under a limit of 32: {log}"
    );
}

/// Without the key, nothing is set (gitlab-runner has no such key; Docker's default applies).
#[tokio::test]
async fn no_pids_limit_by_default() {
    let Some(engine) = engine_with("nopids", section()).await else {
        return;
    };
    let j = job("nopids", BUSYBOX);
    let mut log: Vec<u8> = Vec::new();
    let r = engine
        .prepare(&j.env, &mut log, &CancellationToken::new())
        .await;
    let build = host_config(&engine, &convert::build_container_name(&j.env)).await;
    engine.destroy(&j.env).await.unwrap();
    r.unwrap();
    assert!(
        matches!(build.pids_limit, None | Some(0) | Some(-1)),
        "{:?}",
        build.pids_limit
    );
}

// ---- Kept step output (docs/crash-safety.md) ----

/// `n` numbered lines, one every 100 ms, then `exit <code>`.
fn numbered(n: u32, code: i32) -> StepSpec {
    step(&[
        &format!("i=1; while [ $i -le {n} ]; do echo line $i; i=$((i+1)); sleep 0.1; done"),
        &format!("exit {code}"),
    ])
}

/// Every `line <i>` for i in 1..=n appears exactly once, in order.
fn assert_lines_once(log: &str, n: u32) {
    let got: Vec<&str> = log.lines().filter(|l| l.starts_with("line ")).collect();
    let want: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want, "{log}");
}

#[tokio::test]
async fn a_step_keeps_its_output_and_exit_code_in_the_steps_dir() {
    let Some(engine) = engine_with("kept", section()).await else {
        return;
    };
    let j = job("kept", BUSYBOX);
    assert!(engine.keeps_step_output(&j.env));
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    engine.prepare(&j.env, &mut log, &cancel).await.unwrap();
    let mut out = Vec::new();
    let r = engine
        .run_step(
            &j.env,
            &step(&["echo hello", "echo oops >&2", "exit 3"]),
            &mut out,
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 3);
    let steps = j.env.host_steps_dir.clone().unwrap();
    let kept = std::fs::read(steps.join("script.log")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&kept),
        String::from_utf8_lossy(&out)
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("\nhello\n") && out.contains("\noops\n"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(steps.join("script.exit"))
            .unwrap()
            .trim(),
        "3"
    );
    engine.destroy(&j.env).await.unwrap();
    // The job is over: its kept output is removed with its containers.
    assert!(!steps.exists(), "{}", steps.display());
}

/// A job log that takes no more output once it holds `limit` bytes (as the runner's at its
/// `output_limit`): it sets `full` then, and counts every byte it is still given.
struct FillingLog {
    got: u64,
    limit: u64,
    full: LogFull,
}

impl tokio::io::AsyncWrite for FillingLog {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.got += data.len() as u64;
        if self.got >= self.limit {
            self.full.set();
        }
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Issue 13: past the job log's output limit, ferry read the whole output file all the same
/// (up to 64 MiB at the end). It now stops reading at the limit, and still waits for the
/// step's end and exit code.
#[tokio::test]
async fn past_the_output_limit_a_kept_steps_output_file_is_read_no_more() {
    let Some(engine) = engine_with("logfull", section()).await else {
        return;
    };
    let j = job("logfull", BUSYBOX);
    assert!(engine.keeps_step_output(&j.env));
    let cancel = CancellationToken::new();
    engine
        .prepare(&j.env, &mut Vec::new(), &cancel)
        .await
        .unwrap();
    let s = step(&["head -c 20000000 /dev/zero", "sleep 1", "exit 3"]);
    let mut log = FillingLog {
        got: 0,
        limit: 1 << 20,
        full: s.log_full.clone(),
    };
    let r = engine
        .run_step(&j.env, &s, &mut log, &cancel)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 3);
    let steps = j.env.host_steps_dir.clone().unwrap();
    let written = std::fs::metadata(steps.join("script.log")).unwrap().len();
    assert!(written >= 20_000_000, "{written}");
    // At most one read (64 KiB) after the one that filled the log.
    assert!(log.got < (1 << 20) + (64 << 10), "read {} bytes", log.got);
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn a_step_left_running_is_followed_again_with_every_line_once() {
    let Some(engine) = engine_with("resume", section()).await else {
        return;
    };
    let j = job("resume", BUSYBOX);
    let cancel = CancellationToken::new();
    engine
        .prepare(&j.env, &mut Vec::new(), &cancel)
        .await
        .unwrap();
    let s = numbered(40, 4);
    let started = std::time::SystemTime::now();
    let mut first: Vec<u8> = Vec::new();
    // ferry goes away while the step prints (the future is dropped, as in a crash).
    let dropped = tokio::time::timeout(
        Duration::from_millis(1500),
        engine.run_step(&j.env, &s, &mut first, &cancel),
    )
    .await;
    assert!(dropped.is_err(), "the step ended too early");
    assert!(String::from_utf8_lossy(&first).contains("line 1\n"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut rest: Vec<u8> = Vec::new();
    let out = engine
        .resume_step(&j.env, &s, first.len() as u64, started, &mut rest, &cancel)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 4);
    first.extend_from_slice(&rest);
    assert_lines_once(&String::from_utf8_lossy(&first), 40);
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn a_step_that_ended_while_ferry_was_away_gives_its_output_and_code() {
    let Some(engine) = engine_with("resume-ended", section()).await else {
        return;
    };
    let j = job("resume-ended", BUSYBOX);
    let cancel = CancellationToken::new();
    engine
        .prepare(&j.env, &mut Vec::new(), &cancel)
        .await
        .unwrap();
    let s = numbered(10, 0);
    let started = std::time::SystemTime::now();
    let mut first: Vec<u8> = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(400),
        engine.run_step(&j.env, &s, &mut first, &cancel),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rest: Vec<u8> = Vec::new();
    let at = Instant::now();
    let out = engine
        .resume_step(&j.env, &s, first.len() as u64, started, &mut rest, &cancel)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(at.elapsed() < Duration::from_secs(2), "{:?}", at.elapsed());
    first.extend_from_slice(&rest);
    assert_lines_once(&String::from_utf8_lossy(&first), 10);
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn a_resumed_step_whose_container_is_gone_says_so() {
    let Some(engine) = engine_with("resume-gone", section()).await else {
        return;
    };
    let j = job("resume-gone", BUSYBOX);
    let cancel = CancellationToken::new();
    engine
        .prepare(&j.env, &mut Vec::new(), &cancel)
        .await
        .unwrap();
    let s = numbered(100, 0);
    let started = std::time::SystemTime::now();
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        engine.run_step(&j.env, &s, &mut Vec::new(), &cancel),
    )
    .await;
    engine
        .client()
        .remove_container(
            &convert::build_container_name(&j.env),
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let r = engine
        .resume_step(&j.env, &s, 0, started, &mut Vec::new(), &cancel)
        .await;
    assert!(matches!(r, Err(EngineError::ContainerGone(_))), "{r:?}");
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn a_resumed_step_never_follows_a_link_the_job_put_for_its_log() {
    let Some(engine) = engine_with("resume-link", section()).await else {
        return;
    };
    let j = job("resume-link", BUSYBOX);
    let cancel = CancellationToken::new();
    engine
        .prepare(&j.env, &mut Vec::new(), &cancel)
        .await
        .unwrap();
    // A host file the job must not get into its log through ferry.
    let secret = j.env.host_project_dir.parent().unwrap().join("host-secret");
    std::fs::write(&secret, "HOST-SECRET\n").unwrap();
    let d = convert::steps_dir(&j.env);
    let s = step(&[
        "echo before; sleep 1",
        &format!(
            "rm -f {d}/script.log; ln -s {} {d}/script.log",
            secret.display()
        ),
        "sleep 1; echo after",
    ]);
    let started = std::time::SystemTime::now();
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        engine.run_step(&j.env, &s, &mut Vec::new(), &cancel),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rest: Vec<u8> = Vec::new();
    let out = engine
        .resume_step(&j.env, &s, 0, started, &mut rest, &cancel)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("HOST-SECRET"), "{rest}");
    assert!(
        rest.contains("WARNING: reading the output of step script"),
        "{rest}"
    );
    engine.destroy(&j.env).await.unwrap();
}

#[tokio::test]
async fn a_step_writing_faster_than_ferry_reads_is_stopped_by_its_timeout() {
    let Some(engine) = engine_with("kept-yes", section()).await else {
        return;
    };
    let j = job("kept-yes", BUSYBOX);
    let mut s = step(&["yes"]);
    s.timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let (r, log) = run_one(&engine, &j.env, &s).await;
    let r = r.unwrap();
    let took = started.elapsed();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, 124);
    assert!(
        log.contains("timed out after"),
        "{}",
        &log[log.len() - 300..]
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[tokio::test]
async fn a_step_that_makes_its_log_huge_is_stopped_promptly() {
    let Some(engine) = engine_with("kept-huge", section()).await else {
        return;
    };
    let j = job("kept-huge", BUSYBOX);
    let s = step(&[
        "echo before",
        // `cat` appends it to the log file before the file is made huge.
        "sleep 1",
        "truncate -s 1099511627776 /builds/group/project.steps/script.log",
        "sleep 60",
    ]);
    let started = Instant::now();
    let (r, log) = run_one(&engine, &j.env, &s).await;
    let r = r.unwrap();
    let took = started.elapsed();
    assert_eq!(r.exit_code, 1, "{log}");
    assert!(!r.timed_out);
    assert!(log.contains("before\n"), "{log}");
    assert!(
        log.contains("wrote more than 1024 MiB of output to its log file: stopping it"),
        "{log}"
    );
    // The zeros were never copied.
    assert!(log.len() < 1024 * 1024, "{}", log.len());
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// The job kills the processes that wait for its shell (`kill -9 $PPID`, `killall -9 sh`)
/// while a background process keeps the output open: the step ends as the shell's exit did
/// before steps kept their output (about a second later), not at its timeout.
#[tokio::test]
async fn a_step_whose_shell_parent_is_killed_ends_promptly() {
    let Some(engine) = engine_with("kept-ppid", section()).await else {
        return;
    };
    for kill in ["kill -9 $PPID", "killall -9 sh"] {
        let j = job("kept-ppid", BUSYBOX);
        let mut s = step(&["sleep 120 &", "echo killing", kill, "sleep 120"]);
        s.timeout = Some(Duration::from_secs(60));
        let started = Instant::now();
        let (r, log) = run_one(&engine, &j.env, &s).await;
        let r = r.unwrap();
        let took = started.elapsed();
        assert!(!r.timed_out, "{kill}: {log}");
        assert_ne!(r.exit_code, 0, "{kill}: {log}");
        assert!(log.contains("killing\n"), "{kill}: {log}");
        assert!(took < Duration::from_secs(20), "{kill}: {took:?}");
    }
}
