#!/usr/bin/env bash
# Benchmark of ferry's Docker executor, end to end through `ferry run` and the fake GitLab:
#   1. one trivial job (hand-out -> final success PUT) vs `docker run --rm busybox sh -c 'echo hi'`,
#      medians of RUNS alternating runs (target: ratio <= 1.25); in the same runs, the job through
#      a second `ferry run --no-journal`: the cost of journaling (target: ratio <= 1.05);
#   2. JOBS trivial jobs with concurrent = CONCURRENT vs `xargs -P CONCURRENT docker run ...`
#      (target: ferry's throughput >= 0.85 of xargs').
# Not a test: it prints figures (record them in docs/benchmarks.md).
#
#   bench/executor.sh [--runs 10] [--jobs 50] [--concurrent 4]     (--jobs 0: no throughput run)
#   PROFILE=release bench/executor.sh      # optimised build (default: the dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."

sh scripts/build-test-images.sh

profile_flag=()
profile_dir=debug
if [ "${PROFILE:-dev}" = release ]; then
  profile_flag=(--release)
  profile_dir=release
fi
cargo build -q "${profile_flag[@]}" -p ferry-runner --bin ferry
cargo build -q "${profile_flag[@]}" -p ferry-tests --bin bench_executor

target="${CARGO_TARGET_DIR:-target}"
echo "machine: $(nproc) cores, $(docker version --format 'Docker {{.Server.Version}}' 2>/dev/null), profile $profile_dir"
FERRY_BIN="$target/$profile_dir/ferry" exec "$target/$profile_dir/bench_executor" "$@"
