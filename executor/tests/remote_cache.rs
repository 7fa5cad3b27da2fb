//! The distributed cache against a real S3 API (moto's server, installed by scripts/setup.sh
//! and started here on a free 127.0.0.1 port): two hosts (two local cache roots) sharing one
//! bucket, gitlab-runner's object names and zip archives, the local tier, and every failure
//! being a warning that lets the job go on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ferry_config::{CacheS3, CacheSection, Redacted, S3Auth};
use ferry_executor::artifacts::When;
use ferry_executor::cache::{
    CachePolicy, CacheSpec, CacheStore, RemoteCache, RestoreOutcome, SINGLE_PUT_MAX, SaveOutcome,
    object_prefix, preparations_done, restore, save,
};
use ferry_executor::jobfs::Limits;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "s3cr3t-k3y-never-logged";

struct Moto {
    port: u16,
    _child: Child,
}

/// The python with moto: FERRY_MOTO_PYTHON, else scripts/install-moto.sh's virtualenv, else
/// python3 from PATH.
fn moto_python() -> String {
    if let Ok(p) = std::env::var("FERRY_MOTO_PYTHON") {
        return p;
    }
    let tools = std::env::var("FERRY_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ferry-tools",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let venv = format!("{tools}/moto-venv/bin/python");
    if Path::new(&venv).is_file() {
        venv
    } else {
        "python3".into()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One moto server for this test binary. It runs under a small Python parent that kills it
/// when this process exits (its stdin closes), so no server outlives the tests.
fn moto() -> u16 {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = free_port();
        let script = "import subprocess, sys\n\
             p = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', sys.argv[1]],\n\
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
             sys.stdin.read()\n\
             p.kill()\n";
        let python = moto_python();
        let child = Command::new(&python)
            .args(["-c", script, &port.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {python} for moto's S3 server ({e}); run scripts/install-moto.sh")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http(port, "GET", "/", &[]).is_ok_and(|(code, _)| code == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto's S3 server did not start on 127.0.0.1:{port} within 30 s; \
                 install it with scripts/install-moto.sh (scripts/setup.sh runs it) or set \
                 FERRY_MOTO_PYTHON to a python that has moto[server]"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            port,
            _child: child,
        }
    })
    .port
}

/// A plain HTTP/1.1 request (moto does not check signatures): status and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok((code, body))
}

fn bucket(name: &str) -> String {
    let port = moto();
    let (code, _) = http(port, "PUT", &format!("/{name}"), &[]).unwrap();
    assert_eq!(code, 200, "creating bucket {name}");
    name.to_string()
}

/// The object names in a bucket (ListObjectsV2; moto answers unsigned requests).
fn objects(port: u16, bucket: &str) -> Vec<String> {
    let (code, body) = http(port, "GET", &format!("/{bucket}?list-type=2"), &[]).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let body = String::from_utf8_lossy(&body);
    body.split("<Key>")
        .skip(1)
        .filter_map(|p| p.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

fn section(port: u16, bucket: &str) -> CacheSection {
    CacheSection {
        kind: Some("s3".into()),
        s3: CacheS3 {
            server_address: format!("127.0.0.1:{port}"),
            access_key: "AKIDFERRYTEST".into(),
            secret_key: Redacted(SECRET.into()),
            bucket_name: bucket.into(),
            bucket_location: "us-east-1".into(),
            insecure: true,
            authentication_type: S3Auth::AccessKey,
            ..CacheS3::default()
        },
        ..CacheSection::default()
    }
}

fn host(root: &Path, cache: CacheSection) -> CacheStore {
    CacheStore {
        root: root.to_path_buf(),
        namespace: "runner/project/42".into(),
        disabled: false,
        remote: Some(RemoteCache {
            prefix: object_prefix(&cache, "abcdefghi", 42),
            config: Arc::new(cache),
            request_timeout: Duration::from_secs(30),
            restore_attempts: 1,
            transfer_meter: None,
            single_put_max: SINGLE_PUT_MAX,
        }),
        format: Default::default(),
        compression: Default::default(),
    }
}

/// A host whose archives over `single_put_max` bytes go up in parts (the default, 256 MiB,
/// would take archives that big to reach the multipart path here).
fn host_with_parts_over(root: &Path, cache: CacheSection, single_put_max: u64) -> CacheStore {
    let mut st = host(root, cache);
    st.remote.as_mut().unwrap().single_put_max = single_put_max;
    st
}

/// The ETag of the object a host last uploaded for `key` (its `remote.json`): S3 gives a
/// multipart object's as `"<md5 of the parts' md5s>-<parts>"`, a single PUT's without `-`.
fn uploaded_etag(root: &Path, key: &str) -> String {
    let state =
        std::fs::read(root.join("runner/project/42").join(key).join("remote.json")).unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
    state["e_tag"].as_str().unwrap().to_string()
}

/// `len` bytes that zstd cannot shrink.
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x = seed;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data
}

fn spec(key: &str, paths: &[&str]) -> CacheSpec {
    CacheSpec {
        key: key.into(),
        fallback_keys: vec![],
        paths: paths.iter().map(|p| p.to_string()).collect(),
        untracked: false,
        policy: CachePolicy::PullPush,
        when: When::OnSuccess,
    }
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

async fn do_save(st: &CacheStore, sp: &CacheSpec, dir: &Path) -> (SaveOutcome, String) {
    let mut log = Vec::new();
    let limits = Limits::new(CancellationToken::new());
    let out = save(st, sp, dir, true, &mut log, &limits).await.unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(!log.contains(SECRET), "{log}");
    (out, log)
}

async fn do_restore(st: &CacheStore, sp: &CacheSpec, dir: &Path) -> (RestoreOutcome, String) {
    let mut log = Vec::new();
    let limits = Limits::new(CancellationToken::new());
    let out = restore(st, sp, dir, &mut log, &limits).await.unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(!log.contains(SECRET), "{log}");
    (out, log)
}

fn restored(out: &RestoreOutcome) -> Option<(&str, bool)> {
    match out {
        RestoreOutcome::Restored { key, fallback, .. } => Some((key, *fallback)),
        _ => None,
    }
}

#[tokio::test]
async fn two_hosts_share_the_cache_and_each_keeps_a_local_tier() {
    let port = moto();
    let b = bucket("two-hosts");
    let tmp = tempfile::tempdir().unwrap();
    let (a, bh) = (
        host(&tmp.path().join("a"), section(port, &b)),
        host(&tmp.path().join("b"), section(port, &b)),
    );
    let (pa, pb) = (tmp.path().join("pa"), tmp.path().join("pb"));
    write(&pa, "vendor/lib.txt", b"from host a");
    let sp = spec("main-protected", &["vendor"]);

    let (out, log) = do_save(&a, &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }), "{out:?}\n{log}");
    assert!(log.contains("Uploaded cache"), "{log}");
    // gitlab-runner's object name: runner/<short token>/project/<id>/<key>
    assert!(
        objects(port, "two-hosts")
            .contains(&"runner/abcdefghi/project/42/main-protected".to_string())
    );

    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert_eq!(restored(&out), Some(("main-protected", false)), "{log}");
    assert!(log.contains("Downloading cache"), "{log}");
    assert_eq!(
        std::fs::read(pb.join("vendor/lib.txt")).unwrap(),
        b"from host a"
    );

    // Unchanged remote: the second restore on host b reads its local copy.
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert!(restored(&out).is_some(), "{log}");
    assert!(log.contains("using this host's copy"), "{log}");

    // Host b downloaded that archive and changed nothing: no upload either.
    let (out, log) = do_save(&bh, &sp, &pb).await;
    assert!(
        matches!(out, SaveOutcome::UpToDate { .. }),
        "{out:?}\n{log}"
    );
    assert!(log.contains("not uploading"), "{log}");

    // Nothing changed on host a: no second upload.
    let (out, log) = do_save(&a, &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::UpToDate { .. }), "{out:?}");
    assert!(log.contains("not uploading"), "{log}");

    // Host b changes the cache: host a downloads the new one.
    write(&pb, "vendor/lib.txt", b"changed on host b");
    let (_, log) = do_save(&bh, &sp, &pb).await;
    assert!(log.contains("Uploaded cache"), "{log}");
    let (_, log) = do_restore(&a, &sp, &pa).await;
    assert!(log.contains("Downloading cache"), "{log}");
    assert_eq!(
        std::fs::read(pa.join("vendor/lib.txt")).unwrap(),
        b"changed on host b"
    );
}

/// The local tier's prepared copy (tier.rs) is moved into place while the remote object is
/// the one this host has; once another host uploads a new one, the download is extracted and
/// the old copy is never used.
#[tokio::test]
async fn a_changed_remote_object_is_never_served_from_an_old_prepared_copy() {
    const USED: &str = "Using this host's prepared copy of the cache";
    let port = moto();
    let b = bucket("prepared");
    let tmp = tempfile::tempdir().unwrap();
    let (a, bh) = (
        host(&tmp.path().join("a"), section(port, &b)),
        host(&tmp.path().join("b"), section(port, &b)),
    );
    let pa = tmp.path().join("pa");
    let sp = spec("main-protected", &["vendor"]);
    write(&pa, "vendor/lib.txt", b"version 1");
    do_save(&a, &sp, &pa).await;
    let (_, log) = do_restore(&bh, &sp, &tmp.path().join("b1")).await;
    assert!(log.contains("Downloading cache"), "{log}");
    preparations_done(tmp.path()).await;
    let b2 = tmp.path().join("b2");
    let (_, log) = do_restore(&bh, &sp, &b2).await;
    assert!(
        log.contains("using this host's copy") && log.contains(USED),
        "{log}"
    );
    assert_eq!(
        std::fs::read(b2.join("vendor/lib.txt")).unwrap(),
        b"version 1"
    );
    preparations_done(tmp.path()).await;

    write(&pa, "vendor/lib.txt", b"version 2, longer");
    let (_, log) = do_save(&a, &sp, &pa).await;
    assert!(log.contains("Uploaded cache"), "{log}");
    let b3 = tmp.path().join("b3");
    let (_, log) = do_restore(&bh, &sp, &b3).await;
    assert!(
        log.contains("Downloading cache") && !log.contains(USED),
        "{log}"
    );
    assert_eq!(
        std::fs::read(b3.join("vendor/lib.txt")).unwrap(),
        b"version 2, longer"
    );
    preparations_done(tmp.path()).await;
}

#[tokio::test]
async fn fallback_keys_and_policies_work_across_hosts() {
    let port = moto();
    let b = bucket("fallbacks");
    let tmp = tempfile::tempdir().unwrap();
    let (a, bh) = (
        host(&tmp.path().join("a"), section(port, &b)),
        host(&tmp.path().join("b"), section(port, &b)),
    );
    let (pa, pb) = (tmp.path().join("pa"), tmp.path().join("pb"));
    write(&pa, "deps/x", b"x");
    do_save(&a, &spec("main", &["deps"]), &pa).await;

    let mut sp = spec("feature-1", &["deps"]);
    sp.fallback_keys = vec!["nope".into(), "main".into()];
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert_eq!(restored(&out), Some(("main", true)), "{log}");
    assert!(pb.join("deps/x").is_file());

    // policy: pull never uploads
    let mut pull = spec("pulled", &["deps"]);
    pull.policy = CachePolicy::Pull;
    assert_eq!(
        do_save(&bh, &pull, &pb).await.0,
        SaveOutcome::SkippedByPolicy
    );
    assert_eq!(
        objects(port, "fallbacks"),
        vec!["runner/abcdefghi/project/42/main".to_string()]
    );
}

#[tokio::test]
async fn shared_layout_leaves_out_the_runner() {
    let port = moto();
    let b = bucket("shared");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = section(port, &b);
    c.shared = true;
    c.path = Some("ci".into());
    let a = host(&tmp.path().join("a"), c);
    let pa = tmp.path().join("pa");
    write(&pa, "d/f", b"f");
    let (_, log) = do_save(&a, &spec("k", &["d"]), &pa).await;
    assert!(log.contains("Uploaded cache"), "{log}");
    assert_eq!(objects(port, "shared"), vec!["ci/project/42/k".to_string()]);
}

/// A cache gitlab-runner uploaded (its default `cache.zip` format, as the object of the key)
/// is restored by ferry.
#[tokio::test]
async fn a_gitlab_runner_zip_in_the_bucket_is_restored() {
    let port = moto();
    let b = bucket("gitlab-runner-zip");
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    zw.add_directory("node_modules/", opts).unwrap();
    zw.start_file("node_modules/a.js", opts).unwrap();
    zw.write_all(b"module.exports = 1\n").unwrap();
    zw.start_file("../escape.txt", opts).unwrap();
    zw.write_all(b"no").unwrap();
    let data = zw.finish().unwrap().into_inner();
    let (code, _) = http(
        port,
        "PUT",
        "/gitlab-runner-zip/runner/abcdefghi/project/42/npm-protected",
        &data,
    )
    .unwrap();
    assert_eq!(code, 200);

    let tmp = tempfile::tempdir().unwrap();
    let h = host(&tmp.path().join("h"), section(port, &b));
    let p = tmp.path().join("p");
    let (out, log) = do_restore(&h, &spec("npm-protected", &["node_modules"]), &p).await;
    assert!(restored(&out).is_some(), "{out:?}\n{log}");
    assert_eq!(
        std::fs::read(p.join("node_modules/a.js")).unwrap(),
        b"module.exports = 1\n"
    );
    assert!(!tmp.path().join("escape.txt").exists());
    assert!(log.contains("escape.txt"), "{log}");
}

/// An archive over the single-PUT size goes up in parts while it is written (the part of it
/// written before it passed that size read back from the file) and comes back whole.
#[tokio::test]
async fn a_big_archive_goes_up_in_parts_and_comes_back_whole() {
    let port = moto();
    let b = bucket("multipart");
    let tmp = tempfile::tempdir().unwrap();
    let (a, bh) = (
        host_with_parts_over(&tmp.path().join("a"), section(port, &b), 5 * 1024 * 1024),
        host(&tmp.path().join("b"), section(port, &b)),
    );
    let (pa, pb) = (tmp.path().join("pa"), tmp.path().join("pb"));
    // Incompressible: the archive stays over one part (16 MiB).
    let data = incompressible(20 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15);
    write(&pa, "big/blob", &data);
    let sp = spec("big", &["big"]);
    let (_, log) = do_save(&a, &sp, &pa).await;
    assert!(log.contains("Uploaded cache"), "{log}");
    assert!(
        uploaded_etag(&tmp.path().join("a"), "big").ends_with("-2\""),
        "two parts: {}",
        uploaded_etag(&tmp.path().join("a"), "big")
    );
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert!(restored(&out).is_some(), "{log}");
    assert!(log.contains("in 2 parallel ranges"), "{log}");
    assert!(std::fs::read(pb.join("big/blob")).unwrap() == data);
}

/// An archive up to the single-PUT size (256 MiB by default) goes up in one request once
/// written, and comes back whole.
#[tokio::test]
async fn an_archive_up_to_the_single_put_size_goes_up_in_one_request() {
    let port = moto();
    let b = bucket("single-put");
    let tmp = tempfile::tempdir().unwrap();
    let (a, bh) = (
        host(&tmp.path().join("a"), section(port, &b)),
        host(&tmp.path().join("b"), section(port, &b)),
    );
    let (pa, pb) = (tmp.path().join("pa"), tmp.path().join("pb"));
    let data = incompressible(20 * 1024 * 1024, 0x2545_f491_4f6c_dd1d);
    write(&pa, "big/blob", &data);
    write(&pa, "big/small.txt", b"and a small file");
    let sp = spec("big", &["big"]);
    let (_, log) = do_save(&a, &sp, &pa).await;
    assert!(log.contains("Uploaded cache"), "{log}");
    let etag = uploaded_etag(&tmp.path().join("a"), "big");
    assert!(!etag.contains('-'), "one PUT: {etag}");
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert!(restored(&out).is_some(), "{log}");
    assert!(std::fs::read(pb.join("big/blob")).unwrap() == data);
    assert_eq!(
        std::fs::read(pb.join("big/small.txt")).unwrap(),
        b"and a small file"
    );
}

#[tokio::test]
async fn over_max_uploaded_archive_size_is_a_warning() {
    let port = moto();
    let b = bucket("too-big");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = section(port, &b);
    c.max_uploaded_archive_size = 10;
    let a = host(&tmp.path().join("a"), c);
    let pa = tmp.path().join("pa");
    write(
        &pa,
        "d/f",
        b"some content that makes an archive over ten bytes",
    );
    let (out, log) = do_save(&a, &spec("k", &["d"]), &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }));
    assert!(log.contains("over MaxUploadedArchiveSize"), "{log}");
    assert!(objects(port, "too-big").is_empty());
}

#[tokio::test]
async fn a_missing_bucket_is_a_warning_and_the_job_goes_on() {
    let port = moto();
    let tmp = tempfile::tempdir().unwrap();
    let a = host(&tmp.path().join("a"), section(port, "no-such-bucket"));
    let pa = tmp.path().join("pa");
    write(&pa, "d/f", b"f");
    let (out, log) = do_save(&a, &spec("k", &["d"]), &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }));
    assert!(
        log.contains("WARNING") && log.contains("Failed to upload cache"),
        "{log}"
    );
    let pb = tmp.path().join("pb");
    let b = host(&tmp.path().join("b"), section(port, "no-such-bucket"));
    let (out, _) = do_restore(&b, &spec("k", &["d"]), &pb).await;
    assert_eq!(out, RestoreOutcome::NotRestored);
}

#[tokio::test]
async fn an_unreachable_store_is_a_warning_and_the_local_copy_is_used() {
    let port = free_port(); // nothing listens
    let tmp = tempfile::tempdir().unwrap();
    let a = host(&tmp.path().join("a"), section(port, "b"));
    let pa = tmp.path().join("pa");
    write(&pa, "d/f", b"f");
    let sp = spec("k", &["d"]);
    let (out, log) = do_save(&a, &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }));
    assert!(log.contains("Failed to upload cache"), "{log}");
    std::fs::remove_dir_all(&pa).unwrap();
    let (out, log) = do_restore(&a, &sp, &pa).await;
    assert!(restored(&out).is_some(), "{log}");
    assert!(log.contains("WARNING"), "{log}");
    assert!(log.contains("using this host's copy"), "{log}");
}

/// A server that refuses every request as S3 does for a wrong key.
fn refusing_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            let body = "<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
            let _ = write!(
                s,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test]
async fn wrong_credentials_are_a_warning_without_the_secret() {
    let port = refusing_server();
    let tmp = tempfile::tempdir().unwrap();
    let a = host(&tmp.path().join("a"), section(port, "b"));
    let pa = tmp.path().join("pa");
    write(&pa, "d/f", b"f");
    let sp = spec("k", &["d"]);
    let (out, log) = do_save(&a, &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }));
    assert!(log.contains("403"), "{log}");
    assert!(log.contains("Failed to upload cache"), "{log}");
    let pb = tmp.path().join("pb");
    let b = host(&tmp.path().join("b"), section(port, "b"));
    let (out, log) = do_restore(&b, &sp, &pb).await;
    assert_eq!(out, RestoreOutcome::NotRestored, "{log}");
    assert!(log.contains("403"), "{log}");
}

/// A TCP proxy to `port` that forwards `budget` bytes of requests in all, then drops every
/// connection: the store going down in the middle of an upload.
fn dying_proxy(port: u16, budget: u64) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = l.local_addr().unwrap().port();
    let left = Arc::new(AtomicU64::new(budget));
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            if left.load(Ordering::SeqCst) == 0 {
                continue; // dropped: connection closed
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let left = left.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n as u64,
                    };
                    let before = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                            Some(l.saturating_sub(n))
                        })
                        .unwrap();
                    if before < n || s_out.write_all(&buf[..n as usize]).is_err() {
                        break;
                    }
                }
                let _ = c_in.shutdown(std::net::Shutdown::Both);
                let _ = s_out.shutdown(std::net::Shutdown::Both);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    proxy
}

/// The store going down in the middle of an upload, one PUT or in parts: a restore gets the
/// previous archive, never part of the new one.
#[tokio::test]
async fn the_store_going_down_mid_upload_leaves_the_previous_archive() {
    let port = moto();
    // (bucket, archives over this go up in parts)
    for (b, single_put_max) in [
        ("mid-upload", SINGLE_PUT_MAX),
        ("mid-upload-parts", 5 * 1024 * 1024),
    ] {
        let b = bucket(b);
        let tmp = tempfile::tempdir().unwrap();
        let sp = spec("k", &["d"]);
        let first = host(&tmp.path().join("a"), section(port, &b));
        let pa = tmp.path().join("pa");
        write(&pa, "d/f", b"version 1");
        let (_, log) = do_save(&first, &sp, &pa).await;
        assert!(log.contains("Uploaded cache"), "{log}");

        // Another host's upload of a big archive dies after 3 MB.
        let proxy = dying_proxy(port, 3 * 1024 * 1024);
        let dying = host_with_parts_over(&tmp.path().join("b"), section(proxy, &b), single_put_max);
        let pb = tmp.path().join("pb");
        write(
            &pb,
            "d/f",
            &incompressible(24 * 1024 * 1024, 0x2545_f491_4f6c_dd1d),
        );
        let (out, log) = do_save(&dying, &sp, &pb).await;
        assert!(matches!(out, SaveOutcome::Created { .. }), "{out:?}");
        assert!(log.contains("Failed to upload cache"), "{log}");

        // A third host restores the complete first version.
        let pc = tmp.path().join("pc");
        let third = host(&tmp.path().join("c"), section(port, &b));
        let (out, log) = do_restore(&third, &sp, &pc).await;
        assert!(restored(&out).is_some(), "{log}");
        assert_eq!(std::fs::read(pc.join("d/f")).unwrap(), b"version 1");
        assert_eq!(
            objects(port, &b),
            vec!["runner/abcdefghi/project/42/k".to_string()]
        );
    }
}

/// A TCP proxy to `port` that stops forwarding a connection's request once it passed `limit`
/// bytes (the connection stays open, the request never ends: a stalled part upload); other
/// connections go through. `stalled` is set when that happened.
fn stalling_proxy(port: u16, limit: u64, stalled: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::sync::atomic::Ordering;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let stalled = stalled.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut sent = 0u64;
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    sent += n as u64;
                    if sent > limit {
                        stalled.store(true, Ordering::SeqCst);
                        // Held open, never forwarded, until the client gives up.
                        while !matches!(c_in.read(&mut buf), Ok(0) | Err(_)) {}
                        break;
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Both);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    proxy
}

/// The multipart uploads of `bucket` not completed nor aborted (ListMultipartUploads).
fn incomplete_uploads(port: u16, bucket: &str) -> usize {
    let (code, body) = http(port, "GET", &format!("/{bucket}?uploads"), &[]).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).matches("<UploadId>").count()
}

/// A job cancelled while its cache goes up aborts the multipart upload: the bucket keeps no
/// parts of it (AbortMultipartUpload), and nothing is uploaded after the cancel.
#[tokio::test]
async fn a_cancelled_save_aborts_its_multipart_upload() {
    cancelled_upload("cancelled", 1024 * 1024, 1).await;
}

/// A job cancelled while its archive goes up in one PUT: the request is dropped half-sent, and
/// the store never makes that part of an archive an object.
#[tokio::test]
async fn a_cancelled_single_put_leaves_no_object() {
    cancelled_upload("cancelled-put", SINGLE_PUT_MAX, 0).await;
}

/// Saves a 24 MiB archive through a proxy that stalls every request after 1 MiB, cancels the
/// job once one stalled (when `uploads` multipart uploads are in progress), and checks that
/// the save ends at once, leaving no object and no incomplete upload.
async fn cancelled_upload(b: &str, single_put_max: u64, uploads: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let port = moto();
    let b = bucket(b);
    let tmp = tempfile::tempdir().unwrap();
    let stalled = Arc::new(AtomicBool::new(false));
    // Part uploads (16 MiB) and PUTs stall; creating and aborting an upload go through.
    let proxy = stalling_proxy(port, 1024 * 1024, stalled.clone());
    let st = host_with_parts_over(&tmp.path().join("a"), section(proxy, &b), single_put_max);
    let pa = tmp.path().join("pa");
    write(
        &pa,
        "big/blob",
        &incompressible(24 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15),
    );
    let cancel = CancellationToken::new();
    let canceller = {
        let (cancel, stalled, b) = (cancel.clone(), stalled.clone(), b.clone());
        tokio::spawn(async move {
            while !stalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = tokio::task::spawn_blocking(move || incomplete_uploads(port, &b));
            let before = before.await.unwrap();
            cancel.cancel();
            before
        })
    };
    let started = Instant::now();
    let mut log = Vec::new();
    let limits = Limits::new(cancel);
    let out = save(&st, &spec("big", &["big"]), &pa, true, &mut log, &limits).await;
    let log = String::from_utf8_lossy(&log).into_owned();
    assert_eq!(
        canceller.await.unwrap(),
        uploads,
        "uploads in progress: {log}"
    );
    assert!(out.is_err(), "cancelled: {out:?} {log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the cancel ends the save at once: {:?}",
        started.elapsed()
    );
    assert_eq!(incomplete_uploads(port, &b), 0, "{log}");
    assert!(objects(port, &b).is_empty(), "{log}");
}

/// `CACHE_COMPRESSION_FORMAT=zip`: archives in gitlab-runner's default format, for fleets with
/// gitlab-runners older than 16.2 (which cannot read tar + zstd); switching formats rewrites.
#[tokio::test]
async fn zip_archives_for_older_gitlab_runners() {
    let port = moto();
    let b = bucket("zip-format");
    let tmp = tempfile::tempdir().unwrap();
    let mut a = host(&tmp.path().join("a"), section(port, &b));
    a.format = ferry_executor::cache::CacheFormat::Zip;
    let pa = tmp.path().join("pa");
    write(&pa, "d/f", b"zipped");
    let sp = spec("k", &["d"]);
    let (_, log) = do_save(&a, &sp, &pa).await;
    assert!(log.contains("cache.zip: 1 files"), "{log}");
    assert!(log.contains("Uploaded cache"), "{log}");
    let local = std::fs::read(a.archive_path("k").unwrap()).unwrap();
    assert_eq!(&local[..2], b"PK");

    let bh = host(&tmp.path().join("b"), section(port, &b));
    let pb = tmp.path().join("pb");
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert!(restored(&out).is_some(), "{log}");
    assert_eq!(std::fs::read(pb.join("d/f")).unwrap(), b"zipped");
    let _ = &bh;

    // Same files, other format: written and uploaded again.
    let (out, log) = do_save(&host(&tmp.path().join("a"), section(port, &b)), &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }), "{out:?}\n{log}");
    assert!(log.contains("cache.tar.zst: 1 files"), "{log}");
}

/// TRANSFER_METER_FREQUENCY: gitlab-runner's meter lines while the archive goes up and comes
/// down, with the archive's size as the total.
#[tokio::test]
async fn the_transfer_meter_shows_uploads_and_downloads() {
    let port = moto();
    let b = bucket("metered");
    let tmp = tempfile::tempdir().unwrap();
    let metered = |root: &Path| {
        let mut st = host(root, section(port, &b));
        st.remote.as_mut().unwrap().transfer_meter = Some(Duration::from_secs(1));
        st
    };
    let (a, bh) = (
        metered(&tmp.path().join("a")),
        metered(&tmp.path().join("b")),
    );
    let (pa, pb) = (tmp.path().join("pa"), tmp.path().join("pb"));
    write(&pa, "vendor/lib.txt", b"metered content");
    let sp = spec("metered", &["vendor"]);
    let (out, log) = do_save(&a, &sp, &pa).await;
    assert!(matches!(out, SaveOutcome::Created { .. }), "{out:?}\n{log}");
    let size = std::fs::metadata(a.archive_path("metered").unwrap())
        .unwrap()
        .len();
    let total = format!("{size} B/{size} B (");
    assert!(log.contains("\rUploading cache 0 B/"), "{log:?}");
    assert!(
        log.contains(&format!("\rUploading cache {total}")),
        "{log:?}"
    );
    let (out, log) = do_restore(&bh, &sp, &pb).await;
    assert_eq!(restored(&out), Some(("metered", false)), "{log}");
    assert!(
        log.contains(&format!("\rDownloading cache {total}")),
        "{log:?}"
    );
    // Without the variable, no meter.
    let (_, log) = do_save(&host(&tmp.path().join("c"), section(port, &b)), &sp, &pa).await;
    assert!(!log.contains('\r'), "{log:?}");
}
