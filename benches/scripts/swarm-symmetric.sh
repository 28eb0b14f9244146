#!/usr/bin/env bash
# The "Swarm speed" headline comparison in one command: the SYMMETRIC topology (origin registry,
# supernode, BitTorrent tracker and seeder on ONE seed host, capped like every other host), every
# host 100 Mbit/s up and down, the seed host 100 Mbit/s; N=8 hosts pulling an image of one 96 MiB
# blob and N=16 hosts pulling a 128 MiB image (64+32+16+16 MiB); Damselfly against BitTorrent
# (aria2c + opentracker) and against every host pulling straight from the origin.
#
#   sudo bash benches/scripts/swarm-symmetric.sh                        # ~6.5 min here
#   sudo bash benches/scripts/swarm-symmetric.sh --hosts 4,8            # both images at N=4 and 8
#   sudo bash benches/scripts/swarm-symmetric.sh --image one=64MiB@4,8  # your own image(s)
#   sudo bash benches/scripts/swarm-symmetric.sh --systems damselfly,bittorrent
#
# Extra arguments go to swarm-bench (`target/release/swarm-bench --help`); a flag given here
# replaces this script's default for it (--topology, --host-up, --host-down, --sn-rate,
# --systems, --quiet-below; --image replaces both images; --hosts runs both images at those
# N). Results: benches/results/swarm-symmetric.md, .json and one SVG per image (RESULTS_DIR and
# NAME override the directory and the file stem). Namespaces and processes are removed on exit,
# however it exits.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the swarm benchmark"
PREFIX="dfsy$$-"
trap 'rc=$?; trap - EXIT; netns_cleanup "$PREFIX"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh >&2
bt_packages || { echo "aria2, opentracker and mktorrent are needed (apt-get install aria2 opentracker mktorrent)" >&2; exit 1; }
build
MACHINE="$(machine_line)"
RESULTS="${RESULTS_DIR:-$RESULTS}"
NAME="${NAME:-swarm-symmetric}"

DEFAULTS=()
has --topology "$@" || has --colocate "$@" || DEFAULTS+=(--topology symmetric)
has --host-up "$@" || DEFAULTS+=(--host-up 100mbit)
has --host-down "$@" || DEFAULTS+=(--host-down 100mbit)
has --sn-rate "$@" || DEFAULTS+=(--sn-rate 100mbit)
has --systems "$@" || DEFAULTS+=(--systems "damselfly,bittorrent,direct")
# The machine may be shared: before each run wait (at most 60 s) for other work to drop below
# half a core.
has --quiet-below "$@" || DEFAULTS+=(--quiet-below 0.5)
if ! has --image "$@"; then
    if has --hosts "$@"; then
        DEFAULTS+=(--image one96=96MiB --image "large128=64MiB,32MiB,16MiB,16MiB")
    else
        DEFAULTS+=(--image one96=96MiB@8 --image "large128=64MiB,32MiB,16MiB,16MiB@16")
    fi
fi

say "swarm-bench ${DEFAULTS[*]} $*"
"$BIN/swarm-bench" --prefix "$PREFIX" --results "$RESULTS" --name "$NAME" --machine "$MACHINE" \
    "${DEFAULTS[@]}" "$@"
sed -i "1a\\
\\
Measured $MACHINE. Command: \`sudo bash benches/scripts/swarm-symmetric.sh${*:+ $*}\` (runs \`swarm-bench ${DEFAULTS[*]}${*:+ $*}\`)." "$RESULTS/$NAME.md"
say "results in $RESULTS/$NAME.md"
