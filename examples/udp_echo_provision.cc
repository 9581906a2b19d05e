#include "examples/udp_echo_provision.h"

#include <net/if.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "vfdrivers/net/af_xdp_socket.h"
#include "vfdrivers/net/xdp/xdp_objects.h"

namespace vfbroker::examples {

using vfdrivers::net::AfXdpPort;
using vfdrivers::net::AfXdpSocketOptions;
using vfdrivers::net::XdpAttachMode;
using vfdrivers::net::XdpBindMode;
using vfdrivers::net::XdpProgram;

absl::StatusOr<SelfProvisionedPort> SelfProvisionAfXdpPort(
    const std::string& interface, uint32_t queue, XdpAttachMode mode,
    const vfdrivers::net::AfXdpLayout& layout, bool zero_copy) {
  const unsigned ifindex = if_nametoindex(interface.c_str());
  if (ifindex == 0) return absl::NotFoundError(absl::StrCat("no interface ", interface));
  AfXdpSocketOptions o;
  o.ifindex = static_cast<int>(ifindex);
  o.queue_id = queue;
  o.mode = zero_copy ? XdpBindMode::kZeroCopy : XdpBindMode::kCopy;
  o.layout = layout;
  auto xsk = vfdrivers::net::CreateAfXdpSocket(o);
  if (!xsk.ok()) return xsk.status();

  SelfProvisionedPort out;
  auto program = XdpProgram::Attach(vfdrivers::net::xdp::kXskRedirectBpf,
                                    vfdrivers::net::xdp::kXskRedirectBpfSize, "xsk_redirect",
                                    o.ifindex, mode);
  if (!program.ok()) return program.status();
  out.program = std::move(*program);
  if (absl::Status s = out.program->SetXsk("xsks", queue, xsk->socket.get()); !s.ok()) return s;
  auto port = AfXdpPort::Adopt(std::move(xsk->socket), std::move(xsk->umem), xsk->layout);
  if (!port.ok()) return port.status();
  out.port = std::move(*port);
  return out;
}

bool ParseXdpAttachMode(const std::string& text, XdpAttachMode* mode) {
  if (text == "native") {
    *mode = XdpAttachMode::kNative;
  } else if (text == "generic") {
    *mode = XdpAttachMode::kGeneric;
  } else if (text == "auto") {
    *mode = XdpAttachMode::kAuto;
  } else {
    return false;
  }
  return true;
}

}  // namespace vfbroker::examples
