// IgbvfDeviceModel: a register-level model of an 82576 VF and of the PF's mailbox side, for
// tests and the instruction-count bench (testonly).
//
// Registers live in a plain 16 KiB array. The Bar it hands out routes Read32/Write32 through the
// model, so side effects happen as on hardware: VTCTRL.RST resets the queues (and raises RSTD
// once), VFMAILBOX reads clear PFSTS/PFACK/RSTD, VFMAILBOX writes take/release the buffer and
// post messages, which the model answers as Linux's igb PF does (RESET -> ACK + MAC, SET_MAC,
// SET_MULTICAST, SET_VLAN, SET_LPE; NACK before RESET). RDT/TDT are plain memory (the driver
// writes them through Register32); the device part runs in Step() or Deliver().
//
// DMA goes through the model's own IOVA space (unrelated to virtual addresses); an access
// outside every mapping is counted (dma_errors) and not done. The IOVA space, the PF's mailbox
// side and the accessors are intel_vf::testing::VfDeviceModel's, shared with ixgbevf's model.
//
// Hostile modes make the device lie: bad RX lengths, write-backs with DD in slots the driver
// never gave, RX without EOP, a TX head beyond the ring or beyond the tail, garbage mailbox
// replies, a mailbox that never answers, RSTI stuck.
#ifndef VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_DEVICE_MODEL_H_
#define VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_DEVICE_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/intel_vf/vf_device_model.h"

namespace vfdrivers::net::igbvf::testing {

enum class Hostile {
  kNone,
  kRxLengthZero,       // write-backs say length 0
  kRxLengthHuge,       // write-backs say 60000 (beyond the 2 KiB buffer)
  kRxNoEop,            // write-backs without EOP
  kRxFrameError,       // write-backs with RXE set (not hostile: a frame the wire damaged)
  kRxDoneNotGiven,     // Deliver also writes DD + plausible length into slots not given
  kTxHeadBeyondRing,   // head write-back = ring size + 5
  kTxHeadAhead,        // head write-back = tail + 1 (a descriptor never queued)
  kMailboxGarbage,     // replies are random words
  kMailboxWrongId,     // replies ACK another message id
  kMailboxSilent,      // never ACKs, never replies
  kRstiStuck,          // RSTI set forever, never RSTD
};

struct ModelOptions {
  MacAddress mac{{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}};
  bool mac_set_by_pf = true;   // false: RESET is NACKed
  bool trust = false;          // true: SET_MAC to another address is accepted
  bool link_up = true;
};

class IgbvfDeviceModel final : public intel_vf::testing::VfDeviceModel {
 public:
  explicit IgbvfDeviceModel(const ModelOptions& options = {});

  std::unique_ptr<Bar> MakeBar();
  void set_hostile(Hostile h) { hostile_ = h; }
  void set_link(bool up);

  // Device side of RX: writes one frame into the next descriptor the driver gave (RDH != RDT),
  // with write-back. False if no descriptor is free (dropped) or the queue is off.
  bool Deliver(const uint8_t* frame, uint32_t length);
  // Device side of TX: consumes descriptors up to TDT, collects frames, writes the head back
  // after RS descriptors.
  void Step();

  // Used by the Bar.
  uint32_t Read(uint32_t off);
  void Write(uint32_t off, uint32_t value);

 private:
  void HandleMessage();

  ModelOptions options_;
  Hostile hostile_ = Hostile::kNone;
  std::vector<uint8_t> tx_frame_;
  uint32_t rng_ = 12345;
};

}  // namespace vfdrivers::net::igbvf::testing

#endif  // VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_DEVICE_MODEL_H_
