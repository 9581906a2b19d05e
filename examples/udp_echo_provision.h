// Self-provisioning an AF_XDP port (root), for benchmarks and host tests that run without a
// broker: does the broker's half itself, as vfdrivers/net/af_xdp_veth_test.cc does. Creates
// the UMEM memfd and the socket bound to (interface, queue) with CreateAfXdpSocket, attaches
// the redirect-all program (vfdrivers/net/xdp/xsk_redirect.bpf.c: every frame of the queue to
// the socket), then adopts the two descriptors as the tenant would (AfXdpPort::Adopt).
// The interface must be one the caller owns (its frames all go to this port).
#ifndef VFBROKER_EXAMPLES_UDP_ECHO_PROVISION_H_
#define VFBROKER_EXAMPLES_UDP_ECHO_PROVISION_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/af_xdp_port.h"
#include "vfdrivers/net/xdp_program.h"

namespace vfbroker::examples {

struct SelfProvisionedPort {
  // Declared first, destroyed last: the program is detached after the port is gone.
  std::unique_ptr<vfdrivers::net::XdpProgram> program;
  std::unique_ptr<vfdrivers::net::AfXdpPort> port;
};

// mode: how the XDP program is attached; the socket is bound in copy mode unless zero_copy.
absl::StatusOr<SelfProvisionedPort> SelfProvisionAfXdpPort(
    const std::string& interface, uint32_t queue, vfdrivers::net::XdpAttachMode mode,
    const vfdrivers::net::AfXdpLayout& layout, bool zero_copy = false);

// "native" | "generic" | "auto".
bool ParseXdpAttachMode(const std::string& text, vfdrivers::net::XdpAttachMode* mode);

}  // namespace vfbroker::examples

#endif  // VFBROKER_EXAMPLES_UDP_ECHO_PROVISION_H_
