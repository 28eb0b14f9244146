#!/usr/bin/env bash
# Smoke test of the benchmark harness, for CI: one command, a few minutes, small sizes.
#
#   sudo bash benches/scripts/smoke.sh
#
# Runs the simulator with 50 hosts, the transfer ceiling with 64 MiB, and the swarm harness with
# N=2 and a 3 MiB image for Damselfly and both baselines, then checks that each wrote its
# results. Exits non-zero only when the harness breaks (a step fails, a pull fails, a result is
# missing); slow numbers never fail it. Namespaces, processes and temp files are removed on exit.
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

say "swarm-bench: N=2"
"$BIN/swarm-bench" --prefix "$PREFIX" --hosts 2 --image tiny=2MiB,1MiB --host-up 100mbit --host-down 100mbit \
    --results "$OUT" --name smoke
for system in damselfly direct proxy; do
    check "swarm $system" "$OUT/smoke.md" "| 2 | $system |"
done
check "swarm chart" "$OUT/smoke-tiny.svg" "</svg>"

if ip netns list | grep -q "^$PREFIX"; then
    echo "FAILED  namespaces $PREFIX* left behind"
    FAILED=$((FAILED + 1))
fi
echo "smoke: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
