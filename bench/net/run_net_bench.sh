#!/usr/bin/env bash
# UDP over a veth pair, side by side in one run (root):
#   (i)  receive: a fixed offered load of 60-byte UDP frames (udp_blast: AF_PACKET with
#        PACKET_QDISC_BYPASS, sendmmsg of 8, batches at Poisson times) into one veth end,
#        received by our AfXdpPort (rx_bench, busy-polling and poll()-when-idle), a kernel
#        UDP socket with recvmmsg (blocking and MSG_DONTWAIT spin) and dpdk-testpmd's
#        net_af_xdp PMD (rxonly). For each: packets received, the receiver process's CPU,
#        the kernel's softirq CPU, and the receive cost per packet (see "How CPU is measured"
#        below).
#   (ii) echo: UDP ping-pong round trips (echo_client, one request outstanding) against
#        udp_echo (AfXdpPort, busy-polling) and kernel_echo (busy-polling, blocking, blocking
#        with SO_BUSY_POLL).
# Prints markdown tables with ratios.
#
#   sudo bench/net/run_net_bench.sh
#
# Network objects: two network namespaces of its own (vfbn-srv-PID, vfbn-cli-PID) holding the
# veth pair (v0 in srv: 10.77.3.1, v1 in cli: 10.77.3.2), created inside the namespaces and
# removed on exit with them; the host's interfaces are not touched (`ip -br link` is compared
# before and after). v1's TX checksum offload is turned off (ethtool -K v1 tx off) so that its
# frames carry complete UDP checksums, as on a wire; udp_echo then only swaps addresses.
#
# Peers: installs Debian's dpdk-dev (dpdk-testpmd), librte-net-af-xdp23 and ethtool with
# apt-get if they are missing (Debian's archive only).
#
# How CPU is measured. The sender runs on TX_CPU, every receiver on RX_CPU (2 cores here). On
# veth the kernel's receive work (the XDP program and the copy into the UMEM, or the IP/UDP
# stack) runs in softirq context on the sender's CPU, not in the receiver's process, so both
# are counted:
#   - softirq: /proc/stat "softirq" summed over all CPUs across the sending window, minus the
#     same measured for as long with no traffic (other work on the machine); Debian's kernel
#     samples it at each tick (CONFIG_TICK_CPU_ACCOUNTING, HZ 250), hence RUNTIME >= 5 and
#     Poisson-timed batches (a sender paced on a straight line is in step with the tick and
#     biased the samples by up to 10x between rounds);
#   - process: the receiver's utime+stime (/proc/PID/stat, all threads) across the window;
#   - busy: for a polling receiver, the time of the polls that returned packets only (rdtsc
#     around RxBurst/recvmmsg + header read + buffer return; testpmd's own
#     --record-core-cycles counts the same way), i.e. its work without the empty polls that
#     fill the rest of its core at a fixed load;
#   - stalled: the part of busy spent in polls longer than 1 ms, i.e. polls inside which the
#     thread was preempted or RT-throttled (frames pile up meanwhile, so such a poll returns
#     some). rx_bench reports it; testpmd cannot, so its busy figure includes its stalls.
# Receive cost per packet = (busy - stalled, or process for a blocking receiver) + softirq.
# "incl. stalls" uses busy as it is, like testpmd's figure; the ratios to testpmd are given
# both ways.
#
# Environment: RUNTIME (seconds of traffic per receiver, 5), RATES (offered loads in pps,
# "100000 0"; 0 = unpaced, as fast as one sender thread goes; "" = echo only), REPEAT (rounds, 5; each row
# shows its median round), SAMPLES (echo round trips per server and round, 20000), RX_CPU (1),
# TX_CPU (0), RT_PRIO (1: SCHED_FIFO priority of receivers, servers and the echo client; 0:
# nice instead), NICE (-20: the sender's niceness, and everyone's with RT_PRIO=0), CLIENT_BUSY
# (1: the echo client spins on recv instead of poll(2); 0), SKIP_INSTALL (1: never apt-get).
set -euo pipefail

RUNTIME=${RUNTIME:-5}
RATES=${RATES-"100000 0"}
REPEAT=${REPEAT:-5}
SAMPLES=${SAMPLES:-20000}
RX_CPU=${RX_CPU:-1}
TX_CPU=${TX_CPU:-0}
CLIENT_BUSY=${CLIENT_BUSY:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
NICE=${NICE:--20}
RT_PRIO=${RT_PRIO:-1}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
die() { echo "run_net_bench: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, XDP, AF_XDP, AF_PACKET)"
for tool in ip python3 taskset; do command -v "$tool" >/dev/null || die "$tool not found"; done

# --- peers from Debian's archive --------------------------------------------------------------
need=()
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
compgen -G "/usr/lib/*/dpdk/pmds-*/librte_net_af_xdp.so*" >/dev/null || need+=(librte-net-af-xdp23 librte-mempool-ring23)
command -v ethtool >/dev/null || need+=(ethtool)
if ((${#need[@]})); then
  [[ $SKIP_INSTALL == 1 ]] && die "missing ${need[*]} (SKIP_INSTALL=1)"
  echo "installing from Debian's archive: ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
    die "apt-get install ${need[*]} failed"
fi

# --- binaries ---------------------------------------------------------------------------------
bins=(bench/net/rx_bench bench/net/udp_blast bench/net/echo_client examples/udp_echo
      examples/kernel_echo)
if [[ -x "$here/rx_bench" && -n "${RUNFILES_DIR:-}" ]]; then  # bazel run
  bin() { echo "$RUNFILES_DIR/vfbroker/$1"; }
else
  (cd "$root" && bazel build --jobs=3 //bench/net:rx_bench //bench/net:udp_blast \
     //bench/net:echo_client //examples:udp_echo //examples:kernel_echo >&2)
  bin() { echo "$root/bazel-bin/$1"; }
fi
# Private copies: another build on the shared Bazel server may repoint bazel-bin meanwhile.
work=$(mktemp -d /tmp/run_net_bench.XXXXXX)
trap 'rm -rf "$work"' EXIT  # until cleanup() below takes over
mkdir "$work/bin"
for b in "${bins[@]}"; do
  [[ -x $(bin "$b") ]] || die "no $(bin "$b")"
  cp "$(bin "$b")" "$work/bin/"
done
RX_BENCH=$work/bin/rx_bench; UDP_BLAST=$work/bin/udp_blast
ECHO_CLIENT=$work/bin/echo_client; UDP_ECHO=$work/bin/udp_echo
KERNEL_ECHO=$work/bin/kernel_echo

# --- namespaces and the veth pair ---------------------------------------------------------------
SRV=vfbn-srv-$$
CLI=vfbn-cli-$$
SRV_MAC=02:76:66:00:03:01
CLI_MAC=02:76:66:00:03:02
SRV_IP=10.77.3.1
CLI_IP=10.77.3.2
links_before=$(ip -br link)
dpdk_run_existed=0
[[ -e /var/run/dpdk ]] && dpdk_run_existed=1
bg_pid=""
cleanup() {
  [[ -n "$bg_pid" ]] && kill -9 "$bg_pid" 2>/dev/null || true
  ip netns pids "$SRV" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns pids "$CLI" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$SRV" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  if [[ "$(ip -br link)" != "$links_before" ]]; then
    echo "run_net_bench: warning: the host's links changed during the run" >&2
  fi
  rm -rf "$work" "/var/run/dpdk/vfbn-$$"
  [[ $dpdk_run_existed == 1 ]] || rmdir /var/run/dpdk 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add v0 address "$SRV_MAC" type veth peer name v1 netns "$CLI" address "$CLI_MAC"
for ns in "$SRV" "$CLI"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1
  ip -n "$ns" link set lo up
done
ip -n "$SRV" addr add "$SRV_IP/24" dev v0
ip -n "$CLI" addr add "$CLI_IP/24" dev v1
ip -n "$SRV" link set v0 up
ip -n "$CLI" link set v1 up
# The AF_XDP receivers answer no ARP (every frame of the queue goes to the socket).
ip -n "$CLI" neigh add "$SRV_IP" lladdr "$SRV_MAC" dev v1 nud permanent
ip -n "$SRV" neigh add "$CLI_IP" lladdr "$CLI_MAC" dev v0 nud permanent
ip netns exec "$CLI" ethtool -K v1 tx off >/dev/null

# --- helpers ---------------------------------------------------------------------------------
# Receivers, echo servers and the echo client run SCHED_FIFO (chrt -f $RT_PRIO): under the
# default fair scheduler the machine's other work (builds, in other session autogroups, which
# nice does not reach) took up to half of the receiver's CPU. The kernel's RT throttling
# (sched_rt_runtime_us, 95%) still stops a spinning RT task for ~50 ms a second; see stalls.
# The sender runs at nice $NICE (it spins while paced; RT would starve the other CPU).
# These exec: call them only in a subshell (`... &` or `$(...)`), so that $! is the process.
if ((RT_PRIO > 0)); then measured=(chrt -f "$RT_PRIO"); else measured=(nice -n "$NICE"); fi
in_srv() { exec ip netns exec "$SRV" "${measured[@]}" "$@"; }
in_cli() { exec ip netns exec "$CLI" "${measured[@]}" "$@"; }
in_sender() { exec ip netns exec "$CLI" nice -n "$NICE" "$@"; }

CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
softirq_ticks() { awk '/^cpu /{print $8}' /proc/stat; }
wait_for() {  # wait_for FILE PATTERN: until FILE has a line matching PATTERN (20 s)
  local i
  for ((i = 0; i < 200; i++)); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    kill -0 "$bg_pid" 2>/dev/null || { cat "$1" >&2; die "receiver exited early"; }
    sleep 0.1
  done
  cat "$1" >&2
  die "timed out waiting for '$2' in $1"
}
stop_bg() {
  local i
  kill -INT "$bg_pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$bg_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$bg_pid" 2>/dev/null || true
  wait "$bg_pid" 2>/dev/null || true
  bg_pid=""
}

start_receiver() {  # start_receiver NAME OUTFILE
  local name=$1 out=$2
  case "$name" in
    ours_spin)
      in_srv "$RX_BENCH" --driver=af_xdp --interface=v0 --xdp_mode=native \
        --idle=spin "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
    ours_poll)
      in_srv "$RX_BENCH" --driver=af_xdp --interface=v0 --xdp_mode=native \
        --idle=poll "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
    kernel_blocking)
      in_srv "$RX_BENCH" --driver=kernel --port=9 --mode=blocking \
        "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
    kernel_busy)
      in_srv "$RX_BENCH" --driver=kernel --port=9 --mode=busy \
        "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
    testpmd)
      # Main lcore on the sender's CPU (it only prints stats once a second), the forwarding
      # lcore on RX_CPU. No hugepages, no PCI, no shared config; its runtime directory
      # (/var/run/dpdk/vfbn-PID) is removed on exit.
      in_srv dpdk-testpmd -l "$TX_CPU,$RX_CPU" --main-lcore "$TX_CPU" --no-huge \
        -m 512 --no-pci --no-shconf "--file-prefix=vfbn-$$" --vdev net_af_xdp0,iface=v0,start_queue=0,queue_count=1 \
        -- --forward-mode=rxonly --nb-cores=1 --total-num-mbufs=16384 --record-core-cycles \
        --stats-period=1 >"$out" 2>&1 & ;;
  esac
  bg_pid=$!
  if [[ $name == testpmd ]]; then wait_for "$out" "Port statistics"; else wait_for "$out" "^ready"; fi
  sleep 1
}

# --- (i) receive -----------------------------------------------------------------------------
receivers=(ours_spin ours_poll kernel_blocking kernel_busy testpmd)
results=$work/rx.jsonl
: >"$results"
echo "kernel $(uname -r); $(dpdk-testpmd --version 2>/dev/null | head -1 || true)" >&2
s0=$(softirq_ticks); sleep "$RUNTIME"; s1=$(softirq_ticks)
idle_softirq=$((s1 - s0))
echo "softirq with no traffic: $idle_softirq ticks in ${RUNTIME}s" >&2
for rate in $RATES; do
  for ((round = 0; round < REPEAT; round++)); do
    for ((i = 0; i < ${#receivers[@]}; i++)); do
      r=${receivers[(i + round) % ${#receivers[@]}]}
      echo "  rate $rate round $((round + 1))/$REPEAT: $r" >&2
      out=$work/rx.$r.$rate.$round.out
      start_receiver "$r" "$out"
      p0=$(proc_ticks "$bg_pid"); s0=$(softirq_ticks); t0=$(date +%s.%N)
      blast=$(in_sender "$UDP_BLAST" --interface=v1 "--dst_mac=$SRV_MAC" \
        "--src_ip=$CLI_IP" "--dst_ip=$SRV_IP" --dst_port=9 "--rate=$rate" \
        "--seconds=$RUNTIME" "--cpu=$TX_CPU" --batch=8)
      sleep 0.3  # let the receiver drain its rings
      p1=$(proc_ticks "$bg_pid"); s1=$(softirq_ticks); t1=$(date +%s.%N)
      stop_bg
      python3 - "$r" "$rate" "$round" "$out" "$blast" $((p1 - p0)) $((s1 - s0)) \
        "$idle_softirq" "$CLK_TCK" "$RUNTIME" "$t0" "$t1" >>"$results" <<'PY'
import json, re, sys
name, rate, rnd, out, blast, dproc, dsoft, idle_soft, tck, runtime, t0, t1 = sys.argv[1:]
window = float(t1) - float(t0)
text = open(out, errors="replace").read()
b = json.loads(blast)
row = {"name": name, "rate": int(rate), "round": int(rnd), "sent": b["sent"],
       "send_s": b["seconds"], "proc_s": int(dproc) / int(tck),
       "window_s": window,
       "softirq_s": max(0, int(dsoft) - int(idle_soft) * window / float(runtime)) / int(tck)}
if name == "testpmd":
    m = re.search(r"Forward statistics for port 0.*?RX-packets:\s*(\d+)", text, re.S)
    row["packets"] = int(m.group(1)) if m else 0
    m = re.search(r"CPU cycles/packet=([\d.]+).*?at (\d+) MHz", text)
    row["busy_s"] = float(m.group(1)) * row["packets"] / (int(m.group(2)) * 1e6) if m else None
    row["stalled_s"] = None
else:
    j = json.loads([l for l in text.splitlines() if l.startswith("{")][-1])
    row["packets"] = j["packets"]
    polls = name in ("ours_spin", "ours_poll", "kernel_busy")
    row["busy_s"] = j["busy_s"] if polls else None
    row["stalled_s"] = j["stalled_s"] if polls else None
    row["stalls"] = j["stalls"]
print(json.dumps(row))
PY
    done
  done
done

# --- (ii) echo round trips ---------------------------------------------------------------------
servers=(udp_echo kernel_busy kernel_blocking kernel_blocking_busypoll)
echo_results=$work/echo.jsonl
: >"$echo_results"
client_flags=()
[[ $CLIENT_BUSY == 1 ]] && client_flags+=(--busy)
for ((round = 0; round < REPEAT; round++)); do
  for ((i = 0; i < ${#servers[@]}; i++)); do
    s=${servers[(i + round) % ${#servers[@]}]}
    echo "  echo round $((round + 1))/$REPEAT: $s" >&2
    out=$work/echo.$s.$round.out
    case "$s" in
      udp_echo)
        in_srv "$UDP_ECHO" --self_provision --interface=v0 --xdp_mode=native \
          --udp_port=7 --checksum=keep "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
      kernel_busy)
        in_srv "$KERNEL_ECHO" "--bind=$SRV_IP" --port=7 --mode=busy \
          "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
      kernel_blocking)
        in_srv "$KERNEL_ECHO" "--bind=$SRV_IP" --port=7 --mode=blocking \
          "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
      kernel_blocking_busypoll)
        in_srv "$KERNEL_ECHO" "--bind=$SRV_IP" --port=7 --mode=blocking \
          --busy_poll_us=50 "--cpu=$RX_CPU" >"$out" 2>&1 & ;;
    esac
    bg_pid=$!
    wait_for "$out" "^ready"
    sleep 0.5
    res=$(in_cli "$ECHO_CLIENT" "--server=$SRV_IP" --port=7 "--bind=$CLI_IP" \
      "--samples=$SAMPLES" --warmup=1000 "--cpu=$TX_CPU" "${client_flags[@]}")
    stop_bg
    echo "{\"name\": \"$s\", \"round\": $round, \"r\": $res}" >>"$echo_results"
  done
done

python3 - "$results" "$echo_results" "$RUNTIME" "$REPEAT" "$RX_CPU" "$TX_CPU" "$CLIENT_BUSY" <<'PY'
import json, statistics, sys
rx_file, echo_file, runtime, repeat, rx_cpu, tx_cpu, client_busy = sys.argv[1:]
rows = [json.loads(l) for l in open(rx_file)]
labels = {
    "ours_spin": "vfbroker AfXdpPort, busy-poll (rx_bench)",
    "ours_poll": "vfbroker AfXdpPort, poll() when idle (rx_bench)",
    "kernel_blocking": "kernel UDP socket, recvmmsg blocking",
    "kernel_busy": "kernel UDP socket, recvmmsg MSG_DONTWAIT spin",
    "testpmd": "DPDK 22.11 testpmd net_af_xdp, rxonly",
}

def cost(r, clean=True):  # receive cost per packet, us
    if not r["packets"]:
        return float("inf")
    if r["busy_s"] is None:
        work = r["proc_s"]
    else:
        work = r["busy_s"] - (r["stalled_s"] or 0 if clean else 0)
    return (work + r["softirq_s"]) / r["packets"] * 1e6

for rate in sorted({r["rate"] for r in rows}, reverse=True):
    med = {}
    for name in labels:
        rs = sorted([r for r in rows if r["rate"] == rate and r["name"] == name], key=cost)
        if rs:
            med[name] = rs[len(rs) // 2]
    load = f"{rate:,} pps offered" if rate else "unpaced sender (as fast as one thread sends)"
    print(f"\n### Receive, {load}: 60-byte UDP frames, {runtime} s, receiver on CPU {rx_cpu}, "
          f"sender on CPU {tx_cpu}; median of {repeat} rounds by cost\n")
    print("| receiver | sent pps | received pps | lost | process CPU | softirq us/pkt | "
          "busy us/pkt | of which stalled | receive cost us/pkt | incl. stalls | "
          "vs testpmd | vs testpmd, both incl. stalls | vs kernel blocking | vs kernel spin |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {k: cost(med[k]) for k in ("testpmd", "kernel_blocking", "kernel_busy") if k in med}
    for name, label in labels.items():
        if name not in med:
            continue
        r = med[name]
        c, craw = cost(r), cost(r, clean=False)
        n = r["packets"]
        lost = 1 - n / r["sent"] if r["sent"] else 0
        per = lambda v: f"{v / n * 1e6:.3f}" if v is not None and n else "-"
        ratio = lambda x, k: f"{x / base[k]:.2f}x" if k in base and base[k] else "-"
        print(f"| {label} | {r['sent'] / r['send_s']:,.0f} | {n / r['send_s']:,.0f} | "
              f"{lost * 100:.2f}% | {r['proc_s'] / r['window_s'] * 100:.0f}% | "
              f"{per(r['softirq_s'])} | {per(r['busy_s'])} | {per(r['stalled_s'])} | "
              f"{c:.3f} | {craw:.3f} | {ratio(c, 'testpmd')} | {ratio(craw, 'testpmd')} | "
              f"{ratio(c, 'kernel_blocking')} | {ratio(c, 'kernel_busy')} |")
    print("\nall rounds (cost us/pkt; received pps): " + "; ".join(
        f"{n} " + " ".join(f"{cost(r):.3f}/{r['packets'] / r['send_s'] / 1e3:.0f}k"
                           for r in rows if r["rate"] == rate and r["name"] == n)
        for n in labels))

erows = [json.loads(l) for l in open(echo_file)]
elabels = {
    "udp_echo": "vfbroker udp_echo (AfXdpPort, busy-poll)",
    "kernel_busy": "kernel_echo, recvmmsg MSG_DONTWAIT spin",
    "kernel_blocking": "kernel_echo, recvmmsg blocking",
    "kernel_blocking_busypoll": "kernel_echo, blocking + SO_BUSY_POLL 50 us",
}
emed = {}
for name in elabels:
    rs = sorted([e for e in erows if e["name"] == name], key=lambda e: e["r"]["p50_us"])
    if rs:
        emed[name] = rs[len(rs) // 2]["r"]
client = "spinning on recv" if client_busy == "1" else "sleeping in poll(2)"
print(f"\n### UDP echo round trip: one request outstanding, 32-byte payload, client (kernel "
      f"socket, {client}) on CPU {tx_cpu}, server on CPU {rx_cpu}; median of {repeat} rounds "
      f"by p50\n")
print("| server | samples | lost | p50 us | p99 us | p99.9 us | p50 vs kernel spin | "
      "p50 vs kernel blocking | p99 vs kernel spin | p99 vs kernel blocking |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label in elabels.items():
    if name not in emed:
        continue
    e = emed[name]
    def rat(k, f):
        return f"{e[f] / emed[k][f]:.2f}x" if k in emed and emed[k][f] else "-"
    print(f"| {label} | {e['samples']:,} | {e['lost']} | {e['p50_us']:.1f} | {e['p99_us']:.1f} | "
          f"{e['p999_us']:.1f} | {rat('kernel_busy', 'p50_us')} | "
          f"{rat('kernel_blocking', 'p50_us')} | {rat('kernel_busy', 'p99_us')} | "
          f"{rat('kernel_blocking', 'p99_us')} |")
print("\nall rounds (p50/p99 us): " + "; ".join(
    f"{n} " + " ".join(f"{e['r']['p50_us']:.1f}/{e['r']['p99_us']:.1f}" for e in erows
                       if e["name"] == n) for n in elabels))
PY
