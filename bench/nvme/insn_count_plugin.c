// insn_count_plugin: a QEMU TCG plugin (system emulation) that counts the guest instructions
// executed on every vCPU, user and kernel alike, and prints the running total whenever a guest
// program executes the marker instruction (see insn_mark.c):
//     INSN-MARK <n> <total instructions so far, all vCPUs>      (on QEMU's stderr, n = 1, 2, ...)
// run_nvme_bench.sh brackets each measured run in the guest with two marks; the difference of two
// runs of N1 and N2 I/Os, divided by N2 - N1, is the whole guest's instructions per I/O (process
// start-up and the marks themselves cancel). TCG has no PMU, so this is the only instruction count
// of the kernel's I/O path we can get in the guest.
//
// Counting is per translation block, added when a block starts executing: a block left early (an
// interrupt, an exception, an MMIO access that ends the block) still counts whole, so the totals
// are slightly high; the error is the same for every engine measured.
//
// Built by run_nvme_bench.sh: gcc -shared -fPIC -O2 -fvisibility=hidden. Written against the QEMU
// plugin API version 4 (QEMU 9.2 .. 10.0; 10.1 accepts it too); the few declarations it needs are
// spelled out below rather than taken from QEMU's qemu-plugin.h, which is not packaged by Debian.
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

// --- QEMU plugin API (include/qemu/qemu-plugin.h, API version 4) ---
typedef uint64_t qemu_plugin_id_t;
typedef struct {
  const char* target_name;
  struct {
    int min;
    int cur;
  } version;
  bool system_emulation;
  union {
    struct {
      int smp_vcpus;
      int max_vcpus;
    } system;
  };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_plugin_scoreboard;
typedef struct {
  struct qemu_plugin_scoreboard* score;
  size_t offset;
} qemu_plugin_u64;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void* userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb* tb, size_t idx);
size_t qemu_plugin_insn_data(const struct qemu_plugin_insn* insn, void* dest, size_t len);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn* insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn* insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void* userdata);
struct qemu_plugin_scoreboard* qemu_plugin_scoreboard_new(size_t element_size);
void qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(struct qemu_plugin_tb* tb,
                                                       enum qemu_plugin_op op,
                                                       qemu_plugin_u64 entry, uint64_t imm);
uint64_t qemu_plugin_u64_sum(qemu_plugin_u64 entry);
// --- end of the API ---

EXPORT int qemu_plugin_version = 4;

// nopl 0x7654321(%rax): a multi-byte NOP no compiler emits (padding NOPs have displacement 0).
static const uint8_t kMarker[] = {0x0f, 0x1f, 0x80, 0x21, 0x43, 0x65, 0x07};

static qemu_plugin_u64 count;
static uint64_t marks;

static void on_marker(unsigned int vcpu_index, void* userdata) {
  (void)vcpu_index, (void)userdata;
  const uint64_t n = __atomic_add_fetch(&marks, 1, __ATOMIC_SEQ_CST);
  fprintf(stderr, "\nINSN-MARK %" PRIu64 " %" PRIu64 "\n", n, qemu_plugin_u64_sum(count));
  fflush(stderr);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, count, n);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    uint8_t bytes[sizeof kMarker];
    if (qemu_plugin_insn_size(insn) == sizeof kMarker &&
        qemu_plugin_insn_data(insn, bytes, sizeof bytes) == sizeof bytes &&
        memcmp(bytes, kMarker, sizeof kMarker) == 0) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
  }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info, int argc,
                               char** argv) {
  (void)argc, (void)argv;
  if (info->version.min > 4 || info->version.cur < 4) {
    fprintf(stderr, "insn_count_plugin: QEMU's plugin API is %d..%d, this plugin speaks 4\n",
            info->version.min, info->version.cur);
    return -1;
  }
  count.score = qemu_plugin_scoreboard_new(sizeof(uint64_t));
  count.offset = 0;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  fprintf(stderr, "insn_count_plugin: counting %s instructions on %d vCPUs\n", info->target_name,
          info->system.smp_vcpus);
  return 0;
}
