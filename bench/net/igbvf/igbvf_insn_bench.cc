// igbvf_insn_bench: instruction counts of IgbvfPort's fast path at burst 32 (see BUILD.bazel).
//
// The device model plays the hardware outside the measured windows: it delivers 32 frames
// before each RxBurst and consumes the TX ring after each TxBurst. Callgrind collects only
// inside the driver calls (CALLGRIND_TOGGLE_COLLECT around them), so its "Collected" total is
// the driver's own instructions: descriptor reads and writes, bounds checks, buffer tables,
// refill, reclaim and the batched tail writes.
//   rx:   RxBurst(32) then FreeBurst (only RxBurst measured)
//   tx:   AllocBurst(32) then TxBurst (only TxBurst measured)
//   echo: RxBurst(32) then TxBurst of the same buffers (both measured; per packet = per echo)
#include <valgrind/callgrind.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/igbvf/igbvf_device_model.h"

using vfdrivers::net::PacketBuffer;
using vfdrivers::net::igbvf::IgbvfPort;
using vfdrivers::net::igbvf::Options;
using vfdrivers::net::igbvf::testing::IgbvfDeviceModel;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "echo";
  const int iters = argc > 2 ? std::atoi(argv[2]) : 2000;
  // Compared once here, not between the toggles: a string compare inside the measured window
  // would be counted as the driver's.
  const bool rx_mode = mode == "rx", echo_mode = mode == "echo";
  constexpr uint32_t kBurst = IgbvfPort::kBurst;
  IgbvfDeviceModel model;
  Options o;
  o.huge_pages = vfdrivers::memory::HugePages::kNever;
  auto port_or = IgbvfPort::Create(model.MakeBar(), o);
  if (!port_or.ok()) {
    std::fprintf(stderr, "%s\n", port_or.status().ToString().c_str());
    return 1;
  }
  IgbvfPort& port = **port_or;
  uint8_t frame[64] = {};
  std::memset(frame, 0xab, sizeof frame);
  PacketBuffer bufs[kBurst];
  uint64_t packets = 0;
  for (int it = 0; it < iters + 50; ++it) {
    const bool measure = it >= 50;  // warm-up rounds first
    size_t n = 0;
    if (rx_mode || echo_mode) {
      for (uint32_t i = 0; i < kBurst; ++i) model.Deliver(frame, sizeof frame);
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
    model.Step();
    model.sent().clear();
    if (measure) packets += n;
  }
  std::printf("igbvf_insn_bench %s: %llu packets in bursts of %u; bad_descriptors %llu\n",
              mode.c_str(), static_cast<unsigned long long>(packets), kBurst,
              static_cast<unsigned long long>(port.stats().bad_descriptors));
  return 0;
}
