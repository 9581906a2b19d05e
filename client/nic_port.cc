#include "client/nic_port.h"

#include <optional>

namespace vfclient {

vfdrivers::net::AfXdpLayout NicLayout(const v1::Nic& nic) {
  vfdrivers::net::AfXdpLayout layout;
  layout.frame_size = nic.frame_size();
  layout.frame_count = nic.frame_count();
  layout.frame_headroom = nic.frame_headroom();
  layout.fill_size = nic.fill_ring_size();
  layout.completion_size = nic.completion_ring_size();
  layout.rx_size = nic.rx_ring_size();
  layout.tx_size = nic.tx_ring_size();
  layout.need_wakeup = nic.need_wakeup();
  layout.queue_id = nic.queue_id();
  return layout;
}

absl::StatusOr<std::unique_ptr<vfdrivers::net::AfXdpPort>> AdoptNicPort(NicLease& lease) {
  absl::StatusOr<XdpDescriptors> fds = lease.TakeXdpDescriptors();
  if (!fds.ok()) return fds.status();
  const v1::Nic& nic = lease.nic();
  std::optional<vfdrivers::net::AfXdpBindTarget> bind;
  if (nic.tenant_binds()) {
    // The broker sends these numbers; the socket's namespace decides what they can reach.
    if (nic.ifindex() == 0 || nic.ifindex() > 0x7fffffffu || nic.bind_flags() > 0xffffu) {
      return absl::InvalidArgumentError("NIC lease: bad bind target");
    }
    bind = vfdrivers::net::AfXdpBindTarget{static_cast<int>(nic.ifindex()), nic.queue_id(),
                                           static_cast<uint16_t>(nic.bind_flags())};
  }
  return vfdrivers::net::AfXdpPort::Adopt(std::move(fds->socket), std::move(fds->umem),
                                          NicLayout(nic), bind);
}

}  // namespace vfclient
