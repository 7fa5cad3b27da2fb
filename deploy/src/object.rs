//! Fields of Kubernetes objects held as JSON (`serde_json::Value`), read the same way everywhere.

use serde_json::Value;

/// `metadata.uid`, `""` when absent.
pub(crate) fn uid(o: &Value) -> &str {
    o.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether one of `metadata.ownerReferences` is the object with this uid.
pub(crate) fn owned_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

pub(crate) fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/annotations")?.get(key)?.as_str()
}

pub(crate) fn label<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/labels")?.get(key)?.as_str()
}

/// The label selector string (`k=v,k2=v2`) of `spec.selector.matchLabels`.
pub(crate) fn selector_of(o: &Value) -> Option<String> {
    let labels = o.pointer("/spec/selector/matchLabels")?.as_object()?;
    Some(
        labels
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_metadata() {
        let o = json!({
            "metadata": {
                "uid": "u1",
                "ownerReferences": [{"uid": "a"}, {"uid": "b"}],
                "labels": {"app": "web"},
                "annotations": {"deployment.kubernetes.io/revision": "3"}
            },
            "spec": {"selector": {"matchLabels": {"app": "web", "tier": "fe"}}}
        });
        assert_eq!(uid(&o), "u1");
        assert_eq!(uid(&json!({})), "");
        assert!(owned_by(&o, "b"));
        assert!(!owned_by(&o, "c"));
        assert!(!owned_by(&json!({}), ""));
        assert_eq!(label(&o, "app"), Some("web"));
        assert_eq!(
            annotation(&o, "deployment.kubernetes.io/revision"),
            Some("3")
        );
        assert_eq!(selector_of(&o).as_deref(), Some("app=web,tier=fe"));
        assert_eq!(selector_of(&json!({})), None);
    }
}
