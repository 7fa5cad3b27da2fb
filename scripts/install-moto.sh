#!/usr/bin/env bash
# Installs moto's S3 server from PyPI into a virtualenv, for the distributed cache tests
# (executor/tests/remote_cache.rs start it on a free 127.0.0.1 port). Idempotent. Prints the
# virtualenv's python, which the tests find at this default path (or in FERRY_MOTO_PYTHON).
#
#   scripts/install-moto.sh     # installs into ${FERRY_TOOLS_DIR:-$HOME/.cache/ferry-tools}
set -euo pipefail

VERSION="${MOTO_VERSION:-5.2.1}"
TOOLS="${FERRY_TOOLS_DIR:-$HOME/.cache/ferry-tools}"
VENV="$TOOLS/moto-venv"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -m pip show moto 2>/dev/null | grep -x "Version: $VERSION" >/dev/null; then
    echo "moto $VERSION already installed" >&2
    echo "$PY"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-moto: $PYTHON not found; install Python 3 first" >&2
    exit 1
fi
mkdir -p "$TOOLS"
if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "moto[server]==$VERSION" >&2
echo "$PY"
