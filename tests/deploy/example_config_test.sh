#!/usr/bin/env bash
# The example configuration that ships beside the unit:
#   1. `vfbrokerd --check_config` accepts it (exit status 0);
#   2. it agrees with the unit: socket_dir is the unit's RuntimeDirectory=, state_dir its
#      StateDirectory=, and every pool's backing file lies where ProtectSystem=strict leaves the
#      broker write access (the state or runtime directory, or a ReadWritePaths= entry).
#
# Usage: example_config_test.sh VFBROKERD_BINARY CONFIG_FILE UNIT_FILE
set -euo pipefail

broker=$1
config=$2
unit=$3

fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== vfbrokerd --check_config --config=$config"
status=0
output=$("$broker" --check_config --config="$config" 2>&1) || status=$?
echo "$output"
[[ $status -eq 0 ]] || fail "vfbrokerd --check_config exited $status"

# The value of a `key: "value"` line of the text proto (first occurrence, comments ignored).
config_string() {
  sed -n "s/^[[:space:]]*$1:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$config"
}
unit_setting() {
  sed -n "s/^$1=//p" "$unit"
}

runtime_dir=/run/$(unit_setting RuntimeDirectory)
state_dir=/var/lib/$(unit_setting StateDirectory)
socket_dir=$(config_string socket_dir | head -n 1)
config_state_dir=$(config_string state_dir | head -n 1)

echo "== the configuration matches the unit"
# Both fields default to these paths when left out of the configuration.
[[ ${socket_dir:-/run/vfbroker} == "$runtime_dir" ]] ||
  fail "socket_dir '$socket_dir' is not the unit's RuntimeDirectory $runtime_dir"
[[ ${config_state_dir:-/var/lib/vfbroker} == "$state_dir" ]] ||
  fail "state_dir '$config_state_dir' is not the unit's StateDirectory $state_dir"

writable=("$state_dir" "$runtime_dir")
while read -r path; do
  [[ -n $path ]] && writable+=("${path#-}")
done < <(unit_setting ReadWritePaths | tr ' ' '\n')

while read -r backing; do
  [[ -z $backing ]] && continue
  ok=no
  for dir in "${writable[@]}"; do
    [[ $backing == "$dir"/* ]] && ok=yes
  done
  [[ $ok == yes ]] ||
    fail "pool backing file $backing is outside the unit's writable paths (${writable[*]})"
  echo "backing file $backing: writable under the unit"
done < <(config_string backing_path)

echo "PASS"
