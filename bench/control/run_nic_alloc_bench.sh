#!/usr/bin/env bash
# NIC grant latency: p50/p99 of AllocateNic (and AllocateNic + AfXdpPort::Adopt) with 1, 10,
# 100 concurrent tenants, release and reclaim, against a temporary vfbrokerd whose xdp_nic pool
# is one end of a veth pair in a network namespace this script creates (and deletes: nothing
# outside it is touched); then the broker's own per-step timing from its debug log. Before
# that, the peer: the kernel's macvlan + AF_XDP socket, timed in the same namespace.
# Root required. Extra arguments go to nic_alloc_bench (e.g. --per_tenant=3).
set -euo pipefail
cd "$(dirname "$0")/../.."
bazel build -c opt //broker:vfbrokerd //bench/control:nic_alloc_bench >/dev/null 2>&1
bin=$(bazel info -c opt bazel-bin 2>/dev/null)  # not the bazel-bin link: other builds move it
dir=$(mktemp -d /tmp/vfnicbench.XXXXXX)
ns="vfbnicbench$$"
cat >"$dir/config.textproto" <<CONF
socket_dir: "$dir/run"
state_dir: "$dir/state"
max_leases_per_session: 2000
default_quota { max_leases: 0 max_bytes: 0 }
pools {
  name: "net"
  access { any_user: true }
  xdp_nic { interface: "veth0" max_tenants: 1024 frame_size: 4096 frame_count: 256 ring_size: 256 }
}
CONF
ip netns add "$ns"
broker=""
cleanup() {
  if [[ -n "$broker" ]]; then kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip -n "$ns" link set lo up
ip -n "$ns" link add veth0 type veth peer name veth1
ip -n "$ns" link set veth0 up
ip -n "$ns" link set veth1 up
ip netns exec "$ns" "$bin"/bench/control/nic_alloc_bench --pool= --peer_interface=veth0 "$@"
ip netns exec "$ns" "$bin"/broker/vfbrokerd --config="$dir/config.textproto" \
  --log_level="${BROKER_LOG_LEVEL:-debug}" >"$dir/broker.log" 2>&1 &
broker=$!
for _ in $(seq 100); do [[ -S "$dir/run/grpc.sock" ]] && break; sleep 0.1; done
sleep 0.5
echo "journal on: $(df --output=source,fstype "$dir" | tail -n 1)"
ip netns exec "$ns" "$bin"/bench/control/nic_alloc_bench --socket_dir="$dir/run" --pool=net "$@"
# Per-step provisioning time over every grant of the run (the broker's debug lines), and the
# grant's phases (its info lines): p50 / p99 in microseconds.
pct() { sort -n | awk -v p="$1" '{ a[NR] = $1 } END { if (NR) print a[int(p * (NR - 1) + 1.5)]; else print "-" }'; }
field() { grep -E "$1" "$dir/broker.log" | grep -oE "$2 [0-9]+" | awk '{ print $NF }'; }
both() { echo "$(field "$1" "$2" | pct .5) / $(field "$1" "$2" | pct .99)"; }
steps="steering attach"
echo
echo "provisioning steps over $(grep -c "$steps" "$dir/broker.log") grants (us, p50 / p99):" \
  "namespace $(both "$steps" "namespace")," \
  "macvlan $(both "$steps" "macvlan") (create $(both "$steps" "create")," \
  "thread start $(both "$steps" "thread start"))," \
  "attach $(both "$steps" "attach")," \
  "socket+UMEM $(both "$steps" "socket") (thread end $(both "$steps" "thread end"))," \
  "rules+guards $(both "$steps" "guards")"
grants="provision [0-9]+ us"
echo "grant phases (us, p50 / p99): provision $(both "$grants" "provision")," \
  "journal $(both "$grants" "journal"), handoff $(both "$grants" "handoff")"
