// Test helpers for any block::Queue implementation (io_uring today, NVMe later).
// Not thread-safe; use from the thread that drives the queue.
#ifndef VFBROKER_VFDRIVERS_BLOCK_QUEUE_TEST_UTIL_H_
#define VFBROKER_VFDRIVERS_BLOCK_QUEUE_TEST_UTIL_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "vfdrivers/block/queue.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block::testing {

// Submits what is staged, then polls until `count` completions arrived (DEADLINE_EXCEEDED
// after `timeout`).
absl::StatusOr<std::vector<Completion>> SubmitAndWait(Queue& queue, size_t count,
                                                      absl::Duration timeout = absl::Seconds(10));

// Runs one command to completion and returns its completion status.
absl::Status RunOne(Queue& queue, absl::Status staged);

struct ModelCheckOptions {
  uint64_t ops = 5000;
  uint32_t max_blocks = 8;  // per read/write/zeroes command
  uint64_t seed = 1;
  uint64_t device_bytes = 0;  // how much of the device to use; 0: all (capped at 64 MiB)
  bool zeroes = true;         // issue WriteZeroes too
};

// Random reads, writes, write-zeroes and flushes at the queue's full depth, checked against an
// in-memory copy of the device. Commands in flight never overlap a write in flight, so every
// read has one right answer. The device is first zeroed (with WriteZeroes) so the model starts
// known. `pool` holds at least depth() buffers of max_blocks blocks each, registered with the
// queue by the caller (it must outlive the queue). Reports failures with gtest assertions;
// call it under ASSERT_NO_FATAL_FAILURE.
void CheckAgainstModel(Queue& queue, memory::BufferPool& pool, const ModelCheckOptions& options);

}  // namespace vfdrivers::block::testing

#endif  // VFBROKER_VFDRIVERS_BLOCK_QUEUE_TEST_UTIL_H_
