#!/usr/bin/env bash
# Simulation toward internet scale (issue item 5): the supernode's real scheduler with 1,000 and
# 10,000 simulated hosts.
#
#   bash benches/scripts/sim.sh                 # results in benches/results/sim.md
#   bash benches/scripts/sim.sh --hosts 100     # extra arguments go to the sim binary
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
MACHINE="$(machine_line)"
say "sim $*"
"$BIN/sim" --out "$RESULTS/sim.md.tmp" --json "$RESULTS/sim.json" "$@"
{
    echo "# Simulation: the supernode's scheduler with thousands of hosts"
    echo
    echo "Measured $MACHINE. Command: \`bash benches/scripts/sim.sh${*:+ $*}\`."
    echo
    cat "$RESULTS/sim.md.tmp"
} >"$RESULTS/sim.md"
rm -f "$RESULTS/sim.md.tmp"
say "results in $RESULTS/sim.md"
