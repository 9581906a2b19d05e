#include "vfdrivers/net/intel_vf/vf_device_model.h"

namespace vfdrivers::net::intel_vf::testing {

VfDeviceModel::VfDeviceModel(uint32_t mbmem, uint64_t first_iova, uint64_t iova_granule,
                             const MacAddress& mac)
    : regs_(kBarBytes / 4, 0),
      mailbox_(kMbRstd),
      vf_mac_(mac),
      mbmem_(mbmem),
      next_iova_(first_iova),
      iova_granule_(iova_granule) {}

uint64_t VfDeviceModel::Map(void* vaddr, size_t size) {
  const uint64_t iova = next_iova_;
  next_iova_ += (size + iova_granule_ - 1) & ~(iova_granule_ - 1);
  dma_[iova] = {static_cast<uint8_t*>(vaddr), size};
  return iova;
}

bool VfDeviceModel::Unmap(uint64_t iova) { return dma_.erase(iova) == 1; }

uint8_t* VfDeviceModel::Dma(uint64_t iova, size_t length) {
  auto it = dma_.upper_bound(iova);
  if (it != dma_.begin()) {
    --it;
    const uint64_t off = iova - it->first;
    const size_t size = it->second.second;
    if (off < size && length <= size - off) return it->second.first + off;
  }
  ++dma_errors_;
  return nullptr;
}

uint32_t VfDeviceModel::MailboxRead() {
  const uint32_t v = mailbox_;
  mailbox_ &= ~kMbReadClear;
  return v;
}

bool VfDeviceModel::MailboxWrite(uint32_t value, bool grant) {
  if (value & kMbVfu) {
    if (grant && !(mailbox_ & kMbPfu)) mailbox_ |= kMbVfu;
  } else {
    mailbox_ &= ~kMbVfu;
  }
  return (value & kMbReq) != 0;
}

void VfDeviceModel::ResetSeenByPf() {
  ++resets_;
  cts_ = false;
  mailbox_ |= kMbRstd;
}

void VfDeviceModel::PfRead(uint32_t (&msg)[kMbWords]) {
  mailbox_ |= kMbPfack;
  for (uint32_t i = 0; i < kMbWords; ++i) msg[i] = regs_[mbmem_ / 4 + i];
}

void VfDeviceModel::PfSend(const uint32_t* words, size_t n) {
  for (size_t i = 0; i < n; ++i) regs_[mbmem_ / 4 + i] = words[i];
  mailbox_ |= kMbPfsts;
}

void VfDeviceModel::PfResetReply(bool have_mac, uint32_t* reply) {
  reply[0] = kMsgReset | kMsgNack;
  reply[1] = reply[2] = 0;
  if (!have_mac) return;
  reply[0] = kMsgReset | kMsgAck;
  MacToWords(vf_mac_, &reply[1]);
  cts_ = true;
}

bool VfDeviceModel::PfSetMac(const uint32_t* msg, bool trust) {
  const MacAddress mac = MacFromWords(&msg[1]);
  if (!trust && !(mac == vf_mac_)) return false;
  vf_mac_ = mac;
  return true;
}

void VfDeviceModel::PfSetVlan(const uint32_t* msg) {
  const uint16_t vid = msg[1] & 0xFFF;
  if ((msg[0] >> kMsgInfoShift) & 1) {
    vlans_.push_back(vid);
    return;
  }
  for (auto it = vlans_.begin(); it != vlans_.end(); ++it) {
    if (*it == vid) {
      vlans_.erase(it);
      return;
    }
  }
}

}  // namespace vfdrivers::net::intel_vf::testing
