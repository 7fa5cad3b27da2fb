//! Lenient field deserializers for GitLab's wire types.
//!
//! GitLab sends `null` for absent objects and strings, omits keys when empty, and a few fields
//! change type between versions (`entrypoint` as a string or a list, `docker.user` as a string or
//! a number, counters as strings). Every helper here turns `null` into the type's default and
//! coerces the obvious alternatives instead of failing, so one odd field never costs a job.
//! Structure errors (an object where a list must be) still fail, with serde's path and position.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `null` (or a missing key, with `#[serde(default)]`) → `T::default()`.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn value_to_string(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        // Objects/arrays where a string belongs: keep their JSON text rather than failing.
        other => Some(other.to_string()),
    }
}

/// Any scalar → string; `null` → `""`.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(value_to_string(Value::deserialize(d)?).unwrap_or_default())
}

/// Any scalar → `Some(string)`; `null` → `None`.
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(value_to_string(Value::deserialize(d)?))
}

/// `when:` from any scalar: [`ferry_config::When::parse`] (null, empty or unknown → `on_success`).
pub(crate) fn when<'de, D: Deserializer<'de>>(d: D) -> Result<ferry_config::When, D::Error> {
    Ok(ferry_config::When::parse(&string(d)?))
}

fn value_to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

/// Number or numeric string → `u64`; anything else (null, negative, garbage) → 0.
pub(crate) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(value_to_u64(&Value::deserialize(d)?).unwrap_or(0))
}

/// Number or numeric string → `Some(u64)`; anything else → `None`.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(value_to_u64(&Value::deserialize(d)?))
}

/// Number or numeric string → `f64`; anything else → 0.0.
pub(crate) fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    })
}

fn value_to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

/// `true`/`false`, `"true"`/`"false"`, 1/0 → bool; anything else → false.
pub(crate) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(value_to_bool(&Value::deserialize(d)?).unwrap_or(false))
}

/// Like [`bool`] but `None` when absent/unreadable.
pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(value_to_bool(&Value::deserialize(d)?))
}

fn value_to_string_list(v: Value) -> Option<Vec<String>> {
    match v {
        Value::Null => None,
        Value::Array(items) => Some(items.into_iter().filter_map(value_to_string).collect()),
        scalar => value_to_string(scalar).map(|s| vec![s]),
    }
}

/// List of scalars → strings (nulls dropped); a single scalar → one-element list; null → `[]`.
pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(value_to_string_list(Value::deserialize(d)?).unwrap_or_default())
}

/// Like [`string_list`] but keeps the difference between `null` (`None`) and a list.
pub(crate) fn opt_string_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Ok(value_to_string_list(Value::deserialize(d)?))
}
