//! Running the git CLI on the host: credentials through the environment only, a config that
//! ignores the host's and the repository's hooks, output masked and streamed to the job log,
//! and cancellation that kills the process.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::engine::LogSink;
use crate::jobfs::JobDir;
use std::os::fd::AsRawFd;

use super::SourceError;

/// The parts of a clone URL: the URL without `user:password@`, and the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitUrl {
    pub clean: String,
    /// `scheme://host[:port]/`, for scoping the auth header.
    pub origin: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn split_url(url: &str) -> SplitUrl {
    let Some(scheme_end) = url.find("://") else {
        return SplitUrl {
            clean: url.to_string(),
            origin: None,
            user: None,
            password: None,
        };
    };
    let after = &url[scheme_end + 3..];
    let auth_end = after.find('/').unwrap_or(after.len());
    let authority = &after[..auth_end];
    let rest = &after[auth_end..];
    let scheme = &url[..scheme_end];
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
            None => (Some(percent_decode(ui)), None),
        },
    };
    SplitUrl {
        clean: format!("{scheme}://{host}{rest}"),
        origin: Some(format!("{scheme}://{host}/")),
        user,
        password,
    }
}

/// The URL with any `user:password@` removed (for logs, `.git/config`, errors).
pub(crate) fn strip_credentials(url: &str) -> String {
    split_url(url).clean
}

/// Config every git command ferry runs gets, on top of the spec's own `git_config`.
const BASE_CONFIG: &[(&str, &str)] = &[
    // The project dir may belong to another uid after a job ran in it.
    ("safe.directory", "*"),
    // A previous job could have planted hooks or an fsmonitor command in the repository:
    // ferry runs git on the host, so nothing from the repository may execute.
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("gc.autoDetach", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("init.defaultBranch", "none"),
    ("advice.detachedHead", "false"),
    ("credential.interactive", "never"),
    // GIT_SSH_COMMAND (below) wins over it; set all the same, for git-lfs and any other reader.
    ("core.sshCommand", "false"),
    // `auto` would let curl try SPNEGO with the host's Kerberos tickets (docs/security.md).
    ("http.emptyAuth", "false"),
];

/// The transports host git may use (docs/security.md, "What git can reach"). A repository
/// names its submodules' URLs: with the ssh transport host git would use the host's keys and
/// agent, with `file://` or a local path it would read the host's repositories, with `ext::` it
/// would run a command. gitlab-runner runs git in a helper container that has none of these;
/// ferry refuses every transport but https, and http where the job's repository (or the
/// runner's URL for `GIT_SUBMODULE_FORCE_HTTPS`) is http. A local repository URL (`ferry
/// exec`'s `file://` store) gets `file` for the commands ferry itself runs (`user`), never for
/// the submodule clones git starts (those set `GIT_PROTOCOL_FROM_USER=0`).
fn protocol_config(repo_url: &str, auth_origins: &[String]) -> Vec<(String, String)> {
    let repo = scheme(repo_url);
    let http = http_allowed(repo_url, auth_origins);
    let local = repo == "file" || (repo.is_empty() && is_local_path(repo_url));
    let mut out = vec![
        ("protocol.allow", "never"),
        ("protocol.https.allow", "always"),
        ("protocol.ssh.allow", "never"),
        ("protocol.ext.allow", "never"),
        ("protocol.file.allow", if local { "user" } else { "never" }),
    ];
    if http {
        out.push(("protocol.http.allow", "always"));
    }
    out.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The scheme of a URL, lowercase; empty without `://`.
fn scheme(url: &str) -> String {
    url.find("://")
        .map(|i| url[..i].to_ascii_lowercase())
        .unwrap_or_default()
}

/// The http rule: plain http only where the job's repository (or the runner's URL) is http.
fn http_allowed(repo_url: &str, auth_origins: &[String]) -> bool {
    scheme(repo_url) == "http" || auth_origins.iter().any(|o| scheme(o) == "http")
}

/// git's rule: a URL without `://` is a local path unless a `:` comes before the first `/`
/// (then it is scp-like ssh, `git@host:path`).
fn is_local_path(url: &str) -> bool {
    match (url.find(':'), url.find('/')) {
        (Some(c), Some(s)) => s < c,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The environment variables of ferry's own that git keeps: where programs are, the proxies
/// and CA files the operator set for the host, where git's own parts are. Everything else is
/// dropped (`SSH_AUTH_SOCK`, `SSH_ASKPASS`, every other `GIT_*`, `KRB5CCNAME`, …), `HOME` is `/dev/null` (no `~/.netrc`, no
/// `~/.gitconfig` for git-lfs) and Kerberos gets no ticket cache or config. `HOME` does not
/// hide `~/.ssh`: OpenSSH finds it through the passwd database. What keeps the host's ssh keys
/// and agent from git are the protocol settings ([`protocol_config`]) and
/// `GIT_SSH_COMMAND=false` (docs/security.md, "Which transports git uses").
const KEPT_ENV: &[&str] = &[
    "PATH",
    "TMPDIR",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    // A git installed under /opt or by Nix needs these to find its helpers (`git-remote-https`),
    // its libraries and its CA file. They are the operator's, as set for ferry's own process:
    // job variables never reach ferry's environment, so a job cannot set them.
    "GIT_EXEC_PATH",
    "LD_LIBRARY_PATH",
    "NIX_SSL_CERT_FILE",
];

/// How ferry runs git for one job.
pub(crate) struct Git {
    env: Vec<(String, String)>,
    secrets: Vec<String>,
    /// With these set, each git process sees the file system read-only except them
    /// ([`super::confine`]), where the host allows it.
    writable: Vec<std::path::PathBuf>,
    /// (host path, container path): git's messages name the project dir as the job sees it.
    display: Option<(String, String)>,
    /// Plain http is allowed besides https ([`protocol_config`]).
    http: bool,
}

/// Replaces `from` by `to` where it stands as a whole path (not `/builds/p` in `/builds/p2`).
fn replace_path(text: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || "-_.".contains(c));
        out.push_str(&rest[..i]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Where a git command runs: a directory of ferry's (by path) or one below the project dir.
#[derive(Clone, Copy)]
enum Cwd<'a> {
    Path(&'a Path),
    Dir(&'a JobDir),
}

/// What a finished git command printed.
pub(crate) struct Output {
    pub stdout: String,
}

impl Git {
    /// `auth_origins`: other origins (`scheme://host[:port]/`, the runner's own GitLab URL)
    /// that get the job token's header too.
    /// `job_config`: what a `pre_get_sources_script` configured (already through the
    /// allow-list of [`super::hooks`]); it comes first, so ferry's own settings win over it.
    pub(crate) fn new(
        repo_url: &str,
        job_config: &[(String, String)],
        extra_config: &[(String, String)],
        auth_origins: &[String],
    ) -> Git {
        let split = split_url(repo_url);
        let mut config: Vec<(String, String)> = job_config.to_vec();
        config.extend(
            BASE_CONFIG
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        config.extend(protocol_config(repo_url, auth_origins));
        let mut secrets = Vec::new();
        if let (Some(origin), Some(user)) = (&split.origin, &split.user) {
            let pass = split.password.clone().unwrap_or_default();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            // Scoped to the GitLab host: submodules there get it too, other hosts do not.
            for o in std::iter::once(origin).chain(auth_origins.iter().filter(|o| *o != origin)) {
                config.push((
                    format!("http.{o}.extraHeader"),
                    format!("Authorization: Basic {basic}"),
                ));
            }
            secrets.push(basic);
            if !pass.is_empty() {
                secrets.push(pass);
            }
        }
        if let Some(ui_end) = repo_url.find("://").map(|i| i + 3)
            && let Some(at) = repo_url[ui_end..]
                .split('/')
                .next()
                .and_then(|a| a.rfind('@'))
        {
            secrets.push(repo_url[ui_end..ui_end + at].to_string());
        }
        config.extend(extra_config.iter().cloned());
        let mut env: Vec<(String, String)> = KEPT_ENV
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        env.extend([
            ("HOME".to_string(), "/dev/null".to_string()),
            // ssh is refused by the protocol settings; should anything still start it (git-lfs
            // for an ssh `lfs.url`), it runs `false`.
            ("GIT_SSH_COMMAND".to_string(), "false".to_string()),
            ("GIT_SSH_VARIANT".to_string(), "simple".to_string()),
            // No Kerberos ticket of the host's for curl's SPNEGO (with the default cache, a
            // ticket is used even without KRB5CCNAME).
            ("KRB5CCNAME".to_string(), "FILE:/dev/null".to_string()),
            ("KRB5_CONFIG".to_string(), "/dev/null".to_string()),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            ("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("GCM_INTERACTIVE".to_string(), "Never".to_string()),
            ("GIT_LFS_SKIP_SMUDGE".to_string(), "1".to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
            ("GIT_CONFIG_COUNT".to_string(), config.len().to_string()),
        ]);
        for (i, (k, v)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), k));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
        }
        secrets.retain(|s| s.len() >= 4);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Git {
            env,
            secrets,
            writable: Vec::new(),
            display: None,
            http: http_allowed(repo_url, auth_origins),
        }
    }

    /// Whether `url` uses a transport host git may use for the network: https, or http under
    /// the http rule of [`protocol_config`]. Never ssh, `file://`, a local path or `ext::`.
    pub(crate) fn network_url(&self, url: &str) -> bool {
        match scheme(url).as_str() {
            "https" => true,
            "http" => self.http,
            _ => false,
        }
    }

    /// Each git process may write only below `dirs` (those that exist when it starts).
    pub(crate) fn confine(mut self, dirs: &[&Path]) -> Git {
        self.writable = dirs.iter().map(|d| d.to_path_buf()).collect();
        self
    }

    /// Show `host_dir` as `shown` in git's output.
    pub(crate) fn display_dir(mut self, host_dir: &Path, shown: Option<&str>) -> Git {
        if let Some(shown) = shown {
            let host = host_dir.display().to_string();
            self.display = Some((
                host.trim_end_matches('/').to_string(),
                shown.trim_end_matches('/').to_string(),
            ));
        }
        self
    }

    pub(crate) fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "[MASKED]");
        }
        if let Some((host, shown)) = &self.display {
            out = replace_path(&out, host, shown);
        }
        out
    }

    fn command(&self, dir: Cwd<'_>, args: &[String]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args);
        let (fd, cwd) = match dir {
            Cwd::Path(p) => {
                cmd.current_dir(p);
                (None, p)
            }
            Cwd::Dir(d) => (Some(d.as_fd().as_raw_fd()), d.path()),
        };
        let confinement = if self.writable.is_empty() || super::confine::available().is_err() {
            None
        } else {
            let writable: Vec<&Path> = self
                .writable
                .iter()
                .map(|p| p.as_path())
                .filter(|p| p.is_dir())
                .collect();
            super::confine::Confinement::new(&writable, &[cwd])
        };
        cmd.env_clear();
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Like gitlab-runner's helper (umask 0000): files git writes are world-writable, so a
        // job image with a non-root USER can still write its checkout. A job directory is
        // entered through its descriptor, opened beneath the project dir without links; with a
        // confinement git then gets its own read-only view of the host (docs/security.md).
        // SAFETY: umask, fchdir and `Confinement::enter` make only async-signal-safe system
        // calls; the descriptor stays open until exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(0);
                if let Some(fd) = fd
                    && libc::fchdir(fd) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                match &confinement {
                    Some(c) => c.enter(),
                    None => Ok(()),
                }
            });
        }
        // Its own process group, so cancelling also stops git's helpers (git-remote-http).
        cmd.process_group(0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `git args` in `dir`. With `log`, its output is streamed there (masked);
    /// without, stdout is returned and only failures show stderr.
    pub(crate) async fn run(
        &self,
        dir: &Path,
        args: &[String],
        log: Option<&mut LogSink<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Output, SourceError> {
        self.run_in(Cwd::Path(dir), args, log, cancel).await
    }

    /// [`Git::run`] in a directory below the project dir, entered by its handle.
    pub(crate) async fn run_at(
        &self,
        dir: &JobDir,
        args: &[String],
        log: Option<&mut LogSink<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Output, SourceError> {
        self.run_in(Cwd::Dir(dir), args, log, cancel).await
    }

    async fn run_in(
        &self,
        dir: Cwd<'_>,
        args: &[String],
        mut log: Option<&mut LogSink<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Output, SourceError> {
        let shown = args.first().cloned().unwrap_or_default();
        let command_text = self.mask(&args.join(" "));
        let mut child = self
            .command(dir, args)
            .spawn()
            .map_err(|e| SourceError::Io {
                context: format!("running git {shown}"),
                source: e,
            })?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(SourceError::InvalidSpec("git pipes missing".into()));
        };
        let mut out_lines = BufReader::new(out).lines();
        let mut err_lines = BufReader::new(err).lines();
        let mut stdout = String::new();
        let mut tail: VecDeque<String> = VecDeque::new();
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            let (line, is_err) = tokio::select! {
                _ = cancel.cancelled() => {
                    kill_group(&mut child).await;
                    return Err(SourceError::Cancelled);
                }
                l = out_lines.next_line(), if !out_done => (l, false),
                l = err_lines.next_line(), if !err_done => (l, true),
            };
            let line = match line {
                Ok(Some(l)) => l,
                Ok(None) | Err(_) => {
                    if is_err {
                        err_done = true;
                    } else {
                        out_done = true;
                    }
                    continue;
                }
            };
            let masked = self.mask(&line);
            if is_err {
                tail.push_back(masked.clone());
                if tail.len() > 20 {
                    tail.pop_front();
                }
            }
            match log.as_deref_mut() {
                Some(l) => {
                    l.write_all(format!("{masked}\n").as_bytes())
                        .await
                        .map_err(|e| SourceError::Io {
                            context: "writing job log".into(),
                            source: e,
                        })?;
                }
                None if !is_err => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
                None => {}
            }
        }
        let status = tokio::select! {
            _ = cancel.cancelled() => {
                kill_group(&mut child).await;
                return Err(SourceError::Cancelled);
            }
            s = child.wait() => s.map_err(|e| SourceError::Io {
                context: format!("waiting for git {shown}"),
                source: e,
            })?,
        };
        if !status.success() {
            if let Some(transport) = tail.iter().find_map(|l| refused_transport(l)) {
                return Err(SourceError::TransportRefused {
                    command: command_text,
                    transport,
                });
            }
            return Err(SourceError::Git {
                command: command_text,
                status: status.to_string(),
                output: Vec::from(tail).join("\n"),
            });
        }
        Ok(Output { stdout })
    }
}

/// The transport of git's `fatal: transport 'ssh' not allowed` ([`protocol_config`]).
fn refused_transport(line: &str) -> Option<String> {
    let name = line
        .strip_prefix("fatal: transport '")?
        .strip_suffix("' not allowed")?;
    Some(name.chars().take(40).collect())
}

/// SIGKILL to git's whole process group, then reap git.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: plain syscall; the group was created for this child by process_group(0).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::super::run::s;
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let s = split_url("https://gitlab-ci-token:glcbt-abc%2Fx@gitlab.example.com:8443/g/p.git");
        assert_eq!(s.clean, "https://gitlab.example.com:8443/g/p.git");
        assert_eq!(
            s.origin.as_deref(),
            Some("https://gitlab.example.com:8443/")
        );
        assert_eq!(s.user.as_deref(), Some("gitlab-ci-token"));
        assert_eq!(s.password.as_deref(), Some("glcbt-abc/x"));
        assert_eq!(strip_credentials("file:///tmp/r.git"), "file:///tmp/r.git");
        assert_eq!(strip_credentials("/tmp/r.git"), "/tmp/r.git");
    }

    #[test]
    fn host_paths_are_shown_as_container_paths() {
        let g = Git::new("/r.git", &[], &[], &[])
            .display_dir(Path::new("/srv/b/p"), Some("/builds/g/p"));
        assert_eq!(
            g.mask("Cloning into '/srv/b/p/vendor/lib'... /srv/b/p2 /srv/b/p"),
            "Cloning into '/builds/g/p/vendor/lib'... /srv/b/p2 /builds/g/p"
        );
    }

    /// git writes only where the job's own directories are: a git process that tries to write
    /// anywhere else (as a bug exploited through a planted file would) gets a read-only file
    /// system.
    #[tokio::test]
    async fn confined_git_cannot_write_outside_the_job_directories() {
        if let Err(reason) = super::super::confine::available() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: git confinement unavailable: {reason}"
            );
            return;
        }
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let g = Git::new("/r.git", &[], &[], &[]).confine(&[inside.path()]);
        let cancel = CancellationToken::new();
        let write = |p: &Path| {
            vec![
                "config".to_string(),
                "--file".to_string(),
                p.display().to_string(),
                "a.b".to_string(),
                "c".to_string(),
            ]
        };
        let victim = outside.path().join("planted");
        let err = g
            .run(inside.path(), &write(&victim), None, &cancel)
            .await
            .err()
            .expect("writing outside must fail");
        assert!(err.to_string().contains("Read-only file system"), "{err}");
        assert!(!victim.exists());
        g.run(
            inside.path(),
            &write(&inside.path().join("ok")),
            None,
            &cancel,
        )
        .await
        .unwrap();
        assert!(inside.path().join("ok").is_file());
    }

    #[test]
    fn only_https_and_the_projects_own_transport_are_allowed() {
        let get = |url: &str, origins: &[String]| {
            let c = protocol_config(url, origins);
            let v = |k: &str| {
                c.iter()
                    .rev()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            (
                v("protocol.allow"),
                v("protocol.http.allow"),
                v("protocol.file.allow"),
            )
        };
        let never = Some("never".to_string());
        let https = get("https://t:x@gitlab.example.com/g/p.git", &[]);
        assert_eq!(https, (never.clone(), None, never.clone()));
        let http = get("HTTP://gitlab.local/g/p.git", &[]);
        assert_eq!(http.1.as_deref(), Some("always"));
        let forced = get("https://g/p.git", &["http://gitlab.local/".to_string()]);
        assert_eq!(forced.1.as_deref(), Some("always"));
        for local in ["file:///srv/store.git", "/srv/store.git", "./x:y"] {
            assert_eq!(get(local, &[]).2.as_deref(), Some("user"), "{local}");
        }
        assert_eq!(get("git@host:g/p.git", &[]).2, never);
        assert_eq!(
            refused_transport("fatal: transport 'ssh' not allowed").as_deref(),
            Some("ssh")
        );
        assert_eq!(refused_transport("fatal: unable to access"), None);
    }

    /// git sees none of ferry's environment but the kept names: cargo runs this test with its
    /// `CARGO_*` variables (as a host may have `SSH_AUTH_SOCK`), and none reaches git.
    #[tokio::test]
    async fn git_gets_no_inherited_environment_and_no_ssh() {
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some(), "run by cargo");
        let dir = tempfile::tempdir().unwrap();
        let g = Git::new("https://gitlab.example.com/g/p.git", &[], &[], &[]);
        let out = g
            .run(
                dir.path(),
                &[s("-c"), s("alias.showenv=!env"), s("showenv")],
                None,
                &CancellationToken::new(),
            )
            .await
            .unwrap()
            .stdout;
        let vars: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("HOME"), Some("/dev/null"));
        assert_eq!(get("GIT_SSH_COMMAND"), Some("false"));
        assert_eq!(get("KRB5CCNAME"), Some("FILE:/dev/null"));
        assert_eq!(get("KRB5_CONFIG"), Some("/dev/null"));
        assert!(
            !vars
                .iter()
                .any(|(n, _)| n.starts_with("CARGO_") || n.starts_with("SSH_")),
            "{out}"
        );
    }

    /// curl's SPNEGO with the host's Kerberos tickets stays off even where a hook's config
    /// (which comes first) asked for it.
    #[tokio::test]
    async fn empty_auth_is_off_whatever_the_job_config_says() {
        let dir = tempfile::tempdir().unwrap();
        let job = [(s("http.emptyAuth"), s("auto"))];
        let g = Git::new("https://gitlab.example.com/g/p.git", &job, &[], &[]);
        let out = g
            .run(
                dir.path(),
                &[s("config"), s("--get"), s("http.emptyauth")],
                None,
                &CancellationToken::new(),
            )
            .await
            .unwrap()
            .stdout;
        assert_eq!(out.trim(), "false");
    }

    #[test]
    fn https_and_http_under_the_http_rule_are_network_urls() {
        let g = Git::new("https://gitlab.example.com/g/p.git", &[], &[], &[]);
        assert!(g.network_url("HTTPS://lfs.example.com/x"));
        for url in [
            "http://lfs.example.com/x",
            "file:///srv/repo",
            "/srv/repo",
            "ssh://git@h/x",
            "git@h:x",
            "ext::sh -c id",
        ] {
            assert!(!g.network_url(url), "{url}");
        }
        let g = Git::new("http://gitlab.example.com/g/p.git", &[], &[], &[]);
        assert!(g.network_url("http://lfs.example.com/x"));
        assert!(!g.network_url("file:///srv/repo"));
    }

    #[test]
    fn secrets_are_masked() {
        let g = Git::new(
            "http://gitlab-ci-token:SECRET-TOKEN@h/g/p.git",
            &[],
            &[],
            &[],
        );
        let m = g.mask("fatal: unable to access 'http://gitlab-ci-token:SECRET-TOKEN@h/g/p.git/'");
        assert!(!m.contains("SECRET-TOKEN"));
        assert!(m.contains("[MASKED]"));
        let header = g
            .env
            .iter()
            .find(|(_, v)| v.starts_with("Authorization: Basic "))
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(
            !g.mask(&header)
                .contains(header.trim_start_matches("Authorization: Basic "))
        );
    }
}
