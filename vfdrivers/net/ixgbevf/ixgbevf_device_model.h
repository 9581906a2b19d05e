// IxgbevfDeviceModel: a register-level model of one 82599 VF and of the PF's side of its
// mailbox, for tests and the instruction-count bench (testonly). Written from the 82599
// datasheet's descriptions (§8.3 VF registers, §7.1.6 / §7.2.3 descriptors, §7.9 mailbox), not
// from a driver: it is what the driver was checked against, since QEMU has no 82599.
//
// Registers are a 16 KiB array; Read/Write give them their side effects: VFCTRL.RST stops and
// clears the queues and raises VFMAILBOX.RSTD; VFMAILBOX reads clear PFSTS/PFACK/RSTD; VFU is
// granted unless the PF holds the buffer; REQ makes the PF answer at once (RESET -> ACK + MAC +
// filter type, API_NEGOTIATE up to `max_api`, SET_MAC_ADDR, SET_MULTICAST, SET_VLAN, SET_LPE;
// NACK before RESET); VFRXDCTL/VFTXDCTL.ENABLE reads back set. VFRDT/VFTDT are plain memory the
// driver writes through Register32; the device side runs in Deliver() (RX) and Step() (TX).
//
// DMA is through the model's own IOVA space; an access outside every mapping is counted
// (dma_errors) and not done. The IOVA space, the PF's mailbox side and the accessors are
// intel_vf::testing::VfDeviceModel's, shared with igbvf's model.
//
// Hostile modes make the device lie (see Hostile).
#ifndef VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_DEVICE_MODEL_H_
#define VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_DEVICE_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "vfdrivers/net/intel_vf/vf_device_model.h"
#include "vfdrivers/net/ixgbevf/ixgbevf.h"

namespace vfdrivers::net::ixgbevf::testing {

enum class Hostile {
  kNone,
  kRxLengthZero,      // write-backs with PKT_LEN 0
  kRxLengthHuge,      // PKT_LEN 60000 (the buffer is 2 KiB)
  kRxNoEop,           // no EOP
  kRxFrameError,      // RXE set (a damaged frame: dropped, not hostility)
  kRxDoneNotGiven,    // also writes DD + a plausible length into every slot not given
  kRxHeadBeyondRing,  // VFRDH register jumps past the ring (the driver never reads it)
  kTxHeadBeyondRing,  // head write-back = ring size + 5
  kTxHeadAhead,       // head write-back = tail + 1 (never queued)
  kMailboxGarbage,    // replies are random words
  kMailboxWrongId,    // replies ACK another message id
  kMailboxSilent,     // never PFACK, never a reply
  kMailboxBusy,       // the PF holds the buffer forever (VFU never granted)
  kResetNeverDone,    // VFMAILBOX.RSTI stays set, RSTD never comes
  kQueueNeverEnables, // VFRXDCTL/VFTXDCTL.ENABLE never reads back set
  kBadFilterType,     // RESET|ACK with multicast filter type 7
};

struct ModelOptions {
  MacAddress mac{{0x02, 0x09, 0x9f, 0x00, 0x00, 0x01}};
  bool mac_set_by_pf = true;  // false: RESET|NACK
  bool trust = false;         // SET_MAC_ADDR of another address accepted
  bool link_up = true;
  uint32_t max_api = kApi12;  // newest API revision the PF accepts
  bool nack_every_api = false;  // a PF that accepts no revision at all
  uint32_t mc_filter_type = 0;
};

class IxgbevfDeviceModel final : public intel_vf::testing::VfDeviceModel {
 public:
  explicit IxgbevfDeviceModel(const ModelOptions& options = {});

  std::unique_ptr<Bar> MakeBar();
  void set_hostile(Hostile h) { hostile_ = h; }
  void set_link(bool up);

  // RX: one frame into the descriptor at VFRDH (if VFRDH != VFRDT), with write-back.
  bool Deliver(const uint8_t* frame, uint32_t length);
  // TX: consumes descriptors up to VFTDT, keeps the frames, writes the head back after RS.
  void Step();

  uint32_t api() const { return api_; }

  // The Bar's side.
  uint32_t Read(uint32_t off);
  void Write(uint32_t off, uint32_t value);

 private:
  void PfReceive();
  uint32_t Random();

  ModelOptions options_;
  Hostile hostile_ = Hostile::kNone;
  uint32_t api_ = kApi10;
  uint32_t rx_head_ = 0;  // the device's RX position (VFRDH shows it unless lying)
  std::vector<uint8_t> partial_;
  uint32_t seed_ = 0x9e3779b9u;
};

}  // namespace vfdrivers::net::ixgbevf::testing

#endif  // VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_DEVICE_MODEL_H_
