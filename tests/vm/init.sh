#!/bin/busybox sh
# /init of the tests/vm guest (busybox-static): the boot every scenario shares, then the scenario.
#   - mounts proc, sys, devtmpfs, a tmpfs on /tmp and /run; loads the modules in /modlist;
#   - checks the IOMMU is on (intel_iommu=on) and waits for the NVMe PF's kernel driver;
#   - writes /etc/passwd and /etc/group with root and two unprivileged tenants, uids 60001 and 60002;
#   - runs /scenario (a copy of one of tests/vm/scenarios/*.sh) with /lib/vm_lib.sh's helpers.
# Ends with one line "VM-RESULT: PASS" or "VM-RESULT: FAIL" and powers off; run_vm.sh reads it.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /dev/shm && mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /run &&
  mount -t tmpfs tmpfs /dev/shm
chmod 1777 /tmp /dev/shm
. /lib/vm_lib.sh

log "kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime)s; cmdline: $(cat /proc/cmdline)"
KV=$(uname -r)
for m in $(cat /modlist); do
  insmod "/lib/modules/$KV/$m" || fail "insmod $m"
done
[ -n "$(ls /sys/class/iommu 2>/dev/null)" ] || fail "no IOMMU in /sys/class/iommu (intel_iommu=on?)"
printf 'root:x:0:0:root:/:/bin/sh\ntenant1:x:60001:60001::/tmp:/bin/sh\ntenant2:x:60002:60002::/tmp:/bin/sh\n' > /etc/passwd
printf 'root:x:0:\ntenant1:x:60001:\ntenant2:x:60002:\n' > /etc/group
hostname vfbroker-vm

NVME_PF=$(find_dev 0x1b36 0x0010)
IGB_PF=$(find_dev 0x8086 0x10c9)
if [ -n "$NVME_PF" ]; then
  wait_for 100 test -d "/sys/bus/pci/devices/$NVME_PF/nvme" || fail "nvme driver did not bind $NVME_PF"
  NVME_CTRL=$(ls "/sys/bus/pci/devices/$NVME_PF/nvme" | head -1)
  wait_for 100 test -c "/dev/$NVME_CTRL" || fail "no /dev/$NVME_CTRL"
  wait_for 50 grep -qx live "/sys/class/nvme/$NVME_CTRL/state" || fail "$NVME_CTRL not live"
fi
export NVME_PF NVME_CTRL IGB_PF

if [ "$FAILED" = 0 ]; then
  log "scenario $(head -2 /scenario | tail -1 | sed 's/^# *//') at uptime $(cut -d' ' -f1 /proc/uptime)s"
  sh /scenario || fail "scenario exited with status $?"
fi
finish
