#!/usr/bin/env bash
# Smoke test of the benchmark harness, for CI: one command, a few minutes, small sizes.
#
#   sudo bash benches/scripts/smoke.sh
#
# Runs the simulator with 50 hosts, the transfer ceiling with 64 MiB, and the swarm harness with
# N=2 and a 3 MiB image for Damselfly and the baselines (direct, pull-through cache, BitTorrent),
# in the split topology and in the symmetric one (one seed host), then checks that each wrote its
# results. Exits non-zero only when the harness breaks (a step fails, a pull fails, a result is
# missing); slow numbers never fail it. BitTorrent is skipped (and counted as skipped) when aria2,
# opentracker and mktorrent cannot be installed. Namespaces, processes and temp files are removed
# on exit.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the smoke test"
PREFIX="dfsmk$$-"
OUT="$(mktemp -d -t dfbench-smoke.XXXXXX)"
trap 'rc=$?; trap - EXIT; netns_cleanup "$PREFIX"; rm -rf "$OUT"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh >&2
build

PASSED=0
FAILED=0
SKIPPED=0
check() {
    local name="$1" file="$2" pattern="$3"
    if [[ -s "$file" ]] && grep -q -- "$pattern" "$file"; then
        echo "ok      $name"
        PASSED=$((PASSED + 1))
    else
        echo "FAILED  $name: $file has no '$pattern'"
        FAILED=$((FAILED + 1))
    fi
}

say "sim: 50 hosts"
"$BIN/sim" --hosts 50 --layers 8MiB,2MiB --host-up 1gbit --host-down 1gbit --out "$OUT/sim.md" >/dev/null
check "simulator" "$OUT/sim.md" "| 50 |"

say "transfer-bench: 64 MiB"
"$BIN/transfer-bench" --size 64MiB --reps 1 --streams 2 --out "$OUT/transfer.md" >/dev/null
check "transfer ceiling" "$OUT/transfer.md" "dfget from a warm peer"

SYSTEMS=damselfly,direct,proxy
if bt_packages; then
    SYSTEMS+=",bittorrent"
else
    echo "skipped swarm bittorrent: aria2, opentracker or mktorrent missing"
    SKIPPED=$((SKIPPED + 2))
fi

say "swarm-bench: N=2, split topology, $SYSTEMS"
"$BIN/swarm-bench" --prefix "$PREFIX" --hosts 2 --image tiny=2MiB,1MiB --host-up 100mbit --host-down 100mbit \
    --systems "$SYSTEMS" --results "$OUT" --name smoke
for system in ${SYSTEMS//,/ }; do
    check "swarm $system" "$OUT/smoke.md" "| 2 | $system |"
done
check "swarm chart" "$OUT/smoke-tiny.svg" "</svg>"

SYM="${SYSTEMS/direct,/}"
say "swarm-bench: N=2, symmetric topology (one seed host), $SYM"
"$BIN/swarm-bench" --prefix "$PREFIX" --hosts 2 --image tiny=2MiB,1MiB --topology symmetric --host-up 100mbit \
    --host-down 100mbit --sn-rate 100mbit --systems "$SYM" --results "$OUT" --name smoke-sym
for system in ${SYM//,/ }; do
    check "swarm symmetric $system" "$OUT/smoke-sym.md" "| 2 | $system |"
done
check "swarm symmetric CPU metric" "$OUT/smoke-sym.json" '"machine_cpu"'

if ip netns list | grep -q "^$PREFIX"; then
    echo "FAILED  namespaces $PREFIX* left behind"
    FAILED=$((FAILED + 1))
fi
echo "smoke: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[[ $FAILED -eq 0 ]]
