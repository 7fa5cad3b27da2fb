//! Docker restarting mid-job, end to end through the real `ferry run` binary, the fake GitLab and
//! the real Docker engine: ferry's runner talks to Docker through a Unix-socket proxy; while a
//! step is running the proxy goes away (its socket is removed and every open connection is
//! dropped, as when the daemon restarts), then comes back.
//!
//! The job must fail as a system failure (not a script failure, not hanging until the job
//! timeout) with a one-line cause in its log, ferry must keep running, and it must take and run
//! the next job once Docker is back.
//!
//! Needs Docker and the images of scripts/build-test-images.sh (built on first use); without
//! Docker the test prints `SKIP: <reason>` and returns.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::e2e::{Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;
use tokio::task::JoinSet;

/// A Unix socket that forwards every connection to the real Docker socket, and can be brought
/// down (socket removed, every open connection dropped) and up again.
struct DockerProxy {
    path: PathBuf,
    target: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DockerProxy {
    fn new(path: &Path) -> Self {
        let target = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        DockerProxy {
            path: path.to_path_buf(),
            target,
            task: None,
            open: Default::default(),
        }
    }

    fn up(&mut self) {
        assert!(self.task.is_none(), "the proxy is already up");
        let listener =
            tokio::net::UnixListener::bind(&self.path).expect("binding the proxy socket");
        let target = self.target.clone();
        let open = self.open.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        let target = target.clone();
                        let open = open.clone();
                        conns.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::UnixStream::connect(&target).await {
                                open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }

    /// Stop listening, remove the socket and drop every open connection; returns how many
    /// connections were open.
    async fn down(&mut self) -> usize {
        let open = self.open.swap(0, std::sync::atomic::Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.path);
        open
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restart_mid_job_fails_the_job_as_a_system_failure_and_the_next_job_runs() {
    let sock_dir = tempfile::tempdir().expect("temp dir");
    let sock = sock_dir.path().join("docker.sock");
    let mut proxy = DockerProxy::new(&sock);
    // Only bind once Docker is known to be usable (Harness::start checks and may skip).
    let setup = Setup::default().docker(&format!("host = \"unix://{}\"", sock.display()));
    let Some(mut h) = Harness::prepare(setup).await else {
        return;
    };
    proxy.up();
    h.spawn_ferry();

    // Longer than the bound below: a step that waits for the script to end would be caught.
    let id = h.push(
        h.job("docker-restarts")
            .script(["echo started", "sleep 300"]),
    );
    h.wait_trace(id, "\nstarted", Duration::from_secs(120))
        .await;

    let open = proxy.down().await;
    assert!(
        open > 0,
        "no Docker connection was open while the step ran: {}",
        h.describe(id)
    );
    let went_down = Instant::now();
    let job = h.wait_final(id, Duration::from_secs(60)).await;
    let took = went_down.elapsed();

    let trace = h.expect(&job, JobStatus::Failed, Some("runner_system_failure"));
    assert_eq!(job.exit_code, None, "{}", h.describe(id));
    assert!(
        !trace.contains("Job failed: exit code"),
        "reported as a script failure: {}",
        h.describe(id)
    );
    let cause = trace
        .lines()
        .find(|l| l.contains("ERROR:") && l.contains("Docker"))
        .unwrap_or_else(|| panic!("no ERROR line names Docker: {}", h.describe(id)));
    assert!(!cause.contains("docker: docker:"), "{cause}");
    assert!(
        cause.contains("Docker daemon") && cause.contains("step script"),
        "{cause}"
    );
    assert!(trace.contains("Job failed"), "{trace}");
    println!("job failed {took:?} after Docker went away; cause: {cause}");

    assert!(
        h.ferry_running(),
        "ferry exited after Docker went away; log:\n{}",
        h.ferry_log()
    );

    // Docker is back on the same socket: ferry takes the next job and runs it.
    proxy.up();
    h.assert_takes_next_job().await;
    assert!(h.ferry_running(), "ferry exited; log:\n{}", h.ferry_log());
    let status = h.stop().await;
    assert!(status.success(), "ferry exit status {status}");
}
