#!/usr/bin/env bash
# Benchmark of `ferry exec` (docs/exec.md), in one run on this machine:
#   1. a 5-job pipeline (2 stages, artifacts from build to the tests, a cache) on a repository of
#      1,000 files, against the same scripts run with `docker run` one after another (each with
#      the repository bind-mounted, as the least a local runner must do); target: ferry's total
#      <= 1.3x the docker-run total. Medians of RUNS runs each.
#   2. planning (`ferry exec --list`) of a 200-job pipeline with extends and rules; target:
#      under 100 ms. Median of RUNS runs.
# Not a test: it prints figures and ratios (record them in docs/benchmarks.md).
#
#   bench/exec.sh [RUNS]            # default 5
#   PROFILE=release bench/exec.sh   # optimised build (default: the dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}

bash scripts/build-test-images.sh >/dev/null
profile_flag=()
profile_dir=debug
if [ "${PROFILE:-dev}" = release ]; then
  profile_flag=(--release)
  profile_dir=release
fi
cargo build -q "${profile_flag[@]}" -p ferry-runner --bin ferry
ferry="$PWD/${CARGO_TARGET_DIR:-target}/$profile_dir/ferry"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo="$work/repo"
mkdir -p "$repo/src"
for i in $(seq 1 1000); do echo "file $i" >"$repo/src/f$i.txt"; done
cat >"$repo/.gitlab-ci.yml" <<'EOF'
stages: [build, test]
default:
  image: ferry-test/busybox:latest
build:
  stage: build
  script:
    - mkdir -p dist .cache && cat src/*.txt > dist/all.txt && date > .cache/stamp
  artifacts: {paths: [dist/]}
  cache: {key: bench, paths: [.cache/]}
test1: {stage: test, script: [wc -l dist/all.txt]}
test2: {stage: test, script: [grep -c file dist/all.txt]}
test3: {stage: test, script: [ls src | wc -l]}
test4: {stage: test, script: [test -s dist/all.txt]}
EOF
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=b -c user.email=b@b commit -q -m bench

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

ferry_times=()
docker_times=()
for r in $(seq 1 "$runs"); do
  t0=$(now)
  (cd "$repo" && "$ferry" exec --concurrent 1 --working-directory "$work/w" --output "$work/out" >/dev/null 2>&1)
  t1=$(now)
  ferry_times+=("$(echo "$t1 - $t0" | bc)")

  # The same scripts with plain `docker run`, one after another, on a copy of the repository.
  rm -rf "$work/plain" && cp -a "$repo" "$work/plain"
  t0=$(now)
  dr() { docker run --rm -v "$work/plain:/src" -w /src ferry-test/busybox:latest sh -c "$1" >/dev/null; }
  dr 'mkdir -p dist .cache && cat src/*.txt > dist/all.txt && date > .cache/stamp'
  dr 'wc -l dist/all.txt'
  dr 'grep -c file dist/all.txt'
  dr 'ls src | wc -l'
  dr 'test -s dist/all.txt'
  t1=$(now)
  docker_times+=("$(echo "$t1 - $t0" | bc)")
done
f=$(printf '%s\n' "${ferry_times[@]}" | median)
d=$(printf '%s\n' "${docker_times[@]}" | median)
echo "machine: $(nproc) cores, $(docker version --format 'Docker {{.Server.Version}}' 2>/dev/null), profile $profile_dir"
printf '1. 5-job pipeline, 1000 files: ferry exec %.2f s, docker run x5 %.2f s, ratio %.2f (target <= 1.30)\n' \
  "$f" "$d" "$(echo "$f / $d" | bc -l)"

# 2. Planning a 200-job pipeline.
big="$work/big"
mkdir -p "$big"
{
  echo "stages: [build, test, deploy]"
  echo ".base: {image: ferry-test/busybox:latest, variables: {A: '1'}, before_script: [echo base]}"
  echo ".rules: {rules: [{if: '\$CI_COMMIT_BRANCH == \"main\" && \$A =~ /1/', when: on_success}, {when: never}]}"
  for i in $(seq 1 200); do
    stage=$(( i % 3 )); stages=(build test deploy)
    echo "job$i: {extends: [.base, .rules], stage: ${stages[$stage]}, script: [echo $i]}"
  done
} >"$big/.gitlab-ci.yml"
git -C "$big" init -q -b main
git -C "$big" add -A
git -C "$big" -c user.name=b -c user.email=b@b commit -q -m big
list_times=()
for r in $(seq 1 "$runs"); do
  t0=$(now)
  (cd "$big" && "$ferry" exec --list --working-directory "$work/w" >/dev/null)
  t1=$(now)
  list_times+=("$(echo "($t1 - $t0) * 1000" | bc)")
done
l=$(printf '%s\n' "${list_times[@]}" | median)
printf '2. --list of a 200-job pipeline (extends, rules): %.0f ms (target < 100 ms)\n' "$l"
