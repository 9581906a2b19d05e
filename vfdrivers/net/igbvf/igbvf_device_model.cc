#include "vfdrivers/net/igbvf/igbvf_device_model.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace vfdrivers::net::igbvf::testing {
using intel_vf::kMbPfack;
using intel_vf::kMbPfsts;
using intel_vf::kMbPfu;
using intel_vf::kMbReadClear;
using intel_vf::kMbReq;
using intel_vf::kMbRstd;
using intel_vf::kMbRsti;
using intel_vf::kMbVfu;
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

class ModelBar final : public Bar {
 public:
  explicit ModelBar(IgbvfDeviceModel* m) : m_(m) {}
  absl::StatusOr<uint32_t> Read32(uint32_t off) override {
    if (off % 4 != 0 || off >= kBarSize) return absl::OutOfRangeError("model: bad offset");
    return m_->Read(off);
  }
  absl::Status Write32(uint32_t off, uint32_t v) override {
    if (off % 4 != 0 || off >= kBarSize) return absl::OutOfRangeError("model: bad offset");
    m_->Write(off, v);
    return absl::OkStatus();
  }
  absl::StatusOr<volatile uint32_t*> Register32(uint32_t off) override {
    if (off % 4 != 0 || off >= kBarSize) return absl::OutOfRangeError("model: bad offset");
    return m_->RegPtr(off);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    if (reinterpret_cast<uintptr_t>(vaddr) % 4096 != 0 || size % 4096 != 0 || size == 0) {
      return absl::InvalidArgumentError("model: MapDma of an unaligned range");
    }
    return m_->Map(vaddr, size);
  }
  absl::Status UnmapDma(uint64_t iova) override {
    return m_->Unmap(iova) ? absl::OkStatus() : absl::InvalidArgumentError("model: not mapped");
  }
  void Idle() override {}

 private:
  IgbvfDeviceModel* m_;
};

}  // namespace

IgbvfDeviceModel::IgbvfDeviceModel(const ModelOptions& options)
    : options_(options), regs_(kBarSize / 4, 0), vf_mac_(options.mac) {
  set_link(options.link_up);
  mbx_ = kMbRstd;  // the PF finished its own reset (CTRL_EXT.PFRSTD) before the VF came up
}

std::unique_ptr<Bar> IgbvfDeviceModel::MakeBar() { return std::make_unique<ModelBar>(this); }

void IgbvfDeviceModel::set_link(bool up) {
  if (up) {
    regs_[kStatus / 4] |= kStatusLu;
  } else {
    regs_[kStatus / 4] &= ~kStatusLu;
  }
}

uint64_t IgbvfDeviceModel::Map(void* vaddr, size_t size) {
  const uint64_t iova = next_iova_;
  next_iova_ += (size + 0xFFFFF) & ~uint64_t{0xFFFFF};
  dma_[iova] = {static_cast<uint8_t*>(vaddr), size};
  return iova;
}

bool IgbvfDeviceModel::Unmap(uint64_t iova) { return dma_.erase(iova) == 1; }

uint8_t* IgbvfDeviceModel::Translate(uint64_t iova, size_t length) {
  auto it = dma_.upper_bound(iova);
  if (it != dma_.begin()) {
    --it;
    const uint64_t off = iova - it->first;
    if (off < it->second.second && length <= it->second.second - off) {
      return it->second.first + off;
    }
  }
  ++dma_errors_;
  return nullptr;
}

uint32_t IgbvfDeviceModel::Read(uint32_t off) {
  if (off == kMailbox) {
    if (hostile_ == Hostile::kRstiStuck) return (mbx_ & ~kMbRstd) | kMbRsti;
    const uint32_t v = mbx_;
    mbx_ &= ~kMbReadClear;  // PFSTS, PFACK, RSTD clear on read
    return v;
  }
  return regs_[off / 4];
}

void IgbvfDeviceModel::Write(uint32_t off, uint32_t value) {
  switch (off) {
    case kCtrl:
      if (value & kCtrlRst) {
        // VF reset: queues off and zeroed, the PF is told (and forgets CTS until RESET).
        ++resets_;
        for (uint32_t r : {kRxdctl, kTxdctl, kRdh, kRdt, kTdh, kTdt, kTdwbal, kTdwbah}) {
          regs_[r / 4] = 0;
        }
        cts_ = false;
        tx_frame_.clear();
        mbx_ |= kMbRstd;
      }
      return;
    case kStatus:
      return;  // read-only
    case kMailbox:
      // VFU: taken only while the PF does not hold the buffer; dropped when not written.
      if ((value & kMbVfu) && !(mbx_ & kMbPfu)) {
        mbx_ |= kMbVfu;
      } else if (!(value & kMbVfu)) {
        mbx_ &= ~kMbVfu;
      }
      if (value & kMbReq) HandleMessage();
      return;
    default:
      regs_[off / 4] = value;
  }
}

void IgbvfDeviceModel::Reply(const uint32_t* words, size_t n) {
  for (size_t i = 0; i < n; ++i) regs_[kMbmem / 4 + i] = words[i];
  mbx_ |= kMbPfsts;
}

// The PF's side (as Linux igb's igb_rcv_msg_from_vf answers).
void IgbvfDeviceModel::HandleMessage() {
  if (hostile_ == Hostile::kMailboxSilent) return;
  mbx_ |= kMbPfack;
  uint32_t msg[kMbWords];
  for (uint32_t i = 0; i < kMbWords; ++i) msg[i] = regs_[kMbmem / 4 + i];
  const uint32_t id = msg[0] & kMsgIdMask;
  if (hostile_ == Hostile::kMailboxGarbage) {
    uint32_t r[3];
    for (uint32_t& w : r) {
      rng_ = rng_ * 1103515245u + 12345u;
      w = rng_;
    }
    r[0] = (r[0] & 0x1FFF0000u) | ((id + 0x100) & kMsgIdMask);  // no ACK/NACK, another id
    Reply(r, 3);
    return;
  }
  if (hostile_ == Hostile::kMailboxWrongId) {
    const uint32_t r[3] = {((id + 1) & kMsgIdMask) | kMsgAck | kMsgCts, 0xFFFFFFFFu, 0xFFFFFFFFu};
    Reply(r, 3);
    return;
  }
  if (id == kMsgReset) {
    uint32_t r[3] = {kMsgReset | kMsgNack, 0, 0};
    if (options_.mac_set_by_pf) {
      r[0] = kMsgReset | kMsgAck;
      uint8_t b[8] = {};
      std::memcpy(b, vf_mac_.bytes.data(), 6);
      std::memcpy(&r[1], b, 8);
      cts_ = true;
    }
    Reply(r, 3);
    return;
  }
  uint32_t r[1] = {id | kMsgNack | (cts_ ? kMsgCts : 0)};
  if (cts_) {
    switch (id) {
      case kMsgSetMac: {
        MacAddress m;
        uint8_t b[8];
        std::memcpy(b, &msg[1], 8);
        std::memcpy(m.bytes.data(), b, 6);
        if (options_.trust || m == vf_mac_) {
          vf_mac_ = m;
          r[0] = id | kMsgAck | kMsgCts;
        }
        break;
      }
      case kMsgSetMulticast: {
        uint32_t n = (msg[0] >> kMsgInfoShift) & 0xFF;
        if (n > 30) n = 30;
        mc_hashes_.clear();
        const uint16_t* h = reinterpret_cast<const uint16_t*>(&msg[1]);
        for (uint32_t i = 0; i < n; ++i) mc_hashes_.push_back(h[i]);
        r[0] = id | kMsgAck | kMsgCts;
        break;
      }
      case kMsgSetVlan: {
        const uint16_t vid = msg[1] & 0xFFF;
        if ((msg[0] >> kMsgInfoShift) & 1) {
          vlans_.push_back(vid);
        } else {
          for (size_t i = 0; i < vlans_.size(); ++i) {
            if (vlans_[i] == vid) {
              vlans_.erase(vlans_.begin() + i);
              break;
            }
          }
        }
        r[0] = id | kMsgAck | kMsgCts;
        break;
      }
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
  Reply(r, 1);
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
  auto* d = reinterpret_cast<RxDesc*>(Translate(base + uint64_t{rdh} * sizeof(RxDesc), 16));
  if (d == nullptr) return false;
  const uint32_t bsize = (regs_[kSrrctl / 4] & 0x7F) << kSrrctlBsizeShift;
  const uint32_t copy = length < bsize ? length : bsize;
  uint8_t* buf = Translate(d->pkt_addr, copy);
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
      auto* x = reinterpret_cast<RxDesc*>(Translate(base + uint64_t{s} * sizeof(RxDesc), 16));
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
    auto* d = reinterpret_cast<TxDesc*>(Translate(base + uint64_t{tdh} * sizeof(TxDesc), 16));
    if (d == nullptr) return;
    const uint32_t cmd = d->cmd_type_len;
    const uint32_t len = cmd & 0xFFFF;
    const uint8_t* buf = Translate(d->addr, len);
    if (buf != nullptr) tx_frame_.insert(tx_frame_.end(), buf, buf + len);
    if (cmd & kTxCmdEop) {
      sent_.push_back(std::move(tx_frame_));
      tx_frame_.clear();
    }
    tdh = (tdh + 1) % size;
    if ((cmd & kTxCmdRs) && (wb & kTdwbalEnable)) {
      auto* h = reinterpret_cast<uint32_t*>(Translate(wb & ~uint64_t{3}, 4));
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
