//! Serves the fake Kubernetes API on 127.0.0.1 for benchmarks and manual checks.
//!
//!   fake-k8s KUBECONFIG_DIR [STEP_MS] [SECONDS]
//!
//! Writes `KUBECONFIG_DIR/kubeconfig-fake.yaml` (context `fake`, namespace `test`), prints the
//! URL, and serves the success scenario with STEP_MS (default 100) between controller steps for
//! SECONDS (default 600) or until killed.

use std::path::PathBuf;
use std::time::Duration;

use ferry_tests::fake_k8s::{FakeK8s, Scenario};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fake-k8s KUBECONFIG_DIR [STEP_MS] [SECONDS]");
        std::process::exit(2);
    };
    let step: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(600);
    let (url, fake) = FakeK8s::start(Scenario::success().step(Duration::from_millis(step))).await;
    let kc = fake.write_kubeconfig(&dir);
    println!("{url} {}", kc.display());
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
