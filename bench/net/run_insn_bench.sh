#!/bin/bash
# Instructions per packet of every net::Port driver's fast path at burst 32, in one table:
# AfXdpPort (rings + UMEM in plain memory, the bench playing copy-mode kernel), igbvf and
# ixgbevf (register-level device models), and virtio-net when bench/net/virtio_net has its
# virtio_net_insn_bench. Each mode of each bench runs under callgrind with collection only
# inside the driver's RxBurst / TxBurst calls (CALLGRIND_TOGGLE_COLLECT); Ir/packet = callgrind's
# "Collected" / the packet count the bench prints. User space only: for AF_XDP the kernel's
# copy, XDP program and transmit (one sendto() per burst in copy mode) are not counted; for the
# VF drivers each tail write is a plain store to the model (an uncached MMIO store on hardware).
#
#   bench/net/run_insn_bench.sh          (from anywhere; builds what it runs; valgrind needed)
#   env: ITERS  bursts per run after 50 warm-up bursts (default 2000: 64,000 packets)
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
ITERS=${ITERS:-2000}
cd "$REPO"
command -v valgrind >/dev/null || { echo "run_insn_bench: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

drivers=(af_xdp igbvf ixgbevf)
labels=("AF_XDP (AfXdpPort, copy-mode rings)" "igbvf (82576 VF)" "ixgbevf (82599 VF)")
targets=(//bench/net/af_xdp:af_xdp_insn_bench //bench/net/igbvf:igbvf_insn_bench
         //bench/net/ixgbevf:ixgbevf_insn_bench)
if [[ -f bench/net/virtio_net/BUILD.bazel ]] && grep -q '"virtio_net_insn_bench"' bench/net/virtio_net/BUILD.bazel; then
  drivers+=(virtio_net); labels+=("virtio-net"); targets+=(//bench/net/virtio_net:virtio_net_insn_bench)
fi
bazel build --jobs=3 "${targets[@]}" >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Private copies: other builds in the workspace may replace bazel-bin meanwhile.
for d in "${drivers[@]}"; do cp "bazel-bin/bench/net/$d/${d}_insn_bench" "$out/"; done

declare -A per
printf '%-10s %-6s %10s %8s %8s\n' driver mode Ir packets Ir/pkt >&2
for d in "${drivers[@]}"; do
  for mode in rx tx echo; do
    log="$out/$d.$mode.log"
    valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file="$out/cg.$d.$mode" \
      "$out/${d}_insn_bench" "$mode" "$ITERS" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log")
    pk=$(sed -n 's/.*: \([0-9]*\) packets.*/\1/p' "$log")
    per[$d.$mode]=$(awk -v a="$ir" -v b="$pk" 'BEGIN { printf "%.1f", a / b }')
    printf '%-10s %-6s %10s %8s %8s\n' "$d" "$mode" "$ir" "$pk" "${per[$d.$mode]}" >&2
  done
done

echo
echo "Instructions per packet at burst 32, user space, callgrind ($(date -u +%F), tree $(git rev-parse --short HEAD))"
echo
echo "| driver | RxBurst incl. refill | TxBurst incl. reclaim | echo (RX + TX) | echo vs AF_XDP |"
echo "|---|---:|---:|---:|---:|"
for i in "${!drivers[@]}"; do
  d=${drivers[$i]}
  ratio=$(awk -v a="${per[$d.echo]}" -v b="${per[af_xdp.echo]}" 'BEGIN { printf "%.2fx", a / b }')
  echo "| ${labels[$i]} | ${per[$d.rx]} | ${per[$d.tx]} | ${per[$d.echo]} | $ratio |"
done
