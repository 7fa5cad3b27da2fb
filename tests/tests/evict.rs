//! A host that never fills its disk (docs/docker-executor.md, "Disk use"): many jobs of several
//! projects, each with sources, a cache, artifacts, a service and a `"/cache"` volume, through
//! the real `ferry run` with its eviction limits set low; afterwards every kind of data ferry
//! keeps is under its limit and nothing of the jobs is left in Docker.
//!
//! `FERRY_EVICT_JOBS` sets the number of jobs (default 24, about a minute here);
//! `bench/evict.sh` runs it with the 200 of the issue.

use std::path::Path;
use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, GitHttp, GitRepo, Harness, SERVICE, Setup, cmd, poll_until};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const PROJECTS: u64 = 4;
const BUILDS_MAX: u64 = 700 << 10;
const CACHE_MAX: u64 = 300 << 10;

/// Bytes of the regular files under `path` (links not followed), each file once: a cache's
/// prepared copy holds a hard link to its archive, which takes no more disk.
fn dir_bytes(path: &Path) -> u64 {
    files_bytes(path, &mut std::collections::HashSet::new())
}

fn files_bytes(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        total += match e.file_type() {
            Ok(t) if t.is_dir() => files_bytes(&e.path(), seen),
            Ok(t) if t.is_file() => match e.metadata() {
                Ok(m) if seen.insert((m.dev(), m.ino())) => m.len(),
                _ => 0,
            },
            _ => 0,
        };
    }
    total
}

fn cache_volumes(short: &str) -> Vec<String> {
    cmd(
        "docker",
        &[
            "volume",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &format!("label=ferry.runner={short}"),
            "--filter",
            "label=ferry.cache=true",
        ],
    )
    .lines()
    .map(str::to_string)
    .filter(|l| !l.is_empty())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_leave_every_kind_of_data_under_its_limit_and_nothing_in_docker() {
    let jobs: u64 = std::env::var("FERRY_EVICT_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    // One repository per project, each with 100 kB that does not compress.
    let repos: Vec<GitRepo> = (0..PROJECTS)
        .map(|p| {
            let r = GitRepo::new();
            let blob: String = (0..100_000u64)
                .map(|i| char::from(b'a' + ((i * 7919 + p * 31 + i / 13) % 26) as u8))
                .collect();
            r.commit("data.txt", &blob);
            r
        })
        .collect();
    let Some(mut h) = Harness::prepare(
        Setup::default()
            .concurrent(2)
            .docker("volumes = [\"/cache\"]"),
    )
    .await
    else {
        return;
    };
    h.ferry_args = [
        "--builds-max-size",
        &BUILDS_MAX.to_string(),
        "--builds-max-age",
        "1h",
        "--cache-max-size",
        &CACHE_MAX.to_string(),
        "--volume-max-age",
        "2s",
        // Images ferry did not pull (the test images are built here) are never removed.
        "--image-max-size",
        "1",
        "--evict-interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    h.spawn_ferry();
    let root = repos[0].path().parent().unwrap();
    let git = GitHttp::serve(root).await;

    let mut ids = Vec::new();
    for n in 0..jobs {
        let p = n % PROJECTS;
        let repo = &repos[p as usize];
        let name = repo.path().file_name().unwrap().to_str().unwrap();
        let mut patch = GitRepo::git_info(&git.repo_url(name), &repo.head(), 20);
        patch["job_info"] = json!({"project_id": 100 + p, "project_name": format!("p{p}"),
                                   "project_full_path": format!("group/p{p}")});
        let mut job = JobSpec::new(&format!("job-{n}"))
            .image(Some(BUSYBOX))
            .variable("GIT_STRATEGY", "fetch", false)
            .service(json!({"name": SERVICE, "alias": "web"}))
            .patch(patch)
            .artifact_paths(["out.txt"])
            .script([
                "wget -q -O- http://web:8080/ > /dev/null",
                "mkdir -p vendor",
                "head -c 100000 /dev/urandom > vendor/blob",
                "echo $CI_JOB_ID >> /cache/jobs",
                "wc -l < /cache/jobs > out.txt",
            ]);
        job.cache
            .push(json!({"key": format!("deps-{p}"), "untracked": false,
            "policy": "pull-push", "paths": ["vendor/"], "when": "on_success",
            "fallback_keys": []}));
        ids.push(h.push(job));
    }
    for id in &ids {
        let job = h.wait_final(*id, Duration::from_secs(600)).await;
        h.expect(&job, JobStatus::Success, None);
    }

    // The next pass after the last job brings everything under its limit.
    let builds = h.work_dir.join("builds");
    let cache = h.work_dir.join("cache");
    let git_cache = h.work_dir.join("git-cache");
    let short = h.short.clone();
    let settled = poll_until(Duration::from_secs(60), || {
        dir_bytes(&builds) <= BUILDS_MAX
            && dir_bytes(&cache) <= CACHE_MAX
            && dir_bytes(&git_cache) <= CACHE_MAX
            && cache_volumes(&short).is_empty()
    })
    .await;
    let log = h.ferry_log();
    // For bench/evict.sh (shown with --nocapture).
    for kind in ["builds dir /", "cache volume runner-", "cache /"] {
        let n = log
            .lines()
            .filter(|l| l.contains(&format!("removed {kind}")))
            .count();
        println!("{jobs} jobs: {n} lines \"removed {kind}...\"");
    }
    println!(
        "after: builds {} B (max {BUILDS_MAX}), cache {} B, git-cache {} B (max {CACHE_MAX} each)",
        dir_bytes(&builds),
        dir_bytes(&cache),
        dir_bytes(&git_cache)
    );
    assert!(
        settled,
        "builds {} (max {BUILDS_MAX}), cache {}, git-cache {} (max {CACHE_MAX}), volumes {:?}\n{log}",
        dir_bytes(&builds),
        dir_bytes(&cache),
        dir_bytes(&git_cache),
        cache_volumes(&short)
    );
    // Each kind was over its limit at some point and the log says what went.
    for line in [
        "removed builds dir ",
        "removed cache volume runner-",
        "removed cache /",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{log}");
    }
    assert!(
        !log.contains("removed image"),
        "an image ferry did not pull was removed:\n{log}"
    );
    for image in [BUSYBOX, SERVICE] {
        cmd(
            "docker",
            &["image", "inspect", "--format", "{{.Id}}", image],
        );
    }
    // The usage record is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(h.work_dir.join("docker-usage.json"))
            .expect("docker-usage.json")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // No container, network or per-job volume of the jobs is left.
    assert!(
        poll_until(Duration::from_secs(30), || h
            .docker_objects(None)
            .is_empty())
        .await,
        "{:?}",
        h.docker_objects(None)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_dir_volume_directories_unused_too_long_are_removed() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    let cache_dir = h.root.path().join("volumes");
    h.write_config(&Setup::default().docker(&format!(
        "volumes = [\"/cache\"]\ncache_dir = \"{}\"",
        cache_dir.display()
    )));
    h.ferry_args = ["--volume-max-age", "2s", "--evict-interval", "1s"]
        .map(String::from)
        .to_vec();
    h.spawn_ferry();
    let id = h.push(
        h.job("writes-volume")
            .script(["head -c 50000 /dev/urandom > /cache/blob", "sleep 20"]),
    );
    // In use (mounted into the running job) it stays, even past the age limit.
    h.wait_trace(id, "sleep 20", Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(h.gitlab.job(id).is_some_and(|j| j.status.is_active()));
    let volume_dirs = |root: &Path| -> usize {
        std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_dir(e.path()).ok())
                    .map(|d| d.count())
                    .sum()
            })
            .unwrap_or(0)
    };
    assert_eq!(volume_dirs(&cache_dir), 1, "{}", h.describe(id));
    let job = h.wait_final(id, Duration::from_secs(120)).await;
    h.expect(&job, JobStatus::Success, None);
    // Unused for 2 s: gone at the next pass, and the log says so (written after the removal).
    let said = format!("removed cache volume dir {}", cache_dir.display());
    assert!(
        poll_until(Duration::from_secs(30), || volume_dirs(&cache_dir) == 0
            && h.ferry_log().contains(&said))
        .await,
        "{}",
        h.ferry_log()
    );
    h.stop().await;
}

/// A throwaway image of its own id (a label on the test busybox), built without a registry.
fn build_image(tag: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {BUSYBOX}\nLABEL ferry.test.evict=\"{tag}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cmd("docker", &["image", "inspect", "--format", "{{.Id}}", tag])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_ferry_pulled_go_after_the_age_limit_unless_a_container_uses_them() {
    let Some(mut h) = Harness::prepare(Setup::default()).await else {
        return;
    };
    // No registry here: two images stand for ones ferry pulled, as its usage record says.
    let victim = format!("ferry-test/evict-victim:{}", h.short.to_lowercase());
    let kept = format!("ferry-test/evict-kept:{}", h.short.to_lowercase());
    let victim_id = build_image(&victim);
    let kept_id = build_image(&kept);
    let container = cmd("docker", &["create", &kept, "true"]);
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let day_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 86_400;
    let record = json!({"volumes": {}, "images": {
        victim_id.clone(): {"host": host, "name": victim, "last_used": day_ago},
        kept_id.clone(): {"host": host, "name": kept, "last_used": day_ago},
    }});
    std::fs::create_dir_all(&h.work_dir).unwrap();
    std::fs::write(
        h.work_dir.join("docker-usage.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    h.ferry_args = ["--image-max-age", "1h", "--evict-interval", "1s"]
        .map(String::from)
        .to_vec();
    h.spawn_ferry();
    let gone = poll_until(Duration::from_secs(30), || {
        h.ferry_log()
            .contains(&format!("removed image {victim} ({victim_id})"))
    })
    .await;
    let log = h.ferry_log();
    let victim_left = std::process::Command::new("docker")
        .args(["image", "inspect", &victim_id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(true);
    let kept_left = std::process::Command::new("docker")
        .args(["image", "inspect", &kept_id])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &victim, &kept])
        .output();
    assert!(gone && !victim_left, "{log}");
    assert!(kept_left, "an image a container uses was removed:\n{log}");
    // Ferry's own test images were never recorded as pulled: untouched.
    cmd(
        "docker",
        &["image", "inspect", "--format", "{{.Id}}", BUSYBOX],
    );
    h.stop().await;
}
