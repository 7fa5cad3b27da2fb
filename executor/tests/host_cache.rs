//! The host cache: save/restore round trips, skipping unchanged caches, fallback keys,
//! policies, key sanitising, and eviction.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ferry_executor::artifacts::When;
use ferry_executor::cache::{
    CachePolicy, CacheSpec, CacheStore, RestoreOutcome, SaveOutcome, evict, restore, save,
};
use ferry_executor::jobfs::Limits;
use tokio_util::sync::CancellationToken;

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

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

async fn do_save(st: &CacheStore, sp: &CacheSpec, dir: &Path, ok: bool) -> (SaveOutcome, String) {
    let mut log = Vec::new();
    let out = save(
        st,
        sp,
        dir,
        ok,
        &mut log,
        &Limits::new(CancellationToken::new()),
    )
    .await
    .unwrap();
    (out, String::from_utf8(log).unwrap())
}

async fn do_restore(st: &CacheStore, sp: &CacheSpec, dir: &Path) -> (RestoreOutcome, String) {
    let mut log = Vec::new();
    let out = restore(
        st,
        sp,
        dir,
        &mut log,
        &Limits::new(CancellationToken::new()),
    )
    .await
    .unwrap();
    (out, String::from_utf8(log).unwrap())
}

#[tokio::test]
async fn save_then_restore_round_trips_files_modes_times_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p1, p2) = (
        tmp.path().join("cache"),
        tmp.path().join("p1"),
        tmp.path().join("p2"),
    );
    write(&p1, "target/debug/app", "binary");
    write(&p1, "target/deps/a.rlib", "rlib");
    write(&p1, "other/file", "not cached");
    std::fs::set_permissions(
        p1.join("target/debug/app"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("debug/app", p1.join("target/current")).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .append(true)
        .open(p1.join("target/deps/a.rlib"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let st = store(&cache);
    let sp = spec("cargo-main-protected", &["target/"]);
    let (out, log) = do_save(&st, &sp, &p1, true).await;
    assert!(
        matches!(out, SaveOutcome::Created { files: 3, .. }),
        "{out:?}"
    );
    assert!(
        log.contains("Creating cache cargo-main-protected..."),
        "{log}"
    );
    assert!(
        log.contains("target: found 6 matching artifact files and directories"),
        "{log}"
    );
    assert!(log.contains("Created cache"));
    assert!(
        cache
            .join("project/42/cargo-main-protected/cache.tar.zst")
            .is_file()
    );

    let (out, log) = do_restore(&st, &sp, &p2).await;
    assert!(
        matches!(
            out,
            RestoreOutcome::Restored {
                fallback: false,
                ..
            }
        ),
        "{out:?} {log}"
    );
    assert!(log.contains("Checking cache for cargo-main-protected..."));
    assert!(log.contains("Successfully extracted cache"));
    assert_eq!(
        std::fs::read_to_string(p2.join("target/debug/app")).unwrap(),
        "binary"
    );
    assert!(!p2.join("other/file").exists());
    let mode = std::fs::metadata(p2.join("target/debug/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(p2.join("target/current")).unwrap(),
        Path::new("debug/app")
    );
    let mtime = std::fs::metadata(p2.join("target/deps/a.rlib"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, old);
}

#[tokio::test]
async fn an_unchanged_cache_is_not_archived_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "deps/a", "1");
    let st = store(&cache);
    let sp = spec("k", &["deps"]);
    let archive = cache.join("project/42/k/cache.tar.zst");
    do_save(&st, &sp, &p, true).await;
    let before = std::fs::read(&archive).unwrap();
    // Restore into a fresh dir (as the next job would), then save again unchanged.
    let p2 = tmp.path().join("p2");
    do_restore(&st, &sp, &p2).await;
    std::fs::remove_file(&archive).unwrap();
    std::fs::write(&archive, b"sentinel").unwrap();
    let (out, log) = do_save(&st, &sp, &p2, true).await;
    assert_eq!(out, SaveOutcome::UpToDate { key: "k".into() });
    assert!(log.contains("Archive is up to date!"), "{log}");
    assert_eq!(
        std::fs::read(&archive).unwrap(),
        b"sentinel",
        "archive was rewritten"
    );

    // A change (here: a new file) is archived.
    std::fs::write(&archive, &before).unwrap();
    write(&p2, "deps/b", "2");
    let (out, _) = do_save(&st, &sp, &p2, true).await;
    assert!(
        matches!(out, SaveOutcome::Created { files: 2, .. }),
        "{out:?}"
    );
}

#[tokio::test]
async fn fallback_keys_are_tried_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p, q) = (
        tmp.path().join("cache"),
        tmp.path().join("p"),
        tmp.path().join("q"),
    );
    write(&p, "node_modules/x", "from-main");
    let st = store(&cache);
    do_save(&st, &spec("main-protected", &["node_modules"]), &p, true).await;

    let mut sp = spec("feature-non_protected", &["node_modules"]);
    sp.fallback_keys = vec!["missing-too".into(), "main-protected".into()];
    let (out, log) = do_restore(&st, &sp, &q).await;
    assert_eq!(
        out,
        RestoreOutcome::Restored {
            key: "main-protected".into(),
            fallback: true,
            files: 2
        }
    );
    let order: Vec<usize> = [
        "Checking cache for feature-non_protected...",
        "Failed to extract cache",
        "Checking cache for missing-too...",
        "Checking cache for main-protected...",
        "Successfully extracted cache",
    ]
    .iter()
    .map(|needle| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing in {log}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{log}");
    assert_eq!(
        std::fs::read_to_string(q.join("node_modules/x")).unwrap(),
        "from-main"
    );

    let (out, _) = do_restore(&st, &spec("nothing-here", &["node_modules"]), &q).await;
    assert_eq!(out, RestoreOutcome::NotRestored);
}

#[tokio::test]
async fn policies_and_when() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "c/f", "x");
    let st = store(&cache);
    let mut sp = spec("k", &["c"]);
    sp.policy = CachePolicy::Pull;
    let (out, log) = do_save(&st, &sp, &p, true).await;
    assert_eq!(out, SaveOutcome::SkippedByPolicy);
    assert!(log.contains("Not uploading cache k due to policy"));
    assert!(!cache.join("project/42/k").exists());

    sp.policy = CachePolicy::Push;
    let (out, log) = do_restore(&st, &sp, &p).await;
    assert_eq!(out, RestoreOutcome::SkippedByPolicy);
    assert!(log.contains("Not downloading cache k due to policy"));

    sp.policy = CachePolicy::PullPush;
    assert_eq!(
        do_save(&st, &sp, &p, false).await.0,
        SaveOutcome::SkippedByWhen
    );
    sp.when = When::Always;
    assert!(matches!(
        do_save(&st, &sp, &p, false).await.0,
        SaveOutcome::Created { .. }
    ));
    sp.when = When::OnFailure;
    assert_eq!(
        do_save(&st, &sp, &p, true).await.0,
        SaveOutcome::SkippedByWhen
    );

    let disabled = CacheStore {
        disabled: true,
        ..st.clone()
    };
    assert_eq!(
        do_restore(&disabled, &sp, &p).await.0,
        RestoreOutcome::Disabled
    );
}

#[tokio::test]
async fn keys_cannot_escape_the_cache_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "c/f", "x");
    let st = store(&cache);
    let (out, log) = do_save(&st, &spec("../../../escaped", &["c"]), &p, true).await;
    assert!(
        matches!(out, SaveOutcome::Created { ref key, .. } if key == "escaped"),
        "{out:?}"
    );
    assert!(log.contains("sanitized to \"escaped\""), "{log}");
    assert!(cache.join("project/42/escaped/cache.tar.zst").is_file());
    assert!(!tmp.path().join("escaped").exists());
    let (out, log) = do_save(&st, &spec("..", &["c"]), &p, true).await;
    assert_eq!(out, SaveOutcome::Nothing);
    assert!(log.contains("Skipping cache archiving due to cache key"));
}

#[tokio::test]
async fn no_matching_files_leaves_the_cache_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    std::fs::create_dir_all(&p).unwrap();
    let (out, log) = do_save(&store(&cache), &spec("k", &["nope/"]), &p, true).await;
    assert_eq!(out, SaveOutcome::NoFiles);
    assert!(log.contains("WARNING: nope: no matching files"), "{log}");
    assert!(!cache.join("project/42/k/cache.tar.zst").exists());
}

#[tokio::test]
async fn untracked_files_are_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p, q) = (
        tmp.path().join("cache"),
        tmp.path().join("p"),
        tmp.path().join("q"),
    );
    write(&p, "tracked", "t");
    let g = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@e"])
            .args(args)
            .current_dir(&p)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    g(&["init", "-q"]);
    g(&["add", "tracked"]);
    g(&["commit", "-q", "-m", "x"]);
    write(&p, "build/out.bin", "b");
    let mut sp = spec("u", &[]);
    sp.untracked = true;
    let st = store(&cache);
    let (out, log) = do_save(&st, &sp, &p, true).await;
    assert!(
        matches!(out, SaveOutcome::Created { files: 1, .. }),
        "{out:?} {log}"
    );
    assert!(log.contains("untracked: found 1 files"));
    do_restore(&st, &sp, &q).await;
    assert!(q.join("build/out.bin").is_file());
    assert!(!q.join("tracked").exists());
}

#[tokio::test]
async fn restore_refuses_entries_outside_the_project_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    let st = store(&cache);
    let archive = st.archive_path("evil").unwrap();
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    // Hand-made tar with `../outside` (tar::Builder itself refuses such names).
    let mut tb = tar::Builder::new(Vec::new());
    for (name, body) in [("../outside", &b"pwned"[..]), ("inside", &b"ok"[..])] {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tb.append(&h, body).unwrap();
    }
    let tar_bytes = tb.into_inner().unwrap();
    std::fs::write(&archive, zstd::encode_all(&tar_bytes[..], 3).unwrap()).unwrap();
    let (out, log) = do_restore(&st, &spec("evil", &["x"]), &p).await;
    assert!(
        matches!(out, RestoreOutcome::Restored { files: 1, .. }),
        "{out:?} {log}"
    );
    assert!(p.join("inside").is_file());
    assert!(!tmp.path().join("outside").exists());
}

fn age(path: &Path, secs_ago: u64) {
    std::fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
        .unwrap();
}

#[tokio::test]
async fn eviction_by_age_then_least_recently_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    let st = store(&cache);
    for (key, size) in [("old", 1000), ("lru", 2000), ("recent", 3000)] {
        write(&p, &format!("{key}/data"), &"z".repeat(size));
        // Incompressible content so sizes are meaningful.
        let noise: String = (0..size)
            .map(|i| char::from(b'a' + ((i * 7919 + size) % 26) as u8))
            .collect();
        write(&p, &format!("{key}/data"), &noise);
        do_save(&st, &spec(key, &[key]), &p, true).await;
    }
    let path = |k: &str| st.archive_path(k).unwrap();
    age(&path("old"), 40 * 86_400);
    age(&path("lru"), 2 * 86_400);
    age(&path("recent"), 3600);
    // Restoring marks a cache as used.
    let (out, _) = do_restore(&st, &spec("lru", &["lru"]), &tmp.path().join("r")).await;
    assert!(matches!(out, RestoreOutcome::Restored { .. }));
    age(&path("recent"), 2 * 86_400);

    let report = evict(&cache, None, Some(Duration::from_secs(30 * 86_400))).unwrap();
    assert_eq!(report.entries, 3);
    assert_eq!(report.removed, vec![path("old")]);
    assert!(
        !path("old").parent().unwrap().exists(),
        "empty key dir pruned"
    );

    // Over the size limit: the least recently used ("recent", aged above) goes first. The
    // restore of "lru" left a prepared copy of it (its 2000 bytes count with its archive).
    ferry_executor::cache::preparations_done(&cache).await;
    let sizes: u64 = ["lru", "recent"]
        .iter()
        .map(|k| std::fs::metadata(path(k)).unwrap().len())
        .sum::<u64>()
        + 2000;
    let report = evict(&cache, Some(sizes - 1), None).unwrap();
    assert_eq!(report.removed, vec![path("recent")]);
    assert!(path("lru").is_file());
    assert!(cache.join("project/42/lru/manifest.json").is_file());
}

#[tokio::test]
async fn eviction_skips_git_object_caches_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    for name in ["a.git", "b.git"] {
        let d = cache.join("git").join(name);
        std::fs::create_dir_all(d.join("objects/pack")).unwrap();
        std::fs::write(d.join("objects/pack/p.pack"), vec![0u8; 4096]).unwrap();
        std::fs::write(d.join("ferry-last-used"), b"").unwrap();
        age(&d.join("ferry-last-used"), 90 * 86_400);
    }
    let lock = std::fs::File::create(cache.join("git/b.git/ferry.lock")).unwrap();
    lock.lock().unwrap();
    let report = evict(&cache, None, Some(Duration::from_secs(86_400))).unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(report.removed, vec![cache.join("git/a.git")]);
    assert!(cache.join("git/b.git/objects").is_dir());
}

/// What a job wrote is hostile: a git-cache look-alike whose lock is a link out is never
/// followed, and a job's `"/path"` volume dir under `cache_dir` is not read as caches at all.
#[tokio::test]
async fn eviction_never_follows_a_planted_lock_link_nor_enters_volume_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let outside = tmp.path().join("outside-file");
    for dir in [
        cache.join("git/planted.git"),
        cache.join("runner-abc-project-1/0123456789abcdef/x"),
    ] {
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::write(dir.join("ferry-last-used"), b"").unwrap();
        age(&dir.join("ferry-last-used"), 90 * 86_400);
        let _ = std::fs::remove_file(dir.join("ferry.lock"));
        std::os::unix::fs::symlink(&outside, dir.join("ferry.lock")).unwrap();
    }
    let volume = cache.join("runner-abc-project-1/0123456789abcdef");
    std::fs::write(volume.join("cache.tar.zst"), b"the job's own file").unwrap();
    age(&volume.join("cache.tar.zst"), 90 * 86_400);
    let report = evict(&cache, None, Some(Duration::from_secs(86_400))).unwrap();
    assert!(!outside.exists(), "the link was followed");
    assert_eq!(report.entries, 1, "{report:?}");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(volume.join("cache.tar.zst").is_file());
    assert!(volume.join("x/objects").is_dir());
}

#[tokio::test]
async fn cancelled_jobs_stop_restoring() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, p) = (tmp.path().join("cache"), tmp.path().join("p"));
    write(&p, "c/f", "x");
    let st = store(&cache);
    let sp = spec("k", &["c"]);
    do_save(&st, &sp, &p, true).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut log = Vec::new();
    let limits = Limits::new(cancel);
    let res = restore(&st, &sp, &tmp.path().join("q"), &mut log, &limits).await;
    assert!(
        matches!(res, Err(ferry_executor::cache::CacheError::Cancelled)),
        "{res:?}"
    );
    let res = save(&st, &sp, &p, true, &mut log, &limits).await;
    assert!(
        matches!(res, Err(ferry_executor::cache::CacheError::Cancelled)),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_of_one_key_leave_a_valid_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let st = store(&cache);
    let mut jobs = Vec::new();
    for i in 0..4 {
        let p = tmp.path().join(format!("p{i}"));
        write(&p, "deps/file", &format!("job {i}"));
        let st = st.clone();
        jobs.push(tokio::spawn(async move {
            do_save(&st, &spec("shared", &["deps"]), &p, true).await
        }));
    }
    for j in futures::future::join_all(jobs).await {
        let (out, log) = j.unwrap();
        assert!(
            matches!(
                out,
                SaveOutcome::Created { .. } | SaveOutcome::UpToDate { .. }
            ),
            "{out:?} {log}"
        );
    }
    let q = tmp.path().join("q");
    let (out, _) = do_restore(&st, &spec("shared", &["deps"]), &q).await;
    assert!(matches!(out, RestoreOutcome::Restored { .. }), "{out:?}");
    assert!(
        std::fs::read_to_string(q.join("deps/file"))
            .unwrap()
            .starts_with("job ")
    );
    // The restore's background preparation of a copy (tier.rs) is not a leftover: once it
    // ends, its temporary dir is the ready copy.
    ferry_executor::cache::preparations_done(&cache).await;
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("project/42/shared"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// CACHE_COMPRESSION_LEVEL: the zstd level of tar + zstd archives, the deflate level (or, at
/// `fastest`, no compression) of zip ones; archives of every level restore.
#[tokio::test]
async fn the_compression_level_decides_how_archives_are_compressed() {
    use ferry_executor::cache::CacheFormat;
    use ferry_executor::compression::CompressionLevel;
    let project = tempfile::tempdir().unwrap();
    let text: String = (1..200_000).map(|n| format!("{n}\n")).collect();
    write(project.path(), "deps/numbers.txt", &text);
    let sp = spec("k", &["deps"]);
    let mut sizes = Vec::new();
    for format in [CacheFormat::TarZstd, CacheFormat::Zip] {
        for level in [CompressionLevel::Fastest, CompressionLevel::Slowest] {
            let root = tempfile::tempdir().unwrap();
            let st = CacheStore {
                format,
                compression: level,
                ..store(root.path())
            };
            let (out, log) = do_save(&st, &sp, project.path(), true).await;
            assert!(matches!(out, SaveOutcome::Created { .. }), "{out:?}: {log}");
            let archive = st.archive_path("k").unwrap();
            sizes.push((format, level, std::fs::metadata(&archive).unwrap().len()));
            if format == CacheFormat::Zip {
                let f = std::fs::File::open(&archive).unwrap();
                let mut zip = zip::ZipArchive::new(f).unwrap();
                let entry = zip.by_name("deps/numbers.txt").unwrap();
                let want = match level {
                    CompressionLevel::Fastest => zip::CompressionMethod::Stored,
                    _ => zip::CompressionMethod::Deflated,
                };
                assert_eq!(entry.compression(), want);
            }
            let target = tempfile::tempdir().unwrap();
            let (restored, log) = do_restore(&st, &sp, target.path()).await;
            assert!(matches!(restored, RestoreOutcome::Restored { .. }), "{log}");
            assert_eq!(
                std::fs::read_to_string(target.path().join("deps/numbers.txt")).unwrap(),
                text
            );
        }
    }
    // Slowest is smaller than fastest in both formats.
    assert!(sizes[1].2 < sizes[0].2, "{sizes:?}");
    assert!(sizes[3].2 < sizes[2].2, "{sizes:?}");
}
