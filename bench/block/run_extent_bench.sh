#!/usr/bin/env bash
# 4 KiB random reads at QD32 on one CPU, on an extent granted by a real vfbrokerd:
#   - our IoUringQueue and fio (io_uring default, io_uring tuned, psync) on the *same* extent
#     device, held by a tenant (vfctl allocate-extent --hold) for the whole run
#     (run_block_bench.sh does the rounds and the table);
#   - our IoUringQueue once more on the descriptor libvfclient received from the broker.
# Root required (the broker creates loop devices). Environment as run_block_bench.sh
# (RUNTIME, REPEAT, CPU, QD).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNTIME=${RUNTIME:-10}
CPU=${CPU:-1}
QD=${QD:-32}
bazel build -c opt //broker:vfbrokerd //tools/vfctl //bench/block:block_bench >/dev/null 2>&1
dir=$(mktemp -d /tmp/vfextbench.XXXXXX)
pool="/dev/shm/$(basename "$dir").img"
# Real pages (not holes), so reads copy memory rather than map the zero page; 2 extents of 1 GiB.
fallocate -l 2G "$pool"
cat >"$dir/config.textproto" <<CONF
socket_dir: "$dir/run"
state_dir: "$dir/state"
default_quota { max_leases: 0 max_bytes: 0 }
pools {
  name: "scratch"
  access { any_user: true }
  loop_extent { backing_path: "$pool" size_bytes: 2147483648 alignment_bytes: 1048576 }
}
CONF
bazel-bin/broker/vfbrokerd --config="$dir/config.textproto" --log_level=warn >"$dir/broker.log" 2>&1 &
broker=$!
holder=""
source scripts/lib/broker_idle.sh
cleanup() {
  [[ -n "$holder" ]] && kill "$holder" 2>/dev/null && wait "$holder" 2>/dev/null
  wait_pools_whole bazel-bin/tools/vfctl/vfctl "$dir/run" 3000 || true
  kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null
  rm -rf "$dir" "$pool"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S "$dir/run/grpc.sock" ]] && break; sleep 0.1; done

bazel-bin/tools/vfctl/vfctl --socket_dir="$dir/run" allocate-extent scratch 1G --hold \
  >"$dir/holder.out" 2>&1 &
holder=$!
for _ in $(seq 100); do grep -q "/dev/loop" "$dir/holder.out" && break; sleep 0.1; done
device=$(grep -o "/dev/loop[0-9]*" "$dir/holder.out" | head -n 1)
[[ -b "$device" ]] || { echo "no extent device: $(cat "$dir/holder.out")" >&2; exit 1; }
echo "extent under test: $device (a 1 GiB lease of pool scratch, held by vfctl)"
echo
BLOCK_BENCH=bazel-bin/bench/block/block_bench bench/block/run_block_bench.sh "$device"
echo
echo "our queue on the descriptor libvfclient received (a second 1 GiB extent of the same pool):"
taskset -c "$CPU" bazel-bin/bench/block/block_bench --broker_socket_dir="$dir/run" \
  --pool=scratch --extent_mb=1024 --seconds="$RUNTIME" --qd="$QD"
