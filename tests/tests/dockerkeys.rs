//! End to end through `ferry run`, the fake GitLab and the real Docker engine: the
//! `[runners.docker]` container options (docs/configuration.md) as the job and Docker see them.
//! While a job waits for a go-ahead file, the test inspects its build and service containers.
//!
//! Needs Docker and the images of scripts/build-test-images.sh; without Docker it prints `SKIP`.

use std::time::Duration;

use ferry_tests::e2e::{BUSYBOX, Harness, SERVICE, Setup, cmd};
use ferry_tests::fake_gitlab::JobStatus;
use serde_json::Value;

const JOB_WAIT: Duration = Duration::from_secs(180);

/// `docker inspect` of this runner's containers of `job` of one type (`build` or `service`).
fn inspect(h: &Harness, job: u64, kind: &str) -> Vec<Value> {
    let ids = cmd(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            &format!("label=ferry.runner={}", h.short),
            "--filter",
            &format!("label=ferry.job_id={job}"),
            "--filter",
            &format!("label=ferry.type={kind}"),
        ],
    );
    ids.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|id| {
            let out = cmd("docker", &["inspect", id.trim()]);
            let v: Value = serde_json::from_str(&out).expect("docker inspect output");
            v[0].clone()
        })
        .collect()
}

/// The job script's last line: wait until the test lets it finish.
const WAIT_FOR_GO: &str = "echo waiting-for-go; while [ ! -e /scratch/go ]; do sleep 1; done";

/// Wait until the job waits in [`WAIT_FOR_GO`]; fail at once with its trace if it ends first.
async fn wait_waiting(h: &Harness, id: u64) {
    let deadline = std::time::Instant::now() + JOB_WAIT;
    while !h.gitlab.trace_string(id).contains("\nwaiting-for-go") {
        let ended = h.gitlab.job(id).is_some_and(|j| !j.status.is_active());
        if ended || std::time::Instant::now() >= deadline {
            panic!("job {id} never reached the wait: {}", h.describe(id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Let a job waiting in [`WAIT_FOR_GO`] finish.
fn let_go(build: &Value) {
    let id = build["Id"].as_str().unwrap();
    cmd("docker", &["exec", id, "touch", "/scratch/go"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_container_options_reach_the_containers() {
    let setup = Setup::default().docker(&format!(
        r#"image = "{BUSYBOX}"
pull_policy = ["if-not-present"]
privileged = true
allowed_privileged_images = ["ferry-test/bash*"]
allowed_privileged_services = ["ferry-test/bash*"]
tmpfs = {{ "/scratch" = "rw,size=16m" }}
services_tmpfs = {{ "/svc-scratch" = "rw,size=8m" }}
ulimit = {{ nofile = "1024:2048" }}
sysctls = {{ "net.ipv4.ip_unprivileged_port_start" = "0" }}
cpu_shares = 512
container_labels = {{ "ferry-e2e.team" = "team-$CI_JOB_ID" }}
log_options = {{ env = "CI_JOB_ID" }}
devices = ["/dev/null:/dev/xnull:rwm"]
service_memory = "64m"
services_security_opt = ["no-new-privileges"]
network_mtu = 1400
[[runners.docker.services]]
  name = "{SERVICE}"
  alias = "runnerwide"
"#
    ));
    let Some(mut h) = Harness::start(setup).await else {
        return;
    };
    let id = h.push(h.job("options").script([
        "wget -q -O- http://runnerwide:8080/",
        "grep ' /scratch ' /proc/mounts",
        "echo nofile=$(ulimit -n)",
        "test -c /dev/xnull && echo device-ok",
        "echo portstart=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)",
        "echo mtu=$(cat /sys/class/net/eth0/mtu)",
        WAIT_FOR_GO,
    ]));
    wait_waiting(&h, id).await;

    let build = inspect(&h, id, "build");
    assert_eq!(build.len(), 1, "{}", h.describe(id));
    let b = &build[0]["HostConfig"];
    // ferry-test/busybox is not in allowed_privileged_images: not privileged despite privileged
    assert_eq!(b["Privileged"], Value::Bool(false), "{b:#}");
    assert_eq!(b["Tmpfs"]["/scratch"], "rw,size=16m", "{b:#}");
    assert_eq!(b["Ulimits"][0]["Name"], "nofile", "{b:#}");
    assert_eq!(b["Ulimits"][0]["Soft"], 1024, "{b:#}");
    assert_eq!(b["Ulimits"][0]["Hard"], 2048, "{b:#}");
    assert_eq!(b["CpuShares"], 512, "{b:#}");
    assert_eq!(b["Devices"][0]["PathInContainer"], "/dev/xnull", "{b:#}");
    assert_eq!(b["LogConfig"]["Type"], "json-file", "{b:#}");
    assert_eq!(b["LogConfig"]["Config"]["env"], "CI_JOB_ID", "{b:#}");
    assert_eq!(b["Sysctls"]["net.ipv4.ip_unprivileged_port_start"], "0");
    assert_eq!(
        b["Memory"], 0,
        "service_memory is not the build container's"
    );
    let labels = &build[0]["Config"]["Labels"];
    assert_eq!(labels["ferry-e2e.team"], format!("team-{id}"), "{labels:#}");
    assert_eq!(labels["ferry.managed"], "true");

    let services = inspect(&h, id, "service");
    assert_eq!(
        services.len(),
        1,
        "the runner-wide service: {}",
        h.describe(id)
    );
    let s = &services[0]["HostConfig"];
    assert_eq!(s["Memory"], 64 * 1024 * 1024, "{s:#}");
    assert_eq!(s["Tmpfs"]["/svc-scratch"], "rw,size=8m", "{s:#}");
    assert!(s["Tmpfs"].get("/scratch").is_none(), "{s:#}");
    assert_eq!(s["SecurityOpt"][0], "no-new-privileges", "{s:#}");
    assert_eq!(s["LogConfig"]["Type"], "json-file", "{s:#}");
    assert_eq!(s["Privileged"], Value::Bool(false), "{s:#}");
    assert_eq!(s["CpuShares"], 0, "cpu_shares is the build container's");
    assert!(
        s["Ulimits"].as_array().is_none_or(|u| u.is_empty()),
        "{s:#}"
    );
    let svc_labels = &services[0]["Config"]["Labels"];
    assert_eq!(svc_labels["ferry-e2e.team"], format!("team-{id}"));
    assert_eq!(
        svc_labels["com.gitlab.gitlab-runner.ferry-e2e.team"],
        format!("team-{id}")
    );
    assert_eq!(svc_labels["ferry.type"], "service");
    let net = build[0]["HostConfig"]["NetworkMode"]
        .as_str()
        .unwrap()
        .to_string();
    let mtu = cmd(
        "docker",
        &["network", "inspect", "--format", "{{json .Options}}", &net],
    );
    assert!(
        mtu.contains("\"com.docker.network.driver.mtu\":\"1400\""),
        "{mtu}"
    );

    let_go(&build[0]);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    for want in [
        "\nferry-service-ok",
        " /scratch tmpfs ",
        "\nnofile=1024",
        "\ndevice-ok",
        "\nportstart=0",
        "\nmtu=1400",
    ] {
        assert!(trace.contains(want), "{want:?} missing: {trace}");
    }

    // The runner-wide service starts for the next job too. (Not privileged here: this test's
    // engine cannot start privileged containers; convert.rs's unit tests cover that side.)
    let id = h.push(
        h.job("again")
            .script(["wget -q -O- http://runnerwide:8080/", WAIT_FOR_GO]),
    );
    wait_waiting(&h, id).await;
    let build = inspect(&h, id, "build");
    assert_eq!(build.len(), 1, "{}", h.describe(id));
    assert_eq!(inspect(&h, id, "service").len(), 1, "{}", h.describe(id));
    let_go(&build[0]);
    let job = h.wait_final(id, JOB_WAIT).await;
    let trace = h.expect(&job, JobStatus::Success, None);
    assert!(trace.contains("\nferry-service-ok"), "{trace}");
    h.stop().await;
}
