#!/bin/sh
# Build the images ferry's Docker tests use, locally, without any registry:
#
#   ferry-test/busybox:latest  FROM scratch + Debian's static busybox (sh, echo, ... as symlinks); no bash
#   ferry-test/bash:latest     the same plus Debian's static bash at /bin/bash
#   ferry-test/service:latest  busybox httpd listening on TCP 8080 (EXPOSE 8080)
#
# The static binaries come from the host (Debian packages busybox-static and bash-static); they are
# installed with apt-get only when missing. Idempotent: when every image exists and carries the
# current recipe version, nothing is built.
set -eu

RECIPE_VERSION=1
BUSYBOX_BIN=/bin/busybox
BASH_BIN=/bin/bash-static

log() { printf 'build-test-images: %s\n' "$*" >&2; }

up_to_date() {
    v=$(docker image inspect --format '{{ index .Config.Labels "ferry.test.recipe" }}' "$1" 2>/dev/null) || return 1
    [ "$v" = "$RECIPE_VERSION" ]
}

if up_to_date ferry-test/busybox:latest && up_to_date ferry-test/bash:latest &&
    up_to_date ferry-test/service:latest; then
    log "images are up to date"
    exit 0
fi

missing=""
[ -x "$BUSYBOX_BIN" ] || missing="$missing busybox-static"
[ -x "$BASH_BIN" ] || missing="$missing bash-static"
if [ -n "$missing" ]; then
    log "installing$missing with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM

# The legacy builder needs nothing but the daemon (no buildx plugin, no network).
export DOCKER_BUILDKIT=0

build() { # tag dir
    log "building $1"
    if ! out=$(docker build -q --label "ferry.test.recipe=$RECIPE_VERSION" -t "$1" "$2" 2>&1); then
        printf '%s\n' "$out" >&2
        exit 1
    fi
}

mkdir -p "$ctx/busybox/etc"
cp "$BUSYBOX_BIN" "$ctx/busybox/busybox"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$ctx/busybox/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/busybox/etc/group"
cat >"$ctx/busybox/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
COPY etc/ /etc/
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp /root /usr/bin && chmod 1777 /tmp"]
ENV PATH=/usr/local/bin:/usr/bin:/bin
CMD ["sh"]
EOF
build ferry-test/busybox:latest "$ctx/busybox"

mkdir -p "$ctx/bash"
cp "$BASH_BIN" "$ctx/bash/bash"
cat >"$ctx/bash/Dockerfile" <<'EOF'
FROM ferry-test/busybox:latest
COPY bash /bin/bash
CMD ["bash"]
EOF
build ferry-test/bash:latest "$ctx/bash"

mkdir -p "$ctx/service"
cat >"$ctx/service/Dockerfile" <<'EOF'
FROM ferry-test/busybox:latest
RUN mkdir -p /www && echo ferry-service-ok >/www/index.html
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
EOF
build ferry-test/service:latest "$ctx/service"

log "done"
