#!/usr/bin/env bash
# Damselfly demo: three hosts, each with its own containerd and dfdaemon, pull the same private
# image at once through the swarm, and the registry serves each blob once; a host without the
# password gets nothing of it.
#
#   bash scripts/demo.sh                   # as root on Debian 12 (installs what it needs)
#   LAYERS=256MiB,64MiB,8MiB bash scripts/demo.sh
#   SKIP_BUILD=1 BIN_DIR=target/debug KEEP=1 bash scripts/demo.sh
#
# What it does: starts a real docker-registry (htpasswd auth: a private registry) on a free
# 127.0.0.1 port, builds the release
# binaries, pushes a generated multi-layer OCI image (scripts/make-image.py + skopeo), starts a
# supernode on 127.0.0.1, DAEMONS dfdaemons on 127.0.0.2, .3, ... and one containerd per daemon
# configured with deploy/containerd/hosts.toml, runs `ctr images pull` on every host at once,
# checks every host holds the complete image with the pushed digest, and prints the supernode's origin vs upload
# bytes, each daemon's download bytes by source, and the blob bytes the registry served (from
# its access log). Then a fourth daemon, on a host that never pulled, is asked for a layer by
# digest without the password and with a wrong one: the registry's 401 and no byte of it. It ends by printing where to look: the supernode's status page (with its API
# token), the metrics URLs, and how to point a local engine at one of the demo's daemons. Run
# from a terminal, it then keeps the swarm up until Ctrl-C so you can open them; otherwise (or
# with HOLD=0) it stops every process it started right away (KEEP=1 keeps the work dir).
#
# Knobs: LAYERS (layer sizes, default 64MiB,32MiB,16MiB,4MiB,1KiB), DAEMONS (default 3),
# SKIP_BUILD=1, BIN_DIR (default target/release), KEEP=1, RUST_LOG (default info), DIRECT=1
# (then also time the same pulls straight from the registry, for comparison), HOLD=1|0 (keep the
# swarm running at the end until Ctrl-C; default 1 when stdin and stdout are a terminal).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

LAYERS="${LAYERS:-64MiB,32MiB,16MiB,4MiB,1KiB}"
DAEMONS="${DAEMONS:-3}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
if [[ -t 0 && -t 1 ]]; then
    HOLD="${HOLD:-1}"
else
    HOLD="${HOLD:-0}"
fi
export RUST_LOG="${RUST_LOG:-info}"
REPO=demo/app
TAG=v1

WORK="$(mktemp -d -t damselfly-demo.XXXXXX)"
PIDS=()
NAMES=()
LOGS=()

STAGE=start
say() {
    STAGE="$1"
    echo "==== [$(date +%H:%M:%S)] $*"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        echo
        echo "==== demo FAILED during '$STAGE' (exit $rc); last lines of the process logs:"
        local i
        for i in "${!LOGS[@]}"; do
            # The registry's log is noise unless the registry itself is what failed.
            if [[ "${NAMES[$i]}" == registry && "$STAGE" != registry && "$STAGE" != image* ]]; then
                continue
            fi
            echo "--- ${NAMES[$i]}: ${LOGS[$i]}"
            tail -n 15 "${LOGS[$i]}" 2>/dev/null || true
        done
    fi
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP:-}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG CMD...: runs CMD in the background with its output in LOG.
start() {
    local name="$1" log="$2"
    shift 2
    "$@" >>"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    LOGS+=("$log")
}

# free_port IP tcp|udp: a port that was free on IP a moment ago.
free_port() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[2] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])
PY
}

# wait_http URL NAME [PID]: waits up to 30 s for URL to answer 200; fails at once when PID
# (default: the process started last) has exited.
wait_http() {
    local url="$1" name="$2" pid="${3:-${PIDS[-1]}}"
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null --noproxy '*' "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before it answered on $url" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$name did not answer 200 on $url within 30 s" >&2
    return 1
}

# metric PAGE NAME [LABEL_FILTER]: sum of the samples of NAME (with or without _total) on a
# Prometheus page, optionally only those whose labels contain LABEL_FILTER (e.g. source="peer").
metric() {
    awk -v want="$2" -v filter="${3:-}" '
        /^#/ || NF == 0 { next }
        {
            line = $0
            sub(/ # .*$/, "", line)  # OpenMetrics exemplar
            b = index(line, "{")
            if (b > 0) {
                match(line, /[}][^}]*$/)
                name = substr(line, 1, b - 1)
                labels = substr(line, b, RSTART - b + 1)
                rest = substr(line, RSTART + 1)
            } else {
                name = $1; labels = ""; rest = substr(line, length($1) + 1)
            }
            split(rest, f, " ")
            if ((name == want || name == want "_total") &&
                (filter == "" || index(labels, filter) > 0)) sum += f[1]
        }
        END { printf "%.0f\n", sum }' <<<"$1"
}

human() { numfmt --to=iec-i --suffix=B "$1"; }

say "setup"
bash scripts/setup.sh

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    say "cargo build --release --bins"
    cargo build --release --bins
fi
for bin in supernode dfdaemon dfget; do
    [[ -x "$BIN_DIR/$bin" ]] || { echo "missing $BIN_DIR/$bin" >&2; exit 1; }
done

say "registry"
REG_PORT="$(free_port 127.0.0.1 tcp)"
REG="127.0.0.1:$REG_PORT"
mkdir -p "$WORK/registry"
# A private registry: every request needs the demo user's password.
REG_USER=demo
REG_PASS="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$WORK/htpasswd" 2>/dev/null
(umask 077 && printf '%s' "$REG_PASS" >"$WORK/registry-password")
cat >"$WORK/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: $REG
auth:
  htpasswd:
    realm: damselfly-demo
    path: $WORK/htpasswd
YML
start registry "$WORK/registry.log" docker-registry serve "$WORK/registry.yml"
wait_http "http://$REG_USER:$REG_PASS@$REG/v2/" registry

say "image: layers $LAYERS"
python3 scripts/make-image.py --out "$WORK/oci" --tag "$TAG" --layers "$LAYERS" >/dev/null
skopeo copy --quiet --dest-tls-verify=false --preserve-digests --dest-creds "$REG_USER:$REG_PASS" \
    "oci:$WORK/oci:$TAG" "docker://$REG/$REPO:$TAG"
MANIFEST="$(curl -fsS --noproxy '*' -u "$REG_USER:$REG_PASS" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REG/v2/$REPO/manifests/$TAG")"
mapfile -t DIGESTS < <(jq -r '.config.digest, .layers[].digest' <<<"$MANIFEST")
IMAGE_BYTES="$(jq '[.config.size, .layers[].size] | add' <<<"$MANIFEST")"
echo "pushed $REG/$REPO:$TAG: ${#DIGESTS[@]} blobs, $(human "$IMAGE_BYTES")"

say "supernode"
SN_HTTP="127.0.0.1:$(free_port 127.0.0.1 tcp)"
SN_QUIC="127.0.0.1:$(free_port 127.0.0.1 udp)"
start supernode "$WORK/supernode.log" "$BIN_DIR/supernode" \
    --quic-listen "$SN_QUIC" --http-listen "$SN_HTTP" --data-dir "$WORK/sn" \
    --insecure-registry "$REG" --allow-origin "$REG"
wait_http "http://$SN_HTTP/healthz" supernode
# Daemons enroll with the join token the supernode wrote; it also pins the cluster CA.
JOIN_TOKEN="$WORK/sn/join-token"

say "$DAEMONS dfdaemons"
DAEMON_URLS=()
DAEMON_PIDS=()
for n in $(seq "$DAEMONS"); do
    ip="127.0.0.$((n + 1))"
    proxy="$ip:$(free_port "$ip" tcp)"
    peer="$ip:$(free_port "$ip" udp)"
    start "dfdaemon d$n" "$WORK/d$n.log" "$BIN_DIR/dfdaemon" \
        --supernode "$SN_QUIC" --proxy-listen "$proxy" --peer-listen "$peer" \
        --data-dir "$WORK/d$n" --join-token-file "$JOIN_TOKEN" --insecure-registry "$REG" \
        --registry "http://$REG"
    DAEMON_URLS+=("http://$proxy")
    DAEMON_PIDS+=("${PIDS[-1]}")
done
for n in $(seq "$DAEMONS"); do
    wait_http "${DAEMON_URLS[$((n - 1))]}/healthz" "dfdaemon d$n" "${DAEMON_PIDS[$((n - 1))]}"
done

say "$DAEMONS containerd instances (one per host)"
CTR_SOCKS=()
for n in $(seq "$DAEMONS"); do
    ctd="$WORK/containerd$n"
    mkdir -p "$ctd/root" "$ctd/state" "$ctd/hosts/$REG"
    cat >"$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctd/containerd.sock"
[metrics]
  address = ""
TOML
    # The engine configuration users install, from deploy/, placeholders filled in.
    sed -e "s/{{REGISTRY}}/$REG/g" -e "s#{{MIRROR}}#${DAEMON_URLS[$((n - 1))]#http://}#g" \
        deploy/containerd/hosts.toml >"$ctd/hosts/$REG/hosts.toml"
    start "containerd$n" "$ctd/containerd.log" containerd --config "$ctd/config.toml"
    CTR_SOCKS+=("$ctd/containerd.sock")
done
for n in $(seq "$DAEMONS"); do
    for _ in $(seq 100); do
        ctr -a "${CTR_SOCKS[$((n - 1))]}" version >/dev/null 2>&1 && break
        sleep 0.1
    done
done

say "pull: ctr images pull $REG/$REPO:$TAG on $DAEMONS hosts at once, through their dfdaemons"
LOG_LINES_BEFORE="$(wc -l <"$WORK/registry.log")"
PULL_START="$(date +%s.%N)"
CTR_PIDS=()
for n in $(seq "$DAEMONS"); do
    ctr -a "${CTR_SOCKS[$((n - 1))]}" images pull --user "$REG_USER:$REG_PASS" --hosts-dir "$WORK/containerd$n/hosts" \
        "$REG/$REPO:$TAG" >"$WORK/ctr$n.log" 2>&1 &
    CTR_PIDS+=("$!")
done
FAILED=0
for pid in "${CTR_PIDS[@]}"; do
    wait "$pid" || FAILED=$((FAILED + 1))
done
PULL_SECONDS="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" \
    "$PULL_START" "$(date +%s.%N)")"
if [[ $FAILED -gt 0 ]]; then
    echo "$FAILED pulls failed:" >&2
    tail -n 5 "$WORK"/ctr*.log >&2
    exit 1
fi
echo "$DAEMONS pulls finished in ${PULL_SECONDS}s"

say "verify: every host holds the image, complete and unpacked, with the pushed manifest digest"
PUSHED="$(curl -fsSI --noproxy '*' -u "$REG_USER:$REG_PASS" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REG/v2/$REPO/manifests/$TAG" | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r')"
for n in $(seq "$DAEMONS"); do
    line="$(ctr -a "${CTR_SOCKS[$((n - 1))]}" images check | grep -F "$REG/$REPO:$TAG")"
    echo "host $n: $line"
    [[ "$line" == *"$PUSHED"* && "$line" == *complete* ]] || { echo "host $n: image incomplete" >&2; exit 1; }
done

say "bytes moved (image: $IMAGE_BYTES bytes = $(human "$IMAGE_BYTES"))"
SN_METRICS="$(curl -fsS --noproxy '*' "http://$SN_HTTP/metrics")"
printf '%-34s %14s\n' "supernode origin bytes" \
    "$(metric "$SN_METRICS" damselfly_supernode_origin_bytes)"
printf '%-34s %14s\n' "supernode upload bytes" \
    "$(metric "$SN_METRICS" damselfly_supernode_upload_bytes)"
printf '%-10s %14s %14s %14s %14s\n' daemon "from peers" "from supernode" "from origin" uploaded
for n in $(seq "$DAEMONS"); do
    page="$(curl -fsS --noproxy '*' "${DAEMON_URLS[$((n - 1))]}/metrics")"
    printf '%-10s %14s %14s %14s %14s\n' "d$n" \
        "$(metric "$page" damselfly_dfdaemon_download_bytes 'source="peer"')" \
        "$(metric "$page" damselfly_dfdaemon_download_bytes 'source="supernode"')" \
        "$(metric "$page" damselfly_dfdaemon_download_bytes 'source="origin"')" \
        "$(metric "$page" damselfly_dfdaemon_upload_bytes)"
done

# registry_blob_bytes FROM_LINE: bytes and count of successful blob GETs in the registry's
# access log after line FROM_LINE. Lines look like: 127.0.0.1 - - [date]
# "GET /v2/demo/app/blobs/sha256:... HTTP/1.1" 200 67112960 "" "ua".
registry_blob_bytes() {
    tail -n +"$(($1 + 1))" "$WORK/registry.log" | awk '
        match($0, /"GET [^ ]*\/blobs\/sha256:[0-9a-f]+[^"]*" [0-9]+ [0-9]+/) {
            split(substr($0, RSTART, RLENGTH), f, "\" "); split(f[2], s, " ")
            if (s[1] ~ /^2/) { bytes += s[2]; n++ }
        }
        END { printf "%.0f %d\n", bytes, n }'
}
REGISTRY_BLOB_BYTES="$(registry_blob_bytes "$LOG_LINES_BEFORE")"
read -r REG_BYTES REG_REQUESTS <<<"$REGISTRY_BLOB_BYTES"
printf '%-34s %14s  (%s GET requests, %s of the image)\n' "registry blob bytes served" \
    "$REG_BYTES" "$REG_REQUESTS" \
    "$(python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.2f}x')" \
        "$REG_BYTES" "$IMAGE_BYTES")"
echo "(without P2P each daemon would fetch the image itself: $((DAEMONS * IMAGE_BYTES)) bytes)"
if [[ "${DIRECT:-}" == 1 ]]; then
    say "baseline: the same $DAEMONS pulls straight from the registry (fresh containerd instances)"
    for n in $(seq "$DAEMONS"); do
        ctd="$WORK/direct$n"
        mkdir -p "$ctd/root" "$ctd/state" "$ctd/hosts/$REG"
        sed -e "s#containerd$n#direct$n#g" "$WORK/containerd$n/config.toml" >"$ctd/config.toml"
        # No mirror: the registry itself as the only host.
        sed -e "s/{{REGISTRY}}/$REG/g" -e "s#{{MIRROR}}#$REG#g" deploy/containerd/hosts.toml >"$ctd/hosts/$REG/hosts.toml"
        start "direct$n" "$ctd/containerd.log" containerd --config "$ctd/config.toml"
    done
    for n in $(seq "$DAEMONS"); do
        for _ in $(seq 100); do
            ctr -a "$WORK/direct$n/containerd.sock" version >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    LOG_LINES_BEFORE="$(wc -l <"$WORK/registry.log")"
    DIRECT_START="$(date +%s.%N)"
    PIDS_DIRECT=()
    for n in $(seq "$DAEMONS"); do
        ctr -a "$WORK/direct$n/containerd.sock" images pull --user "$REG_USER:$REG_PASS" --hosts-dir "$WORK/direct$n/hosts" \
            "$REG/$REPO:$TAG" >"$WORK/direct$n.log" 2>&1 &
        PIDS_DIRECT+=("$!")
    done
    for pid in "${PIDS_DIRECT[@]}"; do
        wait "$pid" || { echo "direct pull failed" >&2; tail -n 5 "$WORK"/direct*.log >&2; exit 1; }
    done
    DIRECT_SECONDS="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" \
        "$DIRECT_START" "$(date +%s.%N)")"
    read -r DIRECT_BYTES DIRECT_REQUESTS <<<"$(registry_blob_bytes "$LOG_LINES_BEFORE")"
    printf '%-22s %10s %16s %10s\n' "" "wall (s)" "registry bytes" "x image"
    printf '%-22s %10s %16s %10s\n' "through Damselfly" "$PULL_SECONDS" "$REG_BYTES" \
        "$(python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$REG_BYTES" "$IMAGE_BYTES")"
    printf '%-22s %10s %16s %10s\n' "straight from registry" "$DIRECT_SECONDS" "$DIRECT_BYTES" \
        "$(python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$DIRECT_BYTES" "$IMAGE_BYTES")"
fi
say "private: a fourth host that never pulled asks its own dfdaemon for a layer by digest"
# The layers sit in the swarm (three daemons and the supernode hold them), but a host gets a
# task's pieces only after the registry accepted its own credentials for the repository.
ip="127.0.0.$((DAEMONS + 2))"
proxy="$ip:$(free_port "$ip" tcp)"
start "dfdaemon outsider" "$WORK/outsider.log" "$BIN_DIR/dfdaemon" \
    --supernode "$SN_QUIC" --proxy-listen "$proxy" --peer-listen "$ip:$(free_port "$ip" udp)" \
    --data-dir "$WORK/outsider" --join-token-file "$JOIN_TOKEN" --insecure-registry "$REG" \
    --registry "http://$REG"
wait_http "http://$proxy/healthz" "dfdaemon outsider"
LAYER="${DIGESTS[1]}"
for creds in "" "$REG_USER:wrong-password"; do
    args=(-sS --noproxy '*' -o "$WORK/outsider.body" -w '%{http_code}')
    label="no credentials:"
    if [[ -n "$creds" ]]; then
        args+=(-u "$creds")
        label="wrong password:"
    fi
    code="$(curl "${args[@]}" "http://$proxy/v2/$REPO/blobs/$LAYER?ns=$REG")"
    bytes="$(stat -c %s "$WORK/outsider.body")"
    printf '  %-26s HTTP %s, %s bytes (the registry'"'"'s challenge, not the layer)\n' "$label" "$code" "$bytes"
    [[ "$code" == 401 ]] || { echo "expected 401 from the outsider's daemon, got $code" >&2; exit 1; }
    if [[ "$(sha256sum <"$WORK/outsider.body" | cut -d' ' -f1)" == "${LAYER#sha256:}" ]]; then
        echo "the outsider got the layer!" >&2
        exit 1
    fi
done
page="$(curl -fsS --noproxy '*' "http://$proxy/metrics")"
echo "  outsider's daemon received $(metric "$page" damselfly_dfdaemon_download_bytes) bytes;" \
    "supernode refused $(metric "$(curl -fsS --noproxy '*' "http://$SN_HTTP/metrics")" damselfly_supernode_admissions_refused) admissions"
code="$(curl -sS --noproxy '*' -o "$WORK/outsider.body" -w '%{http_code}' -u "$REG_USER:$REG_PASS" \
    "http://$proxy/v2/$REPO/blobs/$LAYER?ns=$REG")"
[[ "$code" == 200 && "$(sha256sum <"$WORK/outsider.body" | cut -d' ' -f1)" == "${LAYER#sha256:}" ]] ||
    { echo "the outsider with the right password did not get the layer (HTTP $code)" >&2; exit 1; }
echo "  with the right password:   HTTP 200, the layer, from the swarm"
say "demo done"

# where_to_look: the status page, the metrics, and how to point a local engine at daemon d1.
where_to_look() {
    local token mirror n
    token="$(cat "$WORK/sn/api-token")"
    mirror="${DAEMON_URLS[0]}"
    echo
    echo "==== where to look"
    echo "status page: open this once in a browser; a cookie then keeps it signed in (tasks, hosts, offload, live rates):"
    echo "    http://$SN_HTTP/status?token=$token"
    echo "  the token is the supernode's API token (DATA_DIR/api-token); scripts send it as a header:"
    echo "    curl -H 'Authorization: Bearer $token' http://$SN_HTTP/api/v1/status"
    echo "metrics (Prometheus text, no token; Grafana dashboard: deploy/grafana, scrape example: deploy/prometheus):"
    echo "    supernode  http://$SN_HTTP/metrics"
    for n in $(seq "$DAEMONS"); do
        echo "    d$n         ${DAEMON_URLS[$((n - 1))]}/metrics"
    done
    echo "the demo registry is private: user $REG_USER, password in $WORK/registry-password (KEEP=1 keeps it)"
    echo "point this machine's engine at daemon d1 ($mirror, upstream http://$REG) and pull the demo image:"
    echo "    containerd: $BIN_DIR/dfdaemon configure containerd --mirror $mirror --registry http://$REG"
    echo "                ctr images pull --user $REG_USER:\$(cat $WORK/registry-password) --hosts-dir /etc/containerd/certs.d $REG/$REPO:$TAG"
    echo "    podman:     $BIN_DIR/dfdaemon configure podman --mirror $mirror --registry http://$REG"
    echo "                podman pull --creds $REG_USER:\$(cat $WORK/registry-password) $REG/$REPO:$TAG"
    echo "    Docker:     $BIN_DIR/dfdaemon configure docker --mirror $mirror && systemctl reload docker"
    echo "                docker pull $REPO:$TAG   (Docker mirrors Docker Hub names; d1 forwards them to $REG; log in first: the registry is private, user $REG_USER, password in $WORK/registry-password)"
    echo "  (--dry-run shows the change first; each writes FILE.bak-<time> before changing FILE)"
    echo "on a real host: dfdaemon configure containerd|crio|podman|docker with the defaults (mirror 127.0.0.1:65001)"
}
where_to_look
if [[ "$HOLD" == 1 ]]; then
    echo
    echo "==== the swarm keeps running: press Ctrl-C to stop it (HOLD=0 exits right away)"
    STAGE=hold
    trap 'exit 0' INT TERM
    while true; do
        sleep 3600 &
        PIDS+=("$!")
        wait "$!" || true
    done
else
    echo
    echo "(every process stops now; run from a terminal, or with HOLD=1, to keep the swarm up and open these)"
fi
