//! Registry credentials for a pull, in gitlab-runner's order (first match for the image's
//! registry wins): the `DOCKER_AUTH_CONFIG` job variable, the Docker config of the user ferry
//! runs as (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), then the credentials
//! GitLab sent in the job payload. Docker config files may hold `auths` entries (`auth` =
//! base64 `user:password`, or `username`/`password`, or `identitytoken`) or name a credential
//! helper (`credsStore`, `credHelpers`), which is run as `docker-credential-<name> get`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::convert::split_image;
use crate::engine::{JobEnv, RegistryAuth};

/// Docker Hub's key in config files.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Normalise a registry as written in credentials (`https://index.docker.io/v1/`,
/// `registry.example.com`, ...) to the host an image name carries.
pub fn registry_host(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// The image's registry as the host part (`docker.io` for Docker Hub names).
pub fn image_registry(image: &str) -> String {
    registry_host(&split_image(image).0)
}

/// Credentials from the payload (GitLab's own registry, with the job token).
pub fn from_payload(registry: &str, auth: &[RegistryAuth]) -> Option<DockerCredentials> {
    auth.iter()
        .find(|a| registry_host(&a.registry) == registry)
        .map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.registry.clone()),
            ..Default::default()
        })
}

fn from_entry(key: &str, e: &AuthEntry) -> Option<DockerCredentials> {
    let server = Some(key.to_string());
    if let Some(token) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Some(DockerCredentials {
            identitytoken: Some(token.clone()),
            serveraddress: server,
            ..Default::default()
        });
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password)
        && !u.is_empty()
    {
        return Some(DockerCredentials {
            username: Some(u.clone()),
            password: Some(p.clone()),
            serveraddress: server,
            ..Default::default()
        });
    }
    let raw = e.auth.as_ref().filter(|a| !a.is_empty())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(DockerCredentials {
        username: Some(u.to_string()),
        password: Some(p.to_string()),
        serveraddress: server,
        ..Default::default()
    })
}

/// Run `program get` with the server on stdin (the credential-helper protocol).
async fn run_helper(program: &Path, server: &str) -> Option<DockerCredentials> {
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).ok()?;
    if reply.username == "<token>" {
        return Some(DockerCredentials {
            identitytoken: Some(reply.secret),
            serveraddress: Some(server.to_string()),
            ..Default::default()
        });
    }
    Some(DockerCredentials {
        username: Some(reply.username),
        password: Some(reply.secret),
        serveraddress: Some(server.to_string()),
        ..Default::default()
    })
}

/// Credentials for `registry` in one Docker config (JSON text).
async fn from_config(text: &str, registry: &str) -> Option<DockerCredentials> {
    let cfg: DockerConfigFile = serde_json::from_str(text).ok()?;
    let server = if registry == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    };
    if let Some(helper) = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| registry_host(k) == registry)
    {
        return run_helper(
            &PathBuf::from(format!("docker-credential-{}", helper.1)),
            &server,
        )
        .await;
    }
    if let Some((key, entry)) = cfg.auths.iter().find(|(k, _)| registry_host(k) == registry)
        && let Some(c) = from_entry(key, entry)
    {
        return Some(c);
    }
    if let Some(store) = cfg.creds_store.as_ref().filter(|s| !s.is_empty()) {
        return run_helper(
            &PathBuf::from(format!("docker-credential-{store}")),
            &server,
        )
        .await;
    }
    None
}

fn docker_config_path() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DOCKER_CONFIG")
        && !dir.is_empty()
    {
        return Some(Path::new(&dir).join("config.json"));
    }
    let home = std::env::var("HOME").ok().filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".docker/config.json"))
}

/// Credentials for pulling `image` for this job, with where they came from (for the log line
/// gitlab-runner prints: `Authenticating with credentials from ...`).
pub async fn resolve(image: &str, env: &JobEnv) -> Option<(DockerCredentials, String)> {
    let registry = image_registry(image);
    if let Some(v) = env
        .variables
        .iter()
        .rev()
        .find(|v| v.name == "DOCKER_AUTH_CONFIG")
        && let Some(c) = from_config(&v.value, &registry).await
    {
        return Some((c, "$DOCKER_AUTH_CONFIG".into()));
    }
    if let Some(path) = docker_config_path()
        && let Ok(text) = tokio::fs::read_to_string(&path).await
        && let Some(c) = from_config(&text, &registry).await
    {
        return Some((c, path.display().to_string()));
    }
    from_payload(&registry, &env.registry_auth).map(|c| (c, "job payload (GitLab Registry)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(reg: &str) -> RegistryAuth {
        RegistryAuth {
            registry: reg.into(),
            username: "u".into(),
            password: "p".into(),
        }
    }

    #[test]
    fn payload_credentials_match_the_registry() {
        let list = vec![
            auth("registry.gitlab.com"),
            auth("https://index.docker.io/v1/"),
        ];
        let c = from_payload(&image_registry("registry.gitlab.com/g/p:1"), &list).unwrap();
        assert_eq!(c.serveraddress.as_deref(), Some("registry.gitlab.com"));
        let c = from_payload(&image_registry("ruby:3"), &list).unwrap();
        assert_eq!(
            c.serveraddress.as_deref(),
            Some("https://index.docker.io/v1/")
        );
        assert!(from_payload(&image_registry("quay.io/x/y"), &list).is_none());
    }

    #[tokio::test]
    async fn docker_config_entries() {
        // "user:pa:ss" in base64
        let cfg = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "registry.example.com:5000": {"username": "bob", "password": "pw"},
            "https://tok.example.com/v2/": {"identitytoken": "itok"}
        }}"#;
        let hub = from_config(cfg, "docker.io").await.unwrap();
        assert_eq!(
            (hub.username.as_deref(), hub.password.as_deref()),
            (Some("user"), Some("pa:ss"))
        );
        let r = from_config(cfg, &image_registry("registry.example.com:5000/g/i:1"))
            .await
            .unwrap();
        assert_eq!(r.username.as_deref(), Some("bob"));
        let t = from_config(cfg, "tok.example.com").await.unwrap();
        assert_eq!(t.identitytoken.as_deref(), Some("itok"));
        assert!(from_config(cfg, "quay.io").await.is_none());
        assert!(from_config("not json", "docker.io").await.is_none());
    }

    #[tokio::test]
    async fn credential_helper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"s3cret\"}' \"$server\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = run_helper(&helper, "registry.example.com").await.unwrap();
        assert_eq!(c.username.as_deref(), Some("helper-user"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert!(run_helper(&dir.path().join("missing"), "x").await.is_none());
    }
}
