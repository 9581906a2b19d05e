#!/usr/bin/env bash
# Allocation latency (p50/p99 of allocate + descriptor handoff with 1, 10, 100 concurrent
# tenants) and broker memory per 1000 live leases, against a temporary vfbrokerd with a pool on
# /dev/shm. Root required (loop devices). Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build -c opt //broker:vfbrokerd //bench/control:alloc_bench //tools/vfctl >/dev/null 2>&1
dir=$(mktemp -d /tmp/vfbench.XXXXXX)
pool="/dev/shm/$(basename "$dir").img"
cat >"$dir/config.textproto" <<CONF
socket_dir: "$dir/run"
state_dir: "$dir/state"
max_leases_per_session: 2000
default_quota { max_leases: 0 max_bytes: 0 }
pools {
  name: "scratch"
  access { any_user: true }
  loop_extent { backing_path: "$pool" size_bytes: 8589934592 create: true alignment_bytes: 1048576 }
}
CONF
bazel-bin/broker/vfbrokerd --config="$dir/config.textproto" --log_level=${BROKER_LOG_LEVEL:-warn} >"$dir/broker.log" 2>&1 &
broker=$!
source scripts/lib/broker_idle.sh
# KEEP_BROKER_LOG=path: keep the broker's log (with BROKER_LOG_LEVEL=info every grant logs its
# provision / journal / handoff microseconds).
trap 'wait_pools_whole bazel-bin/tools/vfctl/vfctl "$dir/run" 3000; kill $broker 2>/dev/null; wait $broker 2>/dev/null; [[ -n ${KEEP_BROKER_LOG:-} ]] && cp "$dir/broker.log" "$KEEP_BROKER_LOG"; rm -rf "$dir" "$pool"' EXIT
for _ in $(seq 100); do [[ -S "$dir/run/grpc.sock" ]] && break; sleep 0.1; done
echo "journal on: $(df --output=source,fstype "$dir" | tail -n 1)"
bazel-bin/bench/control/alloc_bench --socket_dir="$dir/run" --broker_pid=$broker "$@"
