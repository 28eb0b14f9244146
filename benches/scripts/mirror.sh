#!/usr/bin/env bash
# Mirror overhead (issue item 4): a real engine client (skopeo, containers/image) pulls an image
# through a dfdaemon that already holds every layer vs the same pull straight from the registry,
# interleaved in the same run, on loopback.
#
#   bash benches/scripts/mirror.sh              # results in benches/results/mirror.md
#   LAYERS=64MiB,16MiB REPS=3 bash benches/scripts/mirror.sh
#
# skopeo reads only /etc/containers/registries.conf, so each pull runs in a private mount
# namespace (`unshare -m`) with its own registries.conf and /var/lib/containers bound over the
# system's; nothing of the machine's container state is read or written. Both variants go through
# the same registries.conf prefix; only the [[registry.mirror]] entry differs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LAYERS="${LAYERS:-128MiB,64MiB,32MiB,32MiB}"
REPS="${REPS:-5}"
NAME=bench/mirror
TAG=v1
WORK="$(mktemp -d -t dfbench-mirror.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[2]=="udp" else socket.SOCK_STREAM); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1" "$2"
}
wait_http() {
    for _ in $(seq 300); do
        curl -fsS -o /dev/null --noproxy '*' "$1" 2>/dev/null && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "$2 exited" >&2; return 1; }
        sleep 0.1
    done
    echo "$2 did not answer on $1" >&2
    return 1
}
now() { date +%s.%N; }

bash scripts/setup.sh >&2
build
MACHINE="$(machine_line)"

say "registry and image ($LAYERS)"
REG="127.0.0.1:$(free_port 127.0.0.1 tcp)"
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
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=("$!")
wait_http "http://$REG/v2/" registry
python3 scripts/make-image.py --out "$WORK/oci" --tag "$TAG" --layers "$LAYERS" >/dev/null 2>&1
skopeo copy --quiet --dest-tls-verify=false --preserve-digests "oci:$WORK/oci:$TAG" "docker://$REG/$NAME:$TAG"
rm -rf "$WORK/oci"
IMAGE_BYTES="$(curl -fsS --noproxy '*' -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/$NAME/manifests/$TAG" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"]+sum(l["size"] for l in m["layers"]))')"

say "supernode and dfdaemon"
SN_HTTP="127.0.0.1:$(free_port 127.0.0.1 tcp)"
SN_QUIC="127.0.0.1:$(free_port 127.0.0.1 udp)"
"$BIN/supernode" --quic-listen "$SN_QUIC" --http-listen "$SN_HTTP" --data-dir "$WORK/sn" \
    --insecure-registry "$REG" --allow-origin "$REG" >"$WORK/supernode.log" 2>&1 &
PIDS+=("$!")
wait_http "http://$SN_HTTP/healthz" supernode
D_HTTP="127.0.0.2:$(free_port 127.0.0.2 tcp)"
D_PEER="127.0.0.2:$(free_port 127.0.0.2 udp)"
"$BIN/dfdaemon" --supernode "$SN_QUIC" --proxy-listen "$D_HTTP" --peer-listen "$D_PEER" --data-dir "$WORK/d" \
    --join-token-file "$WORK/sn/join-token" --insecure-registry "$REG" --registry "http://$REG" >"$WORK/dfdaemon.log" 2>&1 &
PIDS+=("$!")
DAEMON_PID="${PIDS[-1]}"
wait_http "http://$D_HTTP/healthz" dfdaemon

conf() {
    cat <<CONF
unqualified-search-registries = []
[[registry]]
prefix = "bench.local"
location = "$REG"
insecure = true
CONF
    if [[ "$1" == mirror ]]; then
        printf '[[registry.mirror]]\nlocation = "%s"\ninsecure = true\n' "$D_HTTP"
    fi
}
conf direct >"$WORK/direct.conf"
conf mirror >"$WORK/mirror.conf"
[[ -f /etc/containers/registries.conf ]] || { echo "/etc/containers/registries.conf missing (install skopeo)" >&2; exit 1; }
mkdir -p /var/lib/containers

# pull VARIANT: skopeo copy of the image into a fresh dir; prints the seconds it took.
pull() {
    local variant="$1" dir
    dir="$(mktemp -d -p "$WORK")"
    mkdir -p "$dir/varlib" "$dir/out" "$dir/tmp"
    local t0 t1
    t0="$(now)"
    TMPDIR="$dir/tmp" unshare -m --propagation private sh -c '
        mount --bind "$1" /etc/containers/registries.conf
        mount --bind "$2" /var/lib/containers
        shift 2
        exec "$@"' sh "$WORK/$variant.conf" "$dir/varlib" \
        skopeo copy --quiet "docker://bench.local/$NAME:$TAG" "dir:$dir/out" >"$dir/log" 2>&1 ||
        { echo "skopeo ($variant) failed:" >&2; cat "$dir/log" >&2; return 1; }
    t1="$(now)"
    rm -rf "$dir"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$t1"
}

blob_gets() { grep -c '"GET [^"]*/blobs/sha256:' "$WORK/registry.log" || true; }

say "warm-up: one pull through the dfdaemon (cold), one straight"
COLD="$(pull mirror)"
pull direct >/dev/null
echo "cold pull through the mirror: ${COLD}s"

DIRECT=()
MIRROR=()
GETS_BEFORE="$(blob_gets)"
MIRROR_GETS=0
for rep in $(seq "$REPS"); do
    # Alternate the order so that neither variant always runs second.
    for variant in $([[ $((rep % 2)) -eq 1 ]] && echo "direct mirror" || echo "mirror direct"); do
        before="$(blob_gets)"
        t="$(pull "$variant")"
        if [[ "$variant" == direct ]]; then DIRECT+=("$t"); else MIRROR+=("$t"); MIRROR_GETS=$((MIRROR_GETS + $(blob_gets) - before)); fi
        echo "rep $rep $variant ${t}s" >&2
    done
done
RSS_KIB="$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")"

python3 - "$MACHINE" "$LAYERS" "$IMAGE_BYTES" "$COLD" "$MIRROR_GETS" "$RSS_KIB" "${DIRECT[*]}" "${MIRROR[*]}" \
    >"$RESULTS/mirror.md" <<'PY'
import statistics, sys
machine, layers, image, cold, gets, rss = sys.argv[1:7]
direct = [float(x) for x in sys.argv[7].split()]
mirror = [float(x) for x in sys.argv[8].split()]
md, mm = statistics.median(direct), statistics.median(mirror)
print("# Mirror overhead\n")
print(f"Measured {machine}. Command: `LAYERS={layers} bash benches/scripts/mirror.sh`.\n")
print(f"skopeo 1.9 (containers/image) copies a {int(image) / 2**20:.1f} MiB image ({layers} + config) into a "
      "`dir:` destination, either straight from a docker-registry on loopback or through a dfdaemon "
      "(`[[registry.mirror]]`) that already holds every layer (warmed by one pull through it, "
      f"which took {float(cold):.2f} s cold). Repetitions interleaved, order alternating.\n")
print("| variant | seconds per repetition | median (s) | ÷ direct |")
print("|---|---|---|---|")
print(f"| straight from the registry | {', '.join(f'{x:.3f}' for x in direct)} | {md:.3f} | 1.00 |")
print(f"| through the warm dfdaemon | {', '.join(f'{x:.3f}' for x in mirror)} | {mm:.3f} | {mm / md:.3f} |")
print(f"\nBlob GETs the registry served during the warm mirror pulls: {gets} (0 = every blob came from the "
      f"dfdaemon's cache). dfdaemon peak RSS: {int(rss) / 1024:.1f} MiB.")
PY
cat "$RESULTS/mirror.md"
