//! Write-back: register, unregister, token rotation keep the user's file intact.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_config::{
    ConfigError, NewRunner, add_runner, from_toml_str_with_env, remove_runners, update_token,
};

const USER_FILE: &str = r#"# managed by hand, please keep this comment
concurrent = 2   # two jobs
check_interval = 3
future_global_key = "kept"

[session_server]
  session_timeout = 1800

# ---- first runner
[[runners]]
  name = "one"
  url = "https://gitlab.example.com"
  id = 1
  token = "glrt-one-aaaaaaaa"   # rotated by ferry
  token_obtained_at = 2025-01-01T00:00:00Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  some_future_runner_key = { nested = [1, 2] }
  [runners.docker]
    image = "alpine:3"
    unknown_docker_key = true

# ---- second runner
[[runners]]
  name = "two"
  url = "https://other.example.com/"
  token = "glrt-two-bbbbbbbb"
  executor = "docker"
  [runners.docker]
    image = "debian"
"#;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn user_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, USER_FILE).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
fn add_runner_creates_a_0600_file_gitlab_runner_style() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("config.toml");
    let mut r = NewRunner::docker(
        "ci-01",
        "https://gitlab.example.com",
        "glrt-new-token",
        "alpine:3",
    );
    r.id = Some(118);
    r.token_obtained_at = Some(1_741_083_300);
    r.limit = Some(2);
    r.environment = vec!["A=1".into()];
    r.docker.pull_policy = vec!["if-not-present".into()];
    r.docker.memory = Some("2g".into());
    add_runner(&path, &r).unwrap();
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let expected = r#"concurrent = 1
check_interval = 0
shutdown_timeout = 0

[[runners]]
  name = "ci-01"
  url = "https://gitlab.example.com"
  id = 118
  token = "glrt-new-token"
  token_obtained_at = 2025-03-04T10:15:00Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  limit = 2
  environment = ["A=1"]
  [runners.cache]
    MaxUploadedArchiveSize = 0
    [runners.cache.s3]
    [runners.cache.gcs]
    [runners.cache.azure]
  [runners.docker]
    tls_verify = false
    image = "alpine:3"
    privileged = false
    disable_entrypoint_overwrite = false
    oom_kill_disable = false
    disable_cache = false
    pull_policy = ["if-not-present"]
    volumes = ["/cache"]
    memory = "2g"
    shm_size = 0
"#;
    assert_eq!(text, expected);
    let c = from_toml_str_with_env(&text, "config.toml", &no_env).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.runners[0].id, Some(118));
    assert_eq!(c.runners[0].token.expose(), "glrt-new-token");
    assert_eq!(c.runners[0].docker.memory, Some(2 << 30));
}

#[test]
fn add_runner_appends_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    add_runner(
        &path,
        &NewRunner::docker("three", "https://g.example.com", "glrt-three", "busybox"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(USER_FILE),
        "the existing text must be untouched:\n{text}"
    );
    assert!(
        text[USER_FILE.len()..].starts_with("\n[[runners]]\n  name = \"three\""),
        "{text}"
    );
    assert_eq!(mode(&path), 0o600);
    let c = from_toml_str_with_env(&text, "config.toml", &no_env).unwrap();
    let names: Vec<&str> = c.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["one", "two", "three"]);
    assert_eq!(c.runners[2].docker.image.as_deref(), Some("busybox"));
}

#[test]
fn add_runner_refuses_an_entry_that_would_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    let mut r = NewRunner::docker("bad", "https://g.example.com", "glrt-x", "alpine");
    r.docker.memory = Some("lots".into());
    let err = add_runner(&path, &r).unwrap_err();
    assert!(matches!(err, ConfigError::Edit { .. }), "{err:?}");
    assert!(err.to_string().contains("memory"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), USER_FILE);
}

#[test]
fn remove_runners_drops_only_matching_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    let removed = remove_runners(&path, |r| r.name == "one").unwrap();
    assert_eq!(removed, 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(
        text.starts_with(
            "# managed by hand, please keep this comment\nconcurrent = 2   # two jobs\n"
        )
    );
    assert!(text.contains("future_global_key = \"kept\""));
    assert!(!text.contains("glrt-one"));
    assert!(!text.contains("some_future_runner_key"));
    assert!(
        text.contains("# ---- second runner\n[[runners]]\n  name = \"two\""),
        "{text}"
    );
    let c = from_toml_str_with_env(&text, "config.toml", &no_env).unwrap();
    assert_eq!(c.runners.len(), 1);
    assert_eq!(c.runners[0].name, "two");

    // the predicate sees url without the trailing slash and the token
    let removed = remove_runners(&path, |r| {
        r.url == "https://other.example.com"
            && r.token.expose() == "glrt-two-bbbbbbbb"
            && r.index == 0
    })
    .unwrap();
    assert_eq!(removed, 1);
    let c = from_toml_str_with_env(&std::fs::read_to_string(&path).unwrap(), "c", &no_env).unwrap();
    assert!(c.runners.is_empty());
}

#[test]
fn remove_nothing_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    assert_eq!(remove_runners(&path, |_| false).unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), USER_FILE);
    assert_eq!(mode(&path), 0o644, "not rewritten");
}

#[test]
fn update_token_rewrites_three_values_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    update_token(
        &path,
        "glrt-one-aaaaaaaa",
        "glrt-one-rotated",
        1_741_083_300,
        Some(1_748_859_300),
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let expected = USER_FILE
        .replace(
            "token = \"glrt-one-aaaaaaaa\"   # rotated by ferry",
            "token = \"glrt-one-rotated\"   # rotated by ferry",
        )
        .replace(
            "token_obtained_at = 2025-01-01T00:00:00Z",
            "token_obtained_at = 2025-03-04T10:15:00Z",
        )
        .replace(
            "token_expires_at = 0001-01-01T00:00:00Z",
            "token_expires_at = 2025-06-02T10:15:00Z",
        );
    assert_eq!(text, expected);
    assert_eq!(mode(&path), 0o600);

    // "never expires" again, and a runner that had no timestamps gets them added, indented
    update_token(
        &path,
        "glrt-one-rotated",
        "glrt-one-third",
        1_741_083_300,
        None,
    )
    .unwrap();
    update_token(
        &path,
        "glrt-two-bbbbbbbb",
        "glrt-two-new",
        1_741_083_300,
        None,
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("  token = \"glrt-one-third\"   # rotated by ferry\n  token_obtained_at = 2025-03-04T10:15:00Z\n  token_expires_at = 0001-01-01T00:00:00Z\n"), "{text}");
    assert!(text.contains("  token = \"glrt-two-new\"\n"), "{text}");
    let c = from_toml_str_with_env(&text, "config.toml", &no_env).unwrap();
    assert_eq!(c.runners[1].token.expose(), "glrt-two-new");
    assert_eq!(c.runners[1].token_obtained_at, Some(1_741_083_300));
    assert_eq!(c.runners[1].token_expires_at, None);
    assert_eq!(c.runners[0].token_expires_at, None);
}

#[test]
fn update_token_of_unknown_runner_is_an_error_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = user_file(dir.path());
    let err = update_token(&path, "glrt-nobody-secret-part", "x", 0, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("glrt-nob"), "{msg}");
    assert!(!msg.contains("secret-part"), "{msg}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), USER_FILE);
}

#[test]
fn update_token_matches_an_environment_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // PATH is set in every test environment; its value stands in for a token held in the env
    let path_var = std::env::var("PATH").unwrap();
    std::fs::write(
        &path,
        "[[runners]]\n  url = \"https://g\"\n  token = \"${PATH}\"\n  executor = \"docker\"\n",
    )
    .unwrap();
    update_token(&path, &path_var, "glrt-literal", 10, None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("token = \"glrt-literal\""), "{text}");
}

#[test]
fn edits_follow_a_symlink_and_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let real = user_file(dir.path());
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    remove_runners(&link, |r| r.name == "two").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!std::fs::read_to_string(&real).unwrap().contains("glrt-two"));
    // no temp files left behind; the lock file is next to the real file
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".config.toml.lock", "config.toml", "link.toml"]);
}

#[test]
fn edits_of_missing_or_broken_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = remove_runners(&missing, |_| true).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    // The cause is in the message and not also a source(), so a chain printer (anyhow's `{:#}`)
    // says it once.
    assert!(std::error::Error::source(&err).is_none());
    let msg = err.to_string();
    assert_eq!(msg.matches("os error 2").count(), 1, "{msg}");
    assert!(msg.starts_with(&missing.display().to_string()), "{msg}");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "concurrent = 1\n[[runners]\n").unwrap();
    match update_token(&broken, "a", "b", 0, None) {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    let inline = dir.path().join("inline.toml");
    std::fs::write(&inline, "runners = [{ token = \"a\" }]\n").unwrap();
    assert!(matches!(
        update_token(&inline, "a", "b", 0, None),
        Err(ConfigError::Edit { .. })
    ));
}

#[test]
fn default_paths_depend_on_the_effective_user() {
    let ferry = ferry_config::default_config_path();
    let gitlab = ferry_config::gitlab_runner_config_path();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        assert_eq!(ferry, Path::new("/etc/ferry/config.toml"));
        assert_eq!(gitlab, Path::new("/etc/gitlab-runner/config.toml"));
    } else {
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        assert_eq!(ferry, Path::new(&home).join(".ferry/config.toml"));
        assert_eq!(gitlab, Path::new(&home).join(".gitlab-runner/config.toml"));
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn add_runner_keeps_trailing_comments_and_a_missing_final_newline_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for original in [
        "concurrent = 3",
        "concurrent = 3\n# [[runners]]\n#   name = \"old, commented out\"\n",
        "# only a comment",
        "",
        "\n\n",
    ] {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, original).unwrap();
        add_runner(
            &path,
            &NewRunner::docker("n", "https://g", "glrt-n", "alpine"),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(original), "{original:?} became {text:?}");
        let rest = &text[original.len()..];
        assert!(
            rest.trim_start().starts_with("[[runners]]\n  name = \"n\""),
            "{text:?}"
        );
        let c = from_toml_str_with_env(&text, "c", &no_env).unwrap();
        assert_eq!(c.runners.len(), 1);
    }
}

#[test]
fn concurrent_edits_do_not_lose_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let name = format!("r{i}");
                add_runner(
                    &path,
                    &NewRunner::docker(&name, "https://g", &format!("glrt-{i}"), "alpine"),
                )
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = from_toml_str_with_env(&std::fs::read_to_string(&path).unwrap(), "c", &no_env).unwrap();
    let mut names: Vec<String> = c.runners.iter().map(|r| r.name.clone()).collect();
    names.sort();
    assert_eq!(names, (0..8).map(|i| format!("r{i}")).collect::<Vec<_>>());
}
