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
// The loop, the measured windows and the result line are bench/net/insn_bench_lib.h's
// (rx: RxBurst measured, it refills the fill ring; tx: TxBurst measured, it reclaims
// completions; echo: both).
//   af_xdp_insn_bench MODE [ITERATIONS=2000] [--no_tx_wakeup: a zero-copy driver that does not
//   ask for a kick while busy]
#include <linux/if_xdp.h>
#include <valgrind/callgrind.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "bench/net/insn_bench_lib.h"
#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/af_xdp_port.h"

using vfdrivers::net::AfXdpLayout;
using vfdrivers::net::AfXdpPort;
using vfdrivers::net::kXdpPacketHeadroom;

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

// The kernel's half as the bench's device.
class KernelDevice final : public vfbroker::bench::InsnBenchDevice {
 public:
  explicit KernelDevice(MemoryKernel* kernel) : kernel_(kernel) {}
  bool Deliver(const uint8_t* frame, uint32_t length, uint32_t count) override {
    return kernel_->Deliver(frame, length, count) == count;  // false: the fill ring ran dry
  }
  void Complete() override { kernel_->SendAll(); }

 private:
  MemoryKernel* kernel_;
};

}  // namespace

int main(int argc, char** argv) {
  const std::optional<vfbroker::bench::InsnBenchArgs> args =
      vfbroker::bench::ParseInsnBenchArgs(argc, argv);
  if (!args) return 2;
  bool tx_wakeup = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no_tx_wakeup") == 0) tx_wakeup = false;
  }
  // udp_echo --self_provision's defaults: 4096 chunks of 2 KiB, rings of 2048.
  AfXdpLayout layout;
  layout.frame_size = 2048;
  layout.frame_count = 4096;
  layout.fill_size = layout.completion_size = layout.rx_size = layout.tx_size = 2048;
  layout.need_wakeup = true;
  MemoryKernel kernel(layout);
  kernel.SetTxNeedWakeup(tx_wakeup);
  auto port = AfXdpPort::CreateForTesting(kernel.Memory(), layout);
  if (!port.ok()) {
    std::fprintf(stderr, "%s\n", port.status().ToString().c_str());
    return 1;
  }
  KernelDevice device(&kernel);
  const AfXdpPort& p = **port;
  return vfbroker::bench::RunInsnBench(
      "af_xdp_insn_bench", *args, **port, device, /*burst=*/32, [&p, tx_wakeup] {
        return absl::StrCat("wakeups ", p.stats().wakeups, " (tx need_wakeup ",
                            tx_wakeup ? "set" : "clear", ")");
      });
}
