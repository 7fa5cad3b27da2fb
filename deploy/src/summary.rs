//! The closing table: workloads (ready/desired, images), Services (type, ports), Ingress hosts.

use serde_json::Value;

use crate::render::images_of;

fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// One summary line for an object, or `None` for kinds the summary leaves out.
pub fn line(display: &str, kind: &str, obj: &Value) -> Option<String> {
    match kind {
        "Deployment" | "StatefulSet" => {
            let desired = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let ready = i(obj, "/status/readyReplicas");
            Some(format!(
                "{display:<40} {ready}/{desired} ready   {}",
                images_of(obj).join(", ")
            ))
        }
        "DaemonSet" => {
            let desired = i(obj, "/status/desiredNumberScheduled");
            let ready = i(obj, "/status/numberReady");
            Some(format!(
                "{display:<40} {ready}/{desired} ready   {}",
                images_of(obj).join(", ")
            ))
        }
        "Job" => {
            let completions = obj
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let done = i(obj, "/status/succeeded");
            Some(format!(
                "{display:<40} {done}/{completions} succeeded   {}",
                images_of(obj).join(", ")
            ))
        }
        "Service" => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let ip = obj
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p.get("port").map(|v| v.to_string()).unwrap_or_default();
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            let mut s = format!("{port}/{proto}");
                            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                                s.push_str(&format!(" (node {np})"));
                            }
                            if let Some(tp) = p.get("targetPort") {
                                let tp = tp
                                    .as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| tp.to_string());
                                s.push_str(&format!("→{tp}"));
                            }
                            s
                        })
                        .collect()
                })
                .unwrap_or_default();
            let lb: Vec<String> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|xs| {
                    xs.iter()
                        .filter_map(|x| {
                            x.get("ip")
                                .or_else(|| x.get("hostname"))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut s = format!("{display:<40} {ty}");
            if !ip.is_empty() {
                s.push_str(&format!(" {ip}"));
            }
            s.push_str(&format!(
                "   ports {}",
                if ports.is_empty() {
                    "-".into()
                } else {
                    ports.join(", ")
                }
            ));
            if !lb.is_empty() {
                s.push_str(&format!("   external {}", lb.join(", ")));
            }
            Some(s)
        }
        "Ingress" => {
            let tls_hosts: Vec<&str> = obj
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t.get("hosts").and_then(Value::as_array))
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect()
                })
                .unwrap_or_default();
            let hosts: Vec<String> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .map(|rs| {
                    rs.iter()
                        .filter_map(|r| r.get("host").and_then(Value::as_str))
                        .map(|h| {
                            if tls_hosts.contains(&h) {
                                format!("https://{h}")
                            } else {
                                format!("http://{h}")
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(format!(
                "{display:<40} hosts {}",
                if hosts.is_empty() {
                    "*".into()
                } else {
                    hosts.join(", ")
                }
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines() {
        let d = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "w", "image": "r/web:2"}]}}}, "status": {"readyReplicas": 3}});
        let l = line("deployment.apps/web", "Deployment", &d).unwrap();
        assert!(l.contains("3/3 ready") && l.contains("r/web:2"), "{l}");
        let s = json!({"spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}});
        let l = line("service/web", "Service", &s).unwrap();
        assert!(
            l.contains("NodePort 10.0.0.7") && l.contains("80/TCP (node 30080)→8080"),
            "{l}"
        );
        let i = json!({"spec": {"tls": [{"hosts": ["a.example"]}], "rules": [{"host": "a.example"}, {"host": "b.example"}]}});
        let l = line("ingress.networking.k8s.io/web", "Ingress", &i).unwrap();
        assert!(l.contains("https://a.example, http://b.example"), "{l}");
        assert!(line("configmap/x", "ConfigMap", &json!({})).is_none());
    }
}
