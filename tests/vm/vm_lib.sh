# Helpers for the tests/vm guest's /init and scenarios (busybox sh), installed as /lib/vm_lib.sh.
# A scenario calls fail for each failed check and exits non-zero if any failed (check_failed).
FAILED=0
log() { echo "vm: $*"; }
fail() { echo "VM-CHECK FAIL: $*"; FAILED=1; }
check_failed() { [ "$FAILED" = 0 ]; }
finish() {
  log "done at uptime $(cut -d' ' -f1 /proc/uptime)s"
  if [ "$FAILED" = 0 ]; then echo "VM-RESULT: PASS"; else echo "VM-RESULT: FAIL"; fi
  sync
  poweroff -f
}
find_devs() {  # vendor device -> every matching BDF, in bus order
  for p in /sys/bus/pci/devices/*; do
    if [ "$(cat "$p/vendor")" = "$1" ] && [ "$(cat "$p/device")" = "$2" ]; then basename "$p"; fi
  done
}
find_dev() { find_devs "$@" | head -1; }  # vendor device -> first matching BDF
wait_for() {  # tries(0.2 s each) command...
  # `local`: a scenario's own variables (n, tries, ...) must survive a wait.
  local wait_for_tries=$1; shift
  while ! "$@" 2>/dev/null; do
    wait_for_tries=$((wait_for_tries - 1)); [ $wait_for_tries -gt 0 ] || return 1
    sleep 0.2
  done
}
enable_vfs() {  # PF count
  echo 0 > "/sys/bus/pci/devices/$1/sriov_drivers_autoprobe" || fail "$1: sriov_drivers_autoprobe"
  echo "$2" > "/sys/bus/pci/devices/$1/sriov_numvfs" || fail "$1: sriov_numvfs=$2"
  [ "$(cat "/sys/bus/pci/devices/$1/sriov_numvfs")" = "$2" ] || fail "$1: sriov_numvfs is not $2"
}
bind_vfio() {  # BDF: binds it to vfio-pci; prints its IOMMU group
  p=/sys/bus/pci/devices/$1
  echo vfio-pci > "$p/driver_override"
  [ -e "$p/driver" ] && echo "$1" > "$p/driver/unbind"
  echo "$1" > /sys/bus/pci/drivers_probe
  basename "$(readlink "$p/iommu_group")"
}
# NVMe: gives secondary controller SCID 1 VI and 2 VQ and brings it online (Virtualization
# Management, see nvme_vadmin.c); the primary's flexible resources must have been released.
nvme_vf_online() {  # DEV SCID
  nvme_vadmin "$1" virt "$2" 1 8 1 && nvme_vadmin "$1" virt "$2" 0 8 2 && nvme_vadmin "$1" virt "$2" 0 9 0
}
# Releases the flexible resources QEMU gives the primary controller at power-on (they take effect
# at its next reset), so the secondaries can have them.
nvme_release_primary_resources() {  # PF CTRL
  caps=$(nvme_vadmin "/dev/$2" caps) || { fail "identify primary controller capabilities"; return 1; }
  log "primary: $caps"
  case "$caps" in
    *"vqrfap=0 virfap=0"*) return 0 ;;
  esac
  pc=$(echo "$caps" | sed 's/.*cntlid=\([0-9]*\).*/\1/')
  nvme_vadmin "/dev/$2" virt "$pc" 0 1 0 && nvme_vadmin "/dev/$2" virt "$pc" 1 1 0 ||
    { fail "release primary flexible resources"; return 1; }
  echo 1 > "/sys/bus/pci/devices/$1/reset" || { fail "reset $1"; return 1; }
  wait_for 50 grep -qx live "/sys/class/nvme/$2/state" || { fail "$2 not live after reset"; return 1; }
}
# --- The broker scenarios' (broker_*.sh) shared steps ---
need_commands() {  # command...: each must be in the guest, else the scenario fails at once
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || { fail "no $c in the guest"; check_failed; exit 1; }
  done
}
# Prints iproute2's ip, wherever the harness put it (busybox's adds no neighbours, shows no VFs).
find_iproute2() {
  local c
  for c in /usr/sbin/ip /sbin/ip /bin/ip; do
    [ -x "$c" ] && "$c" -V 2>&1 | grep -q iproute2 && { echo "$c"; return 0; }
  done
  return 1
}
show_log() {  # file prefix: the file, each line indented under prefix
  sed "s/^/  $2: /" "$1"
}
# vfbrokerd in the background; its pid in /tmp/broker.pid.<socket dir's name> (stop_broker's).
start_broker() {  # config log socket_dir
  vfbrokerd --config="$1" --log_level=debug >> "$2" 2>&1 &
  echo $! > "/tmp/broker.pid.$(basename "$3")"
  wait_for 300 test -S "$3/grpc.sock" || { fail "vfbrokerd did not come up ($1)"; return 1; }
  wait_for 50 grep -q "vfbrokerd ready" "$2" || { fail "vfbrokerd not ready ($1)"; return 1; }
}
stop_broker() {  # socket_dir: SIGTERM, then wait until it has exited
  local stop_broker_pid
  stop_broker_pid=$(cat "/tmp/broker.pid.$(basename "$1")")
  kill -TERM "$stop_broker_pid"
  wait_for 100 sh -c "! kill -0 $stop_broker_pid 2>/dev/null" || fail "broker did not stop"
}
field() {  # file key -> the value of key=... on the file's TENANT OK line
  sed -n "s/.*TENANT OK.* $2=\([^ ]*\).*/\1/p" "$1" | head -1
}
# Root's open of each group node must fail with EBUSY (a tenant holds it).
expect_groups_busy() {  # group node...
  local g
  for g in "$@"; do
    if (exec 3<> "$g") 2>/tmp/peek.err; then fail "root opened held group $g"; fi
    log "root opening held $g: $(cat /tmp/peek.err)"
    grep -q "busy" /tmp/peek.err || fail "opening held group $g: not EBUSY"
  done
}
# Two NIC tenants, A and B, each started with --watch_seconds, --watch_until_file and --hold:
# once B watches, the peer pings A's address (B must not see it); then both stop watching and
# must hold, neither having counted a frame not its own.
watch_pair_ping() {  # a.out a_stop_file b.out b_stop_file a_address
  wait_for 600 grep -q "WATCHING\|TENANT FAIL" "$3"
  ping -c 5 -W 1 "$5" > /tmp/ping.out 2>&1
  log "pinged A's $5: $(tail -2 /tmp/ping.out | tr '\n' ' ')"
  touch "$2" "$4"
  wait_for 100 grep -q "HOLDING\|TENANT FAIL" "$3"
  wait_for 100 grep -q "HOLDING\|TENANT FAIL" "$1"
  show_log "$3" "tenant B"
  grep -q "TENANT OK" "$3" || fail "tenant B failed"
  grep "FOREIGN" "$1" | while read -r l; do log "tenant A: $l"; done
  grep -q "FOREIGN frames=0 " "$1" ||
    fail "tenant A received frames not its own (during B's exchange)"
  grep -q "FOREIGN frames=0 " "$3" || fail "tenant B received frames not its own (pings to A)"
}
