# shellcheck shell=sh
# The dfdaemon DaemonSet's init step (see dfdaemon.yaml): makes the node's container engine pull
# through the local dfdaemon, and hands the host data dir to the daemon's user. Runs as root, as
# `/bin/busybox sh node-setup.sh` in the dfdaemon image (busybox is there only for this), or with
# any POSIX sh and coreutils (scripts/check-k8s.sh runs it that way against a scratch directory).
#
# Idempotent: a file whose content is already right is left untouched (no rewrite, no mtime
# change), so the engines see no change on a pod restart. It writes only files that carry its
# marker line; a file of the same name that someone else wrote is left as it is, with a warning.
#
# Environment (defaults = the mounts in dfdaemon.yaml):
#   CONTAINERD_HOSTS    directory of hosts.toml bodies, one file per registry, named as image
#                       references name the registry with `__` for `:` (docker.io,
#                       registry.example.com__5000); each becomes
#                       $CONTAINERD_CERTS_D/<registry>/hosts.toml. Damselfly files for registries
#                       no longer listed are removed.
#   CONTAINERD_CERTS_D  the host's /etc/containerd/certs.d (containerd's CRI config_path)
#   CRIO_CONF           registries.conf drop-in for CRI-O / podman; empty: none
#   REGISTRIES_CONF_D   the host's /etc/containers/registries.conf.d (gets damselfly.conf)
#   DATA_DIR            the host's dfdaemon data dir; made and owned by DATA_UID, mode 0750
#   DATA_UID            the daemon's user and group id (the image's user 65532)
set -eu

CONTAINERD_HOSTS="${CONTAINERD_HOSTS-/config/containerd-hosts}"
CONTAINERD_CERTS_D="${CONTAINERD_CERTS_D-/host/etc/containerd/certs.d}"
CRIO_CONF="${CRIO_CONF-/setup/crio-damselfly.conf}"
REGISTRIES_CONF_D="${REGISTRIES_CONF_D-/host/etc/containers/registries.conf.d}"
DATA_DIR="${DATA_DIR-/host/var/lib/damselfly/dfdaemon}"
DATA_UID="${DATA_UID-65532}"

MARKER="written by Damselfly's dfdaemon node-setup"

# In the image busybox has no applet links: make them in a scratch directory.
applets=""
if ! command -v cmp >/dev/null 2>&1 && [ -x /bin/busybox ]; then
    applets="$(/bin/busybox mktemp -d)"
    /bin/busybox --install -s "$applets"
    PATH="$applets:$PATH"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp" $applets' EXIT

# is_ours FILE: FILE carries the marker line.
is_ours() {
    grep -q "$MARKER" "$1" 2>/dev/null
}

# install_file SRC DEST: DEST becomes the marker line + SRC, atomically, unless it already is.
install_file() {
    want="$tmp/want"
    {
        echo "# $MARKER (deploy/kubernetes/node-setup.sh); edits are overwritten."
        cat "$1"
    } >"$want"
    if [ -f "$2" ] && cmp -s "$want" "$2"; then
        echo "node-setup: unchanged $2"
        return 0
    fi
    if [ -e "$2" ] && ! is_ours "$2"; then
        echo "node-setup: WARNING: $2 exists and was not written by Damselfly: left as it is" >&2
        return 0
    fi
    mkdir -p "$(dirname "$2")"
    cp "$want" "$2.damselfly-new"
    chmod 0644 "$2.damselfly-new"
    mv -f "$2.damselfly-new" "$2"
    echo "node-setup: wrote $2"
}

# containerd: one hosts.toml per registry.
if [ -n "$CONTAINERD_HOSTS" ] && [ -d "$CONTAINERD_HOSTS" ]; then
    mkdir -p "$CONTAINERD_CERTS_D"
    wanted=" "
    for src in "$CONTAINERD_HOSTS"/*; do
        [ -f "$src" ] || continue
        registry="$(basename "$src" | sed 's/__/:/g')"
        wanted="$wanted$registry "
        install_file "$src" "$CONTAINERD_CERTS_D/$registry/hosts.toml"
    done
    # Registries dropped from the ConfigMap: remove the files this script wrote for them.
    for dest in "$CONTAINERD_CERTS_D"/*/hosts.toml; do
        [ -f "$dest" ] || continue
        registry="$(basename "$(dirname "$dest")")"
        case "$wanted" in *" $registry "*) continue ;; esac
        if is_ours "$dest"; then
            rm -f "$dest"
            rmdir "$(dirname "$dest")" 2>/dev/null || true
            echo "node-setup: removed $dest (registry no longer mirrored)"
        fi
    done
fi

# CRI-O / podman: one drop-in.
if [ -n "$CRIO_CONF" ] && [ -f "$CRIO_CONF" ]; then
    install_file "$CRIO_CONF" "$REGISTRIES_CONF_D/damselfly.conf"
fi

# The daemon's data dir, owned by its user (a hostPath is created root-owned).
if [ -n "$DATA_DIR" ]; then
    mkdir -p "$DATA_DIR"
    chmod 0750 "$DATA_DIR"
    owner="$(stat -c %u:%g "$DATA_DIR")"
    if [ "$owner" != "$DATA_UID:$DATA_UID" ]; then
        chown -R "$DATA_UID:$DATA_UID" "$DATA_DIR"
        echo "node-setup: $DATA_DIR now owned by $DATA_UID:$DATA_UID (was $owner)"
    fi
fi
echo "node-setup: done"
