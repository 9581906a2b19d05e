// The measuring half of block_bench, as a library: random fixed-size reads (optionally mixed
// with writes) at a fixed queue depth, on one thread, through any block::Queue.
//
// It takes a Queue rather than a device path so that a tenant that got its fd from the broker
// can build its own queue (IoUringQueue::Create(fd) or the NVMe driver) and call RunRandRead on
// it, and so the same loop measures every driver.
//
// Not thread-safe: runs on the calling thread, which must be the queue's thread.
#ifndef VFBROKER_BENCH_BLOCK_RANDREAD_H_
#define VFBROKER_BENCH_BLOCK_RANDREAD_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vfdrivers/block/queue.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfbroker::bench {

struct RandReadOptions {
  uint32_t block_size = 4096;  // multiple of the device's logical block size
  uint32_t queue_depth = 32;   // commands kept in flight; at most queue.depth()
  absl::Duration duration = absl::Seconds(10);
  uint32_t write_percent = 0;  // 0..100; >0 overwrites the device with buffer contents
  uint64_t span_bytes = 0;     // offsets fall in [0, span_bytes); 0: the whole device
  uint64_t seed = 1;
  // sched_yield() after a Poll that found nothing. On a loop device the "device" is a kernel
  // worker that may be scheduled on this very CPU; spinning would starve it (measured: 188k vs
  // 440k IOPS when the other core is busy). Costs nothing measurable when the CPU is ours.
  bool yield_when_idle = true;
  // Submit() once this many commands are staged (or when nothing else is in flight).
  uint32_t submit_batch = 1;
};

struct RandReadResult {
  uint64_t ios = 0;    // completed within the measured interval
  uint64_t reads = 0;  // commands issued, including the last ones, drained unmeasured
  uint64_t writes = 0;
  uint64_t submit_calls = 0;
  absl::Duration elapsed;
  double iops = 0;
  double mb_per_s = 0;  // 10^6 bytes per second
  // Per command, from staging to the completion being polled (fio's "lat", not "clat").
  absl::Duration lat_mean, lat_p50, lat_p99, lat_p999, lat_max;
};

// queue_depth buffers of block_size bytes, registered with `queue`. Keep them alive as long as
// the queue: registered memory cannot be unregistered (see Queue::RegisterMemory).
absl::StatusOr<vfdrivers::memory::BufferPool> MakeRegisteredBuffers(vfdrivers::block::Queue& queue,
                                                                    const RandReadOptions& options);

// Keeps queue_depth commands in flight for `duration`, using `buffers` (from
// MakeRegisteredBuffers, or any registered pool with that many buffers of that size), then
// drains. The queue must be idle on entry. Fails on the first command that completes with an
// error.
absl::StatusOr<RandReadResult> RunRandRead(vfdrivers::block::Queue& queue,
                                           vfdrivers::memory::BufferPool& buffers,
                                           const RandReadOptions& options);

// One line of JSON with every field (durations in microseconds), for scripts.
std::string ToJson(const RandReadResult& result);

}  // namespace vfbroker::bench

#endif  // VFBROKER_BENCH_BLOCK_RANDREAD_H_
