#include "vfdrivers/block/nvme/nvme_device_model.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vfdrivers::block::nvme::testing {
namespace {

class ModelTransport : public Transport {
 public:
  explicit ModelTransport(NvmeDeviceModel* model) : model_(model) {}

  absl::StatusOr<uint32_t> Read32(uint64_t offset) override {
    absl::Status st = Check(offset, 4);
    if (!st.ok()) return st;
    return model_->Reg(offset);
  }
  absl::StatusOr<uint64_t> Read64(uint64_t offset) override {
    absl::Status st = Check(offset, 8);
    if (!st.ok()) return st;
    return uint64_t{model_->Reg(offset + 4)} << 32 | model_->Reg(offset);
  }
  absl::Status Write32(uint64_t offset, uint32_t value) override {
    absl::Status st = Check(offset, 4);
    if (!st.ok()) return st;
    *model_->RegPtr(offset) = value;
    return absl::OkStatus();
  }
  absl::Status Write64(uint64_t offset, uint64_t value) override {
    absl::Status st = Check(offset, 8);
    if (!st.ok()) return st;
    *model_->RegPtr(offset) = static_cast<uint32_t>(value);
    *model_->RegPtr(offset + 4) = static_cast<uint32_t>(value >> 32);
    return absl::OkStatus();
  }
  absl::StatusOr<volatile uint32_t*> Register32(uint64_t offset) override {
    absl::Status st = Check(offset, 4);
    if (!st.ok()) return st;
    return model_->RegPtr(offset);
  }
  absl::Status UnmapDma(uint64_t iova) override {
    if (!model_->Unmap(iova)) return absl::InvalidArgumentError("model UnmapDma: unknown iova");
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    if (reinterpret_cast<uintptr_t>(vaddr) % kPageSize != 0 || size == 0 ||
        size % kPageSize != 0) {
      return absl::InvalidArgumentError("model MapDma: not page aligned");
    }
    return model_->Map(vaddr, size);
  }
  void Idle() override {
    if (model_->auto_step()) model_->Step();
  }

 private:
  absl::Status Check(uint64_t offset, size_t width) const {
    if (offset % width != 0 || offset > model_->bar_size() ||
        width > model_->bar_size() - offset) {
      return absl::OutOfRangeError(absl::StrFormat("model BAR access at 0x%x", offset));
    }
    return absl::OkStatus();
  }
  NvmeDeviceModel* model_;
};

}  // namespace

NvmeDeviceModel::NvmeDeviceModel(const DeviceModelOptions& options) : options_(options) {
  const size_t doorbells = 2 * size_t{options.max_queues} * (size_t{4} << options.dstrd);
  bar_.assign((kDoorbellBase + doorbells + kPageSize - 1) / kPageSize * kPageSize / 4, 0);
  // CAP (Base §3.1.3.1): MQES, CQR (bit 16), TO = 1 (500 ms), DSTRD, CSS NVM (bit 37), MPSMIN 0.
  const uint64_t cap = uint64_t{options.mqes & 0xFFFF} | uint64_t{1} << 16 | uint64_t{1} << 24 |
                       uint64_t{options.dstrd & 0xF} << 32 | uint64_t{1} << 37;
  bar_[kRegCap / 4] = static_cast<uint32_t>(cap);
  bar_[kRegCap / 4 + 1] = static_cast<uint32_t>(cap >> 32);
  bar_[kRegVs / 4] = 0x00010400;  // 1.4
  sqs_.resize(options.max_queues);
  cqs_.resize(options.max_queues);
  media_.assign(options.blocks << options.lbads, 0);
}

std::unique_ptr<Transport> NvmeDeviceModel::MakeTransport() {
  return std::make_unique<ModelTransport>(this);
}

uint64_t NvmeDeviceModel::Map(void* vaddr, size_t size) {
  const uint64_t iova = next_iova_;
  dma_[iova] = {static_cast<uint8_t*>(vaddr), size};
  next_iova_ += size + kPageSize;  // a guard gap between mappings
  return iova;
}

bool NvmeDeviceModel::Unmap(uint64_t iova) { return dma_.erase(iova) == 1; }

size_t NvmeDeviceModel::mapped_bytes() const {
  size_t n = 0;
  for (const auto& [iova, m] : dma_) n += m.size;
  return n;
}

uint32_t NvmeDeviceModel::live_io_queues() const {
  uint32_t n = 0;
  for (size_t q = 1; q < sqs_.size(); ++q) n += sqs_[q].exists ? 1 : 0;
  return n;
}

uint32_t NvmeDeviceModel::GrantedIoQueues() const {
  const uint32_t most = options_.max_queues - 1;
  return options_.io_queues == 0 ? most : std::min(options_.io_queues, most);
}

uint8_t* NvmeDeviceModel::Translate(uint64_t iova, size_t length) {
  auto it = dma_.upper_bound(iova);
  if (it == dma_.begin()) return nullptr;
  --it;
  const uint64_t off = iova - it->first;
  if (off > it->second.size || length > it->second.size - off) return nullptr;
  return it->second.vaddr + off;
}

void NvmeDeviceModel::Step() {
  uint32_t& cc = bar_[kRegCc / 4];
  uint32_t& csts = bar_[kRegCsts / 4];
  // Shutdown notification (Base §3.6): report shutdown processing complete.
  if ((cc & kCcShnMask) != 0 && (csts & kCstsShstMask) != kCstsShstComplete) {
    ++shutdowns_;
    csts = (csts & ~kCstsShstMask) | kCstsShstComplete;
  }
  if (!(cc & kCcEn)) {
    if (csts & kCstsRdy) {  // controller reset: queues are gone (Base §3.7.2)
      for (Ring& r : sqs_) r = Ring{};
      for (Ring& r : cqs_) r = Ring{};
      for (size_t i = kDoorbellBase / 4; i < bar_.size(); ++i) bar_[i] = 0;
      csts = 0;
    }
    return;
  }
  if (!(csts & kCstsRdy)) {
    if (hostile_ == Hostile::kNeverReady) return;
    const uint32_t aqa = bar_[kRegAqa / 4];
    Ring& asq = sqs_[0];
    Ring& acq = cqs_[0];
    asq = Ring{};
    acq = Ring{};
    asq.exists = acq.exists = true;
    asq.size = (aqa & 0xFFF) + 1;
    acq.size = ((aqa >> 16) & 0xFFF) + 1;
    asq.base = uint64_t{bar_[kRegAsq / 4 + 1]} << 32 | bar_[kRegAsq / 4];
    acq.base = uint64_t{bar_[kRegAcq / 4 + 1]} << 32 | bar_[kRegAcq / 4];
    if (asq.size < 2 || acq.size < 2) {
      csts = kCstsCfs;
      return;
    }
    csts = kCstsRdy;
  }
  bool progress = true;
  while (progress) {
    progress = false;
    for (uint16_t qid = 0; qid < sqs_.size(); ++qid) {
      if (sqs_[qid].exists && ProcessSq(qid)) progress = true;
    }
  }
}

bool NvmeDeviceModel::ProcessSq(uint16_t qid) {
  Ring& sq = sqs_[qid];
  const uint32_t tail = bar_[SqTailDoorbell(qid, options_.dstrd) / 4];
  if (tail >= sq.size) return false;  // a real device would post an async event
  bool did = false;
  while (sq.head != tail) {
    Ring& cq = cqs_[sq.cqid];
    const uint32_t cq_head = bar_[CqHeadDoorbell(sq.cqid, options_.dstrd) / 4];
    if (cq_head < cq.size) cq.head = cq_head;
    if ((cq.tail + 1) % cq.size == cq.head) break;  // CQ full
    const uint8_t* entry = Translate(sq.base + uint64_t{sq.head} * sizeof(Sqe), sizeof(Sqe));
    Sqe sqe;
    if (entry != nullptr) std::memcpy(&sqe, entry, sizeof(Sqe));
    sq.head = (sq.head + 1) % sq.size;
    result_dw0_ = 0;
    const uint16_t status =
        entry == nullptr ? MakeStatus(kSctGeneric, kScDataTransferError) : Execute(qid, sqe);
    ++commands_;
    Post(qid, cq, sqe, status, sq.head);
    did = true;
  }
  return did;
}

void NvmeDeviceModel::Post(uint16_t qid, Ring& cq, const Sqe& sqe, uint16_t status,
                           uint32_t sq_head) {
  Cqe cqe;
  cqe.dw0 = result_dw0_;
  cqe.sq_head = static_cast<uint16_t>(sq_head);
  cqe.sq_id = qid;
  cqe.cid = sqe.cid;
  uint16_t phase = cq.phase;
  if (Hostile(qid, Hostile::kBogusCid)) cqe.cid = sqe.cid ^ 0x8000;
  if (Hostile(qid, Hostile::kWrongPhase)) phase ^= 1;
  if (Hostile(qid, Hostile::kBadSqHead)) cqe.sq_head = static_cast<uint16_t>(sqs_[qid].size + 7);
  cqe.status = status | phase;
  uint8_t* slot = Translate(cq.base + uint64_t{cq.tail} * sizeof(Cqe), sizeof(Cqe));
  if (slot != nullptr) std::memcpy(slot, &cqe, sizeof(Cqe));
  if (++cq.tail == cq.size) {
    cq.tail = 0;
    cq.phase ^= 1;
  }
}

uint16_t NvmeDeviceModel::Execute(uint16_t qid, const Sqe& sqe) {
  if (qid == 0) return ExecuteAdmin(sqe);
  if (sqe.nsid != 1 && !(sqe.opcode == kNvmFlush && sqe.nsid == 0xFFFFFFFF)) {
    return MakeStatus(kSctGeneric, kScInvalidNamespace);
  }
  const uint64_t slba = uint64_t{sqe.cdw11} << 32 | sqe.cdw10;
  const uint64_t nlb = (sqe.cdw12 & 0xFFFF) + uint64_t{1};
  const uint64_t bs = uint64_t{1} << options_.lbads;
  switch (sqe.opcode) {
    case kNvmFlush:
      ++flushes_;
      return 0;
    case kNvmRead:
    case kNvmWrite:
    case kNvmWriteZeroes: {
      if (slba >= options_.blocks || nlb > options_.blocks - slba) {
        return MakeStatus(kSctGeneric, kScLbaOutOfRange);
      }
      uint8_t* media = media_.data() + slba * bs;
      if (sqe.opcode == kNvmWriteZeroes) {
        if (!options_.write_zeroes) return MakeStatus(kSctGeneric, kScInvalidOpcode);
        std::memset(media, 0, nlb * bs);
        return 0;
      }
      if (options_.mdts != 0 && nlb * bs > (kPageSize << options_.mdts)) {
        return MakeStatus(kSctGeneric, kScInvalidField);
      }
      return Transfer(sqe, media, nlb * bs, sqe.opcode == kNvmRead);
    }
    default:
      return MakeStatus(kSctGeneric, kScInvalidOpcode);
  }
}

// PRP walk (Base §4.1.1): PRP1 may start mid-page; PRP2 is the second page or a list pointer;
// every page after the first must be page aligned; a list page's last entry chains to the next.
uint16_t NvmeDeviceModel::Transfer(const Sqe& sqe, uint8_t* media, size_t length, bool to_host) {
  const uint16_t kBadPrp = MakeStatus(kSctGeneric, 0x13);  // PRP Offset Invalid
  const uint16_t kXferError = MakeStatus(kSctGeneric, kScDataTransferError);
  std::vector<std::pair<uint64_t, size_t>> chunks;
  const size_t first = std::min<size_t>(length, kPageSize - sqe.prp1 % kPageSize);
  if (sqe.prp1 % 4 != 0) return kBadPrp;
  chunks.push_back({sqe.prp1, first});
  size_t rest = length - first;
  if (rest > 0 && rest <= kPageSize) {
    if (sqe.prp2 % kPageSize != 0) return kBadPrp;
    chunks.push_back({sqe.prp2, rest});
  } else if (rest > 0) {
    ++prp_list_commands_;
    uint64_t list = sqe.prp2;
    if (list % 8 != 0) return kBadPrp;
    while (rest > 0) {
      const size_t in_page = (kPageSize - list % kPageSize) / 8;
      const size_t pages_left = (rest + kPageSize - 1) / kPageSize;
      const uint8_t* p = Translate(list, in_page * 8);
      if (p == nullptr) return kXferError;
      const size_t data_entries = pages_left <= in_page ? pages_left : in_page - 1;
      for (size_t i = 0; i < data_entries; ++i) {
        uint64_t page;
        std::memcpy(&page, p + 8 * i, 8);
        if (page % kPageSize != 0) return kBadPrp;
        const size_t n = std::min<size_t>(rest, kPageSize);
        chunks.push_back({page, n});
        rest -= n;
      }
      if (rest > 0) std::memcpy(&list, p + 8 * (in_page - 1), 8);
    }
  }
  for (const auto& [iova, n] : chunks) {
    uint8_t* host = Translate(iova, n);
    if (host == nullptr) return kXferError;
    if (to_host) {
      std::memcpy(host, media, n);
    } else {
      std::memcpy(media, host, n);
    }
    media += n;
  }
  return 0;
}

uint16_t NvmeDeviceModel::ExecuteAdmin(const Sqe& sqe) {
  const uint16_t qid = sqe.cdw10 & 0xFFFF;
  const uint32_t size = (sqe.cdw10 >> 16) + 1;
  switch (sqe.opcode) {
    case kAdminIdentify:
      return Identify(sqe);
    case kAdminSetFeatures: {
      if ((sqe.cdw10 & 0xFF) != kFeatureNumberOfQueues) {
        return MakeStatus(kSctGeneric, kScInvalidField);
      }
      if ((sqe.cdw11 & 0xFFFF) == 0xFFFF || (sqe.cdw11 >> 16) == 0xFFFF) {
        return MakeStatus(kSctGeneric, kScInvalidField);  // 65536 queues is invalid
      }
      const uint32_t granted =  // 0-based, in both halves
          (options_.io_queues_reported != 0 ? options_.io_queues_reported : GrantedIoQueues()) - 1;
      result_dw0_ = granted << 16 | granted;
      return 0;
    }
    case kAdminDeleteIoSq: {
      if (qid == 0 || qid >= sqs_.size() || !sqs_[qid].exists) {
        return MakeStatus(kSctCommandSpecific, kScInvalidQueueIdentifier);
      }
      sqs_[qid] = Ring{};
      return 0;
    }
    case kAdminDeleteIoCq: {
      if (qid == 0 || qid >= cqs_.size() || !cqs_[qid].exists) {
        return MakeStatus(kSctCommandSpecific, kScInvalidQueueIdentifier);
      }
      for (size_t q = 1; q < sqs_.size(); ++q) {
        if (sqs_[q].exists && sqs_[q].cqid == qid) {
          return MakeStatus(kSctCommandSpecific, 0x0C);  // Invalid Queue Deletion
        }
      }
      cqs_[qid] = Ring{};
      return 0;
    }
    case kAdminCreateIoCq: {
      if (qid == 0 || qid > GrantedIoQueues() || qid >= cqs_.size() || cqs_[qid].exists) {
        return MakeStatus(kSctCommandSpecific, 0x01);  // Invalid Queue Identifier
      }
      if (size < 2 || size > options_.mqes + 1) {
        return MakeStatus(kSctCommandSpecific, 0x02);  // Invalid Queue Size
      }
      if (!(sqe.cdw11 & 1) || Translate(sqe.prp1, size_t{size} * sizeof(Cqe)) == nullptr) {
        return MakeStatus(kSctGeneric, kScInvalidField);
      }
      Ring& cq = cqs_[qid];
      cq = Ring{};
      cq.exists = true;
      cq.base = sqe.prp1;
      cq.size = size;
      return 0;
    }
    case kAdminCreateIoSq: {
      const uint16_t cqid = sqe.cdw11 >> 16;
      if (qid == 0 || qid > GrantedIoQueues() || qid >= sqs_.size() || sqs_[qid].exists) {
        return MakeStatus(kSctCommandSpecific, 0x01);
      }
      if (size < 2 || size > options_.mqes + 1) return MakeStatus(kSctCommandSpecific, 0x02);
      if (cqid == 0 || cqid >= cqs_.size() || !cqs_[cqid].exists) {
        return MakeStatus(kSctCommandSpecific, 0x00);  // Completion Queue Invalid
      }
      if (!(sqe.cdw11 & 1) || Translate(sqe.prp1, size_t{size} * sizeof(Sqe)) == nullptr) {
        return MakeStatus(kSctGeneric, kScInvalidField);
      }
      Ring& sq = sqs_[qid];
      sq = Ring{};
      sq.exists = true;
      sq.base = sqe.prp1;
      sq.size = size;
      sq.cqid = cqid;
      return 0;
    }
    default:
      return MakeStatus(kSctGeneric, kScInvalidOpcode);
  }
}

uint16_t NvmeDeviceModel::Identify(const Sqe& sqe) {
  std::vector<uint8_t> data(kPageSize, 0);
  const uint32_t cns = sqe.cdw10 & 0xFF;
  if (cns == kCnsController) {
    std::memcpy(&data[4], "MODEL0001           ", 20);
    std::memcpy(&data[24], "vfbroker NVMe device model              ", 40);
    data[77] = static_cast<uint8_t>(options_.mdts);
    data[78] = 0x01;   // CNTLID 1
    data[512] = 0x66;  // SQES
    data[513] = 0x44;  // CQES
    const uint32_t nn = 1;
    std::memcpy(&data[516], &nn, 4);
    data[520] = options_.write_zeroes ? kOncsWriteZeroes : 0;  // ONCS
  } else if (cns == kCnsActiveNamespaceList) {
    if (sqe.nsid >= 0xFFFFFFFEu) return MakeStatus(kSctGeneric, kScInvalidNamespace);
    const uint32_t one = 1;
    if (sqe.nsid < 1) std::memcpy(&data[0], &one, 4);  // NSIDs greater than CDW1.NSID
  } else if (cns == kCnsNamespace) {
    if (sqe.nsid != 1) return MakeStatus(kSctGeneric, kScInvalidNamespace);
    uint64_t nsze = options_.blocks;
    uint32_t lbads = options_.lbads;
    uint8_t flbas = 0;
    if (hostile_ == Hostile::kZeroSizeNamespace) nsze = 0;
    if (hostile_ == Hostile::kBadLbaShift) lbads = 40;
    if (hostile_ == Hostile::kBadLbaFormat) flbas = 5;
    std::memcpy(&data[0], &nsze, 8);   // NSZE
    std::memcpy(&data[8], &nsze, 8);   // NCAP
    std::memcpy(&data[16], &nsze, 8);  // NUSE
    data[25] = 0;                      // NLBAF: one format
    data[26] = flbas;
    const uint32_t lbaf = lbads << 16;
    std::memcpy(&data[128], &lbaf, 4);
  } else {
    return MakeStatus(kSctGeneric, kScInvalidField);
  }
  return Transfer(sqe, data.data(), kPageSize, /*to_host=*/true);
}

}  // namespace vfdrivers::block::nvme::testing
