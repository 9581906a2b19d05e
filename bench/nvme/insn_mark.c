// insn_mark: executes the marker instruction insn_count_plugin.c watches for, once, and exits.
// Built static by run_nvme_bench.sh (gcc -static) and run in the guest around each measured run.
int main(void) {
  __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x21, 0x43, 0x65, 0x07");  // nopl 0x7654321(%rax)
  return 0;
}
