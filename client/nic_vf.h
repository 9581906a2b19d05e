// Adopting a sriov_nic lease's VFIO descriptors with the project's 82576 VF driver
// (vfdrivers::net::igbvf). A separate library from libvfclient so that the client itself does
// not depend on the drivers.
#ifndef VFBROKER_CLIENT_NIC_VF_H_
#define VFBROKER_CLIENT_NIC_VF_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/broker_client.h"
#include "vfdrivers/net/igbvf/igbvf.h"
#include "vfdrivers/vfio/vfio_device.h"

namespace vfclient {

// The VF as a net::Port. Destroy it (port first, then device: the member order does this)
// before the lease, so the broker finds the group free when it reclaims the VF. (Members are
// destroyed in reverse order: the port, which stops the VF's DMA, then the device.)
struct IgbvfNic {
  std::unique_ptr<vfdrivers::vfio::VfioDevice> device;
  std::unique_ptr<vfdrivers::net::igbvf::IgbvfPort> port;
};

// Takes the lease's VFIO descriptors, adopts them and opens the igbvf driver on the VF (reset,
// MAC from the PF over the mailbox, queues). FAILED_PRECONDITION if the MAC the PF gave is not
// the lease's (nic().mac()): the driver then talks to another VF than the broker configured.
absl::StatusOr<IgbvfNic> OpenIgbvf(NicLease& lease,
                                   const vfdrivers::net::igbvf::Options& options = {});

}  // namespace vfclient

#endif  // VFBROKER_CLIENT_NIC_VF_H_
