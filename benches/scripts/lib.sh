# shellcheck shell=bash
# Shared by the benchmark scripts. Source it, don't run it.
#
# Sets REPO (the repository root, current directory afterwards) and BIN (the release binaries),
# sources scripts/env.sh, and offers:
#   build                 cargo build --release --bins (the workspace binaries and the benchmarks)
#   netns_cleanup PREFIX  SIGKILLs every process in, and deletes, each namespace named PREFIX*
#                         (and removes swarm-bench's cgroup PREFIXcpu if left behind)
#   need_root WHAT        fails with a clear message unless running as root
#   bt_packages           installs aria2, opentracker and mktorrent when missing
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
# shellcheck source=../../scripts/env.sh
source scripts/env.sh
# BENCH_BIN_DIR overrides where the binaries are (CI's smoke run uses the debug build it already has).
BIN="${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
RESULTS="$REPO/benches/results"
mkdir -p "$RESULTS"

say() { echo "==== [$(date +%H:%M:%S)] $*" >&2; }

build() {
    if [[ "${SKIP_BUILD:-}" == 1 ]]; then
        return 0
    fi
    say "cargo build --release --bins"
    cargo build --release --bins
}

netns_cleanup() {
    local prefix="$1" ns pid
    [[ ${#prefix} -ge 3 ]] || return 0
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    # swarm-bench's CPU-accounting cgroup, if it was killed before removing it.
    local cg
    for cg in /sys/fs/cgroup/cpuacct/"${prefix}"cpu /sys/fs/cgroup/"${prefix}"cpu /sys/fs/cgroup/unified/"${prefix}"cpu; do
        if [[ -d "$cg" ]]; then rmdir "$cg" 2>/dev/null || true; fi
    done
}

need_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "$1 needs root (network namespaces, tc)" >&2
        exit 2
    fi
}

# machine_line: date, CPU, cores, memory and load, for the results files.
machine_line() {
    local cpu
    cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), ${cpu:-unknown CPU}, $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start, commit ${BENCH_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')}"
}

# bt_packages: installs Debian's aria2, opentracker and mktorrent (the BitTorrent baseline of the
# swarm benchmark) when missing. Fails if they are still missing afterwards.
bt_packages() {
    local missing=()
    command -v aria2c >/dev/null || missing+=(aria2)
    command -v opentracker >/dev/null || missing+=(opentracker)
    command -v mktorrent >/dev/null || missing+=(mktorrent)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } || true
    fi
    command -v aria2c >/dev/null && command -v opentracker >/dev/null && command -v mktorrent >/dev/null
}

# has FLAG ARGS...: whether FLAG (or FLAG=...) is among ARGS.
has() {
    local flag="$1" a
    shift
    for a in "$@"; do
        [[ "$a" == "$flag" || "$a" == "$flag="* ]] && return 0
    done
    return 1
}
