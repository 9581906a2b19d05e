// QueuePair: one NVMe submission/completion queue pair, polled, implementing block::Queue.
//
// The rings (SQ of 64-byte entries, CQ of 16-byte entries; Base §3.3.1, §3.3.3.1, §3.3.3.2)
// and one PRP-list page per command slot live in one DMA-mapped MemoryRegion allocated at
// creation.
// Staging writes the SQE straight into the ring; Submit() rings the SQ tail doorbell once per
// batch; Poll() consumes CQEs whose phase tag matches the expected phase (Base §3.3.3.2: the phase
// inverts on every pass through the ring) and rings the CQ head doorbell once per call.
// Command ids are slot indices; nothing on the I/O path allocates or locks.
//
// The device is not trusted: a CQE naming a command id that is not in flight, or reporting an
// SQ head pointer outside the ring, yields a Completion with tag kUnknownTag (or the named
// command's tag), result -EIO and device_status kStatusUnknownCid / kStatusBadSqHead, and
// poisons the queue: every later staging call returns DATA_LOSS (see health()).
//
// PRPs (Base §4.1.1): PRP1 holds the buffer's IOVA (dword aligned, any page offset); a transfer
// that ends within the next page puts that page in PRP2; a longer one points PRP2 at the slot's
// PRP list page. Transfers are capped (max_transfer_bytes) so one list page always suffices.
//
// This class does not create the queue on the controller; Controller does that (the admin
// queue is a QueuePair too, qid 0), and deletes it again when the queue pair is destroyed
// (the on-destroy hook). Destruction then unmaps every DMA mapping the queue pair made (its
// rings and the memory registered with it), so a controller re-created on the same device
// neither leaks IOVA space nor pinned pages (which count against RLIMIT_MEMLOCK).
// The Transport must outlive the queue pair.
//
// Thread safety: none. One queue, one thread.
#ifndef VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_QUEUE_PAIR_H_
#define VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_QUEUE_PAIR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "vfdrivers/block/nvme/nvme_spec.h"
#include "vfdrivers/block/nvme/nvme_transport.h"
#include "vfdrivers/block/queue.h"
#include "vfdrivers/memory/memory_region.h"

namespace vfdrivers::block::nvme {

struct QueuePairConfig {
  uint16_t qid = 0;
  uint32_t entries = 0;  // ring slots, 2..65536; depth() is entries - 1
  uint32_t dstrd = 0;    // CAP.DSTRD
  uint32_t nsid = 1;
  Geometry geometry;     // of namespace `nsid` (unused by the admin queue)
  bool write_zeroes = true;  // the controller supports Write Zeroes (Identify Controller ONCS)
};

class QueuePair : public Queue {
 public:
  static constexpr uint64_t kUnknownTag = ~uint64_t{0};

  static absl::StatusOr<std::unique_ptr<QueuePair>> Create(Transport* transport,
                                                           const QueuePairConfig& config);
  // Runs the on-destroy hook (Controller: delete the queue on the device), then unmaps every
  // DMA mapping this queue pair made.
  ~QueuePair() override;
  QueuePair(const QueuePair&) = delete;
  QueuePair& operator=(const QueuePair&) = delete;

  // Called first thing in the destructor; Controller sets it to delete the I/O queues.
  void set_on_destroy(std::function<void(QueuePair&)> hook) { on_destroy_ = std::move(hook); }

  // Undoes RegisterMemory(base, ...) (the same base): unmaps it for DMA. FAILED_PRECONDITION
  // while commands are outstanding (one of them may use the memory); NOT_FOUND for a base that
  // was not registered.
  absl::Status UnregisterMemory(void* base);
  // The IOVA the device uses for `p` (registered memory only), for raw commands and tests.
  absl::StatusOr<uint64_t> IovaOf(const void* p, size_t length) const;

  uint16_t qid() const { return config_.qid; }
  uint32_t entries() const { return config_.entries; }
  uint64_t sq_iova() const { return iova_; }
  uint64_t cq_iova() const { return iova_ + cq_offset_; }
  // OK, or the DATA_LOSS that an untrustworthy completion left behind.
  const absl::Status& health() const { return health_; }
  // Dword 0 (the command specific result) of the last completion Poll() returned.
  uint32_t last_dw0() const { return last_dw0_; }

  // Stages a ready-made command (admin commands); the command id is filled in.
  absl::Status StageRaw(Sqe sqe, uint64_t tag);

  // block::Queue.
  const Geometry& geometry() const override { return config_.geometry; }
  uint32_t depth() const override { return config_.entries - 1; }
  absl::Status RegisterMemory(void* base, size_t length) override;
  absl::Status Read(uint64_t offset, void* buffer, uint32_t length, uint64_t tag) override;
  absl::Status Write(uint64_t offset, const void* buffer, uint32_t length, uint64_t tag) override;
  absl::Status Flush(uint64_t tag) override;
  absl::Status WriteZeroes(uint64_t offset, uint64_t length, uint64_t tag) override;
  absl::StatusOr<uint32_t> Submit() override;
  size_t Poll(absl::Span<Completion> out) override;
  uint32_t outstanding() const override { return depth() - free_top_; }

 private:
  struct Slot {
    uint64_t tag = 0;
    uint32_t length = 0;  // bytes a success reports
    bool in_flight = false;
    uint64_t* prp_list = nullptr;
    uint64_t prp_list_iova = 0;
  };
  struct Registered {
    uintptr_t base = 0;  // page aligned
    size_t length = 0;
    uint64_t iova = 0;
    uintptr_t caller_base = 0;  // what the caller passed to RegisterMemory
  };

  QueuePair(Transport* transport, const QueuePairConfig& config) :
      transport_(transport), config_(config) {}
  uint32_t NextTail() const { return sq_tail_ + 1 == config_.entries ? 0 : sq_tail_ + 1; }
  bool HasRoom() const { return healthy_ && free_top_ != 0 && NextTail() != sq_head_; }
  // HasRoom() as a status: OK, the poisoned health, or "queue full".
  absl::Status CheckRoom() const;
  absl::Status StageIo(uint8_t opcode, uint64_t offset, const void* buffer, uint32_t length,
                       uint64_t tag);
  void Push(Sqe& sqe, uint64_t tag, uint32_t length);
  // A completion the device should not have written (unknown command id, SQ head outside the
  // ring): fills `c` with -EIO and poisons the queue. Off the fast path.
  void BadCompletion(uint16_t cid, uint16_t sq_head, Completion& c);

  // The registered region holding [addr, addr + length), or nullptr; the last hit is tried first.
  const Registered* FindRegistered(uintptr_t addr, size_t length) const;

  Transport* transport_;
  QueuePairConfig config_;
  std::function<void(QueuePair&)> on_destroy_;
  memory::MemoryRegion memory_;
  bool memory_mapped_ = false;
  uint64_t iova_ = 0;
  size_t cq_offset_ = 0;
  Sqe* sq_ = nullptr;
  volatile Cqe* cq_ = nullptr;
  volatile uint32_t* sq_doorbell_ = nullptr;
  volatile uint32_t* cq_doorbell_ = nullptr;
  uint32_t sq_tail_ = 0;
  uint32_t sq_head_ = 0;  // as the device last reported it
  uint32_t cq_head_ = 0;
  uint16_t phase_ = 1;    // the phase tag of new entries on this pass (Base §3.3.3.2: starts at 1)
  uint32_t staged_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint16_t> free_;  // stack of free slot indices (command ids)
  uint32_t free_top_ = 0;
  std::vector<Registered> registered_;
  absl::Status health_;
  bool healthy_ = true;  // health_.ok(), as a flag the staging path tests
  uint64_t block_mask_ = 0;  // logical_block_size - 1 (a power of two)
  uint32_t block_shift_ = 0;  // log2(logical_block_size)
  mutable size_t last_region_ = 0;  // registered_ index FindRegistered matched last
  uint32_t last_dw0_ = 0;
};

// Zeroes [offset, offset + length) of the queue pair's namespace with Write Zeroes commands of
// up to 65536 blocks each (32 MiB at 512-byte blocks), up to depth() of them in flight, and
// waits for all of them: the device zeroes (or deallocates) without any data crossing PCIe,
// so a whole namespace takes a few commands. The queue pair must be idle (FAILED_PRECONDITION
// otherwise); the first failed command's status is returned; DEADLINE_EXCEEDED after
// `timeout` (the queue pair is then not idle: treat the controller as failed).
absl::Status ZeroRange(QueuePair& qp, uint64_t offset, uint64_t length, absl::Duration timeout);
// ZeroRange over the whole namespace: the scrub before a namespace is handed to someone else.
absl::Status ZeroNamespace(QueuePair& qp, absl::Duration timeout);

}  // namespace vfdrivers::block::nvme

#endif  // VFBROKER_VFDRIVERS_BLOCK_NVME_NVME_QUEUE_PAIR_H_
