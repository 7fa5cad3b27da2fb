//! Reading a parsed TOML document key by key, with line numbers.
//!
//! This is the "raw" phase: every getter checks the TOML type of one key and returns the value
//! with the line it sits on, so the resolve phase can report `file:line: key: message`. Each
//! table remembers which keys were read; [`TableReader::finish`] turns the rest into warnings
//! or errors as ferry's key table (`keys.rs`) says.

use std::collections::BTreeSet;

use toml_edit::{Item, TableLike, Value};

use crate::keys::KeyStatus;
use crate::{ConfigError, ConfigWarning};

/// A value and the (1-based) line it was written on.
#[derive(Debug, Clone)]
pub(crate) struct Val<T> {
    pub v: T,
    pub line: usize,
}

/// Where we are: file name for errors, line index, collected warnings, environment lookup.
pub(crate) struct Ctx<'e> {
    pub file: String,
    line_starts: Vec<usize>,
    pub warnings: Vec<ConfigWarning>,
    pub env: &'e dyn Fn(&str) -> Option<String>,
}

impl<'e> Ctx<'e> {
    pub fn new(text: &str, file: &str, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            file: file.to_string(),
            line_starts,
            warnings: Vec::new(),
            env,
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn line_of_span(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        span.map(|s| self.line_of(s.start))
    }

    pub fn invalid(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn warn(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// A TOML syntax error, with its line and the text of that line (toml_edit's messages, such as
/// "duplicate key", do not say which key).
pub(crate) fn syntax_error(file: &str, text: &str, e: &toml_edit::TomlError) -> ConfigError {
    let start = e.span().map(|s| s.start.min(text.len())).unwrap_or(0);
    let bytes = text.as_bytes();
    let line = bytes[..start].iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = bytes[..start]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = bytes[start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| start + i);
    let source = String::from_utf8_lossy(&bytes[line_start..line_end]);
    let source: String = source.trim().chars().take(80).collect();
    let mut message = e.message().trim().replace('\n', "; ");
    if !source.is_empty() {
        message.push_str(&format!(" (in `{source}`)"));
    }
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        message,
    }
}

/// One table of the file being read.
pub(crate) struct TableReader<'a> {
    pub path: String,
    pub line: usize,
    table: &'a dyn TableLike,
    seen: BTreeSet<String>,
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn expected(ctx: &Ctx, line: usize, key: &str, what: &str, found: &str) -> ConfigError {
    ctx.invalid(line, key, format!("expected {what}, found {found}"))
}

impl<'a> TableReader<'a> {
    pub fn new(table: &'a dyn TableLike, path: String, line: usize) -> Self {
        TableReader {
            path,
            line,
            table,
            seen: BTreeSet::new(),
        }
    }

    /// The item of `key` and its line; marks the key as read.
    pub fn item(&mut self, ctx: &Ctx, key: &str) -> Option<(&'a Item, usize)> {
        let (k, item) = self.table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        self.seen.insert(key.to_string());
        let line = ctx
            .line_of_span(k.span())
            .or_else(|| ctx.line_of_span(item.span()))
            .unwrap_or(self.line);
        Some((item, line))
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn value(&mut self, ctx: &Ctx, key: &str) -> Option<(Result<&'a Value, &'a Item>, usize)> {
        let (item, line) = self.item(ctx, key)?;
        Some((item.as_value().ok_or(item), line))
    }

    /// The value of `key` when `get` takes it; otherwise an error saying it is not `what`.
    fn scalar<T>(
        &mut self,
        ctx: &Ctx,
        key: &str,
        what: &str,
        get: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<Val<T>>, ConfigError> {
        let Some((v, line)) = self.value(ctx, key) else {
            return Ok(None);
        };
        match v.ok().and_then(get) {
            Some(v) => Ok(Some(Val { v, line })),
            None => Err(expected(ctx, line, &self.key_path(key), what, tn(v))),
        }
    }

    pub fn string(&mut self, ctx: &Ctx, key: &str) -> Result<Option<Val<String>>, ConfigError> {
        self.scalar(ctx, key, "a string", |v| v.as_str().map(str::to_string))
    }

    pub fn int(&mut self, ctx: &Ctx, key: &str) -> Result<Option<Val<i64>>, ConfigError> {
        self.scalar(ctx, key, "an integer", Value::as_integer)
    }

    pub fn bool(&mut self, ctx: &Ctx, key: &str) -> Result<Option<Val<bool>>, ConfigError> {
        self.scalar(ctx, key, "true or false", Value::as_bool)
    }

    pub fn datetime(
        &mut self,
        ctx: &Ctx,
        key: &str,
    ) -> Result<Option<Val<toml_edit::Datetime>>, ConfigError> {
        let what = "a TOML datetime (like 2025-03-04T10:15:00Z)";
        self.scalar(ctx, key, what, |v| v.as_datetime().copied())
    }

    /// An array of strings; each element keeps its own line.
    pub fn strings(
        &mut self,
        ctx: &Ctx,
        key: &str,
    ) -> Result<Option<Vec<Val<String>>>, ConfigError> {
        match self.value(ctx, key) {
            None => Ok(None),
            Some((Ok(Value::Array(a)), line)) => {
                Ok(Some(string_elems(ctx, &self.key_path(key), a, line)?))
            }
            Some((v, line)) => Err(expected(
                ctx,
                line,
                &self.key_path(key),
                "an array of strings",
                tn(v),
            )),
        }
    }

    /// A string or an array of strings (`pull_policy`).
    pub fn string_or_strings(
        &mut self,
        ctx: &Ctx,
        key: &str,
    ) -> Result<Option<Vec<Val<String>>>, ConfigError> {
        match self.value(ctx, key) {
            None => Ok(None),
            Some((Ok(Value::String(s)), line)) => Ok(Some(vec![Val {
                v: s.value().clone(),
                line,
            }])),
            Some((Ok(Value::Array(a)), line)) => {
                Ok(Some(string_elems(ctx, &self.key_path(key), a, line)?))
            }
            Some((v, line)) => Err(expected(
                ctx,
                line,
                &self.key_path(key),
                "a string or an array of strings",
                tn(v),
            )),
        }
    }

    /// A sub-table (`[runners.docker]` or an inline table).
    pub fn table(&mut self, ctx: &Ctx, key: &str) -> Result<Option<TableReader<'a>>, ConfigError> {
        let Some((item, line)) = self.item(ctx, key) else {
            return Ok(None);
        };
        let path = self.key_path(key);
        match item.as_table_like() {
            Some(t) => {
                let line = header_line(ctx, item).unwrap_or(line);
                Ok(Some(TableReader::new(t, path, line)))
            }
            None => Err(expected(ctx, line, &path, "a table", item.type_name())),
        }
    }

    /// An array of tables (`[[runners]]`, or an array of inline tables).
    pub fn tables(&mut self, ctx: &Ctx, key: &str) -> Result<Vec<TableReader<'a>>, ConfigError> {
        let Some((item, line)) = self.item(ctx, key) else {
            return Ok(Vec::new());
        };
        let path = self.key_path(key);
        match item {
            Item::ArrayOfTables(aot) => Ok(aot
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let l = ctx.line_of_span(t.span()).unwrap_or(line);
                    TableReader::new(t, format!("{path}[{i}]"), l)
                })
                .collect()),
            Item::Value(Value::Array(a)) => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    let l = ctx.line_of_span(v.span()).unwrap_or(line);
                    match v {
                        Value::InlineTable(t) => {
                            out.push(TableReader::new(t, format!("{path}[{i}]"), l))
                        }
                        other => {
                            return Err(ctx.invalid(
                                l,
                                &format!("{path}[{i}]"),
                                format!("expected a table, found {}", other.type_name()),
                            ));
                        }
                    }
                }
                Ok(out)
            }
            other => Err(expected(
                ctx,
                line,
                &path,
                "an array of tables",
                other.type_name(),
            )),
        }
    }

    /// Every key not read yet, with its item and line (for tables of free-form keys such as
    /// `[runners.feature_flags]`).
    pub fn rest(&mut self, ctx: &Ctx) -> Vec<(String, &'a Item, usize)> {
        let keys: Vec<String> = self
            .table
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !self.seen.contains(k))
            .collect();
        keys.into_iter()
            .filter_map(|k| self.item(ctx, &k).map(|(item, line)| (k, item, line)))
            .collect()
    }

    /// Deal with what nobody read, as ferry's key table says ([`crate::keys`]): keys ferry
    /// ignores are warned about (unless their value is the "off" one), keys whose neglect would
    /// weaken isolation are an error, and anything else is an unknown key (warned).
    pub fn finish(mut self, ctx: &mut Ctx) -> Result<(), ConfigError> {
        let table = crate::keys::normalize(&self.path);
        for (key, item, line) in self.rest(ctx) {
            let path = join(&self.path, &key);
            let entry = join(&table, &key);
            let register_default = crate::keys::REGISTER_DEFAULTS
                .iter()
                .any(|(k, v)| *k == entry && item.as_integer() == Some(*v));
            match crate::keys::status(&entry) {
                Some(KeyStatus::NotImplemented) => {
                    if !is_inert(item, false) {
                        ctx.warn(line, &path, "accepted but not implemented yet");
                    }
                }
                Some(KeyStatus::NotImplementedDefaultTrue) => {
                    if !is_inert(item, true) {
                        ctx.warn(line, &path, "accepted but not implemented yet");
                    }
                }
                Some(KeyStatus::Warned(why)) => {
                    if !is_inert(item, false) && !register_default {
                        ctx.warn(line, &path, format!("ignored: {why}"));
                    }
                }
                Some(KeyStatus::Refused(why)) => {
                    if !is_inert(item, false) {
                        return Err(ctx.invalid(
                            line,
                            &path,
                            format!(
                                "refused: {why}; ferry does not run jobs with less isolation than the file asks for"
                            ),
                        ));
                    }
                }
                // the code reads these: left over only if ferry forgot one (the key table
                // test catches that)
                Some(KeyStatus::Honoured | KeyStatus::Table) | None => {
                    ctx.warn(line, &path, "unknown key (ignored)")
                }
            }
        }
        Ok(())
    }
}

fn tn(v: Result<&Value, &Item>) -> &'static str {
    match v {
        Ok(v) => v.type_name(),
        Err(i) => i.type_name(),
    }
}

fn header_line(ctx: &Ctx, item: &Item) -> Option<usize> {
    match item {
        Item::Table(t) => ctx.line_of_span(t.span()),
        Item::Value(v) => ctx.line_of_span(v.span()),
        _ => None,
    }
}

fn string_elems(
    ctx: &Ctx,
    path: &str,
    a: &toml_edit::Array,
    line: usize,
) -> Result<Vec<Val<String>>, ConfigError> {
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            let l = ctx.line_of_span(v.span()).unwrap_or(line);
            match v {
                Value::String(s) => Ok(Val {
                    v: s.value().clone(),
                    line: l,
                }),
                other => Err(ctx.invalid(
                    l,
                    &format!("{path}[{i}]"),
                    format!("expected a string, found {}", other.type_name()),
                )),
            }
        })
        .collect()
}

/// Whether a value is the "feature off" value that `register` writes (so not implementing the
/// key changes nothing and a warning would only be noise).
fn is_inert(item: &Item, default_true: bool) -> bool {
    match item {
        Item::None => true,
        Item::Value(Value::Boolean(b)) => *b.value() == default_true,
        Item::Value(Value::Integer(i)) => *i.value() == 0,
        Item::Value(Value::String(s)) => s.value().is_empty(),
        Item::Value(Value::Array(a)) => a.is_empty(),
        Item::Value(Value::InlineTable(t)) => t.is_empty(),
        Item::Table(t) => t.iter().all(|(_, v)| is_inert(v, false)),
        Item::ArrayOfTables(a) => a.is_empty(),
        Item::Value(_) => false,
    }
}
