// virtio_net_insn_bench: instruction counts of VirtioNetPort's fast path at burst 32
// (BUILD.bazel).
//
// The model plays the device outside the measured windows: it delivers 32 frames before each
// RxBurst and consumes the transmit queue after each TxBurst. Callgrind collects only inside the
// driver calls (CALLGRIND_TOGGLE_COLLECT right around them; the mode is decided before the loop
// so no harness code runs inside a window), so "Collected" is the driver's own work: used-ring
// reads and checks, buffer tables, header stripping / zeroing, RX refill, TX reclaim, the avail
// idx store, the barrier and the notify store (a plain store to the model; an MMIO write, and
// under QEMU a VM exit, on a real device).
//   rx:   RxBurst(32) (measured; refills the ring), then FreeBurst
//   tx:   AllocBurst(32), then TxBurst (measured; reclaims the previous burst first)
//   echo: RxBurst(32) + TxBurst of the same buffers (both measured; per packet = per echo)
#include <valgrind/callgrind.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "vfdrivers/net/virtio_net/virtio_net.h"
#include "vfdrivers/net/virtio_net/virtio_net_device_model.h"

using vfdrivers::net::PacketBuffer;
using vfdrivers::net::virtio_net::Options;
using vfdrivers::net::virtio_net::VirtioNetPort;
using vfdrivers::net::virtio_net::testing::VirtioNetDeviceModel;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "echo";
  const int iters = argc > 2 ? std::atoi(argv[2]) : 2000;
  const bool rx = std::strcmp(mode, "rx") == 0, echo = std::strcmp(mode, "echo") == 0;
  const bool tx = std::strcmp(mode, "tx") == 0;
  if (!rx && !tx && !echo) {
    std::fprintf(stderr, "usage: %s rx|tx|echo [iterations]\n", argv[0]);
    return 1;
  }
  constexpr uint32_t kBurst = VirtioNetPort::kBurst;
  VirtioNetDeviceModel model;
  Options o;  // 256-entry rings, 1024 buffers: the defaults
  o.huge_pages = vfdrivers::memory::HugePages::kNever;
  auto port_or = VirtioNetPort::Create(model.MakeTransport(), o);
  if (!port_or.ok()) {
    std::fprintf(stderr, "%s\n", port_or.status().ToString().c_str());
    return 1;
  }
  VirtioNetPort& port = **port_or;
  uint8_t frame[64];
  std::memset(frame, 0xab, sizeof frame);
  PacketBuffer bufs[kBurst];
  uint64_t packets = 0;
  for (int it = 0; it < iters + 50; ++it) {
    const bool measure = it >= 50;  // warm-up rounds first
    size_t n, s = 0;
    if (tx) {
      n = port.AllocBurst(bufs);
      for (size_t i = 0; i < n; ++i) bufs[i].length = 64;
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      s = port.TxBurst(absl::MakeConstSpan(bufs, n));
      if (measure) CALLGRIND_TOGGLE_COLLECT;
    } else {
      for (uint32_t i = 0; i < kBurst; ++i) model.Deliver(frame, sizeof frame);
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      n = port.RxBurst(bufs);
      if (echo) s = port.TxBurst(absl::MakeConstSpan(bufs, n));
      if (measure) CALLGRIND_TOGGLE_COLLECT;
      if (rx) s = port.FreeBurst(absl::MakeConstSpan(bufs, n));
    }
    if (n != kBurst || s != n) {
      std::fprintf(stderr, "burst of %zu (%zu sent/freed) at iteration %d\n", n, s, it);
      return 2;
    }
    model.Step();
    model.sent().clear();
    if (measure) packets += n;
  }
  std::printf("virtio_net_insn_bench %s: %llu packets in bursts of %u; bad_descriptors %llu, "
              "notifies %llu\n",
              mode, static_cast<unsigned long long>(packets), kBurst,
              static_cast<unsigned long long>(port.stats().bad_descriptors),
              static_cast<unsigned long long>(port.virtio_stats().notifies));
  return port.stats().bad_descriptors == 0 ? 0 : 3;
}
