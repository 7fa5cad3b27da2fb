#!/usr/bin/env bash
# How long ferry-pipeline takes to plan a 200-job pipeline with extends, rules, needs,
# !reference, an include and parallel:matrix (pipeline/examples/bench.rs). Prints the median
# of 20 plans; fails if it is 100 ms or more.
#
#   bench/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q --release -p ferry-pipeline --example bench
