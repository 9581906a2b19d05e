#!/usr/bin/env bash
# The vfbroker demo: start vfbrokerd on a software pool (a sparse file on /dev/shm carved into
# loop-device extents), look at it with vfctl, run an example tenant as an unprivileged user that
# allocates an extent and drives it from userspace, then show the broker reclaiming and
# scrubbing a tenant that is killed. Needs root (the broker creates loop devices).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root: vfbrokerd creates loop devices" >&2
  exit 1
fi

echo "== building vfbrokerd, vfctl and the example tenant"
bazel build -c opt //broker:vfbrokerd //tools/vfctl //examples:extent_io 2>&1 | tail -n 1

demo=$(mktemp -d /tmp/vfbroker-demo.XXXXXX)
chmod 755 "$demo"
pool="/dev/shm/$(basename "$demo").img"
cp bazel-bin/broker/vfbrokerd bazel-bin/tools/vfctl/vfctl bazel-bin/examples/extent_io "$demo/"
chmod 755 "$demo"/vfbrokerd "$demo"/vfctl "$demo"/extent_io
tenant_user=nobody

cat >"$demo/vfbroker.textproto" <<CONF
socket_dir: "$demo/run"
socket_mode: 438   # 0666: who may allocate is decided by each pool's access list
state_dir: "$demo/state"
default_quota { max_bytes: 1073741824 max_leases: 8 }
pools {
  name: "scratch"
  access { any_user: true }
  loop_extent { backing_path: "$pool" size_bytes: 1073741824 create: true alignment_bytes: 1048576 }
}
CONF

source scripts/lib/broker_idle.sh
cleanup() {
  [[ -n "${broker_pid:-}" ]] && wait_pools_whole "$demo/vfctl" "$demo/run" 3000
  [[ -n "${broker_pid:-}" ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -f "$pool"
  rm -rf "$demo"
}
trap cleanup EXIT

echo "== starting vfbrokerd (log: $demo/broker.log)"
"$demo/vfbrokerd" --config="$demo/vfbroker.textproto" >"$demo/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do [[ -S "$demo/run/grpc.sock" ]] && break; sleep 0.1; done
vfctl() { "$demo/vfctl" --socket_dir="$demo/run" "$@"; }

echo; echo "== vfctl pools"; vfctl pools
echo; echo "== an example tenant, as user '$tenant_user', allocates 256 MiB and drives it itself"
setpriv --reuid="$tenant_user" --regid=nogroup --clear-groups \
  "$demo/extent_io" --socket_dir="$demo/run" --pool=scratch --size=256M

echo; echo "== a tenant that is killed while holding an extent"
setpriv --reuid="$tenant_user" --regid=nogroup --clear-groups \
  "$demo/extent_io" --socket_dir="$demo/run" --pool=scratch --size=128M \
  --random_read_seconds=30 >/dev/null &
victim=$!
for _ in $(seq 100); do grep -q "granted" "$demo/broker.log" 2>/dev/null && break; sleep 0.1; done
sleep 1
vfctl leases
kill -9 "$victim"; wait "$victim" 2>/dev/null || true
sleep 0.5
echo; echo "== after the kill: reclaimed and scrubbed"
vfctl leases
vfctl stats
echo; echo "== broker log (control plane; every line names lease and tenant)"
grep -E "lease=|session" "$demo/broker.log" | tail -n 12
echo; echo "demo: done"
