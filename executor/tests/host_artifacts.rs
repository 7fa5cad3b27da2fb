//! Artifact archives as GitLab receives them (zip, multi-member gzip, raw), GitLab's path
//! rules, and extraction of dependencies' archives (zip slip refused).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_executor::artifacts::{ArtifactError, ArtifactFormat, ArtifactSpec, When};
use ferry_executor::jobfs::Limits;

fn lim() -> Limits {
    Limits::new(tokio_util::sync::CancellationToken::new())
}

fn create_archive(
    p: &Path,
    s: &ArtifactSpec,
    out: &Path,
) -> Result<ferry_executor::artifacts::ArchiveSummary, ArtifactError> {
    ferry_executor::artifacts::create_archive(p, s, out, &lim())
}

fn extract_archive(
    zip: &Path,
    dir: &Path,
) -> Result<ferry_executor::artifacts::ExtractSummary, ArtifactError> {
    ferry_executor::artifacts::extract_archive(zip, dir, &lim())
}

fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn spec(paths: &[&str], format: ArtifactFormat) -> ArtifactSpec {
    ArtifactSpec {
        name: None,
        paths: paths.iter().map(|p| p.to_string()).collect(),
        exclude: vec![],
        untracked: false,
        when: When::OnSuccess,
        expire_in: Some("1 week".into()),
        artifact_type: "archive".into(),
        format,
        compression: Default::default(),
    }
}

fn zip_names(path: &Path) -> Vec<String> {
    let za = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut names: Vec<String> = za.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn zip_archive_follows_gitlab_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "dist/app.js", "console.log(1)");
    write(&p, "dist/app.js.map", "{}");
    write(&p, "dist/img/logo.svg", "<svg/>");
    write(&p, "src/main.rs", "fn main() {}");
    write(&p, "reports/a.xml", "<a/>");
    std::fs::set_permissions(
        p.join("dist/app.js"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("app.js", p.join("dist/latest.js")).unwrap();
    let mut s = spec(
        &["dist/", "reports/*.xml", "../outside", "missing/"],
        ArtifactFormat::Zip,
    );
    s.exclude = vec!["dist/**/*.map".into()];
    let out = tmp.path().join("artifacts.zip");
    let sum = create_archive(&p, &s, &out).unwrap();

    assert_eq!(
        zip_names(&out),
        [
            "dist/",
            "dist/app.js",
            "dist/img/",
            "dist/img/logo.svg",
            "dist/latest.js",
            "reports/a.xml"
        ]
    );
    assert_eq!(sum.files, 4);
    assert_eq!(sum.bytes, ("console.log(1)<svg/><a/>".len()) as u64);
    let notes: Vec<String> = sum.notes.iter().map(|n| n.text.clone()).collect();
    assert!(
        notes.contains(&"dist: found 5 matching artifact files and directories".to_string()),
        "{notes:?}"
    );
    assert!(
        notes.contains(
            &"reports/*.xml: found 1 matching artifact files and directories".to_string()
        )
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("../outside: artifact path is not a subpath"))
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("missing: no matching files"))
    );
    assert!(notes.contains(&"dist/**/*.map: excluded 1 files".to_string()));
    assert!(sum.notes.iter().filter(|n| n.warning).count() == 2);

    let mut za = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    {
        let mut f = za.by_name("dist/app.js").unwrap();
        assert_eq!(f.unix_mode().unwrap() & 0o777, 0o750);
        let mut body = String::new();
        f.read_to_string(&mut body).unwrap();
        assert_eq!(body, "console.log(1)");
    }
    let link = za.by_name("dist/latest.js").unwrap();
    assert!(link.is_symlink());
}

#[test]
fn symlinks_and_special_files_are_never_followed_or_read() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "out/ok.txt", "ok");
    std::os::unix::fs::symlink("/etc/passwd", p.join("out/passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", p.join("etc")).unwrap();
    let fifo = p.join("out/pipe");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = tmp.path().join("a.zip");
    let sum = create_archive(
        &p,
        &spec(&["out", "etc/hostname", "etc"], ArtifactFormat::Zip),
        &out,
    )
    .unwrap();
    assert_eq!(zip_names(&out), ["etc", "out/", "out/ok.txt", "out/passwd"]);
    let mut za = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut target = String::new();
    za.by_name("out/passwd")
        .unwrap()
        .read_to_string(&mut target)
        .unwrap();
    assert_eq!(
        target, "/etc/passwd",
        "the link is stored, not the host file"
    );
    assert!(
        sum.notes
            .iter()
            .any(|n| n.warning && n.text.contains("out/pipe: skipped"))
    );
}

#[test]
fn gzip_reports_are_one_member_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "reports/b/junit.xml", "<b/>");
    write(&p, "reports/a/junit.xml", "<a/>");
    let mut s = spec(&["reports/**/junit.xml"], ArtifactFormat::Gzip);
    s.name = Some("junit.xml".into());
    s.artifact_type = "junit".into();
    assert_eq!(s.upload_file_name(), "junit.xml.gz");
    let out = tmp.path().join("junit.xml.gz");
    let sum = create_archive(&p, &s, &out).unwrap();
    assert_eq!(sum.files, 2);

    let bytes = std::fs::read(&out).unwrap();
    let mut all = String::new();
    flate2::read::MultiGzDecoder::new(&bytes[..])
        .read_to_string(&mut all)
        .unwrap();
    assert_eq!(all, "<a/><b/>");
    // Member headers: base name and relative path, sorted by path.
    let mut rest = &bytes[..];
    let mut headers = Vec::new();
    while !rest.is_empty() {
        let mut dec = flate2::bufread::GzDecoder::new(rest);
        let mut body = String::new();
        dec.read_to_string(&mut body).unwrap();
        let h = dec.header().unwrap();
        headers.push((
            String::from_utf8(h.filename().unwrap().to_vec()).unwrap(),
            String::from_utf8(h.comment().unwrap().to_vec()).unwrap(),
            body,
        ));
        rest = dec.into_inner();
    }
    assert_eq!(
        headers,
        [
            (
                "junit.xml".into(),
                "reports/a/junit.xml".into(),
                "<a/>".into()
            ),
            (
                "junit.xml".into(),
                "reports/b/junit.xml".into(),
                "<b/>".into()
            ),
        ]
    );
}

#[test]
fn raw_needs_exactly_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "gl-sast-report.json", "{\"v\":1}");
    write(&p, "other.json", "{}");
    let out = tmp.path().join("raw");
    let sum = create_archive(
        &p,
        &spec(&["gl-sast-report.json"], ArtifactFormat::Raw),
        &out,
    )
    .unwrap();
    assert_eq!(sum.files, 1);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"v\":1}");
    let err = create_archive(&p, &spec(&["*.json"], ArtifactFormat::Raw), &out).unwrap_err();
    assert!(
        matches!(err, ArtifactError::RawNeedsOneFile { found: 2 }),
        "{err}"
    );
}

#[test]
fn nothing_matched_means_no_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    std::fs::create_dir_all(&p).unwrap();
    let out = tmp.path().join("a.zip");
    let sum = create_archive(&p, &spec(&["build/"], ArtifactFormat::Zip), &out).unwrap();
    assert_eq!(sum.files, 0);
    assert!(!out.exists());
    assert!(
        sum.notes
            .iter()
            .any(|n| n.warning && n.text == "No files to upload")
    );
}

#[test]
fn untracked_adds_files_git_does_not_track() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "tracked.txt", "t");
    write(&p, ".gitignore", "*.log\n");
    let g = |args: &[&str]| {
        assert!(
            std::process::Command::new("git")
                .args(["-c", "user.name=T", "-c", "user.email=t@e"])
                .args(args)
                .current_dir(&p)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .status()
                .unwrap()
                .success()
        );
    };
    g(&["init", "-q"]);
    g(&["add", "-A"]);
    g(&["commit", "-q", "-m", "x"]);
    write(&p, "new/file.txt", "n");
    write(&p, "debug.log", "ignored files count as untracked too");
    let mut s = spec(&[], ArtifactFormat::Zip);
    s.untracked = true;
    s.exclude = vec!["new/**".into()];
    let out = tmp.path().join("a.zip");
    let sum = create_archive(&p, &s, &out).unwrap();
    assert_eq!(zip_names(&out), ["debug.log"]);
    assert!(
        sum.notes
            .iter()
            .any(|n| n.text == "untracked: found 1 files")
    );
}

#[test]
fn extract_round_trips_a_zip() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, q) = (tmp.path().join("p"), tmp.path().join("q"));
    write(&p, "bin/tool", "#!/bin/sh\n");
    write(&p, "bin/data/x.txt", "x");
    std::fs::set_permissions(p.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tool", p.join("bin/alias")).unwrap();
    let out = tmp.path().join("a.zip");
    create_archive(&p, &spec(&["bin"], ArtifactFormat::Zip), &out).unwrap();
    write(&q, "bin/tool", "old content is replaced");
    let sum = extract_archive(&out, &q).unwrap();
    assert_eq!(sum.files, 3);
    assert!(sum.notes.is_empty(), "{:?}", sum.notes);
    assert_eq!(
        std::fs::read_to_string(q.join("bin/tool")).unwrap(),
        "#!/bin/sh\n"
    );
    assert_eq!(
        std::fs::metadata(q.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(q.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::read_to_string(q.join("bin/data/x.txt")).unwrap(),
        "x"
    );
}

#[test]
fn extract_refuses_zip_slip() {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let tmp = tempfile::tempdir().unwrap();
    let q = tmp.path().join("deep/project");
    std::fs::create_dir_all(&q).unwrap();
    let out = tmp.path().join("evil.zip");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    let o = SimpleFileOptions::default();
    zw.start_file("../../escaped.txt", o).unwrap();
    zw.write_all(b"pwned").unwrap();
    zw.start_file("/abs.txt", o).unwrap();
    zw.write_all(b"pwned").unwrap();
    zw.add_symlink("link", tmp.path().to_string_lossy(), o)
        .unwrap();
    zw.start_file("link/via-symlink.txt", o).unwrap();
    zw.write_all(b"pwned").unwrap();
    zw.start_file("fine/ok.txt", o).unwrap();
    zw.write_all(b"ok").unwrap();
    zw.finish().unwrap();

    let sum = extract_archive(&out, &q).unwrap();
    assert!(!tmp.path().join("escaped.txt").exists());
    assert!(!tmp.path().join("deep/escaped.txt").exists());
    assert!(!tmp.path().join("via-symlink.txt").exists());
    assert!(!Path::new("/abs.txt").exists());
    assert_eq!(
        std::fs::read_to_string(q.join("fine/ok.txt")).unwrap(),
        "ok"
    );
    let warnings: Vec<&str> = sum
        .notes
        .iter()
        .filter(|n| n.warning)
        .map(|n| n.text.as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("../../escaped.txt: skipped")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("link/via-symlink.txt: skipped")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("/abs.txt: skipped")),
        "{warnings:?}"
    );
}

#[test]
fn extraction_into_a_users_tree_keeps_git_dirs_and_links_inside_and_overwrites_files() {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    write(&tree, ".git/HEAD", "ref: refs/heads/main\n");
    write(&tree, "sub/.git/config", "[core]\n");
    write(&tree, ".ferry/1/logs/x.log", "log");
    write(&tree, "README", "old");
    write(&tree, "src/lib.rs", "keep me");
    let out = tmp.path().join("artifacts.zip");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    let o = SimpleFileOptions::default();
    let exe = o.unix_permissions(0o4777);
    for (name, opts) in [
        (".git/hooks/post-checkout", o),
        (".GIT/config", o),
        ("sub/.git/hooks/pre-commit", o),
        (".ferry/1/logs/x.log", o),
        ("../escaped.txt", o),
        ("src", o),
        ("README", o),
        ("dist/tool", exe),
    ] {
        zw.start_file(name, opts).unwrap();
        zw.write_all(b"from the job").unwrap();
    }
    zw.add_symlink("dist/up", "../../outside", o).unwrap();
    zw.add_symlink("dist/abs", "/etc/passwd", o).unwrap();
    zw.add_symlink("dist/near", "../README", o).unwrap();
    zw.finish().unwrap();

    let rules = ferry_executor::artifacts::TreeRules {
        refused: vec![".ferry".into()],
    };
    let sum = ferry_executor::artifacts::extract_into_tree(&out, &tree, &rules, &lim()).unwrap();
    let read = |rel: &str| std::fs::read_to_string(tree.join(rel)).unwrap();
    assert_eq!(read(".git/HEAD"), "ref: refs/heads/main\n");
    assert!(!tree.join(".git/hooks").exists());
    assert!(!tree.join(".GIT/config").exists());
    assert!(!tree.join("sub/.git/hooks").exists());
    assert_eq!(read(".ferry/1/logs/x.log"), "log");
    assert!(!tmp.path().join("escaped.txt").exists());
    assert_eq!(
        read("src/lib.rs"),
        "keep me",
        "a directory is never replaced"
    );
    assert_eq!(read("README"), "from the job", "files are overwritten");
    let mode = std::fs::metadata(tree.join("dist/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "no set-id, no group/other write");
    let dist = std::fs::metadata(tree.join("dist"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dist & 0o777, 0o755);
    assert!(std::fs::symlink_metadata(tree.join("dist/up")).is_err());
    assert!(std::fs::symlink_metadata(tree.join("dist/abs")).is_err());
    assert_eq!(
        std::fs::read_link(tree.join("dist/near")).unwrap(),
        Path::new("../README")
    );
    let warnings: Vec<&str> = sum
        .notes
        .iter()
        .filter(|n| n.warning)
        .map(|n| n.text.as_str())
        .collect();
    for skipped in [
        ".git/hooks/post-checkout: skipped: ferry never writes into a .git directory",
        ".GIT/config: skipped",
        "sub/.git/hooks/pre-commit: skipped",
        ".ferry/1/logs/x.log: skipped: ferry never writes into .ferry/",
        "../escaped.txt: skipped",
        "src: skipped",
        "dist/up: skipped",
        "dist/abs: skipped",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(skipped)),
            "{skipped}: {warnings:?}"
        );
    }
    assert_eq!(sum.files, 3, "README, dist/tool, dist/near");
}

#[tokio::test]
async fn archive_writes_gitlab_lines_to_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("project");
    write(&p, "dist/a", "aaaa");
    let mut log: Vec<u8> = Vec::new();
    let out = tmp.path().join("a.zip");
    let sum = ferry_executor::artifacts::archive(
        &p,
        &spec(&["dist/", "nope"], ArtifactFormat::Zip),
        &out,
        &mut log,
        &lim(),
    )
    .await
    .unwrap();
    assert_eq!(sum.files, 1);
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("dist: found 2 matching artifact files and directories\n"),
        "{log}"
    );
    assert!(
        log.contains("\x1b[0;33mWARNING: nope: no matching files"),
        "{log}"
    );
    assert!(log.contains("artifacts.zip: 1 files, 4 B"), "{log}");
}

/// A dependency's archive that expands far beyond what it weighs stops at the byte limit with
/// a clear error, and one that takes too long stops at the job's deadline.
#[test]
fn extraction_is_bounded_by_bytes_entries_and_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let zip_path = tmp.path().join("bomb.zip");
    {
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("manifest.yaml", opts).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..8 {
            std::io::Write::write_all(&mut zw, &zeros).unwrap();
        }
        for i in 0..20 {
            zw.start_file(format!("many/{i}"), opts).unwrap();
        }
        zw.finish().unwrap();
    }
    assert!(std::fs::metadata(&zip_path).unwrap().len() < 64 * 1024);
    let small = Limits {
        max_bytes: 1024 * 1024,
        ..lim()
    };
    let err = ferry_executor::artifacts::extract_archive(&zip_path, &tmp.path().join("p"), &small)
        .unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Limit(m) if m.contains("limit reached: more than 1.0 MB")),
        "{err}"
    );
    let few = Limits {
        max_entries: 5,
        ..lim()
    };
    let err = ferry_executor::artifacts::extract_archive(&zip_path, &tmp.path().join("q"), &few)
        .unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Limit(m) if m.contains("more than 5 files")),
        "{err}"
    );
    let late = Limits {
        deadline: Some(std::time::Instant::now()),
        ..lim()
    };
    let err = ferry_executor::artifacts::extract_archive(&zip_path, &tmp.path().join("r"), &late)
        .unwrap_err();
    assert!(matches!(err, ArtifactError::Limit(_)), "{err}");
    // Within the default limits the same archive unpacks whole.
    let sum = ferry_executor::artifacts::extract_archive(&zip_path, &tmp.path().join("s"), &lim())
        .unwrap();
    assert_eq!(sum.files, 21);
}

/// Archiving stops at the byte limit before reading anything.
#[test]
fn archiving_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p");
    write(&p, "big/a", &"x".repeat(4096));
    write(&p, "big/b", &"y".repeat(4096));
    let small = Limits {
        max_bytes: 5000,
        ..lim()
    };
    let err = ferry_executor::artifacts::create_archive(
        &p,
        &spec(&["big/"], ArtifactFormat::Zip),
        &tmp.path().join("a.zip"),
        &small,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Limit(m) if m.contains("limit reached")),
        "{err}"
    );
    assert!(!tmp.path().join("a.zip").exists());
}
