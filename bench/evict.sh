#!/usr/bin/env bash
# The check of "a host that never fills its disk" at the issue's scale: tests/tests/evict.rs
# with 200 jobs (the test runs 24 by default, to stay around a minute on a 2-core machine).
# Prints how many things of each kind were removed and the disk use left (docs/docker-executor.md,
# "Disk use"); fails like the test if a limit is exceeded or anything is left in Docker.
#
#   bench/evict.sh [JOBS]        # default 200
set -euo pipefail
cd "$(dirname "$0")/.."
sh scripts/build-test-images.sh
cargo build -q -p ferry-runner --bin ferry
FERRY_EVICT_JOBS="${1:-200}" exec cargo test -q -p ferry-tests --test evict \
  many_jobs_leave_every_kind_of_data_under_its_limit_and_nothing_in_docker -- --nocapture
