//! In-place edits of config.toml for `ferry register`, `ferry unregister`, `ferry verify
//! --delete` and token rotation.
//!
//! The file is edited with `toml_edit`, so the user's comments, key order, formatting and every
//! key ferry does not understand survive; only the entries named are touched. Writes are atomic
//! (a temp file in the same directory, fsync, rename) and leave the file with mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value, value};

use crate::units::{expand_env, go_zero_time, unix_to_datetime};
use crate::{ConfigError, Secret};

/// A `[[runners]]` entry to append. `None` and empty lists are not written.
#[derive(Debug, Clone, Default)]
pub struct NewRunner {
    pub name: String,
    pub url: String,
    pub id: Option<u64>,
    pub token: String,
    /// Unix seconds.
    pub token_obtained_at: Option<i64>,
    /// Unix seconds; when `token_obtained_at` is set and this is `None`, "never"
    /// (`0001-01-01T00:00:00Z`) is written, as gitlab-runner does.
    pub token_expires_at: Option<i64>,
    pub executor: String,
    pub limit: Option<u64>,
    pub request_concurrency: Option<u64>,
    pub output_limit_kb: Option<u64>,
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    /// `KEY=value` entries.
    pub environment: Vec<String>,
    pub clone_url: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// Write the empty `[runners.cache]` stubs `gitlab-runner register` writes.
    pub cache_stubs: bool,
    pub docker: NewDocker,
}

/// The `[runners.docker]` table of a [`NewRunner`]. `None` and empty lists are not written.
#[derive(Debug, Clone, Default)]
pub struct NewDocker {
    pub host: Option<String>,
    pub tls_verify: Option<bool>,
    pub image: String,
    pub privileged: Option<bool>,
    pub disable_entrypoint_overwrite: Option<bool>,
    pub oom_kill_disable: Option<bool>,
    pub disable_cache: Option<bool>,
    pub pull_policy: Vec<String>,
    pub allowed_pull_policies: Vec<String>,
    pub allowed_images: Vec<String>,
    pub allowed_services: Vec<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub cache_dir: Option<String>,
    pub network_mode: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub memory_reservation: Option<String>,
    pub cpus: Option<String>,
    pub shm_size: Option<u64>,
    pub wait_for_services_timeout: Option<i64>,
    pub group_add: Vec<String>,
}

impl NewRunner {
    /// A docker runner with what `gitlab-runner register --executor docker` writes by default:
    /// `tls_verify`, `privileged`, `disable_entrypoint_overwrite`, `oom_kill_disable`,
    /// `disable_cache` false, `volumes = ["/cache"]`, `shm_size = 0`, empty cache stubs.
    pub fn docker(name: &str, url: &str, token: &str, image: &str) -> NewRunner {
        NewRunner {
            name: name.into(),
            url: url.into(),
            token: token.into(),
            executor: "docker".into(),
            cache_stubs: true,
            docker: NewDocker {
                tls_verify: Some(false),
                image: image.into(),
                privileged: Some(false),
                disable_entrypoint_overwrite: Some(false),
                oom_kill_disable: Some(false),
                disable_cache: Some(false),
                volumes: vec!["/cache".into()],
                shm_size: Some(0),
                ..NewDocker::default()
            },
            ..NewRunner::default()
        }
    }
}

/// What `remove_runners`' predicate sees of each entry (`url` and `token` after `$VAR`
/// expansion, `url` without a trailing `/`).
#[derive(Debug, Clone)]
pub struct RunnerIdent {
    /// Position among the `[[runners]]` entries.
    pub index: usize,
    pub name: String,
    pub url: String,
    pub token: Secret,
}

/// `/etc/ferry/config.toml` when running as root (effective uid 0), else
/// `~/.ferry/config.toml` (`$HOME`; the current directory if it is unset).
pub fn default_config_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return PathBuf::from("/etc/ferry/config.toml");
    }
    home_dir().join(".ferry").join("config.toml")
}

/// Where gitlab-runner keeps its file: `/etc/gitlab-runner/config.toml` as root, else
/// `~/.gitlab-runner/config.toml`. A CLI can fall back to it when [`default_config_path`] does
/// not exist, so a host switching from gitlab-runner keeps working without `-c`.
pub fn gitlab_runner_config_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/etc/gitlab-runner/config.toml");
    }
    home_dir().join(".gitlab-runner").join("config.toml")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Header of a file `add_runner` creates, as `gitlab-runner register` writes it.
const NEW_FILE_HEADER: &str = "concurrent = 1\ncheck_interval = 0\nshutdown_timeout = 0\n";

/// Append a `[[runners]]` entry; creates the file (and its directory) if missing.
///
/// Refuses (and leaves the file alone) when the entry would make a file that loaded before
/// fail to load, so a bad value from the command line never breaks a working config.
pub fn add_runner(path: &Path, r: &NewRunner) -> Result<(), ConfigError> {
    add_runner_table(path, runner_table(r))
}

/// [`add_runner`] for an entry the caller built (e.g. from [`runner_table`] plus every
/// `ferry register` flag). The entry is laid out as gitlab-runner writes it (two-space indents
/// per level) before it is appended; the same refusal applies.
pub fn add_runner_table(path: &Path, mut entry: Table) -> Result<(), ConfigError> {
    layout_runner_table(&mut entry);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ConfigError::Write {
            path: dir.display().to_string(),
            error: source,
        })?;
    }
    let _lock = EditLock::acquire(path);
    let (old_text, mut doc) = match std::fs::read_to_string(path) {
        Ok(text) => {
            let doc = parse(path, &text)?;
            (Some(text), doc)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, parse(path, NEW_FILE_HEADER)?),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                error: source,
            });
        }
    };
    // Comments at the very end of the file stay before the new entry, so the old text is kept
    // as it was and the entry is appended below it.
    let trailing = doc.trailing().as_str().unwrap_or("").to_string();
    doc.set_trailing("");
    let mut text_before = doc.to_string();
    text_before.push_str(&trailing);
    let mut prefix = String::new();
    if !text_before.is_empty() && !text_before.ends_with('\n') {
        prefix.push('\n');
    }
    if !text_before.trim().is_empty() {
        prefix.push('\n');
    }
    entry.decor_mut().set_prefix(format!("{trailing}{prefix}"));
    runners_mut(path, &mut doc)?.push(entry);
    let new_text = doc.to_string();

    let file = path.display().to_string();
    let env = |k: &str| std::env::var(k).ok();
    let was_ok = old_text
        .as_deref()
        .is_none_or(|t| crate::from_toml_str_with_env(t, &file, &env).is_ok());
    if was_ok && let Err(e) = crate::from_toml_str_with_env(&new_text, &file, &env) {
        return Err(ConfigError::Edit {
            path: file,
            message: format!("the new runner entry would not load, nothing written: {e}"),
        });
    }
    write_atomic(path, new_text.as_bytes())
}

/// Remove every `[[runners]]` entry for which `pred` is true; returns how many were removed.
/// The file is only rewritten when something was removed.
pub fn remove_runners(
    path: &Path,
    pred: impl Fn(&RunnerIdent) -> bool,
) -> Result<usize, ConfigError> {
    let _lock = EditLock::acquire(path);
    let mut doc = read_doc(path)?;
    let env = |k: &str| std::env::var(k).ok();
    let Some(runners) = existing_runners(path, &mut doc)? else {
        return Ok(0);
    };
    let doomed: Vec<usize> = runners
        .iter()
        .enumerate()
        .filter(|(index, t)| pred(&ident(*index, t, &env)))
        .map(|(i, _)| i)
        .collect();
    for i in doomed.iter().rev() {
        runners.remove(*i);
    }
    if !doomed.is_empty() {
        write_atomic(path, doc.to_string().as_bytes())?;
    }
    Ok(doomed.len())
}

/// Token rotation: in every entry whose token is `old_token` (literally, or after `$VAR`
/// expansion), write `new_token`, `token_obtained_at` and `token_expires_at` (`None` = never).
/// An entry whose token came from `${VAR}` gets the new literal token, as gitlab-runner does.
pub fn update_token(
    path: &Path,
    old_token: &str,
    new_token: &str,
    obtained_at: i64,
    expires_at: Option<i64>,
) -> Result<(), ConfigError> {
    let _lock = EditLock::acquire(path);
    let mut doc = read_doc(path)?;
    let env = |k: &str| std::env::var(k).ok();
    let mut found = 0;
    if let Some(runners) = existing_runners(path, &mut doc)? {
        for t in runners.iter_mut() {
            let Some(tok) = t.get("token").and_then(Item::as_str) else {
                continue;
            };
            if tok != old_token && expand_env(tok, &env).0 != old_token {
                continue;
            }
            found += 1;
            set_keep_decor(t, "token", Value::from(new_token));
            set_keep_decor(
                t,
                "token_obtained_at",
                Value::from(unix_to_datetime(obtained_at)),
            );
            let expires = expires_at
                .map(unix_to_datetime)
                .unwrap_or_else(go_zero_time);
            set_keep_decor(t, "token_expires_at", Value::from(expires));
        }
    }
    if found == 0 {
        return Err(ConfigError::Edit {
            path: path.display().to_string(),
            message: format!(
                "no [[runners]] entry has the token {}…",
                Secret(old_token.to_string()).short()
            ),
        });
    }
    write_atomic(path, doc.to_string().as_bytes())
}

/// An exclusive advisory lock (`flock`) on `.<config name>.lock` beside the file, held for a
/// whole read-modify-write so that, say, the daemon rotating a token and `ferry register`
/// running at the same moment cannot lose each other's change. The lock file is left in place
/// (removing it would race with the next locker). Best effort: if the lock file cannot be
/// created the edit goes ahead, and the write itself reports any permission problem.
struct EditLock(Option<std::fs::File>);

impl EditLock {
    fn acquire(path: &Path) -> EditLock {
        let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.toml".into());
        let lock_path = target.with_file_name(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(lock_path)
            .ok()
            .filter(|f| f.lock().is_ok());
        EditLock(file)
    }
}

impl Drop for EditLock {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = f.unlock();
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, ConfigError> {
    text.parse::<DocumentMut>()
        .map_err(|e| crate::walk::syntax_error(&path.display().to_string(), text, &e))
}

fn read_doc(path: &Path) -> Result<DocumentMut, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    parse(path, &text)
}

fn layout_error(path: &Path) -> ConfigError {
    ConfigError::Edit {
        path: path.display().to_string(),
        message: "`runners` is not written as [[runners]] tables; ferry only edits that layout"
            .into(),
    }
}

fn runners_mut<'d>(
    path: &Path,
    doc: &'d mut DocumentMut,
) -> Result<&'d mut ArrayOfTables, ConfigError> {
    let item = doc
        .as_table_mut()
        .entry("runners")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .ok_or_else(|| layout_error(path))
}

fn existing_runners<'d>(
    path: &Path,
    doc: &'d mut DocumentMut,
) -> Result<Option<&'d mut ArrayOfTables>, ConfigError> {
    match doc.as_table_mut().get_mut("runners") {
        None => Ok(None),
        Some(item) => item
            .as_array_of_tables_mut()
            .map(Some)
            .ok_or_else(|| layout_error(path)),
    }
}

fn ident(index: usize, t: &Table, env: &dyn Fn(&str) -> Option<String>) -> RunnerIdent {
    let get = |k: &str| t.get(k).and_then(Item::as_str).unwrap_or("").to_string();
    let url = expand_env(&get("url"), env)
        .0
        .trim_end_matches('/')
        .to_string();
    RunnerIdent {
        index,
        name: get("name"),
        url,
        token: Secret(expand_env(&get("token"), env).0),
    }
}

/// Replace a value but keep its surrounding whitespace and trailing comment; a new key copies
/// the indentation of the table's `name` or `token` key.
fn set_keep_decor(t: &mut Table, key: &str, mut v: Value) {
    if let Some(old) = t.get(key).and_then(Item::as_value) {
        *v.decor_mut() = old.decor().clone();
        t[key] = Item::Value(v);
        return;
    }
    let indent = ["token", "name", "url"]
        .iter()
        .find_map(|k| {
            t.key(k)
                .and_then(|k| k.leaf_decor().prefix())
                .and_then(|p| p.as_str())
        })
        .unwrap_or("")
        .to_string();
    t[key] = Item::Value(v);
    if let Some(mut k) = t.key_mut(key) {
        k.leaf_decor_mut().set_prefix(indent);
    }
}

/// Set what registration returned in an entry: `id` (when known), `token`, `token_obtained_at`
/// and `token_expires_at` (`None` = never, `0001-01-01T00:00:00Z`, as gitlab-runner writes).
pub fn set_runner_credentials(
    t: &mut Table,
    id: Option<u64>,
    token: &str,
    obtained_at: i64,
    expires_at: Option<i64>,
) {
    if let Some(id) = id {
        t.insert("id", value(i64::try_from(id).unwrap_or(i64::MAX)));
    }
    t.insert("token", value(token));
    t.insert("token_obtained_at", value(unix_to_datetime(obtained_at)));
    let exp = expires_at
        .map(unix_to_datetime)
        .unwrap_or_else(go_zero_time);
    t.insert("token_expires_at", value(exp));
}

/// Indent a `[[runners]]` entry as gitlab-runner's encoder does: keys of the entry by two
/// spaces, each sub-table header by two more per level and its keys by two more again. Tables
/// copied from another document lose their position there, so they print in this entry.
pub fn layout_runner_table(t: &mut Table) {
    fn walk(t: &mut Table, depth: usize) {
        t.set_position(None);
        let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
        for k in keys {
            let Some(item) = t.get_mut(&k) else { continue };
            match item {
                Item::Table(sub) => {
                    sub.decor_mut().set_prefix("  ".repeat(depth + 1));
                    sub.decor_mut().set_suffix("");
                    walk(sub, depth + 1);
                }
                Item::ArrayOfTables(a) => {
                    for sub in a.iter_mut() {
                        sub.decor_mut().set_prefix("  ".repeat(depth + 1));
                        sub.decor_mut().set_suffix("");
                        walk(sub, depth + 1);
                    }
                }
                Item::Value(v) => {
                    v.decor_mut().set_prefix(" ");
                    v.decor_mut().set_suffix("");
                    if let Some(mut key) = t.key_mut(&k) {
                        key.leaf_decor_mut().set_prefix("  ".repeat(depth + 1));
                        key.leaf_decor_mut().set_suffix(" ");
                    }
                }
                Item::None => {}
            }
        }
    }
    walk(t, 0);
}

/// A new `[[runners]]` table laid out as gitlab-runner writes it (two-space indents).
pub fn runner_table(r: &NewRunner) -> Table {
    let mut t = Table::new();
    t.insert("name", value(&r.name));
    t.insert("url", value(&r.url));
    if let Some(id) = r.id {
        t.insert("id", value(i64::try_from(id).unwrap_or(i64::MAX)));
    }
    t.insert("token", value(&r.token));
    if let Some(at) = r.token_obtained_at {
        t.insert("token_obtained_at", value(unix_to_datetime(at)));
    }
    if r.token_obtained_at.is_some() || r.token_expires_at.is_some() {
        let exp = r
            .token_expires_at
            .map(unix_to_datetime)
            .unwrap_or_else(go_zero_time);
        t.insert("token_expires_at", value(exp));
    }
    t.insert("executor", value(&r.executor));
    opt_int(&mut t, "limit", r.limit);
    opt_int(&mut t, "request_concurrency", r.request_concurrency);
    opt_int(&mut t, "output_limit", r.output_limit_kb);
    opt_str(&mut t, "builds_dir", &r.builds_dir);
    opt_str(&mut t, "cache_dir", &r.cache_dir);
    opt_str(&mut t, "clone_url", &r.clone_url);
    opt_str(&mut t, "tls-ca-file", &r.tls_ca_file);
    opt_str(&mut t, "tls-cert-file", &r.tls_cert_file);
    opt_str(&mut t, "tls-key-file", &r.tls_key_file);
    opt_list(&mut t, "environment", &r.environment);
    indent_keys(&mut t, "  ");

    if r.cache_stubs {
        let mut cache = Table::new();
        cache.insert("MaxUploadedArchiveSize", value(0));
        indent_keys(&mut cache, "    ");
        for stub in ["s3", "gcs", "azure"] {
            let mut s = Table::new();
            s.decor_mut().set_prefix("    ");
            cache.insert(stub, Item::Table(s));
        }
        cache.decor_mut().set_prefix("  ");
        t.insert("cache", Item::Table(cache));
    }

    let d = &r.docker;
    let mut dt = Table::new();
    opt_str(&mut dt, "host", &d.host);
    opt_bool(&mut dt, "tls_verify", d.tls_verify);
    dt.insert("image", value(&d.image));
    opt_bool(&mut dt, "privileged", d.privileged);
    opt_bool(
        &mut dt,
        "disable_entrypoint_overwrite",
        d.disable_entrypoint_overwrite,
    );
    opt_bool(&mut dt, "oom_kill_disable", d.oom_kill_disable);
    opt_bool(&mut dt, "disable_cache", d.disable_cache);
    opt_list(&mut dt, "pull_policy", &d.pull_policy);
    opt_list(&mut dt, "allowed_pull_policies", &d.allowed_pull_policies);
    opt_list(&mut dt, "allowed_images", &d.allowed_images);
    opt_list(&mut dt, "allowed_services", &d.allowed_services);
    opt_str(&mut dt, "user", &d.user);
    opt_list(&mut dt, "volumes", &d.volumes);
    opt_str(&mut dt, "cache_dir", &d.cache_dir);
    opt_str(&mut dt, "network_mode", &d.network_mode);
    opt_list(&mut dt, "dns", &d.dns);
    opt_list(&mut dt, "dns_search", &d.dns_search);
    opt_list(&mut dt, "extra_hosts", &d.extra_hosts);
    opt_list(&mut dt, "group_add", &d.group_add);
    opt_str(&mut dt, "memory", &d.memory);
    opt_str(&mut dt, "memory_swap", &d.memory_swap);
    opt_str(&mut dt, "memory_reservation", &d.memory_reservation);
    opt_str(&mut dt, "cpus", &d.cpus);
    opt_int(&mut dt, "shm_size", d.shm_size);
    if let Some(w) = d.wait_for_services_timeout {
        dt.insert("wait_for_services_timeout", value(w));
    }
    indent_keys(&mut dt, "    ");
    dt.decor_mut().set_prefix("  ");
    t.insert("docker", Item::Table(dt));
    t
}

fn indent_keys(t: &mut Table, indent: &str) {
    let keys: Vec<String> = t
        .iter()
        .filter(|(_, v)| v.is_value())
        .map(|(k, _)| k.to_string())
        .collect();
    for k in keys {
        if let Some(mut key) = t.key_mut(&k) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
}

fn opt_str(t: &mut Table, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        t.insert(key, value(v));
    }
}

fn opt_bool(t: &mut Table, key: &str, v: Option<bool>) {
    if let Some(v) = v {
        t.insert(key, value(v));
    }
}

fn opt_int(t: &mut Table, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        t.insert(key, value(i64::try_from(v).unwrap_or(i64::MAX)));
    }
}

fn opt_list(t: &mut Table, key: &str, v: &[String]) {
    if !v.is_empty() {
        let a: Array = v.iter().map(String::as_str).collect();
        t.insert(key, value(a));
    }
}

/// Write `bytes` to `path` atomically: a temp file in the same directory (mode 0600), fsync,
/// rename over `path`. A symlinked `path` is followed, so the link itself stays in place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let err = |source| ConfigError::Write {
        path: target.display().to_string(),
        error: source,
    };
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.toml".into());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&target).map_err(|e| err(e.error))?;
    // make the rename itself durable; failing to open a directory is not worth an error
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
