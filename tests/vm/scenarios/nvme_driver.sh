#!/bin/sh
# nvme_driver: the project's NVMe driver and VFIO layer on real VFIO (nvme_driver_check).
#   - releases the primary's flexible resources, enables 2 NVMe VFs, brings each secondary
#     controller online with private namespace vfn+1 attached to it only, binds both to vfio-pci;
#   - VF1 (namespace 2) as root, on hugepages; VF2 (namespace 3) as uid 60001, owner of its
#     /dev/vfio group node only: it reads zeroes on its whole namespace after VF1 wrote its own,
#     and each names the other's namespace in a command that must fail; VF2 ends with a
#     whole-namespace scrub; then both at once; then VF1 in the broker's flow (fds handed over
#     SCM_RIGHTS to uid 60002); then VF2's controller offline, which must be refused cleanly;
#   - each VF gets 3 VQ resources (run_vm.sh: sriov_vq_flexible=6 for 2 VFs): an admin queue and
#     two I/O queue pairs; the PF's own two-queue-pair run comes last: SR-IOV off (vfio-pci refuses
#     a PF with VFs), unbound from nvme, bound to vfio-pci, nsid 1.
. /lib/vm_lib.sh
CHECK=nvme_driver_check

[ -n "$NVME_PF" ] || { fail "no NVMe controller 1b36:0010"; check_failed; exit; }
command -v $CHECK >/dev/null || { fail "no $CHECK in the guest"; check_failed; exit; }
NV=/dev/$NVME_CTRL
# 3 VQ resources: admin + two I/O queue pairs (QEMU allows sriov_vq_flexible / sriov_max_vfs per VF).
vf_online() {  # SCID
  nvme_vadmin $NV virt "$1" 1 8 1 && nvme_vadmin $NV virt "$1" 0 8 3 && nvme_vadmin $NV virt "$1" 0 9 0
}
nvme_release_primary_resources "$NVME_PF" "$NVME_CTRL" || { check_failed; exit; }
enable_vfs "$NVME_PF" 2
for line in $(nvme_vadmin $NV list | sed -n 's/^scid=\([0-9]*\) vfn=\([0-9]*\).*/\1:\2/p'); do
  scid=${line%:*}; vfn=${line#*:}
  [ "$vfn" -ge 1 ] && [ "$vfn" -le 2 ] || continue
  nsid=$((vfn + 1))
  vf_online "$scid" || fail "VF$vfn: bring controller $scid online"
  nvme_vadmin $NV attach "$nsid" "$scid" || fail "VF$vfn: attach namespace $nsid to controller $scid"
  attached=$(nvme_vadmin $NV ctrls "$nsid")
  [ "$attached" = "$scid" ] || fail "namespace $nsid attached to controllers '$attached', want only $scid"
  log "VF$vfn: controller $scid online, namespace $nsid attached to: $attached"
done
check_failed || exit 1

vf_bdf() { basename "$(readlink "/sys/bus/pci/devices/$NVME_PF/virtfn$1")"; }
VF1=$(vf_bdf 0); VF2=$(vf_bdf 1)
G1=$(bind_vfio "$VF1"); G2=$(bind_vfio "$VF2")
for d in "$VF1=$G1" "$VF2=$G2"; do
  bdf=${d%=*}; g=${d#*=}
  [ -c "/dev/vfio/$g" ] || fail "$bdf: no /dev/vfio/$g"
  [ "$(ls /sys/kernel/iommu_groups/$g/devices)" = "$bdf" ] || fail "$bdf: group $g is not its own"
done
check_failed || exit 1

run_check() {  # label args...
  label=$1; shift
  log "$label: $CHECK $*"
  start=$(cut -d' ' -f1 /proc/uptime)
  $CHECK "$@" 2>&1 | while IFS= read -r l; do echo "  $l"; done
  # The exit status of the pipeline is the reader's; the check's last line says PASS or FAIL.
  end=$(cut -d' ' -f1 /proc/uptime)
  log "$label: done in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s"
}
# busybox sh has no pipefail: keep the output and grep the verdict.
verdict() {  # label args...
  label=$1; shift
  run_check "$label" "$@" > /tmp/check.out
  cat /tmp/check.out
  grep -q 'nvme_driver_check: PASS:' /tmp/check.out || fail "$label: nvme_driver_check failed"
}

# 2 MiB hugepages for the buffers (MemoryRegion prefers them; the transport then asks for
# 2 MiB-aligned IOVAs): VF1 and VF2 run on them, the PF later on 4 KiB pages.
echo 24 > /proc/sys/vm/nr_hugepages
log "hugepages: $(cat /proc/sys/vm/nr_hugepages) x 2 MiB"
verdict "VF1 $VF1 (root)" --pci="$VF1" --nsid=2 --other_nsid=3 --seed=7
# Its "dma unmap and remap" check sent the device to an unmapped IOVA: the IOMMU must have
# blocked it and said so.
dmesg | grep "DMAR: \[DMA .*Request device \[${VF1#0000:}\]" | while read -r l; do log "kernel: $l"; done
dmesg | grep -q "DMAR: \[DMA .*Request device \[${VF1#0000:}\]" ||
  fail "no DMAR fault logged for $VF1's DMA to an unmapped IOVA"
chown 60001:60001 "/dev/vfio/$G2"
verdict "VF2 $VF2 (uid 60001)" --pci="$VF2" --nsid=3 --other_nsid=2 --seed=7 \
  --run_as_uid=60001 --scrub_at_end
ls -ln /dev/vfio | while read -r l; do log "/dev/vfio: $l"; done

# Both tenants at once, each in its own container on its own VF: the namespaces now hold data
# (read into each check's shadow first), and neither run may disturb the other.
log "VF1 (root) and VF2 (uid 60001) concurrently"
run_check "VF1 concurrent" --pci="$VF1" --nsid=2 --other_nsid=3 --seed=11 --expect_fresh=false \
  --rounds=4 --msix=false > /tmp/check1.out &
pid1=$!
run_check "VF2 concurrent" --pci="$VF2" --nsid=3 --other_nsid=2 --seed=12 --expect_fresh=false \
  --rounds=4 --msix=false --run_as_uid=60001 > /tmp/check2.out &
pid2=$!
wait $pid1; wait $pid2
for f in /tmp/check1.out /tmp/check2.out; do
  cat $f
  grep -q 'nvme_driver_check: PASS:' $f || fail "concurrent run ($f) failed"
done

# The broker's flow: root opens container, group and device and passes them over SCM_RIGHTS to
# a process of uid 60002, which adopts them; VF1's group node stays root's 0600.
verdict "VF1 handoff to uid 60002" --pci="$VF1" --nsid=2 --other_nsid=3 --seed=13 \
  --expect_fresh=false --rounds=2 --handoff_uid=60002

# A VF whose secondary controller is offline reads CAP 0 and CSTS.CFS 1 (QEMU): the driver must
# refuse it at once with the reason, not hang or crash.
scid2=$(nvme_vadmin $NV list | sed -n 's/^scid=\([0-9]*\) vfn=2 .*/\1/p')
nvme_vadmin $NV virt "$scid2" 0 7 0 || fail "take controller $scid2 offline"
run_check "VF2 offline" --pci="$VF2" --nsid=3 --device_reset=false > /tmp/check.out
cat /tmp/check.out
grep -q 'CHECK FAIL controller init: FAILED_PRECONDITION: NVMe CAP 0x0 .*MQES 0 is invalid' /tmp/check.out ||
  fail "offline VF2: no clean refusal"

echo 0 > /proc/sys/vm/nr_hugepages
# The PF: nsid 1, two I/O queue pairs. vfio-pci refuses a PF with SR-IOV enabled ("Cannot
# bind to PF with SR-IOV enabled"), so the VFs go first (through nvme's sriov_configure).
echo 0 > "/sys/bus/pci/devices/$NVME_PF/sriov_numvfs" || fail "disable the VFs of $NVME_PF"
echo "$NVME_PF" > "/sys/bus/pci/devices/$NVME_PF/driver/unbind" || fail "unbind nvme from $NVME_PF"
GP=$(bind_vfio "$NVME_PF")
[ "$(ls /sys/kernel/iommu_groups/$GP/devices)" = "$NVME_PF" ] || fail "PF group $GP is not its own"
verdict "PF $NVME_PF (root)" --pci="$NVME_PF" --nsid=1 --other_nsid=2 --seed=9 \
  --queue_pairs=2 --min_queue_pairs=2
check_failed
