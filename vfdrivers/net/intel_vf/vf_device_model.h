// VfDeviceModel: the part of the igbvf (82576) and ixgbevf (82599) register-level models that is
// the same on both parts (testonly): a 16 KiB register array, the model's own IOVA space (an
// access outside every mapping is counted in dma_errors and not done), the PF's side of
// VFMAILBOX + VMBMEM (read-to-clear PFSTS/PFACK/RSTD, VFU granted unless the PF holds the
// buffer), the PF's per-VF state (MAC, multicast hashes, VLANs, max frame, CTS) with the two
// requests both PFs answer alike (SET_MAC, SET_VLAN), and a Bar over a model (ModelBar).
//
// Each model derives from it and keeps its own registers' side effects, its PF's answers to
// the other messages, its device side of RX/TX and its hostile modes.
#ifndef VFBROKER_VFDRIVERS_NET_INTEL_VF_VF_DEVICE_MODEL_H_
#define VFBROKER_VFDRIVERS_NET_INTEL_VF_VF_DEVICE_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "vfdrivers/net/intel_vf/mailbox.h"

namespace vfdrivers::net::intel_vf::testing {

class VfDeviceModel {
 public:
  std::deque<std::vector<uint8_t>>& sent() { return sent_; }
  uint64_t dma_errors() const { return dma_errors_; }
  uint64_t rx_dropped() const { return rx_dropped_; }
  size_t live_mappings() const { return dma_.size(); }
  uint32_t resets() const { return resets_; }
  bool cts() const { return cts_; }
  MacAddress vf_mac() const { return vf_mac_; }
  const std::vector<uint16_t>& multicast_hashes() const { return mc_hashes_; }
  const std::vector<uint16_t>& vlans() const { return vlans_; }
  uint32_t max_frame() const { return max_frame_; }
  uint32_t Reg(uint32_t off) const { return regs_[off / 4]; }

  // The Bar's side (Read/Write are each model's own).
  volatile uint32_t* RegPtr(uint32_t off) { return &regs_[off / 4]; }
  uint64_t Map(void* vaddr, size_t size);
  bool Unmap(uint64_t iova);

 protected:
  static constexpr uint32_t kBarBytes = 0x4000;  // BAR0 of both VFs

  // `mbmem`: where VMBMEM / VFMBMEM is in BAR0. Mappings get IOVAs from `first_iova` up, each
  // rounded up to `iova_granule` (a power of two). The PF has finished its own reset: RSTD set.
  VfDeviceModel(uint32_t mbmem, uint64_t first_iova, uint64_t iova_granule, const MacAddress& mac);

  // The device's view of a DMA range: nullptr (counted in dma_errors) outside every mapping.
  uint8_t* Dma(uint64_t iova, size_t length);

  // VFMAILBOX as the VF reads it: PFSTS, PFACK and RSTD clear.
  uint32_t MailboxRead();
  // A VF write to VFMAILBOX: VFU is taken when written and `grant` and the PF does not hold the
  // buffer (PFU), released when not written (REQ and ACK writes). Returns whether REQ was set.
  bool MailboxWrite(uint32_t value, bool grant = true);
  // The VF's reset (VFCTRL/VTCTRL.RST): counted; the PF forgets CTS and raises RSTD.
  void ResetSeenByPf();
  // The PF reads the VF's message (raises PFACK).
  void PfRead(uint32_t (&msg)[kMbWords]);
  // The PF's reply in VMBMEM (raises PFSTS).
  void PfSend(const uint32_t* words, size_t n);
  // RESET|ACK words 0-2 (word 0 without CTS, the MAC in words 1-2) and CTS on; RESET|NACK
  // without a MAC when `have_mac` is false.
  void PfResetReply(bool have_mac, uint32_t* reply);
  // SET_MAC: accepted when the PF trusts the VF or the address is the one the PF gave.
  bool PfSetMac(const uint32_t* msg, bool trust);
  // SET_VLAN: info bit 0 = add, word 1 = the id (12 bits).
  void PfSetVlan(const uint32_t* msg);

  std::vector<uint32_t> regs_;
  uint32_t mailbox_ = 0;  // VFMAILBOX as the VF sees it
  bool cts_ = false;      // the PF accepts requests (after RESET)
  std::deque<std::vector<uint8_t>> sent_;
  uint64_t rx_dropped_ = 0;
  uint32_t resets_ = 0;
  MacAddress vf_mac_;
  std::vector<uint16_t> mc_hashes_, vlans_;
  uint32_t max_frame_ = 1518;

 private:
  uint32_t mbmem_;
  std::map<uint64_t, std::pair<uint8_t*, size_t>> dma_;
  uint64_t next_iova_;
  uint64_t iova_granule_;
  uint64_t dma_errors_ = 0;
};

// A Bar over a model (Model: Read, Write, RegPtr, Map, Unmap): offsets dword-aligned inside the
// 16 KiB BAR, DMA ranges page-aligned; errors start with `name` ("igbvf model").
template <typename Model>
class ModelBar final : public Bar {
 public:
  ModelBar(Model* model, const char* name) : model_(model), name_(name) {}
  absl::StatusOr<uint32_t> Read32(uint32_t off) override {
    if (!Valid(off)) return Bad(off);
    return model_->Read(off);
  }
  absl::Status Write32(uint32_t off, uint32_t value) override {
    if (!Valid(off)) return Bad(off);
    model_->Write(off, value);
    return absl::OkStatus();
  }
  absl::StatusOr<volatile uint32_t*> Register32(uint32_t off) override {
    if (!Valid(off)) return Bad(off);
    return model_->RegPtr(off);
  }
  absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) override {
    if (size == 0 || size % 4096 != 0 || reinterpret_cast<uintptr_t>(vaddr) % 4096 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name_, ": DMA range not page-aligned"));
    }
    return model_->Map(vaddr, size);
  }
  absl::Status UnmapDma(uint64_t iova) override {
    if (model_->Unmap(iova)) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat(name_, ": no such mapping"));
  }
  void Idle() override {}

 private:
  static bool Valid(uint32_t off) { return off < 0x4000 && (off & 3) == 0; }
  absl::Status Bad(uint32_t off) const {
    return absl::OutOfRangeError(absl::StrCat(name_, ": register offset ", off));
  }
  Model* model_;
  const char* name_;
};

}  // namespace vfdrivers::net::intel_vf::testing

#endif  // VFBROKER_VFDRIVERS_NET_INTEL_VF_VF_DEVICE_MODEL_H_
