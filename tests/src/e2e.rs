//! Harness for end-to-end tests through the real `ferry` binary: a fake GitLab, a runner created
//! on it, a config.toml and working directory in a temp dir, `ferry run` as a child process, and
//! the real Docker engine.
//!
//! ```ignore
//! let Some(mut h) = Harness::start(Setup::default()).await else { return };  // SKIP printed
//! let id = h.push(h.job("build").script(["echo hi"]));
//! let job = h.wait_final(id, Duration::from_secs(120)).await;
//! assert_eq!(job.status, JobStatus::Success);
//! h.stop().await;
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::fake_gitlab::{FakeGitLab, JobRecord, JobSpec, JobStatus, RunnerSpec};

/// The default image of every test runner.
pub const BUSYBOX: &str = "ferry-test/busybox:latest";
pub const BASH: &str = "ferry-test/bash:latest";
pub const SERVICE: &str = "ferry-test/service:latest";

/// The `config.toml` of a test runner.
#[derive(Debug, Clone)]
pub struct Setup {
    pub concurrent: usize,
    /// Extra top-level lines (before `[[runners]]`).
    pub global: String,
    /// Extra lines of the `[[runners]]` entry.
    pub runner: String,
    /// Extra lines of `[runners.docker]` (image and pull_policy are already set unless given).
    pub docker: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            concurrent: 1,
            global: String::new(),
            runner: String::new(),
            docker: String::new(),
        }
    }
}

impl Setup {
    pub fn docker(mut self, lines: &str) -> Self {
        self.docker.push_str(lines);
        self.docker.push('\n');
        self
    }

    pub fn runner(mut self, lines: &str) -> Self {
        self.runner.push_str(lines);
        self.runner.push('\n');
        self
    }

    pub fn concurrent(mut self, n: usize) -> Self {
        self.concurrent = n;
        self
    }
}

/// Whether Docker and the test images are usable; the reason when not (print `SKIP:` with it).
pub fn docker_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .map_err(|e| format!("docker CLI: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "Docker is unreachable: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let script = workspace_root().join("scripts/build-test-images.sh");
            let out = Command::new("sh")
                .arg(&script)
                .output()
                .map_err(|e| format!("{}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "building the test images failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        })
        .clone()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Run a command, returning its stdout (trimmed); panics with its stderr on failure.
pub fn cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fake GitLab, one runner on it, and `ferry run` for that runner.
pub struct Harness {
    pub gitlab: FakeGitLab,
    pub runner_id: u64,
    pub token: String,
    /// The runner's short token (labels, names, builds and cache dirs).
    pub short: String,
    pub root: tempfile::TempDir,
    pub config_path: PathBuf,
    pub work_dir: PathBuf,
    pub log_path: PathBuf,
    /// Extra environment of the `ferry run` process (set before [`Harness::spawn_ferry`]).
    pub ferry_env: Vec<(String, String)>,
    /// Extra arguments of `ferry run` (set before [`Harness::spawn_ferry`]).
    pub ferry_args: Vec<String>,
    child: Option<Child>,
}

impl Harness {
    /// Start everything; `None` (after printing `SKIP: <reason>`) when Docker is not usable.
    pub async fn start(setup: Setup) -> Option<Harness> {
        let h = Self::prepare(setup).await?;
        let mut h = h;
        h.spawn_ferry();
        Some(h)
    }

    /// Everything but `ferry run` (call [`Harness::spawn_ferry`] when ready).
    pub async fn prepare(setup: Setup) -> Option<Harness> {
        if let Err(reason) = docker_ready() {
            skip_notice(&format!("SKIP: {reason}"));
            return None;
        }
        let gitlab = FakeGitLab::start().await;
        let (runner_id, token) = gitlab.create_runner(RunnerSpec::default());
        let short = ferry_config::token::ci_short_token(&token).to_string();
        let root = tempfile::tempdir().expect("temp dir");
        let h = Harness {
            gitlab,
            runner_id,
            token,
            short,
            config_path: root.path().join("config.toml"),
            work_dir: root.path().join("work"),
            log_path: root.path().join("ferry.log"),
            root,
            ferry_env: Vec::new(),
            ferry_args: Vec::new(),
            child: None,
        };
        h.write_config(&setup);
        Some(h)
    }

    pub fn write_config(&self, setup: &Setup) {
        let mut docker = setup.docker.clone();
        let has_key = |key: &str| {
            setup.docker.lines().any(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        };
        if !has_key("image") {
            docker.push_str(&format!("image = \"{BUSYBOX}\"\n"));
        }
        if !has_key("pull_policy") {
            docker.push_str("pull_policy = [\"if-not-present\"]\n");
        }
        let text = format!(
            "concurrent = {}\ncheck_interval = 1\nshutdown_timeout = 60\n{}\n\
             [[runners]]\nname = \"e2e\"\nurl = \"{}\"\ntoken = \"{}\"\nexecutor = \"docker\"\n{}\n\
             [runners.docker]\n{}",
            setup.concurrent,
            setup.global,
            self.gitlab.url(),
            self.token,
            setup.runner,
            docker
        );
        std::fs::write(&self.config_path, text).expect("writing config.toml");
    }

    /// Start `ferry run -c CONFIG --working-directory WORK [ferry_args]`, output appended to `ferry.log`.
    pub fn spawn_ferry(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("ferry.log");
        let child = Command::new(crate::ferry_bin())
            .arg("run")
            .arg("-c")
            .arg(&self.config_path)
            .arg("--working-directory")
            .arg(&self.work_dir)
            .args(&self.ferry_args)
            .env("RUST_LOG", "info")
            .envs(self.ferry_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning ferry run");
        self.child = Some(child);
    }

    /// Start `program args` in place of `ferry run` (e.g. `docker run … <ferry image>`), output
    /// appended to `ferry.log`; [`Harness::stop`] sends it SIGTERM as it would ferry.
    pub fn spawn_with(&mut self, program: &str, args: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("ferry.log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether `ferry run` was started and has not exited.
    pub fn ferry_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A job for the runner's default image that needs no sources.
    pub fn job(&self, name: &str) -> JobSpec {
        JobSpec::new(name)
            .image(Some(BUSYBOX))
            .variable("GIT_STRATEGY", "none", false)
    }

    pub fn push(&self, spec: JobSpec) -> u64 {
        self.gitlab.push_job(spec)
    }

    /// Wait until the job is final (success, failed, canceled); panics with the trace and
    /// ferry's log on timeout.
    pub async fn wait_final(&self, id: u64, timeout: Duration) -> JobRecord {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(job) = self.gitlab.job(id)
                && !job.status.is_active()
            {
                return job;
            }
            if Instant::now() >= deadline {
                panic!(
                    "job {id} not final after {timeout:?}: {}",
                    self.describe(id)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the job's trace contains `needle`.
    pub async fn wait_trace(&self, id: u64, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.gitlab.trace_string(id).contains(needle) {
            if Instant::now() >= deadline {
                panic!(
                    "job {id}: {needle:?} not in the trace after {timeout:?}: {}",
                    self.describe(id)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Status, failure reason, exit code, trace and the tail of ferry's log, for messages.
    pub fn describe(&self, id: u64) -> String {
        let job = self.gitlab.job(id);
        let log = self.ferry_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "status={:?} reason={:?} exit_code={:?}\n--- trace ---\n{}\n--- ferry log (tail) ---\n{}",
            job.as_ref().map(|j| j.status),
            job.as_ref().and_then(|j| j.failure_reason.clone()),
            job.as_ref().and_then(|j| j.exit_code),
            self.gitlab.trace_string(id),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    pub fn ferry_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Assert the job ended with `status` (and `reason` when failed); returns its trace.
    pub fn expect(&self, job: &JobRecord, status: JobStatus, reason: Option<&str>) -> String {
        assert_eq!(
            job.status,
            status,
            "job {}: {}",
            job.id,
            self.describe(job.id)
        );
        assert_eq!(
            job.failure_reason.as_deref(),
            reason,
            "job {}: {}",
            job.id,
            self.describe(job.id)
        );
        let trace = self.gitlab.trace_string(job.id);
        if std::env::var_os("FERRY_E2E_SHOW_TRACES").is_some() {
            println!("--- job {} ({}) trace ---\n{trace}", job.id, job.name);
        }
        trace
    }

    /// Push a trivial job and check that ferry runs it to success (ferry still takes jobs).
    pub async fn assert_takes_next_job(&self) {
        let id = self.push(self.job("next").script(["echo next-job-ran"]));
        let job = self.wait_final(id, Duration::from_secs(120)).await;
        let trace = self.expect(&job, JobStatus::Success, None);
        assert!(trace.contains("\nnext-job-ran"), "{}", self.describe(id));
    }

    /// SIGTERM ferry and wait for it to exit (panics if it does not within 60 s).
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60)).await
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("ferry was started");
        loop {
            if let Some(status) = child.try_wait().expect("waiting for ferry") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "ferry did not exit within {timeout:?}; log:\n{}",
                    self.ferry_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The project directory of slot `slot` on the host (the fake GitLab's project 42).
    pub fn project_dir(&self, slot: usize) -> PathBuf {
        self.work_dir
            .join("builds")
            .join(&self.short)
            .join(slot.to_string())
            .join("project-42")
            .join("src")
    }

    /// Containers, networks and per-job volumes of this runner (of `job` if given) still in
    /// Docker, as `kind name` lines.
    pub fn docker_objects(&self, job: Option<u64>) -> Vec<String> {
        let mut filters = vec![
            "label=ferry.managed=true".to_string(),
            format!("label=ferry.runner={}", self.short),
        ];
        match job {
            Some(id) => filters.push(format!("label=ferry.job_id={id}")),
            None => filters.push("label=ferry.job_id".to_string()),
        }
        let mut out = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "--format", "{{.Names}}"]),
            ("network", vec!["network", "ls", "--format", "{{.Name}}"]),
            ("volume", vec!["volume", "ls", "--format", "{{.Name}}"]),
        ] {
            let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            for f in &filters {
                a.push("--filter".into());
                a.push(f.clone());
            }
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            for line in cmd("docker", &refs).lines() {
                if !line.trim().is_empty() {
                    out.push(format!("{kind} {}", line.trim()));
                }
            }
        }
        out
    }

    /// The short tokens this test's runners label their objects with: the one it started with
    /// and each runner's current one (a test may rotate or replace the token, and the jobs run
    /// after that carry the new one).
    fn runner_labels(&self) -> Vec<String> {
        let mut shorts = vec![self.short.clone()];
        for r in self.gitlab.runners() {
            let short = ferry_config::token::ci_short_token(&r.token).to_string();
            if !shorts.contains(&short) {
                shorts.push(short);
            }
        }
        shorts
    }

    /// Every object labelled with one of this test's runners, cache volumes included (for
    /// Drop, which runs also when an assertion failed, and after ferry was killed before its
    /// background removal of a finished job's containers).
    fn remove_runner_objects(&self) {
        for short in self.runner_labels() {
            Self::remove_labelled(&short);
        }
    }

    fn remove_labelled(short: &str) {
        let f = format!("label=ferry.runner={short}");
        let q = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        for c in q(&["ps", "-aq", "--filter", &f]) {
            let _ = Command::new("docker").args(["rm", "-f", "-v", &c]).output();
        }
        for n in q(&["network", "ls", "-q", "--filter", &f]) {
            let _ = Command::new("docker").args(["network", "rm", &n]).output();
        }
        for v in q(&["volume", "ls", "-q", "--filter", &f]) {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f", &v])
                .output();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_runner_objects();
    }
}

/// A local git repository (branch `main`) to clone from.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl Default for GitRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl GitRepo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = GitRepo { dir };
        r.git(&["init", "-q", "-b", "main"]);
        r.git(&["config", "user.email", "e2e@example.com"]);
        r.git(&["config", "user.name", "e2e"]);
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut a = vec!["-C", self.dir.path().to_str().expect("utf-8 temp path")];
        a.extend_from_slice(args);
        cmd("git", &a)
    }

    /// Write `file` and commit it; returns the new HEAD sha.
    pub fn commit(&self, file: &str, content: &str) -> String {
        let path = self.dir.path().join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write");
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("change {file}")]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// `file://` URL of the repository.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    /// The payload patch that makes a job check out `sha` of this repository over `url`.
    pub fn git_info(url: &str, sha: &str, depth: u64) -> Value {
        json!({"git_info": {
            "repo_url": url,
            "ref": "main",
            "sha": sha,
            "before_sha": "0000000000000000000000000000000000000000",
            "ref_type": "branch",
            "refspecs": ["+refs/heads/main:refs/remotes/origin/main"],
            "depth": depth,
        }})
    }
}

/// Poll `f` until it returns true; false after `timeout`.
pub async fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a final status counts as finished (not running/canceling).
pub fn is_final(status: JobStatus) -> bool {
    !status.is_active()
}

/// Git repositories served over smart HTTP by `git http-backend` (CGI), like GitLab's
/// `https://gitlab-ci-token:<job token>@host/group/project.git`. Requests without Basic
/// credentials get 401; every `Authorization` value is recorded, decoded (`user:password`).
/// Where [`GitHttp`] keeps LFS objects, under its root.
const LFS_STORE: &str = ".lfs-objects";

pub struct GitHttp {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    credentials: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    user_agents: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHttp {
    /// Serve every repository under `root` (`<base>/<dir name>` is `root/<dir name>`).
    pub async fn serve(root: &Path) -> GitHttp {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;

        #[derive(Clone)]
        struct Ctx {
            root: PathBuf,
            credentials: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
            user_agents: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        }

        async fn handle(State(ctx): State<Ctx>, req: Request) -> axum::response::Response {
            use axum::http::{HeaderValue, StatusCode};
            use base64::Engine as _;
            use tokio::io::AsyncWriteExt;

            if let Some(ua) = req
                .headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
            {
                ctx.user_agents
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(ua.to_string());
            }
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let Some(auth) = auth else {
                let mut r = (StatusCode::UNAUTHORIZED, "HTTP Basic: Access denied").into_response();
                r.headers_mut().insert(
                    "www-authenticate",
                    HeaderValue::from_static("Basic realm=\"GitLab\""),
                );
                return r;
            };
            ctx.credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(auth);
            if let Some(r) = lfs(&ctx.root, req.uri().path()) {
                return match r {
                    Lfs::Batch => lfs_batch(&ctx.root, req).await,
                    Lfs::Object(path) => match std::fs::read(path) {
                        Ok(bytes) => bytes.into_response(),
                        Err(_) => (StatusCode::NOT_FOUND, "no such object").into_response(),
                    },
                };
            }
            let (parts, body) = req.into_parts();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut cmd = tokio::process::Command::new("git");
            cmd.arg("http-backend")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("GIT_PROJECT_ROOT", &ctx.root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("PATH_INFO", parts.uri.path())
                .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
                .env("REQUEST_METHOD", parts.method.as_str())
                .env("CONTENT_TYPE", header("content-type"))
                .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                .env("GIT_PROTOCOL", header("git-protocol"))
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            let body = match axum::body::to_bytes(body, 256 << 20).await {
                Ok(b) => b,
                Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            };
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
                }
            };
            if let Some(mut stdin) = child.stdin.take() {
                tokio::spawn(async move {
                    let _ = stdin.write_all(&body).await;
                });
            }
            let out = match child.wait_with_output().await {
                Ok(o) => o.stdout,
                Err(e) => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
                }
            };
            // CGI: headers, a blank line, the body.
            let split = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, i + 4))
                .or_else(|| {
                    out.windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| (i, i + 2))
                });
            let Some((head_end, body_start)) = split else {
                return (StatusCode::INTERNAL_SERVER_ERROR, "bad CGI output").into_response();
            };
            let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
            let mut status = StatusCode::OK;
            let mut resp =
                axum::response::Response::new(axum::body::Body::from(out[body_start..].to_vec()));
            for line in head.lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("status") {
                    if let Some(code) = v
                        .split_whitespace()
                        .next()
                        .and_then(|c| c.parse::<u16>().ok())
                        .and_then(|c| StatusCode::from_u16(c).ok())
                    {
                        status = code;
                    }
                } else if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    resp.headers_mut().append(name, value);
                }
            }
            *resp.status_mut() = status;
            resp
        }

        /// A Git LFS request: GitLab's batch API (`<repo>.git/info/lfs/objects/batch`) or a
        /// download of one object it handed out (`/lfs-objects/<oid>`).
        enum Lfs {
            Batch,
            Object(PathBuf),
        }

        fn lfs(root: &Path, path: &str) -> Option<Lfs> {
            if path.ends_with("/info/lfs/objects/batch") {
                return Some(Lfs::Batch);
            }
            let oid = path.strip_prefix("/lfs-objects/")?;
            let valid = oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit());
            Some(Lfs::Object(root.join(LFS_STORE).join(if valid {
                oid
            } else {
                "invalid"
            })))
        }

        /// The batch API as GitLab answers a download: each object the store has gets an
        /// `actions.download` with the header to use; a missing one an error of its own.
        async fn lfs_batch(root: &Path, req: Request) -> axum::response::Response {
            use axum::response::IntoResponse;
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1")
                .to_string();
            let auth = req.headers().get("authorization").cloned();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let objects: Vec<Value> = request["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    let oid = o["oid"].as_str().unwrap_or("");
                    let size = o["size"].as_u64().unwrap_or(0);
                    let stored = oid.len() == 64
                        && oid.bytes().all(|b| b.is_ascii_hexdigit())
                        && root.join(LFS_STORE).join(oid).is_file();
                    if !stored {
                        return json!({"oid": oid, "size": size,
                            "error": {"code": 404, "message": "Object does not exist on the server"}});
                    }
                    let mut header = serde_json::Map::new();
                    if let Some(a) = auth.as_ref().and_then(|a| a.to_str().ok()) {
                        header.insert("Authorization".into(), json!(a));
                    }
                    json!({"oid": oid, "size": size, "authenticated": true,
                        "actions": {"download": {
                            "href": format!("http://{host}/lfs-objects/{oid}"),
                            "header": header, "expires_in": 3600}}})
                })
                .collect();
            let mut r =
                axum::Json(json!({"transfer": "basic", "objects": objects})).into_response();
            r.headers_mut().insert(
                "content-type",
                axum::http::HeaderValue::from_static("application/vnd.git-lfs+json"),
            );
            r
        }

        let credentials = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let user_agents = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ctx = Ctx {
            root: root.to_path_buf(),
            credentials: credentials.clone(),
            user_agents: user_agents.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the git HTTP server");
        let base = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("local address").port()
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttp {
            base,
            credentials,
            user_agents,
            task,
        }
    }

    /// Every `User-Agent` received so far.
    pub fn user_agents(&self) -> Vec<String> {
        self.user_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every `user:password` received so far.
    pub fn credentials(&self) -> Vec<String> {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stores `content` as a Git LFS object of the server whose root is `root`; returns the
    /// pointer file to commit in its place.
    pub fn lfs_object(root: &Path, content: &[u8]) -> String {
        use sha2::Digest as _;
        let oid = hex::encode(sha2::Sha256::digest(content));
        let store = root.join(LFS_STORE);
        std::fs::create_dir_all(&store).expect("LFS store");
        std::fs::write(store.join(&oid), content).expect("LFS object");
        format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
            content.len()
        )
    }

    /// The clone URL GitLab would send for `repo` (a directory under the root), with the job
    /// token as `{{TOKEN}}` (replaced by [`JobSpec::patch`]).
    pub fn repo_url(&self, repo: &str) -> String {
        let host = self.base.trim_start_matches("http://");
        format!("http://gitlab-ci-token:{{{{TOKEN}}}}@{host}/{repo}")
    }
}

/// Shows `SKIP: <reason>` in the test run's output even though the test passes: libtest captures
/// `println!` of passing tests, a direct write to stderr is not captured.
pub fn skip_notice(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
