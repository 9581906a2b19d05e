# Sourced by the bench and demo scripts: wait_idle VFCTL SOCKET_DIR waits (up to 5 minutes)
# until the broker holds no lease and has scrubbed every released extent, so that stopping it
# leaves no loop device behind.
wait_idle() {
  local vfctl=$1 socket_dir=$2
  for _ in $(seq 3000); do
    busy=$("$vfctl" --socket_dir="$socket_dir" --json stats 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(int(d.get("leases", 0)) + sum(int(p.get("quarantined", 0)) for p in d.get("pools", [])))
' 2>/dev/null || echo 1)
    [[ "$busy" == 0 ]] && return 0
    sleep 0.1
  done
  echo "wait_idle: the broker still has leases or unscrubbed extents" >&2
  return 1
}
