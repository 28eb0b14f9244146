#!/usr/bin/env bash
# Does the simulator predict the real swarm? For each scheduler setting, the netns swarm benchmark
# (symmetric: 8 hosts and the seed host at 100 Mbit/s up and down, one 96 MiB blob, Damselfly
# only) and the simulator with the same setting, side by side.
#
#   sudo bash benches/scripts/sim-vs-netns.sh              # ~15 min here
#   SIM_ARGS="--queue-ms 5" sudo bash benches/scripts/sim-vs-netns.sh
#
# The simulator's network parameters (SIM_ARGS) model what made the real swarm slow: a standing
# queue on every busy link that control messages wait in (--queue-ms), packet header and ACK
# overhead (--wire-efficiency) and a per-piece cost at the child (--piece-overhead-ms). The queue
# delay was fitted on the defaults row of the 2026-12-03 18:47 run (256 KiB pieces, window 12, link
# depth 2; 5 ms had fitted the defaults of 4cb543c); every other row is a prediction. Results:
# benches/results/sim-vs-netns.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the swarm benchmark"
build
MACHINE="$(machine_line)"
SIM_ARGS="${SIM_ARGS:---queue-ms 1 --wire-efficiency 0.94 --piece-overhead-ms 2}"
WORK="$(mktemp -d -t dfsimcal.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# label | [scheduler] TOML lines (\n-separated) | the same setting as sim flags
CONFIGS=(
    "defaults||"
    "window 2|window_per_peer = 2|--window 2"
    "window 4|window_per_peer = 4|--window 4"
    "window 8|window_per_peer = 8|--window 8"
    "window 16|window_per_peer = 16|--window 16"
    "uploads per peer 8|max_uploads_per_peer = 8|--max-uploads 8"
    "supernode uploads 16|max_supernode_uploads = 16|--sn-uploads 16"
    "supernode uploads 6|max_supernode_uploads = 6|--sn-uploads 6"
    "link depth 1|link_depth = 1|--link-depth 1"
)
ROWS=()
for entry in "${CONFIGS[@]}"; do
    IFS='|' read -r label toml flags <<<"$entry"
    slug="${label// /-}"
    printf '[scheduler]\n%b\n' "$toml" >"$WORK/$slug.toml"
    say "netns: $label"
    RESULTS_DIR="$WORK" NAME="$slug" SKIP_BUILD=1 bash "$(dirname "${BASH_SOURCE[0]}")/swarm-symmetric.sh" \
        --systems damselfly --image one96=96MiB@8 --supernode-config "$WORK/$slug.toml" >"$WORK/$slug.log" 2>&1 ||
        { tail -n 20 "$WORK/$slug.log" >&2; exit 1; }
    # First table row: | N | system | bound | p50÷bound | max÷bound | ... | background | ...
    read -r real_p50 real_max bg < <(awk -F'|' '/^\| 8 \| damselfly/ { print $5, $6, $11; exit }' "$WORK/$slug.md")
    say "sim: $label"
    # shellcheck disable=SC2086
    read -r sim_p50 sim_max < <("$BIN/sim" --hosts 8 --layers 96MiB --host-up 100mbit --host-down 100mbit \
        --sn-up 100mbit --sn-down 10gbit --origin-up 10gbit --rtt-ms 0.2 $SIM_ARGS $flags 2>/dev/null |
        awk -F'|' '/^\| 8 \|/ { print $6, $8; exit }')
    ROWS+=("| $label | $real_p50 | $real_max | $sim_p50 | $sim_max | $bg |")
done
{
    echo "# Simulator against the real swarm"
    echo
    echo "Measured $MACHINE. Command: \`sudo bash benches/scripts/sim-vs-netns.sh\`; simulator network model: \`$SIM_ARGS\` (queue delay fitted on the defaults row of the 2026-12-03 18:47 run; the other rows are predictions)."
    echo
    echo "Symmetric topology, 8 hosts and the seed host (origin + supernode) at 100 Mbit/s up and down, one 96 MiB blob pulled by every host at once; completion over the lower bound (8.05 s)."
    echo
    echo "| scheduler setting | netns p50 ÷ bound | netns max ÷ bound | simulated p50 ÷ bound | simulated max ÷ bound | background load during the netns run (cores) |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$RESULTS/sim-vs-netns.md"
cat "$RESULTS/sim-vs-netns.md"
