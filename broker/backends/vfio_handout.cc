#include "broker/backends/vfio_handout.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vfbroker {
namespace {

absl::Status Errno(int err, const std::string& what) {
  return absl::ErrnoToStatus(err, absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

absl::StatusOr<std::optional<VfioHandles>> OpenVfioHandles(const std::string& vfio_dir,
                                                          const std::string& group,
                                                          const std::string& pci_address) {
  VfioHandles h;
  const std::string container_path = absl::StrCat(vfio_dir, "/vfio");
  const std::string group_path = absl::StrCat(vfio_dir, "/", group);
  // The group first: EBUSY is the answer the cut-off test looks for.
  h.group.reset(::open(group_path.c_str(), O_RDWR | O_CLOEXEC));
  if (!h.group) {
    if (errno == EBUSY) return std::optional<VfioHandles>();
    return Errno(errno, absl::StrCat("open ", group_path));
  }
  h.container.reset(::open(container_path.c_str(), O_RDWR | O_CLOEXEC));
  if (!h.container) return Errno(errno, absl::StrCat("open ", container_path));
  if (::ioctl(h.container.get(), VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
    return absl::FailedPreconditionError("VFIO_GET_API_VERSION: unknown VFIO API");
  }
  if (::ioctl(h.container.get(), VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1) {
    return absl::FailedPreconditionError(
        "the VFIO container offers no type1v2 IOMMU (no-IOMMU mode is refused)");
  }
  vfio_group_status status = {};
  status.argsz = sizeof(status);
  if (::ioctl(h.group.get(), VFIO_GROUP_GET_STATUS, &status) != 0) {
    return Errno(errno, "VFIO_GROUP_GET_STATUS");
  }
  if ((status.flags & VFIO_GROUP_FLAGS_VIABLE) == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "VFIO group ", group, " is not viable (a member is bound to a host driver)"));
  }
  if ((status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET) != 0) {
    // Nobody else has the group file open (our open succeeded), yet a container is set:
    // should not happen; refuse rather than guess.
    return absl::FailedPreconditionError(
        absl::StrCat("VFIO group ", group, " already has a container"));
  }
  int container_fd = h.container.get();
  if (::ioctl(h.group.get(), VFIO_GROUP_SET_CONTAINER, &container_fd) != 0) {
    return Errno(errno, "VFIO_GROUP_SET_CONTAINER");
  }
  if (::ioctl(h.container.get(), VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0) {
    return Errno(errno, "VFIO_SET_IOMMU(TYPE1v2)");
  }
  const int device = ::ioctl(h.group.get(), VFIO_GROUP_GET_DEVICE_FD, pci_address.c_str());
  if (device < 0) return Errno(errno, absl::StrCat("VFIO_GROUP_GET_DEVICE_FD ", pci_address));
  h.device.reset(device);
  // The ioctl's fd is not close-on-exec by default on every kernel; make it so.
  (void)::fcntl(device, F_SETFD, FD_CLOEXEC);
  return std::optional<VfioHandles>(std::move(h));
}

absl::Status ResetVfioDevice(const VfioHandles& handles) {
  vfio_device_info info = {};
  info.argsz = sizeof(info);
  if (::ioctl(handles.device.get(), VFIO_DEVICE_GET_INFO, &info) != 0) {
    return Errno(errno, "VFIO_DEVICE_GET_INFO");
  }
  if ((info.flags & VFIO_DEVICE_FLAGS_RESET) == 0) {
    return absl::FailedPreconditionError("the function offers no reset (VFIO_DEVICE_FLAGS_RESET)");
  }
  if (::ioctl(handles.device.get(), VFIO_DEVICE_RESET) != 0) {
    return Errno(errno, "VFIO_DEVICE_RESET");
  }
  return absl::OkStatus();
}

void HandOverVfio(VfioHandles handles, std::vector<TenantFd>* fds) {
  fds->push_back(TenantFd{v1::FD_ROLE_VFIO_CONTAINER, std::move(handles.container)});
  fds->push_back(TenantFd{v1::FD_ROLE_VFIO_GROUP, std::move(handles.group)});
  fds->push_back(TenantFd{v1::FD_ROLE_VFIO_DEVICE, std::move(handles.device)});
}

}  // namespace vfbroker
