// VirtioNetDeviceModel: a register-level model of a modern virtio-net PCI device (testonly), for
// the driver's tests and the instruction-count bench.
//
// What it models: PCI config space with the vendor-specific virtio capabilities (§4.1.4), one
// 16 KiB memory BAR 4 (as QEMU lays it out: common config at 0x0, ISR at 0x1000, device config
// at 0x2000, notifications at 0x3000 with notify_off_multiplier 4), device_status with reset and
// FEATURES_OK checking, per-queue registers behind queue_select, and the device side of split
// virtqueues (§2.7): receiveq (Deliver), transmitq and controlq (Step). Notify addresses are
// plain memory the driver stores to (Register16); the model notices a store on its next
// Step/Deliver (TakeNotifies), as igbvf's model treats RDT/TDT.
//
// DMA goes through the model's own IOVA space (above 4 GiB, unrelated to virtual addresses); an
// access outside every mapping is counted (dma_errors) and not done.
//
// Hostile modes make the device lie (see Hostile). Thread safety: none; one test thread.
#ifndef VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_DEVICE_MODEL_H_
#define VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_DEVICE_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "vfdrivers/net/virtio_net/virtio_net.h"

namespace vfdrivers::net::virtio_net::testing {

enum class Hostile {
  kNone,
  // Used ring lies (RX and TX):
  kUsedIdxJump,         // used idx advances by ring size + 5 more than it should
  kUsedIdOutOfRange,    // used entries name id 0x10000 + the real one
  kUsedIdDuplicate,     // every used entry is written twice (the second: already returned)
  kUsedIdNotGiven,      // used entries name the next descriptor id, not the one used
  kRxLengthHuge,        // RX used len 60000 (beyond the buffer)
  kRxLengthShort,       // RX used len 5 (less than the 12-byte header)
  kRxLengthHeaderOnly,  // RX used len 12 (a header and no frame)
  // Setup lies:
  kCapOffsetOutsideBar,  // common config capability: offset 0x3800 + length 0x1000 > BAR
  kCapBadBar,            // common config capability names BAR 9
  kCapFirstCommonBad,    // a bad common config capability first, a good one later
  kCapListLoop,          // the last capability points back to the first
  kCapPointerOutOfRange, // capabilities pointer 0xFC (no room for a capability)
  kNoVersion1,           // VIRTIO_F_VERSION_1 not offered
  kNoAccessPlatform,     // VIRTIO_F_ACCESS_PLATFORM not offered
  kFeaturesOkRefused,    // FEATURES_OK never reads back set
  kResetNeverCompletes,  // device_status never reads 0 after a reset
  kQueueSizeZero,        // receiveq's queue_size reads 0
  kNotifyOffOutside,     // queue_notify_off 0x7FFF: beyond the notify structure
  // Control queue:
  kCtrlNack,    // every command answered VIRTIO_NET_ERR
  kCtrlSilent,  // commands never answered
  // Not hostile: the device asks for no notifications (VIRTQ_USED_F_NO_NOTIFY).
  kNoNotify,
  // Not hostile (§2.7.8 allows it): completions out of order. RX: every other Deliver holds
  // the buffer it took and fills the next one, the held one on the next Deliver. TX: each Step
  // holds back the first chain it takes until the next Step and completes the rest in reverse.
  kOutOfOrder,
};

struct ModelOptions {
  MacAddress mac{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
  bool link_up = true;
  uint16_t queue_max = 256;  // queue_size the device offers for RX and TX
  bool offer_ctrl = true;    // CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR
  bool offer_mac = true;
  bool offer_status = true;
  Hostile hostile = Hostile::kNone;  // setup modes must be given here
};

class VirtioNetDeviceModel {
 public:
  static constexpr uint32_t kBar = 4;
  static constexpr uint32_t kBarSize = 0x4000;
  static constexpr uint32_t kCommonAt = 0x0000, kIsrAt = 0x1000, kDeviceAt = 0x2000,
                            kNotifyAt = 0x3000, kNotifyMultiplier = 4;

  explicit VirtioNetDeviceModel(const ModelOptions& options = {});

  // The driver's view of the device. The model must outlive it.
  std::unique_ptr<Transport> MakeTransport();
  void set_hostile(Hostile h) { hostile_ = h; }
  void set_link(bool up);

  // Device side of receiveq: writes one frame (after a virtio_net_hdr) into the next buffer the
  // driver made available, and returns it in the used ring. False when there is none (dropped)
  // or the device is not live.
  bool Deliver(const uint8_t* frame, uint32_t length);
  // Device side of transmitq and controlq: takes every available chain, collects frames (the
  // header stripped) into sent(), answers control commands.
  void Step();

  // What the driver did.
  uint8_t status() const { return status_; }
  uint64_t driver_features() const { return driver_features_; }
  uint64_t offered_features() const { return offered_; }
  uint16_t queue_size(uint16_t q) const { return queues_[q].size; }
  bool queue_enabled(uint16_t q) const { return queues_[q].enable != 0; }
  uint16_t queue_msix_vector(uint16_t q) const { return queues_[q].msix; }
  uint64_t queue_desc(uint16_t q) const { return queues_[q].desc; }
  std::deque<std::vector<uint8_t>>& sent() { return sent_; }
  uint64_t tx_nonzero_headers() const { return tx_nonzero_headers_; }
  bool promiscuous() const { return promisc_; }
  MacAddress mac() const { return mac_; }
  uint32_t ctrl_commands() const { return ctrl_commands_; }
  // Notify stores seen on queue q since the last call (at most one per Step/Deliver).
  uint32_t TakeNotifies(uint16_t q);
  uint64_t dma_errors() const { return dma_errors_; }
  uint64_t driver_errors() const { return driver_errors_; }  // malformed chains or descriptors
  uint64_t rx_dropped() const { return rx_dropped_; }
  uint32_t resets() const { return resets_; }
  size_t live_mappings() const { return dma_.size(); }

  // The transport's side.
  uint32_t ConfigRead(uint32_t offset, int width) const;
  uint32_t BarRead(uint64_t offset, int width);
  void BarWrite(uint64_t offset, int width, uint32_t value);
  volatile uint16_t* NotifyPtr(uint64_t offset);
  uint64_t Map(void* vaddr, size_t size);
  bool Unmap(uint64_t iova);

 private:
  struct Queue {
    uint16_t max = 0;
    uint16_t size = 0;
    uint16_t msix = 0;
    uint16_t enable = 0;
    uint64_t desc = 0, driver = 0, device = 0;
    uint16_t last_avail = 0;  // next avail entry the device takes
    uint16_t used_idx = 0;    // the device's used idx
  };
  void Reset();
  bool Live(uint16_t q) const;
  uint8_t* Dma(uint64_t iova, size_t length);
  // Takes the next available chain of queue q: its head id, readable bytes, and the first
  // writable descriptor (address, length). False when none is available or it is malformed.
  bool TakeChain(uint16_t q, uint16_t* head, std::vector<uint8_t>* readable, uint64_t* write_addr,
                 uint32_t* write_len);
  void PushUsed(uint16_t q, uint32_t id, uint32_t len, bool hostile_ok);
  void CollectNotifies();

  ModelOptions options_;
  Hostile hostile_;
  uint8_t config_[256] = {};
  uint64_t offered_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t device_feature_select_ = 0, driver_feature_select_ = 0;
  uint16_t msix_config_ = 0;
  uint8_t status_ = 0;
  uint8_t generation_ = 0;
  uint16_t queue_select_ = 0;
  Queue queues_[3];
  uint16_t net_status_ = 0;
  MacAddress mac_;
  bool promisc_ = true;  // as QEMU's virtio-net after reset
  uint16_t notify_[0x800];  // the notify structure; queue q stores at q * 4
  uint32_t notifies_[3] = {};
  std::deque<std::vector<uint8_t>> sent_;
  uint64_t tx_nonzero_headers_ = 0;
  uint32_t ctrl_commands_ = 0;
  uint32_t resets_ = 0;
  uint64_t rx_dropped_ = 0;
  uint64_t driver_errors_ = 0;
  std::map<uint64_t, std::pair<uint8_t*, size_t>> dma_;
  uint64_t next_iova_ = uint64_t{1} << 32;
  int32_t rx_held_ = -1, tx_held_ = -1;  // kOutOfOrder: a chain head taken, not yet used
  uint64_t dma_errors_ = 0;
};

}  // namespace vfdrivers::net::virtio_net::testing

#endif  // VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_DEVICE_MODEL_H_
