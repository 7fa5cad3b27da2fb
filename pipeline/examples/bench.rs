//! Plan a 200-job pipeline with `extends` (three levels), `rules`, `needs`, `!reference` and an
//! include, and print how long one plan takes (median of 20). Target: under 100 ms.
//! `bench/pipeline.sh` runs it in release mode.

use std::fmt::Write;
use std::time::{Duration, Instant};

use ferry_pipeline::{Input, RefKind, plan};

fn main() {
    let dir = std::env::temp_dir().join(format!("ferry-pipeline-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ci")).expect("temp dir");
    let mut yaml = String::from(
        "include:\n  - local: ci/*.yml\nstages: [build, test, deploy]\n\
         variables:\n  GLOBAL: one\n\
         .base:\n  image: alpine:3\n  before_script: [echo setup]\n  variables: {A: a}\n\
         .rules:\n  extends: .base\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\" && $SKIP != \"1\"\n    - if: $CI_PIPELINE_SOURCE =~ /^(web|schedule)$/\n      when: manual\n\
         .tpl:\n  extends: .rules\n  script:\n    - !reference [.base, before_script]\n    - make\n",
    );
    let mut included = String::new();
    for i in 0..200 {
        let stage = ["build", "test", "deploy"][i % 3];
        let target = if i < 100 { &mut yaml } else { &mut included };
        write!(
            target,
            "job-{i}:\n  extends: .tpl\n  stage: {stage}\n  variables:\n    N: \"{i}\"\n"
        )
        .unwrap();
        if stage != "build" {
            writeln!(target, "  needs: [job-{}]", i - i % 3).unwrap();
        }
        if i % 10 == 0 {
            write!(
                target,
                "  parallel:\n    matrix:\n      - OS: [linux, mac]\n"
            )
            .unwrap();
        }
    }
    // parallel jobs are needed by their base name: keep the build ones plain
    let yaml = yaml.replace("  parallel:\n    matrix:\n      - OS: [linux, mac]\n", "");
    std::fs::write(dir.join(".gitlab-ci.yml"), yaml).expect("write");
    std::fs::write(dir.join("ci/more.yml"), included).expect("write");

    let input = Input::new("main", RefKind::Branch, "push");
    let mut times: Vec<Duration> = Vec::new();
    let mut jobs = 0;
    for _ in 0..20 {
        let start = Instant::now();
        let pipeline = plan(&dir, &input).expect("the bench pipeline is valid");
        times.push(start.elapsed());
        jobs = pipeline.jobs.len();
    }
    std::fs::remove_dir_all(&dir).ok();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "planned a pipeline of 200 job definitions ({jobs} jobs): median {:.2} ms, max {:.2} ms (target < 100 ms)",
        median.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    if median > Duration::from_millis(100) {
        std::process::exit(1);
    }
}
