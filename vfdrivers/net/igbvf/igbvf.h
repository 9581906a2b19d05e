// IgbvfPort: a polling driver for an Intel 82576 virtual function (8086:10ca), as net::Port.
//
// ixy-style: one driver file (igbvf.cc) talks straight to the VF's registers; each hardware
// step cites the Intel 82576EB datasheet section it follows. Register offsets, descriptor
// layouts and the mailbox message ids are facts shared with Linux igbvf / DPDK's e1000 VF code.
//
// What Create does, in order:
//   1. VF reset: VTCTRL.RST, then wait (bounded) for the mailbox's RSTD; RSTI still set at the
//      deadline (PF resetting) is an error, neither bit is not (RSTD is read-to-clear, see .cc).
//   2. Mailbox (VFMAILBOX + VMBMEM, §7.8.2): send VF_RESET and wait for the PF's reply,
//      RESET|ACK + the permanent MAC (RESET|NACK: the PF has no MAC for this VF: refused).
//      Every mailbox step has a timeout; garbage replies are FAILED_PRECONDITION naming the words.
//   3. One RX queue (advanced one-buffer descriptors, §7.1.5; SRRCTL, RXDCTL) and one TX queue
//      (advanced data descriptors, §7.2.2; TXDCTL; head write-back to memory, TDWBAL/H) in one
//      DMA-mapped region that also holds every packet buffer: mapped once, unmapped at the end.
//   4. Optionally waits for link up (VFSTATUS.LU).
//
// Fast path (no interrupts; counts, no allocation): RxBurst reaps descriptors with DD set, in
// order, and refills with one RDT write per burst; TxBurst writes one descriptor per frame and
// one TDT write per burst, RS on the last; completions come from the head the device writes to
// memory. Nothing the device writes is trusted: a write-back is only looked at in a slot the
// driver gave it, its length must fit the buffer and EOP must be set, the TX head must lie in
// the ring and between the last reclaimed slot and the tail. A bad descriptor is counted
// (stats().bad_descriptors) and its buffer goes back to the device or the pool, never to the
// caller; buffers are found from the driver's own slot tables, never from device addresses.
//
// Thread safety: as net::Port, one thread per port. Setup calls (mailbox) on that thread too.
#ifndef VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_H_
#define VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "vfdrivers/memory/memory_region.h"
#include "vfdrivers/net/buffer_pool.h"
#include "vfdrivers/net/intel_vf/mailbox.h"
#include "vfdrivers/net/port.h"
#include "vfdrivers/vfio/mmio_region.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfdrivers::net::igbvf {

// ---- 82576 VF registers (BAR0, 16 KiB; datasheet §8, "virtual function register map") -------
inline constexpr uint32_t kCtrl = 0x0000;     // VTCTRL
inline constexpr uint32_t kStatus = 0x0008;   // VTSTATUS
inline constexpr uint32_t kEimc = 0x1528;     // VTEIMC: interrupt mask clear
inline constexpr uint32_t kMailbox = 0x0C40;  // VFMAILBOX (V2PMAILBOX)
inline constexpr uint32_t kMbmem = 0x0800;    // VMBMEM: 16 dwords shared with the PF
inline constexpr uint32_t kRdbal = 0x2800, kRdbah = 0x2804, kRdlen = 0x2808, kSrrctl = 0x280C,
                          kRdh = 0x2810, kRdt = 0x2818, kRxdctl = 0x2828;
inline constexpr uint32_t kTdbal = 0x3800, kTdbah = 0x3804, kTdlen = 0x3808, kTdh = 0x3810,
                          kTdt = 0x3818, kTxdctl = 0x3828, kTdwbal = 0x3838, kTdwbah = 0x383C;
inline constexpr uint32_t kBarSize = 0x4000;

inline constexpr uint32_t kCtrlRst = 1u << 26;   // VTCTRL.RST
inline constexpr uint32_t kStatusLu = 1u << 1;   // VTSTATUS.LU

// The mailbox (VFMAILBOX bits, message ids, ACK/NACK/CTS; §7.8.2) is the same protocol on the
// 82599: intel_vf/mailbox.h has it. Here only where it lives in this BAR (kMailbox, kMbmem).

// SRRCTL / RXDCTL / TXDCTL fields (§8, receive and transmit queue registers).
inline constexpr uint32_t kSrrctlBsizeShift = 10;           // BSIZEPKT in 1 KiB units, bits 6:0
inline constexpr uint32_t kSrrctlDescAdvOneBuf = 1u << 25;  // DESCTYPE = 001b
inline constexpr uint32_t kSrrctlDropEn = 1u << 31;
inline constexpr uint32_t kQueueEnable = 1u << 25;          // RXDCTL / TXDCTL.ENABLE
inline constexpr uint32_t kTdwbalEnable = 1u << 0;          // TDWBAL.Head_WB_En

// Advanced receive descriptor (§7.1.5): read format (driver writes) / write-back (device).
struct RxDesc {
  uint64_t pkt_addr;  // read: buffer IOVA | write-back: packet type, RSS
  uint64_t hdr_addr;  // read: 0 (no header split) | write-back: status/error(32) length(16) vlan(16)
};
static_assert(sizeof(RxDesc) == 16);
inline constexpr uint32_t kRxStatDd = 1u << 0, kRxStatEop = 1u << 1;
// Errors in STATUS/ERROR bits 31:20 of the write-back (CE, SE, SEQ, CXE, RXE; not checksums).
inline constexpr uint32_t kRxErrFrame = 0x97000000u;

// Advanced transmit data descriptor (§7.2.2).
struct TxDesc {
  uint64_t addr;
  uint32_t cmd_type_len;  // DTALEN 15:0, DTYP 23:20 = 0011b, DCMD 31:24
  uint32_t olinfo_status; // PAYLEN 31:14; write-back STA.DD bit 0 (unused: head write-back)
};
static_assert(sizeof(TxDesc) == 16);
inline constexpr uint32_t kTxDtypData = 0x3u << 20;
inline constexpr uint32_t kTxCmdEop = 1u << 24, kTxCmdIfcs = 1u << 25, kTxCmdRs = 1u << 27,
                          kTxCmdDext = 1u << 29;
inline constexpr uint32_t kTxPaylenShift = 14;

// BAR0 + DMA, so the same driver runs over VFIO and over the register-level model
// (igbvf_device_model.h); shared with ixgbevf (intel_vf/mailbox.h).
using Bar = intel_vf::Bar;
using MacAddress = intel_vf::MacAddress;

// Over VFIO: BAR0 (at least kBarSize) through MmioRegion, bus mastering on. The device must
// outlive the Bar.
absl::StatusOr<std::unique_ptr<Bar>> OpenVfioBar(vfio::VfioDevice* device);

struct Options {
  uint32_t rx_ring_size = 512;  // multiple of 8 (RDLEN/TDLEN: multiples of 128 bytes), 8..4096
  uint32_t tx_ring_size = 512;
  uint32_t buffer_count = 2048; // > rx_ring_size: the rest is for the caller and TX
  memory::HugePages huge_pages = memory::HugePages::kPrefer;
  absl::Duration reset_timeout = absl::Milliseconds(50);     // VTCTRL.RST -> RSTD
  absl::Duration mailbox_timeout = absl::Milliseconds(2000); // each mailbox step
  absl::Duration link_timeout = absl::Seconds(0);            // 0: do not wait for VFSTATUS.LU
};

// Driver counters beyond net::PortStats.
struct IgbvfStats {
  uint64_t rx_frame_errors = 0;  // frames the device flagged bad (CRC, symbol, ...): dropped
  uint64_t bad_rx_length = 0;    // of stats().bad_descriptors: length 0 or beyond the buffer
  uint64_t bad_rx_no_eop = 0;    // ... a frame spanning buffers (never posted: 2 KiB buffers)
  uint64_t bad_tx_head = 0;      // ... TX head outside the ring or outside the slots in flight
  uint64_t mailbox_messages = 0;
  uint64_t reset_without_rstd = 0;  // VF resets that saw no RSTD within reset_timeout
};

class IgbvfPort final : public Port {
 public:
  static constexpr uint32_t kBufferSize = 2048;  // SRRCTL.BSIZEPKT = 2 KiB
  static constexpr uint32_t kBurst = 32;

  // Resets the VF, gets its MAC from the PF, sets up the queues. DEADLINE_EXCEEDED when the
  // reset or a mailbox step times out, FAILED_PRECONDITION for a reply that makes no sense or a
  // NACK, INVALID_ARGUMENT for bad options; MapDma's errors otherwise.
  static absl::StatusOr<std::unique_ptr<IgbvfPort>> Create(std::unique_ptr<Bar> bar,
                                                           const Options& options = {});
  static absl::StatusOr<std::unique_ptr<IgbvfPort>> Open(vfio::VfioDevice* device,
                                                         const Options& options = {});
  // Disables both queues, resets the VF (stops its DMA), then unmaps the region.
  ~IgbvfPort() override;
  IgbvfPort(const IgbvfPort&) = delete;
  IgbvfPort& operator=(const IgbvfPort&) = delete;

  const PortInfo& info() const override { return info_; }
  const PortStats& stats() const override { return stats_; }
  const IgbvfStats& igbvf_stats() const { return xstats_; }
  size_t RxBurst(absl::Span<PacketBuffer> out) override;
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override;
  size_t AllocBurst(absl::Span<PacketBuffer> out) override;
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override;
  void Service() override;

  // The MAC the PF gave at reset (the VF's permanent address).
  const MacAddress& mac() const { return mac_; }
  bool LinkUp();
  absl::Status WaitForLink(absl::Duration timeout);

  // Mailbox requests to the PF (§7.8.2). FAILED_PRECONDITION on NACK (e.g. the PF set the MAC
  // administratively and does not trust this VF), DEADLINE_EXCEEDED on timeout.
  absl::Status SetMac(const MacAddress& mac);
  // Up to 30 multicast addresses (the PF hashes them into its MTA).
  absl::Status SetMulticast(absl::Span<const MacAddress> addrs);
  absl::Status SetVlan(uint16_t vid, bool add);
  absl::Status SetMaxFrame(uint32_t bytes);  // SET_LPE

  // Buffers by state, for tests: device-owned RX, in flight TX, in the free stack.
  uint32_t rx_posted() const { return rx_posted_; }
  uint32_t tx_in_flight() const { return tx_in_flight_; }
  uint32_t free_buffers() const { return pool_.free_count(); }

 private:
  // Buffer ids, free stack and "held by the caller" table (see buffer_pool.h).
  using Pool = BufferPool<kBufferSize>;
  IgbvfPort(std::unique_ptr<Bar> bar, const Options& options);
  absl::Status Init();
  absl::Status ResetVf();
  absl::Status SetupQueues();
  void StopDevice();
  void Refill();
  void ReclaimTx();
  template <bool kRefill>
  uint32_t Reap(PacketBuffer** out, uint32_t from, uint32_t count);
  uint32_t Fill(const PacketBuffer* p, uint32_t from, uint32_t count);

  std::unique_ptr<Bar> bar_;
  Options options_;
  PortInfo info_;
  PortStats stats_;
  IgbvfStats xstats_;
  MacAddress mac_;
  intel_vf::Mailbox mbx_;  // VFMAILBOX + VMBMEM; counts into xstats_.mailbox_messages

  memory::MemoryRegion region_;
  uint64_t iova_ = 0;
  bool mapped_ = false;
  bool queues_on_ = false;
  RxDesc* rx_ring_ = nullptr;
  TxDesc* tx_ring_ = nullptr;
  volatile uint32_t* tx_head_wb_ = nullptr;
  volatile uint32_t* rdt_ = nullptr;
  volatile uint32_t* tdt_ = nullptr;

  uint32_t rx_mask_ = 0, tx_mask_ = 0;
  uint32_t rx_next_ = 0;       // next slot to reap
  uint32_t rx_tail_ = 0;       // next slot to post (RDT)
  uint32_t rx_posted_ = 0;
  uint32_t tx_clean_ = 0;      // oldest slot in flight
  uint32_t tx_tail_ = 0;       // next slot to fill (TDT)
  uint32_t tx_in_flight_ = 0;
  std::vector<uint32_t> rx_slot_;  // slot -> buffer index
  std::vector<uint32_t> tx_slot_;
  Pool pool_;  // the buffers: base, IOVA, free stack, caller table
};

}  // namespace vfdrivers::net::igbvf

#endif  // VFBROKER_VFDRIVERS_NET_IGBVF_IGBVF_H_
