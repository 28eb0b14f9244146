#!/usr/bin/env bash
# Single-transfer ceiling on loopback (issue item 3): dfget of 1 GiB from one warm peer vs plain
# quinn vs plain TCP, same run, with peak RSS of the dfdaemons and the supernode.
#
#   bash benches/scripts/transfer.sh            # results in benches/results/transfer.md
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build
MACHINE="$(machine_line)"
say "transfer-bench $*"
"$BIN/transfer-bench" --out "$RESULTS/transfer.md.tmp" "$@"
{
    echo "# Single-transfer ceiling"
    echo
    echo "Measured $MACHINE. Command: \`bash benches/scripts/transfer.sh${*:+ $*}\`."
    echo
    cat "$RESULTS/transfer.md.tmp"
} >"$RESULTS/transfer.md"
rm -f "$RESULTS/transfer.md.tmp"
say "results in $RESULTS/transfer.md"
