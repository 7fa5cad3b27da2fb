//! `.runner_system_id`, beside config.toml: the `system_id` sent with every job request, so
//! GitLab can tell several runner managers sharing one token apart.
//!
//! Same rules as gitlab-runner (`configfile/system_id.go`): a file whose trimmed content matches
//! `^[sr]_[0-9a-zA-Z]{12}$` is used as is; otherwise a new ID is made: `s_` + the first 12 hex
//! digits of HMAC-SHA256(key = machine id, "gitlab-runner") when `/etc/machine-id` (or
//! `/var/lib/dbus/machine-id`) exists — so ferry and gitlab-runner on one host agree — else
//! `r_` followed by 12 random alphanumerics. The new ID is written (0600, atomically); if that fails the ID is
//! still used for this run and the failure is reported in [`SystemIdState::save_error`].

use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ConfigError;

/// File name of the system ID, in the config file's directory.
pub const SYSTEM_ID_FILE: &str = ".runner_system_id";

/// The outcome of [`system_id_state`].
#[derive(Debug)]
pub struct SystemIdState {
    pub id: String,
    /// True when the ID was made now (the file was missing or malformed).
    pub created: bool,
    /// Why a new ID could not be saved (it is still valid for this process).
    pub save_error: Option<String>,
    pub path: PathBuf,
}

/// Read `.runner_system_id` next to `config_path`, creating it if needed. Errors only when the
/// existing file cannot be read; a failure to save a new ID is tolerated (as gitlab-runner does).
pub fn load_or_create_system_id(config_path: &Path) -> Result<String, ConfigError> {
    system_id_state(config_path).map(|s| s.id)
}

/// Like [`load_or_create_system_id`], also saying whether the ID was created and saved.
pub fn system_id_state(config_path: &Path) -> Result<SystemIdState, ConfigError> {
    let dir = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = dir.join(SYSTEM_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if is_valid(id) {
                return Ok(SystemIdState {
                    id: id.to_string(),
                    created: false,
                    save_error: None,
                    path,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                error: source,
            });
        }
    }
    let id = generate(read_machine_id().as_deref());
    let save_error = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::edit::write_atomic(&path, id.as_bytes()).map_err(|e| e.to_string()))
        .err();
    Ok(SystemIdState {
        id,
        created: true,
        save_error,
        path,
    })
}

fn is_valid(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 14
        && (b[0] == b's' || b[0] == b'r')
        && b[1] == b'_'
        && b[2..].iter().all(|c| c.is_ascii_alphanumeric())
}

fn read_machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
}

fn generate(machine_id: Option<&str>) -> String {
    if let Some(mid) = machine_id
        && let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(mid.as_bytes())
    {
        mac.update(b"gitlab-runner");
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        return format!("s_{}", &hex[..12]);
    }
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 48];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // no /dev/urandom: mix the clock and pid; uniqueness, not secrecy, is what matters here
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    // rejection sampling keeps the 62 characters equally likely
    let id: String = bytes
        .iter()
        .filter(|b| usize::from(**b) < 248)
        .take(12)
        .map(|b| CHARSET[usize::from(*b) % CHARSET.len()] as char)
        .collect();
    if id.len() == 12 {
        format!("r_{id}")
    } else {
        format!("r_{:0<12}", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn derived_id_matches_gitlab_runner_rule() {
        let id = generate(Some("0123456789abcdef0123456789abcdef"));
        assert!(id.starts_with("s_"), "{id}");
        assert!(is_valid(&id));
        assert!(
            id[2..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // deterministic: the same machine gets the same id
        assert_eq!(id, generate(Some("0123456789abcdef0123456789abcdef")));
        assert_ne!(id, generate(Some("ffffffffffffffffffffffffffffffff")));
        let random = generate(None);
        assert!(random.starts_with("r_") && is_valid(&random), "{random}");
        assert_ne!(random, generate(None));
    }

    #[test]
    fn creates_reads_and_replaces_malformed_id() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let first = system_id_state(&config).unwrap();
        assert!(first.created && first.save_error.is_none());
        assert!(is_valid(&first.id));
        let file = dir.path().join(SYSTEM_ID_FILE);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first.id);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = system_id_state(&config).unwrap();
        assert!(!again.created);
        assert_eq!(again.id, first.id);

        std::fs::write(&file, "r_abcDEF123456\n").unwrap();
        assert_eq!(load_or_create_system_id(&config).unwrap(), "r_abcDEF123456");

        std::fs::write(&file, "garbage").unwrap();
        let replaced = system_id_state(&config).unwrap();
        assert!(replaced.created);
        assert_ne!(replaced.id, "garbage");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), replaced.id);
    }

    #[test]
    fn unwritable_directory_still_yields_an_id() {
        let config = Path::new("/proc/ferry-no-such-dir/config.toml");
        let st = system_id_state(config).unwrap();
        assert!(is_valid(&st.id));
        assert!(st.save_error.is_some());
    }
}
