#!/usr/bin/env bash
# run_nvme_bench.sh: 4 KiB random reads and writes in the tests/vm QEMU guest (TCG, emulated
# IOMMU, emulated NVMe with SR-IOV): our userspace NVMe driver (nvme_bench, over VFIO) on VF1
# against the kernel's nvme driver on VF2 driven by fio (io_uring at the same queue depth, and
# psync), each VF on its own private 64 MiB namespace; then our driver and fio under valgrind's
# callgrind for fixed numbers of I/Os (user-space instructions per I/O); then a second boot with
# a QEMU TCG plugin counting the whole guest's instructions per I/O of every engine (TCG has no
# PMU: perf cannot count instructions in the guest). Prints the tables (markdown).
#
#   bench/nvme/run_nvme_bench.sh
#   env: RUNTIME   seconds per timed run (default 10)
#        QD        queue depth of nvme_bench and fio io_uring (default 32)
#        IOS       I/Os per callgrind run (default 20000)
#        RWS       workloads (default "randread randwrite")
#        REPEAT    rounds of the timed runs, every engine once per round; the table shows the
#                  round with the median IOPS (default 3)
#        VM_TIMEOUT  guest timeout in seconds (default 1800)
#        INSN      1 (default): a second boot with insn_count_plugin.so loaded into QEMU, for the
#                  whole guest's instructions per I/O (user + kernel, every vCPU) of every
#                  engine; 0: skip it
#        INSN_IOS  the two I/O counts of each engine's instruction runs (default "2000 10000")
#        KEEP_DIR  keep the guest console, the fio JSON and the callgrind files there
#        PARSE_ONLY=CONSOLE_LOG [PARSE_ONLY_INSN=CONSOLE_LOG]  build and boot nothing: print the
#                  tables from kept consoles (console.txt, console-insn.txt)
#
# Builds //bench/nvme:nvme_bench, installs fio and valgrind with apt-get if they are missing
# (Debian packages; they run in the guest from the host's copies, with their libraries), builds
# an initramfs with tests/vm/build_initramfs.sh holding bench_scenario.sh, nvme_bench, fio,
# valgrind (+ its callgrind tool via VM_EXTRA_PATHS) and perf if the host has it, boots it with
# tests/vm/run_vm.sh and parses the console; for the second boot it compiles
# insn_count_plugin.c and insn_mark.c with gcc and points run_vm.sh's VM_QEMU at a wrapper that
# adds -plugin.
#
# TCG timings are emulation artefacts (every guest instruction and every device access is
# emulated, and the IOMMU is a model): only ratios and instruction counts carry over to
# hardware, and even ratios only roughly (see docs/benchmarks.md).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RUNTIME=${RUNTIME:-10}
QD=${QD:-32}
IOS=${IOS:-20000}
RWS=${RWS:-randread randwrite}
REPEAT=${REPEAT:-3}
INSN=${INSN:-1}
INSN_IOS=${INSN_IOS:-2000 10000}
export VM_TIMEOUT=${VM_TIMEOUT:-1800}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfbroker-nvme-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
status=0
if [[ -n ${PARSE_ONLY:-} ]]; then
  tr -d '\r' < "$PARSE_ONLY" > "$WORK/console.txt"
  [[ -f ${PARSE_ONLY_INSN:-} ]] && tr -d '\r' < "$PARSE_ONLY_INSN" > "$WORK/console-insn.txt"
  : > "$WORK/run_vm.out"
  REV="(from $PARSE_ONLY)"
else
  need=()
  command -v fio >/dev/null || need+=(fio)
  command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null || need+=(valgrind)
  command -v jq >/dev/null || need+=(jq)
  if ((${#need[@]})); then
    echo "run_nvme_bench: installing ${need[*]}"
    SUDO=(); ((EUID == 0)) || SUDO=(sudo)
    "${SUDO[@]}" apt-get install -y "${need[@]}"
  fi

  (cd "$REPO" && bazel build --jobs=3 //bench/nvme:nvme_bench)
  # What was built: the commit, and whether the driver or the bench had uncommitted changes.
  REV=$(git -C "$REPO" rev-parse --short HEAD)
  if [[ -n $(git -C "$REPO" status --porcelain -- vfdrivers bench) ]]; then
    REV+=" + uncommitted changes under vfdrivers/ or bench/"
  fi
  # A private copy: other builds may replace bazel-bin while the guest image is assembled.
  cp "$REPO/bazel-bin/bench/nvme/nvme_bench" "$WORK/nvme_bench"

  # The scenario with the parameters as its line 3 (line 2 stays its description for /init's log).
  SCENARIO=$WORK/nvme-bench.sh
  {
    sed -n 1,2p "$HERE/bench_scenario.sh"
    echo "BENCH_RUNTIME=$RUNTIME BENCH_QD=$QD BENCH_IOS=$IOS BENCH_RWS='$RWS' BENCH_REPEAT=$REPEAT BENCH_INSN_IOS='$INSN_IOS'"
    sed -n '3,$p' "$HERE/bench_scenario.sh"
  } > "$SCENARIO"

  BINARIES=("$WORK/nvme_bench" "$(readlink -f "$(command -v fio)")" /usr/bin/valgrind /usr/bin/valgrind.bin)
  [[ -x /usr/bin/valgrind.bin ]] || BINARIES=("${BINARIES[@]:0:3}")  # non-Debian: valgrind is the ELF
  # perf is tried once in the guest (TCG has no PMU); a wrapper script is no use there.
  if perf=$(command -v perf) && file -L "$perf" | grep -q ELF; then BINARIES+=("$perf"); fi
  VG=/usr/libexec/valgrind
  [[ -d $VG ]] || VG=/usr/lib/x86_64-linux-gnu/valgrind
  export VM_EXTRA_PATHS="$VG/callgrind-amd64-linux $VG/vgpreload_core-amd64-linux.so $VG/default.supp"
  "$REPO/tests/vm/build_initramfs.sh" "$WORK/initramfs.cpio.gz" "$SCENARIO" "${BINARIES[@]}"

  LOG=$WORK/console.log
  "$REPO/tests/vm/run_vm.sh" "$WORK/initramfs.cpio.gz" "$LOG" > "$WORK/run_vm.out" 2>&1 || status=$?
  tr -d '\r' < "$LOG" > "$WORK/console.txt"
  grep -a -E '^(vm:|VM-)' "$WORK/console.txt" | grep -v '^vm: perf' || true
  grep -a '^vm: perf' "$WORK/console.txt" | cut -c1-300 || true
  if ((status != 0)); then
    echo "run_nvme_bench: the guest run failed (run_vm.sh status $status); the tail of its output:" >&2
    grep -a -v -E '^[A-Za-z0-9+/=]{60,}$' "$WORK/run_vm.out" | tail -40 >&2
  fi

  # Second boot: QEMU with insn_count_plugin (through run_vm.sh's VM_QEMU), the scenario in insn
  # mode, insn_mark in the guest.
  if [[ $INSN == 1 ]]; then
    gcc -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden -o "$WORK/insn_count_plugin.so" \
      "$HERE/insn_count_plugin.c"
    gcc -static -O2 -Wall -Werror -o "$WORK/insn_mark" "$HERE/insn_mark.c"
    printf '#!/bin/sh\nexec %q -plugin %q "$@"\n' "${VM_QEMU:-qemu-system-x86_64}" \
      "$WORK/insn_count_plugin.so" > "$WORK/qemu-insn"
    chmod +x "$WORK/qemu-insn"
    sed "3s/\$/ BENCH_MODE=insn/" "$SCENARIO" > "$WORK/nvme-bench-insn.sh"
    "$REPO/tests/vm/build_initramfs.sh" "$WORK/initramfs-insn.cpio.gz" "$WORK/nvme-bench-insn.sh" \
      "${BINARIES[@]}" "$WORK/insn_mark"
    s2=0
    VM_QEMU=$WORK/qemu-insn "$REPO/tests/vm/run_vm.sh" "$WORK/initramfs-insn.cpio.gz" \
      "$WORK/console-insn.log" > "$WORK/run_vm-insn.out" 2>&1 || s2=$?
    tr -d '\r' < "$WORK/console-insn.log" > "$WORK/console-insn.txt"
    grep -a -E '^(vm:|VM-|insn_count_plugin)' "$WORK/console-insn.txt" || true
    if ((s2 != 0)); then
      echo "run_nvme_bench: the instruction-count boot failed (run_vm.sh status $s2):" >&2
      tail -40 "$WORK/run_vm-insn.out" >&2
      status=$s2
    fi
  fi
fi

# --- parse -----------------------------------------------------------------------------------
# The parameters the guest ran with (a kept console may come from another command line).
for kv in $(grep -a -m1 '^BENCH-PARAMS ' "$WORK/console.txt" | cut -d' ' -f2-); do
  v=${kv#*=}
  case $kv in
    RUNTIME=*) RUNTIME=$v ;; QD=*) QD=$v ;; IOS=*) IOS=$v ;; REPEAT=*) REPEAT=$v ;;
    RWS=*) RWS=${v//,/ } ;;
    INSN_IOS=*) INSN_IOS=${v//,/ } ;;
  esac
done
D=$WORK/out; mkdir -p "$D"
split_console() {  # console file
  awk -v d="$D" '
    function key(e, rw, qd, ext) { k = e "." rw "." qd "." ext; return d "/" k "." (++seen[k]) }
    /^BENCH-FIO-BEGIN / { f = key($2, $3, $4, "json"); printf "" > f; next }
    /^BENCH-FIO-END/ { close(f); f = ""; next }
    /^BENCH-CALLGRIND-BEGIN / { c = d "/callgrind." $2 "." $3 ".b64"; printf "" > c; next }
    /^BENCH-CALLGRIND-END/ { close(c); c = ""; next }
    f != "" { print >> f; next }
    c != "" { print >> c; next }
    /^BENCH-CPU / { o = key($2, $3, $4, "cpu"); print $5, $6 > o; close(o); next }
    /^BENCH-RESULT / { j = $0; sub(/^BENCH-RESULT [^ ]+ [^ ]+ [^ ]+ /, "", j);
                       o = key($2, $3, $4, "result"); print j > o; close(o) }
  ' "$1"
}
split_console "$WORK/console.txt"
[[ -s $WORK/console-insn.txt ]] && split_console "$WORK/console-insn.txt"
for b in "$D"/callgrind.*.b64; do
  [[ -e $b ]] || continue
  base64 -d "$b" | gunzip > "${b%.b64}.out" 2>/dev/null || echo "run_nvme_bench: $b: corrupt" >&2
done

# $D: <engine>.<rw>.<qd>.{result,json,cpu}.<round>: nvme_bench's JSON (engines ours and
# ours-callgrind), fio's JSON, the guest's busy ticks; callgrind.<rw>.<qd>.out.
# IOPS, the process's CPU microseconds per I/O (nvme_bench: getrusage; fio: usr_cpu + sys_cpu)
# and the whole guest's (all CPUs' busy time from /proc/stat over the run) of a run:
# "iops cpu_us guest_us"; "-" for what is missing.
measure_round() {  # engine rw qd round
  local e=$1 rw=$2 qd=$3 n=$4 f out="- - -" ios=""
  if [[ $e == ours* ]]; then
    f=$D/$e.$rw.$qd.result.$n
    [[ -s $f ]] && out=$(jq -r '"\(.iops) \(.cpu_us_per_io) \(.ios)"' "$f")
  else
    f=$D/$e.$rw.$qd.json.$n
    local dir="read"; [[ $rw == *write* ]] && dir="write"
    [[ -s $f ]] && out=$(jq -r --arg d "$dir" '.jobs[0] as $j | $j[$d].total_ios as $n
      | "\($j[$d].iops) \(if $n > 0 then ($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime * 1000 / $n else "-" end) \($n)"' "$f")
  fi
  local iops cpu guest=-
  read -r iops cpu ios <<< "$out"
  if [[ -s $D/$e.$rw.$qd.cpu.$n && $ios =~ ^[0-9]+$ ]] && ((ios > 0)); then
    guest=$(awk -v n="$ios" '{ printf "%.2f", $1 / $2 * 1e6 / n }' "$D/$e.$rw.$qd.cpu.$n")
  fi
  echo "$iops $cpu $guest"
}
# The round with the median IOPS: "iops cpu_us guest_us rounds"; "- - - 0" when none.
measure() {  # engine rw qd
  local n=1 rows=()
  while [[ -e $D/$1.$2.$3.result.$n || -e $D/$1.$2.$3.json.$n ]]; do
    rows+=("$(measure_round "$1" "$2" "$3" "$n")"); n=$((n + 1))
  done
  ((${#rows[@]})) || { echo "- - - 0"; return; }
  printf '%s\n' "${rows[@]}" | grep -v '^-' | sort -g -k1,1 |
    awk -v r="${#rows[@]}" '{ l[NR] = $0 } END { if (NR == 0) print "- - - " r; else print l[int((NR + 1) / 2)], r }'
}
# Instructions per I/O from callgrind: "driver stage submit poll loop empty_per_io empty_cost"
instr() {  # rw qd
  local cg=$D/callgrind.$1.$2.out
  [[ -s $cg && -s $D/ours-callgrind.$1.$2.result.1 ]] || { echo "- - - - - - - -"; return; }
  # Inclusive cost of each wrapper minus its own (self) cost: what the driver call under it cost.
  local costs
  costs=$( (callgrind_annotate --inclusive=yes --threshold=100 "$cg" | sed 's/^/incl /'
            callgrind_annotate --inclusive=no --threshold=100 "$cg" | sed 's/^/self /') |
    sed -n 's/^\(incl\|self\) *\([0-9,]*\) ([^)]*) *[^ ]*:nvme_bench::\([A-Za-z]*\)(.*/\1:\3=\2/p' | tr -d ,)
  local ios empty idle
  read -r ios empty idle < <(jq -r '"\(.ios) \(.empty_polls) \(.idle_polls)"' "$D/ours-callgrind.$1.$2.result.1")
  awk -v ios="$ios" -v empty="$empty" -v idle="$idle" -v costs="$costs" 'BEGIN {
    n = split(costs, kv, "\n"); for (i = 1; i <= n; i++) { split(kv[i], p, "="); c[p[1]] = p[2] }
    split("StageOne SubmitStaged PollIo PollIdle", w, " ")
    for (i in w) d[w[i]] = c["incl:" w[i]] - c["self:" w[i]]
    e = idle ? d["PollIdle"] / idle : 0                 # one empty Poll, in the driver
    el = idle ? c["incl:IdlePollLoop"] / idle : 0       # one empty iteration of a poll loop
    stage = d["StageOne"] / ios; submit = d["SubmitStaged"] / ios
    poll = (d["PollIo"] - empty * e) / ios
    loop = (c["incl:MeasuredIoLoop"] - empty * el) / ios
    printf "%.0f %.0f %.1f %.0f %.0f %.1f %.0f %.0f\n", stage + submit + poll, stage, submit, poll, loop, empty / ios, e, el
  }'
}
# Whole-guest instructions per I/O from the insn boot, "raw spin_free" ("- -" when missing).
# fio: the slope between its two runs (N1 and N2 I/Os; its start-up and exit cancel).
# Ours: the run with the most I/Os, whose marks enclose only the I/O loop. raw counts everything;
# spin_free takes out our driver's empty polls (busy-waiting on the emulated device, their number
# depends on its speed) at the cost of an empty poll as the plugin counted it in IdlePollLoop.
guest_instr() {  # engine rw qd
  local e=$1 rw=$2 qd=$3 f=$WORK/console-insn.txt
  [[ -s $f ]] || { echo "- -"; return; }
  mark_at() { awk -v m="$1" '$1 == "INSN-MARK" && $2 == m { print $3; exit }' "$f"; }
  local pts=() k=0 line n b x ib ix ios empty idle t0 t1 el
  while read -r line; do
    read -r _ _ _ _ n b x ib ix <<< "$line"
    k=$((k + 1))
    t0=$(mark_at "$b"); t1=$(mark_at "$x")
    [[ -n $t0 && -n $t1 ]] || continue
    empty=0 el=0
    if [[ $e == ours ]]; then
      read -r ios empty idle < <(jq -r '"\(.ios) \(.empty_polls) \(.idle_polls)"' "$D/insn-ours.$rw.$qd.result.$k")
      local i0 i1; i0=$(mark_at "$ib"); i1=$(mark_at "$ix")
      [[ -n $i0 && -n $i1 ]] && ((idle > 0)) && el=$(awk -v a="$i0" -v b="$i1" -v n="$idle" 'BEGIN { print (b - a) / n }')
    else
      local dir="read"; [[ $rw == *write* ]] && dir="write"
      ios=$(jq -r --arg d "$dir" '.jobs[0][$d].total_ios' "$D/insn-$e.$rw.$qd.json.$k")
    fi
    pts+=("$ios $((t1 - t0)) $empty $el")
  done < <(grep -a "^BENCH-INSN insn-$e $rw $qd " "$f")
  ((${#pts[@]})) || { echo "- -"; return; }
  if [[ $e == ours ]]; then
    awk '{ printf "%.0f %.0f %.1f %.1f\n", $2 / $1, ($2 - $3 * $4) / $1, $3 / $1, $4 }' <<< "${pts[-1]}"
    return
  fi
  ((${#pts[@]} >= 2)) || { echo "- -"; return; }
  printf '%s\n' "${pts[0]}" "${pts[-1]}" | awk '
    NR == 1 { n1 = $1; c1 = $2 } NR == 2 { n2 = $1; c2 = $2 }
    END { if (n2 == n1) print "- -"; else printf "%.0f %.0f\n", (c2 - c1) / (n2 - n1), (c2 - c1) / (n2 - n1) }'
}
# fio's user-space instructions per I/O (callgrind, slope between its two runs); "-" if missing.
fio_user_instr() {  # engine rw qd
  grep -a "^BENCH-FIOCG $1 $2 $3 " "$WORK/console.txt" | awk '
    NR == 1 { n1 = $5; c1 = $6 } { n2 = $5; c2 = $6 }
    END { if (NR < 2 || n2 == n1) print "-"; else printf "%.0f\n", (c2 - c1) / (n2 - n1) }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
num() {  # 1234567.8 -> 1,234,568; "-" stays
  awk -v a="$1" 'BEGIN { if (a == "-" || a == "") { print "-"; exit }
    s = sprintf("%.0f", a); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'
}
fmt1() { awk -v a="$1" 'BEGIN { if (a == "-" || a == "") print "-"; else printf "%.1f", a }'; }

echo
echo "NVMe VF, 4 KiB random I/O, QEMU TCG guest ($(date -u +%F)); RUNTIME=$RUNTIME s, QD=$QD, REPEAT=$REPEAT (median round), callgrind IOS=$IOS; tree $REV"
echo
echo "| workload | engine | QD | IOPS (TCG) | vs fio io_uring | vs fio psync | process CPU us/IO (TCG) | guest CPU us/IO (TCG) | guest instr/IO (all) | guest instr/IO w/o our empty polls | fio io_uring instr/IO ÷ this | user-space instr/IO (callgrind) | driver instr/IO submit+completion (callgrind) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for rw in $RWS; do
  read -r uring_iops _ < <(measure fio-io_uring "$rw" "$QD")
  read -r psync_iops _ < <(measure fio-psync "$rw" 1)
  read -r uring_gi _ < <(guest_instr fio-io_uring "$rw" "$QD")
  for row in "ours $QD vfbroker nvme driver (VFIO, polled)" "ours 1 vfbroker nvme driver (VFIO, polled)" \
             "fio-io_uring $QD kernel nvme, fio io_uring" \
             "fio-io_uring-tuned $QD kernel nvme, fio io_uring --fixedbufs --registerfiles --norandommap" \
             "fio-psync 1 kernel nvme, fio psync"; do
    read -r e qd label <<< "$row"
    read -r iops cpu guest _ < <(measure "$e" "$rw" "$qd")
    ins="n/a (kernel)" user=-
    if [[ $e == ours ]]; then
      read -r ins _ _ _ user _ < <(instr "$rw" "$qd"); ins=$(num "$ins")
    elif [[ $e != fio-io_uring-tuned ]]; then
      user=$(fio_user_instr "$e" "$rw" "$qd")
    fi
    gi=- gs=-
    [[ $e == fio-io_uring-tuned ]] || read -r gi gs < <(guest_instr "$e" "$rw" "$qd")
    echo "| $rw | $label | $qd | $(num "$iops") | $(ratio "$iops" "$uring_iops") | $(ratio "$iops" "$psync_iops") | $(fmt1 "$cpu") | $(fmt1 "$guest") | $(num "$gi") | $(num "$gs") | $(ratio "$uring_gi" "$gs") | $(num "$user") | $ins |"
  done
done
echo
echo "Our driver's instructions per I/O (callgrind, $IOS I/Os per run; empty polls subtracted):"
echo
echo "| workload | QD | stage (Read/Write) | submit (doorbell) | poll (completion) | driver total | bench loop total | empty polls per I/O | instr per empty poll |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for rw in $RWS; do
  for qd in 1 "$QD"; do
    read -r drv stage submit poll loop epi ecost _ < <(instr "$rw" "$qd")
    echo "| $rw | $qd | $(num "$stage") | $(fmt1 "$submit") | $(num "$poll") | $(num "$drv") | $(num "$loop") | $epi | $ecost |"
  done
done
echo
echo "Command: RUNTIME=$RUNTIME QD=$QD IOS=$IOS REPEAT=$REPEAT INSN_IOS='$INSN_IOS' bench/nvme/run_nvme_bench.sh"

if [[ -n ${KEEP_DIR:-} ]]; then
  mkdir -p "$KEEP_DIR"
  cp "$WORK/console.txt" "$WORK/run_vm.out" "$KEEP_DIR/"
  [[ -f $WORK/console-insn.txt ]] && cp "$WORK/console-insn.txt" "$KEEP_DIR/"
  find "$D" -type f ! -name '*.b64' -exec cp {} "$KEEP_DIR/" \;
  echo "run_nvme_bench: kept the console, fio JSON and callgrind files in $KEEP_DIR"
fi
exit "$status"
