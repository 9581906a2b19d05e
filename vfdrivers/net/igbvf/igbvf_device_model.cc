#include "vfdrivers/net/igbvf/igbvf_device_model.h"

#include <cstring>

namespace vfdrivers::net::igbvf::testing {

using intel_vf::kMbRstd;
using intel_vf::kMbRsti;
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

IgbvfDeviceModel::IgbvfDeviceModel(const ModelOptions& options)
    : VfDeviceModel(kMbmem, 0x7f0000000ull, uint64_t{1} << 20, options.mac), options_(options) {
  set_link(options.link_up);
}

std::unique_ptr<Bar> IgbvfDeviceModel::MakeBar() {
  return std::make_unique<intel_vf::testing::ModelBar<IgbvfDeviceModel>>(this, "igbvf model");
}

void IgbvfDeviceModel::set_link(bool up) {
  if (up) {
    regs_[kStatus / 4] |= kStatusLu;
  } else {
    regs_[kStatus / 4] &= ~kStatusLu;
  }
}

uint32_t IgbvfDeviceModel::Read(uint32_t off) {
  if (off == kMailbox) {
    if (hostile_ == Hostile::kRstiStuck) return (mailbox_ & ~kMbRstd) | kMbRsti;
    return MailboxRead();  // PFSTS, PFACK, RSTD clear on read
  }
  return regs_[off / 4];
}

void IgbvfDeviceModel::Write(uint32_t off, uint32_t value) {
  switch (off) {
    case kCtrl:
      if (value & kCtrlRst) {
        // VF reset: queues off and zeroed, the PF is told (and forgets CTS until RESET).
        for (uint32_t r : {kRxdctl, kTxdctl, kRdh, kRdt, kTdh, kTdt, kTdwbal, kTdwbah}) {
          regs_[r / 4] = 0;
        }
        tx_frame_.clear();
        ResetSeenByPf();
      }
      return;
    case kStatus:
      return;  // read-only
    case kMailbox:
      // VFU: taken only while the PF does not hold the buffer; dropped when not written.
      if (MailboxWrite(value)) HandleMessage();
      return;
    default:
      regs_[off / 4] = value;
  }
}

// The PF's side (as Linux igb's igb_rcv_msg_from_vf answers).
void IgbvfDeviceModel::HandleMessage() {
  if (hostile_ == Hostile::kMailboxSilent) return;
  uint32_t msg[kMbWords];
  PfRead(msg);
  const uint32_t id = msg[0] & kMsgIdMask;
  if (hostile_ == Hostile::kMailboxGarbage) {
    uint32_t r[3];
    for (uint32_t& w : r) {
      rng_ = rng_ * 1103515245u + 12345u;
      w = rng_;
    }
    r[0] = (r[0] & 0x1FFF0000u) | ((id + 0x100) & kMsgIdMask);  // no ACK/NACK, another id
    PfSend(r, 3);
    return;
  }
  if (hostile_ == Hostile::kMailboxWrongId) {
    const uint32_t r[3] = {((id + 1) & kMsgIdMask) | kMsgAck | kMsgCts, 0xFFFFFFFFu, 0xFFFFFFFFu};
    PfSend(r, 3);
    return;
  }
  if (id == kMsgReset) {
    uint32_t r[3];
    PfResetReply(options_.mac_set_by_pf, r);
    PfSend(r, 3);
    return;
  }
  uint32_t r[1] = {id | kMsgNack | (cts_ ? kMsgCts : 0)};
  if (cts_) {
    switch (id) {
      case kMsgSetMac:
        if (PfSetMac(msg, options_.trust)) r[0] = id | kMsgAck | kMsgCts;
        break;
      case kMsgSetMulticast: {
        uint32_t n = (msg[0] >> kMsgInfoShift) & 0xFF;
        if (n > 30) n = 30;
        mc_hashes_.clear();
        const uint16_t* h = reinterpret_cast<const uint16_t*>(&msg[1]);
        for (uint32_t i = 0; i < n; ++i) mc_hashes_.push_back(h[i]);
        r[0] = id | kMsgAck | kMsgCts;
        break;
      }
      case kMsgSetVlan:
        PfSetVlan(msg);
        r[0] = id | kMsgAck | kMsgCts;
        break;
      case kMsgSetLpe:
        if (msg[1] <= 9216) {
          max_frame_ = msg[1];
          r[0] = id | kMsgAck | kMsgCts;
        }
        break;
      default:
        break;
    }
  }
  PfSend(r, 1);
}

bool IgbvfDeviceModel::Deliver(const uint8_t* frame, uint32_t length) {
  if (!(regs_[kRxdctl / 4] & kQueueEnable)) {
    ++rx_dropped_;
    return false;
  }
  const uint32_t size = regs_[kRdlen / 4] / sizeof(RxDesc);
  uint32_t& rdh = regs_[kRdh / 4];
  const uint32_t rdt = regs_[kRdt / 4];
  if (size == 0 || rdh >= size || rdt >= size || rdh == rdt) {
    ++rx_dropped_;
    return false;
  }
  const uint64_t base = uint64_t{regs_[kRdbah / 4]} << 32 | regs_[kRdbal / 4];
  auto* d = reinterpret_cast<RxDesc*>(Dma(base + uint64_t{rdh} * sizeof(RxDesc), 16));
  if (d == nullptr) return false;
  const uint32_t bsize = (regs_[kSrrctl / 4] & 0x7F) << kSrrctlBsizeShift;
  const uint32_t copy = length < bsize ? length : bsize;
  uint8_t* buf = Dma(d->pkt_addr, copy);
  if (buf == nullptr) return false;
  std::memcpy(buf, frame, copy);
  uint32_t staterr = kRxStatDd | kRxStatEop;
  uint32_t len = copy;
  if (hostile_ == Hostile::kRxLengthZero) len = 0;
  if (hostile_ == Hostile::kRxLengthHuge) len = 60000;
  if (hostile_ == Hostile::kRxNoEop) staterr &= ~kRxStatEop;
  if (hostile_ == Hostile::kRxFrameError) staterr |= 0x80000000u;  // RXE
  d->pkt_addr = 0;
  d->hdr_addr = staterr | uint64_t{len & 0xFFFF} << 32;
  rdh = (rdh + 1) % size;
  if (hostile_ == Hostile::kRxDoneNotGiven) {
    // Write-backs in every slot the driver did not give (from RDT up to RDH), with lengths
    // that would look fine, and an address of the model's choosing.
    for (uint32_t s = rdt; s != rdh; s = (s + 1) % size) {
      auto* x = reinterpret_cast<RxDesc*>(Dma(base + uint64_t{s} * sizeof(RxDesc), 16));
      if (x != nullptr) {
        x->pkt_addr = 0xdead0000;
        x->hdr_addr = kRxStatDd | kRxStatEop | uint64_t{64} << 32;
      }
    }
  }
  return true;
}

void IgbvfDeviceModel::Step() {
  if (!(regs_[kTxdctl / 4] & kQueueEnable)) return;
  const uint32_t size = regs_[kTdlen / 4] / sizeof(TxDesc);
  uint32_t& tdh = regs_[kTdh / 4];
  const uint32_t tdt = regs_[kTdt / 4];
  if (size == 0 || tdh >= size || tdt >= size) return;
  const uint64_t base = uint64_t{regs_[kTdbah / 4]} << 32 | regs_[kTdbal / 4];
  const uint64_t wb = uint64_t{regs_[kTdwbah / 4]} << 32 | regs_[kTdwbal / 4];
  while (tdh != tdt) {
    auto* d = reinterpret_cast<TxDesc*>(Dma(base + uint64_t{tdh} * sizeof(TxDesc), 16));
    if (d == nullptr) return;
    const uint32_t cmd = d->cmd_type_len;
    const uint32_t len = cmd & 0xFFFF;
    const uint8_t* buf = Dma(d->addr, len);
    if (buf != nullptr) tx_frame_.insert(tx_frame_.end(), buf, buf + len);
    if (cmd & kTxCmdEop) {
      sent_.push_back(std::move(tx_frame_));
      tx_frame_.clear();
    }
    tdh = (tdh + 1) % size;
    if ((cmd & kTxCmdRs) && (wb & kTdwbalEnable)) {
      auto* h = reinterpret_cast<uint32_t*>(Dma(wb & ~uint64_t{3}, 4));
      if (h != nullptr) {
        uint32_t v = tdh;
        if (hostile_ == Hostile::kTxHeadBeyondRing) v = size + 5;
        if (hostile_ == Hostile::kTxHeadAhead) v = (tdt + 1) % size;
        __atomic_store_n(h, v, __ATOMIC_RELEASE);
      }
    }
  }
}

}  // namespace vfdrivers::net::igbvf::testing
