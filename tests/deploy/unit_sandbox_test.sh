#!/usr/bin/env bash
# Runs the real vfbrokerd with the privileges deploy/systemd/vfbrokerd.service gives it, through
# a full lease life cycle, and checks that the unit's sandbox lets it do its work:
#   - the capability bounding set is the unit's CapabilityBoundingSet= (empty: root without any
#     capability), with no_new_privs, applied with setpriv as systemd would;
#   - the cycle: allocate and release (provision, scrub, remove), hold a lease across a broker
#     crash (SIGKILL) and restart (journal replay, re-adoption), release it after;
#   - every system call the broker made (traced with strace from its execve on) is allowed by
#     the unit's SystemCallFilter= lines, as expanded by `systemd-analyze syscall-filter`.
# This machine has no systemd as PID 1, so the unit itself cannot be started here; this is the
# closest check that its restrictions and the broker fit together. Needs root, /dev/loop-control,
# setpriv and strace; otherwise it says why and passes without testing.
#
# Also emulated: PrivateNetwork=yes (the broker runs in a network namespace of its own, and the
# tenants, outside it, still reach its path sockets) and RestrictAddressFamilies=AF_UNIX (socket()
# of any other family fails with EAFNOSUPPORT, via af_unix_only).
#
# Usage: unit_sandbox_test.sh UNIT_FILE VFBROKERD VFCTL AF_UNIX_ONLY
set -uo pipefail
# Run from the runfiles root (bazel test), where the shared helpers sit at their repo path.
source scripts/lib/broker_idle.sh

unit=$1
broker_bin=$(readlink -f "$2")
vfctl_bin=$(readlink -f "$3")
af_unix_only_bin=$(readlink -f "$4")

for tool in setpriv strace systemd-analyze python3 unshare; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: $tool not installed"
    exit 0
  fi
done
if [[ $(id -u) -ne 0 || ! -e /dev/loop-control ]]; then
  echo "SKIPPED: needs root and /dev/loop-control (vfbrokerd creates loop devices)"
  exit 0
fi

fail() { echo "FAIL: $*" >&2; exit 1; }

# --- What the unit grants -------------------------------------------------------------------
unit_values() { sed -n "s/^$1=//p" "$unit"; }

# CapabilityBoundingSet= lines accumulate; an empty one means "no capabilities".
bounding="-all"
for cap in $(unit_values CapabilityBoundingSet); do
  [[ $cap == ~* ]] && fail "this test does not handle a negated CapabilityBoundingSet= ($cap)"
  name=${cap#CAP_}
  bounding+=",+${name,,}"
done
grep -qx "NoNewPrivileges=yes" "$unit" || fail "the unit no longer sets NoNewPrivileges=yes"
echo "capability bounding set as in the unit: $bounding"

# The network sandbox, outermost first: unshare needs privileges the broker will not have.
sandbox=()
if grep -qx "PrivateNetwork=yes" "$unit"; then
  sandbox+=(unshare --net)
  echo "PrivateNetwork=yes: a network namespace of its own"
fi
sandbox+=(setpriv --bounding-set="$bounding" --inh-caps=-all --ambient-caps=-all --no-new-privs)
families=$(unit_values RestrictAddressFamilies)
if [[ $families == AF_UNIX ]]; then
  sandbox+=("$af_unix_only_bin")
  echo "RestrictAddressFamilies=AF_UNIX: other socket families fail with EAFNOSUPPORT"
elif [[ -n $families ]]; then
  fail "this test emulates only RestrictAddressFamilies=AF_UNIX, not '$families'"
fi

# Expands a system call group (recursively) into call names.
expand_group() {
  systemd-analyze syscall-filter "$1" 2>/dev/null | sed -n '2,$p' | sed 's/^ *//' |
    grep -v -e '^#' -e '^$' | while read -r entry; do
    if [[ $entry == @* ]]; then expand_group "$entry"; else echo "$entry"; fi
  done
}
work=$(mktemp -d /tmp/vfbrokerd-sandbox.XXXXXX)
chmod 755 "$work"
: >"$work/allowed"
: >"$work/denied"
while read -r line; do
  target="$work/allowed"
  if [[ $line == ~* ]]; then
    target="$work/denied"
    line=${line#\~}
  fi
  for entry in $line; do
    if [[ $entry == @* ]]; then expand_group "$entry"; else echo "$entry"; fi
  done >>"$target"
done < <(unit_values SystemCallFilter)
sort -u -o "$work/allowed" "$work/allowed"
sort -u -o "$work/denied" "$work/denied"
[[ -s $work/allowed ]] || fail "could not expand the unit's SystemCallFilter="

# --- The broker, started as the unit would start it ------------------------------------------
cat >"$work/vfbroker.textproto" <<CONF
socket_dir: "$work/run"
socket_mode: 438
state_dir: "$work/state"
pools {
  name: "scratch"
  access { any_user: true }
  loop_extent { backing_path: "$work/scratch.img" size_bytes: 268435456 create: true }
}
CONF

broker_pid=
start_broker() {  # start_broker TRACE_FILE
  strace -f -qq -o "$1" "${sandbox[@]}" \
    "$broker_bin" --config="$work/vfbroker.textproto" >>"$work/broker.log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 200); do
    "$vfctl_bin" --socket_dir="$work/run" health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -n 20 "$work/broker.log"
  fail "the broker did not start with the unit's privileges"
}
stop_broker() {  # stop_broker SIGNAL
  [[ -z $broker_pid ]] && return
  # $broker_pid is strace; the broker is the one process strace started.
  local traced
  traced=$(pgrep -P "$broker_pid")
  if [[ -n $traced ]]; then kill "-$1" "$traced"; else kill "-$1" "$broker_pid"; fi
  wait "$broker_pid" 2>/dev/null
  broker_pid=
}
holder=
cleanup() {
  [[ -n $holder ]] && kill -TERM "$holder" 2>/dev/null && wait "$holder" 2>/dev/null
  if [[ -n $broker_pid ]]; then
    # Give back whatever a failed check left behind, so no loop device outlives the test.
    release_all_leases "$vfctl_bin" "$work/run"
    wait_pools_whole "$vfctl_bin" "$work/run"
  fi
  stop_broker TERM
  rm -rf "$work"
}
trap cleanup EXIT

vfctl() { "$vfctl_bin" --socket_dir="$work/run" "$@"; }

echo "== start (journal empty, pool file created)"
start_broker "$work/trace.1"
broker_process=$(pgrep -P "$broker_pid")
if [[ ${sandbox[0]} == unshare ]]; then
  [[ $(readlink "/proc/$broker_process/ns/net") != $(readlink /proc/self/ns/net) ]] ||
    fail "the broker is not in a network namespace of its own"
  echo "the broker's network namespace is its own; tenants outside reach its sockets"
fi
if [[ $bounding == -all ]]; then
  capabilities=$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$broker_process/status")
  [[ $capabilities =~ ^0+$ ]] || fail "the broker runs with capabilities $capabilities"
  echo "the broker's effective capabilities: $capabilities (none)"
fi

echo "== allocate and release: provision, scrub, remove"
vfctl allocate-extent scratch 64M >"$work/out" 2>&1 ||
  fail "allocate-extent failed with the unit's privileges: $(cat "$work/out")"
grep -q "released lease" "$work/out" || fail "release failed: $(cat "$work/out")"
wait_pools_whole "$vfctl_bin" "$work/run" || fail "the released extent was not scrubbed and freed within 30 s"

echo "== hold a lease across a broker crash"
# The binary itself, not the vfctl function, so that $! is vfctl's pid.
"$vfctl_bin" --socket_dir="$work/run" --json allocate-extent scratch 32M --hold \
  >"$work/held.json" 2>"$work/held.err" &
holder=$!
lease_id=
for _ in $(seq 100); do
  lease_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' \
    <"$work/held.json" 2>/dev/null) && [[ -n $lease_id ]] && break
  sleep 0.1
done
[[ -n $lease_id ]] || fail "no lease held: $(cat "$work/held.err")"
stop_broker KILL
start_broker "$work/trace.2"
# The holder checks in every few seconds; its lease must be there for it (re-adopted).
vfctl leases | grep -q "^$lease_id " || fail "lease $lease_id not re-adopted after the crash"
kill -TERM "$holder"
wait "$holder" || fail "the holder could not release its re-adopted lease: $(cat "$work/held.err")"
holder=
vfctl leases | grep -qx "no leases" || fail "leases left after release: $(vfctl leases)"
wait_pools_whole "$vfctl_bin" "$work/run" || fail "the re-adopted extent was not scrubbed and freed within 30 s"
scrubs=$(vfctl --json stats | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["scrubsTotal"]))')
[[ $scrubs -ge 1 ]] || fail "the pool is whole but no scrub was counted (scrubsTotal $scrubs)"
echo "scrubbed and freed after the restart"
stop_broker TERM

echo "== system calls against the unit's SystemCallFilter="
# Everything from the broker's execve on (setpriv's own calls before it do not count).
for trace in "$work/trace.1" "$work/trace.2"; do
  awk -v broker="$broker_bin" '
    !started && index($0, "execve(\"" broker "\"") && $0 ~ /= 0$/ { started = 1; next }
    started && match($0, /^[0-9]+ +[a-z0-9_]+\(/) {
      call = substr($0, RSTART, RLENGTH - 1); sub(/^[0-9]+ +/, "", call); print call
    }' "$trace"
done | sort -u >"$work/used"
[[ -s $work/used ]] || fail "no system calls traced"
echo "the broker used $(wc -l <"$work/used") distinct system calls"
# The trace must have seen the work itself: loop requests and descriptor passing.
for call in ioctl sendmsg; do
  grep -qx "$call" "$work/used" || fail "no $call in the trace: the trace missed the broker's work"
done
refused_families=$(grep -ho ' socket(AF_[A-Z0-9]*, .* = -1 EAFNOSUPPORT' "$work"/trace.* |
  sed 's/ socket(\(AF_[A-Z0-9]*\),.*/\1/' | sort -u | tr '\n' ' ')
[[ -n $refused_families ]] && echo "refused socket families the broker lived with: $refused_families"
missing=$(comm -23 "$work/used" "$work/allowed")
denied=$(comm -12 "$work/used" "$work/denied")
[[ -z $missing ]] || fail "system calls outside SystemCallFilter=: $(echo $missing)"
[[ -z $denied ]] || fail "system calls the unit denies: $(echo $denied)"

echo "PASS"
