#!/usr/bin/env bash
# Fault suite: real process faults during a pull of several layers by several hosts, each host a
# network namespace capped with tbf. One command:
#
#   sudo bash benches/scripts/fault-suite.sh            # every case (~3 min), table in benches/results/faults.md
#   sudo bash benches/scripts/fault-suite.sh --cases ci # the short subset CI runs
#
# Uses the debug binaries (`cargo build --bins`; the faults, not the speed, are under test);
# BENCH_BIN_DIR=target/release uses release ones. Exits non-zero when a pull delivered a wrong
# byte or failed without a clear error. Extra arguments go to `fault-suite` (`--help`).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "the fault suite"
BIN="${BENCH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}"
PREFIX="dff$$-"
trap 'rc=$?; trap - EXIT; netns_cleanup "$PREFIX"; exit $rc' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh >&2
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    say "cargo build --bins"
    cargo build --bins
fi
OUT="$RESULTS/faults.md"
for arg in "$@"; do
    [[ "$arg" == ci ]] && OUT="$(mktemp -t dffaults-ci.XXXXXX.md)"
done
say "fault suite"
"$BIN/fault-suite" --prefix "$PREFIX" --out "$OUT" "$@"
{ echo; echo "Machine: $(machine_line)."; echo; echo "Command: \`sudo bash benches/scripts/fault-suite.sh $*\`"; } >>"$OUT"
say "table written to $OUT"
