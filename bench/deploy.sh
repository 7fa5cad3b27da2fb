#!/usr/bin/env bash
# Benchmark: `ferry deploy` vs `kubectl apply -f` + `kubectl rollout status`, deploying one
# Deployment (2 replicas) and one Service to the same fake cluster with the same controller
# delay. Every run deploys a new image tag, so each one is a real rollout. Prints the median
# wall time and CPU time (user+sys of the process) of each and the ratios ferry/kubectl.
# Targets: wall ratio <= 1.0, CPU ratio <= 0.5.
#
#   bench/deploy.sh                    # RUNS=7 STEP_MS=200 PROFILE=dev
#   PROFILE=release RUNS=11 bench/deploy.sh
#   BENCH_STRICT=1 bench/deploy.sh     # exit 1 when a target is missed
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-7}
STEP_MS=${STEP_MS:-200}
PROFILE=${PROFILE:-dev}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$PROFILE" in
    dev) OUT="$TARGET_DIR/debug/examples" ;;
    *) OUT="$TARGET_DIR/$PROFILE/examples" ;;
esac

KUBECTL=${FERRY_KUBECTL:-}
if [ -z "$KUBECTL" ]; then
    KUBECTL=$("$ROOT/scripts/install-kubectl.sh" | tail -1)
fi

echo "building ($PROFILE profile)..." >&2
(cd "$ROOT" && cargo build --quiet --profile "$PROFILE" -p ferry-deploy --example ferry-deploy \
    && cargo build --quiet --profile "$PROFILE" -p ferry-tests --example fake-k8s)
FERRY="$OUT/ferry-deploy"
FAKE="$OUT/fake-k8s"

WORK=$(mktemp -d)
FAKE_PID=
cleanup() {
    if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null || true; wait "$FAKE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$FAKE" "$WORK" "$STEP_MS" 1800 >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!
KC="$WORK/kubeconfig-fake.yaml"
for _ in $(seq 100); do [ -s "$WORK/fake.out" ] && break; sleep 0.1; done
[ -s "$WORK/fake.out" ] || { echo "the fake did not start" >&2; cat "$WORK/fake.err" >&2; exit 1; }

app() { # name tag
    cat <<YAML
apiVersion: v1
kind: Service
metadata:
  name: $1
spec:
  selector: {app: $1}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
spec:
  replicas: 2
  selector:
    matchLabels: {app: $1}
  template:
    metadata:
      labels: {app: $1}
    spec:
      containers:
      - name: web
        image: registry.example/web:$2
YAML
}

mkdir -p "$WORK/ferry/k8s" "$WORK/kubectl" "$WORK/cache"
app web-ferry __TAG__ >"$WORK/ferry/k8s/app.yaml"

run_ferry() { # tag
    (cd "$WORK/ferry" && TAG="$1" "$FERRY" --kubeconfig "$KC" --rollback none --timeout 60s >>"$WORK/ferry.log" 2>&1)
}
run_kubectl() { # tag
    app web-kubectl "$1" >"$WORK/kubectl/app.yaml"
    "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/cache" apply --validate=false -f "$WORK/kubectl/app.yaml" >>"$WORK/kubectl.log" 2>&1 \
        && "$KUBECTL" --kubeconfig "$KC" --cache-dir "$WORK/cache" -n test rollout status deployment/web-kubectl --timeout=60s >>"$WORK/kubectl.log" 2>&1
}

# one warm-up each (creates the objects, fills kubectl's discovery cache)
run_ferry warm || { cat "$WORK/ferry.log" >&2; exit 1; }
run_kubectl warm || { cat "$WORK/kubectl.log" >&2; exit 1; }

TIMEFORMAT='%R %U %S'
: >"$WORK/ferry.times"
: >"$WORK/kubectl.times"
for i in $(seq "$RUNS"); do
    { time run_ferry "f$i"; } 2>>"$WORK/ferry.times" || { echo "ferry run $i failed" >&2; cat "$WORK/ferry.log" >&2; exit 1; }
    { time run_kubectl "k$i"; } 2>>"$WORK/kubectl.times" || { echo "kubectl run $i failed" >&2; cat "$WORK/kubectl.log" >&2; exit 1; }
done

median() { # column file -> median (col 1 = wall, col 2 = cpu)
    awk -v c="$1" '{ if (c == 1) print $1; else print $2 + $3 }' "$2" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
FW=$(median 1 "$WORK/ferry.times"); FC=$(median 2 "$WORK/ferry.times")
KW=$(median 1 "$WORK/kubectl.times"); KC_=$(median 2 "$WORK/kubectl.times")
RW=$(awk -v a="$FW" -v b="$KW" 'BEGIN { printf "%.2f", a / b }')
RC=$(awk -v a="$FC" -v b="$KC_" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')

echo "deploy of 1 Deployment (2 replicas) + 1 Service, fake cluster, controller step ${STEP_MS}ms, $RUNS runs, $PROFILE build"
printf "%-34s %10s %10s\n" "" "wall (s)" "cpu (s)"
printf "%-34s %10s %10s\n" "ferry deploy (median)" "$FW" "$FC"
printf "%-34s %10s %10s\n" "kubectl apply + rollout status" "$KW" "$KC_"
printf "%-34s %10s %10s\n" "ratio ferry/kubectl" "$RW" "$RC"
OK=1
awk -v r="$RW" 'BEGIN { exit !(r <= 1.0) }' && echo "wall: target <= 1.0 met" || { echo "wall: target <= 1.0 MISSED"; OK=0; }
awk -v r="$RC" 'BEGIN { exit !(r <= 0.5) }' && echo "cpu:  target <= 0.5 met" || { echo "cpu:  target <= 0.5 MISSED"; OK=0; }
if [ "${BENCH_STRICT:-0}" = 1 ] && [ "$OK" = 0 ]; then exit 1; fi
