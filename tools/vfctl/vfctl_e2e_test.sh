#!/usr/bin/env bash
# vfctl against a real vfbrokerd on loop-device pools: every command, --json, and every exit
# status (0 ok, 1 usage, 2 unreachable, 3 refused, 4 not found), including a refusal of an
# unprivileged user. Needs root and /dev/loop-control (the broker creates loop devices);
# otherwise it says why and passes without testing.
#
# Usage: vfctl_e2e_test.sh VFCTL VFBROKERD
set -uo pipefail
# Run from the runfiles root (bazel test), where the shared helpers sit at their repo path.
source scripts/lib/broker_idle.sh

vfctl_bin=$(readlink -f "$1")
broker_bin=$(readlink -f "$2")

if [[ $(id -u) -ne 0 || ! -e /dev/loop-control ]]; then
  echo "SKIPPED: needs root and /dev/loop-control (vfbrokerd creates loop devices)"
  exit 0
fi

failures=0
check() {  # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1
  shift
  if "$@"; then echo "ok    $what"; else echo "FAIL  $what"; failures=$((failures + 1)); fi
}

# A world-traversable work directory: the unprivileged tenant must reach the sockets in it.
work=$(mktemp -d /tmp/vfctl-e2e.XXXXXX)
chmod 755 "$work"
broker_pid=
holder=
cleanup() {
  [[ -n $holder ]] && kill -TERM "$holder" 2>/dev/null && wait "$holder" 2>/dev/null
  if [[ -n $broker_pid ]]; then
    # Give back whatever a failed check left behind, so no loop device outlives the test.
    release_all_leases "$vfctl_bin" "$work/run"
    wait_pools_whole "$vfctl_bin" "$work/run"
    kill -TERM "$broker_pid" 2>/dev/null
    wait "$broker_pid" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/vfbroker.textproto" <<CONF
socket_dir: "$work/run"
socket_mode: 438
state_dir: "$work/state"
operator_uids: [0]
pools {
  name: "open"
  access { any_user: true }
  loop_extent { backing_path: "$work/open.img" size_bytes: 268435456 create: true }
}
pools {
  name: "closed"
  access { uids: [0] }
  loop_extent { backing_path: "$work/closed.img" size_bytes: 268435456 create: true }
}
CONF

"$broker_bin" --config="$work/vfbroker.textproto" >"$work/broker.log" 2>&1 &
broker_pid=$!

vfctl() { "$vfctl_bin" --socket_dir="$work/run" "$@"; }
# Runs vfctl, keeping stdout and stderr in $out and $err and the exit status in $rc.
run() {
  "$vfctl_bin" --socket_dir="$work/run" "$@" >"$work/out" 2>"$work/err"
  rc=$?
  out=$(cat "$work/out")
  err=$(cat "$work/err")
}
as_nobody() {
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$vfctl_bin" \
    --socket_dir="$work/run" "$@" >"$work/out" 2>"$work/err"
  rc=$?
  out=$(cat "$work/out")
  err=$(cat "$work/err")
}
json_get() {  # json_get PYTHON_EXPRESSION_OF_d < json
  python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

for _ in $(seq 100); do
  vfctl health >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== health"
run health
check "health answers SERVING" test "$rc" -eq 0 -a "$out" = SERVING
run --json health
check "health --json" test "$(json_get 'd["status"]' <<<"$out")" = SERVING

echo "== pools, stats, leases"
run pools
check "pools lists both pools" grep -q "^open .*256.0 MiB" <<<"$out"
check "pools shows closed to root" grep -q "^closed " <<<"$out"
check "pools has a header" grep -q "^POOL .*CAPACITY" <<<"$out"
run --json pools
check "pools --json" test "$(json_get '",".join(sorted(p["name"] for p in d["pools"]))' \
  <<<"$out")" = "closed,open"
run stats
check "stats" grep -q "^sessions " <<<"$out"
run --json stats
check "stats --json" test "$(json_get '"uptimeMs" in d' <<<"$out")" = True
run leases
check "no leases yet" test "$rc" -eq 0 -a "$out" = "no leases"

echo "== allocate-extent without --hold: released on exit"
run allocate-extent open 64M
check "allocate-extent exit 0" test "$rc" -eq 0
check "allocate-extent shows the size" grep -q "64.0 MiB (67108864 bytes)" <<<"$out"
check "allocate-extent says it releases" grep -q "released now that vfctl exits" <<<"$out"
check "allocate-extent released it" grep -q "released lease" <<<"$out"
run leases
check "nothing left after vfctl exited" test "$out" = "no leases"

echo "== allocate-extent --hold, with a watcher"
# Background jobs are started with the binary itself, not the vfctl function: $! must be
# vfctl's own pid for the signals below to reach it.
"$vfctl_bin" --socket_dir="$work/run" --json watch --for=8s >"$work/watch.json" 2>/dev/null &
json_watcher=$!
"$vfctl_bin" --socket_dir="$work/run" watch --for=8s >"$work/watch.txt" 2>/dev/null &
text_watcher=$!
sleep 1
# A script's background jobs start with SIGINT ignored; give this one the default disposition
# back, as an interactive shell would, so that it can be interrupted as with Ctrl-C.
python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
  "$vfctl_bin" --socket_dir="$work/run" --json allocate-extent open 32M --hold \
  >"$work/held.json" 2>"$work/held.err" &
holder=$!
lease_id=
for _ in $(seq 100); do
  lease_id=$(json_get 'd["id"]' <"$work/held.json" 2>/dev/null) && [[ -n $lease_id ]] && break
  sleep 0.1
done
check "--hold printed the lease as JSON" test -n "$lease_id"
run leases
check "held lease is listed" grep -q "^$lease_id .*32.0 MiB" <<<"$out"
run --json leases
check "leases --json" test "$(json_get 'd["leases"][0]["id"]' <<<"$out")" = "$lease_id"
kill -INT "$holder"
wait "$holder"
check "--hold exits 0 on SIGINT" test $? -eq 0
holder=
check "--hold reported the release" grep -q "released lease $lease_id" "$work/held.err"
run leases
check "released after SIGINT" test "$out" = "no leases"
wait "$json_watcher"
check "watch --json --for ends by itself with 0" test $? -eq 0
wait "$text_watcher"
check "watch --for ends by itself with 0" test $? -eq 0
check "watch printed the grant" grep -q "GRANTED .*lease=$lease_id pool=open" "$work/watch.txt"
check "watch printed the release" grep -q "RELEASED .*lease=$lease_id" "$work/watch.txt"
check "watch --json: one object per line" python3 -c '
import json, sys
kinds = [json.loads(line)["kind"] for line in open(sys.argv[1])]
assert "KIND_GRANTED" in kinds and "KIND_RELEASED" in kinds, kinds' "$work/watch.json"

echo "== release"
run release no-such-lease
check "release of an unknown lease: exit 4" test "$rc" -eq 4
check "... NOT_FOUND on stderr" grep -q "^vfctl: NOT_FOUND: " <<<"$err"

echo "== refusals"
run allocate-extent no-such-pool 64M
check "unknown pool: exit 4" test "$rc" -eq 4
run allocate-extent open 1G
check "larger than the pool: exit 3" test "$rc" -eq 3
check "... with the code's name" grep -qE "^vfctl: [A-Z_]+: " <<<"$err"
as_nobody allocate-extent closed 64M
check "closed pool refuses nobody: exit 3" test "$rc" -eq 3
check "... PERMISSION_DENIED on stderr" grep -q "^vfctl: PERMISSION_DENIED: .*closed" <<<"$err"
as_nobody allocate-extent open 16M
check "open pool admits nobody" test "$rc" -eq 0

echo "== usage errors and unreachable broker"
run frobnicate
check "unknown command: exit 1" test "$rc" -eq 1
run allocate-extent open 64MB
check "ambiguous size: exit 1" test "$rc" -eq 1
run --help
check "--help: exit 0 and documents exit status" grep -q "^Exit status:" <<<"$out"
"$vfctl_bin" --socket_dir="$work/nowhere" pools >/dev/null 2>"$work/err"
check "no broker: exit 2" test $? -eq 2
check "... UNAVAILABLE on stderr" grep -q "^vfctl: UNAVAILABLE: " "$work/err"
"$vfctl_bin" --socket_dir="$work/nowhere" health >/dev/null 2>&1
check "health, no broker: exit 2" test $? -eq 2
VFBROKER_SOCKET_DIR="$work/run" "$vfctl_bin" pools >/dev/null 2>&1
check "\$VFBROKER_SOCKET_DIR is honoured" test $? -eq 0

check "every pool whole again at the end" wait_pools_whole "$vfctl_bin" "$work/run"

if ((failures > 0)); then
  echo "$failures check(s) failed; broker log:"
  tail -n 30 "$work/broker.log"
  exit 1
fi
echo "PASS"
