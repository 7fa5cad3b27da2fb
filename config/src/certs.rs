//! TLS files found by host name, as gitlab-runner finds them: without `tls-ca-file`,
//! `tls-cert-file` or `tls-key-file`, a file named `<host>.crt` (the CA), `<host>.auth.crt` and
//! `<host>.auth.key` (a client certificate) in a certificate directory is used for GitLab at
//! `<host>` (any port). The directories, first match wins: `certs/` beside the config file in
//! use, then gitlab-runner's (`/etc/gitlab-runner/certs` as root, `~/.gitlab-runner/certs`
//! otherwise). A key set in the file always wins (docs/configuration.md).

use std::path::{Path, PathBuf};

use crate::RunnerSection;

/// The certificate directories for the config file at `config_path`, in search order.
pub fn certificate_dirs(config_path: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(parent) = config_path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        dirs.push(parent.join("certs"));
    }
    if let Some(gitlab_runner) = crate::edit::gitlab_runner_config_path().parent() {
        let d = gitlab_runner.join("certs");
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The host part of a GitLab URL (`https://user@gitlab.example.com:8443/root` →
/// `gitlab.example.com`; an IPv6 literal without its brackets).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let addr = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match addr.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => addr.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// The TLS files in `dirs` for GitLab at `url`: (CA, client certificate, client key).
pub fn find_for_url(url: &str, dirs: &[PathBuf]) -> [Option<PathBuf>; 3] {
    let Some(host) = url_host(url) else {
        return [None, None, None];
    };
    // A host name never contains a path separator; refuse anything that would.
    if host.contains(['/', '\\']) || host.starts_with('.') {
        return [None, None, None];
    }
    let find = |suffix: &str| {
        dirs.iter()
            .map(|d| d.join(format!("{host}{suffix}")))
            .find(|p| p.is_file())
    };
    [find(".crt"), find(".auth.crt"), find(".auth.key")]
}

/// Fills the TLS files a runner entry does not set from the certificate directories.
pub fn fill_from_dirs(runner: &mut RunnerSection, dirs: &[PathBuf]) {
    let [ca, cert, key] = find_for_url(&runner.url, dirs);
    if runner.tls_ca_file.is_none() {
        runner.tls_ca_file = ca;
    }
    if runner.tls_cert_file.is_none() {
        runner.tls_cert_file = cert;
    }
    if runner.tls_key_file.is_none() {
        runner.tls_key_file = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_a_url() {
        assert_eq!(
            url_host("https://gitlab.example.com"),
            Some("gitlab.example.com")
        );
        assert_eq!(
            url_host("https://u:p@gitlab.example.com:8443/root/ci"),
            Some("gitlab.example.com")
        );
        assert_eq!(url_host("http://[::1]:3000/"), Some("::1"));
        assert_eq!(url_host("https://"), None);
    }

    #[test]
    fn files_are_found_by_host_and_keys_win() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("gitlab.example.com.crt"), "ca-a").unwrap();
        std::fs::write(b.path().join("gitlab.example.com.crt"), "ca-b").unwrap();
        std::fs::write(b.path().join("gitlab.example.com.auth.crt"), "cert").unwrap();
        std::fs::write(b.path().join("gitlab.example.com.auth.key"), "key").unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        let [ca, cert, key] = find_for_url("https://gitlab.example.com:8443", &dirs);
        assert_eq!(ca, Some(a.path().join("gitlab.example.com.crt")));
        assert_eq!(cert, Some(b.path().join("gitlab.example.com.auth.crt")));
        assert_eq!(key, Some(b.path().join("gitlab.example.com.auth.key")));
        assert_eq!(
            find_for_url("https://other.example.com", &dirs),
            [None, None, None]
        );

        let mut runner = RunnerSection {
            url: "https://gitlab.example.com".into(),
            tls_ca_file: Some("/explicit/ca.pem".into()),
            ..RunnerSection::default()
        };
        fill_from_dirs(&mut runner, &dirs);
        assert_eq!(runner.tls_ca_file, Some(PathBuf::from("/explicit/ca.pem")));
        assert_eq!(
            runner.tls_key_file,
            Some(b.path().join("gitlab.example.com.auth.key"))
        );
    }

    #[test]
    fn the_config_files_own_certs_dir_comes_first() {
        let dirs = certificate_dirs(Path::new("/etc/ferry/config.toml"));
        assert_eq!(dirs[0], Path::new("/etc/ferry/certs"));
        assert!(
            dirs.len() == 2 && dirs[1].ends_with(".gitlab-runner/certs")
                || dirs[1] == Path::new("/etc/gitlab-runner/certs")
        );
        assert_eq!(
            certificate_dirs(Path::new("config.toml"))[0],
            Path::new("./certs")
        );
    }
}
