#include "broker/backends/pci_sysfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/unique_fd.h"

namespace vfbroker::pci_sysfs {

absl::Status ErrnoStatus(int err, const std::string& what) {
  return absl::ErrnoToStatus(err, absl::StrCat(what, ": ", std::strerror(err)));
}

absl::StatusOr<std::string> Read(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  char buf[256];
  const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
  if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", path));
  std::string value(buf, static_cast<size_t>(n));
  while (!value.empty() && (value.back() == '\n' || value.back() == ' ')) value.pop_back();
  return value;
}

absl::Status Write(const std::string& path, const std::string& value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("open ", path));
  if (::write(fd.get(), value.data(), value.size()) < 0) {
    return ErrnoStatus(errno, absl::StrCat("write '", value, "' to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LinkBase(const std::string& path) {
  char buf[4096];
  const ssize_t n = ::readlink(path.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) return ErrnoStatus(errno, absl::StrCat("readlink ", path));
  std::string target(buf, static_cast<size_t>(n));
  const size_t slash = target.rfind('/');
  return slash == std::string::npos ? target : target.substr(slash + 1);
}

absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ErrnoStatus(errno, absl::StrCat("opendir ", path));
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

bool IsPciAddress(absl::string_view a) {
  if (a.size() != 12 || a[4] != ':' || a[7] != ':' || a[10] != '.') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9, 11}) {
    const char c = a[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string DevicePath(const std::string& sysfs_root, const std::string& bdf,
                       const std::string& leaf) {
  std::string path = absl::StrCat(sysfs_root, "/bus/pci/devices/", bdf);
  if (!leaf.empty()) absl::StrAppend(&path, "/", leaf);
  return path;
}

absl::StatusOr<std::string> SoleIommuGroup(const std::string& sysfs_root,
                                           const std::string& bdf) {
  absl::StatusOr<std::string> group = LinkBase(DevicePath(sysfs_root, bdf, "iommu_group"));
  if (!group.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PCI function ", bdf, " has no IOMMU group (is the IOMMU on? no-IOMMU mode is refused)"));
  }
  uint32_t number = 0;
  if (!absl::SimpleAtoi(*group, &number)) {
    return absl::FailedPreconditionError(
        absl::StrCat("PCI function ", bdf, ": odd IOMMU group ", *group));
  }
  absl::StatusOr<std::vector<std::string>> members =
      ListDir(absl::StrCat(sysfs_root, "/kernel/iommu_groups/", *group, "/devices"));
  if (!members.ok()) return members.status();
  if (*members != std::vector<std::string>{bdf}) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PCI function ", bdf, " shares IOMMU group ", *group, " with other devices (members: ",
        absl::StrJoin(*members, " "), "); refusing to hand it out"));
  }
  return *group;
}

absl::Status BindToVfioPci(const std::string& sysfs_root, const std::string& bdf,
                           absl::Duration timeout, absl::Duration poll_interval) {
  absl::StatusOr<std::string> driver = LinkBase(DevicePath(sysfs_root, bdf, "driver"));
  if (driver.ok() && *driver == "vfio-pci") return absl::OkStatus();
  if (absl::Status s = Write(DevicePath(sysfs_root, bdf, "driver_override"), "vfio-pci");
      !s.ok()) {
    return s;
  }
  if (driver.ok()) {
    if (absl::Status s = Write(DevicePath(sysfs_root, bdf, "driver/unbind"), bdf); !s.ok()) {
      return s;
    }
  }
  // drivers_probe answers an error when no driver took the device; the check below says why.
  (void)Write(absl::StrCat(sysfs_root, "/bus/pci/drivers_probe"), bdf);
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    driver = LinkBase(DevicePath(sysfs_root, bdf, "driver"));
    if (driver.ok() && *driver == "vfio-pci") return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PCI function ", bdf, " is not bound to vfio-pci (driver: ",
          driver.ok() ? *driver : std::string("none"), "); is the vfio-pci module loaded?"));
    }
    absl::SleepFor(poll_interval);
  }
}

}  // namespace vfbroker::pci_sysfs
