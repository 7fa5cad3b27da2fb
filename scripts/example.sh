#!/usr/bin/env bash
# Runs ferry's main job on this machine: the example pipeline examples/${1:-hello} through
# `ferry exec`, on Docker, with no GitLab and no registry (docs/exec.md). It builds ferry, the
# local images the example uses (scripts/build-test-images.sh), and runs the pipeline in a copy
# of the example made into a git repository of its own; the job logs stay in
# target/example/<name>/. Needs Rust, git and Docker. Extra arguments go to `ferry exec`.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-hello}
[ $# -gt 0 ] && shift
[ -d "examples/$name" ] || { echo "no example examples/$name" >&2; exit 2; }

command -v git >/dev/null || { echo "example: git is needed" >&2; exit 2; }
bash scripts/build-test-images.sh
cargo build -q -p ferry-runner --bin ferry
target=${CARGO_TARGET_DIR:-$PWD/target}
ferry=$target/debug/ferry
out=$target/example/$name

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=$tmp/$name
mkdir -p "$work" "$out"
cp -a "examples/$name/." "$work/"
git -C "$work" init -q -b main
git -C "$work" add -A
git -C "$work" -c user.name=ferry -c user.email=ferry@localhost commit -q -m "example $name"
cd "$work"
"$ferry" exec --output "$out" "$@"
