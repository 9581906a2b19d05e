// udp_echo: a UDP echo server on a net::Port, Arrakis's first benchmark. Every IPv4/UDP
// datagram that reaches the port goes back to its sender from the same buffer (addresses
// swapped in place, see udp_echo_loop.h), in bursts, busy-polling, with no system call to
// receive. (Transmit wakes the kernel when it asks: an AF_XDP socket in copy mode asks for one
// sendto() per transmitted burst.)
//
// Where the port comes from:
//   --self_provision --interface=IF   (root) create the AF_XDP socket and UMEM on IF's queue
//                                     and attach the redirect-all program, as the broker would
//                                     (udp_echo_provision.h); for benchmarks and host tests.
//                                     Every frame arriving on that queue goes to the echo.
//   --broker --pool=P                 (any uid the pool's policy admits) a NIC lease from
//                                     vfbrokerd through libvfclient (AllocateNic): the broker
//                                     creates the socket on a device of the lease's own and
//                                     steers the lease's frames to it; we adopt the two
//                                     descriptors (client/nic_port.h) and echo. The lease's MAC
//                                     and device are printed; --flow_filter asks for a UDP
//                                     filter on --udp_port.
//
//   udp_echo --self_provision --interface=veth0 [--udp_port=7] [--cpu=1] [--seconds=0]
//   udp_echo --broker --pool=nic [--socket_dir=/run/vfbroker] [--mac=..] [--udp_port=7]
//
// Prints "ready" on stdout once the port receives, and its counters when it stops (SIGINT,
// SIGTERM or --seconds).
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/broker_client.h"
#include "client/nic_port.h"
#include "examples/echo_control.h"
#include "examples/udp_echo_loop.h"
#include "examples/udp_echo_provision.h"

ABSL_FLAG(bool, self_provision, false,
          "Create the AF_XDP socket on --interface ourselves (root) instead of asking a broker");
ABSL_FLAG(std::string, interface, "", "Device for --self_provision");
ABSL_FLAG(bool, broker, false, "Get the port from vfbrokerd (AllocateNic on --pool)");
ABSL_FLAG(std::string, socket_dir, "/run/vfbroker", "--broker: where vfbrokerd's sockets are");
ABSL_FLAG(std::string, pool, "", "--broker: the xdp_nic pool to allocate from");
ABSL_FLAG(std::string, mac, "", "--broker: the MAC to ask for (\"\": the broker picks)");
ABSL_FLAG(uint32_t, vlan, 0, "--broker: VLAN to ask for (0: untagged)");
ABSL_FLAG(bool, flow_filter, false, "--broker: ask for a UDP flow filter on --udp_port");
ABSL_FLAG(uint32_t, queue, 0, "Device queue for --self_provision");
ABSL_FLAG(std::string, xdp_mode, "native", "XDP attach mode: native, generic or auto");
ABSL_FLAG(uint32_t, frame_size, 2048, "--self_provision: UMEM chunk size (2048 or 4096)");
ABSL_FLAG(uint32_t, frames, 4096, "--self_provision: UMEM chunks");
ABSL_FLAG(uint32_t, ring_size, 2048, "--self_provision: size of each of the four rings");
ABSL_FLAG(uint32_t, burst, 32, "Frames per RxBurst");
ABSL_FLAG(uint32_t, udp_port, 0, "Echo only datagrams to this UDP port (0: any)");
ABSL_FLAG(bool, verify, false, "Drop frames whose IPv4/UDP checksums do not verify");
ABSL_FLAG(std::string, checksum, "keep",
          "keep: swap only (sums stay valid); recompute: recompute the UDP checksum");
ABSL_FLAG(std::string, idle, "spin", "When nothing arrived: spin (busy-poll) or poll (sleep)");
ABSL_FLAG(int, cpu, -1, "Pin the echo thread to this CPU (-1: no)");
ABSL_FLAG(double, seconds, 0, "Stop after this long (0: at SIGINT/SIGTERM)");

namespace {

std::atomic<bool> g_stop{false};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("UDP echo server on a net::Port (AF_XDP)");
  absl::ParseCommandLine(argc, argv);
  using vfbroker::examples::ChecksumMode;

  const bool self_provision = absl::GetFlag(FLAGS_self_provision);
  const bool broker = absl::GetFlag(FLAGS_broker);
  if (self_provision == broker) {
    fprintf(stderr, "udp_echo: give exactly one of --self_provision and --broker\n");
    return 2;
  }
  vfdrivers::net::XdpAttachMode mode;
  if (!vfbroker::examples::ParseXdpAttachMode(absl::GetFlag(FLAGS_xdp_mode), &mode)) {
    fprintf(stderr, "udp_echo: bad --xdp_mode\n");
    return 2;
  }
  vfbroker::examples::EchoOptions options;
  options.burst = absl::GetFlag(FLAGS_burst);
  options.udp_port = static_cast<uint16_t>(absl::GetFlag(FLAGS_udp_port));
  options.verify = absl::GetFlag(FLAGS_verify);
  const std::string checksum = absl::GetFlag(FLAGS_checksum);
  if (checksum == "keep") {
    options.checksum = ChecksumMode::kKeep;
  } else if (checksum == "recompute") {
    options.checksum = ChecksumMode::kRecompute;
  } else {
    fprintf(stderr, "udp_echo: bad --checksum\n");
    return 2;
  }
  const std::string idle = absl::GetFlag(FLAGS_idle);
  if (idle != "spin" && idle != "poll") {
    fprintf(stderr, "udp_echo: bad --idle\n");
    return 2;
  }

  // The descriptor source. Destruction order: port, then lease / program.
  std::shared_ptr<vfclient::BrokerClient> client;
  std::unique_ptr<vfclient::NicLease> lease;
  vfbroker::examples::SelfProvisionedPort provisioned;
  std::unique_ptr<vfdrivers::net::AfXdpPort> leased_port;
  vfdrivers::net::AfXdpPort* port_ptr = nullptr;
  if (broker) {
    vfclient::ConnectOptions co;
    co.socket_dir = absl::GetFlag(FLAGS_socket_dir);
    auto c = vfclient::BrokerClient::Connect(co);
    if (!c.ok()) {
      fprintf(stderr, "udp_echo: connect: %s\n", c.status().ToString().c_str());
      return 1;
    }
    client = *c;
    vfbroker::v1::AllocateNicRequest request;
    request.set_pool(absl::GetFlag(FLAGS_pool));
    request.set_mac(absl::GetFlag(FLAGS_mac));
    request.set_vlan(absl::GetFlag(FLAGS_vlan));
    if (absl::GetFlag(FLAGS_flow_filter) && options.udp_port != 0) {
      vfbroker::v1::FlowFilter* f = request.add_filters();
      f->set_protocol(vfbroker::v1::FlowFilter::PROTOCOL_UDP);
      f->set_dst_port(options.udp_port);
    }
    auto l = client->AllocateNic(request);
    if (!l.ok()) {
      fprintf(stderr, "udp_echo: AllocateNic: %s\n", l.status().ToString().c_str());
      return 1;
    }
    lease = std::move(*l);
    auto p = vfclient::AdoptNicPort(*lease);
    if (!p.ok()) {
      fprintf(stderr, "udp_echo: adopt: %s\n", p.status().ToString().c_str());
      return 1;
    }
    leased_port = std::move(*p);
    port_ptr = leased_port.get();
    fprintf(stderr, "udp_echo: lease %s: mac %s vlan %u on %s (device %s, queue %u)\n",
            lease->id().c_str(), lease->nic().mac().c_str(), lease->nic().vlan(),
            lease->nic().interface().c_str(), lease->nic().device().c_str(),
            lease->nic().queue_id());
  } else {
    vfdrivers::net::AfXdpLayout layout;
    layout.frame_size = absl::GetFlag(FLAGS_frame_size);
    layout.frame_count = absl::GetFlag(FLAGS_frames);
    layout.fill_size = layout.completion_size = layout.rx_size = layout.tx_size =
        absl::GetFlag(FLAGS_ring_size);
    auto p = vfbroker::examples::SelfProvisionAfXdpPort(
        absl::GetFlag(FLAGS_interface), absl::GetFlag(FLAGS_queue), mode, layout);
    if (!p.ok()) {
      fprintf(stderr, "udp_echo: %s\n", p.status().ToString().c_str());
      return 1;
    }
    provisioned = std::move(*p);
    port_ptr = provisioned.port.get();
  }
  vfdrivers::net::AfXdpPort& port = *port_ptr;

  vfbroker::examples::PinToCpu(absl::GetFlag(FLAGS_cpu), "udp_echo");
  vfbroker::examples::StopOnSignalOrAfter(&g_stop, absl::GetFlag(FLAGS_seconds), /*wake=*/false);

  port.Service();  // give the kernel its fill buffers before anyone sends
  printf("ready\n");
  fflush(stdout);

  std::function<void()> on_idle;
  if (idle == "poll") {
    const int fd = port.fd();
    on_idle = [fd] {
      pollfd pfd{fd, POLLIN, 0};
      poll(&pfd, 1, 100);
    };
  }
  const vfbroker::examples::EchoStats st = RunUdpEcho(port, options, g_stop, on_idle);
  const vfdrivers::net::PortStats& ps = port.stats();
  printf("udp_echo: received=%" PRIu64 " echoed=%" PRIu64 " ignored=%" PRIu64
         " tx_dropped=%" PRIu64 " idle_polls=%" PRIu64 " wakeups=%" PRIu64
         " bad_descriptors=%" PRIu64 " zero_copy=%d\n",
         st.received, st.echoed, st.ignored, st.tx_dropped, st.idle_polls, ps.wakeups,
         ps.bad_descriptors, port.info().zero_copy ? 1 : 0);
  fflush(stdout);
  leased_port.reset();  // before the lease that backs it
  return 0;
}
