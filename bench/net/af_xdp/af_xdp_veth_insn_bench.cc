// af_xdp_veth_insn_bench: AfXdpPort's RxBurst / TxBurst instructions per packet on a real
// AF_XDP socket (veth, copy mode), as a cross-check of af_xdp_insn_bench's rings-in-memory
// figure. run_veth_insn_bench.sh runs it under callgrind (root, a network namespace of its own,
// udp_blast sending on the peer).
//
// rx: per round, sleeps while the sender fills the RX ring (the kernel drops what does not fit),
//     then drains it with RxBurst(32) calls, each between CALLGRIND_TOGGLE_COLLECT, up to
//     --bursts_per_round calls or the first partial one (which is counted; FreeBurst is not).
// tx: AllocBurst(32), then TxBurst between the toggles; copy mode sets NEED_WAKEUP, so every
//     burst makes a sendto() (its glibc wrapper is counted, the kernel's transmit is not:
//     callgrind sees user space only); the completions the kernel posts during that sendto()
//     are reclaimed by the next TxBurst, inside the window.
// Prints packets and calls; instructions per packet = callgrind's "Collected" / packets.
//   af_xdp_veth_insn_bench --mode=rx|tx --interface=v0 [--rounds=40] [--xdp_mode=native]
#include <valgrind/callgrind.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "examples/udp_echo_provision.h"
#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/af_xdp_port.h"

ABSL_FLAG(std::string, mode, "rx", "rx or tx");
ABSL_FLAG(std::string, interface, "", "Device whose queue 0 the port takes (root)");
ABSL_FLAG(std::string, xdp_mode, "native", "XDP attach mode: native, generic or auto");
ABSL_FLAG(uint32_t, rounds, 40, "rx: fill-and-drain rounds; tx: rounds of 64 bursts");
ABSL_FLAG(uint32_t, bursts_per_round, 64, "rx: most RxBurst calls per round");
ABSL_FLAG(uint32_t, fill_ms, 40, "rx: how long the sender has to fill the ring each round");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  vfdrivers::net::XdpAttachMode attach;
  if ((mode != "rx" && mode != "tx") ||
      !vfbroker::examples::ParseXdpAttachMode(absl::GetFlag(FLAGS_xdp_mode), &attach)) {
    std::fprintf(stderr, "af_xdp_veth_insn_bench: bad --mode or --xdp_mode\n");
    return 2;
  }
  const bool rx_mode = mode == "rx";
  // The same geometry as af_xdp_insn_bench (udp_echo --self_provision's defaults).
  vfdrivers::net::AfXdpLayout layout;
  layout.frame_size = 2048;
  layout.frame_count = 4096;
  layout.fill_size = layout.completion_size = layout.rx_size = layout.tx_size = 2048;
  auto p = vfbroker::examples::SelfProvisionAfXdpPort(absl::GetFlag(FLAGS_interface), 0, attach,
                                                      layout);
  if (!p.ok()) {
    std::fprintf(stderr, "af_xdp_veth_insn_bench: %s\n", p.status().ToString().c_str());
    return 1;
  }
  vfdrivers::net::AfXdpPort& port = *p->port;
  port.Service();
  constexpr size_t kBurst = 32;
  vfdrivers::net::PacketBuffer bufs[kBurst];
  uint64_t packets = 0, calls = 0, full = 0;
  const uint32_t rounds = absl::GetFlag(FLAGS_rounds);
  for (uint32_t r = 0; r < rounds; ++r) {
    if (rx_mode) {
      std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_fill_ms)));
      for (uint32_t b = 0; b < absl::GetFlag(FLAGS_bursts_per_round); ++b) {
        CALLGRIND_TOGGLE_COLLECT;
        const size_t n = port.RxBurst(bufs);
        CALLGRIND_TOGGLE_COLLECT;
        port.FreeBurst(absl::MakeConstSpan(bufs, n));
        packets += n;
        ++calls;
        if (n < kBurst) break;
        ++full;
      }
    } else {
      for (int b = 0; b < 64; ++b) {
        const size_t n = port.AllocBurst(bufs);
        for (size_t i = 0; i < n; ++i) {
          std::memset(bufs[i].data, 0xab, 64);
          std::memset(bufs[i].data, 0xff, 6);  // broadcast: the peer takes and drops it
          bufs[i].length = 64;
        }
        CALLGRIND_TOGGLE_COLLECT;
        const size_t s = port.TxBurst(absl::MakeConstSpan(bufs, n));
        CALLGRIND_TOGGLE_COLLECT;
        port.FreeBurst(absl::MakeConstSpan(bufs + s, n - s));
        packets += s;
        ++calls;
        if (s == kBurst) ++full;
        // Completions are reclaimed by the next TxBurst, inside the measured window, as
        // af_xdp_insn_bench does; Service() only when the ring is stuck (not counted).
        if (s < n) port.Service();
      }
    }
  }
  const auto& st = port.stats();
  std::printf("af_xdp_veth_insn_bench %s: %" PRIu64 " packets in %" PRIu64 " calls (%" PRIu64
              " full bursts of 32); wakeups %" PRIu64 ", bad_descriptors %" PRIu64 "\n",
              mode.c_str(), packets, calls, full, st.wakeups, st.bad_descriptors);
  return packets > 0 ? 0 : 3;
}
