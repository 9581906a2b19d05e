// VirtioNetPort: a polling driver for a virtio-net device (modern virtio PCI, 1af4:1041) over
// VFIO, as net::Port. For VMs and clouds: the device must sit behind an IOMMU (the guest's
// vIOMMU, QEMU's iommu_platform=on) and offer VIRTIO_F_ACCESS_PLATFORM; see Create.
//
// ixy-style: one driver file (virtio_net.cc); each step cites the OASIS Virtio 1.2 section it
// follows (1.1 numbers the same sections alike). Only the modern interface: no legacy I/O BAR,
// no transitional device ids.
//
// What Create does, in order:
//   1. Walks the PCI capability list (§4.1.4) for the vendor-specific (0x09) virtio capabilities:
//      common config (type 1), notifications (2), ISR (3, unused: polling), device config (4).
//      Every cap pointer, length, BAR index and offset + length is bounds-checked against config
//      space and the BAR's size.
//   2. §3.1.1 initialization: reset (device_status = 0, wait until it reads back 0), ACKNOWLEDGE,
//      DRIVER, feature negotiation (VERSION_1 and ACCESS_PLATFORM required; MAC, STATUS,
//      CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR taken when offered; no offloads, no mergeable buffers, no
//      event index), FEATURES_OK read back, queue setup, DRIVER_OK.
//   3. Queues (§2.7 split virtqueues, §4.1.4.3): receiveq1 (0), transmitq1 (1) and, when
//      CTRL_VQ is offered, controlq (2). Descriptor table, driver (avail) and device (used)
//      areas given as IOVAs; queue size = Options' ring size, at most the device's maximum.
//      Rings, the control buffer and every packet buffer live in one DMA region mapped once.
//   4. Reads the MAC from device config (§5.1.4; generation-checked), then via the control queue
//      (§5.1.6.5): promiscuous off (CTRL_RX) when asked and offered, the MAC when one is given.
//   5. Optionally waits for VIRTIO_NET_S_LINK_UP.
//
// Fast path (no interrupts: VIRTQ_AVAIL_F_NO_INTERRUPT; counts, no allocation): RxBurst reaps
// used-ring entries, strips the 12-byte virtio_net_hdr (VERSION_1: num_buffers present) and
// refills with one avail idx store and at most one notify per burst (none when the device sets
// VIRTQ_USED_F_NO_NOTIFY). TxBurst writes a zeroed header into the buffer's headroom, right
// before the frame (zero copy), one descriptor per frame, one notify per burst. Nothing the
// device writes is trusted: a used idx may advance by at most the descriptors outstanding, an
// id must be a descriptor the driver gave and has not had back, an RX length must cover the
// header plus at least one byte and fit the buffer. A bad entry is counted
// (stats().bad_descriptors), its buffer (if any) goes back to the pool, never to the caller.
//
// Thread safety: as net::Port, one thread per port; setup calls (SetMac, SetPromiscuous,
// link_up) on that thread too.
#ifndef VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_H_
#define VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/net/buffer_pool.h"
#include "vfdrivers/net/port.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfdrivers::net::virtio_net {

using MacAddress = std::array<uint8_t, 6>;

// ---- Virtio facts (OASIS Virtio 1.2) ------------------------------------------------------------
// §4.1.4 PCI capabilities: struct virtio_pci_cap in config space.
inline constexpr uint8_t kPciCapVendor = 0x09;
inline constexpr uint8_t kCapCommonCfg = 1, kCapNotifyCfg = 2, kCapIsrCfg = 3,
                         kCapDeviceCfg = 4;
// §4.1.4.3 struct virtio_pci_common_cfg offsets.
inline constexpr uint32_t kCommonDeviceFeatureSelect = 0x00, kCommonDeviceFeature = 0x04,
                          kCommonDriverFeatureSelect = 0x08, kCommonDriverFeature = 0x0C,
                          kCommonMsixConfig = 0x10, kCommonNumQueues = 0x12,
                          kCommonDeviceStatus = 0x14, kCommonConfigGeneration = 0x15,
                          kCommonQueueSelect = 0x16, kCommonQueueSize = 0x18,
                          kCommonQueueMsixVector = 0x1A, kCommonQueueEnable = 0x1C,
                          kCommonQueueNotifyOff = 0x1E, kCommonQueueDesc = 0x20,
                          kCommonQueueDriver = 0x28, kCommonQueueDevice = 0x30;
inline constexpr uint32_t kCommonCfgMinLength = 0x38;
inline constexpr uint16_t kNoMsixVector = 0xFFFF;  // VIRTIO_MSI_NO_VECTOR
// §2.1 device status bits.
inline constexpr uint8_t kStatusAcknowledge = 1, kStatusDriver = 2, kStatusDriverOk = 4,
                         kStatusFeaturesOk = 8, kStatusNeedsReset = 64, kStatusFailed = 128;
// Feature bits: §6 (reserved feature bits) and §5.1.3 (network device).
inline constexpr int kFeatureMac = 5, kFeatureStatus = 16, kFeatureCtrlVq = 17,
                     kFeatureCtrlRx = 18, kFeatureCtrlMacAddr = 23, kFeatureVersion1 = 32,
                     kFeatureAccessPlatform = 33;
// §5.1.4 struct virtio_net_config offsets; VIRTIO_NET_S_LINK_UP.
inline constexpr uint32_t kNetCfgMac = 0, kNetCfgStatus = 6;
inline constexpr uint16_t kNetStatusLinkUp = 1;
// §5.1.6 struct virtio_net_hdr with VERSION_1 (num_buffers always present): 12 bytes.
inline constexpr uint32_t kNetHdrSize = 12;
// §5.1.2 virtqueues for queue pair 0 without VIRTIO_NET_F_MQ.
inline constexpr uint16_t kRxQueue = 0, kTxQueue = 1, kCtrlQueue = 2;

// §2.7.5 split virtqueue descriptor, §2.7.6 available ring, §2.7.8 used ring.
struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);
inline constexpr uint16_t kDescFNext = 1, kDescFWrite = 2;
inline constexpr uint16_t kAvailFNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
inline constexpr uint16_t kUsedFNoNotify = 1;      // VIRTQ_USED_F_NO_NOTIFY
struct VirtqUsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// What the driver needs from below: PCI config space, the BARs the capabilities point into,
// and DMA. VfioTransport (Create(VfioDevice&)) is the real one; the device model has its own.
// Thread safety: as the port.
class Transport {
 public:
  virtual ~Transport() = default;
  // PCI configuration space, naturally aligned, offset < 4096.
  virtual absl::StatusOr<uint8_t> ReadConfig8(uint32_t offset) = 0;
  virtual absl::StatusOr<uint16_t> ReadConfig16(uint32_t offset) = 0;
  virtual absl::StatusOr<uint32_t> ReadConfig32(uint32_t offset) = 0;
  virtual absl::Status EnableBusMastering() = 0;
  // Bytes of memory BAR `bar` (0..5) that can be reached; 0 for none (absent, I/O, unmappable).
  virtual absl::StatusOr<uint64_t> BarSize(uint32_t bar) = 0;
  // Naturally aligned 1-, 2- or 4-byte accesses inside a BAR; OUT_OF_RANGE otherwise.
  virtual absl::StatusOr<uint32_t> ReadBar(uint32_t bar, uint64_t offset, int width) = 0;
  virtual absl::Status WriteBar(uint32_t bar, uint64_t offset, int width, uint32_t value) = 0;
  // A checked pointer to a 2-byte register (a queue's notify address), for the fast path.
  virtual absl::StatusOr<volatile uint16_t*> Register16(uint32_t bar, uint64_t offset) = 0;
  // Page-aligned range -> IOVA, and back.
  virtual absl::StatusOr<uint64_t> MapDma(void* vaddr, size_t size) = 0;
  virtual absl::Status UnmapDma(uint64_t iova) = 0;
  // Called from every busy-wait loop (hardware: a CPU pause; a model runs the device).
  virtual void Idle() = 0;
};

// Over VFIO: config space and BARs through the VfioDevice, bus mastering on. The device must
// outlive the Transport.
absl::StatusOr<std::unique_ptr<Transport>> OpenVfioTransport(vfio::VfioDevice& device);

struct Options {
  // Split virtqueue sizes (§2.7: a power of two), each at most the device's queue_size.
  uint32_t rx_ring_size = 256;
  uint32_t tx_ring_size = 256;
  uint32_t buffer_count = 1024;  // > rx_ring_size: the rest is for the caller and TX
  memory::HugePages huge_pages = memory::HugePages::kPrefer;
  absl::Duration reset_timeout = absl::Milliseconds(500);  // device_status = 0 -> reads 0
  absl::Duration ctrl_timeout = absl::Milliseconds(2000);  // each control-queue command
  absl::Duration link_timeout = absl::Seconds(0);          // 0: do not wait for LINK_UP
  // Turn the device's promiscuous mode off (VIRTIO_NET_CTRL_RX_PROMISC 0) when it offers
  // CTRL_VQ + CTRL_RX; without them the device's filtering is what it is (reported in
  // promiscuous_off()).
  bool promiscuous_off = true;
  // Set this MAC with VIRTIO_NET_CTRL_MAC_ADDR_SET (needs CTRL_VQ + CTRL_MAC_ADDR, else Create
  // fails FAILED_PRECONDITION). Unset: the device's MAC (VIRTIO_NET_F_MAC) is used.
  std::optional<MacAddress> mac;
};

// Driver counters beyond net::PortStats.
struct VirtioNetStats {
  uint64_t bad_used_idx = 0;     // of stats().bad_descriptors: used idx beyond what was given
  uint64_t bad_used_id = 0;      // ... an id out of range or not outstanding
  uint64_t bad_rx_length = 0;    // ... RX length < header + 1 or beyond the buffer
  uint64_t notifies = 0;         // queue notify stores (MMIO writes; a VM exit under QEMU)
  uint64_t notifies_skipped = 0; // notifies not made because the device set NO_NOTIFY
  uint64_t ctrl_commands = 0;
};

class VirtioNetPort final : public Port {
 public:
  static constexpr uint32_t kBufferSize = 2048;
  // Where a buffer's frame starts: PacketBuffer::data = buffer + kHeadroom; the virtio_net_hdr
  // sits in the kNetHdrSize bytes before it (TX needs that many bytes before data).
  static constexpr uint32_t kHeadroom = 64;
  static constexpr uint32_t kBurst = 32;

  // Over VFIO (the device must outlive the port). Errors: INVALID_ARGUMENT for bad options;
  // FAILED_PRECONDITION for a device that is not modern virtio-net as required (capabilities
  // missing or out of bounds, VERSION_1 or ACCESS_PLATFORM not offered, FEATURES_OK refused,
  // queue size 0 or too small, a control command refused); DEADLINE_EXCEEDED for a reset or a
  // control command that does not complete; the transport's errors otherwise.
  static absl::StatusOr<std::unique_ptr<VirtioNetPort>> Create(vfio::VfioDevice& device,
                                                               const Options& options = {});
  // Over any transport (the device model in tests and the bench).
  static absl::StatusOr<std::unique_ptr<VirtioNetPort>> Create(
      std::unique_ptr<Transport> transport, const Options& options = {});
  // Resets the device (stops its DMA), then unmaps the region.
  ~VirtioNetPort() override;
  VirtioNetPort(const VirtioNetPort&) = delete;
  VirtioNetPort& operator=(const VirtioNetPort&) = delete;

  const PortInfo& info() const override { return info_; }
  const PortStats& stats() const override { return stats_; }
  const VirtioNetStats& virtio_stats() const { return xstats_; }
  size_t RxBurst(absl::Span<PacketBuffer> out) override;
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override;
  size_t AllocBurst(absl::Span<PacketBuffer> out) override;
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override;
  void Service() override;

  // The device's MAC (device config), or the one set since.
  std::array<uint8_t, 6> mac() const { return mac_; }
  // VIRTIO_NET_CTRL_MAC_ADDR_SET (§5.1.6.5.2). FAILED_PRECONDITION without CTRL_VQ +
  // CTRL_MAC_ADDR or when the device answers VIRTIO_NET_ERR; INVALID_ARGUMENT for a multicast
  // or zero MAC.
  absl::Status SetMac(const std::array<uint8_t, 6>& mac);
  // VIRTIO_NET_CTRL_RX_PROMISC (§5.1.6.5.1). FAILED_PRECONDITION without CTRL_VQ + CTRL_RX.
  absl::Status SetPromiscuous(bool on);
  // Whether promiscuous mode was turned off by this driver.
  bool promiscuous_off() const { return promiscuous_off_; }
  // VIRTIO_NET_S_LINK_UP in device config; true when the device has no F_STATUS (§5.1.4:
  // the link is then assumed up).
  bool link_up();
  absl::Status WaitForLink(absl::Duration timeout);
  // Feature bits both sides agreed on (§2.2).
  uint64_t features() const { return features_; }

  // Buffers by state, for tests: device-owned RX, in flight TX, in the free stack.
  uint32_t rx_posted() const { return rx_.outstanding; }
  uint32_t tx_in_flight() const { return tx_.outstanding; }
  uint32_t free_buffers() const { return pool_.free_count(); }

 private:
  // Buffer ids, free stack and "held by the caller" table (see buffer_pool.h); a frame starts
  // kHeadroom into its buffer.
  using Pool = BufferPool<kBufferSize, kHeadroom>;
  // One split virtqueue as the driver keeps it.
  struct Queue {
    uint16_t index = 0;
    uint16_t size = 0;          // power of two
    uint32_t mask = 0;          // size - 1
    VirtqDesc* desc = nullptr;
    volatile uint16_t* avail_flags = nullptr;
    volatile uint16_t* avail_idx = nullptr;
    uint16_t* avail_ring = nullptr;
    volatile uint16_t* used_flags = nullptr;
    volatile uint16_t* used_idx = nullptr;
    const volatile VirtqUsedElem* used_ring = nullptr;
    volatile uint16_t* notify = nullptr;
    uint16_t avail_shadow = 0;  // next avail idx to publish
    uint16_t used_seen = 0;     // used idx consumed up to here
    uint32_t outstanding = 0;   // descriptors given to the device, not yet back
    std::vector<uint32_t> desc_buf;  // descriptor id -> buffer index, kNotOutstanding if none
                                     // (avail slot i always names descriptor i)
  };

  VirtioNetPort(std::unique_ptr<Transport> transport, const Options& options);
  absl::Status Init();
  absl::Status FindCapabilities();
  absl::Status ResetDevice();
  absl::Status NegotiateFeatures();
  absl::Status SetupQueues();
  absl::Status SetupQueue(Queue& q, uint16_t index, uint32_t size, uint8_t* base, size_t* offset);
  absl::StatusOr<uint32_t> ReadCommon(uint32_t offset, int width);
  absl::Status WriteCommon(uint32_t offset, int width, uint32_t value);
  absl::Status ReadMac();
  absl::Status CtrlCommand(uint8_t cls, uint8_t cmd, const void* data, uint32_t length);
  void StopDevice();
  void RefillRx();
  void ReclaimTx();
  uint64_t Reap(PacketBuffer** out, uint32_t from, uint32_t count);
  const PacketBuffer* FillTx(const PacketBuffer* p, const PacketBuffer* end, uint32_t from);
  void Publish(Queue& q, uint16_t new_idx);

  std::unique_ptr<Transport> transport_;
  Options options_;
  PortInfo info_;
  PortStats stats_;
  VirtioNetStats xstats_;
  MacAddress mac_{};
  uint64_t features_ = 0;
  bool promiscuous_off_ = false;

  // Capabilities (§4.1.4): BAR and offset of each structure used.
  uint32_t common_bar_ = 0, notify_bar_ = 0, device_bar_ = 0;
  uint64_t common_off_ = 0, notify_off_ = 0, device_off_ = 0;
  uint64_t notify_len_ = 0, device_len_ = 0;
  uint32_t notify_multiplier_ = 0;
  bool have_device_cfg_ = false;

  memory::MemoryRegion region_;
  uint64_t iova_ = 0;
  bool mapped_ = false;
  bool device_live_ = false;  // reset on destruction
  uint8_t* rx_data0_ = nullptr;  // pool base + kHeadroom: frame of buffer 0
  uint64_t to_iova_ = 0;         // IOVA of a pool address = the address + this
  uintptr_t tx_hdr_base_ = 0;    // pool base + kNetHdrSize: a frame's header offset is from here
  uint8_t* ctrl_buf_ = nullptr;  // control command header, data, ack
  uint64_t ctrl_iova_ = 0;

  Queue rx_, tx_, ctrl_;
  bool have_ctrl_ = false;
  bool ctrl_broken_ = false;  // a command went unanswered: the queue's state is unknown
  uint32_t rx_refill_batch_ = 0;

  Pool pool_;  // the buffers: base, IOVA, free stack, caller table
};

}  // namespace vfdrivers::net::virtio_net

#endif  // VFBROKER_VFDRIVERS_NET_VIRTIO_NET_VIRTIO_NET_H_
