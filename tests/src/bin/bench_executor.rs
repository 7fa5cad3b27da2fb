//! Benchmark of ferry's Docker executor end to end (run by bench/executor.sh; not a test).
//!
//! 1. Latency: one trivial job (`echo hi`) from the moment the fake GitLab hands it out to the
//!    moment it receives the final `success` PUT, against `docker run --rm <busybox> sh -c 'echo
//!    hi'`, alternating, `--runs` times each; medians and their ratio (target ≤ 1.25).
//!    In the same run, alternating with both, the same job through a second `ferry run` started
//!    with `--no-journal` (no journal entry, no kept step output: docs/crash-safety.md); the
//!    medians with and without journaling and their ratio (target ≤ 1.05).
//! 2. Throughput: `--jobs` trivial jobs with `concurrent = --concurrent`, from the first hand-out
//!    to the last final PUT, against `seq N | xargs -P C docker run --rm ...`; throughput ratio
//!    (target ≥ 0.85).
//!
//! Usage: bench_executor [--runs 10] [--jobs 50] [--concurrent 4]   (`--jobs 0`: no throughput run)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::e2e::{BUSYBOX, Harness, Setup};
use ferry_tests::fake_gitlab::JobStatus;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// utime + stime of a process (Linux, 100 ticks per second).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn docker_run_once() -> Duration {
    tokio::task::spawn_blocking(|| {
        let t = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", BUSYBOX, "sh", "-c", "echo hi"])
            .stdout(Stdio::null())
            .status()
            .expect("docker run");
        assert!(status.success(), "docker run failed");
        t.elapsed()
    })
    .await
    .expect("docker run task")
}

/// Push one job; returns (hand-out → final PUT) once it succeeded.
async fn ferry_job_once(h: &Harness) -> Duration {
    let id = h.push(h.job("bench").script(["echo hi"]));
    let deadline = Instant::now() + Duration::from_secs(300);
    let handed_out = loop {
        if h.gitlab.job(id).is_some() {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "job {id} never handed out");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    loop {
        match h.gitlab.job_status(id) {
            Some(JobStatus::Success) => return handed_out.elapsed(),
            Some(s) if !s.is_active() => panic!("job {id} ended {s:?}: {}", h.describe(id)),
            _ => {}
        }
        assert!(Instant::now() < deadline, "job {id}: {}", h.describe(id));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = arg("--runs", 10).max(1);
    let jobs = arg("--jobs", 50);
    let concurrent = arg("--concurrent", 4).max(1);
    println!("ferry binary: {}", ferry_tests::ferry_bin().display());

    // ---- latency -------------------------------------------------------------------------
    let Some(mut h) = Harness::start(Setup::default()).await else {
        std::process::exit(2);
    };
    // The same runner setup through a second ferry that journals nothing (`--no-journal`).
    let Some(mut plain) = Harness::prepare(Setup::default()).await else {
        std::process::exit(2);
    };
    plain.ferry_args.push("--no-journal".into());
    plain.spawn_ferry();
    // Warm-up (first use of the image, page cache, ferry's first Docker connection).
    ferry_job_once(&h).await;
    ferry_job_once(&plain).await;
    docker_run_once().await;
    let (mut ferry, mut unjournaled, mut docker) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Which ferry goes first alternates, so that neither always follows `docker run`.
        let (f, n) = if i % 2 == 0 {
            let f = ferry_job_once(&h).await;
            (f, ferry_job_once(&plain).await)
        } else {
            let n = ferry_job_once(&plain).await;
            (ferry_job_once(&h).await, n)
        };
        let d = docker_run_once().await;
        println!(
            "run {:>2}: ferry job {}   --no-journal {}   docker run {}",
            i + 1,
            secs(f),
            secs(n),
            secs(d)
        );
        ferry.push(f);
        unjournaled.push(n);
        docker.push(d);
    }
    h.stop().await;
    plain.stop().await;
    drop(h);
    drop(plain);
    let (fm, nm, dm) = (
        median(&mut ferry),
        median(&mut unjournaled),
        median(&mut docker),
    );
    let ratio = fm.as_secs_f64() / dm.as_secs_f64();
    println!(
        "latency: median ferry job {} vs docker run {}: ratio {ratio:.2} (target <= 1.25) {}",
        secs(fm),
        secs(dm),
        if ratio <= 1.25 { "OK" } else { "MISSED" }
    );
    let ratio = fm.as_secs_f64() / nm.as_secs_f64();
    println!(
        "journaling: median ferry job {} vs --no-journal {}: ratio {ratio:.3} (target <= 1.05) {}",
        secs(fm),
        secs(nm),
        if ratio <= 1.05 { "OK" } else { "MISSED" }
    );
    if jobs == 0 {
        return;
    }

    // ---- throughput ----------------------------------------------------------------------
    let Some(mut h) = Harness::start(Setup::default().concurrent(concurrent)).await else {
        std::process::exit(2);
    };
    ferry_job_once(&h).await; // warm-up
    let ids: Vec<u64> = (0..jobs)
        .map(|_| h.push(h.job("bench").script(["echo hi"])))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first: Option<Instant> = None;
    // Per job: when it was handed out and when its final update arrived.
    let mut seen: Vec<(Option<Instant>, Option<Instant>)> = vec![(None, None); ids.len()];
    loop {
        let now = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            if let Some(job) = h.gitlab.job(*id) {
                seen[i].0.get_or_insert(now);
                if !job.status.is_active() {
                    seen[i].1.get_or_insert(now);
                }
            }
        }
        if first.is_none() && seen.iter().any(|s| s.0.is_some()) {
            first = Some(now);
        }
        if seen.iter().all(|s| s.1.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "throughput run did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ferry_total = first.map(|f| f.elapsed()).unwrap_or_default();
    let mut per_job: Vec<Duration> = seen
        .iter()
        .filter_map(|(a, b)| Some(b.as_ref()?.duration_since(*a.as_ref()?)))
        .collect();
    let busy: Duration = per_job.iter().sum();
    println!(
        "throughput run: median job (hand-out -> final PUT) {}, slots busy {:.0}% of the time",
        secs(median(&mut per_job)),
        100.0 * busy.as_secs_f64() / (ferry_total.as_secs_f64() * concurrent as f64)
    );
    let failed: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| h.gitlab.job_status(*id) != Some(JobStatus::Success))
        .collect();
    assert!(failed.is_empty(), "jobs not successful: {failed:?}");
    if let Some(cpu) = h.pid().and_then(cpu_time) {
        println!(
            "ferry's own CPU time for the whole throughput run: {} ({:.0} ms per job)",
            secs(cpu),
            cpu.as_secs_f64() * 1000.0 / (jobs + 1) as f64
        );
    }
    h.stop().await;
    drop(h);

    let xargs = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let status = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "seq {jobs} | xargs -P{concurrent} -I{{}} docker run --rm {BUSYBOX} sh -c 'echo hi' >/dev/null"
                ),
            ])
            .status()
            .expect("xargs docker run");
        assert!(status.success(), "xargs docker run failed");
        t.elapsed()
    })
    .await
    .expect("xargs task");
    let ferry_tp = jobs as f64 / ferry_total.as_secs_f64();
    let docker_tp = jobs as f64 / xargs.as_secs_f64();
    let ratio = ferry_tp / docker_tp;
    println!(
        "throughput: {jobs} jobs, concurrent {concurrent}: ferry {} ({ferry_tp:.2} jobs/s) vs xargs -P{concurrent} docker run {} ({docker_tp:.2}/s): ratio {ratio:.2} (target >= 0.85) {}",
        secs(ferry_total),
        secs(xargs),
        if ratio >= 0.85 { "OK" } else { "MISSED" }
    );
}
