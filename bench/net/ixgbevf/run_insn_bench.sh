#!/bin/bash
# Instructions per packet, ixgbevf beside igbvf and the other drivers: bench/net/run_insn_bench.sh
# now prints every driver's figures in one table; this name stays for the commands already
# written down.
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../run_insn_bench.sh" "$@"
