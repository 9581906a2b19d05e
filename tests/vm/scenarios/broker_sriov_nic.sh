#!/bin/sh
# broker_sriov_nic: vfbrokerd with a sriov_nic pool on the igb (82576) PF, tenants as uids
# 60001/60002 running the project's igbvf driver over the VFIO descriptors the broker sent.
#   0. the broker prepares the PF itself (autoprobe off, 2 VFs, PF up); the PF has 10.9.0.1/24
#      and permanent neighbour entries for the tenants' addresses (the driver answers no ARP);
#   1. tenant A (uid 60001, MAC ...:02) gets a VF, the PF gives the driver that MAC, another MAC
#      is refused (trust off), verified UDP both ways with a kernel socket on the PF; A then
#      watches what its VF receives;
#   2. tenant B (uid 60002, MAC ...:03) cannot open A's group node, gets the other VF, exchanges
#      verified UDP; then watches while the PF pings A's address: neither counts a foreign frame;
#      `ip link show` has both VFs with their MACs, spoof checking on, trust off; root cannot
#      open a held group (EBUSY);
#   3. A is SIGKILLed: its VF is reset and its MAC restored to 00:00:00:00:00:00 (ip link show);
#   4. a request for B's MAC (a VF is free now) is refused (ALREADY_EXISTS) and changes nothing;
#      then tenant C gets A's former VF with a MAC of its own and exchanges UDP; C releases;
#   5. a flow filter is refused (UNIMPLEMENTED: igb cannot steer to a VF); a tenant with a
#      broker-picked MAC (locally administered) on VLAN 100 gets the VF (ip link show: MAC and
#      vlan 100); killed, the VF is back to no MAC, no VLAN;
#   5b. tenant E on VLAN 100 with a 100 Mbps rate limit: `ip link show` has both, and E
#      exchanges verified UDP with the PF's VLAN device (PF.100, 10.9.100.1): the PF tags what the
#      VF sends and strips what it receives (a tagged frame at the VF fails it); released, the VF
#      has no VLAN and no rate;
#   6. the broker restarts while B holds its VF and the free VF was configured by hand (an
#      orphan): the orphan is restored at start, B's lease re-adopted, then restored when B dies.
. /lib/vm_lib.sh
need_commands vfbrokerd nic_vf_tenant
IP=$(find_iproute2)
[ -n "$IGB_PF" ] || { fail "no igb (82576) 8086:10c9"; check_failed; exit 1; }
[ -n "$IP" ] || { fail "no iproute2 ip in the guest (busybox's has no 'vf')"; check_failed; exit 1; }
PFNET=$(ls "/sys/bus/pci/devices/$IGB_PF/net/" | head -1)
[ -n "$PFNET" ] || { fail "igb PF $IGB_PF has no netdev"; check_failed; exit 1; }
PFMAC=$(cat "/sys/class/net/$PFNET/address")
MAC_A=02:00:00:09:00:02; MAC_B=02:00:00:09:00:03; MAC_C=02:00:00:09:00:04
MAC_E=02:00:00:09:00:06
$IP addr add 10.9.0.1/24 dev "$PFNET" || fail "addr add on $PFNET"

S=/run/vfb; STATE=/tmp/vfb-state; BLOG=/tmp/broker.log
mkdir -p $S $STATE
cat > /tmp/vfb.textproto <<EOF
socket_dir: "$S"
state_dir: "$STATE"
pools {
  name: "vf"
  access { uids: [ 60001, 60002 ] }
  sriov_nic { pf_interface: "$PFNET" max_vfs: 2 }
}
EOF

tenant() {  # out uid args... (background; prints its pid)
  out=$1; uid=$2; shift 2
  nic_vf_tenant --socket_dir=$S --uid="$uid" --pf_mac="$PFMAC" "$@" > "$out" 2>&1 &
  echo $!
}
slot_of() {  # VF BDF -> its index on the PF
  for l in /sys/bus/pci/devices/$IGB_PF/virtfn*; do
    [ "$(basename "$(readlink "$l")")" = "$1" ] && { basename "$l" | sed 's/virtfn//'; return; }
  done
}
vf_line() { $IP link show "$PFNET" | grep "vf $1 "; }
wait_restored() {  # slot bdf count
  wait_for 300 sh -c "[ \$(grep -c 'VF $1 ($2): reset, MAC and VLAN restored' $BLOG) -ge $3 ]"
}

start_broker /tmp/vfb.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
log "broker up; $PFNET sriov_numvfs=$(cat /sys/bus/pci/devices/$IGB_PF/sriov_numvfs) autoprobe=$(cat /sys/bus/pci/devices/$IGB_PF/sriov_drivers_autoprobe) operstate=$(cat /sys/class/net/$PFNET/operstate)"
[ "$(cat /sys/bus/pci/devices/$IGB_PF/sriov_numvfs)" = 2 ] || fail "the broker did not enable 2 VFs"
[ "$(cat /sys/bus/pci/devices/$IGB_PF/sriov_drivers_autoprobe)" = 0 ] || fail "autoprobe still on"
wait_for 100 grep -qx 1 "/sys/class/net/$PFNET/carrier" || fail "$PFNET: no carrier"
for n in 2 3 4; do
  eval mac=\$MAC_$(echo $n | tr 234 ABC)
  $IP neigh replace 10.9.0.$n lladdr "$mac" dev "$PFNET" nud permanent || fail "neigh 10.9.0.$n"
done
$IP link show "$PFNET" | while IFS= read -r l; do log "before: $l"; done

# 1. Tenant A: exchange, then watch until B is done.
rm -f /tmp/stop-watch-a
A=$(tenant /tmp/a.out 60001 --mac=$MAC_A --vf_ip=10.9.0.2 --watch_seconds=600 \
  --watch_until_file=/tmp/stop-watch-a --hold)
wait_for 600 grep -q "WATCHING\|TENANT FAIL" /tmp/a.out
show_log /tmp/a.out "tenant A"
grep -q "TENANT OK" /tmp/a.out || { fail "tenant A failed"; show_log $BLOG broker; check_failed; exit 1; }
VF_A=$(field /tmp/a.out vf); G_A=$(field /tmp/a.out group); SLOT_A=$(slot_of "$VF_A")
log "tenant A (uid $(field /tmp/a.out uid)): VF $SLOT_A $VF_A group $G_A"

# 2. Tenant B, which first tries A's group node; then watches while the PF pings A.
rm -f /tmp/stop-watch-b
B=$(tenant /tmp/b.out 60002 --mac=$MAC_B --vf_ip=10.9.0.3 --peek="$G_A" --watch_seconds=600 \
  --watch_until_file=/tmp/stop-watch-b --hold)
# (the PF's pings go to A's MAC: B must not see them; no answer expected)
watch_pair_ping /tmp/a.out /tmp/stop-watch-a /tmp/b.out /tmp/stop-watch-b 10.9.0.2
grep -q "PEEK $G_A errno=E" /tmp/b.out || fail "tenant B could open tenant A's group $G_A"
VF_B=$(field /tmp/b.out vf); G_B=$(field /tmp/b.out group); SLOT_B=$(slot_of "$VF_B")
log "tenant B (uid $(field /tmp/b.out uid)): VF $SLOT_B $VF_B group $G_B"
[ -n "$VF_B" ] && [ "$VF_A" != "$VF_B" ] && [ "$G_A" != "$G_B" ] || fail "A and B share a VF or group"
$IP link show "$PFNET" | while IFS= read -r l; do log "leased: $l"; done
vf_line "$SLOT_A" | grep -q "link/ether $MAC_A .*spoof checking on" || fail "VF $SLOT_A: not A's MAC with spoofchk on"
vf_line "$SLOT_B" | grep -q "link/ether $MAC_B .*spoof checking on" || fail "VF $SLOT_B: not B's MAC with spoofchk on"
vf_line "$SLOT_A" | grep -q "trust off" || fail "VF $SLOT_A: trust not off"
expect_groups_busy "$G_A" "$G_B"

# 3. Kill A: reset, MAC restored.
kill -9 "$A"
wait_restored "$SLOT_A" "$VF_A" 1 || fail "A's VF $VF_A was not restored after the kill"
grep "VF $SLOT_A ($VF_A): reset" $BLOG | while read -r l; do log "broker: $l"; done
vf_line "$SLOT_A" | while IFS= read -r l; do log "after A's kill: $l"; done
vf_line "$SLOT_A" | grep -q "link/ether 00:00:00:00:00:00 " || fail "VF $SLOT_A still has a MAC after A's kill"
# 4. B's MAC asked for on the free VF (then C gets A's former VF): refused, nothing changes.
nic_vf_tenant --socket_dir=$S --uid=60001 --pf_mac="$PFMAC" --mac=$MAC_B --count=0 > /tmp/x.out 2>&1
show_log /tmp/x.out "tenant X"
grep -q "ALREADY_EXISTS" /tmp/x.out || fail "a second lease with B's MAC was not refused with ALREADY_EXISTS"
vf_line "$SLOT_B" | grep -q "link/ether $MAC_B " || fail "the refused request changed B's VF"
vf_line "$SLOT_A" | grep -q "link/ether 00:00:00:00:00:00 " || fail "the refused request changed the free VF"
C=$(tenant /tmp/c.out 60001 --mac=$MAC_C --vf_ip=10.9.0.4)
wait_for 600 grep -q "RELEASED\|TENANT FAIL" /tmp/c.out
show_log /tmp/c.out "tenant C"
grep -q "TENANT OK" /tmp/c.out || fail "tenant C failed"
[ "$(field /tmp/c.out vf)" = "$VF_A" ] || fail "tenant C did not get A's former VF $VF_A"
grep -q "RELEASED" /tmp/c.out || fail "tenant C did not release"
wait_restored "$SLOT_A" "$VF_A" 2 || fail "C's release was not restored"

# 5. A broker-picked MAC, on VLAN 100 (the PF inserts and strips the tag); a flow filter is
#    refused (the PF cannot steer to a VF).
nic_vf_tenant --socket_dir=$S --uid=60002 --pf_mac="$PFMAC" --count=0 --vf_ip=10.9.0.5 \
  --filter_udp_port=53 > /tmp/f.out 2>&1
show_log /tmp/f.out "tenant F"
grep -q "UNIMPLEMENTED.*ntuple" /tmp/f.out || fail "a flow filter on a VF was not refused as UNIMPLEMENTED"
D=$(tenant /tmp/d.out 60002 --count=0 --vlan=100 --hold)
wait_for 600 grep -q "HOLDING\|TENANT FAIL" /tmp/d.out
show_log /tmp/d.out "tenant D"
MAC_D=$(sed -n 's/^LEASE .* mac=\([^ ]*\) .*/\1/p' /tmp/d.out)
grep -q "TENANT OK" /tmp/d.out || fail "tenant D (broker-picked MAC, VLAN 100) failed"
case "$MAC_D" in ?[26ae]:*) ;; *) fail "picked MAC $MAC_D is not locally administered unicast" ;; esac
vf_line "$SLOT_A" | while IFS= read -r l; do log "tenant D: $l"; done
vf_line "$SLOT_A" | grep -q "link/ether $MAC_D .*vlan 100" || fail "VF $SLOT_A: not D's MAC on VLAN 100"
kill -9 "$D"
wait_restored "$SLOT_A" "$VF_A" 3 || fail "D's VF was not restored"
vf_line "$SLOT_A" | grep -q "vlan" && fail "VF $SLOT_A kept D's VLAN"
vf_line "$SLOT_A" | grep -q "link/ether 00:00:00:00:00:00 " || fail "VF $SLOT_A kept D's MAC"

# 5b. VLAN 100 + a rate limit, with traffic: the VF's frames reach the PF's own VLAN 100 device
#     (8021q, VM_EXTRA_MODULES; made now that the broker has the PF up).
$IP link add link "$PFNET" name "$PFNET.100" type vlan id 100 2>&1 | while read -r l; do log "$l"; done
$IP addr add 10.9.100.1/24 dev "$PFNET.100" || fail "address on $PFNET.100"
$IP link set "$PFNET.100" up || fail "$PFNET.100 up"
$IP neigh replace 10.9.100.6 lladdr "$MAC_E" dev "$PFNET.100" nud permanent || fail "neigh 10.9.100.6"
E=$(tenant /tmp/e.out 60001 --mac=$MAC_E --vlan=100 --max_tx_rate_mbps=100 --vf_ip=10.9.100.6 \
  --pf_ip=10.9.100.1 --hold)
wait_for 600 grep -q "HOLDING\|TENANT FAIL" /tmp/e.out
show_log /tmp/e.out "tenant E"
grep -q "TENANT OK.* exchanged=32" /tmp/e.out || fail "tenant E (VLAN 100, 100 Mbps) failed its exchange"
[ "$(field /tmp/e.out vf)" = "$VF_A" ] || fail "tenant E did not get the free VF $VF_A"
vf_line "$SLOT_A" | while IFS= read -r l; do log "tenant E: $l"; done
vf_line "$SLOT_A" | grep -q "link/ether $MAC_E .*vlan 100" || fail "VF $SLOT_A: not E's MAC on VLAN 100"
vf_line "$SLOT_A" | grep -q "max_tx_rate 100Mbps" || fail "VF $SLOT_A: no 100 Mbps rate limit"
kill -9 "$E"
wait_restored "$SLOT_A" "$VF_A" 4 || fail "E's VF was not restored"
vf_line "$SLOT_A" | grep -q "vlan" && fail "VF $SLOT_A kept E's VLAN"
vf_line "$SLOT_A" | grep -q "max_tx_rate" && fail "VF $SLOT_A kept E's rate limit"

# 6. Restart while B holds; meanwhile someone configured the free VF by hand (an orphan: no
#    journal record names it): the broker restores it before offering it.
stop_broker $S
$IP link set "$PFNET" vf "$SLOT_A" mac 02:00:00:09:00:66 vlan 7 || fail "configuring an orphan"
vf_line "$SLOT_A" | while IFS= read -r l; do log "orphan: $l"; done
start_broker /tmp/vfb.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
grep -q "VF $SLOT_A ($VF_A): reset, MAC and VLAN restored.*orphan" $BLOG || fail "the orphaned VF was not restored at start"
vf_line "$SLOT_A" | grep -q "link/ether 00:00:00:00:00:00 " || fail "the orphaned VF kept its MAC"
vf_line "$SLOT_A" | grep -q "vlan" && fail "the orphaned VF kept its VLAN"
grep "recovered from journal" $BLOG | tail -1 | while read -r l; do log "broker: $l"; done
grep "recovered from journal" $BLOG | tail -1 | grep -q "1 leases kept" || fail "B's lease was not re-adopted"
vf_line "$SLOT_B" | grep -q "link/ether $MAC_B " || fail "the restart changed B's VF"
kill -9 "$B"
wait_restored "$SLOT_B" "$VF_B" 1 || fail "B's VF $VF_B was not restored after B died (re-adopted lease)"
$IP link show "$PFNET" | while IFS= read -r l; do log "at the end: $l"; done
stop_broker $S
show_log $BLOG broker
check_failed
