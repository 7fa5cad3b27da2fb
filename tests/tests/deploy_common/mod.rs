//! Shared setup for the deploy tests: a fake cluster, a project with manifests, a target.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_deploy::{
    DeployError, DeployReport, DeployRequest, DeployTarget, Deployer, JobEnvironment, JobFacts,
    KubeDeployer, Origin,
};
use ferry_tests::fake_k8s::{FakeK8s, Scenario};
use tokio_util::sync::CancellationToken;

pub const DEPLOYMENT: &str = r#"# the web deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: __APP_NAME__
  labels:
    app: __APP_NAME__
spec:
  replicas: __REPLICAS__
  selector:
    matchLabels:
      app: __APP_NAME__
  template:
    metadata:
      labels:
        app: __APP_NAME__
    spec:
      containers:
      - name: web
        image: registry.example/web:__VERSION__
        ports:
        - containerPort: 8080
"#;

pub const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: __APP_NAME__
spec:
  selector:
    app: __APP_NAME__
  ports:
  - port: 80
    targetPort: 8080
"#;

pub struct Env {
    pub fake: FakeK8s,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Env {
    pub async fn new(scenario: Scenario) -> Env {
        let (_url, fake) = FakeK8s::start(scenario).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("k8s")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("kube")).expect("mkdir");
        let kubeconfig = fake.write_kubeconfig(&dir.path().join("kube"));
        let env = Env {
            fake,
            dir,
            kubeconfig,
        };
        env.write("k8s/deployment.yaml", DEPLOYMENT);
        env.write("k8s/service.yaml", SERVICE);
        env
    }

    pub fn project(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    pub fn target(&self) -> DeployTarget {
        DeployTarget {
            name: "test".into(),
            environments: vec!["test".into(), "review/*".into()],
            kubeconfig: self.kubeconfig.clone(),
            context: None,
            namespaces: vec!["test".into(), "review-*".into()],
            default_namespace: Some("test".into()),
            cluster_scoped: false,
            protected_refs_only: false,
        }
    }

    /// Runs the deploy step like a job would, with the standard variables plus `extra`.
    pub async fn deploy(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> (Result<DeployReport, DeployError>, String) {
        self.deploy_with(args, extra, vec![self.target()]).await
    }

    pub async fn deploy_with(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        targets: Vec<DeployTarget>,
    ) -> (Result<DeployReport, DeployError>, String) {
        self.deploy_as(args, extra, targets, Origin::Job(facts()))
            .await
    }

    /// Runs the deploy step for `origin` (a job with its GitLab facts, or a workstation).
    pub async fn deploy_as(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        targets: Vec<DeployTarget>,
        origin: Origin,
    ) -> (Result<DeployReport, DeployError>, String) {
        let mut variables: Vec<(String, String)> = [
            ("CI_ENVIRONMENT_NAME", "test"),
            ("CI_ENVIRONMENT_URL", "https://test.example.com"),
            ("CI_COMMIT_REF_NAME", "main"),
            ("CI_COMMIT_REF_PROTECTED", "true"),
            ("CI_COMMIT_SHORT_SHA", "1a2b3c4d"),
            ("APP_NAME", "web"),
            ("REPLICAS", "2"),
            ("FERRY_FAIL_FAST_GRACE", "200ms"),
            ("FERRY_TIMEOUT", "20s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        variables.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let req = DeployRequest {
            args: args.iter().map(|s| s.to_string()).collect(),
            project_dir: self.project().to_path_buf(),
            variables,
            targets,
            remaining: Some(Duration::from_secs(3600)),
            origin,
            resumed: None,
            progress: None,
        };
        run_request(&req).await
    }

    /// How many requests changed something (anything but GET).
    pub fn writes(&self) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    }
}

/// What GitLab asserts about the standard test job: a protected `main`, environment `test`.
pub fn facts() -> JobFacts {
    JobFacts {
        ref_protected: Some(true),
        ref_name: "main".into(),
        environment: JobEnvironment::Named("test".into()),
    }
}

/// `facts()` with another environment and ref protection.
pub fn facts_with(
    environment: Option<&str>,
    ref_protected: Option<bool>,
    ref_name: &str,
) -> Origin {
    Origin::Job(JobFacts {
        ref_protected,
        ref_name: ref_name.into(),
        environment: match environment {
            Some(e) => JobEnvironment::Named(e.into()),
            None => JobEnvironment::None,
        },
    })
}

pub fn deployer() -> KubeDeployer {
    KubeDeployer {
        diagnose_every: Duration::from_millis(100),
        ..KubeDeployer::default()
    }
}

pub async fn run_request(req: &DeployRequest) -> (Result<DeployReport, DeployError>, String) {
    let mut log: Vec<u8> = Vec::new();
    let cancel = CancellationToken::new();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        deployer().deploy(req, &mut log, &cancel),
    )
    .await
    .expect("the deploy step finished within 60s");
    let text = String::from_utf8_lossy(&log).to_string();
    println!("----- deploy log -----\n{text}----- result: {result:?}");
    (result, text)
}

pub fn image_of(dep: &serde_json::Value) -> String {
    dep.pointer("/spec/template/spec/containers/0/image")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}
