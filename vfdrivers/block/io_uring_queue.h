// IoUringQueue: block::Queue over a block device (or regular file) fd, driven through io_uring.
//
// This is the driver for software extents: the broker hands a tenant an fd to a loop device (or
// any block device), and the tenant drives it from its own thread with no framework in between.
// It is shaped like a hardware queue driver so the same tenant code runs on NVMe:
//  - the fd is registered once as a fixed file, and RegisterMemory() registers fixed buffers,
//    so the kernel neither looks up the file nor pins pages per I/O (READ_FIXED/WRITE_FIXED);
//  - Read/Write/Flush/WriteZeroes only fill SQEs; Submit() hands the batch to the kernel with a
//    single io_uring_enter (none with SQPOLL);
//  - Poll() reaps CQEs straight from the shared ring and enters the kernel only when the ring is
//    empty, commands are in flight, and the kernel has (or may have) completions to post;
//  - nothing on that path allocates or locks; command state lives in a fixed slot table.
//
// The kernel is trusted no more than a device: every offset/length is validated before it
// reaches the ring, and a CQE whose user_data does not name an in-flight slot (or whose result
// is larger than requested) becomes an error completion rather than a crash. An unmatched CQE is
// reported with tag kUnknownTag and does not change outstanding().
//
// Results: Read/Write complete with the full length or a negative errno (a short transfer, which
// O_DIRECT inside the device should never produce, is reported as -EIO). Flush and WriteZeroes
// complete with 0 or a negative errno.
//
// Polling on a software device: a loop device's "hardware" is a kernel worker that may need the
// very CPU the polling thread spins on. A poll loop that finds nothing should sched_yield()
// rather than spin (bench/block/randread.cc does; measured 2.3x more IOPS when the other core
// was busy, and no loss when it was idle). Blocking in the kernel for completions was slower.
//
// Thread safety: none. One queue, one thread. Create() and RegisterMemory() may run on any thread
// before I/O starts; the first Submit() binds the ring to the calling thread (with
// IORING_SETUP_SINGLE_ISSUER the kernel enforces this), and from then on only that thread may
// use the queue, including destroying it.
#ifndef VFBROKER_VFDRIVERS_BLOCK_IO_URING_QUEUE_H_
#define VFBROKER_VFDRIVERS_BLOCK_IO_URING_QUEUE_H_

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "vfdrivers/block/queue.h"

namespace vfdrivers::block {

// How the kernel runs completion work (task_work) for this ring. Each mode falls back to the
// next one when the kernel refuses its setup flags: kDefer -> kCoop -> kPlain.
enum class IoUringTaskRun {
  kAuto,   // the measured default for this driver (see io_uring_queue.cc: kDefaultTaskRun)
  kDefer,  // DEFER_TASKRUN|SINGLE_ISSUER (6.1+): completions are posted only when we ask
  kCoop,   // COOP_TASKRUN|TASKRUN_FLAG (5.19+): no IPIs; the ring tells us when to enter
  kPlain,  // neither: the kernel interrupts the thread to post completions
};

struct IoUringQueueOptions {
  uint32_t depth = 32;  // 1..4096 commands outstanding
  // A kernel thread polls the SQ, so Submit() makes no system call while it is awake. It costs
  // a core; off by default. (SQPOLL rings use kPlain task running.)
  bool sqpoll = false;
  int sqpoll_cpu = -1;  // pin the SQ thread to this CPU (>= 0)
  uint32_t sqpoll_idle_ms = 1000;
  IoUringTaskRun task_run = IoUringTaskRun::kAuto;
  // Register the ring fd with the kernel (5.18+) so io_uring_enter skips the fd lookup.
  bool register_ring_fd = true;
};

class IoUringQueue final : public Queue {
 public:
  // Tag of an error completion whose CQE matched no in-flight command.
  static constexpr uint64_t kUnknownTag = ~uint64_t{0};
  // Largest single command: the largest buffer the kernel registers as one fixed buffer.
  static constexpr uint32_t kMaxTransferBytes = 1u << 30;
  // Registered buffers are kept in a table of this many entries (a region larger than 1 GiB
  // takes one entry per GiB).
  static constexpr uint32_t kMaxFixedBuffers = 64;

  // `fd`: a block device or regular file, opened with O_DIRECT (INVALID_ARGUMENT otherwise).
  // The queue registers the fd's file with the ring, which keeps its own reference: the caller
  // may close `fd` whenever it likes. A read-only fd gives a queue that refuses Write and
  // WriteZeroes with PERMISSION_DENIED.
  static absl::StatusOr<std::unique_ptr<IoUringQueue>> Create(int fd,
                                                              IoUringQueueOptions options = {});

  // Waits (a bounded time) for commands still in flight, then tears the ring down.
  ~IoUringQueue() override;

  IoUringQueue(const IoUringQueue&) = delete;
  IoUringQueue& operator=(const IoUringQueue&) = delete;

  const Geometry& geometry() const override { return geometry_; }
  uint32_t depth() const override { return depth_; }

  // Registers [base, base+length) as fixed buffers. The memory must stay mapped for the
  // queue's lifetime: the kernel pins the pages now, so memory unmapped and mapped again at
  // the same address would still be served from the old pages. INVALID_ARGUMENT for an empty
  // range or overlap with a registered one; RESOURCE_EXHAUSTED when the buffer table is full
  // or the pages cannot be pinned (RLIMIT_MEMLOCK for unprivileged tenants).
  absl::Status RegisterMemory(void* base, size_t length) override;

  // Buffers must also be aligned to the logical block size (O_DIRECT needs it).
  absl::Status Read(uint64_t offset, void* buffer, uint32_t length, uint64_t tag) override;
  absl::Status Write(uint64_t offset, const void* buffer, uint32_t length, uint64_t tag) override;
  absl::Status Flush(uint64_t tag) override;
  absl::Status WriteZeroes(uint64_t offset, uint64_t length, uint64_t tag) override;

  // UNAVAILABLE when the kernel is temporarily out of resources (poll, then retry); staged
  // commands stay staged.
  absl::StatusOr<uint32_t> Submit() override;
  size_t Poll(absl::Span<Completion> out) override;
  uint32_t outstanding() const override { return staged_ + in_flight_; }

  // What setup negotiated (after fallbacks): for logs and benchmarks.
  IoUringTaskRun task_run() const { return task_run_; }
  uint32_t setup_flags() const { return setup_flags_; }
  bool writable() const { return writable_; }

  // Test hook: submits a NOP carrying a raw user_data, to exercise the unmatched-CQE path.
  absl::Status SubmitNopForTesting(uint64_t user_data);

 private:
  enum class Op : uint8_t { kRead, kWrite, kFlush, kWriteZeroes };

  // One command's state from staging until its completion is returned.
  struct Slot {
    uint64_t tag = 0;
    uint32_t expected = 0;    // bytes for Read/Write; 0 for the others
    uint32_t generation = 0;  // bumped on every use, so a stale or duplicate CQE cannot match
    Op op = Op::kRead;
    bool busy = false;
  };

  // A registered fixed buffer (one table entry). A region over 1 GiB spans several.
  struct FixedBuffer {
    uintptr_t base = 0;
    size_t length = 0;
    uint16_t index = 0;
  };

  IoUringQueue() = default;
  absl::Status Init(int fd, const IoUringQueueOptions& options);
  absl::Status SetUpRing(const IoUringQueueOptions& options);
  absl::Status ReadGeometry(int fd);
  absl::Status StartOnThisThread();

  absl::Status CheckRange(uint64_t offset, uint64_t length) const;
  // The fixed-buffer entry holding [buffer, buffer+length): its index, -1 when the range is
  // registered but straddles two entries, or an error when it is not registered memory.
  absl::StatusOr<int> FindBuffer(const void* buffer, uint32_t length) const;
  // Staging is two steps so that nothing can fail once an SQE is taken from the ring: NextSqe
  // checks for room and takes one, the caller fills it, Commit assigns it a slot.
  absl::StatusOr<io_uring_sqe*> NextSqe();
  void Commit(io_uring_sqe* sqe, Op op, uint64_t tag, uint32_t expected);
  absl::Status StageReadWrite(Op op, uint64_t offset, const void* buffer, uint32_t length,
                              uint64_t tag);
  Completion Complete(const io_uring_cqe& cqe);
  size_t Reap(absl::Span<Completion> out);
  bool KernelMayHaveCompletions() const;

  io_uring ring_{};
  bool ring_initialized_ = false;
  bool started_ = false;  // the ring is enabled and bound to a thread
  bool needs_enable_ = false;
  bool register_ring_fd_ = false;
  IoUringTaskRun task_run_ = IoUringTaskRun::kPlain;
  uint32_t setup_flags_ = 0;
  bool writable_ = false;
  int zero_mode_ = 0;  // fallocate mode for WriteZeroes

  Geometry geometry_;
  uint32_t depth_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;  // stack, capacity depth_
  uint32_t free_top_ = 0;
  uint32_t staged_ = 0;               // slots whose SQEs the kernel has not consumed yet
  uint32_t in_flight_ = 0;            // submitted, completion not yet returned by Poll
  std::vector<FixedBuffer> buffers_;  // capacity kMaxFixedBuffers, never reallocated
};

}  // namespace vfdrivers::block

#endif  // VFBROKER_VFDRIVERS_BLOCK_IO_URING_QUEUE_H_
