// af_xdp_insn_bench: instruction counts of AfXdpPort's fast path at burst 32 (see BUILD.bazel),
// the same method as bench/net/igbvf and bench/net/ixgbevf, so the three sit in one table.
//
// The port runs over rings and a UMEM in plain memory (AfXdpPort::CreateForTesting, its public
// test constructor); this program plays the kernel outside the measured windows, the way copy
// mode does on veth: it takes 32 chunks from the fill ring, copies a 64-byte frame into each at
// XDP_PACKET_HEADROOM and posts them on the RX ring before each RxBurst; after each TxBurst it
// consumes the TX ring and posts every address on the completion ring. Callgrind collects only
// inside the port's calls (CALLGRIND_TOGGLE_COLLECT around them), so "Collected" is the port's
// own user-space work: ring index loads and stores, descriptor checks against the UMEM and the
// per-chunk state, fill-ring refill, completion reclaim, the need-wakeup test.
//
// Not counted, by construction: the kernel's side (the copy into the UMEM, the XDP program, the
// sendto() that copy mode needs on every transmitted burst). The TX ring's NEED_WAKEUP flag is
// set as copy-mode veth sets it, so TxBurst takes its wakeup branch; in test mode that branch
// counts the wakeup and makes no system call (on a real socket it would add the glibc sendto()
// wrapper, ~10 user-space instructions per burst, and the kernel's transmit).
//   rx:   RxBurst(32) then FreeBurst (only RxBurst measured; it refills the fill ring)
//   tx:   AllocBurst(32) then TxBurst (only TxBurst measured; it reclaims completions)
//   echo: RxBurst(32) then TxBurst of the same buffers (both measured; per packet = per echo)
//   af_xdp_insn_bench MODE [ITERATIONS=2000] [--no_tx_wakeup: a zero-copy driver that does not
//   ask for a kick while busy]
#include <linux/if_xdp.h>
#include <valgrind/callgrind.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/af_xdp_port.h"

using vfdrivers::net::AfXdpLayout;
using vfdrivers::net::AfXdpPort;
using vfdrivers::net::kXdpPacketHeadroom;
using vfdrivers::net::PacketBuffer;

namespace {

// One ring as the kernel lays it out: producer, consumer, flags, descriptors.
struct MemoryRing {
  uint32_t producer = 0;
  uint32_t consumer = 0;
  uint32_t flags = 0;
  uint32_t mask;
  std::vector<uint8_t> descs;
  MemoryRing(uint32_t size, size_t entry) : mask(size - 1), descs(size * entry) {}
  AfXdpPort::TestRing View() { return {&producer, &consumer, &flags, descs.data()}; }
  uint64_t& Addr(uint32_t i) { return reinterpret_cast<uint64_t*>(descs.data())[i & mask]; }
  xdp_desc& Desc(uint32_t i) { return reinterpret_cast<xdp_desc*>(descs.data())[i & mask]; }
};

// The kernel's half in copy mode, run between the measured calls.
class MemoryKernel {
 public:
  explicit MemoryKernel(const AfXdpLayout& l)
      : fill_(l.fill_size, 8), completion_(l.completion_size, 8),
        rx_(l.rx_size, sizeof(xdp_desc)), tx_(l.tx_size, sizeof(xdp_desc)),
        umem_(l.umem_bytes()), headroom_(l.frame_headroom) {}

  AfXdpPort::TestMemory Memory() {
    return {fill_.View(), completion_.View(), rx_.View(), tx_.View(), umem_.data()};
  }
  void SetTxNeedWakeup(bool on) { tx_.flags = on ? XDP_RING_NEED_WAKEUP : 0; }

  // Receives `count` copies of `frame` into chunks from the fill ring; returns how many.
  uint32_t Deliver(const uint8_t* frame, uint32_t length, uint32_t count) {
    uint32_t n = 0;
    for (; n < count && fill_.consumer != fill_.producer; ++n) {
      const uint64_t addr = fill_.Addr(fill_.consumer++) + headroom_ + kXdpPacketHeadroom;
      std::memcpy(umem_.data() + addr, frame, length);
      rx_.Desc(rx_.producer++) = xdp_desc{addr, length, 0};
    }
    return n;
  }
  // Sends everything on the TX ring and completes it.
  uint32_t SendAll() {
    uint32_t n = 0;
    for (; tx_.consumer != tx_.producer; ++n) {
      completion_.Addr(completion_.producer++) = tx_.Desc(tx_.consumer++).addr;
    }
    return n;
  }

 private:
  MemoryRing fill_, completion_, rx_, tx_;
  std::vector<uint8_t> umem_;
  uint32_t headroom_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "echo";
  const int iters = argc > 2 && argv[2][0] != '-' ? std::atoi(argv[2]) : 2000;
  bool tx_wakeup = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no_tx_wakeup") == 0) tx_wakeup = false;
  }
  if (mode != "rx" && mode != "tx" && mode != "echo") {
    std::fprintf(stderr, "usage: af_xdp_insn_bench rx|tx|echo [ITERATIONS] [--no_tx_wakeup]\n");
    return 2;
  }
  // Compared once here, not between the toggles (it would be counted as the port's).
  const bool rx_mode = mode == "rx", echo_mode = mode == "echo";
  constexpr uint32_t kBurst = 32;
  // udp_echo --self_provision's defaults: 4096 chunks of 2 KiB, rings of 2048.
  AfXdpLayout layout;
  layout.frame_size = 2048;
  layout.frame_count = 4096;
  layout.fill_size = layout.completion_size = layout.rx_size = layout.tx_size = 2048;
  layout.need_wakeup = true;
  MemoryKernel kernel(layout);
  kernel.SetTxNeedWakeup(tx_wakeup);
  auto port_or = AfXdpPort::CreateForTesting(kernel.Memory(), layout);
  if (!port_or.ok()) {
    std::fprintf(stderr, "%s\n", port_or.status().ToString().c_str());
    return 1;
  }
  AfXdpPort& port = **port_or;
  uint8_t frame[64];
  std::memset(frame, 0xab, sizeof frame);
  PacketBuffer bufs[kBurst];
  uint64_t packets = 0;
  for (int it = 0; it < iters + 50; ++it) {
    const bool measure = it >= 50;  // warm-up rounds first
    size_t n = 0;
    if (rx_mode || echo_mode) {
      if (kernel.Deliver(frame, sizeof frame, kBurst) != kBurst) {
        std::fprintf(stderr, "fill ring ran dry at iteration %d\n", it);
        return 2;
      }
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      n = port.RxBurst(bufs);
      if (measure && rx_mode) CALLGRIND_TOGGLE_COLLECT;
      if (rx_mode) {
        port.FreeBurst(absl::MakeConstSpan(bufs, n));
      } else {
        size_t s = port.TxBurst(absl::MakeConstSpan(bufs, n));
        if (measure) CALLGRIND_TOGGLE_COLLECT;
        if (s != n) return 3;
      }
    } else {
      n = port.AllocBurst(bufs);
      for (size_t i = 0; i < n; ++i) bufs[i].length = 64;
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      size_t s = port.TxBurst(absl::MakeConstSpan(bufs, n));
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      if (s != n) return 3;
    }
    if (n != kBurst) {
      std::fprintf(stderr, "burst of %zu at iteration %d\n", n, it);
      return 2;
    }
    kernel.SendAll();
    if (measure) packets += n;
  }
  const auto& st = port.stats();
  std::printf("af_xdp_insn_bench %s: %llu packets in bursts of %u; bad_descriptors %llu, "
              "wakeups %llu (tx need_wakeup %s)\n",
              mode.c_str(), static_cast<unsigned long long>(packets), kBurst,
              static_cast<unsigned long long>(st.bad_descriptors),
              static_cast<unsigned long long>(st.wakeups), tx_wakeup ? "set" : "clear");
  return st.bad_descriptors == 0 ? 0 : 4;
}
