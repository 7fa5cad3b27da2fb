//! The flags of `ferry register`: one declarative table ([`FLAGS`], generated from gitlab-runner's
//! source by `scripts/gen-register-flags.py`) that clap parses, that is read with gitlab-runner's
//! value rules, and that says where each value is written in the `[[runners]]` entry.
//!
//! gitlab-runner's rules, as its CLI (urfave/cli v1 + golang-cli-helpers) applies them
//! (docs/commands.md, "ferry register"):
//! - a flag's environment variable is read first, then the command line: a scalar given on the
//!   command line replaces it, a list flag appends to it;
//! - booleans are Go's `strconv.ParseBool` (`1 t T TRUE true True 0 f F FALSE false False`);
//!   `--flag` alone is true; `--flag=` is true too (gitlab-runner's converter);
//! - integers are Go's `strconv.ParseInt` base 10; durations Go's `time.ParseDuration`;
//! - list flags append per occurrence, except `--docker-pull-policy` and
//!   `--kubernetes-pull-policy`, which take a comma separated list and replace;
//! - map flags take `key:value` per occurrence.

use std::collections::BTreeMap;

use toml_edit::{Array, Item, Table, Value, value};

pub use super::register_flags::{FLAGS, GITLAB_RUNNER_REVISION, KEY_ORDER};

/// One `gitlab-runner register` flag.
#[derive(Debug)]
pub struct FlagSpec {
    /// The long name (`docker-image`).
    pub name: &'static str,
    pub short: Option<char>,
    /// Other long names (`--name` for `--description`).
    pub aliases: &'static [&'static str],
    pub env: Option<&'static str>,
    /// Dotted path in the `[[runners]]` entry (`docker.image`); `None` for register's own flags.
    pub toml: Option<&'static str>,
    pub kind: Kind,
    /// A Go pointer field: written when given, even when false or 0.
    pub pointer: bool,
    /// `register`, `runner`, `docker`, `cache`, `kubernetes`, ...: the `--help` group.
    pub section: &'static str,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Float,
    Bool,
    Duration,
    /// Appends one element per occurrence.
    List,
    /// A comma separated list; each occurrence replaces it.
    CommaList,
    /// `key:value` per occurrence, string values.
    Map,
    /// `key:value` per occurrence, boolean values (`key` alone is true).
    MapBool,
    /// `key:value` per occurrence, the value a one-element list.
    MapList,
    /// A JSON document.
    Json,
}

/// The sections gitlab-runner drops from the entry when the executor is `docker`
/// (`askExecutorOptions` in its commands/register.go): their flags are accepted and not written.
pub const DROPPED_FOR_DOCKER: &[&str] = &[
    "ssh",
    "parallels",
    "virtualbox",
    "machine",
    "kubernetes",
    "custom",
    "referees",
];

/// The flag named `name` (long name, alias or one-letter short).
pub fn find(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| {
        f.name == name
            || f.aliases.contains(&name)
            || (name.chars().count() == 1 && f.short.is_some_and(|c| name.starts_with(c)))
    })
}

/// A flag's final value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i128),
    List(Vec<String>),
    Map(Vec<(String, String)>),
    MapBool(Vec<(String, bool)>),
    MapList(Vec<(String, Vec<String>)>),
    Json(serde_json::Value),
}

/// Every flag that has a value, from its environment variable and the command line.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub values: BTreeMap<&'static str, Val>,
    /// Flags given on the command line (not only through the environment).
    pub on_command_line: Vec<&'static str>,
}

impl Resolved {
    pub fn get(&self, name: &str) -> Option<&Val> {
        self.values.get(name)
    }
    pub fn str(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Val::Str(s)) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(Val::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(Val::Int(n)) => Some(*n),
            _ => None,
        }
    }
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// Go's `strconv.ParseBool`, plus `""` → true (gitlab-runner's flag converter).
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "" | "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "{s:?} is not a boolean (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
        )),
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)`.
fn parse_go_int(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not an integer"));
    }
    s.parse::<i64>()
        .map_err(|_| format!("{s:?} is out of range for a 64-bit integer"))
}

fn split_kv(s: &str) -> (String, String) {
    match s.split_once(':') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (s.to_string(), String::new()),
    }
}

/// Apply one value (from the environment or one occurrence on the command line) to `acc`.
fn apply_one(f: &FlagSpec, acc: Option<Val>, raw: &str) -> Result<Val, String> {
    Ok(match f.kind {
        Kind::Str => Val::Str(raw.to_string()),
        Kind::Int => Val::Int(parse_go_int(raw)?),
        Kind::Float => Val::Float(
            raw.trim()
                .parse::<f64>()
                .map_err(|_| format!("{raw:?} is not a number"))?,
        ),
        Kind::Bool => Val::Bool(parse_go_bool(raw)?),
        Kind::Duration => Val::Duration(ferry_config::duration::parse_go_duration(raw)?),
        Kind::List => {
            let mut v = match acc {
                Some(Val::List(v)) => v,
                _ => Vec::new(),
            };
            v.push(raw.to_string());
            Val::List(v)
        }
        Kind::CommaList => Val::List(if raw.is_empty() {
            Vec::new()
        } else {
            raw.split(',').map(|s| s.trim().to_string()).collect()
        }),
        Kind::Map => {
            let mut v = match acc {
                Some(Val::Map(v)) => v,
                _ => Vec::new(),
            };
            let (k, val) = split_kv(raw);
            v.retain(|(old, _)| *old != k);
            v.push((k, val));
            Val::Map(v)
        }
        Kind::MapBool => {
            let mut v = match acc {
                Some(Val::MapBool(v)) => v,
                _ => Vec::new(),
            };
            let (k, val) = split_kv(raw);
            let b = parse_go_bool(&val).map_err(|e| format!("{k}: {e}"))?;
            v.retain(|(old, _)| *old != k);
            v.push((k, b));
            Val::MapBool(v)
        }
        Kind::MapList => {
            let mut v = match acc {
                Some(Val::MapList(v)) => v,
                _ => Vec::new(),
            };
            let (k, val) = split_kv(raw);
            v.retain(|(old, _)| *old != k);
            v.push((k, vec![val]));
            Val::MapList(v)
        }
        Kind::Json => {
            Val::Json(serde_json::from_str(raw).map_err(|e| format!("{raw:?} is not JSON: {e}"))?)
        }
    })
}

/// The value of every flag: its environment variable first (an empty one counts as unset),
/// then its occurrences on the command line, in order. A bad value is an error naming the flag
/// (and the variable).
pub fn resolve(
    cli: &[(&'static FlagSpec, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, String> {
    let mut r = Resolved::default();
    for f in FLAGS {
        let Some(var) = f.env else { continue };
        let Some(raw) = env(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let v = apply_one(f, None, &raw)
            .map_err(|e| format!("{var} (the variable of --{}): {e}", f.name))?;
        r.values.insert(f.name, v);
    }
    for (f, raw) in cli {
        let acc = r.values.remove(f.name);
        let v = apply_one(f, acc, raw).map_err(|e| format!("--{}: {e}", f.name))?;
        r.values.insert(f.name, v);
        if !r.on_command_line.contains(&f.name) {
            r.on_command_line.push(f.name);
        }
    }
    Ok(r)
}

/// Go's `time.Duration.String()`: `1h30m0s`, `1m30s`, `500ms`, `0s`.
pub fn go_duration_string(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let neg = nanos < 0;
    let n = nanos.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1u128)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", frac(n, div));
    }
    let secs = n / 1_000_000_000;
    let sub = n % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac(s * 1_000_000_000 + sub, 1_000_000_000));
    out.push('s');
    out
}

/// `n / div` with the fraction's trailing zeros left out.
fn frac(n: u128, div: u128) -> String {
    let whole = n / div;
    let rest = n % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The TOML item a value is written as, as gitlab-runner's encoder writes it; `None` when it
/// writes nothing (a zero value of a non-pointer `omitempty` field is left out by the caller).
fn to_item(v: &Val) -> Item {
    match v {
        Val::Str(s) => value(s.as_str()),
        Val::Int(n) => value(*n),
        Val::Float(x) => value(*x),
        Val::Bool(b) => value(*b),
        Val::Duration(n) => value(go_duration_string(*n)),
        Val::List(l) => value(l.iter().map(String::as_str).collect::<Array>()),
        Val::Map(m) => {
            let mut t = Table::new();
            for (k, v) in m {
                t.insert(k, value(v.as_str()));
            }
            Item::Table(t)
        }
        Val::MapBool(m) => {
            let mut t = Table::new();
            for (k, v) in m {
                t.insert(k, value(*v));
            }
            Item::Table(t)
        }
        Val::MapList(m) => {
            let mut t = Table::new();
            for (k, v) in m {
                t.insert(k, value(v.iter().map(String::as_str).collect::<Array>()));
            }
            Item::Table(t)
        }
        Val::Json(j) => json_to_item(j),
    }
}

fn json_to_value(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        serde_json::Value::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in o {
                t.insert(k, json_to_value(v));
            }
            Value::InlineTable(t)
        }
        serde_json::Value::Null => Value::from(""),
    }
}

fn json_to_item(j: &serde_json::Value) -> Item {
    Item::Value(json_to_value(j))
}

/// Zero in Go's sense (what `omitempty` leaves out and what a template may fill).
fn is_zero(v: &Val) -> bool {
    match v {
        Val::Str(s) => s.is_empty(),
        Val::Int(n) => *n == 0,
        Val::Float(x) => *x == 0.0,
        Val::Bool(b) => !b,
        Val::Duration(n) => *n == 0,
        Val::List(l) => l.is_empty(),
        Val::Map(m) => m.is_empty(),
        Val::MapBool(m) => m.is_empty(),
        Val::MapList(m) => m.is_empty(),
        Val::Json(j) => j.is_null(),
    }
}

/// The table at dotted `path` under `t`, created (as a normal, shown table) when missing.
/// `None` when a non-table value is in the way.
fn table_at<'t>(t: &'t mut Table, path: &[&str]) -> Option<&'t mut Table> {
    let Some((first, rest)) = path.split_first() else {
        return Some(t);
    };
    let item = t.entry(first).or_insert_with(|| Item::Table(Table::new()));
    if let Item::Value(Value::InlineTable(_)) = item {
        let inline = std::mem::take(item);
        if let Item::Value(Value::InlineTable(it)) = inline {
            *item = Item::Table(it.into_table());
        }
    }
    table_at(item.as_table_mut()?, rest)
}

/// Where a flag's value goes: (parent table path, key).
fn split_path(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let key = parts.pop().unwrap_or("");
    (parts, key)
}

/// Write every resolved value that has a place in the entry, as gitlab-runner writes it: a
/// zero value of a non-pointer `omitempty` field is not written unless the key is already
/// there (the defaults `gitlab-runner register` always writes, like `privileged = false`).
/// Sections in `skip` (the executors' sections gitlab-runner drops) are not written.
pub fn write_values(entry: &mut Table, r: &Resolved, skip: &[&str]) {
    for f in FLAGS {
        let (Some(path), Some(v)) = (f.toml, r.values.get(f.name)) else {
            continue;
        };
        let (parents, key) = split_path(path);
        if parents.first().is_some_and(|p| skip.contains(p)) {
            continue;
        }
        let Some(t) = table_at(entry, &parents) else {
            continue;
        };
        if is_zero(v) && !f.pointer && !t.contains_key(key) {
            continue;
        }
        t.insert(key, to_item(v));
    }
}

/// The flag writing `path` (dotted, relative to the entry).
fn spec_for_path(path: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.toml == Some(path))
}

fn item_is_zero(item: &Item) -> bool {
    match item {
        Item::None => true,
        Item::Value(v) => match v {
            Value::String(s) => s.value().is_empty(),
            Value::Integer(n) => *n.value() == 0,
            Value::Float(x) => *x.value() == 0.0,
            Value::Boolean(b) => !*b.value(),
            Value::Array(a) => a.is_empty(),
            Value::InlineTable(t) => t.is_empty(),
            Value::Datetime(_) => false,
        },
        Item::Table(t) => t.is_empty(),
        Item::ArrayOfTables(a) => a.is_empty(),
    }
}

/// A copy of `item` without its layout in the other document.
fn fresh(item: &Item) -> Item {
    let mut item = item.clone();
    if let Item::Table(t) = &mut item {
        t.set_position(None);
    }
    item
}

/// gitlab-runner's `--template-config` merge (`mergo.Merge(config, template)` in its
/// commands/register.go): every key of the template fills the entry where the entry has
/// nothing or a zero value (false, 0, "", an empty list); tables merge key by key. A value the
/// flags set and that is not zero wins; so does a pointer field the flags set at all. The
/// template's `token` is never used.
pub fn merge_template(entry: &mut Table, template: &Table) {
    merge_into(entry, template, "");
}

fn merge_into(dst: &mut Table, src: &Table, prefix: &str) {
    for (k, sv) in src.iter() {
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        if path == "token" {
            continue;
        }
        let src_table = match sv {
            Item::Table(t) => Some(t.clone()),
            Item::Value(Value::InlineTable(t)) => Some(t.clone().into_table()),
            _ => None,
        };
        match dst.get_mut(k) {
            None => {
                dst.insert(k, fresh(sv));
            }
            Some(dv) => {
                let dst_is_table =
                    dv.is_table() || matches!(dv, Item::Value(Value::InlineTable(_)));
                if let (true, Some(st)) = (dst_is_table, src_table) {
                    if let Item::Value(Value::InlineTable(_)) = dv {
                        let inline = std::mem::take(dv);
                        if let Item::Value(Value::InlineTable(it)) = inline {
                            *dv = Item::Table(it.into_table());
                        }
                    }
                    if let Some(dt) = dv.as_table_mut() {
                        merge_into(dt, &st, &path);
                    }
                    continue;
                }
                let pointer = spec_for_path(&path).is_some_and(|f| f.pointer);
                if !pointer && item_is_zero(dv) {
                    *dv = fresh(sv);
                }
            }
        }
    }
}

/// Order the keys of the entry and of each of its tables as gitlab-runner's structs declare
/// them (its encoder writes fields in that order); keys it does not know keep their order,
/// after the known ones.
pub fn order_keys(entry: &mut Table) {
    fn walk(t: &mut Table, path: &str) {
        let order: Option<&[&str]> = KEY_ORDER.iter().find(|(p, _)| *p == path).map(|x| x.1);
        if let Some(order) = order {
            let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(order.len());
            t.sort_values_by(|k1, _, k2, _| rank(k1.get()).cmp(&rank(k2.get())));
        }
        let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
        for k in keys {
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if let Some(Item::Table(st)) = t.get_mut(&k) {
                walk(st, &sub);
            }
        }
    }
    walk(entry, "");
}

/// The string at dotted `path` in the entry.
pub fn get_str(entry: &Table, path: &str) -> Option<String> {
    let (parents, key) = split_path(path);
    let mut t = entry;
    for p in parents {
        t = t.get(p)?.as_table()?;
    }
    t.get(key)?.as_str().map(str::to_string)
}

/// Set the string at dotted `path`, creating tables on the way.
pub fn set_str(entry: &mut Table, path: &str, v: &str) {
    let (parents, key) = split_path(path);
    if let Some(t) = table_at(entry, &parents) {
        t.insert(key, value(v));
    }
}

/// gitlab-runner's `askDocker`: `/cache` is added to `docker.volumes` unless a volume already
/// mounts at `/cache` or `disable_cache` is true.
pub fn add_cache_volume(entry: &mut Table) {
    let Some(docker) = entry.get_mut("docker").and_then(Item::as_table_mut) else {
        return;
    };
    let disable_cache = docker
        .get("disable_cache")
        .and_then(Item::as_bool)
        .unwrap_or(false);
    let volumes: Vec<String> = docker
        .get("volumes")
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if volumes
        .iter()
        .any(|v| v.rsplit(':').next() == Some("/cache"))
        || disable_cache
    {
        return;
    }
    let mut all = volumes;
    all.push("/cache".into());
    docker.insert(
        "volumes",
        value(all.iter().map(String::as_str).collect::<Array>()),
    );
}

/// Scan the arguments after `register` as gitlab-runner's parser would see them:
/// - `-flag` with one dash is a long flag (Go's flag package), rewritten to `--flag` for clap;
/// - a boolean flag followed by a separate value (`--locked false`): gitlab-runner reads the
///   flag alone (true) and ignores every argument after it (it warns "boolean parameters must
///   be passed in the command line with --locked=false"). When the value is true and is the
///   last argument the outcome is the same, so it is accepted with that warning; otherwise it
///   is refused, since gitlab-runner would write something other than what the line says;
/// - any other argument that is not a flag or a flag's value is ignored, with a warning.
///
/// Returns the arguments for clap (ignored ones removed) and the warnings.
pub fn scan_args(args: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut out = Vec::with_capacity(args.len());
    let mut warnings = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            out.extend(args[i..].iter().cloned());
            break;
        }
        let Some(body) = a.strip_prefix('-').filter(|b| !b.is_empty()) else {
            warnings.push(format!(
                "argument {a:?} is not a flag or a flag's value; ignored, as gitlab-runner ignores it"
            ));
            i += 1;
            continue;
        };
        let (double, body) = match body.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, body),
        };
        let (name, has_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        let spec = if double || name.chars().count() > 1 {
            FLAGS
                .iter()
                .find(|f| f.name == name || f.aliases.contains(&name))
                .or_else(|| {
                    (!double && name.chars().count() == 1)
                        .then(|| find(name))
                        .flatten()
                })
        } else {
            find(name)
        };
        let Some(spec) = spec else {
            // ferry's global options with a value; clap reports unknown flags (and handles
            // -h/--help)
            out.push(a.clone());
            i += 1;
            if double
                && !has_value
                && ["log-level", "log-format"].contains(&name)
                && let Some(v) = args.get(i)
            {
                out.push(v.clone());
                i += 1;
            }
            continue;
        };
        let single_char = name.chars().count() == 1 && spec.short.is_some();
        out.push(if !double && !single_char {
            format!("-{a}")
        } else {
            a.clone()
        });
        i += 1;
        if has_value {
            continue;
        }
        if spec.kind != Kind::Bool {
            if let Some(v) = args.get(i) {
                out.push(v.clone());
                i += 1;
            }
            continue;
        }
        let Some(next) = args
            .get(i)
            .filter(|n| !n.starts_with('-') || n.as_str() == "-")
        else {
            continue;
        };
        let flag = if double || single_char {
            a.clone()
        } else {
            format!("-{a}")
        };
        let last = i + 1 == args.len();
        if last && parse_go_bool(next) == Ok(true) {
            warnings.push(format!(
                "boolean parameters must be passed in the command line with {flag}={next} \
                 (gitlab-runner reads \"{flag} {next}\" as {flag} alone, which is the same here)"
            ));
            i += 1;
            continue;
        }
        let after = args.len() - i - 1;
        return Err(format!(
            "\"{flag} {next}\": boolean flags take their value with '=' ({flag}={next}). gitlab-runner \
             reads \"{flag} {next}\" as {flag} alone (true) and ignores the {after} argument(s) after \
             it{}; ferry refuses it rather than write a different config than the line says",
            if after > 0 {
                ", so its config would lack them"
            } else {
                ""
            }
        ));
    }
    Ok((out, warnings))
}

/// clap arguments for every flag (but `-c/--config`, which is ferry's global flag), grouped in
/// `--help` by section. Environment variables are read by [`resolve`], not by clap (a list
/// flag appends to its variable's value, which clap does not do); `--help` names them.
pub fn clap_args() -> Vec<clap::Arg> {
    use clap::{Arg, ArgAction};
    let mut args = Vec::new();
    for f in FLAGS.iter().filter(|f| f.name != "config") {
        let mut help = f.help.to_string();
        if let Some(env) = f.env {
            help.push_str(&format!(" [env: {env}]"));
        }
        if let Some(path) = f.toml {
            help.push_str(&format!(" [config: {path}]"));
        }
        let mut a = Arg::new(f.name)
            .long(f.name)
            .help(help)
            .help_heading(heading(f.section))
            .action(ArgAction::Append);
        if let Some(c) = f.short {
            a = a.short(c);
        }
        for al in f.aliases {
            a = a.visible_alias(*al);
        }
        a = if f.kind == Kind::Bool {
            a.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_name("BOOL")
        } else {
            a.num_args(1).allow_hyphen_values(true)
        };
        args.push(a);
    }
    args.push(
        Arg::new("ignored-arguments")
            .num_args(0..)
            .action(ArgAction::Append)
            .hide(true),
    );
    args
}

fn heading(section: &str) -> &'static str {
    match section {
        "register" => "Registration",
        "runner" => "Runner ([[runners]])",
        "docker" => "Docker executor ([runners.docker])",
        "cache" => "Cache ([runners.cache])",
        "custom_build_dir" => "Custom build dir ([runners.custom_build_dir])",
        "kubernetes" => "Kubernetes executor (not written for the docker executor)",
        "ssh" => "SSH executor (not written for the docker executor)",
        "parallels" => "Parallels executor (not written for the docker executor)",
        "virtualbox" => "VirtualBox executor (not written for the docker executor)",
        "machine" => "Docker Machine (not written for the docker executor)",
        "custom" => "Custom executor (not written for the docker executor)",
        "referees" => "Referees (not written for the docker executor)",
        _ => "Other",
    }
}

/// Whether ferry acts on the key a flag writes, as the config loader says: a key it warns
/// about ("accepted but not implemented", "ignored", "unknown") is not honoured; one it reads
/// (or validates, refusing a bad value) is.
pub fn honoured(f: &FlagSpec) -> &'static str {
    let Some(path) = f.toml else {
        return "register";
    };
    let (parents, key) = split_path(path);
    if parents
        .first()
        .is_some_and(|p| DROPPED_FOR_DOCKER.contains(p))
    {
        return "not written";
    }
    // values that make sense for the key, where any string would not
    let sample = match path {
        "executor" => Some("\"docker\""),
        "cache.Type" => Some("\"s3\""),
        "cache.s3.ServerSideEncryption" => Some("\"S3\""),
        _ => None,
    };
    let sample = sample.map(str::to_string).unwrap_or_else(|| match f.kind {
        Kind::Str => "\"1\"".to_string(),
        Kind::Int => "1".into(),
        Kind::Float => "1.0".into(),
        Kind::Bool => "true".into(),
        Kind::Duration => "\"1s\"".into(),
        Kind::List | Kind::CommaList => "[\"1\"]".into(),
        Kind::Map => "{ a = \"1\" }".into(),
        Kind::MapBool => "{ FF_NETWORK_PER_BUILD = true }".into(),
        Kind::MapList => "{ a = [\"1\"] }".into(),
        Kind::Json => "[]".into(),
    });
    let mut entry: Table = "name = \"n\"\nurl = \"https://gitlab.example\"\ntoken = \"t\"\nexecutor = \"docker\"\n[docker]\nimage = \"i\"\n"
        .parse::<toml_edit::DocumentMut>()
        .map(|d| d.as_table().clone())
        .unwrap_or_default();
    if let Some(t) = table_at(&mut entry, &parents) {
        let v = format!("v = {sample}")
            .parse::<toml_edit::DocumentMut>()
            .ok()
            .and_then(|d| d.get("v").cloned());
        if let Some(v) = v {
            t.insert(key, v);
        }
    }
    if path == "cache.Type" {
        // an S3 cache without a bucket is reported as unusable
        set_str(&mut entry, "cache.s3.BucketName", "b");
    }
    let mut doc = toml_edit::DocumentMut::new();
    let mut runners = toml_edit::ArrayOfTables::new();
    runners.push(entry);
    doc.insert("runners", Item::ArrayOfTables(runners));
    // A key ferry refuses (any value but the "off" one fails the config, docs/configuration.md).
    if let Some((_, ferry_config::keys::KeyStatus::Refused(_))) =
        ferry_config::keys::classify(&format!("runners.{path}"))
    {
        return "refused";
    }
    let full = format!("runners[0].{path}");
    match ferry_config::from_toml_str_with_env(&doc.to_string(), "config.toml", &|_| None) {
        // a bad sample value refused: the key is read
        Err(_) => "yes",
        Ok(c) => {
            let w = c.warnings.iter().find(|w| w.key == full);
            match w.map(|w| w.message.as_str()) {
                None => "yes",
                Some(m)
                    if m.starts_with("accepted but not implemented")
                        || m.starts_with("ignored")
                        || m.starts_with("unknown key") =>
                {
                    "no"
                }
                // read, with a limit the warning states
                Some(_) => "partly",
            }
        }
    }
}

/// The flag list of docs/commands.md, generated from [`FLAGS`] (a test keeps the page in sync).
pub fn docs_table() -> String {
    let mut out = String::new();
    let mut section = "";
    for f in FLAGS.iter().filter(|f| f.name != "config") {
        if f.section != section {
            section = f.section;
            out.push_str(&format!(
                "\n#### {}\n\n| flag | env | written to | ferry honours it |\n| --- | --- | --- | --- |\n",
                heading(section)
            ));
        }
        let mut names: Vec<String> = f.short.map(|c| format!("`-{c}`")).into_iter().collect();
        names.push(format!("`--{}`", f.name));
        names.extend(f.aliases.iter().map(|a| format!("`--{a}`")));
        let value = match f.kind {
            Kind::Bool => "[=BOOL]",
            Kind::List => " VALUE (repeatable)",
            Kind::CommaList => " A,B,...",
            Kind::Map | Kind::MapBool | Kind::MapList => " KEY:VALUE (repeatable)",
            Kind::Json => " JSON",
            Kind::Duration => " DURATION",
            Kind::Int | Kind::Float => " N",
            Kind::Str => " VALUE",
        };
        let env = f.env.map(|e| format!("`{e}`")).unwrap_or_default();
        let to = f
            .toml
            .map(|p| format!("`{p}`"))
            .unwrap_or_else(|| "(registration)".into());
        out.push_str(&format!(
            "| {}{value} | {env} | {to} | {} |\n",
            names.join(", "),
            honoured(f)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_gitlab_runners_flags() {
        for name in [
            "docker-tlsverify",
            "docker-disable-cache",
            "docker-shm-size",
            "docker-cpuset-cpus",
            "docker-cert-path",
            "custom_build_dir-enabled",
            "template-config",
            "leave-runner",
            "clone-url",
            "shell",
            "tls-ca-file",
            "pre-get-sources-script",
            "post-build-script",
            "feature-flags",
            "debug-trace-disabled",
            "cache-s3-bucket-name",
            "cache-gcs-credentials-file",
            "cache-azure-account-name",
            "kubernetes-host",
        ] {
            assert!(find(name).is_some(), "{name}");
        }
        assert_eq!(find("name").unwrap().name, "description");
        assert_eq!(find("u").unwrap().name, "url");
        assert_eq!(find("docker-image").unwrap().env, Some("DOCKER_IMAGE"));
        // the tag says ENV:, which gitlab-runner's CLI does not read
        assert_eq!(find("unhealthy-interval").unwrap().env, None);
    }

    #[test]
    fn go_bool_forms() {
        for t in ["1", "t", "T", "TRUE", "true", "True", ""] {
            assert_eq!(parse_go_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "no", "on", "tRUE", "2"] {
            assert!(parse_go_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_print_as_go_does() {
        let s = 1_000_000_000i128;
        assert_eq!(go_duration_string(0), "0s");
        assert_eq!(go_duration_string(90 * s), "1m30s");
        assert_eq!(go_duration_string(3600 * s), "1h0m0s");
        assert_eq!(go_duration_string(s / 2), "500ms");
        assert_eq!(go_duration_string(s + s / 2), "1.5s");
    }

    #[test]
    fn env_first_then_the_command_line() {
        let env = |k: &str| match k {
            "DOCKER_VOLUMES" => Some("/a:/a".to_string()),
            "DOCKER_IMAGE" => Some("env-image".to_string()),
            "DOCKER_PRIVILEGED" => Some(String::new()),
            _ => None,
        };
        let cli = vec![
            (find("docker-volumes").unwrap(), "/b:/b".to_string()),
            (find("docker-image").unwrap(), "cli-image".to_string()),
            (find("docker-pull-policy").unwrap(), "always".to_string()),
            (
                find("docker-pull-policy").unwrap(),
                "if-not-present, never".to_string(),
            ),
            (find("docker-sysctls").unwrap(), "a.b:1".to_string()),
            (find("feature-flags").unwrap(), "FF_X".to_string()),
            (find("feature-flags").unwrap(), "FF_Y:false".to_string()),
        ];
        let r = resolve(&cli, &env).unwrap();
        assert_eq!(
            r.get("docker-volumes"),
            Some(&Val::List(vec!["/a:/a".into(), "/b:/b".into()]))
        );
        assert_eq!(r.str("docker-image").as_deref(), Some("cli-image"));
        assert_eq!(
            r.get("docker-pull-policy"),
            Some(&Val::List(vec!["if-not-present".into(), "never".into()]))
        );
        assert!(!r.is_set("docker-privileged"), "an empty variable is unset");
        assert_eq!(
            r.get("docker-sysctls"),
            Some(&Val::Map(vec![("a.b".into(), "1".into())]))
        );
        assert_eq!(
            r.get("feature-flags"),
            Some(&Val::MapBool(vec![
                ("FF_X".into(), true),
                ("FF_Y".into(), false)
            ]))
        );
    }

    #[test]
    fn a_bad_value_names_the_flag_or_the_variable() {
        let none = |_: &str| None;
        let e = resolve(&[(find("docker-shm-size").unwrap(), "64m".into())], &none).unwrap_err();
        assert!(
            e.starts_with("--docker-shm-size: ") && e.contains("\"64m\""),
            "{e}"
        );
        let e = resolve(&[(find("docker-privileged").unwrap(), "yes".into())], &none).unwrap_err();
        assert!(e.starts_with("--docker-privileged: "), "{e}");
        let env = |k: &str| (k == "RUNNER_LIMIT").then(|| "lots".to_string());
        let e = resolve(&[], &env).unwrap_err();
        assert!(
            e.starts_with("RUNNER_LIMIT (the variable of --limit): "),
            "{e}"
        );
        let e = resolve(&[(find("prepare-timeout").unwrap(), "soon".into())], &none).unwrap_err();
        assert!(e.starts_with("--prepare-timeout: "), "{e}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scan_rewrites_single_dash_longs_and_judges_bool_values() {
        let (out, w) = scan_args(&strings(&[
            "-url",
            "http://x",
            "-n",
            "--docker-volumes",
            "/cache",
            "/tmp",
            "-registration-token=abc",
        ]))
        .unwrap();
        assert_eq!(
            out,
            strings(&[
                "--url",
                "http://x",
                "-n",
                "--docker-volumes",
                "/cache",
                "--registration-token=abc"
            ])
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"/tmp\""), "{w:?}");

        // the same as gitlab-runner's outcome: accepted with its warning
        let (out, w) = scan_args(&strings(&["--url", "u", "--docker-privileged", "true"])).unwrap();
        assert_eq!(out, strings(&["--url", "u", "--docker-privileged"]));
        assert!(w[0].contains("--docker-privileged=true"), "{w:?}");

        // gitlab-runner would write privileged = true: refused
        let e = scan_args(&strings(&["--docker-privileged", "false"])).unwrap_err();
        assert!(e.contains("--docker-privileged=false"), "{e}");
        // gitlab-runner would drop --docker-image: refused
        let e = scan_args(&strings(&["--locked", "true", "--docker-image", "x"])).unwrap_err();
        assert!(e.contains("ignores the 2 argument(s)"), "{e}");
        // a value flag takes the next argument even when it starts with '-'
        let (out, _) = scan_args(&strings(&["--maintenance-note", "-x-", "--paused"])).unwrap();
        assert_eq!(out, strings(&["--maintenance-note", "-x-", "--paused"]));
    }

    #[test]
    fn template_fills_what_the_flags_left_zero() {
        let mut entry: Table = "name = \"host\"\nurl = \"\"\nexecutor = \"docker\"\n[docker]\nimage = \"flag-image\"\nprivileged = false\nshm_size = 0\n[custom_build_dir]\nenabled = false\n"
            .parse::<toml_edit::DocumentMut>()
            .unwrap()
            .as_table()
            .clone();
        let template: Table = "name = \"tpl\"\nurl = \"https://tpl\"\ntoken = \"secret\"\n[docker]\nimage = \"tpl-image\"\nprivileged = true\nshm_size = 300000\n[[docker.services]]\nname = \"redis\"\n[custom_build_dir]\nenabled = true\n"
            .parse::<toml_edit::DocumentMut>()
            .unwrap()
            .as_table()
            .clone();
        merge_template(&mut entry, &template);
        assert_eq!(get_str(&entry, "name").as_deref(), Some("host"));
        assert_eq!(get_str(&entry, "url").as_deref(), Some("https://tpl"));
        assert!(entry.get("token").is_none());
        assert_eq!(
            get_str(&entry, "docker.image").as_deref(),
            Some("flag-image")
        );
        let d = entry["docker"].as_table().unwrap();
        assert_eq!(d["privileged"].as_bool(), Some(true));
        assert_eq!(d["shm_size"].as_integer(), Some(300000));
        assert!(d["services"].is_array_of_tables());
        // a pointer field the flags set wins even when false
        assert_eq!(entry["custom_build_dir"]["enabled"].as_bool(), Some(false));
    }

    #[test]
    fn docs_list_every_register_flag() {
        // UPDATE_DOCS=1 rewrites the list in docs/commands.md.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/commands.md");
        let page = std::fs::read_to_string(path).unwrap();
        let (start, end) = (
            "<!-- register-flags:start -->\n",
            "<!-- register-flags:end -->",
        );
        let a = page.find(start).expect("start marker") + start.len();
        let b = page.find(end).expect("end marker");
        let want = docs_table();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, format!("{}{want}{}", &page[..a], &page[b..])).unwrap();
            return;
        }
        assert!(
            page[a..b] == want,
            "docs/commands.md's register flag list is stale: run UPDATE_DOCS=1 cargo test -p ferry-runner --lib docs_list_every_register_flag"
        );
    }

    #[test]
    fn honoured_follows_the_loader() {
        assert_eq!(honoured(find("docker-image").unwrap()), "yes");
        assert_eq!(honoured(find("docker-privileged").unwrap()), "yes");
        assert_eq!(honoured(find("kubernetes-host").unwrap()), "not written");
        assert_eq!(honoured(find("tag-list").unwrap()), "register");
        // any value but "" or "default" is refused at load (Windows isolation)
        assert_eq!(honoured(find("docker-isolation").unwrap()), "refused");
        // the loader warns that it ignores it
        assert_eq!(honoured(find("use-slot-cgroups").unwrap()), "no");
    }
}
