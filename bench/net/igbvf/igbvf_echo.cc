// igbvf_echo: the UDP echo loop (examples/udp_echo_loop) on an 82576 VF driven by the project's
// igbvf driver over VFIO, for the in-guest echo benchmark (run_guest_echo_bench.sh): the same
// data path as udp_echo, on a VF instead of an AF_XDP socket. No broker: the VF is opened by PCI
// address (bound to vfio-pci by the scenario, its MAC set from the PF), as tests/vm/igbvf_check
// does.
//
//   igbvf_echo --pci=0000:01:10.0 [--expect_mac=02:..] [--cpu=1] [--seconds=0] [--udp_port=7]
//
// Prints "ready" once the link is up, and its counters (received, echoed, idle polls: RxBurst
// calls that returned nothing) when it stops (SIGINT, SIGTERM or --seconds).
//
// Instruction marks, for the guest bench's second boot (QEMU with bench/nvme/insn_count_plugin,
// which prints the guest's instruction total whenever the marker NOP below executes):
//   --insn_idle_polls=K   before "ready", with no traffic: a mark, K idle iterations of the
//                         echo loop, a mark (the cost of one idle poll, to take busy-waiting out)
//   --insn_echoes=N       a mark at the first idle poll after the first echo, another at the
//                         first idle poll after the N-th; the echoes and idle polls between the
//                         two marks are printed as "igbvf_echo: insn window: ...".
#include <atomic>
#include <cinttypes>
#include <functional>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "examples/echo_control.h"
#include "examples/udp_echo_loop.h"
#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/net/intel_vf/mailbox.h"
#include "vfdrivers/vfio/vfio_device.h"

ABSL_FLAG(std::string, pci, "", "PCI address of the igb VF, bound to vfio-pci");
ABSL_FLAG(std::string, expect_mac, "", "refuse to run unless the PF gave the VF this MAC");
ABSL_FLAG(uint32_t, attempts, 3, "tries to bring the VF up (a mailbox step can time out under TCG)");
ABSL_FLAG(uint32_t, burst, 32, "Frames per RxBurst");
ABSL_FLAG(uint32_t, udp_port, 0, "Echo only datagrams to this UDP port (0: any)");
ABSL_FLAG(int, cpu, -1, "Pin the echo thread to this CPU (-1: no)");
ABSL_FLAG(double, seconds, 0, "Stop after this long (0: at SIGINT/SIGTERM)");
ABSL_FLAG(uint64_t, insn_idle_polls, 0, "Idle echo-loop iterations between two marks first (0: none)");
ABSL_FLAG(uint64_t, insn_echoes, 0, "Mark after the first echo and after this many (0: no marks)");

namespace {

std::atomic<bool> g_stop{false};

// The marker insn_count_plugin.c watches for (bench/nvme/insn_mark.c): a NOP with an operand
// nothing else uses; an ordinary NOP where no plugin listens.
void InsnMark() { __asm__ volatile(".byte 0x0f, 0x1f, 0x80, 0x21, 0x43, 0x65, 0x07"); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("UDP echo server on an 82576 VF (igbvf driver over VFIO)");
  absl::ParseCommandLine(argc, argv);
  using vfdrivers::net::igbvf::IgbvfPort;
  const std::string pci = absl::GetFlag(FLAGS_pci);
  if (pci.empty()) {
    fprintf(stderr, "igbvf_echo: --pci is required\n");
    return 2;
  }
  auto device = vfdrivers::vfio::VfioDevice::OpenByPciAddress(pci);
  if (!device.ok()) {
    fprintf(stderr, "igbvf_echo: %s\n", device.status().ToString().c_str());
    return 1;
  }
  if ((*device)->supports_reset()) {
    if (absl::Status st = (*device)->Reset(); !st.ok()) {
      fprintf(stderr, "igbvf_echo: VFIO reset: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  vfdrivers::net::igbvf::Options o;
  o.reset_timeout = absl::Milliseconds(100);
  o.mailbox_timeout = absl::Seconds(3);
  std::unique_ptr<IgbvfPort> port;
  for (uint32_t a = 1; a <= absl::GetFlag(FLAGS_attempts) && !port; ++a) {
    auto p = IgbvfPort::Open(device->get(), o);
    if (p.ok()) {
      port = *std::move(p);
    } else {
      fprintf(stderr, "igbvf_echo: open, attempt %u: %s\n", a, p.status().ToString().c_str());
    }
  }
  if (!port) return 1;
  const std::string mac = vfdrivers::net::intel_vf::MacString(port->mac());
  if (const std::string want = absl::GetFlag(FLAGS_expect_mac); !want.empty() && want != mac) {
    fprintf(stderr, "igbvf_echo: the PF gave MAC %s, want %s\n", mac.c_str(), want.c_str());
    return 1;
  }
  if (absl::Status st = port->WaitForLink(absl::Seconds(20)); !st.ok()) {
    fprintf(stderr, "igbvf_echo: link: %s\n", st.ToString().c_str());
    return 1;
  }

  vfbroker::examples::EchoOptions options;
  options.burst = absl::GetFlag(FLAGS_burst);
  options.udp_port = static_cast<uint16_t>(absl::GetFlag(FLAGS_udp_port));
  vfbroker::examples::PinToCpu(absl::GetFlag(FLAGS_cpu), "igbvf_echo");
  port->Service();  // receive buffers posted before anyone sends
  if (const uint64_t k = absl::GetFlag(FLAGS_insn_idle_polls); k > 0) {
    // The same loop, idle: its on_idle runs once per empty RxBurst, as in the measured window.
    std::atomic<bool> calibrated{false};
    uint64_t polls = 0;
    InsnMark();
    const vfbroker::examples::EchoStats idle = RunUdpEcho(*port, options, calibrated, [&] {
      if (++polls == k) calibrated = true;
    });
    InsnMark();
    printf("igbvf_echo: insn idle: polls=%" PRIu64 " received=%" PRIu64 "\n", polls,
           idle.received);
  }
  vfbroker::examples::StopOnSignalOrAfter(&g_stop, absl::GetFlag(FLAGS_seconds), /*wake=*/false);
  printf("ready mac %s\n", mac.c_str());
  fflush(stdout);

  // Marks around N echoes, placed in idle polls (never inside a burst).
  const uint64_t insn_echoes = absl::GetFlag(FLAGS_insn_echoes);
  uint64_t idle_polls = 0, begin_tx = 0, begin_idle = 0, end_tx = 0, end_idle = 0;
  int marks = 0;
  std::function<void()> on_idle;
  if (insn_echoes > 0) {
    on_idle = [&] {
      ++idle_polls;
      if (marks == 2) return;
      const uint64_t tx = port->stats().tx_packets;
      if (marks == 0 && tx >= 1) {
        InsnMark();
        begin_tx = tx;
        begin_idle = idle_polls;
        marks = 1;
      } else if (marks == 1 && tx >= insn_echoes) {
        InsnMark();
        end_tx = tx;
        end_idle = idle_polls;
        marks = 2;
      }
    };
  }
  const vfbroker::examples::EchoStats st = RunUdpEcho(*port, options, g_stop, on_idle);
  if (insn_echoes > 0) {
    // Idle polls between the marks, the marking one excluded (it ran before the mark); zeros
    // when the N-th echo never came (one mark or none).
    const bool both = marks == 2;
    printf("igbvf_echo: insn window: marks=%d echoes=%" PRIu64 " idle_polls=%" PRIu64 "\n", marks,
           both ? end_tx - begin_tx : 0, both ? end_idle - begin_idle : 0);
  }
  const vfdrivers::net::PortStats& ps = port->stats();
  printf("igbvf_echo: received=%" PRIu64 " echoed=%" PRIu64 " ignored=%" PRIu64
         " tx_dropped=%" PRIu64 " idle_polls=%" PRIu64 " bad_descriptors=%" PRIu64
         " rx_frame_errors=%" PRIu64 "\n",
         st.received, st.echoed, st.ignored, st.tx_dropped, st.idle_polls, ps.bad_descriptors,
         port->igbvf_stats().rx_frame_errors);
  fflush(stdout);
  return 0;
}
