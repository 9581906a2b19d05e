#!/bin/sh
# broker_nvme: vfbrokerd with an nvme_sriov pool on $NVME_PF (namespaces 2 and 3), tenants as uids 60001/60002.
#   0. the broker prepares the PF itself (releases the primary's flexible resources, resets it,
#      enables 2 VFs with autoprobe off) and refuses to hand out a VF whose controller supports
#      Namespace Management/Attachment (QEMU 10's do); the rest runs with the pool's unsafe
#      allow_vf_namespace_management set;
#   1. tenant A (uid 60001) allocates a VF, adopts it over VFIO, reads zeroes, writes and verifies
#      its pattern, holds;
#   2. tenant B (uid 60002) cannot open A's /dev/vfio group, gets the other VF, reads zeroes (not
#      A's data), verifies its own pattern; root cannot open a held group either (EBUSY); then B
#      tries PF-only admin commands on its own VF (logged: with QEMU's VFs it can detach A's
#      namespace from A's controller and read it, which is why step 0 refuses such VFs);
#   3. A is SIGKILLed: its VF is reset and its namespace scrubbed (broker log), and tenant C then
#      gets that slot and reads zeroes;
#   4. a tenant keeping only the VFIO *device* descriptor keeps the group busy (6.1 kernel fact):
#      the slice stays quarantined until that descriptor closes;
#   5. the broker restarts while B holds its VF: B's lease is re-adopted, then reclaimed and
#      scrubbed when B dies;
#   6. a second broker with a pool on $NVME_NOACS_PF (its VF shares an IOMMU group with the port
#      and the PF) refuses to hand that VF out: FAILED_PRECONDITION naming the group's members.
. /lib/vm_lib.sh
need_commands vfbrokerd nvme_tenant
[ -n "$NVME_PF" ] || { fail "no NVMe PF"; check_failed; exit 1; }

S=/run/vfb; STATE=/tmp/vfb-state; BLOG=/tmp/broker.log
mkdir -p $S $STATE
for unsafe in false true; do
  cat > /tmp/vfb-$unsafe.textproto <<EOF
socket_dir: "$S"
state_dir: "$STATE"
pools {
  name: "nvme"
  access { uids: [ 60001, 60002 ] }
  nvme_sriov {
    pf_pci_address: "$NVME_PF"
    namespace_ids: [ 2, 3 ]
    allow_vf_namespace_management: $unsafe
  }
}
EOF
done

tenant() {  # out uid seed args... (background; prints its pid)
  out=$1; uid=$2; seed=$3; shift 3
  nvme_tenant --socket_dir=$S --uid="$uid" --seed="$seed" "$@" > "$out" 2>&1 &
  echo $!
}
wait_scrubbed() {  # vf count
  wait_for 150 sh -c "[ \$(grep -c 'VF $1 .*zeroed and verified' $BLOG) -ge $2 ]"
}

# 0. The default: a VF whose controller can (re)attach namespaces is not handed out.
start_broker /tmp/vfb-false.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
log "broker up at uptime $(cut -d' ' -f1 /proc/uptime)s; PF $NVME_PF sriov_numvfs=$(cat /sys/bus/pci/devices/$NVME_PF/sriov_numvfs) autoprobe=$(cat /sys/bus/pci/devices/$NVME_PF/sriov_drivers_autoprobe)"
nvme_tenant --socket_dir=$S --uid=60001 --release > /tmp/x.out 2>&1
show_log /tmp/x.out "tenant X"
if grep -q "FAILED_PRECONDITION.*OACS bit 3" /tmp/x.out; then
  log "VFs that support Namespace Management are refused; continuing with allow_vf_namespace_management: true"
  [ -z "$(nvme_vadmin /dev/$NVME_CTRL ctrls 2)$(nvme_vadmin /dev/$NVME_CTRL ctrls 3)" ] ||
    fail "a refused provision left a namespace attached"
elif ! grep -q "TENANT OK" /tmp/x.out; then
  fail "tenant X: neither served nor refused for OACS"
fi
stop_broker $S
start_broker /tmp/vfb-true.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }

# 1. Tenant A.
A=$(tenant /tmp/a.out 60001 11 --hold)
wait_for 300 grep -q "HOLDING\|TENANT FAIL" /tmp/a.out
show_log /tmp/a.out "tenant A"
grep -q "ZEROES-FIRST yes" /tmp/a.out || fail "tenant A: namespace did not read zeroes first"
grep -q "TENANT OK" /tmp/a.out || fail "tenant A failed"
VF_A=$(field /tmp/a.out vf); G_A=$(field /tmp/a.out group); NS_A=$(field /tmp/a.out nsid)
log "tenant A (uid $(field /tmp/a.out uid)): VF $VF_A namespace $NS_A group $G_A"

# 2. Tenant B, which first tries A's group, and afterwards asks its own VF's controller to attach
#    namespace 4 (detached, in no pool) to itself and to assign resources (PF-only commands).
SCID_A=$(nvme_vadmin /dev/$NVME_CTRL list | sed -n 's/^scid=\([0-9]*\) vfn=1 .*/\1/p')
SCID_B=$(nvme_vadmin /dev/$NVME_CTRL list | sed -n 's/^scid=\([0-9]*\) vfn=2 .*/\1/p')
B=$(tenant /tmp/b.out 60002 22 --hold --peek="$G_A" --escape_nsid=4 --escape_cntlid="$SCID_B" \
  --steal_nsid="$NS_A" --steal_cntlid="$SCID_A")
wait_for 300 grep -q "HOLDING\|TENANT FAIL" /tmp/b.out
show_log /tmp/b.out "tenant B"
grep -q "PEEK $G_A errno=E" /tmp/b.out || fail "tenant B could open tenant A's group $G_A"
grep -q "TENANT OK" /tmp/b.out || fail "tenant B failed"
grep -q "ZEROES-FIRST yes" /tmp/b.out || fail "tenant B saw data it did not write"
grep "ESCAPE" /tmp/b.out | while read -r l; do log "KNOWN HOLE with allow_vf_namespace_management (QEMU VFs): $l"; done
grep -q "ESCAPE virt-assign.*refused" /tmp/b.out || fail "tenant B's VF ran Virtualization Management"
[ -z "$(nvme_vadmin /dev/$NVME_CTRL ctrls 4)" ] || fail "namespace 4 left attached"
[ "$(nvme_vadmin /dev/$NVME_CTRL ctrls $NS_A)" = "$SCID_A" ] || fail "namespace $NS_A not back on controller $SCID_A"
VF_B=$(field /tmp/b.out vf); G_B=$(field /tmp/b.out group); NS_B=$(field /tmp/b.out nsid)
log "tenant B (uid $(field /tmp/b.out uid)): VF $VF_B namespace $NS_B group $G_B"
[ -n "$VF_B" ] && [ "$VF_A" != "$VF_B" ] && [ "$G_A" != "$G_B" ] && [ "$NS_A" != "$NS_B" ] ||
  fail "A and B share a VF, group or namespace"
expect_groups_busy "$G_A" "$G_B"
ls -ln /dev/vfio | while read -r l; do log "/dev/vfio: $l"; done
nvme_vadmin /dev/$NVME_CTRL list | while read -r l; do log "secondary: $l"; done
for ns in $NS_A $NS_B; do log "namespace $ns attached to: $(nvme_vadmin /dev/$NVME_CTRL ctrls $ns)"; done

# 3. Kill A: its slot is reset and scrubbed before anyone gets it again.
kill -9 "$A"
wait_scrubbed "$VF_A" 1 || fail "A's VF $VF_A was not scrubbed after the kill"
grep "VF $VF_A .*zeroed and verified" $BLOG | while read -r l; do log "broker: $l"; done
[ -z "$(nvme_vadmin /dev/$NVME_CTRL ctrls $NS_A)" ] || fail "namespace $NS_A still attached after teardown"
tenant /tmp/c.out 60001 33 --release >/dev/null
# (a child of the command substitution's subshell: not ours to wait for)
wait_for 300 grep -q "RELEASED\|TENANT FAIL" /tmp/c.out
show_log /tmp/c.out "tenant C"
grep -q "TENANT OK" /tmp/c.out || fail "tenant C failed"
[ "$(field /tmp/c.out vf)" = "$VF_A" ] || fail "tenant C did not get A's former VF $VF_A"
grep -q "ZEROES-FIRST yes" /tmp/c.out || fail "tenant C read A's data: not scrubbed"
grep -q "RELEASED" /tmp/c.out || fail "tenant C did not release"
wait_scrubbed "$VF_A" 2 || fail "C's release was not scrubbed"

# 4. Only the device descriptor kept: the group stays busy and the slice quarantined.
D=$(tenant /tmp/d.out 60001 44 --hold_device_only)
wait_for 300 grep -q "HOLDING-DEVICE-ONLY\|TENANT FAIL" /tmp/d.out
show_log /tmp/d.out "tenant D"
grep -q "HOLDING-DEVICE-ONLY" /tmp/d.out || fail "tenant D failed"
LEASE_D=$(sed -n 's/.*HOLDING-DEVICE-ONLY lease=\([^ ]*\).*/\1/p' /tmp/d.out)
G_D=$(ls -l /proc/$D/fd 2>/dev/null | grep -o '/dev/vfio/[0-9]*' | head -1)
log "tenant D holds $(ls -l /proc/$D/fd | grep -c vfio) VFIO descriptor(s): $(ls -l /proc/$D/fd | grep -o 'vfio.*' | tr '\n' ' ')"
sleep 1
grep -q "lease=$LEASE_D: device not closed yet" $BLOG || fail "D's slice was not held back while its device fd lived"
grep -q "VF $VF_A .*zeroed" $BLOG && [ "$(grep -c "VF $VF_A .*zeroed" $BLOG)" -gt 2 ] &&
  fail "D's VF was scrubbed while its device descriptor was open"
if (exec 3<> /dev/vfio/$(basename "$(readlink /sys/bus/pci/devices/$VF_A/iommu_group)")) 2>/tmp/peek.err; then
  fail "root opened the group of a VF whose device fd alone is held"
fi
log "with only D's device fd open, opening its group: $(cat /tmp/peek.err)"
kill -9 "$D"
wait_scrubbed "$VF_A" 3 || fail "D's slice was not scrubbed after its device fd closed"

# 5. Broker restart while B holds its VF.
stop_broker $S
start_broker /tmp/vfb-true.textproto $BLOG $S || { show_log $BLOG broker; check_failed; exit 1; }
grep "recovered from journal" $BLOG | tail -1 | while read -r l; do log "broker: $l"; done
grep "recovered from journal" $BLOG | tail -1 | grep -q "1 leases kept" || fail "B's lease was not re-adopted"
kill -9 "$B"
wait_scrubbed "$VF_B" 1 || fail "B's VF $VF_B was not scrubbed after B died (re-adopted lease)"

# 6. A VF that shares its IOMMU group is refused.
if [ -n "$NVME_NOACS_PF" ]; then
  S2=/run/vfb2; mkdir -p $S2 /tmp/vfb2-state
  cat > /tmp/vfb2.textproto <<EOF
socket_dir: "$S2"
state_dir: "/tmp/vfb2-state"
pools {
  name: "noacs"
  access { uids: [ 60001 ] }
  nvme_sriov { pf_pci_address: "$NVME_NOACS_PF" namespace_ids: [ 1 ] }
}
EOF
  if start_broker /tmp/vfb2.textproto /tmp/broker2.log $S2; then
    nvme_tenant --socket_dir=$S2 --uid=60001 --pool=noacs > /tmp/e.out 2>&1
    show_log /tmp/e.out "tenant E"
    grep -q "FAILED_PRECONDITION.*shares IOMMU group" /tmp/e.out ||
      fail "the broker handed out (or did not clearly refuse) a VF sharing its IOMMU group"
    stop_broker $S2
  else
    show_log /tmp/broker2.log broker2
  fi
else
  fail "no NVMe PF behind the port without ACS (run_vm.sh)"
fi

stop_broker $S
show_log $BLOG broker
check_failed
