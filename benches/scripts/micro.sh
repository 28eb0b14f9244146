#!/usr/bin/env bash
# Micro-benchmarks of the hot paths (issue item 6): piece hashing, piece store write/read, one
# piece over QUIC; criterion, ~4 min.
#
#   bash benches/scripts/micro.sh               # results in benches/results/micro.md
#   bash benches/scripts/micro.sh quic_piece    # extra arguments filter the benchmarks
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MACHINE="$(machine_line)"
say "cargo bench -p damselfly-benches --bench hot_paths $*"
cargo bench -p damselfly-benches --bench hot_paths -- "$@"
CRITERION="${CARGO_TARGET_DIR:-$REPO/target}/criterion"
python3 - "$CRITERION" "$MACHINE" "$*" >"$RESULTS/micro.md" <<'PY'
import json, os, sys
root, machine, args = sys.argv[1], sys.argv[2], sys.argv[3]
suffix = " " + args if args else ""
rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
    est = json.load(open(os.path.join(dirpath, "estimates.json")))
    mean = est["mean"]
    ns, lo, hi = mean["point_estimate"], mean["confidence_interval"]["lower_bound"], mean["confidence_interval"]["upper_bound"]
    thr = bench.get("throughput") or {}
    nbytes = thr.get("Bytes") or thr.get("BytesDecimal")
    rate = f"{nbytes / ns:.2f}" if nbytes else "-"
    rows.append((bench["group_id"], bench.get("function_id") or "", bench.get("value_str") or "", ns, lo, hi, rate))
rows.sort(key=lambda r: (r[0], r[1], float(r[2]) if r[2].replace('.', '').isdigit() else 0))
print("# Micro-benchmarks of the hot paths\n")
print(f"Measured {machine}. Command: `bash benches/scripts/micro.sh{suffix}` (criterion; mean with 95% "
      "confidence interval; GB/s = bytes per nanosecond).\n")
print("| group | benchmark | MiB | mean | 95% CI | GB/s |")
print("|---|---|---|---|---|---|")
fmt = lambda ns: f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.2f} µs"
for g, f, v, ns, lo, hi, rate in rows:
    print(f"| {g} | {f} | {v} | {fmt(ns)} | {fmt(lo)} – {fmt(hi)} | {rate} |")
PY
say "results in $RESULTS/micro.md"
