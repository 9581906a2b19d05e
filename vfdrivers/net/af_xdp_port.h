// AfXdpPort: net::Port over an AF_XDP socket whose descriptors the port is given (adopted),
// the tenant's half of an xdp_nic grant. The broker (root) creates the socket and its UMEM
// (AfXdpSocket) and attaches the steering program; the tenant, unprivileged, receives the
// socket fd and the UMEM memfd over its session socket and calls Adopt. The socket comes
// unbound (with a bind target: Adopt maps the rings, then binds, the order Linux < 6.4 needs:
// its xsk_mmap refuses the rings of a bound socket) or, from an older broker, already bound
// (works on Linux >= 6.4 only). Nothing here needs a capability: mmap of the rings and of the
// memfd, bind, sendto / recvfrom for wakeups.
//
// Rings (Documentation/networking/af_xdp.rst, "UMEM Fill Ring", "UMEM Completion Ring",
// "RX Ring", "TX Ring"): the port maps the four rings at the offsets XDP_MMAP_OFFSETS reports
// and drives them with libxdp's inline ring-index helpers (<xdp/xsk.h>) on ring structs it
// fills itself; a burst walks a ring's entries in at most two runs that do not wrap (up to the
// ring's end, then from slot 0), with pointers, no call and no index masking per entry. Frames: every UMEM chunk is in exactly one place: the port's free stack, the fill
// ring, the caller's hands, or the TX/completion path; the port tracks that per chunk.
//
// The kernel's ring contents are not trusted: every address and length read from the RX and
// completion rings is checked against the UMEM and against the chunk's state (the kernel must
// only return chunks the port gave it, each once) before anything is dereferenced or handed
// out; a bad descriptor is counted (stats().bad_descriptors) and dropped.
//
// Wakeups ("XDP_USE_NEED_WAKEUP bind flag"): TX calls sendto() only when the kernel set
// XDP_RING_NEED_WAKEUP on the TX ring (every burst if the socket was bound without the flag);
// RX calls recvfrom() when the fill ring carries the flag and nothing was received.
//
// Thread safety: as net::Port, one thread per port.
#ifndef VFBROKER_VFDRIVERS_NET_AF_XDP_PORT_H_
#define VFBROKER_VFDRIVERS_NET_AF_XDP_PORT_H_

#include <xdp/xsk.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/port.h"

namespace vfdrivers::net {

// Where an unbound socket is to be bound: sockaddr_xdp's fields, in the socket's own network
// namespace.
struct AfXdpBindTarget {
  int ifindex = 0;
  uint32_t queue_id = 0;
  uint16_t flags = 0;  // sxdp_flags: XDP_COPY / XDP_ZEROCOPY, XDP_USE_NEED_WAKEUP
};

class AfXdpPort final : public Port {
 public:
  // Adopts an AF_XDP socket and the memfd of its UMEM, set up as `layout` says: bound already
  // (no `bind`), or unbound, then bound to `bind` once the rings are mapped.
  // INVALID_ARGUMENT: bad layout, or the memfd's size is not the layout's UMEM size, or the fd
  // is not an AF_XDP socket. FAILED_PRECONDITION: the memfd is not sealed against shrinking and
  // growing, or the rings were used before (the port must be the rings' only user). Errors of
  // getsockopt / mmap / bind otherwise (a ring size larger than the socket's makes mmap fail;
  // EBUSY from mmap: a bound socket on Linux < 6.4; bind's errors: BindAfXdpSocket).
  static absl::StatusOr<std::unique_ptr<AfXdpPort>> Adopt(
      vfbroker::UniqueFd socket, vfbroker::UniqueFd umem, const AfXdpLayout& layout,
      const std::optional<AfXdpBindTarget>& bind = std::nullopt);

  // For tests that play the kernel: rings and UMEM in caller-owned memory (which must outlive
  // the port), no socket; wakeups are counted but no system call is made.
  struct TestRing {
    uint32_t* producer;
    uint32_t* consumer;
    uint32_t* flags;
    void* descs;  // uint64_t[size] (fill, completion) or xdp_desc[size] (rx, tx)
  };
  struct TestMemory {
    TestRing fill, completion, rx, tx;
    uint8_t* umem;  // layout.umem_bytes()
  };
  static absl::StatusOr<std::unique_ptr<AfXdpPort>> CreateForTesting(const TestMemory& memory,
                                                                     const AfXdpLayout& layout);

  ~AfXdpPort() override;
  AfXdpPort(const AfXdpPort&) = delete;
  AfXdpPort& operator=(const AfXdpPort&) = delete;

  const PortInfo& info() const override { return info_; }
  const PortStats& stats() const override { return stats_; }
  size_t RxBurst(absl::Span<PacketBuffer> out) override;
  size_t TxBurst(absl::Span<const PacketBuffer> pkts) override;
  size_t AllocBurst(absl::Span<PacketBuffer> out) override;
  size_t FreeBurst(absl::Span<const PacketBuffer> bufs) override;
  void Service() override;

  // The kernel's own counters for the socket (XDP_STATISTICS: frames dropped for want of
  // fill buffers or RX ring room, invalid descriptors). A system call: not for the fast path.
  // FAILED_PRECONDITION in test mode.
  absl::StatusOr<xdp_statistics> KernelStatistics() const;

  // The socket, for poll(POLLIN) when the caller wants to sleep instead of spinning.
  int fd() const { return socket_.get(); }
  // Chunks currently in the port's free stack / in the fill ring / sent and not completed.
  uint32_t free_frames() const { return free_top_; }
  uint32_t fill_frames() const { return in_fill_; }
  uint32_t tx_frames() const { return in_tx_; }

 private:
  enum class FrameState : uint8_t { kFree, kFill, kApp, kTx };
  struct Mapping {
    void* base = nullptr;
    size_t length = 0;
  };

  // An RX / TX ring entry (struct xdp_desc) as two 64-bit words: addr, then len in the low and
  // options in the high half (little-endian), so each is one load or store.
  struct DescWords {
    uint64_t addr;
    uint64_t len_options;
  };

  AfXdpPort(const AfXdpLayout& layout);
  void InitRings();
  void Refill();
  void ReclaimCompletions();
  void KickTx();
  void KickRx();
  // The fast path's loops over one run of ring entries that does not wrap (a burst is at most
  // two runs): no call and no index masking inside them.
  PacketBuffer* ReceiveRun(const volatile DescWords* d, uint32_t count, PacketBuffer* out);
  uint32_t TransmitRun(const PacketBuffer* pkts, uint32_t count, DescWords* d);
  uint32_t ReclaimRun(const volatile uint64_t* c, uint32_t count);
  void FillRun(uint64_t* f, uint32_t count, const uint32_t* free_end);

  AfXdpLayout layout_;
  PortInfo info_;
  PortStats stats_;
  vfbroker::UniqueFd socket_;  // invalid in test mode
  vfbroker::UniqueFd umem_fd_;
  std::vector<Mapping> mappings_;  // unmapped on destruction (empty in test mode)

  uint8_t* umem_ = nullptr;
  uint64_t umem_bytes_ = 0;
  uint32_t frame_shift_ = 0;
  uint32_t fill_target_ = 0;

  xsk_ring_prod fill_{};
  xsk_ring_cons completion_{};
  xsk_ring_cons rx_{};
  xsk_ring_prod tx_{};

  std::vector<FrameState> state_;
  std::vector<uint32_t> free_;  // stack of free chunk indices, capacity frame_count
  uint32_t free_top_ = 0;
  uint32_t in_fill_ = 0;
  uint32_t in_tx_ = 0;
};

}  // namespace vfdrivers::net

#endif  // VFBROKER_VFDRIVERS_NET_AF_XDP_PORT_H_
