# Sourced by the demo, the benchmarks and the shell tests: helpers that bring a vfbrokerd back to
# idle before it is stopped, so that no scrub is left unfinished and no loop device behind.
# Each takes the vfctl binary and the broker's socket directory; vfctl must run as an operator
# (root) to see every pool and lease.

# release_all_leases VFCTL SOCKET_DIR: gives back every lease the broker holds.
release_all_leases() {
  local vfctl=$1 socket_dir=$2 id
  for id in $("$vfctl" --socket_dir="$socket_dir" --json leases 2>/dev/null | python3 -c \
    'import json,sys; print(" ".join(l["id"] for l in json.load(sys.stdin).get("leases", [])))' \
    2>/dev/null); do
    "$vfctl" --socket_dir="$socket_dir" release "$id" >/dev/null 2>&1
  done
}

# wait_pools_whole VFCTL SOCKET_DIR [TRIES]: succeeds once every pool is entirely free again
# (each released slice scrubbed and returned), polling every 0.1 s at most TRIES times
# (default 300, i.e. 30 s).
wait_pools_whole() {
  local vfctl=$1 socket_dir=$2 tries=${3:-300}
  for _ in $(seq "$tries"); do
    "$vfctl" --socket_dir="$socket_dir" --json pools 2>/dev/null | python3 -c '
import json, sys
pools = json.load(sys.stdin)["pools"]
sys.exit(0 if all(p["freeBytes"] == p["capacityBytes"] for p in pools) else 1)' && return 0
    sleep 0.1
  done
  echo "wait_pools_whole: the broker still has leases or unscrubbed extents" >&2
  return 1
}
