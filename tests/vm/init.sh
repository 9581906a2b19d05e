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

# NVME_PF: the NVMe PF behind an ACS-capable root port (each VF alone in its IOMMU group);
# NVME_NOACS_PF: the one behind a port without ACS (port, PF and VF share one group); see run_vm.sh.
NVME_PF=$(find_devs 0x1b36 0x0010 | sed -n 1p)
NVME_NOACS_PF=$(find_devs 0x1b36 0x0010 | sed -n 2p)
IGB_PF=$(find_dev 0x8086 0x10c9)
# The three virtio-net devices on one QEMU hub (run_vm.sh), in bus order: the peer, which stays with
# the kernel's virtio_net where a scenario loads it, then two for a broker's pci_nic pool.
# 1af4:1041 is a modern-only (non-transitional) virtio-net function (virtio 1.2 section 4.1.2.1).
VIRTIO_PEER=$(find_devs 0x1af4 0x1041 | sed -n 1p)
VIRTIO_NIC1=$(find_devs 0x1af4 0x1041 | sed -n 2p)
VIRTIO_NIC2=$(find_devs 0x1af4 0x1041 | sed -n 3p)
nvme_ctrl_of() {  # PF -> its nvme controller name once live
  wait_for 100 test -d "/sys/bus/pci/devices/$1/nvme" || { fail "nvme driver did not bind $1"; return; }
  c=$(ls "/sys/bus/pci/devices/$1/nvme" | head -1)
  wait_for 100 test -c "/dev/$c" || fail "no /dev/$c"
  wait_for 50 grep -qx live "/sys/class/nvme/$c/state" || fail "$c not live"
  echo "$c"
}
[ -n "$NVME_PF" ] && NVME_CTRL=$(nvme_ctrl_of "$NVME_PF")
[ -n "$NVME_NOACS_PF" ] && NVME_NOACS_CTRL=$(nvme_ctrl_of "$NVME_NOACS_PF")
export NVME_PF NVME_CTRL NVME_NOACS_PF NVME_NOACS_CTRL IGB_PF VIRTIO_PEER VIRTIO_NIC1 VIRTIO_NIC2

if [ "$FAILED" = 0 ]; then
  log "scenario $(head -2 /scenario | tail -1 | sed 's/^# *//') at uptime $(cut -d' ' -f1 /proc/uptime)s"
  sh /scenario || fail "scenario exited with status $?"
fi
finish
