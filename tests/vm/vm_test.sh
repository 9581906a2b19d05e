#!/usr/bin/env bash
# The body of every //tests/vm test: builds a guest initramfs holding SCENARIO and the given
# binaries, boots it under QEMU/TCG (see README.md) and passes if the scenario passes.
# It installs nothing: without QEMU 10, busybox-static, cpio or the guest kernel it SKIPs (exit 0)
# unless VFBROKER_VM_REQUIRED=1 (scripts/test.sh sets it: CI must not skip silently).
# usage: vm_test.sh SCENARIO [BINARY...]
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VFBROKER_VM_CACHE:-$REPO/.cache/vm}
(($# >= 1)) || { echo "usage: $0 SCENARIO [BINARY...]" >&2; exit 2; }

skip() {
  if [[ ${VFBROKER_VM_REQUIRED:-0} == 1 ]]; then echo "FAIL: $* (VFBROKER_VM_REQUIRED=1)" >&2; exit 1; fi
  echo "SKIPPED: $* -- run scripts/setup-vm.sh"; exit 0
}
command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64"
qv=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
((${qv:-0} >= 10)) || skip "QEMU is ${qv:-?}.x, the harness needs 10 (igb, NVMe SR-IOV)"
KDIR=$CACHE/kernel${VM_KERNEL:+-$VM_KERNEL}  # VM_KERNEL=6.12: the second guest kernel
compgen -G "$KDIR/boot/vmlinuz-*" >/dev/null &&
  compgen -G "$KDIR/lib/modules/*/modules.dep" >/dev/null || skip "no guest kernel in $KDIR"
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || skip "no static /bin/busybox (busybox-static)"
command -v cpio >/dev/null || skip "no cpio"

OUT=${TEST_UNDECLARED_OUTPUTS_DIR:-${TEST_TMPDIR:-/tmp}}
export TMPDIR=${TEST_TMPDIR:-${TMPDIR:-/tmp}}
"$HERE/build_initramfs.sh" "$TMPDIR/initramfs.cpio.gz" "$@"
"$HERE/run_vm.sh" "$TMPDIR/initramfs.cpio.gz" "$OUT/guest-console.log"
