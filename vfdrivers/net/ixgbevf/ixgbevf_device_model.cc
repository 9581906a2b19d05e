#include "vfdrivers/net/ixgbevf/ixgbevf_device_model.h"

#include <cstring>

namespace vfdrivers::net::ixgbevf::testing {

using intel_vf::kMbPfu;
using intel_vf::kMbRstd;
using intel_vf::kMbRsti;
using intel_vf::kMbVfu;
using intel_vf::kMaxMulticast;
using intel_vf::kMbWords;
using intel_vf::kMsgAck;
using intel_vf::kMsgCts;
using intel_vf::kMsgIdMask;
using intel_vf::kMsgInfoShift;
using intel_vf::kMsgNack;
using intel_vf::kMsgReset;
using intel_vf::kMsgSetLpe;
using intel_vf::kMsgSetMac;
using intel_vf::kMsgSetMulticast;
using intel_vf::kMsgSetVlan;

namespace {

// Word 0 of a PF reply.
uint32_t Verdict(uint32_t id, bool ok, bool cts) {
  return id | (ok ? kMsgAck : kMsgNack) | (cts ? kMsgCts : 0);
}

}  // namespace

IxgbevfDeviceModel::IxgbevfDeviceModel(const ModelOptions& options)
    : VfDeviceModel(kVfMbmem, 0x40000000ull, uint64_t{1} << 21, options.mac), options_(options) {
  set_link(options.link_up);
}

std::unique_ptr<Bar> IxgbevfDeviceModel::MakeBar() {
  return std::make_unique<intel_vf::testing::ModelBar<IxgbevfDeviceModel>>(this, "ixgbevf model");
}

void IxgbevfDeviceModel::set_link(bool up) {
  regs_[kVfLinks / 4] = up ? kVfLinksUp : 0;
}

uint32_t IxgbevfDeviceModel::Random() {
  seed_ ^= seed_ << 13;
  seed_ ^= seed_ >> 17;
  seed_ ^= seed_ << 5;
  return seed_;
}

uint32_t IxgbevfDeviceModel::Read(uint32_t off) {
  switch (off) {
    case kVfMailbox: {
      if (hostile_ == Hostile::kResetNeverDone) return (mailbox_ & ~kMbRstd) | kMbRsti;
      if (hostile_ == Hostile::kMailboxBusy) return (mailbox_ & ~kMbVfu) | kMbPfu;
      return MailboxRead();
    }
    case kVfRxdctl:
    case kVfTxdctl:
      if (hostile_ == Hostile::kQueueNeverEnables) return regs_[off / 4] & ~kDctlEnable;
      return regs_[off / 4];
    default:
      return regs_[off / 4];
  }
}

void IxgbevfDeviceModel::Write(uint32_t off, uint32_t value) {
  switch (off) {
    case kVfCtrl:
      if (value & kVfCtrlRst) {
        // VF reset: queues disabled, their pointers and write-back address cleared; the PF
        // forgets the VF (no CTS until the next RESET message) and signals RSTD when done.
        for (uint32_t r : {kVfRxdctl, kVfTxdctl, kVfRdh, kVfRdt, kVfTdh, kVfTdt, kVfTdwbal,
                           kVfTdwbah}) {
          regs_[r / 4] = 0;
        }
        partial_.clear();
        rx_head_ = 0;
        api_ = kApi10;
        ResetSeenByPf();
      }
      return;
    case kVfStatus:
    case kVfLinks:
      return;  // read-only
    case kVfRdh:
      rx_head_ = value;
      regs_[off / 4] = value;
      return;
    case kVfMailbox:
      // VFU granted unless the PF holds the buffer; REQ and ACK writes release it.
      if (MailboxWrite(value, hostile_ != Hostile::kMailboxBusy)) PfReceive();
      return;
    default:
      regs_[off / 4] = value;
  }
}

// The PF reads the VF's message (PFACK) and answers it in VFMBMEM (PFSTS).
void IxgbevfDeviceModel::PfReceive() {
  if (hostile_ == Hostile::kMailboxSilent) return;
  uint32_t m[kMbWords];
  PfRead(m);
  const uint32_t id = m[0] & kMsgIdMask;
  if (hostile_ == Hostile::kMailboxGarbage) {
    uint32_t r[kResetReplyWords];
    for (uint32_t& w : r) w = Random();
    r[0] = (r[0] & 0x1FFF0000u) | ((id + 0x40) & kMsgIdMask);  // no verdict, another id
    PfSend(r, kResetReplyWords);
    return;
  }
  if (hostile_ == Hostile::kMailboxWrongId) {
    const uint32_t r[kResetReplyWords] = {Verdict((id % 7) + 9, true, true), ~0u, ~0u, ~0u};
    PfSend(r, kResetReplyWords);
    return;
  }
  if (id == kMsgReset) {
    uint32_t r[kResetReplyWords] = {};
    PfResetReply(options_.mac_set_by_pf, r);
    if (options_.mac_set_by_pf) {
      r[3] = hostile_ == Hostile::kBadFilterType ? 7 : options_.mc_filter_type;
    }
    PfSend(r, kResetReplyWords);
    return;
  }
  bool ok = false;
  if (cts_) {
    switch (id) {
      case kVfApiNegotiate:
        ok = !options_.nack_every_api && m[1] <= options_.max_api && m[1] != 1;
        if (ok) api_ = m[1];
        break;
      case kMsgSetMac:
        ok = PfSetMac(m, options_.trust);
        break;
      case kMsgSetMulticast: {
        const uint32_t n = (m[0] >> kMsgInfoShift) & 0xFF;
        ok = n <= kMaxMulticast;
        if (ok) {
          mc_hashes_.clear();
          for (uint32_t i = 0; i < n; ++i) {
            mc_hashes_.push_back(static_cast<uint16_t>(m[1 + i / 2] >> (16 * (i % 2))));
          }
        }
        break;
      }
      case kMsgSetVlan:
        PfSetVlan(m);
        ok = true;
        break;
      case kMsgSetLpe:
        ok = m[1] >= 64 && m[1] <= 9728;
        if (ok) max_frame_ = m[1];
        break;
      default:
        break;
    }
  }
  const uint32_t r[1] = {Verdict(id, ok, cts_)};
  PfSend(r, 1);
}

// §7.1.6: the device takes the descriptor at VFRDH (when VFRDH != VFRDT), DMAs the frame to its
// packet address, and writes the descriptor back (status, length).
bool IxgbevfDeviceModel::Deliver(const uint8_t* frame, uint32_t length) {
  if (!(regs_[kVfRxdctl / 4] & kDctlEnable)) {
    ++rx_dropped_;
    return false;
  }
  const uint32_t size = regs_[kVfRdlen / 4] / sizeof(RxDesc);
  uint32_t& rdh = rx_head_;  // the device's own position; VFRDH mirrors it (or lies, below)
  const uint32_t rdt = regs_[kVfRdt / 4];
  if (size == 0 || rdh >= size || rdt >= size || rdh == rdt) {
    ++rx_dropped_;
    return false;
  }
  const uint64_t base = uint64_t{regs_[kVfRdbah / 4]} << 32 | regs_[kVfRdbal / 4];
  auto* d = reinterpret_cast<RxDesc*>(Dma(base + uint64_t{rdh} * sizeof(RxDesc), sizeof(RxDesc)));
  if (d == nullptr) return false;
  const uint32_t bsize = (regs_[kVfSrrctl / 4] & kSrrctlBsizeKb) * 1024;
  const uint32_t copy = length < bsize ? length : bsize;
  uint8_t* buf = Dma(d->pkt_addr, copy);
  if (buf == nullptr) return false;
  std::memcpy(buf, frame, copy);
  uint32_t status = kRxDd | kRxEop;
  uint32_t len = copy;
  switch (hostile_) {
    case Hostile::kRxLengthZero: len = 0; break;
    case Hostile::kRxLengthHuge: len = 60000; break;
    case Hostile::kRxNoEop: status = kRxDd; break;
    case Hostile::kRxFrameError: status |= kRxErrRxe; break;
    default: break;
  }
  d->pkt_addr = Random();  // RSS hash / packet type: nothing the driver may use as an address
  d->hdr_addr = status | uint64_t{len & 0xFFFF} << 32;
  rdh = (rdh + 1) % size;
  if (hostile_ == Hostile::kRxDoneNotGiven) {
    for (uint32_t s = rdt; s != rdh; s = (s + 1) % size) {
      auto* x = reinterpret_cast<RxDesc*>(Dma(base + uint64_t{s} * sizeof(RxDesc), 16));
      // Only the status quadword: the address stays what the driver wrote, so the device's
      // own later use of the slot stays inside the mapping (dma_errors counts driver faults).
      if (x != nullptr) x->hdr_addr = kRxDd | kRxEop | uint64_t{64} << 32;
    }
  }
  // The register the VF can read: its real value, or beyond the ring when lying.
  regs_[kVfRdh / 4] = hostile_ == Hostile::kRxHeadBeyondRing ? size + 17 : rdh;
  return true;
}

// §7.2.3: descriptors from VFTDH to VFTDT are fetched and sent; after an RS descriptor the head
// is written to the VFTDWBAL/H address when Head_WB_En is set.
void IxgbevfDeviceModel::Step() {
  if (!(regs_[kVfTxdctl / 4] & kDctlEnable)) return;
  const uint32_t size = regs_[kVfTdlen / 4] / sizeof(TxDesc);
  uint32_t& tdh = regs_[kVfTdh / 4];
  const uint32_t tdt = regs_[kVfTdt / 4];
  if (size == 0 || tdh >= size || tdt >= size) return;
  const uint64_t base = uint64_t{regs_[kVfTdbah / 4]} << 32 | regs_[kVfTdbal / 4];
  const uint64_t wb = uint64_t{regs_[kVfTdwbah / 4]} << 32 | regs_[kVfTdwbal / 4];
  while (tdh != tdt) {
    auto* d = reinterpret_cast<TxDesc*>(Dma(base + uint64_t{tdh} * sizeof(TxDesc), 16));
    if (d == nullptr) return;
    const uint32_t cmd = d->cmd_type_len;
    const uint32_t len = cmd & 0xFFFF;
    if (const uint8_t* buf = Dma(d->addr, len)) partial_.insert(partial_.end(), buf, buf + len);
    if (cmd & kTxEop) {
      sent_.push_back(std::move(partial_));
      partial_.clear();
    }
    tdh = (tdh + 1) % size;
    if ((cmd & kTxRs) && (wb & kTdwbalHeadWbEn)) {
      if (auto* h = reinterpret_cast<uint32_t*>(Dma(wb & ~uint64_t{3}, 4))) {
        uint32_t v = tdh;
        if (hostile_ == Hostile::kTxHeadBeyondRing) v = size + 5;
        if (hostile_ == Hostile::kTxHeadAhead) v = (tdt + 1) % size;
        __atomic_store_n(h, v, __ATOMIC_RELEASE);
      }
    }
  }
}

}  // namespace vfdrivers::net::ixgbevf::testing
