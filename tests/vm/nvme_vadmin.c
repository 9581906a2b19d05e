// nvme_vadmin: the few NVMe admin commands the guest harness needs to bring SR-IOV secondary
// controllers online and give each one a private namespace, sent through the kernel nvme driver's
// admin passthrough (NVME_IOCTL_ADMIN_CMD) on the physical function's /dev/nvmeN.
// Built statically by tests/vm/build_initramfs.sh (gcc -static); runs in the guest only.
//
// NVMe Base Specification 2.0 facts used:
//   Identify (opcode 06h), CDW10.CNS: 14h Primary Controller Capabilities, 15h Secondary Controller
//     List, 12h Controller List attached to NSID.
//   Virtualization Management (opcode 1Ch): CDW10 bits 3:0 ACT (1 = primary flexible allocation,
//     7 = secondary offline, 8 = secondary assign, 9 = secondary online), bits 10:8 RT (0 = VQ,
//     1 = VI), bits 31:16 CNTLID; CDW11 bits 15:0 NR.
//   Namespace Attachment (opcode 15h): NSID, CDW10 bits 3:0 SEL (0 = attach, 1 = detach), data is a
//     Controller List (u16 count, then u16 controller ids).
//
// usage: nvme_vadmin DEV caps                 -> "cntlid=C vqrfap=N virfap=N"
//        nvme_vadmin DEV list                 -> one line per secondary: "scid=S vfn=V online=0|1 nvq=N nvi=N"
//        nvme_vadmin DEV virt CNTLID RT ACT NR
//        nvme_vadmin DEV attach|detach NSID CNTLID
//        nvme_vadmin DEV ctrls NSID           -> controller ids the namespace is attached to
#include <errno.h>
#include <fcntl.h>
#include <linux/nvme_ioctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static uint8_t buf[4096] __attribute__((aligned(4096)));

static int admin(int fd, uint8_t opcode, uint32_t nsid, uint32_t cdw10, uint32_t cdw11, void *data,
                 uint32_t len) {
  struct nvme_admin_cmd cmd;
  memset(&cmd, 0, sizeof cmd);
  cmd.opcode = opcode;
  cmd.nsid = nsid;
  cmd.cdw10 = cdw10;
  cmd.cdw11 = cdw11;
  cmd.addr = (uintptr_t)data;
  cmd.data_len = len;
  int r = ioctl(fd, NVME_IOCTL_ADMIN_CMD, &cmd);
  if (r < 0) fprintf(stderr, "nvme_vadmin: opcode 0x%02x: %s\n", opcode, strerror(errno));
  else if (r > 0) fprintf(stderr, "nvme_vadmin: opcode 0x%02x: NVMe status 0x%x\n", opcode, r);
  return r;
}

static uint16_t u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static unsigned long num(const char *s) {
  char *end;
  unsigned long v = strtoul(s, &end, 0);
  if (*s == 0 || *end != 0) { fprintf(stderr, "nvme_vadmin: bad number '%s'\n", s); exit(2); }
  return v;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: nvme_vadmin DEV caps|list|virt|attach|detach|ctrls ...\n"); return 2; }
  int fd = open(argv[1], O_RDWR);
  if (fd < 0) { perror(argv[1]); return 1; }
  const char *op = argv[2];
  if (!strcmp(op, "caps") && argc == 3) {
    memset(buf, 0, sizeof buf);
    if (admin(fd, 0x06, 0, 0x14, 0, buf, sizeof buf)) return 1;
    // Primary Controller Capabilities: CNTLID at 0, VQRFAP at 40, VIRFAP at 72.
    printf("cntlid=%u vqrfap=%u virfap=%u\n", u16(buf), u16(buf + 40), u16(buf + 72));
  } else if (!strcmp(op, "list") && argc == 3) {
    memset(buf, 0, sizeof buf);
    if (admin(fd, 0x06, 0, 0x15, 0, buf, sizeof buf)) return 1;
    // Secondary Controller List: count at byte 0, 32-byte entries from byte 32:
    // SCID 0, PCID 2, SCS 4 (bit 0 online), VFN 8, NVQ 10, NVI 12.
    for (int i = 0; i < buf[0] && i < 127; i++) {
      const uint8_t *e = buf + 32 + 32 * i;
      printf("scid=%u vfn=%u online=%u nvq=%u nvi=%u\n", u16(e), u16(e + 8), e[4] & 1, u16(e + 10),
             u16(e + 12));
    }
  } else if (!strcmp(op, "virt") && argc == 7) {
    uint32_t cntlid = num(argv[3]), rt = num(argv[4]), act = num(argv[5]), nr = num(argv[6]);
    if (admin(fd, 0x1C, 0, (act & 0xF) | (rt & 0x7) << 8 | (cntlid & 0xFFFF) << 16, nr & 0xFFFF, NULL, 0))
      return 1;
  } else if ((!strcmp(op, "attach") || !strcmp(op, "detach")) && argc == 5) {
    memset(buf, 0, sizeof buf);
    uint16_t list[2] = {1, (uint16_t)num(argv[4])};
    memcpy(buf, list, sizeof list);
    if (admin(fd, 0x15, num(argv[3]), !strcmp(op, "detach"), 0, buf, sizeof buf)) return 1;
  } else if (!strcmp(op, "ctrls") && argc == 4) {
    memset(buf, 0, sizeof buf);
    if (admin(fd, 0x06, num(argv[3]), 0x12, 0, buf, sizeof buf)) return 1;
    for (int i = 0; i < u16(buf) && i < 2047; i++) printf("%s%u", i ? " " : "", u16(buf + 2 + 2 * i));
    printf("\n");
  } else {
    fprintf(stderr, "nvme_vadmin: bad arguments\n");
    return 2;
  }
  return 0;
}
