#!/bin/sh
# igbvf-echo-bench: UDP echo on VF0 (our igbvf driver, vfio-pci) vs VF1 (kernel igbvf + kernel_echo)
#   - the igb PF (kernel igb) up with 10.9.0.1/24, 2 VFs (autoprobe off), MACs set from the PF
#     with iproute2 (spoofchk on, trust off), static neighbour entries on every side;
#   - VF0 bound to vfio-pci: igbvf_echo (the project's driver + examples/udp_echo_loop), 10.9.0.2;
#   - VF1 bound to the kernel's igbvf driver, its netdev moved to a network namespace of its own
#     (else the PF's stack would deliver 10.9.0.3 locally, never through the VF) with 10.9.0.3,
#     examples/kernel_echo there: spinning (recvmmsg MSG_DONTWAIT), blocking + SO_BUSY_POLL, and
#     blocking;
#   - the client (bench/net/echo_client) on the PF's kernel interface, pinned to CPU 0, servers
#     pinned to CPU 1; QEMU's igb switches VF<->PF frames internally.
# Per round and server: round trips with one request outstanding (client sleeping in poll()), then
# the echo rate with $BENCH_WINDOW requests outstanding; $BENCH_REPEAT rounds, servers interleaved.
# With BENCH_MODE=insn (second boot, QEMU with insn_count_plugin): per server, two client runs of
# N1 and N2 round trips bracketed by insn_mark, for the whole guest's instructions per echo; our
# server marks itself around its echoes and around $BENCH_INSN_IDLE idle polls (the cost of its
# busy-waiting, to take out; ~0.3 s of them, so that timer ticks average in as they do while it
# echoes), one fresh server per window; windows (requests outstanding)
# $BENCH_INSN_WINDOWS: the more outstanding, the fewer idle polls per echo there are to take out.
# Machine-readable lines for run_guest_echo_bench.sh:
#   BENCH-PARAMS MODE=.. SAMPLES=.. RATE_SAMPLES=.. WINDOW=.. REPEAT=.. INSN_N=a,b
#   BENCH-ECHO <server> <lat|rate> <round> {echo_client JSON}
#   BENCH-SERVER <server> <lat|rate|insn> <round> <the server's counters line>
#   BENCH-CPU <server> <lat|rate> <round> <busy ticks, all CPUs> <ticks per second>
#   BENCH-INSN <server> <window> <round trips> <first mark> <last mark>         (insn mode)
#   BENCH-INSN-OURS <window> <idle marks: 2> <echo marks: 2> <igbvf_echo's insn lines>  (insn mode)
# run_guest_echo_bench.sh inserts its parameters (BENCH_*=...) as line 3; the defaults below otherwise.
. /lib/vm_lib.sh
: "${BENCH_SAMPLES:=2000}" "${BENCH_RATE_SAMPLES:=4000}" "${BENCH_WINDOW:=16}" "${BENCH_REPEAT:=3}"
: "${BENCH_MODE:=timed}" "${BENCH_INSN_N:=500 2500}" "${BENCH_INSN_IDLE:=2000000}"
: "${BENCH_INSN_WINDOWS:=1 $BENCH_WINDOW 128}" "${BENCH_SERVERS:=ours kbusy kbusypoll kblock}"
echo "BENCH-PARAMS MODE=$BENCH_MODE SAMPLES=$BENCH_SAMPLES RATE_SAMPLES=$BENCH_RATE_SAMPLES WINDOW=$BENCH_WINDOW REPEAT=$BENCH_REPEAT INSN_N=$(echo $BENCH_INSN_N | tr ' ' ,) INSN_WINDOWS=$(echo $BENCH_INSN_WINDOWS | tr ' ' ,) SERVERS=$(echo $BENCH_SERVERS | tr ' ' ,)"
IP=
for c in /usr/sbin/ip /sbin/ip /bin/ip; do  # iproute2's, wherever the harness put it
  [ -x "$c" ] && "$c" -V 2>&1 | grep -q iproute2 && { IP=$c; break; }
done
[ -n "$IGB_PF" ] || { fail "no igb (82576) 8086:10c9"; check_failed; exit; }
[ -n "$IP" ] || { fail "no iproute2 ip in the guest (busybox's has no 'vf' or 'netns')"; check_failed; exit; }
for b in igbvf_echo kernel_echo echo_client; do
  command -v $b >/dev/null || fail "no $b in the guest"
done
check_failed || exit 1

PFNET=$(ls "/sys/bus/pci/devices/$IGB_PF/net/" | head -1)
[ -n "$PFNET" ] || { fail "igb PF $IGB_PF has no netdev"; check_failed; exit; }
$IP link set "$PFNET" up || fail "link set $PFNET up"
$IP addr add 10.9.0.1/24 dev "$PFNET" || fail "addr add on $PFNET"
wait_for 100 grep -qx 1 "/sys/class/net/$PFNET/carrier" || fail "$PFNET: no carrier"
PFMAC=$(cat "/sys/class/net/$PFNET/address")
enable_vfs "$IGB_PF" 2
check_failed || exit 1
MAC_OURS=02:00:00:09:00:02
MAC_KERNEL=02:00:00:09:00:03
$IP link set "$PFNET" vf 0 mac $MAC_OURS spoofchk on trust off || fail "set VF0 MAC"
$IP link set "$PFNET" vf 1 mac $MAC_KERNEL spoofchk on trust off || fail "set VF1 MAC"
$IP neigh replace 10.9.0.2 lladdr $MAC_OURS dev "$PFNET" nud permanent || fail "neigh 10.9.0.2"
$IP neigh replace 10.9.0.3 lladdr $MAC_KERNEL dev "$PFNET" nud permanent || fail "neigh 10.9.0.3"
vf_bdf() { basename "$(readlink "/sys/bus/pci/devices/$IGB_PF/virtfn$1")"; }
VF0=$(vf_bdf 0); VF1=$(vf_bdf 1)
G0=$(bind_vfio "$VF0")
[ -c "/dev/vfio/$G0" ] || fail "VF0 $VF0: no /dev/vfio/$G0"
log "VF0 $VF0: vfio-pci, group $G0: igbvf_echo, 10.9.0.2 $MAC_OURS"

# VF1: the kernel's igbvf driver, in a namespace of its own.
p=/sys/bus/pci/devices/$VF1
echo igbvf > "$p/driver_override"
echo "$VF1" > /sys/bus/pci/drivers_probe
wait_for 150 ls "$p/net/" >/dev/null || fail "VF1 $VF1: igbvf made no netdev"
check_failed || exit 1
VFNET=$(ls "$p/net/" | head -1)
[ -d /var/run ] || { mkdir -p /var && ln -s /run /var/run; }
$IP netns add kvf || fail "netns add"
$IP link set "$VFNET" netns kvf || fail "move $VFNET to netns kvf"
$IP -n kvf link set lo up
$IP -n kvf addr add 10.9.0.3/24 dev "$VFNET" || fail "addr add on $VFNET"
$IP -n kvf link set "$VFNET" up || fail "link set $VFNET up"
$IP -n kvf neigh replace 10.9.0.1 lladdr "$PFMAC" dev "$VFNET" nud permanent || fail "neigh in kvf"
vf_up() { $IP -n kvf -o link show dev "$VFNET" | grep -q LOWER_UP; }
wait_for 150 vf_up || fail "$VFNET: no carrier"
check_failed || exit 1
log "VF1 $VF1: kernel $(basename "$(readlink "$p/driver")") driver, $VFNET in netns kvf, 10.9.0.3 $MAC_KERNEL"
log "$(dmesg | grep -i igbvf | tail -3 | sed 's/^\[[^]]*\] *//' | tr '\n' ';')"
# The kernel's busy-poll knobs as they are (SO_BUSY_POLL is set per socket by kernel_echo).
log "net.core.busy_poll=$(cat /proc/sys/net/core/busy_poll) busy_read=$(cat /proc/sys/net/core/busy_read)"

cpu_busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
SERVER_PID=
SERVER_FLAGS=
start_server() {  # name -> IP of the started server in $SERVER_IP
  rm -f /tmp/server.out
  case $1 in
    ours) igbvf_echo --pci="$VF0" --expect_mac=$MAC_OURS --cpu=1 $SERVER_FLAGS > /tmp/server.out 2>&1 &
          SERVER_IP=10.9.0.2 ;;
    kbusy) $IP netns exec kvf kernel_echo --port=7 --mode=busy --cpu=1 > /tmp/server.out 2>&1 &
           SERVER_IP=10.9.0.3 ;;
    kbusypoll) $IP netns exec kvf kernel_echo --port=7 --mode=blocking --busy_poll_us=50 --cpu=1 \
                 > /tmp/server.out 2>&1 &
               SERVER_IP=10.9.0.3 ;;
    kblock) $IP netns exec kvf kernel_echo --port=7 --mode=blocking --cpu=1 > /tmp/server.out 2>&1 &
            SERVER_IP=10.9.0.3 ;;
  esac
  SERVER_PID=$!
  wait_for 300 grep -q '^ready' /tmp/server.out || { fail "$1: server not ready: $(tr '\n' ' ' < /tmp/server.out)"; stop_server; return 1; }
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=
}
client() {  # server kind round [echo_client flags]
  s=$1; kind=$2; r=$3; shift 3
  t0=$(cpu_busy)
  out=$(echo_client --server="$SERVER_IP" --port=7 --cpu=0 --timeout_ms=1000 "$@" 2>/tmp/client.err)
  t1=$(cpu_busy)
  case $out in
    \{*) echo "BENCH-ECHO $s $kind $r $out"; echo "BENCH-CPU $s $kind $r $((t1 - t0)) 100" ;;
    *) fail "$s $kind: echo_client: $(tr '\n' ' ' < /tmp/client.err) $out" ;;
  esac
}
server_counters() {  # server kind round
  stop_server
  echo "BENCH-SERVER $1 $2 $3 $(grep -E '^(igbvf_echo|kernel_echo):' /tmp/server.out | tail -1)"
  # Anything else the server said (a refused SO_BUSY_POLL, a driver complaint) goes to the log.
  grep -v -E '^(ready|igbvf_echo: (received|insn)|kernel_echo: mode=)' /tmp/server.out |
    while IFS= read -r l; do log "$1 said: $l"; done
  if grep -q 'SO_BUSY_POLL' /tmp/server.out; then fail "$1: SO_BUSY_POLL refused"; fi
}

if [ "$BENCH_MODE" = insn ]; then
  MARKS=0
  mark() { insn_mark; MARKS=$((MARKS + 1)); }
  for s in $BENCH_SERVERS; do
    if [ "$s" = ours ]; then
      # Our server marks itself (igbvf_echo --insn_*): a fresh one per window, 4 marks each:
      # K idle polls, then the echoes from its first to the N-th.
      # (not "n": vm_lib.sh's wait_for counts down in a global n)
      ours_n=$(echo $BENCH_INSN_N | awk '{ print $NF }')
      for w in $BENCH_INSN_WINDOWS; do
        SERVER_FLAGS="--insn_idle_polls=$BENCH_INSN_IDLE --insn_echoes=$ours_n"
        start_server ours || continue
        MARKS=$((MARKS + 2))
        echo_client --server="$SERVER_IP" --port=7 --cpu=0 --samples="$ours_n" --warmup=0 \
          --window="$w" --timeout_ms=1000 > /tmp/client.out 2>&1 || fail "ours insn: $(cat /tmp/client.out)"
        stop_server
        MARKS=$((MARKS + 2))
        echo "BENCH-INSN-OURS $w $((MARKS - 3)) $((MARKS - 2)) $((MARKS - 1)) $MARKS $(grep -h '^igbvf_echo: insn' /tmp/server.out | tr '\n' ' ')"
        echo "BENCH-SERVER ours insn $w $(grep -E '^igbvf_echo: received' /tmp/server.out | tail -1)"
      done
      SERVER_FLAGS=
      continue
    fi
    start_server "$s" || continue
    echo_client --server="$SERVER_IP" --port=7 --cpu=0 --samples=200 --warmup=0 > /dev/null  # warm
    for w in $BENCH_INSN_WINDOWS; do
      for trips in $BENCH_INSN_N; do
        mark; b=$MARKS
        echo_client --server="$SERVER_IP" --port=7 --cpu=0 --samples="$trips" --warmup=0 \
          --window="$w" --timeout_ms=1000 > /tmp/client.out 2>&1 || fail "$s insn: $(cat /tmp/client.out)"
        mark
        echo "BENCH-INSN $s $w $trips $b $MARKS $(cat /tmp/client.out)"
      done
    done
    server_counters "$s" insn 1
  done
  check_failed
  exit
fi

r=1
while [ $r -le "$BENCH_REPEAT" ]; do
  for s in $BENCH_SERVERS; do
    start_server "$s" || continue
    client "$s" warm "$r" --samples=200 --warmup=0 > /dev/null
    client "$s" lat "$r" --samples="$BENCH_SAMPLES" --warmup=200
    client "$s" rate "$r" --samples="$BENCH_RATE_SAMPLES" --warmup=200 --window="$BENCH_WINDOW"
    server_counters "$s" all "$r"
  done
  r=$((r + 1))
done
check_failed
