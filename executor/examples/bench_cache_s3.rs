//! Benchmark of the distributed cache against a real S3 server (run by bench/cache-s3.sh, which
//! starts moto's server and creates the bucket; not a test). In one run, against the same
//! server, with a deterministic cache tree (`--files` files, `--size-mb` MiB):
//!
//! 1. save: ferry's `cache::save` (what a job's cache step calls) on a host with no local copy
//!    vs `tar -c | zstd -1` to a file + one plain upload of it (`curl -T`, SigV4, same
//!    credentials); target ≤ 1.2×, judged at the baseline's compression level (`--level
//!    fastest`, zstd 1; ferry's default is gitlab-runner's, zstd 3);
//! 2. restore: ferry's `cache::restore` on a host with no local copy (download + extract) vs
//!    one plain download (`curl -o`) + `zstd -d | tar -x`; target ≤ 1.2×;
//! 3. save of an unchanged cache (target ≤ 0.2 s);
//! 4. restore served by the local tier vs the plain download of the same archive (target
//!    ≤ 0.3×), and vs ferry's restore that downloads. The tier restore moves the copy this
//!    host prepared in advance into place; that preparation (an extraction, in the background
//!    after each restore) is measured and printed on its own: the work moved off the job's
//!    path, it did not disappear.
//!
//! Medians of `--runs` runs, ferry and baseline alternating. Prints the figures and ratios.
//!
//! Usage: bench_cache_s3 --endpoint 127.0.0.1:PORT --bucket NAME --work DIR
//!        [--runs 3] [--files 30000] [--size-mb 200] [--level fastest|fast|default|...]
//!        [--single-put-max BYTES]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ferry_config::{CacheS3, CacheSection, Redacted, S3Auth};
use ferry_executor::artifacts::When;
use ferry_executor::cache::{
    CachePolicy, CacheSpec, CacheStore, RemoteCache, RestoreOutcome, SaveOutcome, object_prefix,
    preparations_done, restore, save,
};
use ferry_executor::jobfs::Limits;
use tokio_util::sync::CancellationToken;

/// Credentials of the local test server (moto accepts any): not a secret.
const ACCESS_KEY: &str = "AKIDFERRYBENCH";
const SECRET_KEY: &str = "ferry-bench-secret";
const KEY: &str = "bench-protected";
const BASELINE_OBJECT: &str = "baseline/cache.tar.zst";

struct Args {
    endpoint: String,
    bucket: String,
    work: PathBuf,
    runs: usize,
    files: u64,
    size: u64,
    /// `CACHE_COMPRESSION_LEVEL` of ferry's saves (`--level`; default: gitlab-runner's).
    level: Option<String>,
    /// Archives over this many bytes go up in parts while written (`--single-put-max`;
    /// default ferry's, 256 MiB; 0: every archive in parts, as before it had a single PUT).
    single_put_max: u64,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let need = |name: &str| {
        get(name).unwrap_or_else(|| {
            eprintln!(
                "usage: bench_cache_s3 --endpoint HOST:PORT --bucket NAME --work DIR \
                 [--runs 3] [--files 30000] [--size-mb 200] (missing {name})"
            );
            std::process::exit(2)
        })
    };
    let num = |name: &str, default: u64| match get(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bench_cache_s3: {name} wants a number, not {v:?}");
            std::process::exit(2)
        }),
    };
    Args {
        endpoint: need("--endpoint"),
        bucket: need("--bucket"),
        work: PathBuf::from(need("--work")),
        runs: num("--runs", 3).max(1) as usize,
        files: num("--files", 30_000).max(1),
        size: num("--size-mb", 200) * 1024 * 1024,
        level: get("--level"),
        single_put_max: num("--single-put-max", ferry_executor::cache::SINGLE_PUT_MAX),
    }
}

/// splitmix64: the tree must be the same in every run and with every version of every crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "fn",
    "let",
    "mut",
    "self",
    "return",
    "impl",
    "struct",
    "pub",
    "use",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "async",
    "await",
    "String",
    "Vec",
    "u64",
    "i32",
    "config",
    "cache",
    "path",
    "file",
    "value",
    "key",
    "error",
    "result",
    "build",
    "target",
    "deps",
    "module",
    "import",
    "export",
    "const",
    "function",
    "class",
    "def",
    "require",
    "package",
    "version",
    "\"name\":",
    "\"dependencies\":",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "==",
    "->",
    "=>",
    "0",
    "1",
    "42",
    "true",
    "false",
    "null",
    "node_modules",
    "index",
    "main",
    "test",
    "lib",
    "src",
];

fn text(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    while out.len() < size {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.push(if rng.below(9) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}

/// Half random 256-byte blocks, half blocks from a small fixed set (like object files).
fn binary(rng: &mut Rng, size: usize, blocks: &[[u8; 256]]) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for chunk in out.chunks_mut(256) {
        if rng.below(2) == 0 {
            rng.fill(chunk);
        } else {
            let b = &blocks[rng.below(blocks.len() as u64) as usize];
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
    out
}

/// The cache tree under `project/cache`: 90 % small text files (200 B – 4 KiB), 10 % medium
/// files (4 – 60 KiB, half text, half partly compressible binary), and one big random
/// (incompressible, like a downloaded package) file per 2,500 files taking the rest of the
/// size. Returns (files, bytes). Skipped when a tree of these parameters is already there.
fn generate(project: &Path, files: u64, size: u64) -> (u64, u64) {
    let stamp = project.join(format!(".generated-{files}-{size}"));
    let root = project.join("cache");
    let big = (files / 2500).max(1).min(files);
    let mut rng = Rng(0x00c0_ffee);
    let mut sizes = Vec::with_capacity(files as usize);
    for i in 0..files - big {
        sizes.push(if i % 10 < 9 {
            200 + rng.below(3_900)
        } else {
            4_096 + rng.below(57_344)
        });
    }
    let rest = size.saturating_sub(sizes.iter().sum());
    for i in 0..big {
        sizes.push(rest / big + if i == 0 { rest % big } else { 0 });
    }
    let total = sizes.iter().sum();
    if stamp.is_file() {
        return (files, total);
    }
    let _ = std::fs::remove_dir_all(project);
    let mut blocks = vec![[0u8; 256]; 16];
    for b in blocks.iter_mut() {
        rng.fill(b);
    }
    for (i, &len) in sizes.iter().enumerate() {
        let i = i as u64;
        let dir = root.join(format!("d{:02}/e{:02}", i % 50, (i / 50) % 30));
        let (name, content) = if i >= files - big {
            let mut v = vec![0u8; len as usize];
            rng.fill(&mut v);
            (format!("pkg{i}.jar"), v)
        } else if i % 10 < 9 || i % 20 == 9 {
            (format!("f{i}.js"), text(&mut rng, len as usize))
        } else {
            (format!("f{i}.o"), binary(&mut rng, len as usize, &blocks))
        };
        std::fs::create_dir_all(&dir).expect("creating the cache tree");
        std::fs::write(dir.join(name), content).expect("writing the cache tree");
    }
    std::fs::write(&stamp, b"").expect("stamp");
    (files, total)
}

fn host(root: &Path, a: &Args) -> CacheStore {
    let cache = CacheSection {
        kind: Some("s3".into()),
        s3: CacheS3 {
            server_address: a.endpoint.clone(),
            access_key: ACCESS_KEY.into(),
            secret_key: Redacted(SECRET_KEY.into()),
            bucket_name: a.bucket.clone(),
            bucket_location: "us-east-1".into(),
            insecure: true,
            authentication_type: S3Auth::AccessKey,
            ..CacheS3::default()
        },
        ..CacheSection::default()
    };
    CacheStore {
        root: root.to_path_buf(),
        namespace: "project/1".into(),
        disabled: false,
        remote: Some(RemoteCache {
            prefix: object_prefix(&cache, "benchtkn", 1),
            config: Arc::new(cache),
            request_timeout: Duration::from_secs(600),
            restore_attempts: 1,
            transfer_meter: None,
            single_put_max: a.single_put_max,
        }),
        format: Default::default(),
        compression: ferry_executor::compression::CompressionLevel::parse(
            "CACHE_COMPRESSION_LEVEL",
            a.level.as_deref(),
        )
        .0,
    }
}

fn spec() -> CacheSpec {
    CacheSpec {
        key: KEY.into(),
        fallback_keys: vec![],
        paths: vec!["cache".into()],
        untracked: false,
        policy: CachePolicy::PullPush,
        when: When::OnSuccess,
    }
}

/// The job log, each write with the moment it was made: where the time of a step went.
#[derive(Default)]
struct StampedLog(Vec<(Instant, String)>);

impl tokio::io::AsyncWrite for StampedLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let now = Instant::now();
        self.get_mut()
            .0
            .push((now, String::from_utf8_lossy(buf).into_owned()));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl StampedLog {
    fn text(&self) -> String {
        self.0.iter().map(|(_, l)| l.as_str()).collect()
    }

    /// When the first write containing `what` was made.
    fn at(&self, what: &str) -> Option<Instant> {
        self.0
            .iter()
            .find(|(_, l)| l.contains(what))
            .map(|(t, _)| *t)
    }

    /// The time between `start` (or the first write containing a previous mark) and each mark.
    fn phases(
        &self,
        start: Instant,
        marks: &[(&'static str, &str)],
    ) -> Vec<(&'static str, Duration)> {
        let mut last = start;
        let mut out = Vec::new();
        for (name, mark) in marks {
            if let Some(t) = self.at(mark) {
                out.push((*name, t.saturating_duration_since(last)));
                last = t;
            }
        }
        out
    }
}

/// A measured step: its wall time and where that went (from the job log's timing).
#[derive(Default, Clone)]
struct Timed {
    total: Duration,
    phases: Vec<(&'static str, Duration)>,
    /// This process's CPU time (all threads) during the step: what it costs on an idle host.
    cpu: Option<Duration>,
    /// After a restore: the preparation of the next copy it started in the background,
    /// waited for after the step (wall time from the restore's end, CPU time meanwhile).
    background: Option<(Duration, Option<Duration>)>,
}

/// utime + stime of this process, all threads (Linux, 100 ticks per second).
fn cpu_now() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// user + system CPU time of this process's finished children (the baseline's tar, zstd, curl).
fn children_cpu() -> Option<Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

impl Timed {
    fn plain(total: Duration) -> Timed {
        Timed {
            total,
            phases: Vec::new(),
            cpu: None,
            background: None,
        }
    }
}

async fn ferry_save(st: &CacheStore, project: &Path, expect: &str) -> Timed {
    let mut log = StampedLog::default();
    let limits = Limits::new(CancellationToken::new());
    let (t, cpu0) = (Instant::now(), cpu_now());
    let out = save(st, &spec(), project, true, &mut log, &limits)
        .await
        .expect("save");
    let total = t.elapsed();
    let cpu = cpu_now().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let text = log.text();
    let ok = matches!(
        out,
        SaveOutcome::Created { .. } | SaveOutcome::UpToDate { .. }
    );
    assert!(ok && text.contains(expect), "save: {out:?}\n{text}");
    let phases = log.phases(
        t,
        &[
            ("archive", "Created cache"),
            ("check", "Uploading cache"),
            ("upload", "Uploaded cache"),
        ],
    );
    Timed {
        total,
        phases,
        cpu,
        background: None,
    }
}

/// The marks of a restore that downloads or extracts, and of one served by the prepared copy.
const EXTRACTING: &[(&str, &str)] = &[
    ("lookup", "Downloading cache"),
    ("lookup", "using this host's copy"),
    ("download", "Downloaded"),
    ("extract", "Successfully extracted"),
];
const MOVING: &[(&str, &str)] = &[
    ("lookup", "using this host's copy"),
    ("move", "Successfully extracted"),
];

async fn ferry_restore(
    st: &CacheStore,
    into: &Path,
    expect: &str,
    marks: &[(&'static str, &str)],
) -> Timed {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).expect("restore dir");
    let mut log = StampedLog::default();
    let limits = Limits::new(CancellationToken::new());
    let (t, cpu0) = (Instant::now(), cpu_now());
    let out = restore(st, &spec(), into, &mut log, &limits)
        .await
        .expect("restore");
    let total = t.elapsed();
    let cpu = cpu_now().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let text = log.text();
    assert!(
        matches!(out, RestoreOutcome::Restored { .. }) && text.contains(expect),
        "restore: {out:?}\n{text}"
    );
    let phases = log.phases(t, marks);
    // The next copy, prepared in the background: waited for here, so that it neither
    // overlaps the next measured step nor goes unmeasured.
    let (t, cpu0) = (Instant::now(), cpu_now());
    let prepared = preparations_done(&st.root).await;
    let background = (
        t.elapsed(),
        cpu_now().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
    );
    for p in &prepared {
        if let Err(e) = &p.result {
            panic!("preparing the next copy: {e}");
        }
    }
    Timed {
        total,
        phases,
        cpu,
        background: (!prepared.is_empty()).then_some(background),
    }
}

fn run(what: &str, cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what}: {status}");
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{ACCESS_KEY}:{SECRET_KEY}"));
    c
}

fn url(a: &Args) -> String {
    format!("http://{}/{}/{BASELINE_OBJECT}", a.endpoint, a.bucket)
}

/// `tar -c | zstd -1` to a file, then one `curl -T` of it.
fn baseline_save(a: &Args, project: &Path, archive: &Path) -> Timed {
    let (t, cpu0) = (Instant::now(), children_cpu());
    run(
        "tar | zstd -1",
        Command::new("sh").arg("-c").arg(format!(
            "tar -cf - -C '{}' cache | zstd -1 -q -f -o '{}'",
            project.display(),
            archive.display()
        )),
    );
    let archived = t.elapsed();
    run("curl -T", curl().arg("-T").arg(archive).arg(url(a)));
    Timed {
        total: t.elapsed(),
        phases: vec![("archive", archived), ("upload", t.elapsed() - archived)],
        cpu: children_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
        background: None,
    }
}

/// One `curl -o` of the baseline's archive.
fn download(a: &Args, to: &Path) -> Duration {
    let _ = std::fs::remove_file(to);
    let t = Instant::now();
    run("curl -o", curl().arg("-o").arg(to).arg(url(a)));
    t.elapsed()
}

/// One `curl -o`, then `zstd -d | tar -x` into a fresh directory.
fn baseline_restore(a: &Args, into: &Path, archive: &Path) -> Timed {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).expect("restore dir");
    let (t, cpu0) = (Instant::now(), children_cpu());
    let downloaded = download(a, archive);
    run(
        "zstd -d | tar -x",
        Command::new("sh").arg("-c").arg(format!(
            "zstd -d -q -c '{}' | tar -xf - -C '{}'",
            archive.display(),
            into.display()
        )),
    );
    Timed {
        total: t.elapsed(),
        phases: vec![
            ("download", downloaded),
            ("extract", t.elapsed() - downloaded),
        ],
        cpu: children_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
        background: None,
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let n = v.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// The median of the totals, and of each phase ("archive 1.2 s + upload 0.8 s").
fn summary(runs: &[Timed]) -> (Duration, String) {
    let total = median(&runs.iter().map(|t| t.total).collect::<Vec<_>>());
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in runs.iter().flat_map(|t| &t.phases) {
        if !names.contains(n) {
            names.push(n);
        }
    }
    let phases: Vec<String> = names
        .iter()
        .map(|n| {
            let d: Vec<Duration> = runs
                .iter()
                .flat_map(|t| &t.phases)
                .filter(|(m, _)| m == n)
                .map(|(_, d)| *d)
                .collect();
            format!("{n} {:.3}", median(&d).as_secs_f64())
        })
        .collect();
    let mut detail = if phases.is_empty() {
        String::new()
    } else {
        format!(" ({})", phases.join(" + "))
    };
    let cpu: Vec<Duration> = runs.iter().filter_map(|t| t.cpu).collect();
    if !cpu.is_empty() {
        detail.push_str(&format!(" [CPU {:.2} s]", median(&cpu).as_secs_f64()));
    }
    let bg: Vec<&(Duration, Option<Duration>)> =
        runs.iter().filter_map(|t| t.background.as_ref()).collect();
    if !bg.is_empty() {
        let wall = median(&bg.iter().map(|b| b.0).collect::<Vec<_>>());
        let cpu: Vec<Duration> = bg.iter().filter_map(|b| b.1).collect();
        detail.push_str(&format!(
            "; then, in the background, the next copy prepared in {:.3} s",
            wall.as_secs_f64()
        ));
        if !cpu.is_empty() {
            detail.push_str(&format!(" [CPU {:.2} s]", median(&cpu).as_secs_f64()));
        }
    }
    (total, detail)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn size_of(p: &Path) -> String {
    let n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let project = a.work.join("project");
    let t = Instant::now();
    let (files, bytes) = generate(&project, a.files, a.size);
    println!(
        "cache tree: {files} files, {:.1} MiB under {} (ready in {})",
        bytes as f64 / 1024.0 / 1024.0,
        project.join("cache").display(),
        secs(t.elapsed())
    );
    let (host_a, host_b) = (a.work.join("host-a"), a.work.join("host-b"));
    let (store_a, store_b) = (host(&host_a, &a), host(&host_b, &a));
    let base_up = a.work.join("baseline-up.tar.zst");
    let base_down = a.work.join("baseline-down.tar.zst");
    let into = a.work.join("restored");
    // save, baseline save, restore, baseline restore, unchanged save, local tier, download
    let mut m: [Vec<Timed>; 7] = Default::default();
    for r in 0..a.runs {
        // A host with no local copy: archive + upload, the first save of a key.
        let _ = std::fs::remove_dir_all(&host_a);
        let _ = std::fs::remove_dir_all(&host_b);
        let (fs, bs) = if r % 2 == 0 {
            let f = ferry_save(&store_a, &project, "Uploaded cache").await;
            (f, baseline_save(&a, &project, &base_up))
        } else {
            let b = baseline_save(&a, &project, &base_up);
            (ferry_save(&store_a, &project, "Uploaded cache").await, b)
        };
        // Another host, no local copy: download + extract.
        let (fr, br) = if r % 2 == 0 {
            let f = ferry_restore(&store_b, &into, "Downloading cache", EXTRACTING).await;
            (f, baseline_restore(&a, &into, &base_down))
        } else {
            let b = baseline_restore(&a, &into, &base_down);
            let f = ferry_restore(&store_b, &into, "Downloading cache", EXTRACTING).await;
            (f, b)
        };
        // Nothing changed on host a: no archive, no upload.
        let unchanged = ferry_save(&store_a, &project, "not uploading").await;
        // Host b restores again: the remote object is the one it has, and the copy it
        // prepared after the restore above is moved into place.
        let tier = ferry_restore(&store_b, &into, "prepared copy", MOVING).await;
        let dl = Timed::plain(download(&a, &base_down));
        println!(
            "run {}: save {} / baseline {}, restore {} / baseline {}, unchanged save {}, \
             local-tier restore {} (then {} preparing the next copy in the background), \
             download {}",
            r + 1,
            secs(fs.total),
            secs(bs.total),
            secs(fr.total),
            secs(br.total),
            secs(unchanged.total),
            secs(tier.total),
            secs(tier.background.map_or(Duration::ZERO, |b| b.0)),
            secs(dl.total),
        );
        for (i, t) in [fs, bs, fr, br, unchanged, tier, dl]
            .into_iter()
            .enumerate()
        {
            m[i].push(t);
        }
    }
    let _ = std::fs::remove_dir_all(&into);
    let ferry_archive = store_a.archive_path(KEY).expect("archive path");
    println!(
        "archives: ferry {} (CACHE_COMPRESSION_LEVEL {}), baseline {} (zstd -1)",
        size_of(&ferry_archive),
        a.level.as_deref().unwrap_or("default"),
        size_of(&base_up)
    );
    let s: Vec<(Duration, String)> = m.iter().map(|v| summary(v)).collect();
    let ratio = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("medians of {} runs:", a.runs);
    let r = ratio(s[0].0, s[1].0);
    // The target compares the same work: ferry at the baseline's zstd level 1.
    let same_level = matches!(a.level.as_deref(), Some("fastest" | "fast"));
    println!(
        "  save: ferry {}{} vs tar|zstd -1 + curl -T {}{}: ratio {r:.2} (target <= 1.2: {})",
        secs(s[0].0),
        s[0].1,
        secs(s[1].0),
        s[1].1,
        if same_level {
            verdict(r <= 1.2)
        } else {
            "judged at the baseline's level, LEVEL=fastest; this is zstd 3 against its 1"
        }
    );
    let r = ratio(s[2].0, s[3].0);
    println!(
        "  restore: ferry {}{} vs curl -o + zstd -d|tar -x {}{}: ratio {r:.2} (target <= 1.2: {})",
        secs(s[2].0),
        s[2].1,
        secs(s[3].0),
        s[3].1,
        verdict(r <= 1.2)
    );
    println!(
        "  unchanged save: ferry {}{} (target <= 0.2 s: {})",
        secs(s[4].0),
        s[4].1,
        verdict(s[4].0 <= Duration::from_millis(200))
    );
    let r = ratio(s[5].0, s[6].0);
    println!(
        "  local-tier restore: ferry {}{} vs curl -o {}: ratio {r:.2} (target <= 0.3: {}); \
         vs ferry's restore with a download: ratio {:.2}",
        secs(s[5].0),
        s[5].1,
        secs(s[6].0),
        verdict(r <= 0.3),
        ratio(s[5].0, s[2].0)
    );
}
