#!/usr/bin/env bash
# Instructions per I/O of the NVMe queue pair's code (stage + submit + completion), callgrind
# against the device model on the host (see nvme_model_insn.cc). usage: run_model_insn.sh [IOS]
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.."
IOS=${1:-100000}
bazel build //bench/nvme:nvme_model_insn >/dev/null 2>&1 || bazel build //bench/nvme:nvme_model_insn
BIN=$(bazel info bazel-bin 2>/dev/null)/bench/nvme/nvme_model_insn
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for qd in 1 32; do
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$qd" --collect-atstart=no \
    --toggle-collect='*StageOne*' --toggle-collect='*SubmitStaged*' --toggle-collect='*PollIo*' \
    "$BIN" --ios="$IOS" --qd=$qd > "$OUT/out.$qd" 2> "$OUT/err.$qd"
  total=$(callgrind_annotate "$OUT/cg.$qd" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  printf 'QD %-3s %8.1f instructions per I/O (stage + submit + completion)\n' "$qd" \
    "$(awk -v t="$total" -v n="$IOS" 'BEGIN { print t / n }')"
  callgrind_annotate --inclusive=no "$OUT/cg.$qd" 2>/dev/null | grep -E 'nvme::|StageOne|PollIo|Submit' \
    | head -8 | awk -v n="$IOS" '{ gsub(",", "", $1); printf "    %7.1f  %s\n", $1 / n, $0 }' | cut -c1-140
done
