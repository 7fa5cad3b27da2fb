#!/usr/bin/env bash
# Benchmark of the distributed cache (`[runners.cache] Type = "s3"`) against a real S3 server:
# moto's, as the tests use (scripts/install-moto.sh), on 127.0.0.1. In one run, with a
# deterministic cache tree of 30,000 files / 200 MiB (driver: executor/examples/bench_cache_s3.rs):
#   1. save: ferry's cache save (archive + upload, the code a job's cache step runs) vs
#      `tar -c | zstd -1` + one `curl -T` (SigV4, same credentials)   target: ratio <= 1.2
#      (at the baseline's level, LEVEL=fastest)
#   2. restore on another host: ferry's restore (download + extract) vs
#      `curl -o` + `zstd -d | tar -x`                                  target: ratio <= 1.2
#   3. save of an unchanged cache                                      target: <= 0.2 s
#   4. restore served by this host's copy (the local tier: its prepared copy moved into place)
#      vs one `curl -o` of the archive                                 target: ratio <= 0.3
#      (the preparation of the next copy, in the background after each restore, is printed
#      on its own: wall and CPU time)
# Medians of RUNS runs, ferry and the baseline alternating. Not a test: it prints figures
# (record them in docs/benchmarks.md).
#
#   bench/cache-s3.sh                         # RUNS=3 FILES=30000 SIZE_MB=200 PROFILE=dev
#   PROFILE=release bench/cache-s3.sh         # optimised build: what users run
#   WORK=/dev/shm/ferry-bench bench/cache-s3.sh   # where the tree, the hosts' caches and the
#                                             # restores go (default: a new dir under $TMPDIR)
#   LEVEL=fastest bench/cache-s3.sh           # ferry's CACHE_COMPRESSION_LEVEL (default: gitlab-
#                                             # runner's default, zstd level 3; fastest = level 1,
#                                             # the baseline's: the save target is judged with it)
#   SINGLE_PUT_MAX=0 bench/cache-s3.sh        # archives over this many bytes go up in parts while
#                                             # written (default 256 MiB; 0: all, as before)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
FILES=${FILES:-30000}
SIZE_MB=${SIZE_MB:-200}
PROFILE=${PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$PROFILE" in
    dev) OUT="$TARGET_DIR/debug/examples" ;;
    *) OUT="$TARGET_DIR/$PROFILE/examples" ;;
esac

for tool in tar zstd curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "cache-s3: $tool not found (the baseline uses it)" >&2; exit 1; }
done

# The python with moto, found as tests/src/moto.rs finds it; installed when there is none.
PY=${FERRY_MOTO_PYTHON:-${FERRY_TOOLS_DIR:-$HOME/.cache/ferry-tools}/moto-venv/bin/python}
if ! "$PY" -c 'import moto.server' 2>/dev/null; then
    PY=python3
    if ! "$PY" -c 'import moto.server' 2>/dev/null; then
        PY=$("$ROOT/scripts/install-moto.sh" | tail -1)
    fi
fi

echo "building ($PROFILE profile)..." >&2
(cd "$ROOT" && cargo build --quiet --profile "$PROFILE" -p ferry-executor --example bench_cache_s3)

own_work=
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-cache-bench.XXXXXX")
    own_work=1
fi
mkdir -p "$WORK"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
cleanup() {
    kill "$MOTO_PID" 2>/dev/null || true
    if [ -n "$own_work" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
for _ in $(seq 300); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
BUCKET=ferry-cache-bench
curl -sSf -X PUT -o /dev/null "http://127.0.0.1:$PORT/$BUCKET" \
    || { echo "cache-s3: moto did not start on 127.0.0.1:$PORT (see $WORK/moto.log)" >&2; exit 1; }

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(free -g | awk '/^Mem:/ {print $2}') GB RAM, work dir on $(df -T "$WORK" | awk 'NR==2 {print $2}'), \
moto $("$PY" -c 'import moto; print(moto.__version__)'), $(zstd --version | head -1), \
$(curl --version | head -1 | cut -d' ' -f1-2), profile $PROFILE"
"$OUT/bench_cache_s3" --endpoint "127.0.0.1:$PORT" --bucket "$BUCKET" --work "$WORK" \
    --runs "$RUNS" --files "$FILES" --size-mb "$SIZE_MB" ${LEVEL:+--level "$LEVEL"} \
    ${SINGLE_PUT_MAX:+--single-put-max "$SINGLE_PUT_MAX"}
