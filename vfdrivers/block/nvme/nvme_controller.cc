#include "vfdrivers/block/nvme/nvme_controller.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"

namespace vfdrivers::block::nvme {
namespace {

uint32_t Le32(absl::Span<const uint8_t> d, size_t off) {
  uint32_t v;
  std::memcpy(&v, d.data() + off, 4);
  return v;
}
uint64_t Le64(absl::Span<const uint8_t> d, size_t off) {
  uint64_t v;
  std::memcpy(&v, d.data() + off, 8);
  return v;
}
std::string Ascii(absl::Span<const uint8_t> d, size_t off, size_t len) {
  std::string s(reinterpret_cast<const char*>(d.data() + off), len);
  for (char& c : s) {
    if (c < 0x20 || c > 0x7E) c = '?';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

}  // namespace

absl::StatusOr<ControllerInfo> ParseIdentifyController(absl::Span<const uint8_t> data) {
  if (data.size() != kPageSize) return absl::InvalidArgumentError("identify data not 4096 bytes");
  ControllerInfo info;
  info.serial = Ascii(data, 4, 20);
  info.model = Ascii(data, 24, 40);
  info.mdts = data[77];
  info.cntlid = static_cast<uint16_t>(data[78] | data[79] << 8);
  info.namespaces = Le32(data, 516);
  info.oncs = static_cast<uint16_t>(data[520] | data[521] << 8);
  // SQES (byte 512) / CQES (byte 513): bits 3:0 required size; we use 64 / 16 bytes.
  if ((data[512] & 0xF) > 6 || (data[513] & 0xF) > 4) {
    return absl::FailedPreconditionError("identify controller: SQE/CQE larger than 64/16 bytes");
  }
  return info;
}

absl::StatusOr<NamespaceInfo> ParseIdentifyNamespace(absl::Span<const uint8_t> data) {
  if (data.size() != kPageSize) return absl::InvalidArgumentError("identify data not 4096 bytes");
  NamespaceInfo ns;
  ns.blocks = Le64(data, 0);                 // NSZE
  const uint32_t nlbaf = data[25];           // number of LBA formats, 0-based
  const uint32_t format = data[26] & 0x0F;   // FLBAS bits 3:0 (no extended formats)
  if (ns.blocks == 0) {
    return absl::FailedPreconditionError("identify namespace: zero-size namespace");
  }
  if (nlbaf > 15 || format > nlbaf) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "identify namespace: LBA format %u of %u formats", format, nlbaf + 1));
  }
  // Since NVMe 2.0 (NVM Command Set 1.0; Linux: nvme_lbaf_index), FLBAS bits 6:5 are the
  // format index's upper bits, for more than 16 formats (the LBA format extension, which this
  // driver never enables): set, they would name another format than bits 3:0 give.
  if (data[26] & 0x60) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "identify namespace: FLBAS 0x%x names an extended LBA format", data[26]));
  }
  const uint32_t lbaf = Le32(data, 128 + 4 * format);  // LBAF table (bytes 128..191)
  const uint32_t ms = lbaf & 0xFFFF;
  const uint32_t lbads = (lbaf >> 16) & 0xFF;
  if (lbads < 9 || lbads > 12) {
    return absl::FailedPreconditionError(
        absl::StrFormat("identify namespace: LBA data size 2^%u unsupported", lbads));
  }
  if (ms != 0) {
    return absl::FailedPreconditionError("identify namespace: metadata formats unsupported");
  }
  ns.block_size = 1u << lbads;
  if (ns.blocks > (~uint64_t{0} >> lbads)) {
    return absl::FailedPreconditionError("identify namespace: size overflows 64 bits");
  }
  return ns;
}

absl::StatusOr<std::vector<uint32_t>> ParseNamespaceList(absl::Span<const uint8_t> data) {
  if (data.size() != kPageSize) return absl::InvalidArgumentError("identify data not 4096 bytes");
  std::vector<uint32_t> out;
  for (size_t i = 0; i < kPageSize / 4; ++i) {
    const uint32_t nsid = Le32(data, 4 * i);
    if (nsid == 0) break;
    if (nsid == 0xFFFFFFFFu || (!out.empty() && nsid <= out.back())) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "namespace list: entry %u (NSID 0x%x) is not an increasing valid NSID", i, nsid));
    }
    out.push_back(nsid);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Controller>> Controller::Open(vfio::VfioDevice* device,
                                                            const ControllerOptions& options) {
  absl::StatusOr<std::unique_ptr<VfioTransport>> transport = VfioTransport::Create(device);
  if (!transport.ok()) return transport.status();
  return Create(*std::move(transport), options);
}

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(
    std::unique_ptr<Transport> transport, const ControllerOptions& options) {
  if (transport == nullptr) return absl::InvalidArgumentError("Controller: null transport");
  std::unique_ptr<Controller> c(new Controller(std::move(transport), options));
  absl::Status st = c->Init();
  if (!st.ok()) return st;
  return c;
}

Controller::~Controller() {
  if (transport_ == nullptr) return;
  if (admin_ != nullptr) Shutdown();
  admin_.reset();  // unmaps the admin rings (the controller no longer uses them)
  if (identify_mapped_) (void)transport_->UnmapDma(identify_iova_);
}

// Normal shutdown (Base §3.6: CC.SHN = 01b, wait for CSTS.SHST = 10b, bounded by CAP.TO here
// since RTD3E may be 0), so a device with a volatile cache commits it; then disable (CC.EN = 0,
// a Controller Level Reset, Base §3.7.2) so the controller stops all DMA into memory about to
// be unmapped and freed. A failed controller is disabled without the notification.
void Controller::Shutdown() {
  absl::StatusOr<uint32_t> cc = transport_->Read32(kRegCc);
  if (!cc.ok()) return;
  if (failed_.ok() && (*cc & kCcEn)) {
    if (transport_->Write32(kRegCc, (*cc & ~kCcShnMask) | kCcShnNormal).ok()) {
      const absl::Time deadline = absl::Now() + ready_timeout_;
      while (absl::Now() < deadline) {
        absl::StatusOr<uint32_t> csts = transport_->Read32(kRegCsts);
        if (!csts.ok() || *csts == 0xFFFFFFFFu || (*csts & kCstsCfs)) break;
        if ((*csts & kCstsShstMask) == kCstsShstComplete) break;
        transport_->Idle();
      }
    }
  }
  (void)transport_->Write32(kRegCc, *cc & ~(kCcEn | kCcShnMask));
  (void)WaitReady(false);
}

absl::Status Controller::WaitReady(bool ready) {
  const absl::Time deadline = absl::Now() + ready_timeout_;
  while (true) {
    absl::StatusOr<uint32_t> csts = transport_->Read32(kRegCsts);
    if (!csts.ok()) return csts.status();
    if (*csts == 0xFFFFFFFFu) return absl::UnavailableError("NVMe CSTS reads all ones");
    if (ready && (*csts & kCstsCfs)) {
      return absl::InternalError("NVMe controller fatal status (CSTS.CFS)");
    }
    if (((*csts & kCstsRdy) != 0) == ready) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "NVMe CSTS.RDY did not become %d within CAP.TO (%s)", ready ? 1 : 0,
          absl::FormatDuration(ready_timeout_)));
    }
    transport_->Idle();
  }
}

absl::Status Controller::Init() {
  absl::StatusOr<uint64_t> cap = transport_->Read64(kRegCap);  // Base §3.1.3.1
  if (!cap.ok()) return cap.status();
  cap_ = *cap;
  if (cap_ == ~uint64_t{0}) return absl::UnavailableError("NVMe CAP reads all ones (no device)");
  absl::StatusOr<uint32_t> vs = transport_->Read32(kRegVs);  // Base §3.1.3.2
  if (!vs.ok()) return vs.status();
  version_ = *vs;
  if (CapMqes(cap_) == 0 || !CapCssNvm(cap_) || CapMpsMin(cap_) != 0) {
    // Say what the device reported. CAP.MQES 0 is invalid (the smallest queue has 2 entries):
    // such a controller is unusable - an offline SR-IOV secondary controller reads CAP 0 with
    // CSTS.CFS set (seen with QEMU's NVMe VFs).
    absl::StatusOr<uint32_t> csts = transport_->Read32(kRegCsts);
    return absl::FailedPreconditionError(absl::StrFormat(
        "NVMe CAP 0x%x (CSTS 0x%x): %s", cap_, csts.ok() ? *csts : 0xFFFFFFFFu,
        CapMqes(cap_) == 0 ? "CAP.MQES 0 is invalid; the controller is not usable (an offline "
                             "SR-IOV secondary controller reads so)"
        : !CapCssNvm(cap_) ? "no NVM command set (CAP.CSS bit 0)"
                           : "4 KiB memory pages unsupported (CAP.MPSMIN)"));
  }
  ready_timeout_ = absl::Milliseconds(500) * static_cast<int64_t>(std::max(CapTo(cap_), 1u));

  // Reset: CC.EN = 0, wait CSTS.RDY = 0 (Base §3.5.1; CC §3.1.3.5, CSTS §3.1.3.6).
  absl::StatusOr<uint32_t> cc = transport_->Read32(kRegCc);
  if (!cc.ok()) return cc.status();
  absl::Status st = transport_->Write32(kRegCc, *cc & ~kCcEn);
  if (!st.ok()) return st;
  st = WaitReady(false);
  if (!st.ok()) return st;

  const uint32_t entries =
      std::min<uint32_t>(std::min<uint32_t>(options_.admin_entries, 4096), CapMqes(cap_) + 1);
  QueuePairConfig config;
  config.qid = 0;
  config.entries = entries;
  config.dstrd = CapDstrd(cap_);
  absl::StatusOr<std::unique_ptr<QueuePair>> admin = QueuePair::Create(transport_.get(), config);
  if (!admin.ok()) return admin.status();
  admin_ = std::move(*admin);

  absl::StatusOr<memory::MemoryRegion> page =
      memory::MemoryRegion::Allocate(kPageSize, {memory::HugePages::kNever});
  if (!page.ok()) return page.status();
  identify_page_ = std::move(*page);
  absl::StatusOr<uint64_t> iova = transport_->MapDma(identify_page_.base(), identify_page_.size());
  if (!iova.ok()) return iova.status();
  identify_iova_ = *iova;
  identify_mapped_ = true;

  // AQA (Base §3.1.3.8): ACQS bits 27:16, ASQS bits 11:0, both 0-based. ASQ/ACQ (§3.1.3.9,
  // §3.1.3.10).
  st = transport_->Write32(kRegAqa, (entries - 1) << 16 | (entries - 1));
  if (st.ok()) st = transport_->Write64(kRegAsq, admin_->sq_iova());
  if (st.ok()) st = transport_->Write64(kRegAcq, admin_->cq_iova());
  // CC (Base §3.5.1): first the configuration - CSS = 000b (NVM), MPS = 0 (4 KiB),
  // AMS = 0 (round robin), IOSQES/IOCQES - with EN still 0, then EN in its own write, as
  // Linux's nvme_enable_ctrl does; like it, read CAP again in between (its value may change
  // after the first CC write) and wait for ready by the longer CAP.TO.
  if (st.ok()) st = transport_->Write32(kRegCc, kCcIosqes64 | kCcIocqes16);
  if (st.ok()) {
    absl::StatusOr<uint64_t> cap_again = transport_->Read64(kRegCap);
    if (!cap_again.ok()) return cap_again.status();
    ready_timeout_ = std::max(
        ready_timeout_, absl::Milliseconds(500) * static_cast<int64_t>(CapTo(*cap_again)));
  }
  if (st.ok()) st = transport_->Write32(kRegCc, kCcIosqes64 | kCcIocqes16 | kCcEn);
  if (st.ok()) st = WaitReady(true);
  if (!st.ok()) return st;

  st = Identify(kCnsController, 0);
  if (!st.ok()) return st;
  absl::Span<const uint8_t> data(static_cast<const uint8_t*>(identify_page_.base()), kPageSize);
  absl::StatusOr<ControllerInfo> info = ParseIdentifyController(data);
  if (!info.ok()) return info.status();
  info_ = *info;
  st = RequestIoQueues();
  if (!st.ok()) return st;
  if (options_.nsid == 0 || options_.nsid > info_.namespaces) {
    return absl::NotFoundError(absl::StrFormat("NVMe namespace %u of %u", options_.nsid,
                                               info_.namespaces));
  }
  st = Identify(kCnsNamespace, options_.nsid);
  if (!st.ok()) return st;
  absl::StatusOr<NamespaceInfo> ns = ParseIdentifyNamespace(data);
  if (!ns.ok()) return ns.status();
  ns_ = *ns;

  geometry_.logical_block_size = ns_.block_size;
  geometry_.size_bytes = ns_.blocks * ns_.block_size;
  uint64_t max_transfer = 128 * 1024;  // the queue pair's PRP-list cap
  if (info_.mdts != 0 && info_.mdts < 6) max_transfer = kPageSize << info_.mdts;
  geometry_.max_transfer_bytes = static_cast<uint32_t>(max_transfer);
  return absl::OkStatus();
}

// Set Features, Number of Queues (Base §5.27.1, FID 07h): CDW11 NCQR 31:16, NSQR 15:0, both
// 0-based; the completion's Dword 0 reports NCQA/NSQA the same way. A controller may allocate
// fewer than asked (an SR-IOV secondary controller has only the queue resources assigned to
// it), and creating a queue beyond them fails; knowing the number lets CreateIoQueuePair say
// so plainly.
absl::Status Controller::RequestIoQueues() {
  constexpr uint32_t kWanted = 64;
  Sqe sqe;
  sqe.opcode = kAdminSetFeatures;
  sqe.cdw10 = kFeatureNumberOfQueues;
  sqe.cdw11 = (kWanted - 1) << 16 | (kWanted - 1);
  uint32_t dw0 = 0;
  absl::Status st = AdminCommand(sqe, "set features (number of queues)", &dw0);
  if (!st.ok()) return st;
  const uint32_t sqs = (dw0 & 0xFFFF) + 1, cqs = (dw0 >> 16) + 1;
  // The controller may report more than asked for; only what we asked for is ours to use.
  io_queue_limit_ = std::min({sqs, cqs, kWanted});
  return absl::OkStatus();
}

absl::Status Controller::Identify(uint32_t cns, uint32_t nsid) {
  std::memset(identify_page_.base(), 0, kPageSize);
  Sqe sqe;
  sqe.opcode = kAdminIdentify;  // Base §5.17
  sqe.nsid = nsid;
  sqe.prp1 = identify_iova_;   // one page-aligned page: no PRP2
  sqe.cdw10 = cns;
  const char* what = cns == kCnsController   ? "identify controller"
                     : cns == kCnsNamespace ? "identify namespace"
                                            : "identify active namespace list";
  return AdminCommand(sqe, what);
}

absl::StatusOr<std::vector<uint32_t>> Controller::ActiveNamespaces() {
  absl::Status st = Identify(kCnsActiveNamespaceList, 0);
  if (!st.ok()) return st;
  return ParseNamespaceList(
      absl::Span<const uint8_t>(static_cast<const uint8_t*>(identify_page_.base()), kPageSize));
}

absl::Status Controller::AdminCommand(const Sqe& sqe, const char* what, uint32_t* dw0) {
  if (!failed_.ok()) return failed_;
  if (admin_ == nullptr) return absl::FailedPreconditionError("NVMe controller not enabled");
  static constexpr uint64_t kAdminTag = 0xAD;
  absl::Status st = admin_->StageRaw(sqe, kAdminTag);
  if (!st.ok()) return st;
  absl::StatusOr<uint32_t> sub = admin_->Submit();
  if (!sub.ok()) return sub.status();
  const absl::Time deadline = absl::Now() + options_.admin_timeout;
  Completion c;
  while (true) {
    if (admin_->Poll(absl::MakeSpan(&c, 1)) == 1) break;
    if (absl::Now() > deadline) {
      failed_ = absl::DeadlineExceededError(
          absl::StrFormat("NVMe admin %s: no completion within %s", what,
                          absl::FormatDuration(options_.admin_timeout)));
      return failed_;
    }
  }
  if (!admin_->health().ok()) {
    failed_ = admin_->health();
    return failed_;
  }
  if (dw0 != nullptr) *dw0 = admin_->last_dw0();
  return NvmeStatusToStatus(c.device_status, what);
}

// Delete I/O Submission Queue (Base §5.7), then its Completion Queue (Base §5.6): the SQ must
// go first. Best effort: a failed controller is disabled by the destructor anyway.
void Controller::DeleteIoQueues(uint16_t qid) {
  if (!failed_.ok() || admin_ == nullptr) return;
  Sqe sq;
  sq.opcode = kAdminDeleteIoSq;
  sq.cdw10 = qid;
  if (!AdminCommand(sq, "delete I/O SQ").ok()) return;
  Sqe cq;
  cq.opcode = kAdminDeleteIoCq;
  cq.cdw10 = qid;
  (void)AdminCommand(cq, "delete I/O CQ");
}

absl::StatusOr<std::unique_ptr<QueuePair>> Controller::CreateIoQueuePair(uint32_t depth) {
  if (!failed_.ok()) return failed_;
  if (depth == 0) return absl::InvalidArgumentError("CreateIoQueuePair: depth 0");
  const uint32_t entries = std::min<uint32_t>(depth, CapMqes(cap_)) + 1;
  if (entries < 2) return absl::FailedPreconditionError("NVMe CAP.MQES allows no I/O queue");
  if (next_qid_ > io_queue_limit_) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "NVMe: the controller allocated %u I/O queue pairs (Number of Queues), all used; an "
        "SR-IOV secondary controller has as many as its VQ resources minus the admin queue",
        io_queue_limit_));
  }
  // A queue id is never reused, even when creation fails half way (the CQ may exist).
  const uint16_t qid = next_qid_++;
  QueuePairConfig config;
  config.qid = qid;
  config.entries = entries;
  config.dstrd = CapDstrd(cap_);
  config.nsid = options_.nsid;
  config.geometry = geometry_;
  config.write_zeroes = (info_.oncs & kOncsWriteZeroes) != 0;
  absl::StatusOr<std::unique_ptr<QueuePair>> qp = QueuePair::Create(transport_.get(), config);
  if (!qp.ok()) return qp.status();
  // Create I/O Completion Queue (Base §5.4): CDW10 QSIZE (0-based) 31:16, QID 15:0; CDW11
  // PC = 1, interrupts disabled.
  Sqe cq;
  cq.opcode = kAdminCreateIoCq;
  cq.prp1 = (*qp)->cq_iova();
  cq.cdw10 = (entries - 1) << 16 | qid;
  cq.cdw11 = 1;
  absl::Status st = AdminCommand(cq, "create I/O CQ");
  if (!st.ok()) return st;
  // Create I/O Submission Queue (Base §5.5): CDW11 CQID 31:16, PC = 1.
  Sqe sq;
  sq.opcode = kAdminCreateIoSq;
  sq.prp1 = (*qp)->sq_iova();
  sq.cdw10 = (entries - 1) << 16 | qid;
  sq.cdw11 = uint32_t{qid} << 16 | 1;
  st = AdminCommand(sq, "create I/O SQ");
  if (!st.ok()) {
    Sqe del;  // the CQ exists: take it back down (Base §5.6)
    del.opcode = kAdminDeleteIoCq;
    del.cdw10 = qid;
    (void)AdminCommand(del, "delete I/O CQ");
    return st;
  }
  (*qp)->set_on_destroy([this](QueuePair& q) { DeleteIoQueues(q.qid()); });
  return qp;
}

}  // namespace vfdrivers::block::nvme
