#!/bin/bash
# Instructions per packet, ixgbevf beside igbvf, burst 32, each mode under callgrind.
#   bench/net/ixgbevf/run_insn_bench.sh            (from the repository root)
set -euo pipefail
bazel build --jobs=3 //bench/net/ixgbevf:ixgbevf_insn_bench //bench/net/igbvf:igbvf_insn_bench >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-8s %-6s %10s %10s %8s\n' driver mode Ir packets Ir/pkt
for drv in ixgbevf igbvf; do
  for mode in rx tx echo; do
    log="$out/$drv.$mode.log"
    valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out/cg.$drv.$mode" \
      "bazel-bin/bench/net/$drv/${drv}_insn_bench" "$mode" >"$log" 2>&1
    ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log")
    pk=$(sed -n 's/.*: \([0-9]*\) packets.*/\1/p' "$log")
    printf '%-8s %-6s %10s %10s %8.1f\n' "$drv" "$mode" "$ir" "$pk" "$(echo "$ir / $pk" | bc -l)"
  done
done
