#!/usr/bin/env bash
# run_guest_echo_bench.sh: UDP echo in the tests/vm QEMU guest (TCG, emulated IOMMU, QEMU's 82576
# igb with SR-IOV): our igbvf driver over VFIO running the echo loop (igbvf_echo) on VF0 against
# the kernel's igbvf driver on VF1 running examples/kernel_echo (spinning, blocking +
# SO_BUSY_POLL, blocking), the client (bench/net/echo_client) on the PF's kernel interface, all
# in the same boot; then, unless INSN=0, a second boot under a TCG plugin that counts every guest
# instruction, for the whole guest's instructions per echo. Prints the tables (markdown) with our
# figures beside the kernel's as ratios. Scenario: guest_echo_scenario.sh (what runs where).
#
#   bench/net/igbvf/run_guest_echo_bench.sh   (no root needed: QEMU under TCG; needs what
#                                             vm_igbvf_test needs, scripts/setup-vm.sh, and jq)
#   env: SAMPLES       round trips per latency run, one request outstanding (default 5000)
#        RATE_SAMPLES  echoes per rate run (default 30000)
#        WINDOW        requests outstanding in the rate run (default 16)
#        REPEAT        rounds, every server once per round; the median round is shown (default 5)
#        INSN          1 (default): the instruction-counting boot; 0: skip it
#        INSN_N        round trips of the two runs per server in that boot (default "1000 5000")
#        SERVERS       subset of "ours kbusy kbusypoll kblock"
#        VM_TIMEOUT    guest timeout in seconds (default 1500)
#        KEEP_DIR      keep the consoles there
#        PARSE_ONLY=CONSOLE [PARSE_ONLY_INSN=CONSOLE]  boot nothing; tables from kept consoles
#
# TCG times are emulation artefacts: every guest instruction, every register access of the
# emulated igb and every interrupt is emulated on a host whose 2 cores are shared; latencies
# and rates say how fast the emulator runs each path, not how hardware would. Ratios carry over
# only roughly; instruction counts better (see docs/benchmarks.md).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
GUEST_BENCH_REPO=$REPO
. "$REPO/bench/net/guest_bench_lib.sh"
SAMPLES=${SAMPLES:-5000}
RATE_SAMPLES=${RATE_SAMPLES:-30000}
WINDOW=${WINDOW:-16}
REPEAT=${REPEAT:-5}
INSN=${INSN:-1}
INSN_N=${INSN_N:-1000 5000}
SERVERS=${SERVERS:-ours kbusy kbusypoll kblock}
export VM_TIMEOUT=${VM_TIMEOUT:-1500}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfbroker-echo-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
status=0
if [[ -n ${PARSE_ONLY:-} ]]; then
  tr -d '\r' < "$PARSE_ONLY" > "$WORK/echo.txt"
  [[ -f ${PARSE_ONLY_INSN:-} ]] && tr -d '\r' < "$PARSE_ONLY_INSN" > "$WORK/echo-insn.txt"
  REV="(from $PARSE_ONLY)"
else
  command -v jq >/dev/null || { echo "run_guest_echo_bench: needs jq (apt-get install jq)" >&2; exit 1; }
  (cd "$REPO" && bazel build --jobs=3 //bench/net/igbvf:igbvf_echo //bench/net:echo_client \
     //examples:kernel_echo >&2)
  REV=$(git -C "$REPO" rev-parse --short HEAD)
  [[ -z $(git -C "$REPO" status --porcelain -- vfdrivers bench examples) ]] ||
    REV+=" + uncommitted changes under vfdrivers/, bench/ or examples/"
  # Private copies: other builds may replace bazel-bin while the image is assembled.
  for b in bench/net/igbvf/igbvf_echo bench/net/echo_client examples/kernel_echo; do
    cp "$REPO/bazel-bin/$b" "$WORK/"
  done
  BINARIES=("$WORK/igbvf_echo" "$WORK/echo_client" "$WORK/kernel_echo" /bin/ip)
  PARAMS="BENCH_SAMPLES=$SAMPLES BENCH_RATE_SAMPLES=$RATE_SAMPLES BENCH_WINDOW=$WINDOW BENCH_REPEAT=$REPEAT BENCH_INSN_N='$INSN_N' BENCH_SERVERS='$SERVERS'"
  guest_bench_scenario "$HERE/guest_echo_scenario.sh" "$WORK/igbvf-echo-bench.sh" "$PARAMS"
  echo "run_guest_echo_bench: timed boot (about $((REPEAT + 1)) min under TCG)" >&2
  guest_bench_boot "$WORK" echo "$WORK/igbvf-echo-bench.sh" "${BINARIES[@]}" || status=$?
  grep -a -E '^(vm:|VM-)' "$WORK/echo.txt" >&2 || true
  if [[ $INSN == 1 ]]; then
    guest_bench_insn_tools "$WORK"
    guest_bench_scenario "$HERE/guest_echo_scenario.sh" "$WORK/igbvf-echo-bench-insn.sh" \
      "$PARAMS BENCH_MODE=insn"
    echo "run_guest_echo_bench: instruction-counting boot" >&2
    s2=0
    VM_QEMU=$WORK/qemu-insn guest_bench_boot "$WORK" echo-insn "$WORK/igbvf-echo-bench-insn.sh" \
      "${BINARIES[@]}" "$WORK/insn_mark" || s2=$?
    grep -a -E '^(vm:|VM-)' "$WORK/echo-insn.txt" >&2 || true
    ((s2 == 0)) || status=$s2
  fi
fi

# --- parse -----------------------------------------------------------------------------------
C=$WORK/echo.txt
for kv in $(grep -a -m1 '^BENCH-PARAMS ' "$C" | cut -d' ' -f2-); do
  v=${kv#*=}
  case $kv in
    SAMPLES=*) SAMPLES=$v ;; RATE_SAMPLES=*) RATE_SAMPLES=$v ;; WINDOW=*) WINDOW=$v ;;
    REPEAT=*) REPEAT=$v ;; SERVERS=*) SERVERS=${v//,/ } ;;
  esac
done
# The round with the median of FIELD (p50_us for lat, echoes_per_s for rate) of one server:
# its JSON line; empty when none.
median_json() {  # server kind field
  grep -a "^BENCH-ECHO $1 $2 " "$C" | cut -d' ' -f5- |
    jq -c --arg f "$3" 'select(.samples > 0) | [.[$f], .] ' 2>/dev/null | sort -g -t, -k1.2 |
    awk '{ l[NR] = $0 } END { if (NR) print l[int((NR + 1) / 2)] }' | jq -c '.[1]' 2>/dev/null || true
}
field() { [[ -n $1 ]] && jq -r ".$2" <<< "$1" || echo -; }
ratio() { [[ $1 == n/a* || $2 == n/a* ]] && { echo -; return; }; awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
num() {
  [[ $1 == n/a* ]] && { echo "$1"; return; }
  awk -v a="$1" 'BEGIN { if (a == "-" || a == "") { print "-"; exit }
    s = sprintf("%.0f", a); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'
}
fmt1() { awk -v a="$1" 'BEGIN { if (a == "-" || a == "") print "-"; else printf "%.1f", a }'; }
label() {
  case $1 in
    ours) echo "ours: igbvf driver over VFIO + udp_echo_loop, busy-poll" ;;
    kbusy) echo "kernel igbvf + kernel_echo, spinning (recvmmsg MSG_DONTWAIT)" ;;
    kbusypoll) echo "kernel igbvf + kernel_echo, blocking + SO_BUSY_POLL 50 us" ;;
    kblock) echo "kernel igbvf + kernel_echo, blocking" ;;
  esac
}
# Guest CPU per echo in the rate runs (median round): busy ticks of both vCPUs / echoes.
cpu_per_echo() {  # server
  grep -a "^BENCH-CPU $1 rate " "$C" | awk -v n="$((RATE_SAMPLES + 200))" '{ print $5 / $6 * 1e6 / n }' |
    sort -g | awk '{ l[NR] = $0 } END { if (NR) printf "%.0f\n", l[int((NR + 1) / 2)]; else print "-" }'
}
declare -A P50 P99 RATE LOST
for s in $SERVERS; do
  j=$(median_json "$s" lat p50_us); P50[$s]=$(field "$j" p50_us); P99[$s]=$(field "$j" p99_us)
  LOST[$s]=$(grep -a "^BENCH-ECHO $s " "$C" | cut -d' ' -f5- | jq -s 'map(.lost) | add // 0' 2>/dev/null || echo -)
  j=$(median_json "$s" rate echoes_per_s); RATE[$s]=$(field "$j" echoes_per_s)
done
echo
echo "UDP echo in the QEMU TCG guest: igbvf (ours, VF0) vs the kernel's igbvf (VF1), client on the PF ($(date -u +%F)); SAMPLES=$SAMPLES RATE_SAMPLES=$RATE_SAMPLES WINDOW=$WINDOW REPEAT=$REPEAT (median round); tree $REV"
echo
echo "| server | RTT p50 us (TCG) | RTT p99 us (TCG) | echoes/s, $WINDOW outstanding (TCG) | guest CPU us/echo (TCG) | ours ÷ this: p50 | p99 | rate | lost |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in $SERVERS; do
  echo "| $(label "$s") | $(fmt1 "${P50[$s]}") | $(fmt1 "${P99[$s]}") | $(num "${RATE[$s]}") | $(cpu_per_echo "$s") | $(ratio "${P50[ours]:--}" "${P50[$s]}") | $(ratio "${P99[ours]:--}" "${P99[$s]}") | $(ratio "${RATE[ours]:--}" "${RATE[$s]}") | ${LOST[$s]} |"
done

I=$WORK/echo-insn.txt
if [[ -s $I ]]; then
  mark_at() { awk -v m="$1" '$1 == "INSN-MARK" && $2 == m { print $3; exit }' "$I"; }
  # Whole-guest instructions per echo: the slope between a server's two runs (N1, N2 round trips):
  # process start-up, the marks and the warm-up cancel.
  insn() {  # server window
    local pts=() line n b x t0 t1
    while read -r line; do
      read -r _ _ _ n b x _ <<< "$line"
      t0=$(mark_at "$b"); t1=$(mark_at "$x")
      [[ -n $t0 && -n $t1 ]] && pts+=("$n $((t1 - t0))")
    done < <(grep -a "^BENCH-INSN $1 $2 " "$I")
    ((${#pts[@]} >= 2)) || { echo -; return; }
    printf '%s\n' "${pts[0]}" "${pts[-1]}" |
      awk 'NR == 1 { n1 = $1; c1 = $2 } NR == 2 { n2 = $1; c2 = $2 } END { printf "%.0f\n", (c2 - c1) / (n2 - n1) }'
  }
  # Ours: "raw spin_free" from the marks igbvf_echo made: its echo window, minus its idle polls
  # in that window at the cost of one idle poll (the whole guest's, from its idle marks).
  insn_ours() {  # window
    local line w i0 i1 e0 e1 rest
    line=$(grep -a -m1 "^BENCH-INSN-OURS $1 " "$I") || { echo "- -"; return; }
    read -r _ w i0 i1 e0 e1 rest <<< "$line"
    local k echoes idle
    k=$(sed -n 's/.*insn idle: polls=\([0-9]*\).*/\1/p' <<< "$rest")
    echoes=$(sed -n 's/.*insn window: marks=2 echoes=\([0-9]*\).*/\1/p' <<< "$rest")
    idle=$(sed -n 's/.*insn window: marks=2 echoes=[0-9]* idle_polls=\([0-9]*\).*/\1/p' <<< "$rest")
    local ti0 ti1 te0 te1
    ti0=$(mark_at "$i0"); ti1=$(mark_at "$i1"); te0=$(mark_at "$e0"); te1=$(mark_at "$e1")
    [[ -n $k && -n $echoes && -n $idle && -n $ti0 && -n $ti1 && -n $te0 && -n $te1 ]] && ((echoes > 0)) ||
      { echo "- -"; return; }
    awk -v k="$k" -v e="$echoes" -v idle="$idle" -v ic="$((ti1 - ti0))" -v ec="$((te1 - te0))" \
      'BEGIN { c = ic / k; printf "%.0f %.0f %.1f %.0f\n", ec / e, (ec - idle * c) / e, idle / e, c }'
  }
  INSN_WINDOWS=$(grep -a -m1 '^BENCH-PARAMS ' "$I" | sed -n 's/.*INSN_WINDOWS=\([0-9,]*\).*/\1/p' | tr , ' ')
  INSN_N=$(grep -a -m1 '^BENCH-PARAMS ' "$I" | sed -n 's/.*INSN_N=\([0-9,]*\).*/\1/p' | tr , ' ')
  echo
  echo "Whole-guest instructions per echo (both vCPUs, user + kernel: client, PF driver and stack, server; QEMU TCG plugin):"
  echo
  echo "| requests outstanding | server | instr/echo | w/o our idle polls | this ÷ ours | our idle polls per echo (instr each) |"
  echo "|---:|---|---:|---:|---:|---:|"
  for w in ${INSN_WINDOWS:-1 $WINDOW}; do
    read -r ours_raw ours_sf idle cost < <(insn_ours "$w")
    for s in $SERVERS; do
      if [[ $s == ours ]]; then
        echo "| $w | $(label ours) | $(num "$ours_raw") | $(num "$ours_sf") | 1.00x | $idle ($cost) |"
      else
        raw=$(insn "$s" "$w")
        # A spinning server's count grows with time, not echoes: its slope can come out negative.
        [[ $raw == -* && $raw != - ]] && raw="n/a (spin noise)"
        echo "| $w | $(label "$s") | $(num "$raw") | - | $(ratio "$raw" "$ours_sf") | - |"
      fi
    done
  done
  echo
  echo "Ratios: the kernel row's count ÷ our count without idle polls. A spinning kernel server's count includes its own spinning; the blocking one's does not."
fi
echo
echo "Command: SAMPLES=$SAMPLES RATE_SAMPLES=$RATE_SAMPLES WINDOW=$WINDOW REPEAT=$REPEAT INSN_N='$INSN_N' bench/net/igbvf/run_guest_echo_bench.sh"
if [[ -n ${KEEP_DIR:-} ]]; then
  mkdir -p "$KEEP_DIR"
  cp "$WORK"/*.txt "$KEEP_DIR/" 2>/dev/null || true
  echo "run_guest_echo_bench: kept the consoles in $KEEP_DIR"
fi
exit "$status"
