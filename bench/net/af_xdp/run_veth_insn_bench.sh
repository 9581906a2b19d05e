#!/bin/bash
# AfXdpPort's instructions per packet on a real AF_XDP socket (veth, copy mode, native XDP), a
# cross-check of bench/net/run_insn_bench.sh's rings-in-memory figure: af_xdp_veth_insn_bench
# under callgrind (collection only inside RxBurst / TxBurst), udp_blast sending unpaced on the
# veth peer for RX. User space only, as there. Root: creates a network namespace of its own
# with a veth pair in it and deletes it on exit.
#   sudo bench/net/af_xdp/run_veth_insn_bench.sh        env: ROUNDS (default 40)
set -euo pipefail
REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
ROUNDS=${ROUNDS:-40}
cd "$REPO"
bazel build --jobs=3 //bench/net/af_xdp:af_xdp_veth_insn_bench //bench/net:udp_blast >&2
work=$(mktemp -d)
NS=vfb-afxdp-insn-$$
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp bazel-bin/bench/net/af_xdp/af_xdp_veth_insn_bench bazel-bin/bench/net/udp_blast "$work/"
ip netns add "$NS"
ip -n "$NS" link add v0 address 02:00:00:77:00:01 type veth peer name v1 address 02:00:00:77:00:02
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link set v0 up
ip -n "$NS" link set v1 up

run() {  # mode
  local log=$work/$1.log
  ip netns exec "$NS" valgrind --tool=callgrind --collect-atstart=no \
    --callgrind-out-file="$work/cg.$1" "$work/af_xdp_veth_insn_bench" --mode="$1" \
    --interface=v0 --rounds="$ROUNDS" > "$log" 2>&1 || { cat "$log" >&2; return 1; }
  local ir pk
  ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log")
  pk=$(sed -n 's/.*: \([0-9]*\) packets.*/\1/p' "$log")
  echo "$1: $(grep -h '^af_xdp_veth_insn_bench' "$log"); Ir $ir: $(awk -v a="$ir" -v b="$pk" 'BEGIN { printf "%.1f", a / b }') per packet"
}
# RX: the sender runs throughout; the bench drains the ring after each fill period.
ip netns exec "$NS" "$work/udp_blast" --interface=v1 --dst_mac=02:00:00:77:00:01 \
  --src_ip=10.77.9.2 --dst_ip=10.77.9.1 --rate=0 --seconds=600 > "$work/blast.log" 2>&1 &
blast=$!
sleep 1
run rx
kill "$blast" 2>/dev/null; wait "$blast" 2>/dev/null || true
run tx
