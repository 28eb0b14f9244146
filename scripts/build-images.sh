#!/usr/bin/env bash
# Builds the container images `damselfly/supernode:TAG` and `damselfly/dfdaemon:TAG` (the names
# deploy/kubernetes uses) FROM scratch, and optionally pushes them to a registry.
#
#   bash scripts/build-images.sh                          # release build, tag = workspace version
#   bash scripts/build-images.sh --push registry.example.com:5000
#   bash scripts/build-images.sh --bin-dir target/debug --tag dev --push 127.0.0.1:5000
#
# Each image holds the binary, every shared library `ldd` lists for it (Debian's librocksdb and
# its compression libraries, libstdc++, libgcc_s, glibc), the dynamic loader, /etc/passwd and
# /etc/group with the unprivileged user 65532 ("damselfly"), /etc/nsswitch.conf, the host's CA
# bundle (/etc/ssl/certs/ca-certificates.crt, so https origins verify), an empty /tmp and the data
# dir /var/lib/damselfly/<name> owned by 65532. The dfdaemon image also carries Debian's static
# busybox for the Kubernetes node-setup init step (deploy/kubernetes/node-setup.sh), the one step
# that runs as root. No base image is pulled: the Dockerfiles are deploy/images/*.Dockerfile.
#
# Options:
#   --bin-dir DIR    take supernode and dfdaemon from DIR instead of running
#                    `cargo build --release --bin supernode --bin dfdaemon`
#   --tag TAG        image tag (default: the workspace version in Cargo.toml)
#   --push REGISTRY  also tag the images REGISTRY/damselfly/<name>:TAG and push them
#   --no-strip       keep the binaries' debug info (default: `strip --strip-debug`, which keeps
#                    the symbol table, so backtraces still name functions)
#   --docker-dir DIR where a dockerd this script starts keeps its data, exec root, pid file and
#                    log (default /var/lib/damselfly/build-docker)
#   --keep-dockerd   leave a dockerd this script started running (default: stop it at exit)
#
# Docker: uses the daemon at $DOCKER_HOST (default unix:///var/run/docker.sock). When nothing
# answers there and it is a unix socket, starts Debian's dockerd on that socket the way it runs on
# these machines (no iptables, no bridge, vfs storage); with --push it also marks the registry
# insecure (plain HTTP allowed) for that dockerd. Installs docker.io, busybox-static,
# ca-certificates and binutils with apt-get when missing (root).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

NAMES=(supernode dfdaemon)
IMAGE_PREFIX=damselfly
# The unprivileged user both daemons run as (the "nonroot" id distroless images use).
APP_UID=65532

BIN_DIR=""
TAG=""
PUSH=""
STRIP=1
DOCKER_DIR=/var/lib/damselfly/build-docker
KEEP_DOCKERD=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --push) PUSH="$2"; shift 2 ;;
        --no-strip) STRIP=0; shift ;;
        --docker-dir) DOCKER_DIR="$2"; shift 2 ;;
        --keep-dockerd) KEEP_DOCKERD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-images: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() {
    echo "==== [$(date +%H:%M:%S)] build-images: $*"
}

die() {
    echo "build-images: $*" >&2
    exit 1
}

if [[ -z "$TAG" ]]; then
    TAG="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
    [[ -n "$TAG" ]] || die "no version in Cargo.toml's [workspace.package]: pass --tag"
fi
REVISION="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"

# --- packages -------------------------------------------------------------------------------
install_missing() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker >/dev/null || missing+=(docker.io)
    [[ -x /bin/busybox ]] || missing+=(busybox-static)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    command -v strip >/dev/null || missing+=(binutils)
    if [[ ${#missing[@]} -gt 0 ]]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        say "installing ${missing[*]}"
        [[ "$(id -u)" -eq 0 ]] || die "installing ${missing[*]} needs root"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # docker.io's postinst tries to start the service; without an init system that fails
        # harmlessly, and this script starts dockerd itself.
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# --- docker daemon --------------------------------------------------------------------------
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
# Legacy builder: `FROM scratch` + ADD needs nothing more, and it works the same with Debian's
# CLI 20.10 and newer CLIs that have no buildx plugin.
export DOCKER_BUILDKIT=0
STARTED_DOCKERD_PID=""

docker_answers() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

start_dockerd() {
    local socket="${DOCKER_HOST#unix://}"
    [[ "$DOCKER_HOST" == unix://* ]] || die "no docker daemon answers at $DOCKER_HOST (not a unix socket: not starting one)"
    mkdir -p "$DOCKER_DIR" "$(dirname "$socket")"
    local args=(--iptables=false --ip6tables=false --bridge=none --storage-driver=vfs
        --data-root "$DOCKER_DIR/data" --exec-root "$DOCKER_DIR/exec"
        --pidfile "$DOCKER_DIR/dockerd.pid" -H "$DOCKER_HOST")
    if [[ -n "$PUSH" ]]; then
        args+=(--insecure-registry "$PUSH")
    fi
    say "no docker daemon at $DOCKER_HOST: starting dockerd (log $DOCKER_DIR/dockerd.log)"
    # setsid: the daemon outlives this script when --keep-dockerd asks for it.
    setsid dockerd "${args[@]}" >>"$DOCKER_DIR/dockerd.log" 2>&1 </dev/null &
    STARTED_DOCKERD_PID=$!
    local _
    for _ in $(seq 1 120); do
        if docker_answers; then
            return 0
        fi
        if ! kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null; then
            tail -n 20 "$DOCKER_DIR/dockerd.log" >&2
            die "dockerd exited during start (log above)"
        fi
        sleep 0.5
    done
    tail -n 20 "$DOCKER_DIR/dockerd.log" >&2
    die "dockerd did not answer at $DOCKER_HOST within 60 s"
}

stop_dockerd() {
    [[ -n "$STARTED_DOCKERD_PID" ]] || return 0
    if [[ "$KEEP_DOCKERD" -eq 1 ]]; then
        say "dockerd left running (pid $STARTED_DOCKERD_PID): export DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    kill -TERM "$STARTED_DOCKERD_PID" 2>/dev/null || return 0
    local _
    for _ in $(seq 1 60); do
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$STARTED_DOCKERD_PID" 2>/dev/null || true
    # dockerd leaves its default network namespace mounted under the exec root.
    umount "$DOCKER_DIR/exec/netns/default" 2>/dev/null || true
}

WORK=""
cleanup() {
    stop_dockerd
    if [[ -n "$WORK" ]]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- root filesystems -----------------------------------------------------------------------

# The absolute paths of the shared objects `ldd` resolves for $1, the dynamic loader included.
shared_objects() {
    local out
    out="$(ldd "$1" 2>&1)" || die "ldd $1 failed: $out"
    if grep -q 'not found' <<<"$out"; then
        die "ldd $1: missing libraries:"$'\n'"$out"
    fi
    # "libx.so.1 => /lib/x/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
    # linux-vdso.so.1 is provided by the kernel.
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# assemble_rootfs NAME BINARY DIR: writes DIR/rootfs.tar for the image of NAME.
assemble_rootfs() {
    local name="$1" binary="$2" dir="$3"
    local root="$dir/rootfs"
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/damselfly/$name"
    cp "$binary" "$root/usr/local/bin/$name"
    if [[ "$STRIP" -eq 1 ]]; then
        strip --strip-debug "$root/usr/local/bin/$name"
    fi
    local objects so
    objects="$(shared_objects "$binary")"
    for so in $objects; do
        mkdir -p "$root$(dirname "$so")"
        # -L: the file a symlink names, under the path the loader looks for.
        cp -L "$so" "$root$so"
    done
    [[ -e "$root/lib64/ld-linux-x86-64.so.2" ]] || die "ldd $binary named no dynamic loader"
    cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
damselfly:x:${APP_UID}:${APP_UID}:damselfly:/var/lib/damselfly:/sbin/nologin
EOF
    cat >"$root/etc/group" <<EOF
root:x:0:
damselfly:x:${APP_UID}:
EOF
    # glibc >= 2.34 has the files and dns lookups built in: no libnss_* to copy.
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    if [[ "$name" == dfdaemon ]]; then
        mkdir -p "$root/bin"
        cp -L /bin/busybox "$root/bin/busybox"
    fi
    chmod 1777 "$root/tmp"
    chmod 0750 "$root/var/lib/damselfly/$name"
    chown "$APP_UID:$APP_UID" "$root/var/lib/damselfly/$name"
    # Numeric owners and fixed times: the same inputs give the same layer.
    tar -C "$root" --numeric-owner --sort=name --mtime=@0 -cf "$dir/rootfs.tar" .
}

# --- main -----------------------------------------------------------------------------------
install_missing

if [[ -z "$BIN_DIR" ]]; then
    say "cargo build --release --bin supernode --bin dfdaemon"
    cargo build --release --locked --bin supernode --bin dfdaemon
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
for name in "${NAMES[@]}"; do
    [[ -x "$BIN_DIR/$name" ]] || die "$BIN_DIR/$name not found: build it, or drop --bin-dir to build release binaries"
done

if ! docker_answers; then
    start_dockerd
fi
say "docker $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST"

WORK="$(mktemp -d -t damselfly-images.XXXXXX)"
for name in "${NAMES[@]}"; do
    image="$IMAGE_PREFIX/$name:$TAG"
    say "assembling $image from $BIN_DIR/$name"
    ctx="$WORK/$name"
    mkdir -p "$ctx"
    assemble_rootfs "$name" "$BIN_DIR/$name" "$ctx"
    cp "deploy/images/$name.Dockerfile" "$ctx/Dockerfile"
    # Output only on failure (newer CLIs also warn that the legacy builder is deprecated).
    if ! docker build --build-arg "VERSION=$TAG" --build-arg "REVISION=$REVISION" -t "$image" "$ctx" \
        >"$WORK/$name-build.log" 2>&1; then
        cat "$WORK/$name-build.log" >&2
        die "docker build of $image failed (output above)"
    fi
    if [[ -n "$PUSH" ]]; then
        docker tag "$image" "$PUSH/$image"
        say "pushing $PUSH/$image"
        docker push --quiet "$PUSH/$image" >/dev/null
    fi
done

say "images:"
for name in "${NAMES[@]}"; do
    image="$IMAGE_PREFIX/$name:$TAG"
    size="$(docker image inspect --format '{{.Size}}' "$image")"
    printf '  %-32s %6.1f MiB  (%s)\n' "$image" "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" \
        "$(docker image inspect --format '{{.Id}}' "$image")"
    if [[ -n "$PUSH" ]]; then
        echo "  pushed as $PUSH/$image"
    fi
done
