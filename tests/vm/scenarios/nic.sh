#!/bin/sh
# nic: the host's nic_integration_test (the same gtest binary) in the guest, VLAN cases on.
#   The guest's Debian kernel has 802.1Q VLAN devices (8021q, loaded from /modlist with
#   macvlan, veth, sch_ingress, cls_bpf and loop: VM_EXTRA_MODULES of //tests/vm:vm_nic_test),
#   which the development host's kernel lacks, so here the VLAN leases run for real. Runs on
#   Debian 12's own 6.1 (//tests/vm:vm_nic_test) and on 6.12 (vm_nic_6_12_test): the broker
#   hands the AF_XDP socket over unbound, in the lease's network namespace, and the tenant maps
#   the rings before it binds (6.1's xsk_mmap refuses the rings of a bound socket).
#   The test finds vfbrokerd and its probes in its runfiles (TEST_SRCDIR): a tree of links to
#   /bin is made for it. VFBROKER_NIC_TEST_REQUIRE_VLAN=1 turns the VLAN cases' skip (no 8021q)
#   into a failure, and any SKIPPED test fails the scenario.
. /lib/vm_lib.sh
# iproute2 (VM_EXTRA_PATHS=/usr/sbin/ip), by its path: busybox sh runs its own ip applet for a
# bare `ip`, so the test is told (VFBROKER_TEST_IP).
IP=/usr/sbin/ip
$IP -V 2>&1 | grep -q iproute2 || { fail "no iproute2 at $IP: $($IP -V 2>&1 | head -1)"; check_failed; exit 1; }
for b in nic_integration_test vfbrokerd tenant_probe nic_probe; do
  command -v $b >/dev/null || { fail "no $b in the guest"; check_failed; exit 1; }
done
grep -q '^8021q ' /proc/modules || fail "8021q not loaded"

RF=/tmp/runfiles
mkdir -p $RF/vfbroker/broker $RF/vfbroker/tests/integration
ln -s /bin/vfbrokerd $RF/vfbroker/broker/vfbrokerd
ln -s /bin/tenant_probe $RF/vfbroker/tests/integration/tenant_probe
ln -s /bin/nic_probe $RF/vfbroker/tests/integration/nic_probe

OUT=/tmp/nic_integration_test.out
start=$(cut -d' ' -f1 /proc/uptime)
TEST_SRCDIR=$RF VFBROKER_TEST_IP=$IP VFBROKER_NIC_TEST_REQUIRE_VLAN=1 nic_integration_test --gtest_color=no \
  > $OUT 2>&1
status=$?
end=$(cut -d' ' -f1 /proc/uptime)
sed 's/^/  test: /' $OUT
log "kernel $(uname -r): nic_integration_test exited $status after $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s of guest time"
[ $status = 0 ] || fail "nic_integration_test exited with status $status"
grep -q '^\[  PASSED  \]' $OUT || fail "nic_integration_test: no PASSED line"
if grep -q '^\[  SKIPPED \]' $OUT; then fail "nic_integration_test skipped tests in the guest"; fi
for t in VlanLease HandedSocketIsConfinedToTheLeaseNamespace AReleasedUnboundSocketCannotBind BrokerRestartReadopts; do
  grep -q "^\[       OK \] NicIntegrationTest\.$t" $OUT || fail "no passing NicIntegrationTest.$t* case"
done
check_failed
