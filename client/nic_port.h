// Adopting an xdp_nic lease's descriptors as a vfdrivers::net::AfXdpPort. A separate library
// from libvfclient so that the client itself does not depend on the drivers.
#ifndef VFBROKER_CLIENT_NIC_PORT_H_
#define VFBROKER_CLIENT_NIC_PORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/broker_client.h"
#include "vfdrivers/net/af_xdp_layout.h"
#include "vfdrivers/net/af_xdp_port.h"

namespace vfclient {

// The layout the broker created the socket and UMEM with (v1::Nic's fields).
vfdrivers::net::AfXdpLayout NicLayout(const v1::Nic& nic);

// Takes the lease's two descriptors and adopts them (AfXdpPort::Adopt checks the memfd's size
// and seals, and that the rings are unused; a socket the broker sent unbound, Nic.tenant_binds,
// is bound to Nic.ifindex / queue_id / bind_flags after its rings are mapped). The lease still
// releases the NIC when destroyed; destroy the port first.
absl::StatusOr<std::unique_ptr<vfdrivers::net::AfXdpPort>> AdoptNicPort(NicLease& lease);

}  // namespace vfclient

#endif  // VFBROKER_CLIENT_NIC_PORT_H_
