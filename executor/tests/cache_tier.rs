//! The local tier's prepared copy (executor/src/cache/tier.rs): a restore moves a tree
//! extracted in advance into the project dir instead of extracting, only when that gives
//! what the extraction gives, once, never through a link, never from another archive, never
//! half of one.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_executor::artifacts::When;
use ferry_executor::cache::{
    CachePolicy, CacheSpec, CacheStore, RestoreOutcome, SaveOutcome, evict, preparations_done,
    restore, save,
};
use ferry_executor::jobfs::Limits;
use tokio_util::sync::CancellationToken;

const USED: &str = "Using this host's prepared copy of the cache";

fn store(root: &Path) -> CacheStore {
    CacheStore {
        root: root.to_path_buf(),
        namespace: "project/42".into(),
        disabled: false,
        remote: None,
        format: Default::default(),
        compression: Default::default(),
    }
}

fn spec(paths: &[&str]) -> CacheSpec {
    CacheSpec {
        key: "k".into(),
        fallback_keys: vec![],
        paths: paths.iter().map(|p| p.to_string()).collect(),
        untracked: false,
        policy: CachePolicy::PullPush,
        when: When::OnSuccess,
    }
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

async fn do_save(st: &CacheStore, sp: &CacheSpec, dir: &Path) -> SaveOutcome {
    let mut log = Vec::new();
    let limits = Limits::new(CancellationToken::new());
    save(st, sp, dir, true, &mut log, &limits).await.unwrap()
}

async fn do_restore(st: &CacheStore, sp: &CacheSpec, dir: &Path) -> (RestoreOutcome, String) {
    let mut log = Vec::new();
    let limits = Limits::new(CancellationToken::new());
    let out = restore(st, sp, dir, &mut log, &limits).await.unwrap();
    (out, String::from_utf8(log).unwrap())
}

/// Waits for the background preparations of caches under `cache`; each must have made a copy.
async fn prepared(cache: &Path) -> usize {
    let done = preparations_done(cache).await;
    for p in &done {
        assert!(p.result.is_ok(), "{p:?}");
    }
    done.len()
}

fn key_dir(cache: &Path) -> PathBuf {
    cache.join("project/42/k")
}

/// Every entry below `dir`: path, kind, mode, size, mtime (files), link target, content.
fn describe(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let line = if m.is_symlink() {
                format!("{rel} -> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("{rel}/ {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
            } else {
                format!(
                    "{rel} {:o} {}:{} {} {} {:?}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    m.len(),
                    m.mtime(),
                    std::fs::read_to_string(&p).unwrap()
                )
            };
            out.push(line);
        }
    }
    out.sort();
    out
}

fn project(p: &Path) {
    write(p, "deps/a/lib.js", "module a");
    write(p, "deps/b/lib.js", "module b");
    write(p, "tool/bin/run", "#!/bin/sh");
    std::fs::set_permissions(
        p.join("tool/bin/run"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::set_permissions(p.join("deps/b"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("../deps/a/lib.js", p.join("tool/lib")).unwrap();
    std::fs::File::options()
        .append(true)
        .open(p.join("deps/a/lib.js"))
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
}

/// After a restore, the next copy is prepared in the background; the next restore moves it
/// into place and the project dir holds exactly what an extraction gives. Of two restores at
/// once, one gets it; the other extracts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_copy_is_used_once_and_gives_what_extraction_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    project(&p);
    let (st, sp) = (store(&cache), spec(&["deps", "tool"]));
    assert!(matches!(
        do_save(&st, &sp, &p).await,
        SaveOutcome::Created { .. }
    ));

    let r1 = tmp.path().join("r1");
    let (out, log) = do_restore(&st, &sp, &r1).await;
    let RestoreOutcome::Restored { files, .. } = out else {
        panic!("{out:?} {log}")
    };
    assert!(!log.contains(USED), "nothing was prepared yet: {log}");
    assert_eq!(prepared(&cache).await, 1);
    assert!(key_dir(&cache).join(".ferry-prepared/tree/deps").is_dir());
    let extracted = describe(&r1);
    assert!(extracted.iter().any(|l| l.starts_with("tool/lib -> ")));

    let r2 = tmp.path().join("r2");
    let (out, log) = do_restore(&st, &sp, &r2).await;
    assert!(
        matches!(out, RestoreOutcome::Restored { files: f, .. } if f == files),
        "{out:?} {log}"
    );
    assert!(log.contains(USED), "{log}");
    assert!(log.contains("Successfully extracted cache"), "{log}");
    assert_eq!(describe(&r2), extracted);
    // Taken: not there until the next one is ready.
    assert_eq!(prepared(&cache).await, 1);

    let (r3, r4) = (tmp.path().join("r3"), tmp.path().join("r4"));
    let ((_, log3), (_, log4)) = tokio::join!(do_restore(&st, &sp, &r3), do_restore(&st, &sp, &r4));
    assert_eq!(
        [&log3, &log4].iter().filter(|l| l.contains(USED)).count(),
        1,
        "{log3}\n{log4}"
    );
    assert_eq!(describe(&r3), extracted);
    assert_eq!(describe(&r4), extracted);
    prepared(&cache).await;
    let leftovers: Vec<_> = std::fs::read_dir(key_dir(&cache))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A link where a cache path goes (or anything else there): the copy is not moved, the link is
/// not followed, the restore extracts as before (a link in the way of a directory is an
/// error of the extraction, as it always was) and the copy stays for the next restore.
#[tokio::test]
async fn a_link_planted_where_the_cache_goes_is_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "deps/lib.js", "module");
    let (st, sp) = (store(&cache), spec(&["deps"]));
    do_save(&st, &sp, &p).await;
    do_restore(&st, &sp, &tmp.path().join("r0")).await;
    assert_eq!(prepared(&cache).await, 1);

    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let q = tmp.path().join("q");
    std::fs::create_dir(&q).unwrap();
    std::os::unix::fs::symlink(&outside, q.join("deps")).unwrap();
    let (_, log) = do_restore(&st, &sp, &q).await;
    assert!(
        log.contains(
            "Not using this host's prepared copy of the cache: deps is already in the project dir"
        ),
        "{log}"
    );
    assert!(!log.contains(USED), "{log}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written through the link"
    );
    assert!(
        std::fs::symlink_metadata(q.join("deps"))
            .unwrap()
            .is_symlink()
    );

    // A dangling link too.
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), d.join("deps")).unwrap();
    let (_, log) = do_restore(&st, &sp, &d).await;
    assert!(!log.contains(USED), "{log}");
    assert!(!tmp.path().join("nowhere").exists());

    // Kept, and nothing else prepared meanwhile: the next clean project dir gets it.
    assert_eq!(prepared(&cache).await, 0);
    let r = tmp.path().join("r");
    let (_, log) = do_restore(&st, &sp, &r).await;
    assert!(log.contains(USED), "{log}");
    assert_eq!(
        std::fs::read_to_string(r.join("deps/lib.js")).unwrap(),
        "module"
    );
    prepared(&cache).await;
}

/// A copy extracted within other limits of host work than the job's is not used (the job's
/// own extraction might have stopped at its limits); it is kept.
#[tokio::test]
async fn a_copy_made_within_other_limits_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "deps/a", "a");
    write(&p, "deps/b", "b");
    let (st, sp) = (store(&cache), spec(&["deps"]));
    do_save(&st, &sp, &p).await;
    do_restore(&st, &sp, &tmp.path().join("r0")).await;
    assert_eq!(prepared(&cache).await, 1);
    let mut limits = Limits::new(CancellationToken::new());
    limits.max_entries = 2;
    let mut log = Vec::new();
    let out = restore(&st, &sp, &tmp.path().join("r1"), &mut log, &limits)
        .await
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("Not using this host's prepared copy of the cache: it was prepared for another set of limits"),
        "{log}"
    );
    // The job's own extraction meets its limit, as it would have without a copy.
    assert_eq!(out, RestoreOutcome::NotRestored, "{log}");
    assert!(key_dir(&cache).join(".ferry-prepared").is_dir());
}

/// The copy is tied to the archive it was extracted from: once the archive changes, the old
/// copy is never used (and is removed); the next one is made from the new archive.
#[tokio::test]
async fn a_changed_archive_is_never_served_from_its_old_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "deps/lib.js", "version 1");
    let (st, sp) = (store(&cache), spec(&["deps"]));
    do_save(&st, &sp, &p).await;
    do_restore(&st, &sp, &tmp.path().join("r0")).await;
    assert_eq!(prepared(&cache).await, 1);

    write(&p, "deps/lib.js", "version 2, longer");
    assert!(matches!(
        do_save(&st, &sp, &p).await,
        SaveOutcome::Created { .. }
    ));
    let r1 = tmp.path().join("r1");
    let (_, log) = do_restore(&st, &sp, &r1).await;
    assert!(!log.contains(USED), "{log}");
    assert_eq!(
        std::fs::read_to_string(r1.join("deps/lib.js")).unwrap(),
        "version 2, longer"
    );
    assert!(
        !key_dir(&cache).join(".ferry-prepared").exists(),
        "the stale copy stayed"
    );
    // A key whose archive changed since the last restore gets no copy right away.
    assert_eq!(prepared(&cache).await, 0);
    let (_, log) = do_restore(&st, &sp, &tmp.path().join("r2")).await;
    assert!(!log.contains(USED), "{log}");
    assert_eq!(prepared(&cache).await, 1);

    let r3 = tmp.path().join("r3");
    let (_, log) = do_restore(&st, &sp, &r3).await;
    assert!(log.contains(USED), "{log}");
    assert_eq!(
        std::fs::read_to_string(r3.join("deps/lib.js")).unwrap(),
        "version 2, longer"
    );
    prepared(&cache).await;
}

/// Eviction counts a copy with its archive, removes it with it, and removes a copy whose
/// archive was replaced (its hard link keeps the old archive's blocks).
#[tokio::test]
async fn eviction_counts_and_removes_prepared_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    let body: String = (0..20_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    write(&p, "deps/lib.js", &body);
    let (st, sp) = (store(&cache), spec(&["deps"]));
    do_save(&st, &sp, &p).await;
    let archive = st.archive_path("k").unwrap();
    let archive_len = std::fs::metadata(&archive).unwrap().len();
    let report = evict(&cache, None, None).unwrap();
    assert_eq!(report.total_bytes, archive_len);

    do_restore(&st, &sp, &tmp.path().join("r0")).await;
    assert_eq!(prepared(&cache).await, 1);
    let report = evict(&cache, None, None).unwrap();
    assert_eq!(
        (report.entries, report.total_bytes),
        (1, archive_len + 20_000)
    );

    // The archive replaced behind the copy's back (by a save of another process, say).
    write(&p, "deps/lib.js", "changed");
    do_save(&st, &sp, &p).await;
    assert!(key_dir(&cache).join(".ferry-prepared").is_dir());
    let report = evict(&cache, None, None).unwrap();
    let new_len = std::fs::metadata(&archive).unwrap().len();
    assert_eq!(report.total_bytes, new_len);
    assert!(!key_dir(&cache).join(".ferry-prepared").exists());

    do_restore(&st, &sp, &tmp.path().join("r1")).await;
    assert_eq!(prepared(&cache).await, 1);
    let report = evict(&cache, Some(0), None).unwrap();
    assert_eq!(report.removed, vec![archive.clone()]);
    assert_eq!(report.removed_bytes, new_len + 7);
    assert!(!key_dir(&cache).exists(), "key dir left behind");
}

/// A preparation killed half-way (here: the process, by SIGKILL) leaves a temporary dir that
/// no restore uses; evict removes it once it is older than an hour.
#[tokio::test]
async fn a_preparation_killed_half_way_is_never_used() {
    const CHILD: &str = "FERRY_TEST_TIER_CHILD";
    let files = 4_000;
    if let Ok(dir) = std::env::var(CHILD) {
        // The child: a restore, whose background preparation the parent kills.
        let dir = PathBuf::from(dir);
        do_restore(
            &store(&dir.join("cache")),
            &spec(&["deps"]),
            &dir.join("r0"),
        )
        .await;
        std::fs::write(dir.join("restored"), b"").unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    for i in 0..files {
        write(&p, &format!("deps/d{}/f{i}", i % 40), "x");
    }
    let (st, sp) = (store(&cache), spec(&["deps"]));
    do_save(&st, &sp, &p).await;

    let mut child = Reaped(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_preparation_killed_half_way_is_never_used",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, tmp.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Killed as soon as its preparation has extracted something.
    let kd = key_dir(&cache);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let half = loop {
        assert!(std::time::Instant::now() < deadline, "no preparation seen");
        let tmp_dir = std::fs::read_dir(&kd).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-prepare-")
            })
        });
        if let Some(t) = tmp_dir
            && t.join("tree/deps").is_dir()
        {
            child.0.kill().unwrap();
            child.0.wait().unwrap();
            break t;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(tmp.path().join("restored").exists());
    assert!(
        !kd.join(".ferry-prepared").exists(),
        "the preparation finished before the kill: the test proves nothing"
    );
    let r = tmp.path().join("r");
    let (out, log) = do_restore(&st, &sp, &r).await;
    assert!(matches!(out, RestoreOutcome::Restored { .. }), "{log}");
    assert!(!log.contains(USED), "{log}");
    assert_eq!(
        std::fs::read_dir(r.join("deps/d7")).unwrap().count(),
        files / 40
    );
    assert_eq!(prepared(&cache).await, 1);
    // The next preparation removed the half copy: its process is gone.
    assert!(!half.exists());
    // The next restore gets a whole copy, not the half one.
    let r2 = tmp.path().join("r2");
    let (_, log) = do_restore(&st, &sp, &r2).await;
    assert!(log.contains(USED), "{log}");
    assert_eq!(describe(&r2), describe(&r));
    prepared(&cache).await;

    // A half copy whose pid is in use (1, say) stays while it could still be under way;
    // evict removes it once its name says it is over an hour old.
    let named = |ago: u64| {
        let nanos = (SystemTime::now() - Duration::from_secs(ago))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = kd.join(format!(".tmp-prepare-1-0-{nanos}"));
        write(&d, "tree/deps/f", "x");
        d
    };
    let (young, old) = (named(60), named(2 * 3600));
    evict(&cache, None, None).unwrap();
    assert!(young.is_dir());
    assert!(!old.exists());
    assert!(kd.join(".ferry-prepared").is_dir());
}

/// A child process that is killed and waited for however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
