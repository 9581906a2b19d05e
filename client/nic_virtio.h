// Adopting a pci_nic lease (a whole virtio-net function) with the project's virtio-net driver
// (vfdrivers::net::virtio_net). A separate library from libvfclient so that the client itself
// does not depend on the drivers; the counterpart of nic_vf.h's OpenIgbvf.
//
// Not thread-safe: one thread opens the lease and then owns the port.
#ifndef VFBROKER_CLIENT_NIC_VIRTIO_H_
#define VFBROKER_CLIENT_NIC_VIRTIO_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/broker_client.h"
#include "vfdrivers/net/virtio_net/virtio_net.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfclient {

// The device as a net::Port. Destroy it before the lease (the member order destroys the port
// first, which resets the device and stops its DMA, then the VFIO device), so that the broker
// finds the group free when it reclaims the function.
struct VirtioNetNic {
  std::unique_ptr<vfdrivers::vfio::VfioDevice> device;
  std::unique_ptr<vfdrivers::net::virtio_net::VirtioNetPort> port;
};

// Takes the lease's VFIO descriptors, adopts them and opens the virtio-net driver on the
// function (reset, features, queues, promiscuous mode off when the device offers CTRL_RX).
// FAILED_PRECONDITION if the device's MAC is not the lease's (nic().mac()): the driver would
// then be talking to another device than the broker handed out. options.mac, if set, is applied
// after that check (VIRTIO_NET_CTRL_MAC_ADDR_SET); the broker's reset at reclaim undoes it.
absl::StatusOr<VirtioNetNic> OpenVirtioNet(
    NicLease& lease, const vfdrivers::net::virtio_net::Options& options = {});

}  // namespace vfclient

#endif  // VFBROKER_CLIENT_NIC_VIRTIO_H_
