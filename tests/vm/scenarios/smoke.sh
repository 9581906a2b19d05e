#!/bin/sh
# smoke: the SR-IOV + VFIO setup the broker relies on, done by hand with sysfs and nvme_vadmin.
#   - NVMe: enable 2 VFs with driver autoprobe off, bring each secondary controller online and
#     attach it its own private namespace, checking the namespace is attached to that controller only;
#   - igb: enable 2 VFs with driver autoprobe off;
#   - bind every VF to vfio-pci and check each is alone in its own IOMMU group with /dev/vfio/<group>;
#   - the NVMe PF behind the port without ACS: its VF shares a group with the PF (what the broker refuses).
. /lib/vm_lib.sh
NVME_VFS=2
IGB_VFS=2

if [ -z "$NVME_PF" ]; then
  fail "no NVMe controller 1b36:0010"
else
  NV=/dev/$NVME_CTRL
  log "NVMe PF $NVME_PF ($NV) totalvfs=$(cat /sys/bus/pci/devices/$NVME_PF/sriov_totalvfs)"
  nvme_release_primary_resources "$NVME_PF" "$NVME_CTRL"
  enable_vfs "$NVME_PF" $NVME_VFS
  nvme_vadmin $NV list | while read -r line; do log "secondary before: $line"; done
  for line in $(nvme_vadmin $NV list | sed -n 's/^scid=\([0-9]*\) vfn=\([0-9]*\).*/\1:\2/p'); do
    scid=${line%:*}; vfn=${line#*:}
    [ "$vfn" -ge 1 ] && [ "$vfn" -le $NVME_VFS ] || continue
    nsid=$((vfn + 1))  # namespace 1 is the PF's; VF n gets private namespace n+1
    nvme_vf_online $NV "$scid" || fail "VF$vfn: bring controller $scid online"
    nvme_vadmin $NV attach "$nsid" "$scid" || fail "VF$vfn: attach namespace $nsid to controller $scid"
    attached=$(nvme_vadmin $NV ctrls "$nsid")
    [ "$attached" = "$scid" ] || fail "namespace $nsid attached to controllers '$attached', want only $scid"
    log "VF$vfn: controller $scid online, private namespace $nsid attached to: $attached"
  done
  nvme_vadmin $NV list | while read -r line; do log "secondary after: $line"; done
  [ "$(nvme_vadmin $NV list | grep -c 'online=1')" = $NVME_VFS ] || fail "not all $NVME_VFS secondary controllers online"
fi

if [ -z "$IGB_PF" ]; then
  fail "no igb (82576) 8086:10c9"
else
  wait_for 50 test -e "/sys/bus/pci/devices/$IGB_PF/sriov_totalvfs" || fail "igb PF has no SR-IOV"
  log "igb PF $IGB_PF totalvfs=$(cat /sys/bus/pci/devices/$IGB_PF/sriov_totalvfs)"
  enable_vfs "$IGB_PF" $IGB_VFS
fi

GROUPS_SEEN=" "
NVFS=0
for pf in $NVME_PF $IGB_PF; do
  for vf in /sys/bus/pci/devices/$pf/virtfn*; do
    [ -e "$vf" ] || continue
    d=$(basename "$(readlink "$vf")"); p=/sys/bus/pci/devices/$d
    NVFS=$((NVFS + 1))
    g=$(bind_vfio "$d")
    drv=none; [ -e "$p/driver" ] && drv=$(basename "$(readlink "$p/driver")")
    members=$(ls "/sys/kernel/iommu_groups/$g/devices" 2>/dev/null | tr '\n' ' ')
    log "VF $d ($(cut -c3- $p/vendor):$(cut -c3- $p/device)) of $pf: driver=$drv iommu_group=$g members: $members"
    [ "$drv" = vfio-pci ] || fail "$d: driver is $drv, not vfio-pci"
    [ -n "$g" ] || { fail "$d: no IOMMU group"; continue; }
    [ "$members" = "$d " ] || fail "$d: IOMMU group $g is shared: $members"
    case "$GROUPS_SEEN" in *" $g "*) fail "$d: IOMMU group $g seen twice" ;; esac
    GROUPS_SEEN="$GROUPS_SEEN$g "
    [ -c "/dev/vfio/$g" ] || fail "$d: /dev/vfio/$g is missing"
  done
done
[ $NVFS = $((NVME_VFS + IGB_VFS)) ] || fail "found $NVFS VFs, want $((NVME_VFS + IGB_VFS))"
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio is missing"

# The NVMe PF behind the port without ACS: its VF shares an IOMMU group with the port and the PF.
if [ -z "$NVME_NOACS_PF" ]; then
  fail "no second NVMe controller (behind the port without ACS)"
else
  enable_vfs "$NVME_NOACS_PF" 1
  vf=$(basename "$(readlink "/sys/bus/pci/devices/$NVME_NOACS_PF/virtfn0")")
  g=$(basename "$(readlink "/sys/bus/pci/devices/$vf/iommu_group")")
  members=$(ls "/sys/kernel/iommu_groups/$g/devices" | tr '\n' ' ')
  log "VF $vf of $NVME_NOACS_PF (no ACS): iommu_group=$g members: $members"
  case " $members" in *" $NVME_NOACS_PF "*) ;; *) fail "$vf: group $g does not hold its PF $NVME_NOACS_PF" ;; esac
fi
log "/dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
check_failed
