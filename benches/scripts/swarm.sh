#!/usr/bin/env bash
# Swarm benchmark (issue items 1, 2 and the chart of 7): N hosts as network namespaces with tbf
# caps pull one image at once, with Damselfly and both baselines, N = 2, 4, 8, 16, two images.
# (`--systems damselfly,direct,proxy,bittorrent` adds BitTorrent; `--topology symmetric` puts
# origin and supernode on one host: see swarm-symmetric.sh for that comparison.)
#
#   sudo bash benches/scripts/swarm.sh                    # full sweep, ~12 min here
#   sudo bash benches/scripts/swarm.sh --hosts 2,4 --image small=8MiB,4MiB
#
# Extra arguments go to swarm-bench (see `target/release/swarm-bench --help`). Results:
# benches/results/swarm.md, swarm.json, swarm-<image>.svg (RESULTS_DIR and NAME override the
# directory and the file stem, e.g. for experiments). Namespaces and processes are removed on
# exit, however it exits.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the swarm benchmark"
PREFIX="dfsw$$-"
trap 'rc=$?; trap - EXIT; netns_cleanup "$PREFIX"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh >&2
build
MACHINE="$(machine_line)"
RESULTS="${RESULTS_DIR:-$RESULTS}"
NAME="${NAME:-swarm}"
say "swarm-bench $*"
"$BIN/swarm-bench" --prefix "$PREFIX" --results "$RESULTS" --name "$NAME" --machine "$MACHINE" "$@"
sed -i "1a\\
\\
Measured $MACHINE. Command: \`sudo bash benches/scripts/swarm.sh${*:+ $*}\`." "$RESULTS/$NAME.md"
say "results in $RESULTS/$NAME.md"
