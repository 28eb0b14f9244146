#!/usr/bin/env bash
# Rate limits in the swarm: the symmetric topology of swarm-symmetric.sh (origin, supernode and
# tracker on ONE seed host capped like every other host, 100 Mbit/s up and down everywhere),
# N=8 hosts pulling a 96 MiB blob at once, with host 0's daemon limited to --download-rate and
# host 1's to --upload-rate (defaults 4MiB and 2MiB, both well under the 100 Mbit/s links). The
# report compares each limited host's measured rates with its limit ("Rate-limited hosts")
# and shows that the swarm still completes (p50 and max against the bound).
#
#   sudo bash benches/scripts/rate-limit.sh                    # ~2 min here
#   DOWN=8MiB UP=3MiB sudo -E bash benches/scripts/rate-limit.sh --hosts 8 --image one=192MiB
#
# Extra arguments go to swarm-bench and replace this script's defaults. Results:
# benches/results/rate-limit.md and .json (RESULTS_DIR and NAME override).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the rate-limit benchmark"
PREFIX="dfrl$$-"
WORK="$(mktemp -d)"
trap 'rc=$?; trap - EXIT; netns_cleanup "$PREFIX"; rm -rf "$WORK"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh >&2
build
MACHINE="$(machine_line)"
RESULTS="${RESULTS_DIR:-$RESULTS}"
NAME="${NAME:-rate-limit}"
DOWN="${DOWN:-4MiB}"
UP="${UP:-2MiB}"
echo "download_rate = \"$DOWN\"" >"$WORK/down.toml"
echo "upload_rate = \"$UP\"" >"$WORK/up.toml"

DEFAULTS=()
has --topology "$@" || DEFAULTS+=(--topology symmetric)
has --host-up "$@" || DEFAULTS+=(--host-up 100mbit)
has --host-down "$@" || DEFAULTS+=(--host-down 100mbit)
has --sn-rate "$@" || DEFAULTS+=(--sn-rate 100mbit)
has --systems "$@" || DEFAULTS+=(--systems damselfly)
has --quiet-below "$@" || DEFAULTS+=(--quiet-below 0.5)
has --image "$@" || DEFAULTS+=(--image one96=96MiB@8)

say "swarm-bench ${DEFAULTS[*]} --limited 0=(download_rate $DOWN) --limited 1=(upload_rate $UP) $*"
"$BIN/swarm-bench" --prefix "$PREFIX" --results "$RESULTS" --name "$NAME" --machine "$MACHINE" \
    --limited "0=$WORK/down.toml" --limited "1=$WORK/up.toml" "${DEFAULTS[@]}" "$@"
sed -i "1a\\
\\
Measured $MACHINE. Command: \`sudo DOWN=$DOWN UP=$UP bash benches/scripts/rate-limit.sh${*:+ $*}\` (runs \`swarm-bench ${DEFAULTS[*]}${*:+ $*}\` with host 0 at \`download_rate = \"$DOWN\"\` and host 1 at \`upload_rate = \"$UP\"\`)." "$RESULTS/$NAME.md"
say "results in $RESULTS/$NAME.md"
