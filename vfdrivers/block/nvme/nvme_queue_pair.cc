#include "vfdrivers/block/nvme/nvme_queue_pair.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/base/optimization.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace vfdrivers::block::nvme {
namespace {

size_t RoundUpPage(size_t n) { return (n + kPageSize - 1) & ~(kPageSize - 1); }

// A transfer of up to this many bytes needs at most 33 pages (a first partial page and 32
// more), and one PRP list page holds 512 entries (Base §4.1.1), so lists never chain.
constexpr uint32_t kMaxTransferBytes = 128 * 1024;

// The staging path's errors, built out of line so that the fast path keeps a small frame.
[[gnu::cold, gnu::noinline]] absl::Status BadIo(uint64_t offset, uint32_t length) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "NVMe I/O: offset %u length %u outside the namespace or not block aligned", offset,
      length));
}
[[gnu::cold, gnu::noinline]] absl::Status BadBuffer(bool aligned) {
  return absl::InvalidArgumentError(aligned
                                        ? "NVMe I/O: buffer outside registered memory"
                                        : "NVMe I/O: buffer not dword aligned (PRP1, Base §4.1.1)");
}

}  // namespace

absl::StatusOr<std::unique_ptr<QueuePair>> QueuePair::Create(Transport* transport,
                                                             const QueuePairConfig& config) {
  if (transport == nullptr) return absl::InvalidArgumentError("QueuePair: null transport");
  if (config.entries < 2 || config.entries > 65536) {
    return absl::InvalidArgumentError(
        absl::StrFormat("QueuePair: %u entries (need 2..65536)", config.entries));
  }
  std::unique_ptr<QueuePair> qp(new QueuePair(transport, config));
  // LBADS makes the block size a power of two (NVM §4.1.5.1, LBA Format Data Structure); the
  // admin queue has no namespace and does no block I/O.
  const uint32_t bs = config.geometry.logical_block_size;
  if (config.qid != 0 && (bs < 512 || (bs & (bs - 1)) != 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("QueuePair: logical block size %u is not a power of two >= 512", bs));
  }
  if (bs != 0) {
    qp->block_mask_ = bs - 1;
    while ((1u << qp->block_shift_) < bs) ++qp->block_shift_;
  }
  if (qp->config_.geometry.max_transfer_bytes == 0 ||
      qp->config_.geometry.max_transfer_bytes > kMaxTransferBytes) {
    qp->config_.geometry.max_transfer_bytes = kMaxTransferBytes;
  }
  const uint32_t slots = config.entries - 1;
  const size_t sq_bytes = RoundUpPage(size_t{config.entries} * sizeof(Sqe));
  const size_t cq_bytes = RoundUpPage(size_t{config.entries} * sizeof(Cqe));
  // A PRP-list page per command slot, for transfers over two pages. Admin commands here carry
  // at most one page (Identify), so the admin queue pins no list pages.
  const uint32_t list_pages = config.qid == 0 ? 0 : slots;
  const size_t total = sq_bytes + cq_bytes + size_t{list_pages} * kPageSize;
  absl::StatusOr<memory::MemoryRegion> region =
      memory::MemoryRegion::Allocate(total, {memory::HugePages::kNever});
  if (!region.ok()) return region.status();
  qp->memory_ = std::move(*region);
  absl::StatusOr<uint64_t> iova = transport->MapDma(qp->memory_.base(), qp->memory_.size());
  if (!iova.ok()) return iova.status();
  qp->iova_ = *iova;
  qp->memory_mapped_ = true;
  qp->cq_offset_ = sq_bytes;
  uint8_t* base = static_cast<uint8_t*>(qp->memory_.base());
  qp->sq_ = reinterpret_cast<Sqe*>(base);
  qp->cq_ = reinterpret_cast<volatile Cqe*>(base + sq_bytes);
  qp->slots_.resize(slots);
  qp->free_.resize(slots);
  for (uint32_t i = 0; i < slots; ++i) {
    if (i < list_pages) {
      const size_t off = sq_bytes + cq_bytes + size_t{i} * kPageSize;
      qp->slots_[i].prp_list = reinterpret_cast<uint64_t*>(base + off);
      qp->slots_[i].prp_list_iova = qp->iova_ + off;
    }
    qp->free_[i] = static_cast<uint16_t>(slots - 1 - i);  // hand out cid 0 first
  }
  qp->free_top_ = slots;
  absl::StatusOr<volatile uint32_t*> sqdb =
      transport->Register32(SqTailDoorbell(config.qid, config.dstrd));
  if (!sqdb.ok()) return sqdb.status();
  absl::StatusOr<volatile uint32_t*> cqdb =
      transport->Register32(CqHeadDoorbell(config.qid, config.dstrd));
  if (!cqdb.ok()) return cqdb.status();
  qp->sq_doorbell_ = *sqdb;
  qp->cq_doorbell_ = *cqdb;
  return qp;
}

QueuePair::~QueuePair() {
  if (on_destroy_) on_destroy_(*this);
  for (const Registered& r : registered_) (void)transport_->UnmapDma(r.iova);
  if (memory_mapped_) (void)transport_->UnmapDma(iova_);
}

absl::Status QueuePair::RegisterMemory(void* base, size_t length) {
  if (base == nullptr || length == 0) {
    return absl::InvalidArgumentError("RegisterMemory: empty region");
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(base) & ~uintptr_t{kPageSize - 1};
  const uintptr_t end = RoundUpPage(reinterpret_cast<uintptr_t>(base) + length);
  absl::StatusOr<uint64_t> iova = transport_->MapDma(reinterpret_cast<void*>(start), end - start);
  if (!iova.ok()) return iova.status();
  registered_.push_back({start, end - start, *iova, reinterpret_cast<uintptr_t>(base)});
  return absl::OkStatus();
}

absl::Status QueuePair::UnregisterMemory(void* base) {
  for (auto it = registered_.begin(); it != registered_.end(); ++it) {
    if (it->caller_base != reinterpret_cast<uintptr_t>(base)) continue;
    if (outstanding() != 0) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "UnregisterMemory: %u commands outstanding on queue %u", outstanding(), config_.qid));
    }
    absl::Status st = transport_->UnmapDma(it->iova);
    if (!st.ok()) return st;
    registered_.erase(it);
    return absl::OkStatus();
  }
  return absl::NotFoundError("UnregisterMemory: that base was not registered");
}

const QueuePair::Registered* QueuePair::FindRegistered(uintptr_t addr, size_t length) const {
  auto holds = [addr, length](const Registered& r) {
    return addr >= r.base && addr - r.base <= r.length && length <= r.length - (addr - r.base);
  };
  if (last_region_ < registered_.size() && holds(registered_[last_region_])) {
    return &registered_[last_region_];
  }
  for (size_t i = 0; i < registered_.size(); ++i) {
    if (holds(registered_[i])) {
      last_region_ = i;
      return &registered_[i];
    }
  }
  return nullptr;
}

absl::StatusOr<uint64_t> QueuePair::IovaOf(const void* p, size_t length) const {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  const Registered* r = FindRegistered(addr, length);
  if (r == nullptr) return absl::NotFoundError("IovaOf: not in registered memory");
  return r->iova + (addr - r->base);
}

absl::Status QueuePair::CheckRoom() const {
  if (!health_.ok()) return health_;
  if (!HasRoom()) return absl::FailedPreconditionError("NVMe queue full: poll first");
  return absl::OkStatus();
}

void QueuePair::Push(Sqe& sqe, uint64_t tag, uint32_t length) {
  const uint16_t cid = free_[--free_top_];
  Slot& slot = slots_[cid];
  slot.tag = tag;
  slot.length = length;
  slot.in_flight = true;
  sqe.cid = cid;
  std::memcpy(&sq_[sq_tail_], &sqe, sizeof(Sqe));
  sq_tail_ = NextTail();
  ++staged_;
}

absl::Status QueuePair::StageRaw(Sqe sqe, uint64_t tag) {
  absl::Status room = CheckRoom();
  if (!room.ok()) return room;
  Push(sqe, tag, 0);
  return absl::OkStatus();
}

absl::Status QueuePair::StageIo(uint8_t opcode, uint64_t offset, const void* buffer,
                                uint32_t length, uint64_t tag) {
  // The fast path tests everything with a few compares; the statuses are built only on failure.
  if (ABSL_PREDICT_FALSE(!HasRoom())) return CheckRoom();
  const Geometry& g = config_.geometry;
  if (ABSL_PREDICT_FALSE(length == 0 || ((offset | length) & block_mask_) != 0 ||
                         offset > g.size_bytes || length > g.size_bytes - offset ||
                         length > g.max_transfer_bytes)) {
    return BadIo(offset, length);
  }
  const uintptr_t addr = reinterpret_cast<uintptr_t>(buffer);
  if (ABSL_PREDICT_FALSE(addr % 4 != 0)) return BadBuffer(false);
  // The region the last I/O used, else a search.
  const Registered* region = nullptr;
  if (ABSL_PREDICT_TRUE(last_region_ < registered_.size())) {
    const Registered& last = registered_[last_region_];
    if (addr >= last.base && addr - last.base <= last.length &&
        length <= last.length - (addr - last.base)) {
      region = &last;
    }
  }
  if (region == nullptr) region = FindRegistered(addr, length);
  if (ABSL_PREDICT_FALSE(region == nullptr)) return BadBuffer(true);
  const uint64_t iova = region->iova + (addr - region->base);
  const uint16_t cid = free_[free_top_ - 1];
  Slot& slot = slots_[cid];
  // PRP entries (Base §4.1.1): the IOVA keeps the buffer's offset within its page (the mapping
  // is page aligned), so iova + first is page aligned.
  const uint64_t first = std::min<uint64_t>(length, kPageSize - iova % kPageSize);
  const uint64_t rest = length - first;
  uint64_t prp2 = 0;
  if (rest == 0) {
  } else if (rest <= kPageSize) {
    prp2 = iova + first;
  } else {
    uint64_t* list = slot.prp_list;
    if (ABSL_PREDICT_FALSE(list == nullptr)) {
      return absl::InvalidArgumentError("NVMe I/O: this queue has no PRP list pages");
    }
    const uint64_t pages = (rest + kPageSize - 1) / kPageSize;  // <= 32 by the cap
    for (uint64_t i = 0; i < pages; ++i) list[i] = iova + first + i * kPageSize;
    prp2 = slot.prp_list_iova;
  }
  --free_top_;
  slot.tag = tag;
  slot.length = length;
  slot.in_flight = true;
  // Written in place: every dword of the entry, the unused ones zero.
  Sqe& sqe = sq_[sq_tail_];
  const uint64_t slba = offset >> block_shift_;
  sqe.opcode = opcode;
  sqe.flags = 0;
  sqe.cid = cid;
  sqe.nsid = config_.nsid;
  sqe.reserved = 0;
  sqe.mptr = 0;
  sqe.prp1 = iova;
  sqe.prp2 = prp2;
  sqe.cdw10 = static_cast<uint32_t>(slba);
  sqe.cdw11 = static_cast<uint32_t>(slba >> 32);
  sqe.cdw12 = (length >> block_shift_) - 1;  // NLB, 0-based (NVM §3.2.4 Read, §3.2.6 Write)
  sqe.cdw13 = 0;
  sqe.cdw14 = 0;
  sqe.cdw15 = 0;
  sq_tail_ = NextTail();
  ++staged_;
  return absl::OkStatus();
}

absl::Status QueuePair::Read(uint64_t offset, void* buffer, uint32_t length, uint64_t tag) {
  return StageIo(kNvmRead, offset, buffer, length, tag);
}

absl::Status QueuePair::Write(uint64_t offset, const void* buffer, uint32_t length,
                              uint64_t tag) {
  return StageIo(kNvmWrite, offset, buffer, length, tag);
}

absl::Status QueuePair::Flush(uint64_t tag) {
  absl::Status room = CheckRoom();
  if (!room.ok()) return room;
  Sqe sqe;
  sqe.opcode = kNvmFlush;  // Base §7.1
  sqe.nsid = config_.nsid;
  Push(sqe, tag, 0);
  return absl::OkStatus();
}

absl::Status QueuePair::WriteZeroes(uint64_t offset, uint64_t length, uint64_t tag) {
  absl::Status room = CheckRoom();
  if (!room.ok()) return room;
  if (!config_.write_zeroes) {
    return absl::UnimplementedError("NVMe controller does not support Write Zeroes (ONCS bit 3)");
  }
  const Geometry& g = config_.geometry;
  const uint32_t bs = g.logical_block_size;
  if (length == 0 || length % bs != 0 || offset % bs != 0 || offset > g.size_bytes ||
      length > g.size_bytes - offset || length / bs > 0x10000) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "NVMe write zeroes: offset %u length %u outside the namespace, misaligned, or over "
        "65536 blocks", offset, length));
  }
  Sqe sqe;
  sqe.opcode = kNvmWriteZeroes;  // NVM §3.2.8
  sqe.nsid = config_.nsid;
  const uint64_t slba = offset / bs;
  sqe.cdw10 = static_cast<uint32_t>(slba);
  sqe.cdw11 = static_cast<uint32_t>(slba >> 32);
  sqe.cdw12 = static_cast<uint32_t>(length / bs - 1);
  Push(sqe, tag, 0);
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> QueuePair::Submit() {
  if (staged_ == 0) return 0u;
  // The SQEs must be visible before the doorbell store.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  *sq_doorbell_ = sq_tail_;
  const uint32_t n = staged_;
  staged_ = 0;
  return n;
}

void QueuePair::BadCompletion(uint16_t cid, uint16_t sq_head, Completion& c) {
  const bool known = cid < slots_.size() && slots_[cid].in_flight;
  c.tag = known ? slots_[cid].tag : kUnknownTag;
  c.result = -EIO;
  if (sq_head >= config_.entries) {
    health_ = absl::DataLossError(absl::StrFormat(
        "NVMe queue %u: completion reports SQ head %u of a %u-entry ring", config_.qid, sq_head,
        config_.entries));
    c.device_status = kStatusBadSqHead;
  } else {
    health_ = absl::DataLossError(absl::StrFormat(
        "NVMe queue %u: completion for command id %u, which is not in flight", config_.qid, cid));
    c.device_status = kStatusUnknownCid;
  }
  healthy_ = false;
  if (known) {
    slots_[cid].in_flight = false;
    free_[free_top_++] = cid;
  }
}

size_t QueuePair::Poll(absl::Span<Completion> out) {
  size_t n = 0;
  const size_t max = out.size();
  while (n < max) {
    volatile Cqe& cqe = cq_[cq_head_];
    const uint16_t status = cqe.status;
    if ((status & 1) != phase_) break;  // phase tag (Base §3.3.3.2)
    std::atomic_thread_fence(std::memory_order_acquire);  // read the rest after the phase
    const uint16_t cid = cqe.cid;
    const uint16_t sq_head = cqe.sq_head;
    last_dw0_ = cqe.dw0;
    if (++cq_head_ == config_.entries) {
      cq_head_ = 0;
      phase_ ^= 1;
    }
    Completion& c = out[n++];
    if (ABSL_PREDICT_FALSE(cid >= slots_.size() || !slots_[cid].in_flight ||
                           sq_head >= config_.entries)) {
      BadCompletion(cid, sq_head, c);
      continue;
    }
    Slot& slot = slots_[cid];
    sq_head_ = sq_head;
    c.tag = slot.tag;
    // Status field (Base §3.3.3.2.1): SC bits 8:1 and SCT bits 11:9 both zero is success,
    // whatever CRD, More and DNR say.
    if (ABSL_PREDICT_TRUE((status & 0x0FFE) == 0)) {
      c.device_status = 0;
      c.result = static_cast<int32_t>(slot.length);
    } else {
      c.device_status = DeviceStatus(status);
      c.result = NvmeStatusToErrno(c.device_status);
    }
    slot.in_flight = false;
    free_[free_top_++] = cid;
  }
  if (n > 0) {
    *cq_doorbell_ = cq_head_;
  } else {
    transport_->Idle();
  }
  return n;
}

absl::Status ZeroRange(QueuePair& qp, uint64_t offset, uint64_t length, absl::Duration timeout) {
  if (qp.outstanding() != 0) {
    return absl::FailedPreconditionError("ZeroRange: the queue pair has commands outstanding");
  }
  const uint64_t bs = qp.geometry().logical_block_size;
  const uint64_t max_bytes = uint64_t{0x10000} * bs;  // NLB is 16 bits, 0-based
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status first_error;
  uint64_t at = offset;
  const uint64_t end = offset + length;
  if (end < offset) return absl::InvalidArgumentError("ZeroRange: range wraps");
  Completion done[16];
  while (at < end || qp.outstanding() > 0) {
    while (at < end && first_error.ok() && qp.outstanding() < qp.depth()) {
      const uint64_t n = std::min(max_bytes, end - at);
      absl::Status st = qp.WriteZeroes(at, n, at);
      if (!st.ok()) {
        first_error = st;
        break;
      }
      at += n;
    }
    if (!first_error.ok()) at = end;  // stop staging; drain what is in flight
    absl::StatusOr<uint32_t> sub = qp.Submit();
    if (!sub.ok()) return sub.status();
    const size_t n = qp.Poll(absl::MakeSpan(done));
    for (size_t i = 0; i < n; ++i) {
      absl::Status st = CompletionStatus(done[i]);
      if (!st.ok() && first_error.ok()) {
        first_error = absl::Status(st.code(), absl::StrFormat("write zeroes at byte %u: %s",
                                                              done[i].tag, st.message()));
      }
    }
    if (!qp.health().ok()) return qp.health();  // an untrustworthy completion: stop at once
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "ZeroRange: %u commands still outstanding after %s", qp.outstanding(),
          absl::FormatDuration(timeout)));
    }
  }
  return first_error;
}

absl::Status ZeroNamespace(QueuePair& qp, absl::Duration timeout) {
  return ZeroRange(qp, 0, qp.geometry().size_bytes, timeout);
}

}  // namespace vfdrivers::block::nvme
