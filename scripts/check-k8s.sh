#!/usr/bin/env bash
# Checks deploy/kubernetes without a cluster (scripts/test.sh runs it as the "k8s manifests" step):
#
#   bash scripts/check-k8s.sh
#
# 1. renders it with `kubectl kustomize` (on a copy whose secrets/ holds placeholders: the real
#    files are the operator's, made by deploy/kubernetes/make-secrets.sh and never committed);
# 2. validates every rendered object against the Kubernetes OpenAPI schemas with
#    `kubernetes-validate --strict` (PyPI; installed with pip when missing), for the oldest and
#    the newest Kubernetes versions we support (unknown fields and wrong types fail);
# 3. checks what the schemas cannot: the images are the ones scripts/build-images.sh builds,
#    at the workspace version, every dfdaemon names every supernode replica, and the engine
#    config files parse as TOML;
# 4. runs the dfdaemon init step (deploy/kubernetes/node-setup.sh) twice against a scratch
#    "host": it writes the engine config and owns the data dir, the second run changes nothing,
#    and a file it did not write is left alone.
#
# Skips (exit 0, with a message) only when kubectl is not installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Kubernetes versions the manifests must validate against: oldest supported, newest known.
K8S_VERSIONS=(1.28.0 1.37.0)
VALIDATE_PACKAGE="kubernetes-validate==1.37.0"

say() {
    echo "check-k8s: $*"
}

if ! command -v kubectl >/dev/null; then
    say "SKIPPED: kubectl not found (install kubectl with kustomize, v1.27 or newer, to render deploy/kubernetes)"
    exit 0
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    say "installing $VALIDATE_PACKAGE with pip"
    python3 -m pip install --quiet --disable-pip-version-check "$VALIDATE_PACKAGE"
fi

WORK="$(mktemp -d -t damselfly-k8s.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# --- 1. render ------------------------------------------------------------------------------
cp -r deploy/kubernetes "$WORK/kubernetes"
for f in ca.crt ca.key join-token api-token; do
    echo "placeholder written by scripts/check-k8s.sh" >"$WORK/kubernetes/secrets/$f"
done
kubectl kustomize "$WORK/kubernetes" >"$WORK/rendered.yaml"
say "rendered $(grep -c '^kind:' "$WORK/rendered.yaml") objects: $(grep '^kind:' "$WORK/rendered.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"

# --- 2. schemas -----------------------------------------------------------------------------
for version in "${K8S_VERSIONS[@]}"; do
    python3 -m kubernetes_validate --strict --quiet --kubernetes-version "$version" "$WORK/rendered.yaml"
    say "every object valid (--strict) against Kubernetes $version"
done

# --- 3. consistency -------------------------------------------------------------------------
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
python3 - "$WORK/rendered.yaml" "$VERSION" deploy/kubernetes <<'EOF'
import os, re, sys, tomllib, yaml

rendered, version, src = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
errors = []

def pod_containers(obj):
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]

# Images: exactly the two scripts/build-images.sh builds, at the workspace version.
# (A registry prefix, as `kustomize edit set image` writes it, is fine.)
built = {f"damselfly/{n}:{version}" for n in ("supernode", "dfdaemon")}
for kind in ("StatefulSet", "DaemonSet"):
    for obj in by_kind.get(kind, []):
        for c in pod_containers(obj):
            if not any(c["image"] == b or c["image"].endswith("/" + b) for b in built):
                errors.append(f"{kind}/{obj['metadata']['name']} container {c['name']}: image {c['image']} "
                              f"is not one scripts/build-images.sh builds ({', '.join(sorted(built))})")
for name in ("supernode", "dfdaemon"):
    if not os.path.isfile(f"deploy/images/{name}.Dockerfile"):
        errors.append(f"deploy/images/{name}.Dockerfile missing")

# Every daemon lists every supernode replica, by its stable DNS name.
(sts,) = by_kind["StatefulSet"]
(svc,) = [s for s in by_kind["Service"] if s["metadata"]["name"] == sts["spec"]["serviceName"]]
if svc["spec"].get("clusterIP") != "None":
    errors.append(f"Service {svc['metadata']['name']} must be headless (clusterIP: None)")
ns = sts["metadata"]["namespace"]
want = [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc:8002"
        for i in range(sts["spec"]["replicas"])]
(ds,) = by_kind["DaemonSet"]
(daemon,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "dfdaemon"]
got = [a.split("=", 1)[1] for a in daemon["args"] if a.startswith("--supernode=")]
if got != want:
    errors.append(f"dfdaemon --supernode {got} != the StatefulSet's replicas {want}")

# Trust and access: the secrets each side mounts.
def secret_names(obj):
    return {v["secret"]["secretName"].rsplit("-", 1)[0]
            for v in obj["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
if secret_names(sts) != {"damselfly-ca", "damselfly-join-token", "damselfly-api-token"}:
    errors.append(f"supernode mounts secrets {secret_names(sts)}")
if secret_names(ds) != {"damselfly-join-token"}:
    errors.append(f"dfdaemon must mount only the join token, mounts {secret_names(ds)}")

# Engine config files parse.
for f in sorted(os.listdir(src)):
    if f.endswith(".toml") or f.endswith(".conf"):
        try:
            tomllib.load(open(os.path.join(src, f), "rb"))
        except Exception as e:
            errors.append(f"{src}/{f}: not valid TOML: {e}")

if errors:
    print("check-k8s: FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"check-k8s: images {', '.join(sorted(built))}; {len(want)} supernode replicas, all named by the "
      f"dfdaemon; secrets as per Trust and access; engine config files parse")
EOF

# --- 4. the init step -----------------------------------------------------------------------
# With the host's sh, and as in the image: busybox's sh with nothing else on PATH.
SHELLS=("sh")
if [[ -x /bin/busybox ]]; then
    SHELLS+=("/bin/busybox sh")
fi
fail() {
    say "FAILED: node-setup.sh: $*"
    exit 1
}
for shell in "${SHELLS[@]}"; do
    HOST="$WORK/host-${shell//[^a-z]/}"
    HOSTS_SRC="$HOST-hosts"
    mkdir -p "$HOSTS_SRC"
    for registry in docker.io registry.example.com__5000 mine.example.com; do
        cp deploy/kubernetes/hosts-docker.io.toml "$HOSTS_SRC/$registry"
    done
    # Files the operator wrote: one for a registry the ConfigMap also names, one for another.
    for registry in mine.example.com other.example.com; do
        mkdir -p "$HOST/etc/containerd/certs.d/$registry"
        echo "server = \"https://$registry\"  # the operator's own" \
            >"$HOST/etc/containerd/certs.d/$registry/hosts.toml"
    done
    run_setup() {
        local path="$PATH"
        if [[ "$shell" == */busybox* ]]; then
            path=/var/empty
        fi
        # shellcheck disable=SC2086 # $shell is a command and its argument
        env -i PATH="$path" CONTAINERD_HOSTS="$HOSTS_SRC" CONTAINERD_CERTS_D="$HOST/etc/containerd/certs.d" \
            CRIO_CONF="$PWD/deploy/kubernetes/crio-damselfly.conf" \
            REGISTRIES_CONF_D="$HOST/etc/containers/registries.conf.d" \
            DATA_DIR="$HOST/var/lib/damselfly/dfdaemon" DATA_UID="$(id -u)" \
            $shell deploy/kubernetes/node-setup.sh 2>&1
    }
    first="$(run_setup)" || fail "($shell) exited non-zero: $first"
    for f in docker.io/hosts.toml registry.example.com:5000/hosts.toml; do
        grep -q 'capabilities = \["pull", "resolve"\]' "$HOST/etc/containerd/certs.d/$f" ||
            fail "($shell) no mirror in $f: $first"
    done
    grep -q '127.0.0.1:65001' "$HOST/etc/containers/registries.conf.d/damselfly.conf" ||
        fail "($shell) no CRI-O drop-in: $first"
    [[ "$(stat -c '%u %a' "$HOST/var/lib/damselfly/dfdaemon")" == "$(id -u) 750" ]] ||
        fail "($shell) data dir owner/mode: $first"
    grep -q "operator's own" "$HOST/etc/containerd/certs.d/mine.example.com/hosts.toml" ||
        fail "($shell) overwrote a file it did not write: $first"
    grep -q 'mine.example.com/hosts.toml exists and was not written by Damselfly' <<<"$first" ||
        fail "($shell) no warning about the file it left alone: $first"
    second="$(run_setup)" || fail "($shell) second run exited non-zero: $second"
    if grep -q 'wrote\|removed\|now owned' <<<"$second"; then
        fail "($shell) second run changed files: $second"
    fi
    rm "$HOSTS_SRC/registry.example.com__5000"
    third="$(run_setup)" || fail "($shell) third run exited non-zero: $third"
    [[ ! -e "$HOST/etc/containerd/certs.d/registry.example.com:5000" ]] ||
        fail "($shell) kept the config of a registry no longer listed: $third"
    grep -q "operator's own" "$HOST/etc/containerd/certs.d/other.example.com/hosts.toml" ||
        fail "($shell) removed a file it did not write: $third"
    say "node-setup.sh ($shell): writes containerd hosts.toml and the CRI-O drop-in, owns the data dir," \
        "changes nothing when run again, leaves others' files alone, removes dropped registries"
done
say "ok"
