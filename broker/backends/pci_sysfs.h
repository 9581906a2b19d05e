// pci_sysfs: the few sysfs steps the VFIO backends (nvme_sriov, sriov_nic, pci_nic) share to find
// a function's IOMMU group and hand the function to vfio-pci. Every path starts at a configurable
// sysfs root, so the backends' unit tests run on a fake tree. Names read from sysfs are treated
// as untrusted: only a well-formed PCI address is ever joined into a path.
//
// Stateless; thread-safe.
#ifndef VFBROKER_BROKER_BACKENDS_PCI_SYSFS_H_
#define VFBROKER_BROKER_BACKENDS_PCI_SYSFS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace vfbroker::pci_sysfs {

// absl::ErrnoToStatus with "what: strerror" as the message.
absl::Status ErrnoStatus(int err, const std::string& what);
// The file's contents without trailing newlines and spaces (sysfs attributes are short).
absl::StatusOr<std::string> Read(const std::string& path);
absl::Status Write(const std::string& path, const std::string& value);
// The last component of a symlink's target ("../../../devices/.../0000:01:00.1" -> the address).
absl::StatusOr<std::string> LinkBase(const std::string& path);
// The entries of a directory but "." and "..", sorted.
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path);
bool Exists(const std::string& path);
// "DDDD:BB:DD.F", lower-case hex (the config's rule too).
bool IsPciAddress(absl::string_view address);

// <sysfs_root>/bus/pci/devices/<bdf>[/<leaf>]
std::string DevicePath(const std::string& sysfs_root, const std::string& bdf,
                       const std::string& leaf = "");

// The IOMMU group of `bdf` if `bdf` is its only member. FAILED_PRECONDITION otherwise, naming
// the members: every device in a group shares its IOMMU domain, so a tenant given one could DMA
// as any of them, and the broker never hands out a device whose group it does not wholly own.
absl::StatusOr<std::string> SoleIommuGroup(const std::string& sysfs_root, const std::string& bdf);

// Binds `bdf` to vfio-pci (driver_override, unbind, drivers_probe) and waits until it is bound.
absl::Status BindToVfioPci(const std::string& sysfs_root, const std::string& bdf,
                           absl::Duration timeout, absl::Duration poll_interval);

}  // namespace vfbroker::pci_sysfs

#endif  // VFBROKER_BROKER_BACKENDS_PCI_SYSFS_H_
