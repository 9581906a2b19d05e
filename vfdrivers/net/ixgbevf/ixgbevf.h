// IxgbevfPort: a polling driver for an Intel 82599 virtual function (8086:10ed), as net::Port.
//
// NOT YET RUN ON HARDWARE. QEMU has no 82599 model, so this driver has only met the
// register-level model in ixgbevf_device_model.{h,cc} (written from the datasheet) and its
// hostile modes. Treat it as untested against silicon until a real 82599 VF has run it.
//
// ixy-style: one driver file (ixgbevf.cc) talks straight to the VF's registers; each hardware
// step cites the Intel 82599 10 GbE Controller datasheet section it follows (§8.3 VF registers,
// §7.1.6 advanced RX descriptors, §7.2.3 advanced TX descriptors, §7.9 / §8.3.5 VF mailbox).
// Register offsets, descriptor layouts and mailbox message ids are facts shared with Linux
// ixgbevf, DPDK's ixgbe VF code and ixy; the code is our own.
//
// What Create does, in order:
//   1. Mask interrupts (VTEIMC), VF reset (VFCTRL.RST), wait (bounded) for VFMAILBOX.RSTD;
//      RSTI still set at the deadline (the PF is resetting) is DEADLINE_EXCEEDED.
//   2. Mailbox (VFMAILBOX + VFMBMEM): RESET -> RESET|ACK with the permanent MAC (words 1-2) and
//      the multicast filter type (word 3); RESET|NACK (no MAC on the PF) is refused. Then
//      API_NEGOTIATE, 1.2 -> 1.1 -> 1.0, first ACK wins (all NACKed: FAILED_PRECONDITION).
//   3. One RX queue (SRRCTL: 2 KiB, advanced one-buffer, DROP_EN; VFRXDCTL.ENABLE polled until
//      it reads back set) and one TX queue (head write-back, VFTDWBAL/H; VFTXDCTL.ENABLE
//      polled) in one DMA region with all packet buffers: mapped once, unmapped at the end.
//   4. Optionally waits for VFLINKS.LINK_UP.
//
// Fast path (polling, counts, no allocation): RxBurst reaps DD descriptors in order and puts a
// fresh buffer into each reaped slot in the same loop; the tail (VFRDT) moves once per >= 32
// slots. TxBurst writes one descriptor per frame, RS on the last, one VFTDT write per burst;
// completions come from the head the device writes back; reclaim copies the finished slots'
// buffer ids to the free stack in at most two block copies. Nothing the device writes is
// trusted: a write-back is only read in a slot the device owns, length 1..2048 and EOP are
// required, the written-back TX head must be inside the ring and inside the slots in flight.
// Buffers are found from the driver's own slot tables, never from device-written addresses.
//
// Thread safety: as net::Port, one thread per port; mailbox calls on that thread too.
#ifndef VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_H_
#define VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_H_

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
#include "vfdrivers/net/intel_vf/mailbox.h"  // Bar seam, MacAddress, PF mailbox (shared)
#include "vfdrivers/net/port.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfdrivers::net::ixgbevf {

// The register/DMA seam is shared with igbvf (intel_vf/mailbox.h), as is the mailbox protocol.
using Bar = intel_vf::Bar;
using MacAddress = intel_vf::MacAddress;

// ---- 82599 VF registers (BAR0, 16 KiB; §8.3 "virtual function registers") ----------------
inline constexpr uint32_t kVfCtrl = 0x0000;     // VFCTRL
inline constexpr uint32_t kVfStatus = 0x0008;   // VFSTATUS
inline constexpr uint32_t kVfLinks = 0x0010;    // VFLINKS
inline constexpr uint32_t kVtEimc = 0x010C;     // VTEIMC: interrupt mask clear
inline constexpr uint32_t kVfMbmem = 0x0200;    // VFMBMEM: 16 dwords shared with the PF
inline constexpr uint32_t kVfMailbox = 0x02FC;  // VFMAILBOX
inline constexpr uint32_t kVfPsrtype = 0x0300;  // VFPSRTYPE
// Queue 0 of the VF (queue n adds 0x40 * n).
inline constexpr uint32_t kVfRdbal = 0x1000, kVfRdbah = 0x1004, kVfRdlen = 0x1008,
                          kVfRdh = 0x1010, kVfSrrctl = 0x1014, kVfRdt = 0x1018,
                          kVfRxdctl = 0x1028;
inline constexpr uint32_t kVfTdbal = 0x2000, kVfTdbah = 0x2004, kVfTdlen = 0x2008,
                          kVfTdh = 0x2010, kVfTdt = 0x2018, kVfTxdctl = 0x2028,
                          kVfTdwbal = 0x2038, kVfTdwbah = 0x203C;
inline constexpr uint32_t kVfBarSize = 0x4000;

inline constexpr uint32_t kVfCtrlRst = 1u << 26;       // VFCTRL.RST
inline constexpr uint32_t kVfLinksUp = 1u << 30;       // VFLINKS.LINK_UP
inline constexpr uint32_t kDctlEnable = 1u << 25;      // VFRXDCTL / VFTXDCTL.ENABLE
inline constexpr uint32_t kSrrctlBsizeKb = 0x1F;       // BSIZEPACKET, 1 KiB units, bits 4:0
inline constexpr uint32_t kSrrctlAdvOneBuf = 1u << 25; // DESCTYPE 27:25 = 001b
inline constexpr uint32_t kSrrctlDropEn = 1u << 28;    // DROP_EN
inline constexpr uint32_t kTdwbalHeadWbEn = 1u << 0;   // VFTDWBAL.Head_WB_En

// VFMAILBOX bits and message word 0 (§7.9, §8.3.5): the 82576's protocol, in intel_vf/mailbox.h.
// The ids the 82576's PF does not know:
inline constexpr uint32_t kVfApiNegotiate = 0x08;
inline constexpr uint32_t kResetReplyWords = 4;  // RESET|ACK, MAC (2 words), MC filter type
// Mailbox API revisions (the PF's enum: 1.0 = 0, 2.0 = 1, 1.1 = 2, 1.2 = 3).
inline constexpr uint32_t kApi10 = 0, kApi11 = 2, kApi12 = 3;

// Advanced receive descriptor (§7.1.6): read format / write-back format.
struct RxDesc {
  uint64_t pkt_addr;  // read: buffer address | write-back: RSS type, packet type, RSS hash
  uint64_t hdr_addr;  // read: 0 | write-back: extended status 19:0, extended error 31:20,
                      //                       PKT_LEN 47:32, VLAN 63:48
};
static_assert(sizeof(RxDesc) == 16);
inline constexpr uint32_t kRxDd = 1u << 0, kRxEop = 1u << 1;
inline constexpr uint32_t kRxErrRxe = 1u << 29;  // extended error RXE: a MAC error (CRC, length..)

// Advanced transmit data descriptor (§7.2.3.2.4).
struct TxDesc {
  uint64_t addr;
  uint32_t cmd_type_len;   // DTALEN 15:0, DTYP 23:20 = 0011b, DCMD 31:24
  uint32_t olinfo_status;  // PAYLEN 31:14; STA.DD bit 0 (not used: head write-back)
};
static_assert(sizeof(TxDesc) == 16);
inline constexpr uint32_t kTxDtypData = 0x3u << 20;
inline constexpr uint32_t kTxEop = 1u << 24, kTxIfcs = 1u << 25, kTxRs = 1u << 27,
                          kTxDext = 1u << 29;
inline constexpr uint32_t kTxPaylenShift = 14;

struct Options {
  uint32_t rx_ring_size = 512;   // power of two, 8..4096 (RDLEN: multiple of 128 bytes)
  uint32_t tx_ring_size = 512;
  uint32_t buffer_count = 2048;  // > rx_ring_size
  memory::HugePages huge_pages = memory::HugePages::kPrefer;
  absl::Duration reset_timeout = absl::Milliseconds(50);      // VFCTRL.RST -> RSTD
  absl::Duration mailbox_timeout = absl::Milliseconds(2000);  // each mailbox step
  absl::Duration enable_timeout = absl::Milliseconds(50);     // RXDCTL/TXDCTL.ENABLE read-back
  absl::Duration link_timeout = absl::Seconds(0);             // 0: do not wait for LINK_UP
};

struct IxgbevfStats {
  uint64_t rx_frame_errors = 0;  // RXE set: the wire damaged it (not hostility); dropped
  uint64_t bad_rx_length = 0;    // of stats().bad_descriptors: length 0 or beyond the buffer
  uint64_t bad_rx_no_eop = 0;    // ... no EOP (a frame over buffers: never configured)
  uint64_t bad_tx_head = 0;      // ... TX head outside the ring or past the slots in flight
  uint64_t mailbox_messages = 0;
  uint64_t reset_without_rstd = 0;
  uint64_t rx_tail_writes = 0;   // VFRDT writes (batched)
};

class IxgbevfPort final : public Port {
 public:
  static constexpr uint32_t kBufferSize = 2048;
  static constexpr uint32_t kBurst = 32;

  // DEADLINE_EXCEEDED: reset, a mailbox step or a queue enable timed out; FAILED_PRECONDITION:
  // a NACK or a reply that makes no sense (named in the message); INVALID_ARGUMENT: options.
  static absl::StatusOr<std::unique_ptr<IxgbevfPort>> Create(std::unique_ptr<Bar> bar,
                                                             const Options& options = {});
  // Over VFIO (BAR0 through intel_vf::OpenVfioBar: 16 KiB BAR, bus mastering on).
  static absl::StatusOr<std::unique_ptr<IxgbevfPort>> Open(vfio::VfioDevice* device,
                                                           const Options& options = {});
  ~IxgbevfPort() override;  // queues off, VFCTRL.RST, then unmap
  IxgbevfPort(const IxgbevfPort&) = delete;
  IxgbevfPort& operator=(const IxgbevfPort&) = delete;

  const PortInfo& info() const override { return info_; }
  const PortStats& stats() const override { return stats_; }
  const IxgbevfStats& ixgbevf_stats() const { return xstats_; }
  size_t RxBurst(absl::Span<PacketBuffer> out) override;
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override;
  size_t AllocBurst(absl::Span<PacketBuffer> out) override;
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override;
  void Service() override;

  const MacAddress& mac() const { return mac_; }
  uint32_t mc_filter_type() const { return mc_filter_type_; }  // from RESET|ACK word 3
  uint32_t api_version() const { return api_; }               // negotiated (kApi1x)
  bool LinkUp();
  absl::Status WaitForLink(absl::Duration timeout);

  // Mailbox requests (§7.9): FAILED_PRECONDITION on NACK, DEADLINE_EXCEEDED on timeout.
  absl::Status SetMac(const MacAddress& mac);
  absl::Status SetMulticast(absl::Span<const MacAddress> addrs);  // <= 30, hashed per filter type
  absl::Status SetVlan(uint16_t vid, bool add);
  absl::Status SetMaxFrame(uint32_t bytes);  // SET_LPE

  // For tests: buffers held by the RX ring (device-owned + filled but not yet given), in flight
  // on TX, in the free stack.
  uint32_t rx_held() const { return rx_posted_ + rx_filled_; }
  uint32_t rx_posted() const { return rx_posted_; }
  uint32_t tx_in_flight() const { return tx_in_flight_; }
  uint32_t free_buffers() const { return pool_.free_count(); }

 private:
  // Buffer ids, free stack and "held by the caller" table (see buffer_pool.h).
  using Pool = BufferPool<kBufferSize>;
  IxgbevfPort(std::unique_ptr<Bar> bar, const Options& options);
  absl::Status Init();
  absl::Status Reset();
  absl::Status NegotiateApi();
  absl::Status SetupRings();
  absl::Status EnableQueue(uint32_t reg, uint32_t value, const char* name);
  void Stop();

  template <bool kRefill>
  uint32_t Reap(PacketBuffer** out, uint32_t from, uint32_t count);
  void Refill();
  void GiveRx(bool force);
  void ReclaimTx();
  uint32_t Fill(const PacketBuffer* pkts, uint32_t from, uint32_t count);

  std::unique_ptr<Bar> bar_;
  Options options_;
  PortInfo info_;
  PortStats stats_;
  IxgbevfStats xstats_;
  MacAddress mac_;
  uint32_t mc_filter_type_ = 0;
  uint32_t api_ = kApi10;
  intel_vf::Mailbox mbx_;  // VFMAILBOX + VFMBMEM; counts into xstats_.mailbox_messages

  memory::MemoryRegion region_;
  uint64_t iova_ = 0;
  bool mapped_ = false;
  bool running_ = false;
  RxDesc* rx_ring_ = nullptr;
  TxDesc* tx_ring_ = nullptr;
  volatile uint32_t* tx_head_ = nullptr;  // head write-back dword
  volatile uint32_t* rdt_ = nullptr;
  volatile uint32_t* tdt_ = nullptr;

  // RX ring: device owns [rx_next_, rx_tail_) (rx_posted_ slots); [rx_tail_, +rx_filled_) hold
  // buffers with read-format descriptors not yet given; the rest up to rx_next_ are empty.
  uint32_t rx_mask_ = 0, rx_next_ = 0, rx_tail_ = 0, rx_posted_ = 0, rx_filled_ = 0;
  uint32_t rx_give_batch_ = 0;
  // TX ring: [tx_clean_, tx_tail_) in flight.
  uint32_t tx_mask_ = 0, tx_clean_ = 0, tx_tail_ = 0, tx_in_flight_ = 0;
  std::vector<uint32_t> rx_slot_, tx_slot_;  // slot -> buffer id
  Pool pool_;  // the buffers: base, IOVA, free stack, caller table
};

}  // namespace vfdrivers::net::ixgbevf

#endif  // VFBROKER_VFDRIVERS_NET_IXGBEVF_IXGBEVF_H_
