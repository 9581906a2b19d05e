// vfio_handout: what every backend that hands a whole PCI function to a tenant over VFIO
// (nvme_sriov, sriov_nic, pci_nic) does with /dev/vfio: open the function's group as the cut-off
// test, set up a type1v2 container and get the device descriptor, and reset the function.
//
// The kernel lets one file at a time open a VFIO group, and a device descriptor keeps its group's
// file open, so opening /dev/vfio/<group> succeeds only when no tenant descriptor to the group or
// the device is left: EBUSY is the proof that someone still holds it.
//
// Stateless; thread-safe.
#ifndef VFBROKER_BROKER_BACKENDS_VFIO_HANDOUT_H_
#define VFBROKER_BROKER_BACKENDS_VFIO_HANDOUT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "broker/backends/extent_backend.h"
#include "common/unique_fd.h"

namespace vfbroker {

struct VfioHandles {
  UniqueFd container;
  UniqueFd group;
  UniqueFd device;
};

// Opens `vfio_dir`/<group> (nullopt when it is busy: EBUSY) and `vfio_dir`/vfio, checks the API
// version, the type1v2 IOMMU (no-IOMMU mode is refused), that the group is viable and has no
// container yet, attaches it to the container with type1v2 and gets the device descriptor of
// `pci_address`. All descriptors close-on-exec.
absl::StatusOr<std::optional<VfioHandles>> OpenVfioHandles(const std::string& vfio_dir,
                                                          const std::string& group,
                                                          const std::string& pci_address);

// VFIO_DEVICE_RESET on the device descriptor (function-level reset or whatever reset the kernel
// has for the function). FAILED_PRECONDITION if the device offers none (VFIO_DEVICE_FLAGS_RESET).
absl::Status ResetVfioDevice(const VfioHandles& handles);

// What the tenant gets: container, group and device descriptors, in that order, with their
// FD_ROLE_VFIO_* roles (the client's TakeVfioDescriptors() looks them up by role).
void HandOverVfio(VfioHandles handles, std::vector<TenantFd>* fds);

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_BACKENDS_VFIO_HANDOUT_H_
