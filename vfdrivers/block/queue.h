// block::Queue: one submission/completion queue pair on a block device, driven by polling.
//
// The unit of concurrency is the queue: one thread owns a queue and nothing on its fast path
// takes a lock or allocates. Commands are staged with Read/Write/Flush/WriteZeroes, handed to the
// device in a batch by Submit(), and their completions are collected with Poll(). Data buffers
// must lie inside memory registered with RegisterMemory() (once, before I/O), so that drivers can
// map it for DMA (NVMe) or as fixed buffers (io_uring) and never pin pages per I/O.
//
// Implemented by the io_uring driver (software extents) and the NVMe driver (VFIO).
// Not thread-safe: one queue, one thread.
#ifndef VFBROKER_VFDRIVERS_BLOCK_QUEUE_H_
#define VFBROKER_VFDRIVERS_BLOCK_QUEUE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace vfdrivers::block {

struct Completion {
  uint64_t tag = 0;     // the caller's tag from the staging call
  int32_t result = 0;   // bytes transferred (>= 0), or -errno
  // Driver-specific status (NVMe: SCT << 8 | SC; io_uring: 0) for diagnostics.
  uint32_t device_status = 0;
};

// absl::Status view of a completion: OK, or an error naming the errno / device status.
absl::Status CompletionStatus(const Completion& completion);

struct Geometry {
  uint32_t logical_block_size = 512;  // offsets and lengths must be multiples of this
  uint64_t size_bytes = 0;
  uint32_t max_transfer_bytes = 0;    // largest single command
};

class Queue {
 public:
  virtual ~Queue() = default;

  virtual const Geometry& geometry() const = 0;
  // Commands that may be outstanding at once (staged plus submitted, not yet polled).
  virtual uint32_t depth() const = 0;

  // Makes [base, base+length) usable as I/O buffers. Call once per region, before I/O.
  virtual absl::Status RegisterMemory(void* base, size_t length) = 0;

  // Stage a command. FAILED_PRECONDITION when the queue is full (poll first); INVALID_ARGUMENT
  // for a misaligned or out-of-range offset/length or a buffer outside registered memory.
  virtual absl::Status Read(uint64_t offset, void* buffer, uint32_t length, uint64_t tag) = 0;
  virtual absl::Status Write(uint64_t offset, const void* buffer, uint32_t length,
                             uint64_t tag) = 0;
  virtual absl::Status Flush(uint64_t tag) = 0;
  virtual absl::Status WriteZeroes(uint64_t offset, uint64_t length, uint64_t tag) = 0;

  // Hands every staged command to the device. Returns how many were submitted.
  virtual absl::StatusOr<uint32_t> Submit() = 0;

  // Collects up to out.size() completions without blocking; returns how many were written.
  virtual size_t Poll(absl::Span<Completion> out) = 0;

  // Commands submitted or staged and not yet returned by Poll().
  virtual uint32_t outstanding() const = 0;
};

}  // namespace vfdrivers::block

#endif  // VFBROKER_VFDRIVERS_BLOCK_QUEUE_H_
