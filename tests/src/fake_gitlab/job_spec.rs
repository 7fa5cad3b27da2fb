//! Building realistic job payloads for the fake, shaped as GitLab's `/jobs/request` answer.

use serde_json::{Value, json};

/// A job to queue on the fake. The fake assigns `id` and `token` when queued and fills
/// `dependencies` when it hands the job out.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub stage: String,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    pub image: Option<String>,
    pub services: Vec<Value>,
    /// (key, value, masked)
    pub variables: Vec<Value>,
    pub artifacts: Vec<Value>,
    pub cache: Vec<Value>,
    /// Runner tags the job needs.
    pub tags: Vec<String>,
    /// `info.features` the runner must advertise to get this job.
    pub required_features: Vec<String>,
    /// Ids of (finished) jobs whose artifacts this job needs.
    pub dependencies: Vec<u64>,
    pub timeout: u64,
    /// Used verbatim instead of the generated payload (id/token still replaced).
    pub raw: Option<Value>,
    /// Merged into the generated payload (JSON merge patch, RFC 7396: objects merge key by key,
    /// anything else replaces; `{{TOKEN}}` in strings becomes the job token).
    pub patch: Option<Value>,
}

impl JobSpec {
    pub fn new(name: &str) -> Self {
        JobSpec {
            name: name.to_owned(),
            stage: "test".into(),
            script: vec!["echo hello".into()],
            after_script: Vec::new(),
            image: Some("alpine:3.20".into()),
            services: Vec::new(),
            variables: Vec::new(),
            artifacts: Vec::new(),
            cache: Vec::new(),
            tags: Vec::new(),
            required_features: Vec::new(),
            dependencies: Vec::new(),
            timeout: 3600,
            raw: None,
            patch: None,
        }
    }

    /// A job whose payload is exactly `payload` (except `id` and `token`, set by the fake).
    pub fn raw(payload: Value) -> Self {
        JobSpec {
            raw: Some(payload),
            ..JobSpec::new("raw")
        }
    }

    pub fn script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        self.script = lines.into_iter().map(Into::into).collect();
        self
    }

    pub fn after_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        self.after_script = lines.into_iter().map(Into::into).collect();
        self
    }

    pub fn image(mut self, image: Option<&str>) -> Self {
        self.image = image.map(str::to_owned);
        self
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    pub fn requires_feature(mut self, feature: &str) -> Self {
        self.required_features.push(feature.to_owned());
        self
    }

    pub fn variable(mut self, key: &str, value: &str, masked: bool) -> Self {
        self.variables
            .push(json!({"key": key, "value": value, "public": !masked, "masked": masked}));
        self
    }

    /// A variable of type file (not public, not masked), as GitLab sends a deploy key.
    pub fn file_variable(mut self, key: &str, value: &str) -> Self {
        self.variables.push(
            json!({"key": key, "value": value, "public": false, "masked": false, "file": true}),
        );
        self
    }

    /// An `archive` artifact of `paths`.
    pub fn artifact_paths<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        let paths: Vec<String> = paths.into_iter().map(Into::into).collect();
        self.artifacts.push(
            json!({"name": "artifacts", "untracked": false, "paths": paths,
            "when": "on_success", "expire_in": "1 week", "artifact_type": "archive",
            "artifact_format": "zip"}),
        );
        self
    }

    pub fn service(mut self, service: Value) -> Self {
        self.services.push(service);
        self
    }

    /// Merge `patch` into the generated payload (see [`JobSpec::patch`]); several calls merge in
    /// order. E.g. `json!({"git_info": {"repo_url": "file:///tmp/repo"}})`.
    pub fn patch(mut self, patch: Value) -> Self {
        match &mut self.patch {
            Some(p) => merge(p, patch),
            None => self.patch = Some(patch),
        }
        self
    }

    pub fn depends_on(mut self, job_id: u64) -> Self {
        self.dependencies.push(job_id);
        self
    }

    /// The payload for job `id` with token `token` (dependencies filled in later).
    pub(crate) fn payload(&self, id: u64, token: &str, base_url: &str) -> Value {
        if let Some(raw) = &self.raw {
            let mut p = raw.clone();
            if let Value::Object(m) = &mut p {
                m.insert("id".into(), json!(id));
                m.insert("token".into(), json!(token));
            }
            return p;
        }
        let host = base_url.split("://").nth(1).unwrap_or("localhost");
        let mut variables = vec![
            json!({"key": "CI", "value": "true", "public": true, "masked": false}),
            json!({"key": "GITLAB_CI", "value": "true", "public": true, "masked": false}),
            json!({"key": "CI_SERVER_URL", "value": base_url, "public": true, "masked": false}),
            json!({"key": "CI_JOB_ID", "value": id.to_string(), "public": true, "masked": false}),
            json!({"key": "CI_JOB_NAME", "value": self.name, "public": true, "masked": false}),
            json!({"key": "CI_JOB_STAGE", "value": self.stage, "public": true, "masked": false}),
            json!({"key": "CI_JOB_TOKEN", "value": token, "public": false, "masked": true}),
            json!({"key": "CI_PROJECT_PATH", "value": "acme/app", "public": true, "masked": false}),
            json!({"key": "CI_COMMIT_SHA", "value": "9f1c2e7d4b5a6c8e0f1a2b3c4d5e6f708192a3b4",
                   "public": true, "masked": false}),
        ];
        variables.extend(self.variables.iter().cloned());
        let mut steps = vec![json!({"name": "script", "script": self.script,
            "timeout": self.timeout, "when": "on_success", "allow_failure": false})];
        if !self.after_script.is_empty() {
            steps.push(json!({"name": "after_script", "script": self.after_script,
                "timeout": self.timeout, "when": "always", "allow_failure": true}));
        }
        let mut payload = json!({
            "id": id,
            "token": token,
            "allow_git_fetch": true,
            "job_info": {"id": id, "name": self.name, "stage": self.stage, "project_id": 42,
                         "project_name": "app", "project_full_path": "acme/app"},
            "git_info": {
                "repo_url": format!("http://gitlab-ci-token:{token}@{host}/acme/app.git"),
                "ref": "main", "sha": "9f1c2e7d4b5a6c8e0f1a2b3c4d5e6f708192a3b4",
                "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch",
                "refspecs": ["+refs/pipelines/977:refs/pipelines/977",
                             "+refs/heads/main:refs/remotes/origin/main"],
                "depth": 20, "repo_object_format": "sha1", "protected": false
            },
            "runner_info": {"timeout": self.timeout, "runner_session_url": null},
            "variables": variables,
            "steps": steps,
            "hooks": [],
            "image": self.image.as_ref().map(|name| json!({"name": name, "entrypoint": null,
                "ports": [], "executor_opts": {}, "pull_policy": null})),
            "services": self.services,
            "artifacts": if self.artifacts.is_empty() { Value::Null } else { json!(self.artifacts) },
            "cache": self.cache,
            "credentials": [{"type": "registry", "url": host, "username": "gitlab-ci-token",
                             "password": token}],
            "dependencies": [],
            "features": {"trace_sections": true, "failure_reasons": FAILURE_REASONS},
        });
        if let Some(patch) = &self.patch {
            merge(&mut payload, with_token(patch.clone(), token));
        }
        payload
    }
}

/// JSON merge patch (RFC 7396).
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

fn with_token(v: Value, token: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{{TOKEN}}", token)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| with_token(x, token)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, with_token(x, token)))
                .collect(),
        ),
        other => other,
    }
}

/// What a current GitLab lists in `features.failure_reasons` (a subset is enough here).
pub const FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "missing_dependency_failure",
    "runner_unsupported",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "trace_size_exceeded",
    "runner_configuration_error",
    "runner_external_dependency_failure",
    "runner_interrupted",
];
