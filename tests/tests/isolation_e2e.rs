//! A job is an attacker (docs/security.md): end to end through `ferry run`, the fake GitLab and
//! the real Docker engine, each test is written as a job with push access to a repository would
//! write it, against a victim file outside the builds directory that must stay unread and
//! untouched. Every attacking job must end with a final status, and the next job must run.
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker every test prints
//! `SKIP: <reason>` and returns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::{JobSpec, JobStatus};
use serde_json::json;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// A secret file outside every directory ferry gives a job, mode 0600.
struct Victim {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
    secret: String,
}

impl Victim {
    fn new() -> Victim {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let secret = format!(
            "victim-secret-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let file = dir.join("secret.txt");
        std::fs::write(&file, &secret).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Victim {
            _dir: d,
            dir,
            file,
            secret,
        }
    }

    /// The victim's path as a path relative to `/` (what a job writes after `ln -s / x`).
    fn rel_from_root(&self) -> String {
        self.file
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            self.secret,
            "the victim file was changed"
        );
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["secret.txt"], "files appeared next to the victim");
    }
}

fn cache(key: &str, paths: &[&str]) -> serde_json::Value {
    json!({"key": key, "untracked": false, "policy": "pull-push", "paths": paths,
           "when": "always", "fallback_keys": []})
}

fn artifacts(paths: &[&str]) -> serde_json::Value {
    json!({"name": "out", "untracked": false, "paths": paths, "exclude": [],
           "when": "always", "artifact_type": "archive", "artifact_format": "zip"})
}

/// Every byte ferry stored for the runner (cache archives, decompressed) and every artifact
/// GitLab received for `jobs` (unzipped), as one string to search for a secret.
fn everything_stored(h: &Harness, jobs: &[u64]) -> String {
    let mut out = String::new();
    for id in jobs {
        for a in h.gitlab.artifacts(*id) {
            out.push_str(&String::from_utf8_lossy(&a.data));
            if let Ok(mut zip) = zip::ZipArchive::new(std::io::Cursor::new(a.data.clone())) {
                for i in 0..zip.len() {
                    let mut f = zip.by_index(i).unwrap();
                    let mut s = Vec::new();
                    let _ = f.read_to_end(&mut s);
                    out.push_str(&String::from_utf8_lossy(&s));
                }
            }
        }
    }
    for archive in files_under(&h.work_dir.join("cache")) {
        if archive.to_string_lossy().ends_with(".tar.zst") {
            let data = std::fs::read(&archive).unwrap();
            let plain = zstd::decode_all(&data[..]).unwrap_or_default();
            out.push_str(&String::from_utf8_lossy(&plain));
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The host folder of the fake GitLab's project 42 on slot 0.
fn project_folder(h: &Harness) -> PathBuf {
    h.project_dir(0).parent().unwrap().to_path_buf()
}

// ---- 1. no shell on the host -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clean_flags_never_reach_a_shell_on_the_host() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let victim = Victim::new();
    let pwned = victim.dir.join("pwned");
    let repo = ferry_tests::e2e::GitRepo::new();
    let sha = repo.commit("README", "hello\n");
    let id = h.push(
        JobSpec::new("inject")
            .image(Some(ferry_tests::e2e::BUSYBOX))
            .variable("GIT_STRATEGY", "clone", false)
            .variable("GIT_SUBMODULE_STRATEGY", "normal", false)
            .variable(
                "GIT_CLEAN_FLAGS",
                &format!("-ffdx -e x;id>{};#", pwned.display()),
                false,
            )
            .patch(ferry_tests::e2e::GitRepo::git_info(&repo.url(), &sha, 0))
            .script(["echo script-ran"]),
    );
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert!(
        trace.contains("GIT_CLEAN_FLAGS") && trace.contains("not a valid value for -e"),
        "{trace}"
    );
    assert!(!trace.contains("\nscript-ran"), "{trace}");
    assert!(!pwned.exists(), "a command ran on the host");
    victim.assert_untouched();
    h.assert_takes_next_job().await;
    h.stop().await;
}

// ---- 2. host files read through a replaced project dir ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_make_ferry_read_host_files() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let victim = Victim::new();
    let rel = victim.rel_from_root();
    let mut attack = h.job("read-host").script([
        // Replace the project dir by a link to the host's root (refused: it is a mount).
        "cd /builds/acme && (mv app app.x && ln -s / app && echo replaced) || echo mv-refused"
            .to_string(),
        "cd \"$CI_PROJECT_DIR\"".to_string(),
        // Links inside the project dir, to the host's root and to the victim itself.
        "ln -s / root && ln -s /etc etc".to_string(),
        format!("ln -s /{rel} victim-link"),
        "mkdir -p out && echo kept > out/ok.txt".to_string(),
    ]);
    let paths = [
        format!("root/{rel}"),
        "victim-link".to_string(),
        "etc/hostname".to_string(),
        "out/".to_string(),
        format!("../../../../../../../../{rel}"),
    ];
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    attack.artifacts.push(artifacts(&paths));
    attack.cache.push(cache("loot", &paths));
    let id = h.push(attack);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nmv-refused"), "{trace}");

    // The next job of the project restores the cache and lists what it got.
    let mut next = h
        .job("next")
        .script(["find . -type f -exec cat {} + 2>/dev/null; echo listed"]);
    next.cache.push(cache("loot", &paths));
    let next_id = h.push(next);
    let job = h.wait_final(next_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nkept"), "{trace}");
    assert!(!trace.contains(&victim.secret), "{trace}");

    let stored = everything_stored(&h, &[id, next_id]);
    assert!(
        stored.contains("kept"),
        "the artifacts and cache were saved"
    );
    assert!(
        !stored.contains(&victim.secret),
        "the victim's secret was stored"
    );
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    if hostname.trim().len() >= 6 {
        assert!(
            !stored.contains(hostname.trim()),
            "/etc/hostname was stored"
        );
    }
    victim.assert_untouched();
    h.stop().await;
}

// ---- 3 and 8. host files written, a project broken for good ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_left_by_a_job_never_lead_the_next_job_out_and_the_project_heals() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let victim = Victim::new();
    let dir = victim.dir.display().to_string();
    let repo = ferry_tests::e2e::GitRepo::new();
    let sha = repo.commit("README", "hello\n");
    let git = ferry_tests::e2e::GitRepo::git_info(&repo.url(), &sha, 0);
    // Job 1 plants links where the next job's checkout, cache restore, dependencies and file
    // variables go, and tries to replace the namespace dir.
    let mut plant = JobSpec::new("plant")
        .image(Some(ferry_tests::e2e::BUSYBOX))
        .variable("GIT_STRATEGY", "fetch", false)
        .patch(git.clone())
        .script([
            format!("rm -rf vendor && ln -s {dir} vendor"),
            format!("rm -rf .git/objects && ln -s {dir} .git/objects"),
            format!("ln -s {dir} .git/hooks; ln -s {dir}/secret.txt .git/config.lock"),
            format!("ln -s {dir} \"$CI_PROJECT_DIR.tmp/planted\" 2>&1 || echo tmp-read-only"),
            // The namespace dir is the container's own: replacing it changes nothing on the host.
            format!("cd /builds && mv acme x && ln -s {dir} acme && echo replaced"),
        ]);
    plant.artifacts.push(artifacts(&["README"]));
    let plant_id = h.push(plant);
    let job = h.wait_final(plant_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\ntmp-read-only"), "{trace}");
    assert!(trace.contains("\nreplaced"), "{trace}");

    // The host side of a broken project dir, as an older ferry or a crash could leave it:
    // the project folder's `tmp` replaced by a link and a FIFO where a file variable goes.
    let folder = project_folder(&h);
    let tmp = folder.join("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::os::unix::fs::symlink(&victim.dir, &tmp).unwrap();

    let mut next = JobSpec::new("next")
        .image(Some(ferry_tests::e2e::BUSYBOX))
        .variable("GIT_STRATEGY", "fetch", false)
        .patch(git)
        .depends_on(plant_id)
        .script([
            "cat README",
            "mkdir -p vendor && echo restored-or-new > vendor/lib.txt",
            "cat \"$DEPLOY_KEY\"",
        ])
        .file_variable("DEPLOY_KEY", "key-content\n");
    next.cache.push(cache("vendor", &["vendor/"]));
    let next_id = h.push(next);
    let job = h.wait_final(next_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nhello"), "{trace}");
    assert!(trace.contains("\nkey-content"), "{trace}");
    // git worked in the project dir before any container of the job existed.
    let sources = trace.find(":get_sources");
    let prepare = trace.find(":prepare_executor");
    assert!(
        sources.is_some() && prepare.is_some() && sources < prepare,
        "{trace}"
    );
    victim.assert_untouched();
    assert!(!victim.dir.join("lib.txt").exists());

    // A third job of the project still runs: nothing a job left breaks it.
    h.assert_takes_next_job().await;
    h.stop().await;
}

// ---- 4 and 5. file variables through links, a FIFO that froze the daemon --------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_variables_never_follow_links_or_open_fifos() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let victim = Victim::new();
    // A first job creates the project folder.
    h.assert_takes_next_job().await;
    let tmp = project_folder(&h).join("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // Where the variable goes: a FIFO (an open for writing would block forever) ...
    let fifo = tmp.join("KEY");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // ... and a link to the victim for the other one.
    std::os::unix::fs::symlink(&victim.file, tmp.join("OTHER")).unwrap();
    // The project dir itself a dangling link (it made every later job fail in `prepare`).
    let src = h.project_dir(0);
    std::fs::remove_dir_all(&src).unwrap();
    std::os::unix::fs::symlink("/nonexistent-ferry-test", &src).unwrap();
    let spec = h
        .job("fifo")
        .script(["cat \"$KEY\" \"$OTHER\""])
        .file_variable("KEY", "key-value\n")
        .file_variable("OTHER", "other-value\n");
    let started = Instant::now();
    let id = h.push(spec);
    let job = h.wait_final(id, Duration::from_secs(60)).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nkey-value\nother-value"), "{trace}");
    assert!(started.elapsed() < Duration::from_secs(60));
    victim.assert_untouched();

    // A key GitLab never sends does not become a path.
    let mut bad = h.job("bad-key").script(["echo script-ran"]);
    bad.variables
        .push(json!({"key": "../../escape", "value": "x",
        "public": true, "masked": false, "file": true}));
    let id = h.push(bad);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert!(trace.contains("not a valid variable key"), "{trace}");
    assert!(!trace.contains("\nscript-ran"), "{trace}");
    h.assert_takes_next_job().await;
    h.stop().await;
}

// ---- 7. projects see each other ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_never_sees_another_projects_files() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let a = h
        .job("project-a")
        .script(["echo project-a-checkout > checkout.txt"])
        .file_variable("DEPLOY_KEY", "project-a-deploy-key\n");
    let a_id = h.push(a);
    let job = h.wait_final(a_id, JOB_WAIT).await;
    h.expect(&job, JobStatus::Success, None);

    let b = h
        .job("project-b")
        .patch(json!({"job_info": {"project_id": 43, "project_name": "other",
            "project_full_path": "evil/other"}}))
        .script([
            "ls -la /builds /builds/* 2>&1",
            "cat /builds/acme/app/checkout.txt /builds/acme/app.tmp/DEPLOY_KEY 2>&1 || true",
            "find / -xdev -name 'DEPLOY_KEY' 2>/dev/null; find / -xdev -name checkout.txt 2>/dev/null; echo searched",
        ]);
    let b_id = h.push(b);
    let job = h.wait_final(b_id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nsearched"), "{trace}");
    assert!(!trace.contains("project-a-checkout"), "{trace}");
    assert!(!trace.contains("project-a-deploy-key"), "{trace}");
    // `ls` shows only this project's own folder under /builds.
    assert!(trace.contains("\n/builds/evil:"), "{trace}");
    assert!(!trace.contains("\n/builds/acme:"), "{trace}");
    // The secret of project A is gone from the host once its job ended.
    let leftovers: Vec<PathBuf> = files_under(&h.work_dir.join("builds"))
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|c| c.contains("project-a-deploy-key")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    h.stop().await;
}

// ---- 13 and 15. bounded host work, odd file names --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_files_fifos_and_odd_names_end_with_clear_lines() {
    let Some(mut h) = Harness::start(Setup::default()).await else {
        return;
    };
    let mut spec = h.job("huge").script([
        "mkdir -p big out",
        // 60 GB that take no room: archiving them would keep the host busy for minutes.
        "dd if=/dev/zero of=big/sparse bs=1 count=0 seek=60G 2>&1",
        "mkfifo out/pipe",
        "echo fine > out/fine.txt",
        "touch \"out/bad$(printf '\\377')name\"",
    ]);
    spec.cache.push(cache("big", &["big/"]));
    spec.artifacts.push(artifacts(&["out/"]));
    let started = Instant::now();
    let id = h.push(spec);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(
        trace.contains("limit reached: more than") && trace.contains("Failed to create cache"),
        "{trace}"
    );
    assert!(
        trace.contains("out/pipe: skipped: not a regular file"),
        "{trace}"
    );
    assert!(
        trace.contains("skipped: the file name is not valid UTF-8"),
        "{trace}"
    );
    let stored = h.gitlab.artifacts(id);
    assert_eq!(stored.len(), 1, "{}", h.describe(id));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(stored[0].data.clone())).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    assert!(names.contains(&"out/fine.txt".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("pipe")), "{names:?}");
    h.assert_takes_next_job().await;
    h.stop().await;
}

// ---- 6. privileged mode and users fail closed ------------------------------------------------

/// `privileged = true` with allow-lists that match neither the job's image nor its service:
/// both containers run unprivileged (whether or not this engine accepts privileged ones), and a
/// user outside `allowed_users` is refused before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_lists_and_allowed_users_fail_closed() {
    let setup = Setup::default().docker(
        "privileged = true\n\
         allowed_privileged_images = [\"docker:*\"]\n\
         allowed_privileged_services = [\"docker:*\"]\n\
         allowed_users = [\"nobody\"]",
    );
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let id = h.push(
        h.job("not-privileged")
            .service(json!({"name": ferry_tests::e2e::SERVICE, "alias": "web"}))
            .script([
                "grep CapEff /proc/self/status",
                "echo inspect-now",
                "sleep 4",
            ]),
    );
    h.wait_trace(id, "\ninspect-now", JOB_WAIT).await;
    let names = ferry_tests::e2e::cmd(
        "docker",
        &[
            "ps",
            "--filter",
            &format!("label=ferry.job_id={id}"),
            // Job ids repeat across the fake GitLabs of tests running at once.
            "--filter",
            &format!("label=ferry.runner={}", h.short),
            "--format",
            "{{.Names}}",
        ],
    );
    let names: Vec<&str> = names.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(names.len(), 2, "build container and service: {names:?}");
    for name in &names {
        let privileged = ferry_tests::e2e::cmd(
            "docker",
            &["inspect", "-f", "{{.HostConfig.Privileged}}", name],
        );
        assert_eq!(privileged, "false", "{name} is privileged");
    }
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    let caps = trace
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_else(|| panic!("{trace}"));
    let mask = u64::from_str_radix(caps.trim_start_matches("CapEff:").trim(), 16).unwrap();
    assert!(mask & (1 << 21) == 0, "CAP_SYS_ADMIN in the job: {caps}");

    let root = h.push(h.job("as-root").script(["echo script-ran"]).patch(json!({
        "image": {"name": ferry_tests::e2e::BUSYBOX,
                  "executor_opts": {"docker": {"user": "root"}}}
    })));
    let job = h.wait_final(root, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Failed, Some("runner_configuration_error"));
    assert!(
        trace.contains("user \"root\" is not an allowed user: [nobody]"),
        "{trace}"
    );
    assert!(!trace.contains("\nscript-ran"), "{trace}");
    assert!(h.docker_objects(Some(root)).is_empty());
    h.stop().await;
}
