#!/bin/sh
# igbvf: the project's 82576 VF driver (vfdrivers/net/igbvf) on real VFIO (igbvf_check).
#   - the PF (kernel igb) up with 10.9.0.1/24; 2 VFs enabled with driver autoprobe off; each VF's
#     MAC set from the PF with iproute2's ip (busybox's has no "vf"), spoofchk on, trust off;
#   - static neighbour entries on the PF for the VFs' addresses (the driver answers no ARP);
#   - VF0 bound to vfio-pci: igbvf_check resets it, gets its MAC over the mailbox, waits for link,
#     exchanges verified UDP with a kernel socket on the PF both ways; run twice (the second
#     open finds the VF as the first left it: a reset with no RSTD to see); then VF1 likewise,
#     as uid 60001 owning only its /dev/vfio group node.
. /lib/vm_lib.sh
CHECK=igbvf_check
IP=
for c in /usr/sbin/ip /sbin/ip /bin/ip; do  # iproute2's, wherever the harness put it
  [ -x "$c" ] && "$c" -V 2>&1 | grep -q iproute2 && { IP=$c; break; }
done

[ -n "$IGB_PF" ] || { fail "no igb (82576) 8086:10c9"; check_failed; exit; }
command -v $CHECK >/dev/null || { fail "no $CHECK in the guest"; check_failed; exit; }
[ -n "$IP" ] || { fail "no iproute2 ip in the guest (busybox's has no 'vf')"; check_failed; exit; }
log "iproute2: $IP ($($IP -V 2>&1 | head -1))"
PFNET=$(ls "/sys/bus/pci/devices/$IGB_PF/net/" | head -1)
[ -n "$PFNET" ] || { fail "igb PF $IGB_PF has no netdev"; check_failed; exit; }
$IP link set "$PFNET" up || fail "link set $PFNET up"
$IP addr add 10.9.0.1/24 dev "$PFNET" || fail "addr add on $PFNET"
wait_for 100 grep -qx 1 "/sys/class/net/$PFNET/carrier" || fail "$PFNET: no carrier"
PFMAC=$(cat "/sys/class/net/$PFNET/address")
log "PF $IGB_PF = $PFNET $PFMAC carrier $(cat /sys/class/net/$PFNET/carrier)"
enable_vfs "$IGB_PF" 2
check_failed || exit 1

VFMAC0=02:00:00:09:00:02
VFMAC1=02:00:00:09:00:03
$IP link set "$PFNET" vf 0 mac $VFMAC0 spoofchk on trust off || fail "set VF0 MAC"
$IP link set "$PFNET" vf 1 mac $VFMAC1 spoofchk on trust off || fail "set VF1 MAC"
$IP neigh replace 10.9.0.2 lladdr $VFMAC0 dev "$PFNET" nud permanent || fail "neigh 10.9.0.2"
$IP neigh replace 10.9.0.3 lladdr $VFMAC1 dev "$PFNET" nud permanent || fail "neigh 10.9.0.3"
$IP link show "$PFNET" | while IFS= read -r l; do log "$l"; done

vf_bdf() { basename "$(readlink "/sys/bus/pci/devices/$IGB_PF/virtfn$1")"; }
VF0=$(vf_bdf 0); VF1=$(vf_bdf 1)
G0=$(bind_vfio "$VF0"); G1=$(bind_vfio "$VF1")
for d in "$VF0=$G0" "$VF1=$G1"; do
  bdf=${d%=*}; g=${d#*=}
  [ -c "/dev/vfio/$g" ] || fail "$bdf: no /dev/vfio/$g"
  [ "$(ls /sys/kernel/iommu_groups/$g/devices)" = "$bdf" ] || fail "$bdf: group $g is not its own"
done
check_failed || exit 1

verdict() {  # label args...
  label=$1; shift
  log "$label: $CHECK $*"
  start=$(cut -d' ' -f1 /proc/uptime)
  $CHECK "$@" > /tmp/check.out 2>&1
  end=$(cut -d' ' -f1 /proc/uptime)
  sed 's/^/  /' /tmp/check.out
  log "$label: done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s"
  grep -q 'igbvf_check: PASS:' /tmp/check.out || fail "$label: igbvf_check failed"
}
verdict "VF0 $VF0" --pci="$VF0" --expect_mac=$VFMAC0 --pf_mac="$PFMAC" --vf_ip=10.9.0.2
verdict "VF0 $VF0 again" --pci="$VF0" --expect_mac=$VFMAC0 --pf_mac="$PFMAC" --vf_ip=10.9.0.2 \
  --vfio_reset=false
# VF1 as a tenant would run: uid 60001, owner of its /dev/vfio group node only.
chown 60001:60001 "/dev/vfio/$G1"
verdict "VF1 $VF1 (uid 60001)" --pci="$VF1" --expect_mac=$VFMAC1 --pf_mac="$PFMAC" \
  --vf_ip=10.9.0.3 --run_as_uid=60001
dmesg | grep -i -E "igb|DMAR" | tail -20 | while IFS= read -r l; do log "kernel: $l"; done
check_failed
