#!/usr/bin/env bash
# 4 KiB random reads at QD32 on one CPU: our io_uring queue (block_bench) against fio's io_uring
# engine (default options, then tuned) and fio's psync engine (QD1 by nature), on the same
# device, in the same run. Prints a markdown table.
#
#   bench/block/run_block_bench.sh [DEVICE]
#
# Without DEVICE (root needed) it makes its own loop device, --direct-io=on over a 1 GiB
# /dev/shm file, and removes both on exit. Reads only; the device is opened read-only.
#
# Environment: RUNTIME (seconds per run, 10), REPEAT (rounds, 3; the table shows each engine's
# median round), CPU (the one CPU everything is pinned to, 1), QD (32),
# BLOCK_BENCH (path of the block_bench binary; built with bazel when unset).
set -euo pipefail

RUNTIME=${RUNTIME:-10}
REPEAT=${REPEAT:-3}
CPU=${CPU:-1}
QD=${QD:-32}
DEVICE=${1:-}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "run_block_bench: $*" >&2; exit 1; }

for tool in fio taskset python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

if [[ -z "${BLOCK_BENCH:-}" ]]; then
  if [[ -x "$here/block_bench" ]]; then  # bazel run: the binary sits next to the script
    BLOCK_BENCH="$here/block_bench"
  else
    (cd "$root" && bazel build //bench/block:block_bench >&2)
    BLOCK_BENCH="$root/bazel-bin/bench/block/block_bench"
  fi
fi
[[ -x "$BLOCK_BENCH" ]] || die "no block_bench at $BLOCK_BENCH"

work=$(mktemp -d /tmp/run_block_bench.XXXXXX)
backing=""
loopdev=""
cleanup() {
  [[ -n "$loopdev" ]] && losetup -d "$loopdev" || true
  [[ -n "$backing" ]] && rm -f "$backing" || true
  rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "$DEVICE" ]]; then
  [[ $(id -u) -eq 0 ]] || die "creating a loop device needs root (or pass a DEVICE)"
  backing=/dev/shm/run_block_bench.$$
  # fallocate: real pages, so reads copy memory instead of mapping the zero page.
  fallocate -l 1G "$backing"
  loopdev=$(losetup --direct-io=on --find --show "$backing")
  DEVICE=$loopdev
fi
[[ -b "$DEVICE" || -f "$DEVICE" ]] || die "$DEVICE is not a block device or file"
if [[ "$DEVICE" == /dev/loop* ]]; then
  dio=$(cat "/sys/block/$(basename "$DEVICE")/loop/dio" 2>/dev/null || echo "?")
  [[ "$dio" == 1 ]] || echo "warning: $DEVICE has direct I/O off (dio=$dio)" >&2
fi

fio_common=(--name=randread "--filename=$DEVICE" --direct=1 --rw=randread --bs=4k --numjobs=1
            --time_based "--runtime=$RUNTIME" --readonly --lat_percentiles=1
            --output-format=json)

run() {  # run ENGINE ROUND: one measurement, JSON into $work/ENGINE.ROUND.json
  local engine=$1 out="$work/$1.$2.json"
  case "$engine" in
    ours)
      taskset -c "$CPU" "$BLOCK_BENCH" "--device=$DEVICE" "--seconds=$RUNTIME" "--qd=$QD" \
        --json >"$out" ;;
    fio_uring)
      taskset -c "$CPU" fio "${fio_common[@]}" --ioengine=io_uring "--iodepth=$QD" \
        "--output=$out" >/dev/null ;;
    fio_uring_tuned)
      taskset -c "$CPU" fio "${fio_common[@]}" --ioengine=io_uring "--iodepth=$QD" \
        --fixedbufs --registerfiles --norandommap "--output=$out" >/dev/null ;;
    fio_psync)
      taskset -c "$CPU" fio "${fio_common[@]}" --ioengine=psync --iodepth=1 \
        "--output=$out" >/dev/null ;;
  esac
}

engines=(ours fio_uring fio_uring_tuned fio_psync)
echo "device $DEVICE, CPU $CPU, QD $QD, ${RUNTIME}s x $REPEAT rounds; kernel $(uname -r)," \
     "$(fio --version)" >&2
for ((round = 0; round < REPEAT; round++)); do
  # Rotate the order each round so no engine always runs first (or after the same one).
  for ((i = 0; i < ${#engines[@]}; i++)); do
    engine=${engines[(i + round) % ${#engines[@]}]}
    echo "  round $((round + 1))/$REPEAT: $engine" >&2
    run "$engine" "$round"
  done
done

python3 - "$work" "$REPEAT" "$DEVICE" "$CPU" "$QD" "$RUNTIME" <<'EOF'
import json, statistics, sys

work, repeat, device, cpu, qd, runtime = sys.argv[1:]
labels = {
    "ours": "vfbroker IoUringQueue (block_bench)",
    "fio_uring": "fio io_uring (default options)",
    "fio_uring_tuned": "fio io_uring --fixedbufs --registerfiles --norandommap",
    "fio_psync": "fio psync (QD1)",
}

def load(engine, r):
    with open(f"{work}/{engine}.{r}.json") as f:
        text = f.read()
    if engine == "ours":
        j = json.loads(text)
        return j["iops"], j["lat_p50_us"], j["lat_p99_us"], j.get("task_run", "")
    j = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
    read = j["jobs"][0]["read"]
    pct = read["lat_ns"]["percentile"]
    return read["iops"], pct["50.000000"] / 1e3, pct["99.000000"] / 1e3, ""

runs = {e: [load(e, r) for r in range(int(repeat))] for e in labels}
median = {}
for e, rs in runs.items():
    rs = sorted(rs, key=lambda x: x[0])
    median[e] = rs[len(rs) // 2]  # the median round, with its own latencies

print(f"4 KiB random read, QD {qd} (psync: 1), {runtime} s per run, pinned to CPU {cpu}, "
      f"device {device}; median of {repeat} rounds\n")
print("| engine | IOPS | p50 lat (us) | p99 lat (us) | vs fio io_uring | "
      "vs fio io_uring tuned | vs psync |")
print("|---|---:|---:|---:|---:|---:|---:|")
for e, label in labels.items():
    iops, p50, p99, mode = median[e]
    if mode:
        label += f" [{mode}]"
    print(f"| {label} | {iops:,.0f} | {p50:.1f} | {p99:.1f} | "
          f"{iops / median['fio_uring'][0]:.2f}x | {iops / median['fio_uring_tuned'][0]:.2f}x | "
          f"{iops / median['fio_psync'][0]:.2f}x |")
print("\nall rounds (IOPS): " + "; ".join(
    f"{e} " + " ".join(f"{r[0]:,.0f}" for r in rs) for e, rs in runs.items()))
EOF
