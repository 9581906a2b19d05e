#!/usr/bin/env bash
# run_nvme_bench.sh: 4 KiB random reads and writes in the tests/vm QEMU guest (TCG, emulated
# IOMMU, emulated NVMe with SR-IOV): our userspace NVMe driver (nvme_bench, over VFIO) on VF1
# against the kernel's nvme driver on VF2 driven by fio (io_uring at the same queue depth, and
# psync), each VF on its own private 64 MiB namespace; then our driver under valgrind's callgrind
# for a fixed number of I/Os, for instructions per I/O. Prints one table (markdown).
#
#   bench/nvme/run_nvme_bench.sh
#   env: RUNTIME   seconds per timed run (default 10)
#        QD        queue depth of nvme_bench and fio io_uring (default 32)
#        IOS       I/Os per callgrind run (default 20000)
#        RWS       workloads (default "randread randwrite")
#        VM_TIMEOUT  guest timeout in seconds (default 1800)
#        KEEP_DIR  keep the guest console, the fio JSON and the callgrind files there
#
# Builds //bench/nvme:nvme_bench, installs fio and valgrind with apt-get if they are missing
# (Debian packages; they run in the guest from the host's copies, with their libraries), builds
# an initramfs with tests/vm/build_initramfs.sh holding bench_scenario.sh, nvme_bench, fio,
# valgrind (+ its callgrind tool via VM_EXTRA_PATHS) and perf if the host has it, boots it with
# tests/vm/run_vm.sh and parses the console.
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
export VM_TIMEOUT=${VM_TIMEOUT:-1800}

need=()
command -v fio >/dev/null || need+=(fio)
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null || need+=(valgrind)
command -v jq >/dev/null || need+=(jq)
if ((${#need[@]})); then
  echo "run_nvme_bench: installing ${need[*]}"
  SUDO=(); ((EUID == 0)) || SUDO=(sudo)
  "${SUDO[@]}" apt-get install -y "${need[@]}"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfbroker-nvme-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

(cd "$REPO" && bazel build --jobs=3 //bench/nvme:nvme_bench)
# A private copy: other builds may replace bazel-bin while the guest image is assembled.
cp "$REPO/bazel-bin/bench/nvme/nvme_bench" "$WORK/nvme_bench"

# The scenario with the parameters as its line 3 (line 2 stays its description for /init's log).
SCENARIO=$WORK/nvme-bench.sh
{
  sed -n 1,2p "$HERE/bench_scenario.sh"
  echo "BENCH_RUNTIME=$RUNTIME BENCH_QD=$QD BENCH_IOS=$IOS BENCH_RWS='$RWS'"
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
status=0
"$REPO/tests/vm/run_vm.sh" "$WORK/initramfs.cpio.gz" "$LOG" > "$WORK/run_vm.out" 2>&1 || status=$?
tr -d '\r' < "$LOG" > "$WORK/console.txt"
grep -a -E '^(vm:|VM-)' "$WORK/console.txt" | grep -v '^vm: perf' || true
grep -a '^vm: perf' "$WORK/console.txt" | cut -c1-300 || true
if ((status != 0)); then
  echo "run_nvme_bench: the guest run failed (run_vm.sh status $status); the tail of its output:" >&2
  grep -a -v -E '^[A-Za-z0-9+/=]{60,}$' "$WORK/run_vm.out" | tail -40 >&2
fi

# --- parse -----------------------------------------------------------------------------------
D=$WORK/out; mkdir -p "$D"
awk -v d="$D" '
  /^BENCH-FIO-BEGIN / { f = d "/" $2 "." $3 "." $4 ".json"; printf "" > f; next }
  /^BENCH-FIO-END/ { close(f); f = ""; next }
  /^BENCH-CALLGRIND-BEGIN / { c = d "/callgrind." $2 "." $3 ".b64"; printf "" > c; next }
  /^BENCH-CALLGRIND-END/ { close(c); c = ""; next }
  f != "" { print >> f; next }
  c != "" { print >> c; next }
  /^BENCH-CPU / { print $5, $6 > (d "/" $2 "." $3 "." $4 ".cpu"); next }
  /^BENCH-RESULT / { j = $0; sub(/^BENCH-RESULT [^ ]+ [^ ]+ [^ ]+ /, "", j);
                     print j > (d "/" $2 "." $3 "." $4 ".result") }
' "$WORK/console.txt"
for b in "$D"/callgrind.*.b64; do
  [[ -e $b ]] || continue
  base64 -d "$b" | gunzip > "${b%.b64}.out" 2>/dev/null || echo "run_nvme_bench: $b: corrupt" >&2
done

# ours.<rw>.<qd>.result (timed) / ours-callgrind.<rw>.<qd>.result (count) / fio-<engine>.<rw>.<qd>.json
jf() { jq -r "$2" "$1" 2>/dev/null || echo "-"; }
# IOPS, the process's CPU microseconds per I/O (nvme_bench: getrusage; fio: usr_cpu + sys_cpu)
# and the whole guest's (all CPUs' busy time from /proc/stat over the run) of a run:
# "iops cpu_us guest_us"; "-" for what is missing.
measure() {  # engine rw qd
  local e=$1 rw=$2 qd=$3 f out="- - -" ios=""
  if [[ $e == ours ]]; then
    f=$D/ours.$rw.$qd.result
    [[ -s $f ]] && out=$(jq -r '"\(.iops) \(.cpu_us_per_io) \(.ios)"' "$f")
  else
    f=$D/$e.$rw.$qd.json
    local dir=read; [[ $rw == *write* ]] && dir=write
    [[ -s $f ]] && out=$(jq -r --arg d "$dir" '.jobs[0] as $j | $j[$d].total_ios as $n
      | "\($j[$d].iops) \(if $n > 0 then ($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime * 1000 / $n else "-" end) \($n)"' "$f")
  fi
  local iops cpu guest=-
  read -r iops cpu ios <<< "$out"
  if [[ -s $D/$e.$rw.$qd.cpu && $ios =~ ^[0-9]+$ ]] && ((ios > 0)); then
    guest=$(awk -v n="$ios" '{ printf "%.2f", $1 / $2 * 1e6 / n }' "$D/$e.$rw.$qd.cpu")
  fi
  echo "$iops $cpu $guest"
}
# Instructions per I/O from callgrind: "driver stage submit poll loop empty_per_io empty_cost"
instr() {  # rw qd
  local cg=$D/callgrind.$1.$2.out r=$D/ours-callgrind.$1.$2.result
  [[ -s $cg && -s $r ]] || { echo "- - - - - - -"; return; }
  local costs
  costs=$(callgrind_annotate --inclusive=yes --threshold=100 "$cg" |
    sed -n 's/^ *\([0-9,]*\) ([^)]*) *[^ ]*:nvme_bench::\([A-Za-z]*\)(.*/\2=\1/p' | tr -d ,)
  local ios polls empty idle
  read -r ios empty idle < <(jq -r '"\(.ios) \(.empty_polls) \(.idle_polls)"' "$r")
  awk -v ios="$ios" -v empty="$empty" -v idle="$idle" -v costs="$costs" 'BEGIN {
    n = split(costs, kv, "\n"); for (i = 1; i <= n; i++) { split(kv[i], p, "="); c[p[1]] = p[2] }
    e = idle ? c["PollIdle"] / idle : 0          # one empty Poll (the driver)
    el = idle ? c["IdlePollLoop"] / idle : 0     # one empty iteration of a poll loop
    stage = c["StageOne"] / ios; submit = c["SubmitStaged"] / ios
    poll = (c["PollIo"] - empty * e) / ios
    loop = (c["MeasuredIoLoop"] - empty * el) / ios
    printf "%.0f %.0f %.0f %.0f %.0f %.1f %.0f\n", stage + submit + poll, stage, submit, poll, loop, empty / ios, e
  }'
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
echo "NVMe VF, 4 KiB random I/O, QEMU TCG guest ($(date -u +%F)); RUNTIME=$RUNTIME s, QD=$QD, callgrind IOS=$IOS"
echo
echo "| workload | engine | QD | IOPS (TCG) | vs fio io_uring | vs fio psync | process CPU us/IO (TCG) | guest CPU us/IO (TCG) | instr/IO submit+completion |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for rw in $RWS; do
  read -r uring_iops _ < <(measure fio-io_uring "$rw" "$QD")
  read -r psync_iops _ < <(measure fio-psync "$rw" 1)
  for row in "ours $QD vfbroker nvme driver (VFIO, polled)" "ours 1 vfbroker nvme driver (VFIO, polled)" \
             "fio-io_uring $QD kernel nvme, fio io_uring" \
             "fio-io_uring-tuned $QD kernel nvme, fio io_uring --fixedbufs --registerfiles --norandommap" \
             "fio-psync 1 kernel nvme, fio psync"; do
    read -r e qd label <<< "$row"
    read -r iops cpu guest < <(measure "$e" "$rw" "$qd")
    ins="n/a (no PMU in TCG)"
    if [[ $e == ours ]]; then read -r ins _ < <(instr "$rw" "$qd"); ins=$(num "$ins"); fi
    echo "| $rw | $label | $qd | $(num "$iops") | $(ratio "$iops" "$uring_iops") | $(ratio "$iops" "$psync_iops") | $(fmt1 "$cpu") | $(fmt1 "$guest") | $ins |"
  done
done
echo
echo "Our driver's instructions per I/O (callgrind, $IOS I/Os per run; empty polls subtracted):"
echo
echo "| workload | QD | stage (Read/Write) | submit (doorbell) | poll (completion) | driver total | bench loop total | empty polls per I/O | instr per empty poll |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for rw in $RWS; do
  for qd in 1 "$QD"; do
    read -r drv stage submit poll loop epi ecost < <(instr "$rw" "$qd")
    echo "| $rw | $qd | $(num "$stage") | $(num "$submit") | $(num "$poll") | $(num "$drv") | $(num "$loop") | $epi | $ecost |"
  done
done
echo
echo "Command: RUNTIME=$RUNTIME QD=$QD IOS=$IOS bench/nvme/run_nvme_bench.sh"

if [[ -n ${KEEP_DIR:-} ]]; then
  mkdir -p "$KEEP_DIR"
  cp "$WORK/console.txt" "$WORK/run_vm.out" "$KEEP_DIR/"
  cp "$D"/*.json "$D"/*.result "$D"/*.out "$KEEP_DIR/" 2>/dev/null || true
  echo "run_nvme_bench: kept the console, fio JSON and callgrind files in $KEEP_DIR"
fi
exit "$status"
