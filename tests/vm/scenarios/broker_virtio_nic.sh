#!/bin/sh
# broker_virtio_nic: vfbrokerd with a pci_nic pool of two whole virtio-net devices, tenants as
# uids 60001/60002 running the project's virtio-net driver over the VFIO descriptors the broker
# sent. The three virtio-net devices share one QEMU hub (run_vm.sh); the first stays with the
# kernel's virtio_net as the peer, with 10.10.0.1/24 and permanent neighbour entries for the
# tenants (the driver answers no ARP): 10.10.0.2 -> VIRTIO_NIC1's MAC, 10.10.0.3 -> NIC2's.
#   1. tenant A (uid 60001) gets NIC1 with the device's own MAC, exchanges verified UDP with the
#      peer, sets another MAC through the control queue, then watches what its device receives;
#   2. tenant B (uid 60002) cannot open A's group node (EACCES), gets NIC2, exchanges verified
#      UDP, then watches while the peer pings A's address: the hub hands every frame to every
#      port, so neither may count a foreign frame unless its driver failed to turn promiscuous
#      mode off; root cannot open a held group (EBUSY); a request naming a MAC or a VLAN is
#      refused (INVALID_ARGUMENT) though the pool is full;
#   3. A is SIGKILLed: the broker resets NIC1 and reads its own MAC back; tenant C gets NIC1, sees
#      the original MAC (not A's) and exchanges UDP with it; C releases; tenant D leaves NIC1
#      promiscuous and does see the peer's pings to B (so the zero counts of step 2 mean
#      something);
#   4. the broker restarts while B holds NIC2: B's lease is re-adopted, then NIC2 is reset when
#      B dies.
. /lib/vm_lib.sh
need_commands vfbrokerd virtio_nic_tenant
IP=$(find_iproute2) || { fail "no iproute2 ip in the guest (busybox's cannot add neighbours)"; check_failed; exit 1; }
[ -n "$VIRTIO_PEER" ] && [ -n "$VIRTIO_NIC1" ] && [ -n "$VIRTIO_NIC2" ] ||
  { fail "not three virtio-net devices (1af4:1041): '$VIRTIO_PEER' '$VIRTIO_NIC1' '$VIRTIO_NIC2'"; check_failed; exit 1; }
netdev_of() { ls -d /sys/bus/pci/devices/$1/virtio*/net/* 2>/dev/null | head -1 | xargs -r basename; }
wait_for 50 test -n "$(netdev_of "$VIRTIO_PEER")" || fail "the peer $VIRTIO_PEER has no virtio_net netdev"
PEER=$(netdev_of "$VIRTIO_PEER")
PEERMAC=$(cat "/sys/class/net/$PEER/address")
MAC1=$(cat "/sys/class/net/$(netdev_of "$VIRTIO_NIC1")/address")
MAC2=$(cat "/sys/class/net/$(netdev_of "$VIRTIO_NIC2")/address")
log "peer $VIRTIO_PEER ($PEER, $PEERMAC); pool $VIRTIO_NIC1 ($MAC1) $VIRTIO_NIC2 ($MAC2)"
for d in $VIRTIO_NIC1 $VIRTIO_NIC2; do
  g=$(basename "$(readlink /sys/bus/pci/devices/$d/iommu_group)")
  [ "$(ls /sys/kernel/iommu_groups/$g/devices)" = "$d" ] || fail "$d: group $g is not its own"
done
$IP addr add 10.10.0.1/24 dev "$PEER" || fail "addr add on $PEER"
$IP link set "$PEER" up || fail "$PEER up"
$IP neigh replace 10.10.0.2 lladdr "$MAC1" dev "$PEER" nud permanent || fail "neigh 10.10.0.2"
$IP neigh replace 10.10.0.3 lladdr "$MAC2" dev "$PEER" nud permanent || fail "neigh 10.10.0.3"
wait_for 100 grep -qx 1 "/sys/class/net/$PEER/carrier" || fail "$PEER: no carrier"
MAC_SET=02:00:00:0a:00:99

S=/run/vfb; STATE=/tmp/vfb-state; BLOG=/tmp/broker.log
mkdir -p $S $STATE
cat > /tmp/vfb.textproto <<EOF
socket_dir: "$S"
state_dir: "$STATE"
pools {
  name: "vnet"
  access { uids: [ 60001, 60002 ] }
  pci_nic { pci_addresses: [ "$VIRTIO_NIC1", "$VIRTIO_NIC2" ] }
}
EOF

tenant() {  # out uid args... (background; prints its pid)
  out=$1; uid=$2; shift 2
  virtio_nic_tenant --socket_dir=$S --uid="$uid" --peer_mac="$PEERMAC" "$@" > "$out" 2>&1 &
  echo $!
}
wait_reset() {  # bdf count: the broker's log says the function was reset at teardown count times
  wait_for 300 sh -c "[ \$(grep -c 'function [0-9]* ($1): reset, MAC .*(teardown)' $BLOG) -ge $2 ]"
}

start_broker /tmp/vfb.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
log "broker up"

# 1. Tenant A: exchange, a MAC of its own choosing through the control queue, then watch.
rm -f /tmp/stop-watch-a
A=$(tenant /tmp/a.out 60001 --own_ip=10.10.0.2 --set_mac=$MAC_SET --watch_seconds=600 \
  --watch_until_file=/tmp/stop-watch-a --hold)
wait_for 600 grep -q "WATCHING\|TENANT FAIL" /tmp/a.out
show_log /tmp/a.out "tenant A"
grep -q "TENANT OK" /tmp/a.out || { fail "tenant A failed"; show_log $BLOG broker; check_failed; exit 1; }
DEV_A=$(field /tmp/a.out dev); G_A=$(field /tmp/a.out group)
log "tenant A (uid $(field /tmp/a.out uid)): $DEV_A group $G_A MAC $(field /tmp/a.out mac)"
[ "$DEV_A" = "$VIRTIO_NIC1" ] || fail "tenant A got $DEV_A, not the first free function $VIRTIO_NIC1"
[ "$(field /tmp/a.out mac)" = "$MAC1" ] || fail "tenant A's lease MAC is not the device's own $MAC1"
grep -q "DEVICE mac=$MAC1 promisc_off=1" /tmp/a.out || fail "A's driver: not the device's MAC, or promiscuous mode still on"
grep -q "MAC-SET $MAC_SET" /tmp/a.out || fail "tenant A could not set $MAC_SET through the control queue"
[ "$(basename "$(readlink /sys/bus/pci/devices/$VIRTIO_NIC1/driver)")" = vfio-pci ] || fail "$VIRTIO_NIC1 not bound to vfio-pci"

# 2. Tenant B, which first tries A's group node; then watches while the peer pings A.
rm -f /tmp/stop-watch-b
B=$(tenant /tmp/b.out 60002 --own_ip=10.10.0.3 --peek="$G_A" --watch_seconds=600 \
  --watch_until_file=/tmp/stop-watch-b --hold)
# (the pings go to A's device MAC: B's device must drop them)
watch_pair_ping /tmp/a.out /tmp/stop-watch-a /tmp/b.out /tmp/stop-watch-b 10.10.0.2
grep -q "PEEK $G_A errno=EACCES" /tmp/b.out || fail "tenant B's open of tenant A's group $G_A was not refused with EACCES"
DEV_B=$(field /tmp/b.out dev); G_B=$(field /tmp/b.out group)
log "tenant B (uid $(field /tmp/b.out uid)): $DEV_B group $G_B MAC $(field /tmp/b.out mac)"
[ "$DEV_B" = "$VIRTIO_NIC2" ] && [ "$(field /tmp/b.out mac)" = "$MAC2" ] || fail "tenant B: not $VIRTIO_NIC2 with $MAC2"
expect_groups_busy "$G_A" "$G_B"
virtio_nic_tenant --socket_dir=$S --uid=60001 --count=0 --ask_mac=02:00:00:0a:00:42 > /tmp/x.out 2>&1
show_log /tmp/x.out "tenant X (asks for a MAC)"
grep -q "INVALID_ARGUMENT.*whole-device" /tmp/x.out || fail "a pci_nic request naming a MAC was not refused with INVALID_ARGUMENT"
virtio_nic_tenant --socket_dir=$S --uid=60001 --count=0 --ask_vlan=5 > /tmp/y.out 2>&1
show_log /tmp/y.out "tenant Y (asks for a VLAN)"
grep -q "INVALID_ARGUMENT" /tmp/y.out || fail "a pci_nic request naming a VLAN was not refused with INVALID_ARGUMENT"

# 3. Kill A (which set $MAC_SET): the function is reset and reports its own MAC again; the next
#    tenant of it sees that MAC and exchanges with it.
kill -9 "$A"
wait_reset "$VIRTIO_NIC1" 1 || fail "A's $VIRTIO_NIC1 was not reset after the kill"
grep "($VIRTIO_NIC1): reset" $BLOG | while read -r l; do log "broker: $l"; done
grep -q "($VIRTIO_NIC1): reset, MAC $MAC1 (teardown)" $BLOG || fail "after the reset $VIRTIO_NIC1 does not report $MAC1"
C=$(tenant /tmp/c.out 60001 --own_ip=10.10.0.2)
wait_for 600 grep -q "RELEASED\|TENANT FAIL" /tmp/c.out
show_log /tmp/c.out "tenant C"
grep -q "TENANT OK" /tmp/c.out || fail "tenant C failed"
[ "$(field /tmp/c.out dev)" = "$VIRTIO_NIC1" ] || fail "tenant C did not get A's former $VIRTIO_NIC1"
grep -q "DEVICE mac=$MAC1 " /tmp/c.out || fail "tenant C's device does not report the original MAC $MAC1 (A's $MAC_SET survived?)"
grep -q "RELEASED" /tmp/c.out || fail "tenant C did not release"
wait_reset "$VIRTIO_NIC1" 2 || fail "C's release was not followed by a reset"
#    The zero foreign frames above mean something: a tenant that leaves its device promiscuous
#    does receive what the peer sends to B (the hub floods every port).
D=$(tenant /tmp/d.out 60001 --own_ip=10.10.0.2 --count=0 --promiscuous --watch_seconds=600 \
  --watch_until_file=/tmp/stop-watch-d)
wait_for 600 grep -q "WATCHING\|TENANT FAIL" /tmp/d.out
ping -c 3 -W 1 10.10.0.3 > /dev/null 2>&1
touch /tmp/stop-watch-d
wait_for 600 grep -q "RELEASED\|TENANT FAIL" /tmp/d.out
show_log /tmp/d.out "tenant D (promiscuous)"
grep -q "DEVICE mac=$MAC1 promisc_off=0" /tmp/d.out || fail "tenant D's device did not stay promiscuous"
grep -q "FOREIGN frames=[1-9]" /tmp/d.out || fail "a promiscuous tenant saw none of the pings to B: the foreign-frame checks prove nothing"
wait_reset "$VIRTIO_NIC1" 3 || fail "D's release was not followed by a reset"

# 4. Restart while B holds NIC2: re-adopted; B's lease reclaimed (reset) when B dies.
stop_broker $S
start_broker /tmp/vfb.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
grep "recovered from journal" $BLOG | tail -1 | while read -r l; do log "broker: $l"; done
grep "recovered from journal" $BLOG | tail -1 | grep -q "1 leases kept" || fail "B's lease was not re-adopted"
kill -0 "$B" 2>/dev/null || fail "tenant B died across the restart"
kill -9 "$B"
wait_reset "$VIRTIO_NIC2" 1 || fail "B's $VIRTIO_NIC2 was not reset after B died (re-adopted lease)"
grep -q "($VIRTIO_NIC2): reset, MAC $MAC2 (teardown)" $BLOG || fail "$VIRTIO_NIC2 does not report $MAC2 after its reset"
stop_broker $S
show_log $BLOG broker
check_failed
