//! YAML as GitLab reads it (Ruby's Psych, YAML 1.1 scalars): a tree of [`Node`]s that keep their
//! file and line, with anchors and aliases resolved, `<<` merge keys applied and `!reference`
//! tags kept as [`Value::Reference`] for [`crate::load`] to resolve.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use indexmap::IndexMap;
use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::Error;

/// Where a node starts: file (relative to the repository) and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A mapping in document order (Ruby hashes keep insertion order, and job order follows it).
pub type Map = IndexMap<String, Node>;

#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
    /// A plain scalar's text as written, when Psych reads it as something other than a string
    /// (a number, boolean, null, date, time or symbol): [`to_flow`] writes it back unchanged,
    /// so GitLab reads what the file says whatever ferry made of it.
    pub raw: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// The number, and its text as Ruby's `Float#to_s` writes it.
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Map),
    /// `!reference [job, key, …]`.
    Reference(Vec<String>),
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Node {
        Node {
            value,
            pos,
            raw: None,
        }
    }

    /// A short name of the node's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "hash",
            Value::Reference(_) => "!reference",
        }
    }

    pub fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as Ruby's `to_s` would give it, for scalars (variables, names).
    pub fn scalar_string(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(ruby_float(*f)),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// Ruby's `Float#to_s`: the shortest digits that read back, in fixed notation with at least
/// one decimal (`1000.0`, `0.0001`) when the decimal exponent is from -3 to 16, else as
/// `1.0e+20`, `1.5e-07`.
fn ruby_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // value = 0.DIGITS × 10^decpt
    let decpt = exp.parse::<i32>().unwrap_or(0) + 1;
    let n = digits.len() as i32;
    if (1..=16).contains(&decpt) {
        if n <= decpt {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else if (-3..=0).contains(&decpt) {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}e{:+03}", decpt - 1)
    }
}

/// Nesting deeper than this is refused (GitLab's `MAX_YAML_DEPTH`).
pub const MAX_DEPTH: usize = 100;
/// Nodes one file may expand to, aliases counted at their full size: past it, "too big" (an
/// alias bomb would otherwise take all memory; GitLab limits the parsed size too).
pub const MAX_NODES: usize = 1_000_000;

fn too_big(pos: Pos) -> Error {
    Error::at(pos, "The parsed YAML is too big".into())
}

/// Parse one YAML document (GitLab reads the first; a `spec:` header document is refused by
/// the caller). `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Node, Error> {
    let file: Arc<str> = Arc::from(file);
    let mut builder = Builder {
        anchors: HashMap::new(),
        nodes: 0,
        stack: Vec::new(),
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            Error::at(
                Pos {
                    file: file.clone(),
                    line: e.marker().line(),
                },
                format!("invalid YAML: {}", e.info()),
            )
        })?;
        let pos = Pos {
            file: file.clone(),
            line: span.start.line(),
        };
        if builder.event(event, pos)? {
            break;
        }
    }
    Ok(builder.root.unwrap_or(Node::new(
        Value::Null,
        Pos {
            file: file.clone(),
            line: 1,
        },
    )))
}

enum Frame {
    Seq {
        anchor: usize,
        items: Vec<Node>,
        pos: Pos,
        reference: bool,
        nodes_before: usize,
    },
    Map {
        anchor: usize,
        nodes_before: usize,
        map: Map,
        pending_key: Option<(String, bool, Pos)>,
        pos: Pos,
    },
}

struct Builder {
    /// Anchored nodes, with the number of nodes each stands for.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes so far (see [`MAX_NODES`]).
    nodes: usize,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    /// Handle one event; true when the first document is complete.
    fn event(&mut self, event: Event<'_>, pos: Pos) -> Result<bool, Error> {
        match event {
            Event::StreamStart | Event::Nothing => {}
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(_) => self.documents += 1,
            Event::DocumentEnd => return Ok(self.root.is_some() || self.documents >= 1),
            Event::Alias(id) => {
                let (node, size) = self.anchors.get(&id).cloned().ok_or_else(|| {
                    Error::at(pos.clone(), "invalid YAML: unknown alias".to_string())
                })?;
                self.count(size, &pos)?;
                // An alias is the anchored node itself; errors point at the anchor.
                self.push(node, false)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag_name = tag.as_ref().map(|t| format!("{}{}", t.handle, t.suffix));
                let (value, raw) = match tag_name.as_deref() {
                    Some("tag:yaml.org,2002:str") | Some("!!str") => {
                        (Value::Str(text.to_string()), None)
                    }
                    Some("!reference") => {
                        return Err(Error::at(
                            pos,
                            "!reference needs an array: !reference [job, key]".into(),
                        ));
                    }
                    _ if style == ScalarStyle::Plain => match resolve_plain(&text) {
                        Plain::Str => (Value::Str(text.to_string()), None),
                        Plain::Other(v) => (v, Some(Arc::from(&*text))),
                    },
                    _ => (Value::Str(text.to_string()), None),
                };
                let is_merge_key = style == ScalarStyle::Plain && &*text == "<<";
                self.count(1, &pos)?;
                let mut node = Node::new(value, pos);
                node.raw = raw;
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push(node, is_merge_key)?;
            }
            Event::SequenceStart(anchor, tag) => {
                let reference = tag
                    .as_ref()
                    .is_some_and(|t| t.handle == "!" && t.suffix == "reference");
                if self.stack.len() >= MAX_DEPTH {
                    return Err(too_big(pos));
                }
                self.stack.push(Frame::Seq {
                    anchor,
                    items: Vec::new(),
                    pos,
                    reference,
                    nodes_before: self.nodes,
                });
            }
            Event::SequenceEnd => {
                let Some(Frame::Seq {
                    anchor,
                    items,
                    pos,
                    reference,
                    nodes_before,
                }) = self.stack.pop()
                else {
                    return Err(Error::at(pos, "invalid YAML: unbalanced sequence".into()));
                };
                let value = if reference {
                    let mut path = Vec::new();
                    for item in &items {
                        match item.scalar_string() {
                            Some(s) if !matches!(item.value, Value::Bool(_)) => path.push(s),
                            _ => {
                                return Err(Error::at(
                                    item.pos.clone(),
                                    "!reference takes job and key names (strings)".into(),
                                ));
                            }
                        }
                    }
                    if path.is_empty() {
                        return Err(Error::at(pos, "!reference [] names nothing".into()));
                    }
                    Value::Reference(path)
                } else {
                    Value::Seq(items)
                };
                self.count(1, &pos)?;
                let size = self.nodes - nodes_before;
                let node = Node::new(value, pos);
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push(node, false)?;
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(t) = tag
                    && t.handle == "!"
                    && t.suffix == "reference"
                {
                    return Err(Error::at(
                        pos,
                        "!reference needs an array: !reference [job, key]".into(),
                    ));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(too_big(pos));
                }
                self.stack.push(Frame::Map {
                    anchor,
                    nodes_before: self.nodes,
                    map: Map::new(),
                    pending_key: None,
                    pos,
                });
            }
            Event::MappingEnd => {
                let Some(Frame::Map {
                    anchor,
                    map,
                    pos,
                    nodes_before,
                    ..
                }) = self.stack.pop()
                else {
                    return Err(Error::at(pos, "invalid YAML: unbalanced mapping".into()));
                };
                self.count(1, &pos)?;
                let size = self.nodes - nodes_before;
                let node = Node::new(Value::Map(map), pos);
                if anchor != 0 {
                    self.anchors.insert(anchor, (node.clone(), size));
                }
                self.push(node, false)?;
            }
        }
        Ok(false)
    }

    fn count(&mut self, n: usize, pos: &Pos) -> Result<(), Error> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(too_big(pos.clone()));
        }
        Ok(())
    }

    /// Place a finished node in its parent (or as the root).
    fn push(&mut self, node: Node, is_merge_key: bool) -> Result<(), Error> {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                map, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    let key = match &node.value {
                        Value::Null => String::new(),
                        Value::Map(_) | Value::Seq(_) | Value::Reference(_) => {
                            return Err(Error::at(
                                node.pos,
                                "a mapping key must be a scalar".into(),
                            ));
                        }
                        _ => node.scalar_string().unwrap_or_default(),
                    };
                    *pending_key = Some((key, is_merge_key, node.pos));
                }
                Some((_, true, _)) => merge_into(map, node)?,
                Some((key, false, key_pos)) => {
                    // A value is placed where its key is (`job:` rather than its first keyword),
                    // an alias's too: errors point at the use.
                    let node = Node {
                        pos: key_pos,
                        ..node
                    };
                    // Psych: a repeated key takes the later value, at the first one's place.
                    map.insert(key, node);
                }
            },
        }
        Ok(())
    }
}

/// `<<: *a` or `<<: [*a, *b]`, as Psych applies it: the merged keys overwrite what the mapping
/// has so far, later keys overwrite them; in a list the first mapping wins.
fn merge_into(map: &mut Map, node: Node) -> Result<(), Error> {
    match node.value {
        Value::Map(source) => {
            for (k, v) in source {
                map.insert(k, v);
            }
            Ok(())
        }
        Value::Seq(items) => {
            let mut merged = Map::new();
            for item in items.into_iter().rev() {
                match item.value {
                    Value::Map(source) => {
                        for (k, v) in source {
                            merged.insert(k, v);
                        }
                    }
                    _ => {
                        return Err(Error::at(
                            item.pos,
                            "a `<<` merge key takes a mapping or a list of mappings".into(),
                        ));
                    }
                }
            }
            for (k, v) in merged {
                map.insert(k, v);
            }
            Ok(())
        }
        _ => Err(Error::at(
            node.pos,
            "a `<<` merge key takes a mapping or a list of mappings".into(),
        )),
    }
}

/// What a plain scalar is to Psych.
enum Plain {
    /// A string: its text.
    Str,
    /// Anything else, as ferry holds it (a date, time or symbol, which ferry does not model,
    /// as its text; an integer beyond 64 bits as its decimal digits).
    Other(Value),
}

/// A regex of Psych's `ScalarScanner`, with Ruby's ASCII `\d` and `\s`.
fn psych_re(re: &'static str) -> regex::Regex {
    regex::Regex::new(re).expect("a valid regex")
}

/// Psych's `ScalarScanner#tokenize` for a plain, untagged scalar (psych 5, libyaml: YAML 1.1
/// booleans; legacy integers, which allow commas; GitLab loads with `YAML.safe_load`). The
/// branches are Psych's, in its order.
fn resolve_plain(text: &str) -> Plain {
    use std::sync::LazyLock;
    static WORDY: LazyLock<regex::Regex> = LazyLock::new(|| {
        psych_re(r"^[^0-9.:-]?[\p{Alphabetic}_ \t\r\n\x0B\x0C!@#$%\^&*(){}<>|/\\~;=]+")
    });
    static TIME: LazyLock<regex::Regex> = LazyLock::new(|| {
        psych_re(
            r"^-?[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t\r\n\x0B\x0C]+)[0-9]{1,2}:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t\r\n\x0B\x0C]*(?:Z|[-+][0-9]{1,2}:?(?:[0-9][0-9])?))?$",
        )
    });
    static DATE: LazyLock<regex::Regex> = LazyLock::new(|| {
        psych_re(r"^[0-9]{4}-(?:1[012]|0[0-9]|[0-9])-(?:[12][0-9]|3[01]|0[0-9]|[0-9])$")
    });
    static SEXAGESIMAL_INT: LazyLock<regex::Regex> =
        LazyLock::new(|| psych_re(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9]){1,2}$"));
    static SEXAGESIMAL_FLOAT: LazyLock<regex::Regex> =
        LazyLock::new(|| psych_re(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9]){1,2}\.[0-9_]*$"));
    static FLOAT: LazyLock<regex::Regex> =
        LazyLock::new(|| psych_re(r"^[-+]?([0-9][0-9_,]*)?\.[0-9]*([eE][-+][0-9]+)?$"));
    static INTEGER: LazyLock<regex::Regex> = LazyLock::new(|| {
        psych_re(
            r"^(?:[-+]?0b[_,]*[0-1][0-1_,]*|[-+]?0[_,]*[0-7][0-7_,]*|[-+]?(?:0|[1-9](?:[0-9]|,[0-9]|_[0-9])*)|[-+]?0x[_,]*[0-9a-fA-F][0-9a-fA-F_,]*)$",
        )
    });
    if text.is_empty() {
        return Plain::Other(Value::Null);
    }
    if WORDY.is_match(text) || text.contains('\n') {
        if text.chars().count() > 5 {
            return Plain::Str;
        }
        let lower = text.to_ascii_lowercase();
        return match lower.as_str() {
            "~" | "null" => Plain::Other(Value::Null),
            "yes" | "true" | "on" => Plain::Other(Value::Bool(true)),
            "no" | "false" | "off" => Plain::Other(Value::Bool(false)),
            _ => Plain::Str,
        };
    }
    if TIME.is_match(text) || DATE.is_match(text) {
        // A Time or Date: `YAML.safe_load` refuses the class; ferry keeps the text.
        return Plain::Other(Value::Str(text.to_string()));
    }
    match text.to_ascii_lowercase().as_str() {
        ".inf" | "+.inf" => return Plain::Other(Value::Float(f64::INFINITY)),
        "-.inf" => return Plain::Other(Value::Float(f64::NEG_INFINITY)),
        ".nan" => return Plain::Other(Value::Float(f64::NAN)),
        _ => {}
    }
    if text.len() > 1 && text.starts_with(':') {
        // A Symbol; ferry keeps the text.
        return Plain::Other(Value::Str(text.to_string()));
    }
    if SEXAGESIMAL_INT.is_match(text) {
        // Psych weighs the parts 60², 60¹, 60⁰ from the left, however many there are:
        // `1:30` is 5400 and `-1:30` is -1800 (each part's own sign).
        let mut sum: i128 = 0;
        for (e, part) in text.split(':').enumerate() {
            let n: i128 = part.replace('_', "").parse().unwrap_or(0);
            sum += n * 60i128.pow((e as i32 - 2).unsigned_abs());
        }
        return Plain::Other(i64::try_from(sum).map_or(Value::Str(sum.to_string()), Value::Int));
    }
    if SEXAGESIMAL_FLOAT.is_match(text) {
        let mut sum = 0.0f64;
        for (e, part) in text.split(':').enumerate() {
            let n: f64 = ruby_to_f(part);
            sum += n * 60f64.powi((e as i32 - 2).abs());
        }
        return Plain::Other(Value::Float(sum));
    }
    if FLOAT.is_match(text) {
        let bare = text.trim_start_matches(['-', '+']);
        if bare == "." {
            return Plain::Str;
        }
        // `Float(text.delete(",_").gsub(/\.([Ee]|$)/, '\1'))`
        let clean: String = text.chars().filter(|c| !matches!(c, ',' | '_')).collect();
        let clean = clean.replace(".e", "e").replace(".E", "E");
        let clean = clean.strip_suffix('.').unwrap_or(&clean);
        return match clean.parse::<f64>() {
            Ok(f) if clean.bytes().any(|b| b.is_ascii_digit()) => Plain::Other(Value::Float(f)),
            // `.e+5`: Ruby's Float raises; GitLab cannot load it. Kept as text.
            _ => Plain::Other(Value::Str(text.to_string())),
        };
    }
    if INTEGER.is_match(text) {
        let clean: String = text.chars().filter(|c| !matches!(c, ',' | '_')).collect();
        let (negative, digits) = match clean.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
        };
        let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
            u128::from_str_radix(hex, 16)
        } else if let Some(bin) = digits.strip_prefix("0b") {
            u128::from_str_radix(bin, 2)
        } else if digits.len() > 1 && digits.starts_with('0') {
            u128::from_str_radix(&digits[1..], 8)
        } else {
            digits.parse::<u128>()
        };
        let value = magnitude
            .ok()
            .and_then(|m| i128::try_from(m).ok())
            .map(|m| if negative { -m } else { m })
            .and_then(|n| i64::try_from(n).ok());
        return Plain::Other(match value {
            Some(n) => Value::Int(n),
            // A Ruby Integer past 64 bits; ferry has no such number: its digits.
            None if !digits.starts_with('0') || digits == "0" => {
                Value::Str(format!("{}{digits}", if negative { "-" } else { "" }))
            }
            None => Value::Str(text.to_string()),
        });
    }
    Plain::Str
}

/// Ruby's `String#to_f`: the longest leading decimal number (underscores between digits
/// allowed), 0.0 if none.
fn ruby_to_f(s: &str) -> f64 {
    let clean: String = s.chars().filter(|c| *c != '_').collect();
    let end = clean
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || *c == '.' || (*i == 0 && matches!(c, '-' | '+')))
        .map(|(i, c)| i + c.len_utf8())
        .last()
        .unwrap_or(0);
    clean[..end].trim_end_matches('.').parse().unwrap_or(0.0)
}

/// `node` as YAML flow text (`{"key": [1, "a"]}`) that Psych, and [`parse`], read back as the
/// same value: strings double-quoted, other plain scalars as written where flow style allows
/// (else in a form Psych reads as the same value), `!reference` tags kept. Used to send a configuration to
/// GitLab (docs/exec.md, "Includes from GitLab").
pub fn to_flow(node: &Node) -> String {
    let mut out = String::new();
    write_flow(node, &mut out);
    out
}

/// A mapping as block YAML, one top-level key a line, each value in flow style.
pub fn map_to_yaml(map: &Map) -> String {
    let mut out = String::new();
    for (k, v) in map {
        write_quoted(k, &mut out);
        out.push_str(": ");
        write_flow(v, &mut out);
        out.push('\n');
    }
    out
}

fn write_flow(node: &Node, out: &mut String) {
    if let Some(raw) = &node.raw
        && plain_in_flow(raw)
    {
        // As written: GitLab reads it as the file says (docs/exec.md).
        out.push_str(raw);
        return;
    }
    match &node.value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) if f.is_nan() => out.push_str(".nan"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" }),
        Value::Float(f) => {
            // Display never uses an exponent; YAML 1.1 needs the dot to read a float.
            let text = f.to_string();
            out.push_str(&text);
            if !text.contains('.') {
                out.push_str(".0");
            }
        }
        Value::Str(s) => write_quoted(s, out),
        Value::Seq(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_flow(item, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_quoted(k, out);
                out.push_str(": ");
                write_flow(v, out);
            }
            out.push('}');
        }
        Value::Reference(path) => {
            out.push_str("!reference [");
            for (i, p) in path.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_quoted(p, out);
            }
            out.push(']');
        }
    }
}

/// Whether a plain scalar's text can stand as written in a flow collection, as the same plain
/// scalar: only characters no YAML reader treats specially there, and checked by reading it back.
fn plain_in_flow(raw: &str) -> bool {
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-' | b'~'))
    {
        return false;
    }
    let text = format!("[{raw}, {{\"k\": {raw}}}]");
    let mut scalars = 0;
    let mut parser = Parser::new_from_str(&text);
    while let Some(event) = parser.next_event() {
        match event {
            Ok((Event::Scalar(t, ScalarStyle::Plain, 0, None), _)) if t == raw => scalars += 1,
            Ok((Event::Scalar(t, ScalarStyle::DoubleQuoted, 0, None), _)) if t == "k" => {}
            Ok((Event::Scalar(..), _)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    scalars == 2
}

/// A YAML double-quoted scalar: every character YAML does not allow raw (controls, DEL, C1,
/// the line and paragraph separators, a BOM) escaped.
fn write_quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
                || (0xfffe..=0xffff).contains(&(c as u32)) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: &Node) -> &Map {
        n.as_map().unwrap()
    }

    #[test]
    fn anchors_aliases_and_merge_keys_follow_psych() {
        let doc = "\
.base: &base
  image: ruby
  script: [a]
job:
  image: alpine
  <<: *base
  stage: build
multi:
  <<: [{a: 1}, {a: 2, b: 2}]
";
        let root = parse(doc, ".gitlab-ci.yml").unwrap();
        let job = map(&map(&root)["job"]);
        // the merge overwrites keys set before it (Psych's Hash#merge!)
        assert_eq!(job["image"].as_str(), Some("ruby"));
        assert_eq!(job["stage"].as_str(), Some("build"));
        assert_eq!(job["script"].pos.line, 3);
        let multi = map(&map(&root)["multi"]);
        assert!(matches!(multi["a"].value, Value::Int(1)));
        assert!(matches!(multi["b"].value, Value::Int(2)));
    }

    #[test]
    fn scalars_resolve_as_yaml_1_1() {
        let root = parse("a: yes\nb: '1'\nc: 1.10\nd: 0x1f\ne: ~\nf: 1_000\n", "f").unwrap();
        let m = map(&root);
        assert!(matches!(m["a"].value, Value::Bool(true)));
        assert_eq!(m["b"].as_str(), Some("1"));
        assert_eq!(m["c"].scalar_string().unwrap(), "1.1");
        assert!(matches!(m["d"].value, Value::Int(31)));
        assert!(m["e"].is_null());
        assert!(matches!(m["f"].value, Value::Int(1000)));
    }

    /// Cases from Psych's `ScalarScanner` (lib/psych/scalar_scanner.rb): a float needs a `.`,
    /// integers take commas and single underscores, `a:b` is base 60 weighed 60², 60¹, 60⁰.
    #[test]
    fn plain_scalars_resolve_as_psych_reads_them() {
        let doc = "\
e1: 1e3
e2: 1e+3
e3: 12e4567
e4: 1.5e+3
comma: 1,000
fcomma: 1,000.5
under: 1_000
twice: 1__000
trail: 1000_
sexa: 1:30
sexa3: 1:30:15
neg: -1:30
sexaf: 1:30.5
dot: 1.
lead: .5
octal: 017
notoctal: 08
hex: 0x_1f
upperx: 0X1f
oo: 0o17
yes1: yEs
off1: oFF
nul: nULL
inf: +.Inf
big: 99999999999999999999
date: 2024-01-01
time: 2001-12-14 21:59:43.10 -5
sym: :build
huge: 1.0e+20
tiny: 0.00001
small: 0.0001
float: 1000.
";
        let root = parse(doc, "f").unwrap();
        let m = map(&root);
        let s = |k: &str| {
            m[k].scalar_string()
                .unwrap_or_else(|| format!("{:?}", m[k].value))
        };
        for (k, kind, text) in [
            ("e1", "string", "1e3"),
            ("e2", "string", "1e+3"),
            ("e3", "string", "12e4567"),
            ("e4", "number", "1500.0"),
            ("comma", "number", "1000"),
            ("fcomma", "number", "1000.5"),
            ("under", "number", "1000"),
            ("twice", "string", "1__000"),
            ("trail", "string", "1000_"),
            ("sexa", "number", "5400"),
            ("sexa3", "number", "5415"),
            ("neg", "number", "-1800"),
            ("sexaf", "number", "5430.0"),
            ("dot", "number", "1.0"),
            ("lead", "number", "0.5"),
            ("octal", "number", "15"),
            ("notoctal", "string", "08"),
            ("hex", "number", "31"),
            ("upperx", "string", "0X1f"),
            ("oo", "string", "0o17"),
            ("yes1", "boolean", "true"),
            ("off1", "boolean", "false"),
            ("inf", "number", "Infinity"),
            ("big", "string", "99999999999999999999"),
            ("date", "string", "2024-01-01"),
            ("sym", "string", ":build"),
            ("huge", "number", "1.0e+20"),
            ("tiny", "number", "1.0e-05"),
            ("small", "number", "0.0001"),
            ("float", "number", "1000.0"),
        ] {
            assert_eq!((k, m[k].kind(), s(k).as_str()), (k, kind, text));
        }
        assert!(m["nul"].is_null());
        // Sent to GitLab: strings quoted, the rest as written where flow style allows it,
        // else in a form Psych reads as the same value.
        let sent = map_to_yaml(m);
        for line in [
            "\"e1\": \"1e3\"",
            "\"e3\": \"12e4567\"",
            "\"e4\": 1.5e+3",
            "\"comma\": 1000",
            "\"fcomma\": 1000.5",
            "\"under\": 1_000",
            "\"twice\": \"1__000\"",
            "\"sexa\": 5400",
            "\"dot\": 1.",
            "\"hex\": 0x_1f",
            "\"yes1\": yEs",
            "\"nul\": nULL",
            "\"inf\": +.Inf",
            "\"big\": 99999999999999999999",
            "\"date\": 2024-01-01",
            "\"sym\": \":build\"",
        ] {
            assert!(sent.lines().any(|l| l == line), "{line} not in\n{sent}");
        }
    }

    #[test]
    fn reference_tags_are_kept_and_errors_have_lines() {
        let root = parse("job:\n  script:\n    - !reference [.setup, script]\n", "f").unwrap();
        let script = &map(&map(&root)["job"])["script"];
        let Value::Seq(items) = &script.value else {
            panic!()
        };
        assert!(matches!(&items[0].value, Value::Reference(p) if p == &[".setup", "script"]));
        let err = parse("a: 1\nb: [1, 2\n", "ci.yml").unwrap_err();
        assert!(err.to_string().starts_with("ci.yml:"), "{err}");
        let err = parse("a: *nope\n", "ci.yml").unwrap_err();
        assert!(err.to_string().contains("ci.yml:1"), "{err}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let err = parse(&bomb, "ci.yml").unwrap_err();
        assert_eq!(err.message, "The parsed YAML is too big");
        let deep = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        let err = parse(&deep, "ci.yml").unwrap_err();
        assert_eq!(err.message, "The parsed YAML is too big");
        // 100 levels are fine
        assert!(parse(&format!("a: {}{}\n", "[".repeat(98), "]".repeat(98)), "f").is_ok());
    }

    /// Same value, positions aside (NaN equals NaN).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Int(x), Value::Int(y)) => x == y,
            (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
            (Value::Str(x), Value::Str(y)) => x == y,
            (Value::Reference(x), Value::Reference(y)) => x == y,
            (Value::Seq(x), Value::Seq(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(&a.value, &b.value))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && same(&a.value, &b.value))
            }
            _ => false,
        }
    }

    #[test]
    fn flow_text_reads_back_as_the_same_value() {
        let doc = "\
job:
  script:
    - !reference [.setup, script]
    - 'echo \"$HOME\" \\ done'
    - |
      multi
      line\ttab
  variables: {A: 1, B: 1.5, C: 1e3, D: 'yes', E: yes, F: ~, G: .inf, H: .nan, I: -7, J: 2.0}
  'key: with colon': ['#not a comment', '*alias', '&anchor', '- dash', '{x}', '', ' ']
  unicode: \"caf\\u00e9 \\u2028 \\x7f \\x85 \\u0001 \\U0001F600\"
";
        let root = parse(doc, "f").unwrap();
        let text = to_flow(&root);
        let back = parse(&text, "g").unwrap();
        assert!(same(&root.value, &back.value), "{text}");
        let block = map_to_yaml(root.as_map().unwrap());
        let back = parse(&block, "g").unwrap();
        assert!(same(&root.value, &back.value), "{block}");
        assert!(block.starts_with("\"job\": {"), "{block}");
    }

    proptest::proptest! {
        #[test]
        fn any_string_reads_back(s in "\\PC*|[\\x00-\\x7f\\u{80}-\\u{a0}\\u{2028}\\u{feff}\\u{fffe}]*") {
            let node = Node::new(
                Value::Seq(vec![Node::new(Value::Str(s.clone()), Pos { file: "f".into(), line: 1 })]),
                Pos { file: "f".into(), line: 1 },
            );
            let text = to_flow(&node);
            let back = parse(&text, "f").unwrap();
            let Value::Seq(items) = back.value else { panic!("{text}") };
            proptest::prop_assert_eq!(items[0].as_str(), Some(s.as_str()), "{}", text);
        }
    }
}
