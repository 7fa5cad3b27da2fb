//! The git configuration a `pre_get_sources_script` leaves behind, carried to git on the host
//! through an allow-list (docs/sources-cache-artifacts.md, "get_sources hooks";
//! docs/security.md).
//!
//! The hook runs in a container of the job's image; what it writes with `git config --global`
//! is read back from that container (`git config --global --no-includes --list -z`) and is
//! therefore hostile. Only keys that change how git talks to the network are carried; nothing
//! that names a program, a shell command, a file on the host or a transport that runs a
//! command (`ext::`, `file://`) reaches host git.

/// At most this many entries are carried; the rest are refused.
const MAX_ENTRIES: usize = 200;
/// Longest key and value carried.
const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 8 * 1024;

/// A key the hook set that host git does not get, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedKey {
    pub key: String,
    pub reason: &'static str,
}

/// What is carried, in the order the hook's config listed it, and what is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookConfig {
    pub carried: Vec<(String, String)>,
    pub refused: Vec<RefusedKey>,
}

const NOT_ALLOWED: &str = "not in the allow-list (http.*, url.<https URL>.insteadOf, lfs.*, fetch.*, submodule.*, protocol.<http|https|git>.allow, protocol.version)";
const RUNS_COMMANDS: &str = "it could run a command on the runner host";
const HOST_FILE: &str = "it names a file on the runner host";
const BAD_TARGET: &str = "only http:// and https:// URLs may be rewritten to";
const HOST_CREDENTIALS: &str = "it could use the runner host's credentials";
const LFS_TRANSPORT: &str =
    "git-lfs may fetch only over http:// and https:// with the runner's defaults";

fn network_url(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// `http.*` settings whose value is a path on the machine git runs on: host git would read
/// (or, for cookies, write) a host file the job chose.
const HTTP_PATH_KEYS: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslcainfo",
    "sslcapath",
    "sslcertpasswordprotected",
    "proxysslcert",
    "proxysslkey",
    "proxysslcainfo",
    "proxysslcertpasswordprotected",
    "cookiefile",
    "savecookies",
    // A `sha256//…` pin or the path of a key file.
    "pinnedpubkey",
];

/// Splits `section[.subsection].name`: section and name are case-insensitive in git, the
/// subsection is not.
fn split_key(key: &str) -> Option<(String, Option<&str>, String)> {
    let (section, rest) = key.split_once('.')?;
    let (sub, name) = match rest.rsplit_once('.') {
        Some((sub, name)) => (Some(sub), name),
        None => (None, rest),
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !word(section) || !word(name) || section.contains('.') || name.contains('.') {
        return None;
    }
    Some((section.to_ascii_lowercase(), sub, name.to_ascii_lowercase()))
}

/// Whether one `key=value` may reach host git; `Err(reason)` if not.
fn check(key: &str, value: &str) -> Result<(), &'static str> {
    let Some((section, sub, name)) = split_key(key) else {
        return Err(NOT_ALLOWED);
    };
    if key.len() > MAX_KEY || value.len() > MAX_VALUE {
        return Err("too long");
    }
    match section.as_str() {
        "http" => {
            if HTTP_PATH_KEYS.contains(&name.as_str()) {
                Err(HOST_FILE)
            } else if name == "emptyauth" {
                // `http.emptyAuth` lets curl use the host's Kerberos tickets (SPNEGO).
                Err(HOST_CREDENTIALS)
            } else {
                Ok(())
            }
        }
        "url" => {
            // `url.<base>.insteadOf = <prefix>`: a URL starting with prefix becomes base.
            let Some(base) = sub else {
                return Err(NOT_ALLOWED);
            };
            if name != "insteadof" && name != "pushinsteadof" {
                return Err(NOT_ALLOWED);
            }
            if network_url(base) {
                Ok(())
            } else {
                Err(BAD_TARGET)
            }
        }
        "lfs" => {
            let sub_lower = sub.map(str::to_ascii_lowercase);
            match (sub_lower.as_deref(), name.as_str()) {
                // Programs git-lfs runs.
                (Some(s), _) if s.starts_with("customtransfer.") || s == "customtransfer" => {
                    Err(RUNS_COMMANDS)
                }
                (Some(s), _) if s.starts_with("extension.") || s == "extension" => {
                    Err(RUNS_COMMANDS)
                }
                (None, "storage" | "tempdir") => Err(HOST_FILE),
                // git-lfs ignores git's `protocol.*.allow`: a `file://` endpoint makes its
                // standalone agent copy objects from a repository on the host, ssh uses the
                // host's keys.
                (None, "url" | "pushurl") if !network_url(value) => Err(LFS_TRANSPORT),
                (None, "standalonetransferagent") => Err(LFS_TRANSPORT),
                // `lfs.<url>.standalonetransferagent` and `lfs.<url>.access`: the agent as
                // above; `negotiate` access would use the host's Kerberos tickets.
                (Some(_), "standalonetransferagent" | "access") => Err(LFS_TRANSPORT),
                _ => Ok(()),
            }
        }
        "fetch" => Ok(()),
        "submodule" => match name.as_str() {
            // `submodule.<name>.update = !command` runs a shell command.
            "update" => Err(RUNS_COMMANDS),
            "alternatelocation" | "alternateerrorstrategy" => Err(HOST_FILE),
            _ => Ok(()),
        },
        "protocol" => match (sub.map(str::to_ascii_lowercase).as_deref(), name.as_str()) {
            (None, "version") => Ok(()),
            (Some("http" | "https" | "git"), "allow") => Ok(()),
            // `ext::` runs a command, `file://` reads the host's repositories, `ssh` uses the
            // host's keys; `protocol.allow` would open all of them.
            _ => Err(RUNS_COMMANDS),
        },
        "core" | "credential" | "filter" | "diff" | "merge" | "include" | "includeif" | "alias"
        | "gpg" | "uploadpack" | "remote" | "sequence" | "pager" | "difftool" | "mergetool"
        | "gc" | "receive" | "transfer" | "ssh" | "gui" | "web" | "browser" | "instaweb"
        | "trace2" => Err(RUNS_COMMANDS),
        _ => Err(NOT_ALLOWED),
    }
}

/// Parses `git config --list -z` output (`key\nvalue\0`, or `key\0` for a key without a
/// value) and sorts each entry into carried or refused. Bytes that are not UTF-8 refuse the
/// entry.
pub fn carried_git_config(listing: &[u8]) -> HookConfig {
    let mut out = HookConfig::default();
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            out.refused.push(RefusedKey {
                key: String::from_utf8_lossy(entry)
                    .split('\n')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                reason: "not UTF-8",
            });
            continue;
        };
        let (key, value) = entry.split_once('\n').unwrap_or((entry, "true"));
        let verdict = if out.carried.len() >= MAX_ENTRIES {
            Err("too many entries")
        } else {
            check(key, value)
        };
        match verdict {
            Ok(()) => out.carried.push((key.to_string(), value.to_string())),
            Err(reason) => out.refused.push(RefusedKey {
                key: key.chars().take(200).collect(),
                reason,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in entries {
            out.extend_from_slice(format!("{k}\n{v}\0").as_bytes());
        }
        out
    }

    #[test]
    fn network_settings_are_carried() {
        let c = carried_git_config(&listing(&[
            ("http.sslverify", "false"),
            ("http.https://gitlab.example.com/.extraheader", "X-Trace: 1"),
            (
                "url.https://mirror.example.com/.insteadof",
                "https://github.com/",
            ),
            ("lfs.concurrenttransfers", "2"),
            ("lfs.url", "https://lfs.example.com/g/p.git/info/lfs"),
            ("lfs.pushurl", "http://lfs.example.com/g/p.git/info/lfs"),
            ("fetch.parallel", "4"),
            ("submodule.fetchjobs", "4"),
            ("submodule.lib.url", "https://example.com/lib.git"),
            ("protocol.version", "2"),
            ("protocol.https.allow", "always"),
        ]));
        assert!(c.refused.is_empty(), "{:?}", c.refused);
        assert_eq!(c.carried.len(), 11);
        assert_eq!(c.carried[0], ("http.sslverify".into(), "false".into()));
    }

    #[test]
    fn keys_that_run_commands_or_name_host_files_are_refused() {
        let bad = [
            ("core.fsmonitor", "touch /tmp/x"),
            ("core.sshcommand", "sh -c id"),
            ("core.hookspath", "/tmp/hooks"),
            ("credential.helper", "!sh -c id"),
            ("credential.https://x.example.com.helper", "store"),
            ("filter.lfs.smudge", "sh -c id"),
            ("diff.external", "id"),
            ("include.path", "/etc/gitconfig"),
            ("includeif.gitdir:/.path", "/x"),
            ("submodule.lib.update", "!id"),
            ("lfs.customtransfer.x.path", "/bin/sh"),
            ("lfs.extension.x.smudge", "id"),
            ("lfs.storage", "/etc"),
            ("http.sslcert", "/etc/ferry/client.pem"),
            ("http.https://x/.sslkey", "/root/key"),
            ("http.cookiefile", "/root/cookies"),
            ("http.pinnedpubkey", "/etc/ssl/private/k.pem"),
            (
                "url.file:///var/lib/ferry/git-cache/project-2.git.insteadof",
                "https://g/",
            ),
            ("url.ext::sh -c id.insteadof", "https://g/"),
            ("protocol.ext.allow", "always"),
            ("protocol.file.allow", "always"),
            ("protocol.allow", "always"),
            ("lfs.url", "file:///var/lib/ferry/git-cache/project-2.git"),
            ("lfs.pushurl", "ssh://git@example.com/g/p.git"),
            ("lfs.url", "/srv/repo"),
            ("lfs.standalonetransferagent", "lfs-standalone-file"),
            ("lfs.https://g.example.com/.standalonetransferagent", "x"),
            ("lfs.https://g.example.com/.access", "negotiate"),
            ("remote.origin.lfsurl", "file:///srv/repo"),
            ("http.emptyauth", "true"),
            ("http.https://g.example.com/.emptyAuth", "auto"),
            ("remote.origin.uploadpack", "id"),
            ("uploadpack.packobjectshook", "id"),
            ("alias.fetch", "!id"),
            ("gpg.program", "id"),
            ("core.pager", "id"),
            ("notakey", "x"),
        ];
        let c = carried_git_config(&listing(&bad));
        assert!(c.carried.is_empty(), "{:?}", c.carried);
        assert_eq!(c.refused.len(), bad.len());
        let reason = |k: &str| c.refused.iter().find(|r| r.key == k).unwrap().reason;
        assert_eq!(reason("core.fsmonitor"), RUNS_COMMANDS);
        assert_eq!(reason("http.sslcert"), HOST_FILE);
        assert_eq!(reason("lfs.url"), LFS_TRANSPORT);
        assert_eq!(reason("lfs.https://g.example.com/.access"), LFS_TRANSPORT);
        assert_eq!(reason("http.emptyauth"), HOST_CREDENTIALS);
        assert_eq!(
            reason("http.https://g.example.com/.emptyAuth"),
            HOST_CREDENTIALS
        );
        assert_eq!(
            reason("url.file:///var/lib/ferry/git-cache/project-2.git.insteadof"),
            BAD_TARGET
        );
    }

    #[test]
    fn odd_listings_never_panic() {
        let c = carried_git_config(b"\0\0http.sslverify\0\xff\xfe\nx\0a.b\n");
        assert_eq!(c.carried, [("http.sslverify".into(), "true".into())]);
        assert_eq!(c.refused.len(), 2);
        let many: Vec<(String, String)> = (0..300)
            .map(|i| (format!("http.x{i}"), "1".to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let c = carried_git_config(&listing(&refs));
        assert_eq!(c.carried.len(), MAX_ENTRIES);
        assert_eq!(c.refused.len(), 100);
    }
}
