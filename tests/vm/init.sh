#!/bin/busybox sh
# /init of the tests/vm guest (busybox-static). Smoke check of the SR-IOV + VFIO setup the broker
# will rely on:
#   - NVMe (QEMU 1b36:0010): enable 2 VFs with driver autoprobe off, bring each secondary controller
#     online (Virtualization Management: 1 VI + 2 VQ, online) and attach it its own private namespace
#     (Namespace Attachment), checking that the namespace is attached to that controller only;
#   - igb (82576, 8086:10c9): enable 2 VFs with driver autoprobe off;
#   - bind every VF to vfio-pci and check each is alone in its own IOMMU group and /dev/vfio/<group>
#     exists.
# Ends with one line "VM-RESULT: PASS" or "VM-RESULT: FAIL" and powers off; run_vm.sh reads it.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

FAILED=0
log() { echo "vm: $*"; }
fail() { echo "VM-CHECK FAIL: $*"; FAILED=1; }
finish() {
  log "done at uptime $(cut -d' ' -f1 /proc/uptime)s"
  if [ "$FAILED" = 0 ]; then echo "VM-RESULT: PASS"; else echo "VM-RESULT: FAIL"; fi
  sync
  poweroff -f
}

NVME_VFS=2
IGB_VFS=2
log "kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime)s; cmdline: $(cat /proc/cmdline)"
KV=$(uname -r)
for m in $(cat /modlist); do
  insmod "/lib/modules/$KV/$m" || fail "insmod $m"
done
[ -n "$(ls /sys/class/iommu 2>/dev/null)" ] || fail "no IOMMU in /sys/class/iommu (intel_iommu=on?)"

find_dev() {  # vendor device -> first matching BDF
  for p in /sys/bus/pci/devices/*; do
    if [ "$(cat "$p/vendor")" = "$1" ] && [ "$(cat "$p/device")" = "$2" ]; then basename "$p"; return; fi
  done
}
wait_for() {  # tries(0.2 s each) command...
  n=$1; shift
  while ! "$@" 2>/dev/null; do
    n=$((n - 1)); [ $n -gt 0 ] || return 1
    sleep 0.2
  done
}
enable_vfs() {  # PF count
  echo 0 > "/sys/bus/pci/devices/$1/sriov_drivers_autoprobe" || fail "$1: sriov_drivers_autoprobe"
  echo "$2" > "/sys/bus/pci/devices/$1/sriov_numvfs" || fail "$1: sriov_numvfs=$2"
  [ "$(cat "/sys/bus/pci/devices/$1/sriov_numvfs")" = "$2" ] || fail "$1: sriov_numvfs is not $2"
}

# --- NVMe
NVME_PF=$(find_dev 0x1b36 0x0010)
if [ -z "$NVME_PF" ]; then
  fail "no NVMe controller 1b36:0010"
else
  wait_for 100 test -d "/sys/bus/pci/devices/$NVME_PF/nvme" || fail "nvme driver did not bind $NVME_PF"
  CTRL=$(ls "/sys/bus/pci/devices/$NVME_PF/nvme" | head -1)
  wait_for 100 test -c "/dev/$CTRL" || fail "no /dev/$CTRL"
  NV=/dev/$CTRL
  log "NVMe PF $NVME_PF ($NV) totalvfs=$(cat /sys/bus/pci/devices/$NVME_PF/sriov_totalvfs)"
  caps=$(nvme_vadmin $NV caps) || fail "identify primary controller capabilities"
  log "primary: $caps"
  # Flexible resources still allocated to the primary must be released (takes effect at reset).
  case "$caps" in
    *"vqrfap=0 virfap=0"*) ;;
    *) pc=$(echo "$caps" | sed 's/.*cntlid=\([0-9]*\).*/\1/')
       nvme_vadmin $NV virt "$pc" 0 1 0 && nvme_vadmin $NV virt "$pc" 1 1 0 || fail "release primary flexible resources"
       echo 1 > "/sys/bus/pci/devices/$NVME_PF/reset" || fail "reset $NVME_PF"
       wait_for 50 grep -qx live "/sys/class/nvme/$CTRL/state" || fail "$CTRL not live after reset" ;;
  esac
  enable_vfs "$NVME_PF" $NVME_VFS
  nvme_vadmin $NV list | while read -r line; do log "secondary before: $line"; done
  for line in $(nvme_vadmin $NV list | sed -n 's/^scid=\([0-9]*\) vfn=\([0-9]*\).*/\1:\2/p'); do
    scid=${line%:*}; vfn=${line#*:}
    [ "$vfn" -ge 1 ] && [ "$vfn" -le $NVME_VFS ] || continue
    nsid=$((vfn + 1))  # namespace 1 is the PF's; VF n gets private namespace n+1
    nvme_vadmin $NV virt "$scid" 1 8 1 || fail "VF$vfn: assign 1 VI to controller $scid"
    nvme_vadmin $NV virt "$scid" 0 8 2 || fail "VF$vfn: assign 2 VQ to controller $scid"
    nvme_vadmin $NV virt "$scid" 0 9 0 || fail "VF$vfn: bring controller $scid online"
    nvme_vadmin $NV attach "$nsid" "$scid" || fail "VF$vfn: attach namespace $nsid to controller $scid"
    attached=$(nvme_vadmin $NV ctrls "$nsid")
    [ "$attached" = "$scid" ] || fail "namespace $nsid attached to controllers '$attached', want only $scid"
    log "VF$vfn: controller $scid online, private namespace $nsid attached to: $attached"
  done
  nvme_vadmin $NV list | while read -r line; do log "secondary after: $line"; done
  [ "$(nvme_vadmin $NV list | grep -c 'online=1')" = $NVME_VFS ] || fail "not all $NVME_VFS secondary controllers online"
fi

# --- igb
IGB_PF=$(find_dev 0x8086 0x10c9)
if [ -z "$IGB_PF" ]; then
  fail "no igb (82576) 8086:10c9"
else
  wait_for 50 test -e "/sys/bus/pci/devices/$IGB_PF/sriov_totalvfs" || fail "igb PF has no SR-IOV"
  log "igb PF $IGB_PF totalvfs=$(cat /sys/bus/pci/devices/$IGB_PF/sriov_totalvfs)"
  enable_vfs "$IGB_PF" $IGB_VFS
fi

# --- every VF to vfio-pci, each alone in its own IOMMU group
GROUPS_SEEN=" "
NVFS=0
for pf in $NVME_PF $IGB_PF; do
  for vf in /sys/bus/pci/devices/$pf/virtfn*; do
    [ -e "$vf" ] || continue
    d=$(basename "$(readlink "$vf")"); p=/sys/bus/pci/devices/$d
    NVFS=$((NVFS + 1))
    echo vfio-pci > "$p/driver_override"
    [ -e "$p/driver" ] && echo "$d" > "$p/driver/unbind"
    echo "$d" > /sys/bus/pci/drivers_probe
    drv=none; [ -e "$p/driver" ] && drv=$(basename "$(readlink "$p/driver")")
    g=none; [ -e "$p/iommu_group" ] && g=$(basename "$(readlink "$p/iommu_group")")
    members=$(ls "/sys/kernel/iommu_groups/$g/devices" 2>/dev/null | tr '\n' ' ')
    log "VF $d ($(cut -c3- $p/vendor):$(cut -c3- $p/device)) of $pf: driver=$drv iommu_group=$g members: $members"
    [ "$drv" = vfio-pci ] || fail "$d: driver is $drv, not vfio-pci"
    [ "$g" != none ] || { fail "$d: no IOMMU group"; continue; }
    [ "$members" = "$d " ] || fail "$d: IOMMU group $g is shared: $members"
    case "$GROUPS_SEEN" in *" $g "*) fail "$d: IOMMU group $g seen twice" ;; esac
    GROUPS_SEEN="$GROUPS_SEEN$g "
    [ -c "/dev/vfio/$g" ] || fail "$d: /dev/vfio/$g is missing"
  done
done
[ $NVFS = $((NVME_VFS + IGB_VFS)) ] || fail "found $NVFS VFs, want $((NVME_VFS + IGB_VFS))"
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio is missing"
log "/dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
finish
