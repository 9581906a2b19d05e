# guest_bench_lib.sh: what an in-guest benchmark does around its scenario, sourced by
# bench/net/igbvf/run_guest_echo_bench.sh (bash). bench/nvme/run_nvme_bench.sh does the same
# steps inline (it came first); it can source this too.
#
#   guest_bench_scenario SRC DEST "K=V ..."   the scenario with the parameters as its line 3
#                                             (line 2 stays its description for /init's log)
#   guest_bench_boot WORK NAME SCENARIO BINARY...
#                       builds WORK/NAME.cpio.gz with tests/vm/build_initramfs.sh (VM_EXTRA_PATHS,
#                       VM_EXTRA_MODULES pass through), boots it with tests/vm/run_vm.sh (VM_QEMU,
#                       VM_KERNEL, VM_TIMEOUT pass through); the console, without CRs, in
#                       WORK/NAME.txt, run_vm.sh's output in WORK/NAME.out; returns run_vm.sh's
#                       status
#   guest_bench_insn_tools WORK   compiles bench/nvme's TCG instruction-counting plugin and its
#                       guest marker (insn_mark) into WORK and writes WORK/qemu-insn, a QEMU that
#                       loads the plugin (give it as VM_QEMU; add WORK/insn_mark to the binaries)
# Needs GUEST_BENCH_REPO (the repository root) set by the caller.

guest_bench_scenario() {
  { sed -n 1,2p "$1"; echo "$3"; sed -n '3,$p' "$1"; } > "$2"
  chmod +x "$2"
}

guest_bench_boot() {
  local work=$1 name=$2 scenario=$3 status=0
  shift 3
  "$GUEST_BENCH_REPO/tests/vm/build_initramfs.sh" "$work/$name.cpio.gz" "$scenario" "$@" \
    > "$work/$name.build.out" 2>&1 || { cat "$work/$name.build.out" >&2; return 1; }
  "$GUEST_BENCH_REPO/tests/vm/run_vm.sh" "$work/$name.cpio.gz" "$work/$name.log" \
    > "$work/$name.out" 2>&1 || status=$?
  tr -d '\r' < "$work/$name.log" > "$work/$name.txt" 2>/dev/null || : > "$work/$name.txt"
  if ((status != 0)); then
    echo "guest_bench: the $name boot failed (run_vm.sh status $status); the tail of its output:" >&2
    grep -a -v -E '^[A-Za-z0-9+/=]{60,}$' "$work/$name.out" | tail -30 >&2
    grep -a -E '^(vm:|VM-)' "$work/$name.txt" | tail -30 >&2
  fi
  return $status
}

guest_bench_insn_tools() {
  local work=$1 nvme=$GUEST_BENCH_REPO/bench/nvme
  gcc -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden -o "$work/insn_count_plugin.so" \
    "$nvme/insn_count_plugin.c" || return 1
  gcc -static -O2 -Wall -Werror -o "$work/insn_mark" "$nvme/insn_mark.c" || return 1
  printf '#!/bin/sh\nexec %q -plugin %q "$@"\n' "${VM_QEMU:-qemu-system-x86_64}" \
    "$work/insn_count_plugin.so" > "$work/qemu-insn"
  chmod +x "$work/qemu-insn"
}
