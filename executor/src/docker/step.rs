//! Running one step: `docker exec` of the detected shell in the build container, the script on
//! its stdin, output copied to the job log as it comes.
//!
//! In the build container with a steps dir (`JobEnv::host_steps_dir`, a daemon that bind-mounts
//! ferry's directories), the step keeps its output and exit code in files there
//! ([`convert::kept_step_script`]), which ferry tails from the host through a [`JobDir`] (never
//! following a link the job put there): they survive ferry, and a later ferry follows the step
//! with [`resume_step`] (docs/crash-safety.md). Elsewhere (hooks, remote daemons) the exec's
//! output stream is the output.
//!
//! Stopping a step (cancel or step timeout): SIGTERM to every process of the container except
//! PID 1 (the idle shell that keeps the container up), then after the grace period SIGKILL the
//! same way; if that is not possible, the container itself is killed and started again so that a
//! later step (after_script) still has a container.
//!
//! OOM: the kernel kills the process that ran out of memory, not the container, so
//! `State.OOMKilled` stays false while the container lives. Docker reports the kill as an `oom`
//! event of the container, which we watch for the duration of the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::EventsOptionsBuilder;
use ferry_config::joblog;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{DockerEngine, convert, docker_err, one_line};
use crate::engine::{
    EngineError, JobEnv, LogFull, LogSink, STEP_TIMEOUT_EXIT_CODE, StepOutcome, StepSpec,
};
use crate::jobfs::{self, JobDir};

/// How often the exec is inspected while its output is open: a background process that keeps
/// stdout open must not keep the step alive after the script's shell has exited.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// A resumed step whose wrapper wrote no `.pids` this long after the step started never ran.
const NEVER_STARTED_AFTER: Duration = Duration::from_secs(5);

/// How often a kept step's output file is read for new output.
const TAIL_EVERY: Duration = Duration::from_millis(50);

/// The most of a kept step's output copied in one go (then the other events get a turn).
const TAIL_CHUNK: usize = 256 * 1024;

/// The most of a kept step's output read once it ended or was stopped (`Kept::drain`).
const DRAIN_BUDGET: u64 = 64 * 1024 * 1024;

/// A kept step whose output file grows past this is stopped (docs/crash-safety.md): the file
/// is on the runner host's disk.
pub const STEP_LOG_CAP: u64 = 1024 * 1024 * 1024;

/// Empties (creates) a job's steps dir before its build container starts. World-writable as
/// the project dir is (docs/crash-safety.md): the step's user may be any user of the image.
pub(super) async fn reset_steps_dir(dir: &std::path::Path) -> Result<(), EngineError> {
    let d = dir.to_path_buf();
    jobfs::blocking(move || {
        jobfs::remove_files(&d)?;
        JobDir::create(&d, 0o777).map(drop)
    })
    .await
    .map_err(|e| EngineError::Docker(format!("creating {}: {e}", dir.display())))
}

/// A step's kept output and exit code: `<name>.log`, `<name>.code` (the shell ended),
/// `<name>.exit` (the output ended too) and `<name>.pids` in the steps dir, read through a
/// handle of the directory, never through a link.
pub(super) struct Kept {
    dir: Arc<JobDir>,
    name: String,
    /// The steps dir as the container sees it.
    container_dir: String,
    file: Option<Arc<std::fs::File>>,
    /// How much of the log file was copied to the job log.
    pos: u64,
    /// Reading the log failed: no more is read.
    failed: bool,
    /// The job log takes no more output (its `output_limit`): no more is read either, the step
    /// may write what it likes (docs/crash-safety.md).
    full: LogFull,
}

impl Kept {
    fn open(env: &JobEnv, step: &StepSpec, from: u64) -> Result<Kept, EngineError> {
        let host = env.host_steps_dir.as_deref().ok_or_else(|| {
            EngineError::Docker("this job keeps no step output (no steps dir)".into())
        })?;
        let dir = JobDir::open(host)
            .map_err(|e| EngineError::Docker(format!("the steps dir {}: {e}", host.display())))?;
        Ok(Kept {
            dir: Arc::new(dir),
            name: convert::step_file_name(&step.name),
            container_dir: convert::steps_dir(env),
            file: None,
            pos: from,
            failed: false,
            full: step.log_full.clone(),
        })
    }

    /// Removes what an earlier run of this step left (a step can run again in a new container).
    async fn clear(&self) -> Result<(), EngineError> {
        let (dir, name) = (self.dir.clone(), self.name.clone());
        jobfs::blocking(move || {
            for ext in ["log", "code", "exit", "pids", "fifo"] {
                dir.remove(std::path::Path::new(&format!("{name}.{ext}")))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| EngineError::Docker(format!("clearing the output of step {}: {e}", self.name)))
    }

    /// The processes in `<name>.pids` (the wrapper first), empty while it is not there.
    async fn pids(&self) -> Vec<u32> {
        use std::io::Read;
        let (dir, rel) = (self.dir.clone(), format!("{}.pids", self.name));
        let text = jobfs::blocking(move || {
            let mut s = String::new();
            dir.open_file(std::path::Path::new(&rel))?
                .take(256)
                .read_to_string(&mut s)?;
            Ok(s)
        })
        .await
        .unwrap_or_default();
        text.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn pids_file(&self) -> String {
        format!("{}/{}.pids", self.container_dir, self.name)
    }

    /// Opens the log file if it is there yet (through the directory handle, never a link).
    async fn file(&mut self) -> std::io::Result<Option<Arc<std::fs::File>>> {
        if self.file.is_none() {
            let (dir, rel) = (self.dir.clone(), format!("{}.log", self.name));
            match jobfs::blocking(move || dir.open_file(std::path::Path::new(&rel))).await {
                Ok(f) => self.file = Some(Arc::new(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.file.clone())
    }

    /// The log file's size now (`fstat`), 0 while it is not there.
    async fn size(&mut self) -> std::io::Result<u64> {
        let Some(f) = self.file().await? else {
            return Ok(0);
        };
        jobfs::blocking(move || Ok(f.metadata()?.len())).await
    }

    /// Copies what the step wrote since the last call into `log`: at most `TAIL_CHUNK` bytes.
    /// Returns whether anything was copied. A log the job replaced by something that is not a
    /// regular file is an error.
    async fn pump(&mut self, log: &mut LogSink<'_>) -> std::io::Result<bool> {
        if self.failed || self.full.is_set() {
            return Ok(false);
        }
        let until = self.pos + TAIL_CHUNK as u64;
        self.copy_until(log, until).await
    }

    /// The final read once the step has ended or was stopped: up to the size the file has now
    /// (`fstat`), and at most `DRAIN_BUDGET` bytes; what lies beyond (a job that wrote faster
    /// than ferry reads, or a sparse file) is skipped with a warning line. Never reads a
    /// growing or huge file to its end.
    async fn drain(&mut self, log: &mut LogSink<'_>) -> std::io::Result<()> {
        if self.failed || self.full.is_set() {
            return Ok(());
        }
        let size = self.size().await?;
        let until = size.min(self.pos.saturating_add(DRAIN_BUDGET));
        self.copy_until(log, until).await?;
        if size > self.pos {
            let skipped = size - self.pos;
            let line = joblog::warning_line(&format!(
                "{skipped} bytes of the output of step {} were not read (more than {} MiB were left when the step ended)",
                self.name,
                DRAIN_BUDGET >> 20
            ));
            let _ = log.write_all(format!("\n{line}").as_bytes()).await;
            self.pos = size;
        }
        Ok(())
    }

    /// Copies the log from `pos` up to `until` (or its current end) into `log`.
    async fn copy_until(&mut self, log: &mut LogSink<'_>, until: u64) -> std::io::Result<bool> {
        let Some(f) = self.file().await? else {
            return Ok(false);
        };
        let mut copied = false;
        while self.pos < until && !self.full.is_set() {
            // Positioned reads off the async workers.
            let want = (until - self.pos).min(64 * 1024) as usize;
            let (f, at) = (f.clone(), self.pos);
            let chunk = jobfs::blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want];
                let n = f.read_at(&mut buf, at)?;
                buf.truncate(n);
                Ok(buf)
            })
            .await?;
            if chunk.is_empty() {
                break;
            }
            // A log that cannot be written loses output as the streaming mode does.
            let _ = log.write_all(&chunk).await;
            self.pos += chunk.len() as u64;
            copied = true;
        }
        Ok(copied)
    }

    /// The exit code in `<name>.<ext>` (`code` or `exit`), if that file is there and holds one.
    async fn status(&self, ext: &str) -> Option<i32> {
        use std::io::Read;
        let (dir, rel) = (self.dir.clone(), format!("{}.{ext}", self.name));
        let text = jobfs::blocking(move || {
            let mut s = String::new();
            dir.open_file(std::path::Path::new(&rel))?
                .take(64)
                .read_to_string(&mut s)?;
            Ok(s)
        })
        .await
        .ok()?;
        text.trim().parse::<i32>().ok()
    }
}

enum Stop {
    Cancelled,
    TimedOut,
    TooLarge,
}

impl Kept {
    /// Whether the step's log file grew past `STEP_LOG_CAP`. If so, says so in the log and
    /// skips what was not read yet (a huge or sparse file is never read to its end).
    async fn over_cap(&mut self, log: &mut LogSink<'_>) -> bool {
        let size = match self.size().await {
            Ok(s) => s,
            Err(_) => return false,
        };
        if size <= STEP_LOG_CAP {
            return false;
        }
        let line = joblog::error_line(&format!(
            "Step {} wrote more than {} MiB of output to its log file: stopping it",
            self.name,
            STEP_LOG_CAP >> 20
        ));
        let _ = log.write_all(format!("\n{line}").as_bytes()).await;
        self.pos = self.pos.max(size);
        true
    }
}

pub(super) async fn run_step(
    engine: &DockerEngine,
    env: &JobEnv,
    step: &StepSpec,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<StepOutcome, EngineError> {
    let container = convert::build_container_name(env);
    if !engine.keeps_steps(env) {
        return run_step_in(engine, env, &container, step, log, cancel).await;
    }
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    let mut kept = Kept::open(env, step, 0)?;
    kept.clear().await?;
    let (c, k) = (container.as_str(), &mut kept);
    with_oom_watch(engine, c, |oom| async move {
        exec_step(engine, env, step, c, log, cancel, &oom, Some(k)).await
    })
    .await
}

/// What a hook's `git config --global` holds, read in its container after the script
/// (`Engine::run_hook`): the listing follows a marker line the echoed command cannot contain,
/// capped at `HOOK_GIT_CONFIG_LIMIT`; an image without git gives nothing.
pub(super) async fn read_global_git_config(
    engine: &DockerEngine,
    env: &JobEnv,
    container: &str,
    cancel: &CancellationToken,
) -> Result<Vec<u8>, EngineError> {
    const MARKER: &[u8] = b"@@ferry-git-config@@\n";
    let step = StepSpec {
        name: "read_git_config".into(),
        commands: vec![
            "printf '%s%s\\n' '@@ferry-git-' 'config@@'; git config --global --no-includes --list -z 2>/dev/null || true".into(),
        ],
        env: Vec::new(),
        timeout: Some(Duration::from_secs(60)),
        xtrace: false,
        script_sections: Vec::new(),
        log_full: Default::default(),
    };
    let mut sink = Capped {
        buf: Vec::new(),
        limit: crate::engine::HOOK_GIT_CONFIG_LIMIT + 4096,
    };
    run_step_in(engine, env, container, &step, &mut sink, cancel).await?;
    let buf = sink.buf;
    Ok(match buf.windows(MARKER.len()).position(|w| w == MARKER) {
        Some(at) => {
            let rest = &buf[at + MARKER.len()..];
            rest[..rest.len().min(crate::engine::HOOK_GIT_CONFIG_LIMIT)].to_vec()
        }
        None => Vec::new(),
    })
}

/// A log that keeps the first `limit` bytes and drops the rest.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let room = self.limit.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
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

/// One step in the container `container` (the build container, or a hook's).
pub(super) async fn run_step_in(
    engine: &DockerEngine,
    env: &JobEnv,
    container: &str,
    step: &StepSpec,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<StepOutcome, EngineError> {
    if cancel.is_cancelled() {
        return Err(EngineError::Cancelled);
    }
    with_oom_watch(engine, container, |oom| async move {
        exec_step(engine, env, step, container, log, cancel, &oom, None).await
    })
    .await
}

/// Runs `f` while OOM kills of `container` are watched for.
async fn with_oom_watch<F, Fut>(
    engine: &DockerEngine,
    container: &str,
    f: F,
) -> Result<StepOutcome, EngineError>
where
    F: FnOnce(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = Result<StepOutcome, EngineError>>,
{
    let docker = engine.client();
    let container = container.to_string();

    // Watch for OOM kills from now on (events since one second ago, so none is missed while
    // the subscription starts; older ones are filtered by time below).
    let started_ns = now_ns();
    let oom = Arc::new(AtomicBool::new(false));
    let oom_watch = {
        let oom = oom.clone();
        let docker = docker.clone();
        let container = container.clone();
        let mut filters = std::collections::HashMap::new();
        filters.insert("type", vec!["container".to_string()]);
        filters.insert("event", vec!["oom".to_string()]);
        filters.insert("container", vec![container.clone()]);
        let since = (started_ns / 1_000_000_000 - 1).to_string();
        tokio::spawn(async move {
            let opts = EventsOptionsBuilder::new()
                .since(&since)
                .filters(&filters)
                .build();
            let mut events = docker.events(Some(opts));
            while let Some(Ok(ev)) = events.next().await {
                if ev.time_nano.unwrap_or(i64::MAX) >= started_ns - 1_000_000_000 {
                    oom.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let result = f(oom).await;
    oom_watch.abort();
    result
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn exec_step(
    engine: &DockerEngine,
    env: &JobEnv,
    step: &StepSpec,
    container: &str,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
    oom: &AtomicBool,
    mut kept: Option<&mut Kept>,
) -> Result<StepOutcome, EngineError> {
    let docker = engine.client();
    let cmd = match &kept {
        Some(k) => vec![
            "sh".into(),
            "-c".into(),
            convert::kept_step_script(),
            "ferry-step".into(),
            k.container_dir.clone(),
            k.name.clone(),
        ],
        None => vec!["sh".into(), "-c".into(), convert::DETECT_SHELL.into()],
    };
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                cmd: Some(cmd),
                working_dir: Some(env.project_dir.clone()),
                env: Some(
                    step.env
                        .iter()
                        .map(|v| format!("{}={}", v.name, v.value))
                        .collect(),
                ),
                ..Default::default()
            },
        )
        .await;
    let exec = match exec {
        Ok(e) => e,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {
            return Err(not_running(engine, container).await);
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(EngineError::ContainerGone(container.to_string()));
        }
        Err(e) => {
            return Err(docker_err(
                &format!("starting step {} in {container}", step.name),
                &e,
            ));
        }
    };
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| docker_err(&format!("starting step {}", step.name), &e))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(EngineError::Docker(format!(
            "step {}: exec did not attach",
            step.name
        )));
    };
    // The shell reads the whole script (one eval line) before it runs anything, so writing it
    // all before reading output cannot deadlock.
    let script = convert::step_script(step);
    input.write_all(script.as_bytes()).await.map_err(|e| {
        EngineError::Docker(format!("sending the script of step {}: {e}", step.name))
    })?;
    input.shutdown().await.map_err(|e| {
        EngineError::Docker(format!("closing the script of step {}: {e}", step.name))
    })?;

    let deadline = step.timeout.map(|t| (crate::engine::deadline_after(t), t));
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.tick().await;
    let mut tail = tokio::time::interval(TAIL_EVERY);
    let mut stop: Option<Stop> = None;
    let mut exited_at: Option<tokio::time::Instant> = None;
    let mut stream_error: Option<String> = None;
    loop {
        let sleep_deadline = async {
            match deadline {
                Some((d, _)) if stop.is_none() => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => write_chunk(log, chunk).await,
                Some(Err(e)) => {
                    tracing::debug!("step {} output stream: {}", step.name, one_line(&e));
                    stream_error = Some(one_line(&e));
                    break;
                }
                None => break,
            },
            _ = tail.tick(), if kept.is_some() => {
                if let Some(k) = kept.as_deref_mut() {
                    pump_or_warn(k, log, false).await;
                    if k.over_cap(log).await {
                        stop = Some(Stop::TooLarge);
                        stop_step(engine, container, Some(&exec.id), &mut output, kept.as_deref_mut(), log).await;
                        break;
                    }
                }
            }
            // Stop first, then read what is left (bounded): reading up to the end of a file
            // the job keeps writing would never end.
            _ = cancel.cancelled(), if stop.is_none() => {
                let _ = log.flush().await;
                stop = Some(Stop::Cancelled);
                stop_step(engine, container, Some(&exec.id), &mut output, kept.as_deref_mut(), log).await;
                break;
            }
            _ = sleep_deadline => {
                let t = deadline.map(|(_, t)| t).unwrap_or_default();
                let line = joblog::error_line(&format!("Step {} timed out after {}", step.name, human(t)));
                let _ = log.write_all(format!("\n{line}").as_bytes()).await;
                stop = Some(Stop::TimedOut);
                stop_step(engine, container, Some(&exec.id), &mut output, kept.as_deref_mut(), log).await;
                break;
            }
            _ = poll.tick() => {
                // The shell has exited but something it started still holds the output open
                // (a kept step: its exit code is written, the output has not ended).
                // A kept step's shell is done when its code is written, or when the wrapper
                // that waits for it (the exec's process) was killed.
                let exec_ended = || async {
                    docker.inspect_exec(&exec.id).await.ok().and_then(|i| i.running) == Some(false)
                };
                let shell_done = match kept.as_deref() {
                    Some(k) => k.status("code").await.is_some() || exec_ended().await,
                    None => exec_ended().await,
                };
                if shell_done {
                    let t = *exited_at.get_or_insert_with(tokio::time::Instant::now);
                    if t.elapsed() >= 5 * POLL_EVERY {
                        // The leftovers could not be killed: stop waiting for their output.
                        tracing::warn!(container, step = %step.name, "output still open 5 s after the step's shell exited");
                        break;
                    }
                    if t.elapsed() >= POLL_EVERY {
                        kill_leftovers(engine, container, "KILL", None).await;
                    }
                }
            }
        }
    }
    if let Some(k) = kept.as_deref_mut() {
        pump_or_warn(k, log, true).await;
    }
    match stop {
        Some(Stop::Cancelled) => return Err(EngineError::Cancelled),
        Some(Stop::TimedOut) => {
            return Ok(StepOutcome {
                exit_code: STEP_TIMEOUT_EXIT_CODE,
                oom_killed: false,
                timed_out: true,
            });
        }
        Some(Stop::TooLarge) => {
            return Ok(StepOutcome {
                exit_code: 1,
                oom_killed: false,
                timed_out: false,
            });
        }
        None => {}
    }

    // The output has ended: the exit code is there (give the daemon a moment to record it).
    // If the daemon cannot be asked, the output ended because the connection to it was lost
    // (the daemon stopped or restarted): that is the cause, not the script.
    let lost = |e: &bollard::errors::Error| {
        EngineError::Docker(format!(
            "lost the connection to the Docker daemon while step {} was running (did the daemon stop or restart?): {}{}",
            step.name,
            stream_error
                .as_deref()
                .map(|s| format!("output stream: {s}; "))
                .unwrap_or_default(),
            one_line(e)
        ))
    };
    let mut exit_code = None;
    for _ in 0..50 {
        let i = match docker.inspect_exec(&exec.id).await {
            Ok(i) => i,
            Err(_) if container_gone(engine, container).await => {
                return Err(EngineError::ContainerGone(container.to_string()));
            }
            Err(e) => return Err(lost(&e)),
        };
        if i.running != Some(true) {
            exit_code = i.exit_code;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The container was removed under the step (its processes were killed with it, SIGKILL).
    if matches!(exit_code, None | Some(137)) && container_gone(engine, container).await {
        return Err(EngineError::ContainerGone(container.to_string()));
    }
    let Some(code) = exit_code else {
        return Err(EngineError::Docker(format!(
            "the output of step {} ended while it was still running (connection to the Docker daemon lost?); no exit code from Docker",
            step.name
        )));
    };
    let mut code = i32::try_from(code).unwrap_or(i32::MAX);
    // A kept step's wrapper exits with the shell's code, unless it was killed with leftovers
    // that held the output: the shell's own code is in its file.
    if let Some(k) = kept.as_deref()
        && let Some(c) = match k.status("exit").await {
            Some(c) => Some(c),
            None => k.status("code").await,
        }
    {
        code = c;
    }
    let mut oom_killed = false;
    if code != 0 {
        // The event may arrive just after the exec ended.
        for _ in 0..10 {
            if oom.load(Ordering::SeqCst) {
                break;
            }
            if code != 137 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        oom_killed = oom.load(Ordering::SeqCst) || container_oom_killed(engine, container).await;
    }
    Ok(StepOutcome {
        exit_code: code,
        oom_killed,
        timed_out: false,
    })
}

/// Whether the container was removed by someone else: the daemon says it does not exist.
/// `docker rm -f` kills the container's processes first, so the step may end (SIGKILL, 137)
/// while the container is still listed, even as running: it is watched for up to 3 s for its
/// removal. A daemon that cannot be asked confirms nothing.
async fn container_gone(engine: &DockerEngine, container: &str) -> bool {
    for _ in 0..30 {
        let inspected = engine
            .client()
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        match inspected {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return true,
            // The daemon cannot be asked: not a removal it can confirm.
            Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

/// The build container stopped (its entrypoint did not keep running the command it was given,
/// or it was killed): say so, with its exit code and last output.
pub(super) async fn not_running(engine: &DockerEngine, container: &str) -> EngineError {
    let state = engine
        .client()
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|i| i.state);
    let code = state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1);
    let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
    let logs = super::services::container_logs(engine, container, false).await;
    let last: Vec<&str> = logs
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    EngineError::Docker(format!(
        "the build container {container} is not running (exit code {code}{}); the image's entrypoint must run the command it is given{}",
        if oom { ", OOM killed" } else { "" },
        if last.is_empty() {
            String::new()
        } else {
            format!("; last output: {}", last.join(" | "))
        }
    ))
}

async fn write_chunk(log: &mut LogSink<'_>, chunk: LogOutput) {
    match chunk {
        LogOutput::StdOut { message }
        | LogOutput::StdErr { message }
        | LogOutput::Console { message } => {
            let _ = log.write_all(&message).await;
        }
        LogOutput::StdIn { .. } => {}
    }
}

async fn container_oom_killed(engine: &DockerEngine, container: &str) -> bool {
    engine
        .client()
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|i| i.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Signal every process of the container but PID 1 (`sig` = TERM or KILL) with a short exec,
/// sparing those listed in the container's file `spare` (a kept step's wrapper and `cat`).
/// Returns false when that was not possible.
async fn kill_leftovers(
    engine: &DockerEngine,
    container: &str,
    sig: &str,
    spare: Option<&str>,
) -> bool {
    let docker = engine.client();
    let mut cmd = vec![
        "sh".to_string(),
        "-c".into(),
        convert::SIGNAL_ALL_SCRIPT.into(),
        "ferry-stop".into(),
        sig.into(),
    ];
    if let Some(f) = spare {
        cmd.push(f.to_string());
    }
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: Some("0".into()),
                cmd: Some(cmd),
                ..Default::default()
            },
        )
        .await;
    let Ok(exec) = exec else { return false };
    let Ok(StartExecResults::Attached { mut output, .. }) = docker.start_exec(&exec.id, None).await
    else {
        return false;
    };
    let drain = async { while output.next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    matches!(docker.inspect_exec(&exec.id).await, Ok(i) if i.exit_code == Some(0))
}

/// Copies a kept step's new output into the log; a failure to read it is a line in the log.
/// `all`: the final read ([`Kept::drain`]).
async fn pump_or_warn(kept: &mut Kept, log: &mut LogSink<'_>, all: bool) {
    let r = if all {
        kept.drain(log).await
    } else {
        kept.pump(log).await.map(drop)
    };
    if let Err(e) = r {
        let line = joblog::warning_line(&format!("reading the output of step {}: {e}", kept.name));
        let _ = log.write_all(format!("\n{line}").as_bytes()).await;
        // Read no more of it (the job replaced its log by something ferry does not read).
        kept.failed = true;
    }
}

/// Stop a running step: SIGTERM, the grace period (output still goes to the log), SIGKILL.
/// `exec_id`: the step's exec, when this ferry started it; else (a resumed step) its end is
/// its `.exit` file.
async fn stop_step<S>(
    engine: &DockerEngine,
    container: &str,
    exec_id: Option<&str>,
    output: &mut S,
    mut kept: Option<&mut Kept>,
    log: &mut LogSink<'_>,
) where
    S: futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
{
    let docker = engine.client();
    let spare = kept.as_deref().map(Kept::pids_file);
    let termed = kill_leftovers(engine, container, "TERM", spare.as_deref()).await;
    let grace_end = tokio::time::Instant::now() + engine.stop_grace;
    if termed {
        let mut tail = tokio::time::interval(TAIL_EVERY);
        loop {
            tokio::select! {
                item = output.next(), if exec_id.is_some() => match item {
                    Some(Ok(chunk)) => write_chunk(log, chunk).await,
                    _ => break,
                },
                _ = tail.tick(), if kept.is_some() => {
                    if let Some(k) = kept.as_deref_mut() {
                        pump_or_warn(k, log, false).await;
                        if exec_id.is_none() && k.status("exit").await.is_some() {
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep_until(grace_end) => break,
            }
        }
    }
    if let Some(k) = kept.as_deref_mut() {
        pump_or_warn(k, log, true).await;
    }
    let running = match (exec_id, kept.as_deref()) {
        (Some(id), _) => docker.inspect_exec(id).await.ok().and_then(|i| i.running),
        (None, Some(k)) => Some(k.status("exit").await.is_none()),
        (None, None) => None,
    };
    if running == Some(false) && kill_leftovers(engine, container, "KILL", None).await {
        return;
    }
    if running != Some(false) && kill_leftovers(engine, container, "KILL", None).await {
        let Some(exec_id) = exec_id else { return };
        // Give the exec a moment to be reaped.
        for _ in 0..20 {
            if docker
                .inspect_exec(exec_id)
                .await
                .ok()
                .and_then(|i| i.running)
                != Some(true)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Could not signal from inside (no shell, or the processes ignore it): kill the container
    // and start it again, so that after_script still has somewhere to run.
    tracing::warn!(container, "killing the build container to stop a step");
    let _ = docker
        .kill_container(
            container,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await;
    for _ in 0..50 {
        let running = docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running);
        if running != Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = docker
        .start_container(
            container,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
    {
        tracing::warn!(
            container,
            "restarting the build container: {}",
            one_line(&e)
        );
    }
}

/// Follows a kept step that an earlier ferry started ([`crate::engine::Engine::resume_step`]):
/// its output from byte `from` of its log, until its `.exit` file says it ended.
pub(super) async fn resume_step(
    engine: &DockerEngine,
    env: &JobEnv,
    step: &StepSpec,
    from: u64,
    started: std::time::SystemTime,
    log: &mut LogSink<'_>,
    cancel: &CancellationToken,
) -> Result<StepOutcome, EngineError> {
    if !engine.keeps_steps(env) {
        return Err(EngineError::Docker(format!(
            "step {} kept no output ferry can read here (a remote Docker daemon, or no steps dir)",
            step.name
        )));
    }
    let container = convert::build_container_name(env);
    let mut kept = Kept::open(env, step, from)?;
    // The step's own timeout counted while no ferry watched.
    let deadline = step.timeout.map(|t| {
        let away = std::time::SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        (crate::engine::deadline_after(t.saturating_sub(away)), t)
    });
    let mut tail = tokio::time::interval(TAIL_EVERY);
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut code_seen: Option<tokio::time::Instant> = None;
    loop {
        let sleep_deadline = async {
            match deadline {
                Some((d, _)) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tail.tick() => {
                pump_or_warn(&mut kept, log, false).await;
                if kept.over_cap(log).await {
                    stop_step(engine, &container, None, &mut futures::stream::empty(), Some(&mut kept), log).await;
                    return Ok(StepOutcome { exit_code: 1, oom_killed: false, timed_out: false });
                }
                if let Some(code) = kept.status("exit").await {
                    pump_or_warn(&mut kept, log, true).await;
                    let oom_killed = code != 0 && container_oom_killed(engine, &container).await;
                    return Ok(StepOutcome { exit_code: code, oom_killed, timed_out: false });
                }
            }
            _ = cancel.cancelled() => {
                let _ = log.flush().await;
                stop_step(engine, &container, None, &mut futures::stream::empty(), Some(&mut kept), log).await;
                return Err(EngineError::Cancelled);
            }
            _ = sleep_deadline => {
                let t = deadline.map(|(_, t)| t).unwrap_or_default();
                let line = joblog::error_line(&format!("Step {} timed out after {}", step.name, human(t)));
                let _ = log.write_all(format!("\n{line}").as_bytes()).await;
                stop_step(engine, &container, None, &mut futures::stream::empty(), Some(&mut kept), log).await;
                return Ok(StepOutcome { exit_code: STEP_TIMEOUT_EXIT_CODE, oom_killed: false, timed_out: true });
            }
            _ = poll.tick() => {
                if let Err(e) = check_container(engine, &container, started).await {
                    // What it wrote before it went is still the job's log.
                    pump_or_warn(&mut kept, log, true).await;
                    if let Some(code) = kept.status("exit").await {
                        return Ok(StepOutcome { exit_code: code, oom_killed: false, timed_out: false });
                    }
                    return Err(e);
                }
                if kept.status("exit").await.is_some() {
                    continue;
                }
                // The wrapper never started the step (ferry went away before the exec ran):
                // nothing will ever end it.
                let pids = kept.pids().await;
                if pids.is_empty()
                    && std::time::SystemTime::now().duration_since(started).unwrap_or_default() >= NEVER_STARTED_AFTER
                {
                    return Err(EngineError::Docker(format!(
                        "step {} never started in {container} (no {}.pids in the steps dir): it cannot be followed",
                        step.name, kept.name
                    )));
                }
                // The shell ended (its code is written, or the wrapper that waits for it was
                // killed), something it started still holds the output (as in `exec_step`).
                let shell_done = kept.status("code").await.is_some()
                    || match pids.first() {
                        Some(pid) => process_alive(engine, &container, *pid).await == Some(false),
                        None => false,
                    };
                if shell_done {
                    let t = *code_seen.get_or_insert_with(tokio::time::Instant::now);
                    if t.elapsed() >= POLL_EVERY {
                        kill_leftovers(engine, &container, "KILL", None).await;
                        // The wrapper went with them: the shell's code is the step's.
                        if t.elapsed() >= 5 * POLL_EVERY {
                            pump_or_warn(&mut kept, log, true).await;
                            let code = kept.status("code").await.unwrap_or(1);
                            return Ok(StepOutcome { exit_code: code, oom_killed: false, timed_out: false });
                        }
                    }
                }
            }
        }
    }
}

/// Whether process `pid` of the container exists, asked with a short exec (`None`: could
/// not be asked).
async fn process_alive(engine: &DockerEngine, container: &str, pid: u32) -> Option<bool> {
    let docker = engine.client();
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: Some("0".into()),
                cmd: Some(vec!["test".into(), "-d".into(), format!("/proc/{pid}")]),
                ..Default::default()
            },
        )
        .await
        .ok()?;
    let Ok(StartExecResults::Attached { mut output, .. }) = docker.start_exec(&exec.id, None).await
    else {
        return None;
    };
    let drain = async { while output.next().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .ok()?;
    match docker.inspect_exec(&exec.id).await.ok()?.exit_code {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    }
}

/// The build container of a resumed step still runs the step: it exists, runs, and has not
/// been started again since the step started (a restart kills the step's processes).
async fn check_container(
    engine: &DockerEngine,
    container: &str,
    step_started: std::time::SystemTime,
) -> Result<(), EngineError> {
    let inspected = engine
        .client()
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    let state = match inspected {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => return Err(EngineError::ContainerGone(container.to_string())),
        Err(e) => return Err(docker_err(&format!("inspecting {container}"), &e)),
        Ok(i) => i.state.unwrap_or_default(),
    };
    if state.running != Some(true) {
        return Err(EngineError::Docker(format!(
            "the build container {container} is not running (exit code {}): the step's processes are gone",
            state.exit_code.unwrap_or(-1)
        )));
    }
    let restarted = state
        .started_at
        .as_deref()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .is_some_and(|at| at > step_started + Duration::from_secs(1));
    if restarted {
        return Err(EngineError::Docker(format!(
            "the build container {container} was started again after the step started: the step's processes are gone"
        )));
    }
    Ok(())
}
