#!/bin/sh
# Build the image tests/tests/container_e2e.rs runs ferry in, locally, without any registry:
#
#   build-container-test-image.sh FERRY_BINARY TAG
#
# It is the user image of packaging/docker/Dockerfile rebuilt from what this machine has, since
# nothing can be pulled here: instead of debian:bookworm-slim with apt's git, git-lfs and
# ca-certificates, it is ferry-test/busybox:latest (scripts/build-test-images.sh) plus the given
# ferry binary, this host's git (the binary, its exec path and git-upload-pack) and the shared
# libraries all of them load, at the same paths as on the host, and the host's CA bundle (ferry's
# HTTP client loads the system's roots at start). No git-lfs. The same ENTRYPOINT, CMD and
# VOLUMEs as the user image.
set -eu

[ $# -eq 2 ] || { echo "usage: $0 FERRY_BINARY TAG" >&2; exit 2; }
bin=$1
tag=$2
[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 1; }
git=$(command -v git) || { echo "$0: git is not installed on this host" >&2; exit 1; }
exec_path=$(git --exec-path)

sh "$(dirname "$0")/build-test-images.sh"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM
root="$ctx/rootfs"

# Copy a file to the same path under the image root (following symlinks).
put() {
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}

mkdir -p "$root/usr/local/bin" "$root/etc/ferry" "$root/var/lib/ferry" "$root$exec_path"
cp "$bin" "$root/usr/local/bin/ferry"
# git: the binary, its exec path (commands and helpers such as git-remote-http), and the
# commands a fetch from a local repository runs through PATH (git-upload-pack).
put "$git"
cp -a "$exec_path/." "$root$exec_path/"
for c in git-upload-pack git-receive-pack git-upload-archive; do
    if [ -x "$(dirname "$git")/$c" ]; then
        put "$(dirname "$git")/$c"
    fi
done
put /etc/ssl/certs/ca-certificates.crt
# Every shared library (and the loader) of these binaries, by the path ldd resolves.
find "$bin" "$git" "$exec_path" -type f -perm -u+x | while read -r b; do
    ldd "$b" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' || true
done | sort -u | while read -r lib; do
    put "$lib"
done

cat >"$ctx/Dockerfile" <<'EOF'
FROM ferry-test/busybox:latest
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
VOLUME ["/etc/ferry", "/var/lib/ferry"]
ENTRYPOINT ["ferry", "run"]
CMD ["--config", "/etc/ferry/config.toml", "--working-directory", "/var/lib/ferry"]
EOF

DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
