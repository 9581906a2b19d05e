#include "client/nic_vf.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vfclient {

absl::StatusOr<IgbvfNic> OpenIgbvf(NicLease& lease, const vfdrivers::net::igbvf::Options& options) {
  absl::StatusOr<VfioDescriptors> fds = lease.TakeVfioDescriptors();
  if (!fds.ok()) return fds.status();
  IgbvfNic nic;
  absl::StatusOr<std::unique_ptr<vfdrivers::vfio::VfioDevice>> device =
      vfdrivers::vfio::VfioDevice::Adopt(std::move(fds->container), std::move(fds->group),
                                         std::move(fds->device));
  if (!device.ok()) return device.status();
  nic.device = *std::move(device);
  absl::StatusOr<std::unique_ptr<vfdrivers::net::igbvf::IgbvfPort>> port =
      vfdrivers::net::igbvf::IgbvfPort::Open(nic.device.get(), options);
  if (!port.ok()) return port.status();
  const auto& m = (*port)->mac().bytes;
  const std::string mac =
      absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  if (mac != lease.nic().mac()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the PF gave VF ", lease.nic().pci_address(), " MAC ", mac, ", the lease says ",
        lease.nic().mac()));
  }
  nic.port = *std::move(port);
  return nic;
}

}  // namespace vfclient
