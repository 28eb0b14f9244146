#!/usr/bin/env bash
# Install the Debian packages that building and testing Damselfly needs.
# Idempotent: runs `apt-get update` and `apt-get install` only when a package is missing.
#   bash scripts/setup.sh        (as root, or with sudo available)
set -euo pipefail

PACKAGES=(
    docker-registry  # the real OCI registry the integration tests and demo push to
    skopeo           # pushes generated OCI image layouts
    containerd       # real engine pulling through the registry mirror
    podman           # second engine (registries.conf mirrors)
    librocksdb-dev   # RocksDB linked by the rocksdb crate (see scripts/env.sh)
    libclang-dev     # bindgen for librocksdb-sys
    iproute2         # network namespaces for multi-host tests
    apache2-utils    # htpasswd for private-registry tests
    curl
    jq
    python3          # scripts/make-image.py
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "setup: all ${#PACKAGES[@]} Debian packages present"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO=(sudo)
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
echo "setup: done"
