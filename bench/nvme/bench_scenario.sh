#!/bin/sh
# nvme-bench: our userspace NVMe driver (VF1, vfio-pci) vs the kernel nvme driver (VF2, fio)
#   - enables 2 NVMe VFs (driver autoprobe off), brings each secondary controller online with its
#     own private namespace (VF1: nsid 2, VF2: nsid 3), as scenarios/smoke.sh does;
#   - binds VF1 to vfio-pci and VF2 to the kernel's nvme driver (which shows nsid 3 as a block
#     device);
#   - for randread then randwrite, 4 KiB: nvme_bench on VF1 at QD $BENCH_QD and QD 1, fio io_uring
#     at QD $BENCH_QD (default options, then --fixedbufs --registerfiles --norandommap) and fio
#     psync (QD 1) on VF2's block device, $BENCH_RUNTIME s each, with the guest's CPU busy time
#     over each run from /proc/stat; all that $BENCH_REPEAT times; then
#     nvme_bench under callgrind for exactly $BENCH_IOS I/Os at QD 1 and QD $BENCH_QD, and fio
#     under callgrind for each N of $BENCH_INSN_IOS I/Os (fio's user-space share);
#   - tries perf stat once (TCG emulates no PMU: expected to report instructions unsupported).
# With BENCH_MODE=insn (run_nvme_bench.sh's second boot, under insn_count_plugin) it runs fixed
# numbers of I/Os per engine between marks instead, for whole-guest instruction counts.
# Prints machine-readable lines for bench/nvme/run_nvme_bench.sh:
#   BENCH-PARAMS RUNTIME=.. QD=.. IOS=.. REPEAT=.. RWS=a,b       (once, first)
#   BENCH-RESULT <engine> <rw> <qd> {json}        (nvme_bench's own JSON; once per round)
#   BENCH-CPU <engine> <rw> <qd> <busy ticks, all CPUs> <ticks per second>
#   BENCH-FIO-BEGIN <engine> <rw> <qd> ... BENCH-FIO-END    (fio --output-format=json)
#   BENCH-CALLGRIND-BEGIN <rw> <qd> ... BENCH-CALLGRIND-END (gzip | base64 of callgrind.out)
#   BENCH-FIOCG <engine> <rw> <qd> <ios> <user instructions of the whole fio run, callgrind>
#   BENCH-INSN <engine> <rw> <qd> <ios> <first mark> <last mark> [<idle-loop marks>]  (insn mode)
# run_nvme_bench.sh inserts its parameters (BENCH_*=...) as line 3; the defaults below otherwise.
. /lib/vm_lib.sh
: "${BENCH_RUNTIME:=10}" "${BENCH_QD:=32}" "${BENCH_IOS:=20000}" "${BENCH_RWS:=randread randwrite}"
: "${BENCH_REPEAT:=1}" "${BENCH_MODE:=timed}" "${BENCH_INSN_IOS:=2000 10000}"
echo "BENCH-PARAMS MODE=$BENCH_MODE RUNTIME=$BENCH_RUNTIME QD=$BENCH_QD IOS=$BENCH_IOS REPEAT=$BENCH_REPEAT RWS=$(echo $BENCH_RWS | tr ' ' ,) INSN_IOS=$(echo $BENCH_INSN_IOS | tr ' ' ,)"

[ -n "$NVME_PF" ] || { fail "no NVMe controller 1b36:0010"; exit 1; }
NV=/dev/$NVME_CTRL
nvme_release_primary_resources "$NVME_PF" "$NVME_CTRL" || exit 1
enable_vfs "$NVME_PF" 2
for line in $(nvme_vadmin $NV list | sed -n 's/^scid=\([0-9]*\) vfn=\([0-9]*\).*/\1:\2/p'); do
  scid=${line%:*}; vfn=${line#*:}
  [ "$vfn" -ge 1 ] && [ "$vfn" -le 2 ] || continue
  nsid=$((vfn + 1))  # namespace 1 is the PF's; VF n gets private namespace n+1
  nvme_vf_online $NV "$scid" || fail "VF$vfn: bring controller $scid online"
  nvme_vadmin $NV attach "$nsid" "$scid" || fail "VF$vfn: attach namespace $nsid to controller $scid"
done
check_failed || exit 1
VF1=$(basename "$(readlink /sys/bus/pci/devices/$NVME_PF/virtfn0)")
VF2=$(basename "$(readlink /sys/bus/pci/devices/$NVME_PF/virtfn1)")

g=$(bind_vfio "$VF1")
[ -c "/dev/vfio/$g" ] || { fail "VF1 $VF1: no /dev/vfio/$g"; exit 1; }
log "VF1 $VF1: vfio-pci, IOMMU group $g, our driver on namespace 2"

disks() {  # the NVMe namespaces' block devices, nvmeXnY
  for d in /dev/nvme*n*; do
    case ${d#/dev/} in *c*|*p*) ;; *) [ -b "$d" ] && echo "${d#/dev/}" ;; esac
  done | sort
}
before=$(disks)
p=/sys/bus/pci/devices/$VF2
echo nvme > "$p/driver_override"
echo "$VF2" > /sys/bus/pci/drivers_probe
new_disk() { disks | grep -vxF "$before" | head -1 | grep .; }
wait_for 150 new_disk >/dev/null || { fail "VF2 $VF2: the nvme driver showed no new namespace"; exit 1; }
DISK=/dev/$(new_disk)
log "VF2 $VF2: kernel nvme driver ($(basename "$(readlink "$p/driver")")), $DISK, $(cat /sys/block/${DISK#/dev/}/size) sectors, nsid $(cat /sys/block/${DISK#/dev/}/nsid 2>/dev/null || echo ?)"
echo none > /sys/block/${DISK#/dev/}/queue/scheduler 2>/dev/null
log "VF2: $(dmesg | grep -E 'nvme[0-9]+: [0-9]+/[0-9]+/[0-9]+ default/read/poll queues' | tail -1 | sed 's/^\[[^]]*\] *//')"

# Busy time of every guest CPU (user, nice, system, irq, softirq, steal), in USER_HZ ticks: the
# whole guest's CPU cost of a run, interrupts and kernel threads included.
# USER_HZ is 100 on x86.
cpu_busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
ours() {  # rw qd [extra flags]
  rw=$1; qd=$2; shift 2
  t0=$(cpu_busy)
  out=$(nvme_bench --pci="$VF1" --nsid=2 --rw="$rw" --qd="$qd" --seconds="$BENCH_RUNTIME" --json "$@" 2>/tmp/err)
  t1=$(cpu_busy)
  line=$(echo "$out" | grep '^NVMEBENCH ' | tail -1)
  if [ -z "$line" ]; then
    fail "nvme_bench $rw QD $qd: $(tr '\n' ' ' < /tmp/err) $out"
    return 1
  fi
  echo "BENCH-RESULT ours $rw $qd ${line#NVMEBENCH }"
  echo "BENCH-CPU ours $rw $qd $((t1 - t0)) 100"
}
fio_run() {  # label engine rw qd [extra fio options]
  label=$1; engine=$2; rw=$3; qd=$4; shift 4
  t0=$(cpu_busy)
  fio --name=bench --filename="$DISK" --direct=1 --rw="$rw" --bs=4k --ioengine="$engine" \
      --iodepth="$qd" --time_based --runtime="$BENCH_RUNTIME" --randseed=1 "$@" \
      --output-format=json --output=/tmp/fio.json >/tmp/err 2>&1 ||
    { fail "fio $label $rw QD $qd: $(tr '\n' ' ' < /tmp/err)"; return 1; }
  t1=$(cpu_busy)
  echo "BENCH-FIO-BEGIN $label $rw $qd"
  cat /tmp/fio.json
  echo "BENCH-FIO-END"
  echo "BENCH-CPU $label $rw $qd $((t1 - t0)) 100"
}

# BENCH_MODE=insn (a boot under QEMU with insn_count_plugin): whole-guest instruction counts.
# Each engine runs exactly N I/Os for each N in $BENCH_INSN_IOS, bracketed by insn_mark; the
# plugin prints the running total at each mark, so the host gets instructions per I/O from the
# difference of two runs (process start-up and the marks cancel).
MARKS=0
mark() { insn_mark; MARKS=$((MARKS + 1)); }
if [ "$BENCH_MODE" = insn ]; then
  # The cpuidle POLL state spins in the idle loop while a short wait is expected: instructions
  # that depend on the emulated device's speed, as our driver's empty polls do. Off, so that
  # a waiting vCPU halts (and executes nothing).
  log "insn: cpuidle driver $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none), governor $(cat /sys/devices/system/cpu/cpuidle/current_governor_ro 2>/dev/null || cat /sys/devices/system/cpu/cpuidle/current_governor 2>/dev/null || echo none)"
  for st in /sys/devices/system/cpu/cpu*/cpuidle/state*; do
    [ -e "$st/name" ] || continue
    if [ "$(cat "$st/name")" = POLL ]; then echo 1 > "$st/disable" && log "insn: disabled $st (POLL)"; fi
  done
  for rw in $BENCH_RWS; do
    for n in $BENCH_INSN_IOS; do
      for qd in $BENCH_QD 1; do
        log "insn: $rw, our driver QD $qd, $n I/Os"
        # Marks inside nvme_bench, around its I/O loop only: start-up (controller bring-up spins
        # for CSTS.RDY a device-speed-dependent number of times) stays out.
        # Then as many polls of the idle queue between two more marks: an empty poll's cost.
        out=$(nvme_bench --pci="$VF1" --nsid=2 --rw="$rw" --qd="$qd" --ios="$n" \
            --empty_polls="$n" --insn_marks --json 2>/tmp/err)
        line=$(echo "$out" | grep '^NVMEBENCH ' | tail -1)
        [ -n "$line" ] || { fail "nvme_bench $rw QD $qd $n I/Os: $(tr '\n' ' ' < /tmp/err)"; continue; }
        MARKS=$((MARKS + 4))
        echo "BENCH-RESULT insn-ours $rw $qd ${line#NVMEBENCH }"
        echo "BENCH-INSN insn-ours $rw $qd $n $((MARKS - 3)) $((MARKS - 2)) $((MARKS - 1)) $MARKS"
      done
      for e in "io_uring $BENCH_QD" "psync 1"; do
        engine=${e% *}; qd=${e#* }
        log "insn: $rw, fio $engine QD $qd, $n I/Os"
        mark; b=$MARKS
        fio --name=bench --filename="$DISK" --direct=1 --rw="$rw" --bs=4k --ioengine="$engine" \
            --iodepth="$qd" --norandommap --randseed=1 --io_size=$((n * 4))k \
            --output-format=json --output=/tmp/fio.json >/tmp/err 2>&1 ||
          { mark; fail "fio $engine $rw $n I/Os: $(tr '\n' ' ' < /tmp/err)"; continue; }
        mark
        echo "BENCH-FIO-BEGIN insn-fio-$engine $rw $qd"
        cat /tmp/fio.json
        echo "BENCH-FIO-END"
        echo "BENCH-INSN insn-fio-$engine $rw $qd $n $b $MARKS"
      done
    done
  done
  check_failed
  exit
fi

# Rounds of the timed runs, every engine once per round (noise on the host spreads over all).
for round in $(seq "$BENCH_REPEAT"); do
  for rw in $BENCH_RWS; do
    log "round $round, $rw: our driver QD $BENCH_QD"
    ours "$rw" "$BENCH_QD"
    log "round $round, $rw: fio io_uring QD $BENCH_QD"
    fio_run fio-io_uring io_uring "$rw" "$BENCH_QD"
    log "round $round, $rw: fio io_uring QD $BENCH_QD --fixedbufs --registerfiles --norandommap"
    fio_run fio-io_uring-tuned io_uring "$rw" "$BENCH_QD" --fixedbufs --registerfiles --norandommap
    log "round $round, $rw: fio psync"
    fio_run fio-psync psync "$rw" 1
    log "round $round, $rw: our driver QD 1"
    ours "$rw" 1
  done
done

for rw in $BENCH_RWS; do
  for qd in 1 $BENCH_QD; do
    log "$rw: our driver QD $qd under callgrind, $BENCH_IOS I/Os"
    cg=/tmp/callgrind.$rw.$qd.out
    out=$(valgrind --tool=callgrind --callgrind-out-file=$cg --collect-atstart=no \
        --toggle-collect='nvme_bench::MeasuredIoLoop*' --toggle-collect='nvme_bench::IdlePollLoop*' \
        nvme_bench --pci="$VF1" --nsid=2 --rw="$rw" --qd="$qd" --ios="$BENCH_IOS" \
        --empty_polls="$BENCH_IOS" --json 2>/tmp/err)
    line=$(echo "$out" | grep '^NVMEBENCH ' | tail -1)
    if [ -z "$line" ] || [ ! -s $cg ]; then
      fail "callgrind nvme_bench $rw QD $qd: $(tail -20 /tmp/err | tr '\n' ' ') $out"
      continue
    fi
    echo "BENCH-RESULT ours-callgrind $rw $qd ${line#NVMEBENCH }"
    echo "BENCH-CALLGRIND-BEGIN $rw $qd"
    gzip -c $cg | base64
    echo "BENCH-CALLGRIND-END"
    rm -f $cg
  done
done

# fio's own user-space instructions per I/O (callgrind sees no kernel), two runs of N1 and N2 I/Os
# (--thread: one process, one callgrind file), so that the host can tell fio's share of the
# whole-guest counts of the insn boot from the kernel's.
for rw in $BENCH_RWS; do
  for e in "io_uring $BENCH_QD" "psync 1"; do
    engine=${e% *}; qd=${e#* }
    for n in $BENCH_INSN_IOS; do
      log "$rw: fio $engine QD $qd under callgrind, $n I/Os"
      rm -f /tmp/cgfio.*
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cgfio.%p \
          fio --thread --name=bench --filename="$DISK" --direct=1 --rw="$rw" --bs=4k \
          --ioengine="$engine" --iodepth="$qd" --norandommap --randseed=1 --io_size=$((n * 4))k \
          --output-format=terse >/tmp/err 2>&1 ||
        { fail "callgrind fio $engine $rw $n I/Os: $(tail -5 /tmp/err | tr '\n' ' ')"; continue; }
      total=$(cat /tmp/cgfio.* | sed -n 's/^summary: *\([0-9]*\).*/\1/p' | awk '{ t += $1 } END { print t + 0 }')
      echo "BENCH-FIOCG fio-$engine $rw $qd $n $total"
    done
  done
done

if command -v perf >/dev/null; then
  log "perf: $(perf stat -x, -e instructions:u,instructions:k,task-clock -- true 2>&1 | tr '\n' ' ')"
fi
log "PMU at boot: $(dmesg | grep -i -E 'Performance Events|PMU' | head -2 | tr '\n' ' ')"
check_failed
