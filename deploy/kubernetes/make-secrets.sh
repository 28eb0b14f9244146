#!/usr/bin/env bash
# Creates the cluster's secrets for deploy/kubernetes: kustomization.yaml's secretGenerator reads
# them from deploy/kubernetes/secrets/ (git ignores that directory; keep the files somewhere safe,
# a lost CA means re-enrolling every daemon).
#
#   bash deploy/kubernetes/make-secrets.sh [--supernode BIN | --image IMAGE] [--out DIR] [--force]
#
#   ca.crt, ca.key  the cluster CA (ECDSA P-256, 10 years; the key as PKCS#8 PEM), shared by
#                   every supernode replica (`--ca-cert/--ca-key`), which sign the daemons'
#                   certificates with it
#   api-token       the bearer token of the supernodes' HTTP API (`--api-token-file`): 256 random
#                   bits, hex. `dfget preheat --token-file`, Harbor and the status page use it.
#   join-token      the token daemons enroll with (`--join-token-file`). It carries the CA
#                   certificate's hash, in the supernode's format, so the supernode makes it: this
#                   script starts one once on loopback with the new CA and a scratch data dir and
#                   takes the DATA_DIR/join-token it writes on first start (ARCHITECTURE.md,
#                   "Trust and access").
#
# Options:
#   --supernode BIN  the supernode binary (default: `supernode` on PATH, else target/release/supernode)
#   --image IMAGE    run the supernode from its image with docker instead (e.g.
#                    damselfly/supernode:0.1.0, as scripts/build-images.sh builds it)
#   --out DIR        where to write (default: deploy/kubernetes/secrets)
#   --force          replace existing files (a new CA and join token: every daemon must get the
#                    new token, and re-enrolls)
#
# Then `kubectl apply -k deploy/kubernetes`. Rotating only the API token: write a new
# secrets/api-token (`openssl rand -hex 32 | tr -d '\n' > secrets/api-token`) and apply again;
# the generated Secret's name changes with its content, so the supernodes roll onto it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/secrets"
SUPERNODE=""
IMAGE=""
FORCE=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --supernode) SUPERNODE="$2"; shift 2 ;;
        --image) IMAGE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "make-secrets: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() {
    echo "make-secrets: $*" >&2
    exit 1
}

command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
if [[ -z "$IMAGE" && -z "$SUPERNODE" ]]; then
    SUPERNODE="$(command -v supernode || echo "$HERE/../../target/release/supernode")"
fi
if [[ -z "$IMAGE" && ! -x "$SUPERNODE" ]]; then
    die "no supernode binary at $SUPERNODE: build it (cargo build --release --bin supernode), or give --supernode BIN or --image IMAGE"
fi

mkdir -p "$OUT"
for f in ca.crt ca.key api-token join-token; do
    if [[ -e "$OUT/$f" && "$FORCE" -ne 1 ]]; then
        die "$OUT/$f exists: keep it, or replace all with --force (a new CA re-enrolls every daemon)"
    fi
done
umask 077
WORK="$(mktemp -d -t damselfly-secrets.XXXXXX)"
SUPERNODE_PID=""
cleanup() {
    if [[ -n "$SUPERNODE_PID" ]]; then
        kill "$SUPERNODE_PID" 2>/dev/null || true
        wait "$SUPERNODE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The cluster CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=Damselfly cluster CA" -keyout "$WORK/ca.sec1.key" -out "$WORK/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$WORK/ca.sec1.key" -out "$WORK/ca.key"

# The API token: an opaque secret.
openssl rand -hex 32 | tr -d '\n' >"$WORK/api-token"

# The join token, made by a supernode holding the new CA.
mkdir -p "$WORK/run/data"
cp "$WORK/ca.crt" "$WORK/ca.key" "$WORK/run/"
args=(--quic-listen 127.0.0.1:0 --http-listen 127.0.0.1:0)
if [[ -n "$IMAGE" ]]; then
    # The image's user (65532) must own what it reads and writes.
    chown -R 65532:65532 "$WORK/run"
    docker run --rm --network none --volume "$WORK/run:/run-secrets" --entrypoint /usr/local/bin/supernode \
        "$IMAGE" "${args[@]}" --data-dir /run-secrets/data \
        --ca-cert /run-secrets/ca.crt --ca-key /run-secrets/ca.key >"$WORK/supernode.log" 2>&1 &
else
    NO_COLOR=1 "$SUPERNODE" "${args[@]}" --data-dir "$WORK/run/data" --ca-cert "$WORK/run/ca.crt" --ca-key "$WORK/run/ca.key" \
        >"$WORK/supernode.log" 2>&1 &
fi
SUPERNODE_PID=$!
for _ in $(seq 1 100); do
    [[ -s "$WORK/run/data/join-token" ]] && break
    kill -0 "$SUPERNODE_PID" 2>/dev/null || break
    sleep 0.2
done
if [[ ! -s "$WORK/run/data/join-token" ]]; then
    tail -n 20 "$WORK/supernode.log" >&2
    die "the supernode wrote no DATA_DIR/join-token within 20 s (its log above): a supernode older than join tokens (ARCHITECTURE.md, \"Trust and access\") cannot make one"
fi
cp "$WORK/run/data/join-token" "$WORK/join-token"

for f in ca.crt ca.key api-token join-token; do
    install -m 0600 "$WORK/$f" "$OUT/$f"
done
echo "make-secrets: wrote ca.crt, ca.key, api-token, join-token to $OUT"
echo "make-secrets: next: kubectl apply -k $HERE"
