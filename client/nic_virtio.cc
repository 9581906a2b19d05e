#include "client/nic_virtio.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vfclient {
namespace {

std::string MacText(const std::array<uint8_t, 6>& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

}  // namespace

absl::StatusOr<VirtioNetNic> OpenVirtioNet(NicLease& lease,
                                           const vfdrivers::net::virtio_net::Options& options) {
  if (lease.nic().pci_address().empty()) {
    return absl::FailedPreconditionError(
        "not a whole-device lease (no Nic.pci_address): OpenVirtioNet adopts pci_nic leases");
  }
  absl::StatusOr<VfioDescriptors> fds = lease.TakeVfioDescriptors();
  if (!fds.ok()) return fds.status();
  VirtioNetNic nic;
  absl::StatusOr<std::unique_ptr<vfdrivers::vfio::VfioDevice>> device =
      vfdrivers::vfio::VfioDevice::Adopt(std::move(fds->container), std::move(fds->group),
                                         std::move(fds->device));
  if (!device.ok()) return device.status();
  nic.device = *std::move(device);
  vfdrivers::net::virtio_net::Options open_options = options;
  open_options.mac.reset();  // the device's own MAC first, to check it is the lease's
  absl::StatusOr<std::unique_ptr<vfdrivers::net::virtio_net::VirtioNetPort>> port =
      vfdrivers::net::virtio_net::VirtioNetPort::Create(*nic.device, open_options);
  if (!port.ok()) return port.status();
  const std::string mac = MacText((*port)->mac());
  if (mac != lease.nic().mac()) {
    return absl::FailedPreconditionError(absl::StrCat("device ", lease.nic().pci_address(),
                                                      " reports MAC ", mac, ", the lease says ",
                                                      lease.nic().mac()));
  }
  if (options.mac.has_value()) {
    if (absl::Status s = (*port)->SetMac(*options.mac); !s.ok()) return s;
  }
  nic.port = *std::move(port);
  return nic;
}

}  // namespace vfclient
